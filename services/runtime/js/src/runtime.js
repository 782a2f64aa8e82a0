// The global environment of an eventfn destination function (Segment's runtime contract) and
// the host interface `__eventfn__` that the Python side drives. One copy runs per function
// context; nothing here is shared between functions.
import { Buffer } from 'buffer/';
import * as random from './shims/random.js';
import { setProcessOutput } from './shims/process.js';
import {
  FetchError,
  FormData,
  Headers,
  Request,
  Response,
  URL,
  URLSearchParams,
  fetch,
} from './fetch.js';
import { setInvocationLookup } from './node/queue.js';
import { nodeCrypto } from './node/crypto.js';
import { httpModules } from './node/http.js';
import { defineSdkGlobals, sealSdks } from './sdk_loader.js';

const util = require('util/');

const G = globalThis;

// ---------------------------------------------------------------- error classes
class RetryError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RetryError';
  }
}
class EventNotSupported extends Error {
  constructor(message) {
    super(message);
    this.name = 'EventNotSupported';
  }
}
class InvalidEventPayload extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidEventPayload';
  }
}
class ValidationError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ValidationError';
  }
}
const KNOWN = ['RetryError', 'EventNotSupported', 'InvalidEventPayload', 'ValidationError'];

// ---------------------------------------------------------------- invocations
// Intrinsics captured before any user code runs: user code may replace the globals, not these.
const jsonStringify = JSON.stringify;
const jsonParse = JSON.parse;
const isArray = Array.isArray;
const StringOf = String;
const objectToString = Object.prototype.toString;
// Caps on what a thrown value may carry out: the host's caps and a margin, so that a secret
// across a host's cap is still whole when the host redacts it before cutting there
// (services/runtime/redact.py, CUT_MARGIN). Twice that in UTF-16 units, which the host's
// characters may take two of each.
const CUT_MARGIN = 4096;
const inUnits = (chars) => 2 * (chars + CUT_MARGIN);
const MAX_NAME = inUnits(256);
const MAX_MESSAGE = inUnits(8 * 1024);
const MAX_STACK = inUnits(16 * 1024);

let current = null; // the invocation whose code runs now (left set so microtasks see it)
const invocations = new Map();
const loadLogs = [];
let timerSeq = 0;
const timerOwner = new Map();

// Convert anything to a string without letting a throwing toString/toPrimitive escape.
function safeString(value, cap) {
  let s;
  try {
    s = typeof value === 'string' ? value : StringOf(value);
  } catch (err) {
    try {
      s = objectToString.call(value);
    } catch (err2) {
      s = '[unprintable value]';
    }
  }
  if (typeof s !== 'string') s = '[unprintable value]';
  return s.length > cap ? s.slice(0, cap - 1) + '…' : s;
}

function safeJson(value) {
  try {
    const s = jsonStringify(value);
    return s === undefined ? null : jsonParse(s);
  } catch (err) {
    // Whole, as a value JSON can write is (the report's size is capped): a cut here could
    // leave a secret's first characters, which the host would not know to redact.
    return safeString(value, Infinity);
  }
}

function read(obj, key) {
  try {
    return obj[key];
  } catch (err) {
    return undefined;
  }
}

function describeError(err) {
  try {
    if (err instanceof Error) {
      let cls = null;
      if (err instanceof RetryError) cls = 'RetryError';
      else if (err instanceof EventNotSupported) cls = 'EventNotSupported';
      else if (err instanceof InvalidEventPayload) cls = 'InvalidEventPayload';
      else if (err instanceof ValidationError) cls = 'ValidationError';
      const name = read(err, 'name');
      if (cls === null && KNOWN.includes(name)) cls = name;
      const ctor = read(err, 'constructor');
      return {
        name: safeString(name || (ctor && read(ctor, 'name')) || 'Error', MAX_NAME),
        message: safeString(read(err, 'message'), MAX_MESSAGE),
        stack: safeString(read(err, 'stack') || '', MAX_STACK),
        cls,
      };
    }
    if (typeof err === 'string') {
      return { name: 'Error', message: safeString(err, MAX_MESSAGE), stack: '', cls: null };
    }
    let message;
    try {
      message = err === undefined ? 'undefined' : jsonStringify(err);
    } catch (e) {
      message = undefined;
    }
    if (typeof message !== 'string') message = safeString(err, MAX_MESSAGE);
    return { name: 'Error', message: safeString(message, MAX_MESSAGE), stack: '', cls: null };
  } catch (e) {
    return { name: 'Error', message: '[a thrown value that cannot be described]', stack: '', cls: null };
  }
}

