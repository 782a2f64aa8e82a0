// A file system that has no files: probes (existsSync, callbacks) answer "not there" with
// ENOENT, so SDKs looking for optional config go on; reads and writes fail saying why.
import { unavailable, unsupportedModule } from './unsupported.js';

function later(cb, err) {
  if (typeof cb === 'function') Promise.resolve().then(() => cb(err));
}

function lastCallback(args) {
  return args.length && typeof args[args.length - 1] === 'function' ? args[args.length - 1] : null;
}

function failing(name) {
  return (...args) => later(lastCallback(args), unavailable(`fs.${name}(${JSON.stringify(String(args[0]))})`, 'ENOENT'));
}

function throwing(name) {
  return (path) => {
    throw unavailable(`fs.${name}(${JSON.stringify(String(path))})`, 'ENOENT');
  };
}

function rejecting(name) {
  return (path) => Promise.reject(unavailable(`fs.promises.${name}(${JSON.stringify(String(path))})`, 'ENOENT'));
}

// Return the `fs` module (built by modules.js on first require).
export function makeFs() {
  return unsupportedModule('fs', known());
}

const CALLBACKS = ['readFile', 'writeFile', 'appendFile', 'stat', 'lstat', 'access', 'open',
  'readdir', 'mkdir', 'unlink', 'realpath', 'rename', 'rm', 'rmdir'];
function known() {
  const members = {
    existsSync: () => false,
    exists: (path, cb) => later(cb, false),
    constants: { F_OK: 0, R_OK: 4, W_OK: 2, X_OK: 1 },
    promises: {},
  };
  for (const name of CALLBACKS) {
    members[name] = failing(name);
    members[`${name}Sync`] = throwing(`${name}Sync`);
    members.promises[name] = rejecting(name);
  }
  members.createReadStream = throwing('createReadStream');
  members.createWriteStream = throwing('createWriteStream');
  return members;
}
