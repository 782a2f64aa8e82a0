// Node built-ins the runtime does not provide (fs, net, http...): loading works, using fails clearly.
function unsupported(name) {
  return function () {
    throw new Error(`${name} is not available in eventfn functions; use fetch() instead`);
  };
}
export const request = unsupported('http.request');
export const get = unsupported('http.get');
export const Agent = function Agent() {};
export const globalAgent = {};
export const readFileSync = unsupported('fs');
export default { request, get, Agent, globalAgent };
