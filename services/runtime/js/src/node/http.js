// Node's `http`/`https` client for bundled SDKs and user code, on the runtime's request queue:
// a request is queued on the current invocation when its body ends, the host performs it with
// the round's other requests (egress policy, proxy, CA bundle, deadline, caps, traces) and
// resolves it in one crossing. Nothing here opens a socket or calls the host directly.
import { Buffer } from 'buffer/';
import { queueRequest } from './queue.js';

const STATUS_CODES = {
  100: 'Continue', 101: 'Switching Protocols', 200: 'OK', 201: 'Created', 202: 'Accepted',
  203: 'Non-Authoritative Information', 204: 'No Content', 205: 'Reset Content',
  206: 'Partial Content', 300: 'Multiple Choices', 301: 'Moved Permanently', 302: 'Found',
  303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect', 308: 'Permanent Redirect',
  400: 'Bad Request', 401: 'Unauthorized', 402: 'Payment Required', 403: 'Forbidden',
  404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable', 408: 'Request Timeout',
  409: 'Conflict', 410: 'Gone', 411: 'Length Required', 412: 'Precondition Failed',
  413: 'Payload Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type',
  422: 'Unprocessable Entity', 429: 'Too Many Requests', 500: 'Internal Server Error',
  501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable',
  504: 'Gateway Timeout',
};
const METHODS = [
  'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT',
];
// Content codings the host decodes before the body reaches the function.
const DECODED = new Set(['gzip', 'x-gzip', 'deflate', 'br']);

function nodeError(message, code) {
  const err = new Error(message);
  if (code) err.code = code;
  return err;
}

let modules = null;

// Return Node's {http, https} modules, built on first use: a context that never makes a Node
// request never evaluates readable-stream.
export function httpModules() {
  if (modules === null) modules = buildModules();
  return modules;
}