function filled(n, value) {
  const out = [];
  for (let i = 0; i < n; i++) out[i] = value;
  return out;
}

class Invocation {
  constructor(id, n, logCap, keepValues) {
    this.id = id;
    this.results = filled(n, null);
    this.values = keepValues ? filled(n, null) : null;
    this.remaining = n;
    this.batchValue = undefined;
    this.fetches = [];
    this.callbacks = new Map();
    this.fetchSeq = 0;
    this.timers = new Map();
    this.logs = [];
    this.logBytes = 0;
    this.logCap = logCap;
    this.logDropped = 0;
    this.logCut = false; // the last line kept was cut
  }
  queueFetch(request, callback) {
    const id = ++this.fetchSeq;
    request.id = id;
    this.fetches.push(request);
    this.callbacks.set(id, callback);
  }
  log(level, line) {
    if (this.logBytes + line.length > this.logCap) {
      const room = this.logCap - this.logBytes;
      if (room > 0) {
        // The host cuts it once it is redacted (see CUT_MARGIN), told it was cut here.
        this.logs.push([level, line.slice(0, inUnits(room))]);
        this.logCut = line.length > inUnits(room);
        this.logBytes = this.logCap;
      }
      this.logDropped += 1;
      return;
    }
    this.logs.push([level, line]);
    this.logBytes += line.length + 1;
  }
  settle(i, ok, payload) {
    if (this.results[i] !== null) return;
    if (ok) {
      this.results[i] = 0;
      if (this.values) this.values[i] = safeJson(payload);
    } else {
      this.results[i] = describeError(payload);
    }
    this.remaining -= 1;
  }
  nextTimer() {
    let due = Infinity;
    for (const t of this.timers.values()) if (t.due < due) due = t.due;
    return due === Infinity ? -1 : Math.max(0, due - Date.now());
  }
  // The report's shape is documented (and checked) in services/runtime/report.py.
  report(final) {
    const done = this.remaining === 0 || final;
    const out = { done, fetches: this.fetches, timer: this.nextTimer() };
    this.fetches = [];
    if (done) {
      const results = [];
      for (let i = 0; i < this.results.length; i++) {
        results[i] = this.results[i] === null ? 2 : this.results[i]; // 2 = unfinished
      }
      out.results = results;
      if (this.values) out.values = this.values;
      if (this.batchValue !== undefined) out.batchValue = safeJson(this.batchValue);
      out.logs = this.logs;
      out.logsDropped = this.logDropped;
      if (this.logCut) out.logCut = true;
      out.fetches = [];
      for (const id of this.timers.keys()) timerOwner.delete(id);
      this.timers.clear();
      invocations.delete(this.id);
      if (current === this) current = null;
    }
    return jsonStringify(out);
  }
}

setInvocationLookup(() => current);

const HANDLERS = {
  track: 'onTrack',
  identify: 'onIdentify',
  page: 'onPage',
  screen: 'onScreen',
  group: 'onGroup',
  alias: 'onAlias',
  delete: 'onDelete',
};
const HANDLER_NAMES = [
  'onTrack', 'onIdentify', 'onPage', 'onScreen', 'onGroup', 'onAlias', 'onDelete', 'onBatch',
];
// The user's handlers, looked up by name in the global scope when an invocation starts (they
// are declared by the user's script, evaluated after this bundle: `typeof` of a name not
// declared yet is 'undefined', never an error). Functions only; anything else is no handler.
/* global onTrack, onIdentify, onPage, onScreen, onGroup, onAlias, onDelete, onBatch */
function lookupHandlers() {
  const fn = (v) => (typeof v === 'function' ? v : undefined);
  return {
    onTrack: typeof onTrack === 'undefined' ? undefined : fn(onTrack),
    onIdentify: typeof onIdentify === 'undefined' ? undefined : fn(onIdentify),
    onPage: typeof onPage === 'undefined' ? undefined : fn(onPage),
    onScreen: typeof onScreen === 'undefined' ? undefined : fn(onScreen),
    onGroup: typeof onGroup === 'undefined' ? undefined : fn(onGroup),
    onAlias: typeof onAlias === 'undefined' ? undefined : fn(onAlias),
    onDelete: typeof onDelete === 'undefined' ? undefined : fn(onDelete),
    onBatch: typeof onBatch === 'undefined' ? undefined : fn(onBatch),
  };
}

