// Node built-ins the runtime cannot provide (sockets, processes, files): loading works, and
// each function fails with an error that names it, so SDK code that only probes them still runs.
function notAvailable(what) {
  const err = new Error(`${what} is not available in eventfn functions (no sockets, processes ` +
    'or files; HTTP goes through fetch, http and https)');
  err.code = 'ERR_NOT_AVAILABLE_IN_EVENTFN';
  return err;
}

// Return a module whose known members are `known` and whose every other member throws.
export function unsupportedModule(name, known = {}) {
  const made = new Map();
  return new Proxy(Object.assign({}, known), {
    get(target, prop) {
      if (prop in target || typeof prop === 'symbol') return target[prop];
      if (prop === 'then' || prop === '__esModule' || prop === 'default') return undefined;
      if (!made.has(prop)) {
        made.set(prop, function () {
          throw notAvailable(`${name}.${prop}`);
        });
      }
      return made.get(prop);
    },
  });
}

// Return an error for a callback API (code ENOENT for files: libraries probing files go on).
export function unavailable(what, code) {
  const err = notAvailable(what);
  if (code) err.code = code;
  return err;
}
