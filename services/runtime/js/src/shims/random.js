// Secure random bytes from a SHA-256 counter-mode generator seeded by the host (os.urandom)
// when the function's context is created: bare V8 has no crypto.getRandomValues.
'use strict';
const createHash = require('create-hash');
const { Buffer } = require('buffer/');

let key = null;
let counter = 0;
let pool = Buffer.alloc(0);

function seedRandom(hexSeed) {
  key = Buffer.from(hexSeed, 'hex');
  counter = 0;
  pool = Buffer.alloc(0);
}

function refill(min) {
  const parts = [pool];
  let have = pool.length;
  while (have < min) {
    const block = createHash('sha256').update(key).update(String(counter++)).digest();
    parts.push(block);
    have += block.length;
  }
  pool = Buffer.concat(parts);
}

function randomBytesSync(size) {
  if (key === null) throw new Error('random generator not seeded');
  if (pool.length < size) refill(size);
  const out = Buffer.from(pool.subarray(0, size));
  pool = pool.subarray(size);
  return out;
}

function randomBytes(size, cb) {
  const bytes = randomBytesSync(size);
  if (typeof cb === 'function') {
    Promise.resolve().then(() => cb(null, bytes));
    return undefined;
  }
  return bytes;
}

function getRandomValues(view) {
  const bytes = randomBytesSync(view.byteLength);
  new Uint8Array(view.buffer, view.byteOffset, view.byteLength).set(bytes);
  return view;
}

function randomFillSync(buf, offset, size) {
  const off = offset || 0;
  const n = size === undefined ? buf.byteLength - off : size;
  const bytes = randomBytesSync(n);
  new Uint8Array(buf.buffer || buf, (buf.byteOffset || 0) + off, n).set(bytes);
  return buf;
}

function randomFill(buf, offset, size, cb) {
  if (typeof offset === 'function') {
    cb = offset;
    offset = 0;
    size = undefined;
  } else if (typeof size === 'function') {
    cb = size;
    size = undefined;
  }
  randomFillSync(buf, offset, size);
  Promise.resolve().then(() => cb(null, buf));
}

module.exports = {
  seedRandom,
  randomBytes,
  randomBytesSync,
  getRandomValues,
  randomFill,
  randomFillSync,
};
