// The heavy SDKs (AWS, Stripe, Twilio, ...), each bundled into its own chunk (build.mjs,
// dist/sdk/<name>.js). A context gets the chunks of the SDKs its function's code names, before
// that code runs (engine.py): each chunk registers a factory through `__eventfn_sdk__`, which
// disappears with the engine's first call (`seed`), still before that code runs. A factory
// runs on the first access of its global, so a function that never uses an SDK pays nothing.
import SDKS from './sdks.json';
import { nodeRequire } from './node/modules.js';

const factories = new Map();
const loaded = new Map();
let open = true;

function register(name, factory) {
  if (open && typeof name === 'string' && typeof factory === 'function' && !factories.has(name)) {
    factories.set(name, factory);
  }
}
Object.defineProperty(globalThis, '__eventfn_sdk__', { value: register, configurable: true });

// Close registration (the host's `seed`, before the function's code runs).
export function sealSdks() {
  open = false;
  delete globalThis.__eventfn_sdk__;
}

// Return the exports of SDK chunk `name`, running its factory on first use.
export function loadSdk(name, shown) {
  const got = loaded.get(name);
  if (got !== undefined) {
    if (got.ok) return got.value;
    throw got.value;
  }
  const factory = factories.get(name);
  if (factory === undefined) {
    const words = SDKS[name].words.map((w) => `"${w}"`).join(' and ');
    throw new ReferenceError(
      `${shown} is loaded for functions whose code names it, and ${words} do not all appear in ` +
        "this function's code (is the global reached only through a computed name?)",
    );
  }
  const module = { exports: {} };
  try {
    factory.call(module.exports, nodeRequire, module, module.exports, '/index.js', '/');
  } catch (err) {
    loaded.set(name, { ok: false, value: err });
    throw err;
  }
  loaded.set(name, { ok: true, value: module.exports });
  return module.exports;
}

// node-mailjet 6's Client, also callable the node-mailjet 3 way (`connect(key, secret)`).
function mailjetClient(mod) {
  const Client = mod.Client;
  if (typeof Client.connect !== 'function') {
    Client.connect = (apiKey, apiSecret, options) => Client.apiConnect(apiKey, apiSecret, options);
  }
  if (!Client.Client) Object.assign(Client, { Client, Request: mod.Request, HttpMethods: mod.HttpMethods });
  return Client;
}

const GOOGLE_CLOUD = ['automl', 'bigquery', 'datastore', 'firestore', 'functions', 'pubsub',
  'storage', 'tasks'];
// Google clients built on gRPC (google-gax): there is no HTTP/2 here, so their constructors
// default to gax's HTTP/1.1 fallback (`fallback: true`, protobuf over HTTPS through the host).
const GAX_PRODUCTS = new Set(['automl', 'datastore', 'firestore', 'functions', 'pubsub', 'tasks']);
const CLIENT_NAME = /Client$|^PubSub$|^Firestore$|^Datastore$/;

function preferFallback(Cls) {
  return new Proxy(Cls, {
    construct(target, args, newTarget) {
      const [options, ...rest] = args;
      const merged = Object.assign({ fallback: true }, options || {});
      return Reflect.construct(target, [merged, ...rest], newTarget);
    },
  });
}

function withHttpFallback(exports) {
  const wrap = (obj, depth) => {
    const copy = {};
    for (const key of Object.keys(obj)) {
      const value = obj[key];
      if (typeof value === 'function' && CLIENT_NAME.test(key)) {
        copy[key] = preferFallback(value);
      } else if (depth > 0 && value && typeof value === 'object' && /^v\d/.test(key)) {
        copy[key] = wrap(value, depth - 1);
      } else copy[key] = value;
    }
    return copy;
  };
  return wrap(exports, 1);
}

// Expose each SDK under the global the reference names, with `defineLazy(name, factory)`.
export function defineSdkGlobals(defineLazy) {
  defineLazy('AWS', () => loadSdk('aws', 'AWS'));
  defineLazy('stripe', () => loadSdk('stripe', 'stripe'));
  defineLazy('twilio', () => loadSdk('twilio', 'twilio'));
  defineLazy('sendgrid', () => loadSdk('sendgrid', 'sendgrid'));
  defineLazy('jsforce', () => loadSdk('jsforce', 'jsforce'));
  defineLazy('hubspotlib', () => ({ hubspot: loadSdk('hubspot', 'hubspotlib.hubspot') }));
  defineLazy('mailchimplib', () => ({ mailchimp: loadSdk('mailchimp', 'mailchimplib.mailchimp') }));
  defineLazy('nodemailjet', () => ({ nodemailjet: mailjetClient(loadSdk('mailjet', 'nodemailjet.nodemailjet')) }));
  defineLazy('skyflowlib', () => ({ skyflow: loadSdk('skyflow', 'skyflowlib.skyflow') }));
  defineLazy('winstonlib', () => ({ winston: loadSdk('winston', 'winstonlib.winston') }));
  defineLazy('google', () => {
    const cloud = {};
    for (const product of GOOGLE_CLOUD) {
      Object.defineProperty(cloud, product, {
        enumerable: true,
        configurable: true,
        get() {
          let value = loadSdk(`google-${product}`, `google.cloud.${product}`);
          if (GAX_PRODUCTS.has(product)) value = withHttpFallback(value);
          Object.defineProperty(cloud, product, { value, enumerable: true, writable: true, configurable: true });
          return value;
        },
      });
    }
    return { cloud };
  });
}
