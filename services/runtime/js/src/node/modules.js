// Node's built-in modules for the bundled SDKs (the `require` their chunks get) and the
// globals that expose some of them; each is built on first require.
import { Buffer } from 'buffer/';
import { URL, URLSearchParams } from '../fetch.js';
import { process } from '../shims/process.js';
import * as timers from '../shims/timers.js';
import { nodeCrypto } from './crypto.js';
import { makeFs } from './fs.js';
import { httpModules } from './http.js';
import { unsupportedModule } from './unsupported.js';

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
function isIPv4(s) {
  return IPV4.test(String(s));
}
function isIPv6(s) {
  const t = String(s);
  return t.includes(':') && /^[0-9a-fA-F:.]+$/.test(t) && (t.match(/::/g) || []).length <= 1;
}
function isIP(s) {
  return isIPv4(s) ? 4 : isIPv6(s) ? 6 : 0;
}

function textCodecs() {
  return { TextEncoder: globalThis.TextEncoder, TextDecoder: globalThis.TextDecoder };
}

const BUILDERS = {
  assert: () => require('assert/'),
  buffer: () => require('buffer/'),
  crypto: nodeCrypto,
  events: () => {
    const events = require('events/');
    if (!events.EventEmitter) events.EventEmitter = events;
    return events;
  },
  fs: makeFs,
  http: () => httpModules().http,
  https: () => httpModules().https,
  os: () => ({
    EOL: '\n',
    platform: () => 'linux',
    type: () => 'Linux',
    release: () => '',
    arch: () => 'x64',
    hostname: () => 'eventfn',
    homedir: () => '/',
    tmpdir: () => '/tmp',
    endianness: () => 'LE',
    cpus: () => [],
    totalmem: () => 0,
    freemem: () => 0,
    uptime: () => 0,
    loadavg: () => [0, 0, 0],
    networkInterfaces: () => ({}),
    userInfo: () => ({ username: 'eventfn', uid: -1, gid: -1, shell: null, homedir: '/' }),
    constants: { signals: {}, errno: {} },
  }),
  path: () => require('path-browserify'),
  // Node's own `process` to the SDKs (axios picks its http adapter by this tag).
  process: () => Object.defineProperties(Object.create(process), {
    browser: { value: false },
    [Symbol.toStringTag]: { value: 'process' },
  }),
  punycode: () => require('punycode/'),
  querystring: () => require('querystring-es3'),
  stream: () => {
    const stream = require('stream-browserify');
    // As in Node, streams are instances of the legacy Stream (node-fetch checks `instanceof`);
    // readable-stream's browser build derives them from EventEmitter directly.
    for (const Cls of [stream.Readable, stream.Writable]) {
      if (!(Cls.prototype instanceof stream)) Object.setPrototypeOf(Cls.prototype, stream.prototype);
    }
    if (!stream.promises) {
      const util = require('util/');
      stream.promises = { pipeline: util.promisify(stream.pipeline), finished: util.promisify(stream.finished) };
    }
    return stream;
  },
  string_decoder: () => require('string_decoder/'),
  timers: () => timers,
  tty: () => ({ isatty: () => false }),
  url: () => Object.assign({}, require('url/'), {
    URL,
    URLSearchParams,
    domainToASCII: (d) => require('punycode/').toASCII(String(d)),
    domainToUnicode: (d) => require('punycode/').toUnicode(String(d)),
  }),
  util: () => Object.assign({}, require('util/'), textCodecs()),
  zlib: () => {
    const zlib = Object.assign({}, require('browserify-zlib'));
    if (!zlib.constants) {
      zlib.constants = {};
      for (const k of Object.keys(zlib)) if (/^Z_[A-Z_]+$/.test(k)) zlib.constants[k] = zlib[k];
    }
    return zlib;
  },
  constants: () => ({}),
  net: () => unsupportedModule('net', { isIP, isIPv4, isIPv6 }),
  dns: () => unsupportedModule('dns', { promises: unsupportedModule('dns.promises') }),
  http2: () => unsupportedModule('http2', { constants: {} }),
  domain: () => unsupportedModule('domain', { active: null }),
};
for (const name of ['tls', 'dgram', 'child_process', 'cluster', 'worker_threads', 'vm',
  'module', 'perf_hooks', 'async_hooks', 'v8', 'readline', 'inspector']) {
  BUILDERS[name] = () => unsupportedModule(name);
}

const built = new Map();

// Node's `require` for SDK chunks: built-in modules only (each chunk bundles its packages).
export function nodeRequire(id) {
  const name = String(id).replace(/^node:/, '').replace(/\/$/, '');
  let mod = built.get(name);
  if (mod === undefined) {
    const make = Object.prototype.hasOwnProperty.call(BUILDERS, name) ? BUILDERS[name] : null;
    if (make === null) {
      const err = new Error(`Cannot find module '${name}' (not bundled in eventfn's runtime)`);
      err.code = 'MODULE_NOT_FOUND';
      throw err;
    }
    mod = make();
    built.set(name, mod);
  }
  return mod;
}
nodeRequire.resolve = (id) => String(id);
nodeRequire.cache = Object.create(null);

export { Buffer };
