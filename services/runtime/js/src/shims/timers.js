// Node's timers module for bundled libraries: delegates to the invocation-scoped globals.
export function setImmediate(fn, ...args) {
  return globalThis.setTimeout(fn, 0, ...args);
}
export function clearImmediate(id) {
  globalThis.clearTimeout(id);
}
export function setTimeout(fn, ms, ...args) {
  return globalThis.setTimeout(fn, ms, ...args);
}
export function clearTimeout(id) {
  globalThis.clearTimeout(id);
}
