// A module-scoped `process` for bundled libraries (readable-stream, util): never a global.
const queue = [];
let draining = false;
function drain() {
  draining = false;
  const batch = queue.splice(0, queue.length);
  for (const [fn, args] of batch) fn(...args);
}
export const process = {
  env: {},
  argv: [],
  version: 'v18.0.0',
  versions: { node: '18.0.0' },
  platform: 'linux',
  browser: true,
  cwd: () => '/',
  emitWarning: () => {},
  nextTick(fn, ...args) {
    queue.push([fn, args]);
    if (!draining) {
      draining = true;
      Promise.resolve().then(drain);
    }
  },
};
