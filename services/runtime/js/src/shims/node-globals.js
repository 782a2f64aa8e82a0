// Injected into every SDK chunk: Node's free `process` and `Buffer`, from the runtime.
export const process = require('process');
export const Buffer = require('buffer').Buffer;