function runOne(inv, i, handler, event, settings) {
  let p;
  try {
    p = handler(event, settings);
  } catch (err) {
    inv.settle(i, false, err);
    return;
  }
  let then;
  try {
    then = p && p.then;
  } catch (err) {
    inv.settle(i, false, err);
    return;
  }
  if (typeof then === 'function') {
    Promise.resolve(p).then(
      (v) => inv.settle(i, true, v),
      (err) => inv.settle(i, false, err),
    );
  } else {
    inv.settle(i, true, p);
  }
}

// The host interface. The engine reaches it only through the `__eventfn__` gate with the
// token it armed the gate with before any user code ran (see engine.py), so user code can
// neither reach nor replace it; strict mode keeps its frames opaque.
const pieces = new Map(); // long arguments arrive in pieces (engine.py, _call)
const host = {
  piece(slot, text) {
    const got = pieces.get(slot);
    if (got === undefined) pieces.set(slot, [text]);
    else got.push(text);
  },
  take(slot) {
    const got = pieces.get(slot) || [];
    pieces.delete(slot);
    return got.join('');
  },
  // Seed the random generator; the SDK chunks the function names were evaluated before this
  // first call (engine.py), so none can be registered from now on.
  seed(hex) {
    random.seedRandom(hex);
    sealSdks();
  },
  handlers() {
    let h;
    try {
      h = lookupHandlers();
    } catch (err) {
      return '[]';
    }
    const names = [];
    for (const k of HANDLER_NAMES) if (typeof h[k] === 'function') names.push(k);
    return jsonStringify(names);
  },
  // Set an invocation up; run onBatch at once. Returns how many single-event handlers are
  // left to start (with runEvent), 0 for a batch or when the handlers cannot be looked up.
  prepare(id, eventsJson, settingsJson, batch, logCap, keepValues) {
    const events = jsonParse(eventsJson);
    const n = isArray(events) ? events.length : 1;
    const inv = new Invocation(id, batch ? 1 : n, logCap, keepValues);
    invocations.set(id, inv);
    current = inv;
    for (const [level, line] of loadLogs.splice(0, loadLogs.length)) inv.log(level, line);
    let h;
    try {
      h = lookupHandlers();
    } catch (err) {
      // e.g. a global getter named like a handler that throws: every event fails with it.
      for (let i = 0; i < (batch ? 1 : n); i++) inv.settle(i, false, err);
      return 0;
    }
    const settings = () => {
      const s = jsonParse(settingsJson);
      return s !== null && typeof s === 'object' ? s : {};
    };
    if (batch) {
      if (typeof h.onBatch !== 'function') {
        inv.settle(0, false, new EventNotSupported('onBatch is not defined'));
      } else {
        let p;
        try {
          p = Promise.resolve(h.onBatch(events, settings()));
        } catch (err) {
          p = Promise.reject(err);
        }
        p.then(
          (v) => {
            inv.batchValue = v === undefined ? null : v;
            inv.settle(0, true, undefined);
          },
          (err) => inv.settle(0, false, err),
        );
      }
      return 0;
    }
    inv.pending = { list: isArray(events) ? events : [events], handlers: h, settings };
    return n;
  },
  // Start the handler of event i of a prepared invocation.
  runEvent(id, i) {
    const inv = invocations.get(id);
    current = inv;
    const { list, handlers, settings } = inv.pending;
    const event = list[i];
    if (event === null || typeof event !== 'object' || isArray(event)) {
      inv.settle(i, false, new InvalidEventPayload('event must be a JSON object'));
      return;
    }
    const type = typeof event.type === 'string' ? event.type.toLowerCase() : '';
    const name = HANDLERS[type];
    const handler = name === undefined ? undefined : handlers[name];
    if (typeof handler !== 'function') {
      const what = name === undefined ? `event type ${safeJson(event.type)}` : name;
      inv.settle(i, false, new EventNotSupported(`${what} is not supported by this function`));
      return;
    }
    runOne(inv, i, handler, event, settings());
  },
  start(id, eventsJson, settingsJson, batch, logCap, keepValues) {
    const n = host.prepare(id, eventsJson, settingsJson, batch, logCap, keepValues);
    for (let i = 0; i < n; i++) host.runEvent(id, i);
  },
  poll(id) {
    const inv = invocations.get(id);
    current = inv;
    return inv.report(false);
  },
  resolve(id, resultsJson) {
    const inv = invocations.get(id);
    current = inv;
    for (const res of jsonParse(resultsJson)) {
      const cb = inv.callbacks.get(res.id);
      inv.callbacks.delete(res.id);
      if (cb) cb(res);
    }
  },
  fire(id) {
    const inv = invocations.get(id);
    current = inv;
    const now = Date.now();
    const due = Array.from(inv.timers.entries())
      .filter(([, t]) => t.due <= now)
      .sort((a, b) => a[1].due - b[1].due);
    for (const [tid, t] of due) {
      if (t.interval > 0) t.due = now + t.interval;
      else {
        inv.timers.delete(tid);
        timerOwner.delete(tid);
      }
      try {
        t.fn(...t.args);
      } catch (err) {
        inv.log('error', 'Uncaught ' + describeError(err).message);
      }
    }
  },
  cancel(id) {
    const inv = invocations.get(id);
    return inv === undefined
      ? '{"done":true,"fetches":[],"timer":-1,"results":[],"logs":[],"logsDropped":0}'
      : inv.report(true);
  },
};

