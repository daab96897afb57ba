// Tracker budget in headless Chromium: script size, bytes per event on the
// wire, and main-thread cost during continuous mouse movement (long tasks via
// PerformanceObserver, script time via CDP Performance metrics, with and
// without the tracker). No chronosd needed: batches are answered 200 by a route.
//
//   npm run perf --prefix tracker        (CHROMIUM=/usr/bin/chromium by default)
import { chromium } from 'playwright-core';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveSite } from './serve.mjs';

const SECONDS = Number(process.env.SECONDS || 10);
const endpoint = 'http://127.0.0.1:9'; // never reached: the route answers
const options = { endpoint, key: 'wk_perf_0123456789abcdef', flushMs: 2000 };
const dir = mkdtempSync(join(tmpdir(), 'chronos-perf-'));
const min = readFileSync(new URL('../dist/chronos.min.js', import.meta.url), 'utf8');
const withTracker = join(dir, 'with.js');
const without = join(dir, 'without.js');
writeFileSync(withTracker, `${min}\nChronos.init(${JSON.stringify(options)});\n`);
writeFileSync(without, 'window.chronos = { flush() {} };\n');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});

/** One run on page2.html: `SECONDS` of mouse movement, then clicks and typing. */
async function run(bundle) {
  const site = await serveSite({ chronosJs: bundle, options });
  const SITE = `http://127.0.0.1:${site.address().port}`;
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const bodies = [];
  await ctx.route(endpoint + '/v1/batch', (route) => {
    bodies.push(route.request().postData());
    route.fulfill({ status: 200, headers: { 'access-control-allow-origin': SITE }, body: '{"ok":true}' });
  });
  await ctx.addInitScript(() => {
    window.__long = [];
    window.__moves = 0;
    new PerformanceObserver((l) => window.__long.push(...l.getEntries().map((e) => e.duration))).observe({ type: 'longtask', buffered: true });
    addEventListener('mousemove', () => window.__moves++, { capture: true, passive: true });
  });
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Performance.enable');
  await page.goto(SITE + '/page2.html');
  await sleep(300);
  const metric = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
  const m0 = await metric();
  const t0 = Date.now();
  // Continuous movement: circles, one CDP mouse event per step.
  for (let i = 0; Date.now() - t0 < SECONDS * 1000; i++) {
    await page.mouse.move(500 + 300 * Math.cos(i / 40), 350 + 250 * Math.sin(i / 40));
  }
  const m1 = await metric();
  const moves = await page.evaluate(() => window.__moves);
  for (let i = 0; i < 20; i++) await page.mouse.click(400 + i * 10, 500);
  await page.click('#name');
  await page.keyboard.type('some text typed in the name field');
  await page.click('#bio');
  await page.keyboard.type('and more in the textarea');
  await page.evaluate(() => chronos.flush());
  await sleep(500);
  const long = await page.evaluate(() => window.__long);
  // In-page cost of the handler alone: synthetic mousemove events.
  const perEventUs = await page.evaluate(() => {
    const n = 100000;
    const t = performance.now();
    for (let i = 0; i < n; i++) document.dispatchEvent(new MouseEvent('mousemove', { clientX: i % 500, clientY: i % 300, bubbles: true }));
    return ((performance.now() - t) * 1000) / n;
  });
  await ctx.close();
  site.close();
  return { moves, long, perEventUs, bodies, script: m1.ScriptDuration - m0.ScriptDuration, task: m1.TaskDuration - m0.TaskDuration, seconds: (Date.now() - t0) / 1000 };
}

const base = await run(without);
const tracked = await run(withTracker);
await browser.close();

const gz = gzipSync(Buffer.from(min), { level: 9 }).length;
const batches = tracked.bodies.map((b) => JSON.parse(b));
const events = batches.flatMap((b) => b.events);
const total = tracked.bodies.reduce((n, b) => n + Buffer.byteLength(b), 0);
const envelope = batches.reduce((n, b) => n + Buffer.byteLength(JSON.stringify({ ...b, events: [] })), 0);
const perType = {};
for (const e of events) {
  const t = (perType[e[0]] ??= { n: 0, bytes: 0 });
  t.n++;
  t.bytes += Buffer.byteLength(JSON.stringify(e)) + 1;
}
const ms = (s) => (s * 1000).toFixed(0);
console.log(`chronos.min.js: ${Buffer.byteLength(min)} B minified, ${gz} B gzipped (budget 6144)`);
console.log(`wire: ${events.length} events in ${batches.length} batches, ${total} B: ${(total / events.length).toFixed(1)} B/event all-in, ${((total - envelope) / events.length).toFixed(1)} B/event without the per-batch envelope (${(envelope / batches.length).toFixed(0)} B/batch)`);
for (const [t, v] of Object.entries(perType)) console.log(`  ${t}: ${v.n} events, ${(v.bytes / v.n).toFixed(1)} B/event`);
for (const [name, r] of [['without tracker', base], ['with tracker', tracked]]) {
  console.log(`${name}: ${r.moves} mousemove events in ${r.seconds.toFixed(1)} s; main-thread script ${ms(r.script)} ms, tasks ${ms(r.task)} ms; long tasks: ${r.long.length}${r.long.length ? ' (' + r.long.map((d) => d.toFixed(0)).join(', ') + ' ms)' : ''}; synthetic mousemove dispatch ${r.perEventUs.toFixed(2)} µs/event`);
}
console.log(`tracker cost: ${ms(tracked.script - base.script)} ms more script time over ${tracked.seconds.toFixed(1)} s of movement (${(((tracked.script - base.script) / tracked.seconds) * 100).toFixed(2)} % of one core), ${(tracked.perEventUs - base.perEventUs).toFixed(2)} µs per mousemove`);
if (gz > 6144 || tracked.long.length) process.exit(1);
