// Open one page in headless Chromium (Debian's package, driven by playwright-core) and
// report what happened as one JSON line on stdout: the page's own result
// (`window.__result`, set by the page when it is done or failed), every request the page
// made with its answer, console messages and uncaught errors.
//
// usage: node drive.mjs <page url> <chromium path> <timeout ms>
import { chromium } from 'playwright-core';

const [url, executablePath, timeoutText] = process.argv.slice(2);
const timeout = Number(timeoutText || 60000);

// Without the background-networking flags Chromium dials Google services at start, and a
// closed network refuses those connections.
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const report = { result: null, requests: [], console: [], errors: [] };
const browser = await chromium.launch({ executablePath, headless: true, args: FLAGS, timeout });
try {
  const page = await browser.newPage();
  // Requests in flight, and the status of each answer (from the `response` event: awaiting
  // request.response() in `requestfinished` stalls for preflighted cross-origin requests).
  const pending = new Set();
  const statuses = new Map();
  let settled = () => {};
  const done = (request, entry) => {
    pending.delete(request);
    report.requests.push({ method: request.method(), url: request.url(), ...entry });
    if (pending.size === 0) settled();
  };
  page.on('request', (request) => pending.add(request));
  page.on('response', (response) => statuses.set(response.request(), response.status()));
  page.on('requestfinished', (request) => done(request, { status: statuses.get(request) }));
  page.on('requestfailed', (request) => done(request, { failure: request.failure()?.errorText }));
  page.on('console', (message) => report.console.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => report.errors.push(String(error)));

  await page.goto(url, { timeout });
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout });
  report.result = await page.evaluate(() => window.__result);
  // Events the library sends after the page is done (a batch's request) finish too.
  if (pending.size > 0) {
    await Promise.race([
      new Promise((resolve) => { settled = resolve; }),
      new Promise((resolve) => setTimeout(resolve, timeout).unref()),
    ]);
  }
} catch (error) {
  report.errors.push(`driver: ${error.message}`);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