// ---------------------------------------------------------------- console and timers
const MAX_LOAD_LOG_LINE = 4096;
function logger(level) {
  return (...args) => {
    const line = util.format(...args);
    if (current !== null) current.log(level, line);
    else if (loadLogs.length < 100) loadLogs.push([level, line.slice(0, MAX_LOAD_LOG_LINE)]);
  };
}
setProcessOutput((level, line) => logger(level)(line));
const console = {
  log: logger('log'),
  info: logger('info'),
  warn: logger('warn'),
  error: logger('error'),
  debug: logger('debug'),
  trace: logger('trace'),
  dir: (obj) => logger('log')(util.inspect(obj)),
  table: logger('log'),
  assert(cond, ...args) {
    if (!cond) logger('error')('Assertion failed' + (args.length ? ': ' + util.format(...args) : ''));
  },
  time() {},
  timeEnd() {},
  group() {},
  groupEnd() {},
};

function addTimer(fn, ms, args, interval) {
  if (typeof fn !== 'function') throw new TypeError('The "callback" argument must be a function');
  const id = ++timerSeq;
  const delay = Math.max(0, Number(ms) || 0);
  if (current !== null) {
    current.timers.set(id, { fn, args, due: Date.now() + delay, interval: interval ? delay : 0 });
    timerOwner.set(id, current);
  }
  return id;
}
function clearTimer(id) {
  const inv = timerOwner.get(id);
  if (inv !== undefined) {
    inv.timers.delete(id);
    timerOwner.delete(id);
  }
}

// ---------------------------------------------------------------- cache
const CACHE_MAX_ENTRIES = 1000;
const cacheEntries = new Map();
const cache = {
  load(key, ttl, fn) {
    const k = String(key);
    const now = Date.now();
    const hit = cacheEntries.get(k);
    if (hit !== undefined && (hit.expires < 0 || hit.expires > now)) return hit.value;
    const value = Promise.resolve().then(() => fn());
    const life = ttl === undefined || ttl === null || Number(ttl) < 0 ? -1 : now + Number(ttl);
    cacheEntries.delete(k);
    cacheEntries.set(k, { value, expires: life });
    if (cacheEntries.size > CACHE_MAX_ENTRIES) {
      cacheEntries.delete(cacheEntries.keys().next().value);
    }
    value.catch(() => {
      if (cacheEntries.get(k) && cacheEntries.get(k).value === value) cacheEntries.delete(k);
    });
    return value;
  },
  delete(key) {
    cacheEntries.delete(String(key));
  },
};

