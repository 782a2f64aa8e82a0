// A module-scoped `process` for bundled libraries (readable-stream, util, the SDKs): never a
// global. Its stdout and stderr write to the function's console (see setProcessOutput).
const queue = [];
let draining = false;
function drain() {
  draining = false;
  const batch = queue.splice(0, queue.length);
  for (const [fn, args] of batch) fn(...args);
}
let output = () => {};

// Send process.stdout/stderr writes to `write(level, line)` (the runtime's console).
export function setProcessOutput(write) {
  output = write;
}

function stream(level, fd) {
  return {
    fd,
    isTTY: false,
    writable: true,
    columns: 80,
    write(chunk, encoding, cb) {
      const text = typeof chunk === 'string' ? chunk : String(chunk);
      output(level, text.endsWith('\n') ? text.slice(0, -1) : text);
      const done = typeof encoding === 'function' ? encoding : cb;
      if (typeof done === 'function') Promise.resolve().then(done);
      return true;
    },
    on() {
      return this;
    },
    once() {
      return this;
    },
    removeListener() {
      return this;
    },
    end() {},
  };
}

const started = Date.now();
function hrtime(prev) {
  const ms = Date.now();
  let s = Math.floor(ms / 1000);
  let ns = (ms % 1000) * 1e6;
  if (prev) {
    s -= prev[0];
    ns -= prev[1];
    if (ns < 0) {
      s -= 1;
      ns += 1e9;
    }
  }
  return [s, ns];
}
hrtime.bigint = () => BigInt(Date.now()) * 1000000n;

function noListeners() {
  return process;
}

export const process = {
  env: {},
  argv: [],
  execArgv: [],
  version: 'v18.0.0',
  versions: { node: '18.0.0' },
  release: { name: 'node' },
  platform: 'linux',
  arch: 'x64',
  pid: 1,
  ppid: 0,
  title: 'eventfn',
  browser: true,
  stdout: stream('log', 1),
  stderr: stream('error', 2),
  cwd: () => '/',
  umask: () => 0o22,
  uptime: () => (Date.now() - started) / 1000,
  hrtime,
  memoryUsage: () => ({ rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }),
  cpuUsage: () => ({ user: 0, system: 0 }),
  emitWarning: () => {},
  on: noListeners,
  once: noListeners,
  off: noListeners,
  addListener: noListeners,
  removeListener: noListeners,
  removeAllListeners: noListeners,
  prependListener: noListeners,
  listeners: () => [],
  listenerCount: () => 0,
  emit: () => false,
  binding() {
    throw new Error('process.binding is not available in eventfn functions');
  },
  exit() {
    throw new Error('process.exit is not available in eventfn functions');
  },
  nextTick(fn, ...args) {
    queue.push([fn, args]);
    if (!draining) {
      draining = true;
      Promise.resolve().then(drain);
    }
  },
};
