// fetch with node-fetch v2 semantics. Requests are not performed here: each call is queued on
// the current invocation, the host performs a whole round of them concurrently and resolves
// them all in one crossing (ARCHITECTURE.md, "Few V8 crossings").
import { Buffer } from 'buffer/';
import { randomBytesSync } from './shims/random.js';
import { queueRequest } from './node/queue.js';

const URLImpl = require('core-js-pure/stable/url');
const URLSearchParamsImpl = require('core-js-pure/stable/url-search-params');

export class FetchError extends Error {
  constructor(message, type, systemError) {
    super(message);
    this.name = 'FetchError';
    this.type = type;
    if (systemError) {
      this.code = this.errno = systemError.code;
    }
  }
}

function checkName(name) {
  const n = String(name);
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(n)) {
    throw new TypeError(`${n} is not a legal HTTP header name`);
  }
  return n.toLowerCase();
}

export class Headers {
  constructor(init) {
    this._map = new Map();
    if (init == null) return;
    if (init instanceof Headers) {
      for (const [k, vs] of init._map) this._map.set(k, vs.slice());
    } else if (typeof init[Symbol.iterator] === 'function') {
      for (const pair of init) {
        const [k, v] = Array.from(pair);
        this.append(k, v);
      }
    } else if (typeof init === 'object') {
      for (const k of Object.keys(init)) {
        const v = init[k];
        if (Array.isArray(v)) for (const x of v) this.append(k, x);
        else this.append(k, v);
      }
    } else {
      throw new TypeError('Provided initializer must be an object');
    }
  }
  get(name) {
    const vs = this._map.get(checkName(name));
    return vs === undefined ? null : vs.join(', ');
  }
  has(name) {
    return this._map.has(checkName(name));
  }
  set(name, value) {
    this._map.set(checkName(name), [String(value)]);
  }
  append(name, value) {
    const k = checkName(name);
    const vs = this._map.get(k);
    if (vs) vs.push(String(value));
    else this._map.set(k, [String(value)]);
  }
  delete(name) {
    this._map.delete(checkName(name));
  }
  forEach(cb, thisArg) {
    for (const [k, v] of this.entries()) cb.call(thisArg, v, k, this);
  }
  raw() {
    const out = {};
    for (const [k, vs] of this._map) out[k] = vs.slice();
    return out;
  }
  *entries() {
    const keys = Array.from(this._map.keys()).sort();
    for (const k of keys) yield [k, this._map.get(k).join(', ')];
  }
  *keys() {
    for (const [k] of this.entries()) yield k;
  }
  *values() {
    for (const [, v] of this.entries()) yield v;
  }
  [Symbol.iterator]() {
    return this.entries();
  }
  get [Symbol.toStringTag]() {
    return 'Headers';
  }
  _pairs() {
    const out = [];
    for (const [k, vs] of this._map) for (const v of vs) out.push([k, v]);
    return out;
  }
}

export class FormData {
  constructor() {
    this._parts = [];
    this._boundary = null;
  }
  append(name, value, options) {
    const opts = typeof options === 'string' ? { filename: options } : options || {};
    let data = value;
    if (typeof data === 'number' || typeof data === 'boolean') data = String(data);
    if (Array.isArray(data)) throw new Error('Arrays are not supported.');
    this._parts.push({ name: String(name), data, opts });
  }
  getBoundary() {
    if (this._boundary === null) {
      this._boundary = '--------------------------' + randomBytesSync(12).toString('hex');
    }
    return this._boundary;
  }
  setBoundary(boundary) {
    this._boundary = boundary;
  }
  getHeaders(extra) {
    const h = { 'content-type': 'multipart/form-data; boundary=' + this.getBoundary() };
    return Object.assign(h, extra || {});
  }
  getBuffer() {
    const chunks = [];
    const b = this.getBoundary();
    for (const { name, data, opts } of this._parts) {
      let head = `--${b}\r\nContent-Disposition: form-data; name="${name}"`;
      const isBinary = Buffer.isBuffer(data) || data instanceof Uint8Array;
      const filename = opts.filename || (isBinary && opts.filepath) || undefined;
      if (filename) head += `; filename="${filename}"`;
      head += '\r\n';
      const ct = opts.contentType || (filename ? 'application/octet-stream' : null);
      if (ct) head += `Content-Type: ${ct}\r\n`;
      head += '\r\n';
      chunks.push(Buffer.from(head, 'utf8'));
      chunks.push(isBinary ? Buffer.from(data) : Buffer.from(String(data), 'utf8'));
      chunks.push(Buffer.from('\r\n', 'utf8'));
    }
    chunks.push(Buffer.from(`--${b}--\r\n`, 'utf8'));
    return Buffer.concat(chunks);
  }
  getLengthSync() {
    return this.getBuffer().length;
  }
  toString() {
    return '[object FormData]';
  }
}