// ---------------------------------------------------------------- text, base64, crypto
class TextEncoder {
  get encoding() {
    return 'utf-8';
  }
  encode(s = '') {
    const b = Buffer.from(String(s), 'utf8');
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }
}
class TextDecoder {
  constructor(label = 'utf-8') {
    const l = String(label).toLowerCase();
    if (l !== 'utf-8' && l !== 'utf8') throw new RangeError(`The "${label}" encoding is not supported`);
  }
  get encoding() {
    return 'utf-8';
  }
  decode(input) {
    if (input === undefined) return '';
    if (input instanceof ArrayBuffer) return Buffer.from(input).toString('utf8');
    return Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString('utf8');
  }
}
function btoa(input) {
  const s = String(input);
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 255) throw new Error('Invalid character');
  }
  return Buffer.from(s, 'latin1').toString('base64');
}
function atob(input) {
  return Buffer.from(String(input), 'base64').toString('latin1');
}

// ---------------------------------------------------------------- exposure
function defineValue(name, value) {
  Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });
}
// Libraries load on first use: creating a function's context stays cheap.
function defineLazy(name, factory) {
  Object.defineProperty(G, name, {
    configurable: true,
    enumerable: false,
    get() {
      const value = factory();
      defineValue(name, value);
      return value;
    },
    set(value) {
      defineValue(name, value);
    },
  });
}
defineValue('global', G);
defineValue('console', console);
defineValue('setTimeout', (fn, ms, ...args) => addTimer(fn, ms, args, false));
defineValue('setInterval', (fn, ms, ...args) => addTimer(fn, ms, args, true));
defineValue('setImmediate', (fn, ...args) => addTimer(fn, 0, args, false));
defineValue('clearTimeout', clearTimer);
defineValue('clearInterval', clearTimer);
defineValue('clearImmediate', clearTimer);
defineValue('queueMicrotask', (fn) => {
  Promise.resolve().then(fn);
});
defineValue('RetryError', RetryError);
defineValue('EventNotSupported', EventNotSupported);
defineValue('InvalidEventPayload', InvalidEventPayload);
defineValue('ValidationError', ValidationError);
defineValue('fetch', fetch);
defineValue('Headers', Headers);
defineValue('Request', Request);
defineValue('Response', Response);
defineValue('FetchError', FetchError);
defineValue('FormData', FormData);
defineValue('URL', URL);
defineValue('URLSearchParams', URLSearchParams);
defineValue('TextEncoder', TextEncoder);
defineValue('TextDecoder', TextDecoder);
defineValue('Buffer', Buffer);
defineValue('atob', atob);
defineValue('btoa', btoa);
defineValue('cache', cache);
defineLazy('crypto', nodeCrypto);
defineLazy('_', () => require('lodash'));
defineLazy('moment', () => require('moment-timezone'));
defineLazy('xml', () => require('xml'));
defineLazy('xml2js', () => require('xml2js'));
defineLazy('jsonwebtoken', () => require('jsonwebtoken'));
defineLazy('uuidv5', () => ({ uuidv5: require('uuidv5') }));
defineLazy('zlib', () => ({ zlib: require('browserify-zlib') }));
defineLazy('fetchretrylib', () => ({ fetchretry: require('fetch-retry') }));
defineLazy('libphonenumberjslib', () => ({ libphonenumberjs: require('libphonenumber-js') }));
defineLazy('OAuth', () => require('oauth'));
defineLazy('https', () => httpModules().https);
defineSdkGlobals(defineLazy);
// The gate to the host interface: the engine's first call arms it with a random token, before
// user code runs; afterwards it opens only for that token. Not writable, not configurable: user
// code can neither replace it nor shadow it with a global declaration.
let gateToken = null;
function gate(token) {
  if (gateToken === null && typeof token === 'string' && token.length >= 32) gateToken = token;
  return token === gateToken ? host : undefined;
}
Object.defineProperty(G, '__eventfn__', { value: gate });