function buildModules() {
  const { Readable, Writable } = require('stream-browserify');
  const EventEmitter = require('events/');

  // A connection pool's options only: every request goes through the host's one pool.
  class Agent extends EventEmitter {
    constructor(options = {}) {
      super();
      this.options = Object.assign({ path: null }, options);
      this.keepAlive = Boolean(options.keepAlive);
      this.keepAliveMsecs = options.keepAliveMsecs || 1000;
      this.maxSockets = options.maxSockets || Infinity;
      this.maxFreeSockets = options.maxFreeSockets || 256;
      this.maxTotalSockets = options.maxTotalSockets || Infinity;
      this.sockets = {};
      this.freeSockets = {};
      this.requests = {};
      this.defaultPort = 80;
      this.protocol = 'http:';
    }
    destroy() {}
    getName(options = {}) {
      return `${options.host || 'localhost'}:${options.port || ''}:${options.localAddress || ''}`;
    }
  }

  // The socket a request reports: no connection of its own, so its controls do nothing.
  class FakeSocket extends EventEmitter {
    constructor(host, port) {
      super();
      this.connecting = false;
      this.remoteAddress = undefined;
      this.remotePort = port;
      this.servername = host;
      this.encrypted = undefined;
      this.destroyed = false;
      this.writable = true;
      this.readable = true;
    }
    setTimeout() {
      return this;
    }
    setNoDelay() {
      return this;
    }
    setKeepAlive() {
      return this;
    }
    ref() {
      return this;
    }
    unref() {
      return this;
    }
    address() {
      return {};
    }
    destroy() {
      this.destroyed = true;
      return this;
    }
    end() {
      return this;
    }
  }

  class IncomingMessage extends Readable {
    constructor(socket) {
      super();
      this.socket = socket;
      this.connection = socket;
      this.httpVersion = '1.1';
      this.httpVersionMajor = 1;
      this.httpVersionMinor = 1;
      this.headers = {};
      this.rawHeaders = [];
      this.trailers = {};
      this.rawTrailers = [];
      this.statusCode = null;
      this.statusMessage = null;
      this.url = '';
      this.method = null;
      this.complete = false;
      this.aborted = false;
    }
    _read() {}
    setTimeout(ms, cb) {
      if (cb) this.on('timeout', cb);
      return this;
    }
  }

  function hostOf(options) {
    let host = options.hostname || options.host || 'localhost';
    host = String(host);
    if (!options.hostname && /^[^[]*:\d+$/.test(host)) host = host.replace(/:\d+$/, '');
    if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
    return host;
  }

  function fromUrl(input) {
    const u = typeof input === 'string' ? new URL(input) : input;
    const out = {
      protocol: u.protocol,
      hostname: String(u.hostname).replace(/^\[|\]$/g, ''),
      port: u.port ? Number(u.port) : undefined,
      path: `${u.pathname || '/'}${u.search || ''}`,
    };
    if (u.username || u.password) {
      out.auth = `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`;
    }
    return out;
  }

  // Node's test for a WHATWG URL (url.parse() results and options objects have `path`).
  function isUrlLike(v) {
    return typeof v === 'string' || (v !== null && typeof v === 'object' && typeof v.href === 'string'
      && typeof v.protocol === 'string' && v.auth === undefined && v.path === undefined);
  }

  class ClientRequest extends Writable {
    constructor(input, options, cb, defaultProtocol) {
      super({ decodeStrings: true });
      if (typeof options === 'function') {
        cb = options;
        options = undefined;
      }
      let opts = isUrlLike(input) ? fromUrl(input) : Object.assign({}, input || {});
      if (options) opts = Object.assign(opts, options);
      if (opts.socketPath) throw nodeError('http.request: Unix sockets are not available in eventfn functions', 'ERR_NOT_SUPPORTED');
      const protocol = opts.protocol || defaultProtocol;
      if (protocol !== 'http:' && protocol !== 'https:') {
        throw nodeError(`Protocol "${protocol}" not supported. Expected "${defaultProtocol}"`, 'ERR_INVALID_PROTOCOL');
      }
      this.protocol = protocol;
      this.host = hostOf(opts);
      this.port = opts.port ? Number(opts.port) : (opts.defaultPort || (protocol === 'https:' ? 443 : 80));
      this.method = String(opts.method || 'GET').toUpperCase();
      this.path = String(opts.path || '/');
      if (/[\u0000-\u0020]/.test(this.path)) {
        throw nodeError('Request path contains unescaped characters', 'ERR_UNESCAPED_CHARACTERS');
      }
      this.agent = opts.agent;
      this.aborted = false;
      this.destroyed = false;
      this.finished = false;
      this.headersSent = false;
      this.reusedSocket = false;
      this.maxHeadersCount = null;
      this._headers = new Map();
      this._chunks = [];
      this._timeoutMs = 0;
      this._done = false;
      const headers = opts.headers;
      if (Array.isArray(headers)) {
        for (let i = 0; i + 1 < headers.length; i += 2) this.setHeader(headers[i], headers[i + 1]);
      } else if (headers) {
        for (const k of Object.keys(headers)) {
          if (headers[k] !== undefined) this.setHeader(k, headers[k]);
        }
      }
      if (opts.auth && !this.hasHeader('authorization')) {
        this.setHeader('Authorization', 'Basic ' + Buffer.from(String(opts.auth)).toString('base64'));
      }
      if (opts.timeout) this.setTimeout(opts.timeout);
      if (cb) this.once('response', cb);
      this.socket = this.connection = new FakeSocket(this.host, this.port);
      process.nextTick(() => {
        if (!this.destroyed) this.emit('socket', this.socket);
      });
    }
    setHeader(name, value) {
      if (this.headersSent) throw nodeError('Cannot set headers after they are sent to the client', 'ERR_HTTP_HEADERS_SENT');
      const n = String(name);
      if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(n)) {
        throw nodeError(`Header name must be a valid HTTP token ["${n}"]`, 'ERR_INVALID_HTTP_TOKEN');
      }
      if (value === undefined) throw nodeError(`Invalid value "undefined" for header "${n}"`, 'ERR_HTTP_INVALID_HEADER_VALUE');
      this._headers.set(n.toLowerCase(), [n, value]);
      return this;
    }
    getHeader(name) {
      const got = this._headers.get(String(name).toLowerCase());
      return got === undefined ? undefined : got[1];
    }
    hasHeader(name) {
      return this._headers.has(String(name).toLowerCase());
    }
    removeHeader(name) {
      this._headers.delete(String(name).toLowerCase());
    }
    getHeaders() {
      const out = {};
      for (const [k, [, v]] of this._headers) out[k] = v;
      return out;
    }
    getHeaderNames() {
      return Array.from(this._headers.keys());
    }
    getRawHeaderNames() {
      return Array.from(this._headers.values(), ([n]) => n);
    }
    flushHeaders() {
      this._sendHeaders();
    }
    setNoDelay() {}
    setSocketKeepAlive() {}
    setTimeout(ms, cb) {
      this._timeoutMs = Math.max(0, Number(ms) || 0);
      if (cb) this.once('timeout', cb);
      return this;
    }
    _sendHeaders() {
      if (this.headersSent) return;
      this.headersSent = true;
      const expect = this.getHeader('expect');
      if (typeof expect === 'string' && expect.toLowerCase() === '100-continue') {
        // The host sends the whole request at once: continue at once.
        Promise.resolve().then(() => this.emit('continue'));
      }
    }
    _write(chunk, encoding, callback) {
      this._sendHeaders();
      this._chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding));
      callback();
    }
    _final(callback) {
      this._sendHeaders();
      this.finished = true;
      callback();
      this._queue();
    }
    abort() {
      if (this.aborted) return;
      this.aborted = true;
      process.nextTick(() => this.emit('abort'));
      this.destroy();
    }
    _destroy(err, callback) {
      this._done = true;
      this.socket.destroy();
      callback(err);
    }
    _url() {
      if (/^https?:\/\//i.test(this.path)) return this.path; // absolute form (through a proxy)
      const port = this.port === (this.protocol === 'https:' ? 443 : 80) ? '' : `:${this.port}`;
      return `${this.protocol}//${this.host}${port}${this.path.startsWith('/') ? '' : '/'}${this.path}`;
    }
    _queue() {
      if (this._done) return;
      const pairs = [];
      for (const [k, [n, v]] of this._headers) {
        // Framing is the host client's: it sends the whole body with its own length.
        if (k === 'expect' || k === 'connection' || k === 'content-length' || k === 'transfer-encoding') continue;
        if (Array.isArray(v)) for (const x of v) pairs.push([n, String(x)]);
        else pairs.push([n, String(v)]);
      }
      const body = this._chunks.length ? Buffer.concat(this._chunks) : null;
      this._chunks = [];
      const queued = queueRequest({
        url: this._url(),
        method: this.method,
        headers: pairs,
        body: body === null ? null : { base64: body.toString('base64') },
        redirect: 'manual',
        follow: 0,
        timeout: this._timeoutMs,
        size: 0,
      }, (res) => this._settle(res));
      if (queued !== null) this._fail(queued);
    }
    _fail(err) {
      if (this._done) return;
      this.destroy(err);
    }
    _settle(res) {
      if (this._done) return;
      if (res.error) {
        if (res.error.type === 'request-timeout' && this._timeoutMs > 0) {
          this.emit('timeout');
          if (this._done) return;
          this._fail(nodeError('socket hang up', 'ECONNRESET'));
          return;
        }
        const reason = String(res.error.message).replace(/^request to \S+ failed, reason: /, '');
        this._fail(nodeError(reason, res.error.code || 'ECONNRESET'));
        return;
      }
      this._done = true;
      const msg = new IncomingMessage(this.socket);
      msg.req = this;
      msg.statusCode = res.status;
      msg.statusMessage = res.statusText || STATUS_CODES[res.status] || '';
      const data = res.body == null ? Buffer.alloc(0)
        : 'text' in res.body ? Buffer.from(res.body.text, 'utf8') : Buffer.from(res.body.base64, 'base64');
      for (const [name, value] of res.headers) {
        const k = name.toLowerCase();
        if (k === 'content-encoding' && DECODED.has(String(value).trim().toLowerCase())) continue;
        // The host decoded the body: its length is what arrives (HEAD keeps the server's).
        const v = k === 'content-length' && this.method !== 'HEAD' ? String(data.length) : value;
        msg.rawHeaders.push(name, v);
        if (k === 'set-cookie') (msg.headers[k] || (msg.headers[k] = [])).push(v);
        else if (k in msg.headers) {
          if (k !== 'content-length') msg.headers[k] += ', ' + v;
        } else msg.headers[k] = v;
      }
      msg.on('end', () => {
        msg.complete = true;
      });
      if (data.length && this.method !== 'HEAD') msg.push(data);
      msg.push(null);
      this.res = msg;
      if (this.listenerCount('response') === 0) msg.resume();
      else this.emit('response', msg);
      Promise.resolve().then(() => this.emit('close'));
    }
  }

  function requester(defaultProtocol, agent) {
    function request(input, options, cb) {
      return new ClientRequest(input, options, cb, defaultProtocol);
    }
    function get(input, options, cb) {
      const req = request(input, options, cb);
      req.end();
      return req;
    }
    return { request, get, globalAgent: agent };
  }

  function unsupportedServer() {
    throw nodeError('servers are not available in eventfn functions', 'ERR_NOT_SUPPORTED');
  }

  function makeModule(protocol) {
    const agent = new Agent();
    agent.protocol = protocol;
    agent.defaultPort = protocol === 'https:' ? 443 : 80;
    const { request, get } = requester(protocol, agent);
    return {
      Agent,
      ClientRequest,
      IncomingMessage,
      METHODS,
      STATUS_CODES,
      globalAgent: agent,
      maxHeaderSize: 16384,
      request,
      get,
      createServer: unsupportedServer,
      Server: unsupportedServer,
      validateHeaderName(name) {
        if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(String(name))) {
          throw nodeError(`Header name must be a valid HTTP token ["${name}"]`, 'ERR_INVALID_HTTP_TOKEN');
        }
      },
      validateHeaderValue(name, value) {
        if (value === undefined) throw nodeError(`Invalid value "undefined" for header "${name}"`, 'ERR_HTTP_INVALID_HEADER_VALUE');
      },
    };
  }

  return { http: makeModule('http:'), https: makeModule('https:') };
}