function bodyToWire(body) {
  // -> [wire body for the host, default content-type or null]
  if (body == null) return [null, null];
  if (typeof body === 'string') return [{ text: body }, 'text/plain;charset=UTF-8'];
  if (body instanceof URLSearchParamsImpl) {
    return [{ text: body.toString() }, 'application/x-www-form-urlencoded;charset=UTF-8'];
  }
  if (body instanceof FormData) {
    return [{ base64: body.getBuffer().toString('base64') }, body.getHeaders()['content-type']];
  }
  if (Buffer.isBuffer(body)) return [{ base64: body.toString('base64') }, null];
  if (body instanceof ArrayBuffer) {
    return [{ base64: Buffer.from(body).toString('base64') }, null];
  }
  if (ArrayBuffer.isView(body)) {
    const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    return [{ base64: buf.toString('base64') }, null];
  }
  return [{ text: String(body) }, 'text/plain;charset=UTF-8'];
}

class Body {
  _initBody(body) {
    // Stored as a string (text) or a Buffer; the host sends valid UTF-8 as text.
    this._body = body == null ? null : body;
    this.bodyUsed = false;
  }
  _consume() {
    if (this.bodyUsed) {
      return Promise.reject(new TypeError(`body used already for: ${this.url}`));
    }
    this.bodyUsed = true;
    return Promise.resolve(this._body);
  }
  text() {
    return this._consume().then((b) => {
      if (b == null) return '';
      if (typeof b === 'string') return b;
      if (Buffer.isBuffer(b)) return b.toString('utf8');
      if (b instanceof URLSearchParamsImpl) return b.toString();
      if (b instanceof FormData) return b.getBuffer().toString('utf8');
      return String(b);
    });
  }
  json() {
    return this.text().then((t) => {
      try {
        return JSON.parse(t);
      } catch (err) {
        throw new FetchError(
          `invalid json response body at ${this.url} reason: ${err.message}`,
          'invalid-json',
        );
      }
    });
  }
  buffer() {
    return this._consume().then((b) => {
      if (b == null) return Buffer.alloc(0);
      if (Buffer.isBuffer(b)) return b;
      if (typeof b === 'string') return Buffer.from(b, 'utf8');
      if (b instanceof FormData) return b.getBuffer();
      return Buffer.from(String(b), 'utf8');
    });
  }
  arrayBuffer() {
    return this.buffer().then((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  }
  textConverted() {
    return this.text();
  }
}

const STATUS_TEXT = {
  200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 301: 'Moved Permanently',
  302: 'Found', 303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect',
  308: 'Permanent Redirect', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden',
  404: 'Not Found', 409: 'Conflict', 422: 'Unprocessable Entity', 429: 'Too Many Requests',
  500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

export class Response extends Body {
  constructor(body = null, init = {}) {
    super();
    this._initBody(body);
    this.status = init.status === undefined ? 200 : init.status;
    this.statusText = init.statusText || STATUS_TEXT[this.status] || '';
    this.headers = new Headers(init.headers);
    Object.defineProperty(this, 'url', { value: init.url || '', enumerable: true });
    this.redirected = Boolean(init.redirected);
    this.counter = init.counter || 0;
    this.size = 0;
    this.timeout = 0;
  }
  get ok() {
    return this.status >= 200 && this.status < 300;
  }
  clone() {
    if (this.bodyUsed) throw new Error('cannot clone body after it is used');
    return new Response(this._body, this);
  }
  get [Symbol.toStringTag]() {
    return 'Response';
  }
}

// Already-normal absolute http(s) URLs skip the (slow, ~17 µs) WHATWG parser.
const SIMPLE_URL = /^(https?):\/\/([a-z0-9.-]+(?::\d{1,5})?)(\/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*)?$/;
function normalizeUrl(input) {
  const m = SIMPLE_URL.exec(input);
  if (m !== null && !/\/\.\.?(?:[/?]|$)/.test(m[3] || '') && !(m[3] || '').includes('#')) {
    const port = m[2].endsWith(m[1] === 'http' ? ':80' : ':443') ? m[2].replace(/:\d+$/, '') : m[2];
    return `${m[1]}://${port}${m[3] || '/'}`;
  }
  return new URLImpl(input).href;
}

export class Request extends Body {
  constructor(input, init = {}) {
    super();
    const isRequest = input instanceof Request;
    // Read-only, as in node-fetch: what fetch() sends is what the constructor normalised.
    Object.defineProperty(this, 'url', {
      value: normalizeUrl(String(isRequest ? input.url : input)),
      enumerable: true,
    });
    this.method = String(init.method || (isRequest ? input.method : 'GET')).toUpperCase();
    const body = init.body !== undefined ? init.body : isRequest ? input._body : null;
    if (body != null && (this.method === 'GET' || this.method === 'HEAD')) {
      throw new TypeError('Request with GET/HEAD method cannot have body');
    }
    this._initBody(body);
    this.headers = new Headers(init.headers || (isRequest ? input.headers : undefined));
    this.redirect = init.redirect || (isRequest ? input.redirect : 'follow');
    this.follow = init.follow !== undefined ? init.follow : isRequest ? input.follow : 20;
    this.timeout = init.timeout || (isRequest ? input.timeout : 0) || 0;
    this.compress = init.compress !== undefined ? init.compress : true;
    this.size = init.size || (isRequest ? input.size : 0) || 0;
    this.counter = 0;
    this.agent = init.agent;
  }
  clone() {
    return new Request(this);
  }
  get [Symbol.toStringTag]() {
    return 'Request';
  }
}

// A failure the host reports, until `fetch` makes it a FetchError.
class HostFailure {
  constructor(error) {
    this.error = error;
  }
}

// The FetchError of a failure the host reports is made in a reaction to the request's
// promise, which the function's code awaits: V8 then adds the awaiting frames of that code to
// its stack (`at async onTrack (function.js:2:19)`); made in the host's callback it had none.
// A reaction costs ≈ 0.4 µs a fetch (an async function with await, ≈ 1.2; capturing the call
// site on every fetch, ≈ 3).
export function fetch(input, init) {
  return send(input, init).then(undefined, fetchError);
}

function fetchError(err) {
  if (err instanceof HostFailure) {
    throw new FetchError(err.error.message, err.error.type, { code: err.error.code });
  }
  throw err;
}

function send(input, init) {
  return new Promise((resolve, reject) => {
    let req;
    try {
      const inputUrl = input instanceof URLImpl ? input.href : input;
      req = new Request(inputUrl, init || {});
    } catch (err) {
      reject(err);
      return;
    }
    const proto = req.url.split(':', 1)[0];
    if (proto !== 'http' && proto !== 'https') {
      reject(new TypeError('Only HTTP(S) protocols are supported'));
      return;
    }
    const [wireBody, defaultType] = bodyToWire(req._body);
    if (defaultType && !req.headers.has('content-type')) req.headers.set('content-type', defaultType);
    if (!req.headers.has('accept')) req.headers.set('accept', '*/*');
    if (!req.headers.has('user-agent')) {
      req.headers.set('user-agent', 'node-fetch/1.0 (+https://github.com/bitinn/node-fetch)');
    }
    if (req.compress && !req.headers.has('accept-encoding')) {
      req.headers.set('accept-encoding', 'gzip,deflate');
    }
    const redirect = req.redirect;
    if (redirect !== 'follow' && redirect !== 'manual' && redirect !== 'error') {
      reject(new TypeError(`Redirect option '${redirect}' is not a valid value of RequestRedirect`));
      return;
    }
    const refused = queueRequest(
      {
        url: req.url,
        method: req.method,
        headers: req.headers._pairs(),
        body: wireBody,
        redirect,
        follow: req.follow,
        timeout: req.timeout,
        size: req.size,
      },
      (res) => {
        if (res.error) {
          reject(new HostFailure(res.error));
          return;
        }
        const body = res.body == null ? null
          : 'text' in res.body ? res.body.text : Buffer.from(res.body.base64, 'base64');
        resolve(new Response(body, {
          url: res.url,
          status: res.status,
          statusText: res.statusText,
          headers: res.headers,
          redirected: res.redirected,
          counter: res.redirects || 0,
        }));
      },
    );
    if (refused !== null) {
      reject(new FetchError(`request to ${req.url} failed, reason: fetch is only available ` +
        'while a handler runs', 'system', { code: 'ENOINVOCATION' }));
    }
  });
}
fetch.isRedirect = (code) => code === 301 || code === 302 || code === 303 || code === 307 ||
  code === 308;
fetch.Headers = Headers;
fetch.Request = Request;
fetch.Response = Response;
fetch.FetchError = FetchError;

export { URLImpl as URL, URLSearchParamsImpl as URLSearchParams };
