// The request queue of the running invocation, shared by fetch and Node's http/https: requests
// are queued on the invocation whose code runs now, and the host performs them in rounds.
let currentInvocation = () => null;

// Set by the invocation machinery: `lookup()` returns the invocation that owns the running code.
export function setInvocationLookup(lookup) {
  currentInvocation = lookup;
}

// Queue `request` (the report's FetchRequest shape, without its id) on the running invocation;
// `callback` gets the host's result. Returns null, or an Error when no handler is running.
export function queueRequest(request, callback) {
  const inv = currentInvocation();
  if (inv === null) {
    const err = new Error(`request to ${request.url} failed, reason: requests are only ` +
      'possible while a handler runs');
    err.code = 'ENOINVOCATION';
    return err;
  }
  inv.queueFetch(request, callback);
  return null;
}
