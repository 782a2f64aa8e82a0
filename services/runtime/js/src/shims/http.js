// Node's http module for libraries bundled into the runtime (oauth): the runtime's own.
module.exports = require('../node/http.js').httpModules().http;
