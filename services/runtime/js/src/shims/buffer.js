// Injected so libraries that use a free `Buffer` get the bundled one.
export { Buffer } from 'buffer/';
