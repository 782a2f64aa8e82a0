// Node's `crypto` (crypto-browserify: hashes, HMAC, ciphers, sign/verify) with the runtime's
// seeded random generator: bare V8 has no crypto.getRandomValues.
import * as random from '../shims/random.js';

let cryptoModule = null;

// Return the crypto module, built on first use.
export function nodeCrypto() {
  if (cryptoModule === null) {
    const c = Object.assign({}, require('crypto-browserify'));
    c.randomBytes = random.randomBytes;
    c.pseudoRandomBytes = random.randomBytes;
    c.randomFillSync = random.randomFillSync;
    c.randomFill = random.randomFill;
    c.getRandomValues = random.getRandomValues;
    c.webcrypto = { getRandomValues: random.getRandomValues };
    c.randomUUID = () => {
      const b = random.randomBytesSync(16);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = b.toString('hex');
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    };
    c.randomInt = (min, max) => {
      if (max === undefined) [min, max] = [0, min];
      return min + (random.randomBytesSync(6).readUIntBE(0, 6) % (max - min));
    };
    c.timingSafeEqual = (a, b) => {
      if (a.byteLength !== b.byteLength) {
        throw new RangeError('Input buffers must have the same byte length');
      }
      const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
      let diff = 0;
      for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
      return diff === 0;
    };
    c.getHashes = () => ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'rmd160'];
    cryptoModule = c;
  }
  return cryptoModule;
}
