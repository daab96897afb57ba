// Drives headless Chromium through the test site against a real chronosd; run
// by tests/tracker.rs, which then checks the rows in PostgreSQL.
//
// Env: CHRONOS_JS (bundle written by `chronos tracker build`), OPTIONS (its
// Chronos.init options as JSON), SITE_PORT, CHROMIUM (default /usr/bin/chromium).
// Prints `RESULT <json>` (sessions, batch ids and what the page saw) on the last
// line; exits 1 with a message when something the browser can see is wrong.
import { chromium } from 'playwright-core';
import { serveSite } from './serve.mjs';

const options = JSON.parse(process.env.OPTIONS);
const site = await serveSite({ port: Number(process.env.SITE_PORT), chronosJs: process.env.CHRONOS_JS, options });
const SITE = `http://127.0.0.1:${site.address().port}`;
const BATCH = options.endpoint + '/v1/batch';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const result = {};
const failures = [];
const check = (ok, what) => ok || failures.push(what);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});

/** A fresh context (own sessionStorage and localStorage) with page errors collected. */
async function context(name) {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => failures.push(`${name}: page error: ${e.message}`));
  return { ctx, page };
}

/** Records every fetch to /v1/batch in `ctx` with its batch id, page and answer. */
function watch(ctx) {
  const seen = (current = []);
  const entries = new WeakMap();
  ctx.on('request', (r) => {
    if (!r.url().startsWith(BATCH) || r.method() !== 'POST') return;
    const body = JSON.parse(r.postData());
    const entry = { batch: body.batch, events: body.events, page: body.page.url, bytes: Buffer.byteLength(r.postData()), status: null };
    seen.push(entry);
    entries.set(r, entry);
  });
  ctx.on('requestfinished', async (r) => {
    const e = entries.get(r);
    if (e) e.status = (await r.response())?.status() ?? 'failed';
  });
  ctx.on('requestfailed', (r) => {
    const e = entries.get(r);
    if (e) e.status = 'failed';
  });
  return seen;
}

const sessionOf = (page) => page.evaluate(() => sessionStorage.getItem('chronos.session'));

let current = []; // the scenario's batches, shown when a wait times out
async function waitFor(what, cond, ms = 15000) {
  const until = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > until) {
      const batches = current.map((s) => ({ batch: s.batch, events: s.events.length, status: s.status }));
      throw new Error(`timed out waiting for ${what}; batches: ${JSON.stringify(batches)}`);
    }
    await sleep(50);
  }
}

// --- 1. Multi-page site with the configured bundle (flush interval far away):
// every batch leaves on navigation or when the tab closes. Fetches to chronosd
// are aborted, so whatever arrives came by sendBeacon.
{
  const { ctx, page } = await context('site');
  const fetched = watch(ctx);
  await ctx.route(BATCH, (route) => route.abort());
  await page.goto(SITE + '/index.html');
  result.site_session = await sessionOf(page);
  await page.mouse.move(100, 100);
  await sleep(150);
  await page.mouse.move(200, 150, { steps: 20 });
  await sleep(400);
  const box = await page.locator('button.buy').boundingBox();
  result.buy = { x: Math.round(box.x + box.width / 2), y: Math.round(box.y + box.height / 2) };
  await page.mouse.click(result.buy.x, result.buy.y);
  await sleep(200); // the pointer rests: one sample there
  // An empty link (no text, no href) must not throw.
  await page.evaluate(() => document.getElementById('empty').click());
  await page.evaluate(() => document.activeElement.blur()); // keys on the page itself
  await page.keyboard.press('k');
  await page.keyboard.press('ArrowDown');
  // A click on the <span> inside the link: link text and href of the <a>.
  await page.click('#docs span');
  await page.waitForURL('**/page2.html');
  await page.click('#name');
  await page.keyboard.type('tx-SECRET-alpha');
  await page.click('#email');
  await page.keyboard.type('em-SECRET-echo@example.com');
  await page.click('#pw');
  await page.keyboard.type('pw-SECRET-bravo');
  await page.click('#bio');
  await page.keyboard.type('ta-SECRET-charlie');
  await page.click('#ed');
  await page.keyboard.type('ce-SECRET-delta');
  await page.click('#send');
  await page.waitForURL('**/thanks.html');
  await page.click('#again');
  check(await page.evaluate(() => chronos.track('signup', { plan: 'pro', seats: 3 })), 'track(signup) returned false');
  check(!(await page.evaluate(() => chronos.track('no_such_type', { a: 1 }))), 'track(no_such_type) was accepted');
  check(
    (await sessionOf(page)) === result.site_session,
    'the session id changed between pages of one tab',
  );
  // Closing the tab: pagehide sends the last batch.
  await page.close();
  await sleep(500);
  result.site_fetches = fetched.length;
  check(fetched.length === 0, `site: ${fetched.length} batch(es) went by fetch; navigation flushes must use sendBeacon`);
  await ctx.close();
}

// --- 2. Single-page app with the ES module and Chronos.init at run time.
{
  const { ctx, page } = await context('spa');
  const seen = watch(ctx);
  await page.goto(SITE + '/spa/?flush=1500');
  await page.waitForFunction(() => window.chronos);
  result.spa_session = await sessionOf(page);
  const nav = async (js) => {
    await page.evaluate(js);
    await sleep(40);
  };
  await page.click('#a');
  await nav(() => history.pushState({}, '', '/spa/a'));
  await page.click('#b');
  await nav(() => history.replaceState({}, '', '/spa/a?tab=2'));
  await nav(() => history.replaceState({ same: 1 }, '', '/spa/a?tab=2')); // same URL: no pageview
  await nav(() => history.pushState({ same: 2 }, '', '/spa/a?tab=2')); // same URL: no pageview
  await nav(() => (location.hash = 'sec')); // popstate + hashchange: one pageview
  await nav(() => history.back());
  await page.waitForFunction(() => !location.hash);
  await sleep(40);
  await nav(() => history.pushState({}, '', '/spa/b'));
  await nav(() => history.back());
  await page.waitForFunction(() => location.pathname === '/spa/a');
  await sleep(40);
  check(await page.evaluate(() => chronos.track('signup', { plan: 'team', seats: 7 })), 'spa: track(signup) returned false');
  // Periodic flush: no navigation, the click still leaves within a few seconds.
  await page.click('#c');
  const before = seen.length;
  await waitFor('the periodic flush', () => seen.length > before && seen.at(-1).events.some((e) => e[0] === 'clicks'), 6000);
  // Opt-out: nothing from #d; after opt-in, #e again.
  await page.evaluate(() => chronos.optOut());
  await page.click('#d');
  await page.evaluate(() => chronos.optIn());
  await page.click('#e');
  await page.evaluate(() => chronos.flush());
  await waitFor('every spa batch answered', () => seen.length > 0 && seen.every((s) => s.status !== null));
  check(seen.every((s) => s.status === 200), `spa: statuses ${JSON.stringify(seen.map((s) => s.status))}`);
  result.spa_batches = seen.map((s) => s.batch);
  await ctx.close();
}

// --- 3. chronosd answers 503 (after storing the batch, and once without), then 2xx:
// the same batch id is retried and stored once.
{
  const { ctx, page } = await context('retry');
  const seen = watch(ctx);
  let target;
  let n = 0;
  await ctx.route(BATCH, async (route) => {
    const batch = JSON.parse(route.request().postData()).batch;
    target ??= batch;
    if (batch !== target || n >= 2) return route.continue();
    n++;
    // First answer: chronosd has the batch, the browser is told 503 anyway.
    if (n === 1) await route.fetch();
    await route.fulfill({
      status: 503,
      headers: { 'access-control-allow-origin': SITE, 'content-type': 'application/json', 'retry-after': '1' },
      body: JSON.stringify({ ok: false, error: { code: 'overloaded', message: 'test', retry_after: 1 } }),
    });
  });
  await page.goto(SITE + '/spa/?flush=600000');
  await page.waitForFunction(() => window.chronos);
  result.retry_session = await sessionOf(page);
  await page.click('#a');
  await page.click('#b');
  await page.evaluate(() => chronos.flush());
  await waitFor('the retried batch stored', () => seen.filter((s) => s.batch === target && s.status === 200).length === 1, 20000);
  const attempts = seen.filter((s) => s.batch === target);
  check(attempts.length === 3, `retry: ${attempts.length} attempts of ${target}, expected 3`);
  check(JSON.stringify(attempts.map((a) => a.status)) === '[503,503,200]', `retry: statuses ${JSON.stringify(attempts.map((a) => a.status))}`);
  result.retry_batch = target;
  result.retry_events = attempts[0].events.length;
  await ctx.close();
}

// --- 4. Network down: the batch is kept in localStorage and sent on the next page load.
{
  const { ctx, page } = await context('outbox');
  const seen = watch(ctx);
  let down = true;
  await ctx.route(BATCH, (route) => (down ? route.abort() : route.continue()));
  await page.goto(SITE + '/spa/?flush=600000');
  await page.waitForFunction(() => window.chronos);
  result.outbox_session = await sessionOf(page);
  await page.click('#a');
  await page.evaluate(() => chronos.flush());
  await waitFor('a failed attempt', () => seen.some((s) => s.status === 'failed'));
  const kept = seen[0].batch;
  // Next page load (same tab): the batch comes back from the outbox.
  const mark = seen.length;
  await page.goto(SITE + '/spa/?flush=600000');
  await waitFor('an attempt from the new page', () => seen.slice(mark).some((s) => s.batch === kept && s.status === 'failed'));
  down = false;
  await waitFor('the kept batch stored', () => seen.some((s) => s.batch === kept && s.status === 200), 20000);
  result.outbox_batch = kept;
  result.outbox_events = seen[0].events.length;
  await ctx.close();
}

// --- 5. Large buffers: every body stays under 60 000 bytes (split batches), also on close.
{
  const { ctx, page } = await context('big');
  const seen = watch(ctx);
  await page.goto(SITE + '/spa/?flush=600000');
  await page.waitForFunction(() => window.chronos);
  result.big_session = await sessionOf(page);
  const notes = (tag, n) => page.evaluate(([tag, n]) => {
    for (let i = 0; i < n; i++) chronos.track('note', { text: 'é'.repeat(1000) + tag + i });
  }, [tag, n]);
  await notes('#a', 60); // over the size threshold: sent at once, split in two
  await waitFor('the full buffer sent', () => new Set(seen.filter((s) => s.status === 200).map((s) => s.batch)).size === 2);
  await notes('#b', 40); // ~80 KB when the tab closes: split, beacons, the rest kept
  await page.close();
  const next = await ctx.newPage(); // same origin, same localStorage: the outbox goes
  await next.goto(SITE + '/spa/?flush=600000');
  await sleep(3000);
  // (Attempts refused by the keepalive quota never get an answer; a later one of the same batch does.)
  await waitFor('every big batch stored', () => seen.every((s) => seen.some((t) => t.batch === s.batch && t.status === 200)));
  // Two keepalive bodies of ~56 KB exceed the 64 KiB quota together: the second fails, then goes.
  const stored = new Set(seen.filter((s) => s.status === 200).map((s) => s.batch));
  check(seen.every((s) => stored.has(s.batch)), `big: statuses ${JSON.stringify(seen.map((s) => s.status))}`);
  check(seen.every((s) => s.bytes < 60000), `big: bodies of ${JSON.stringify(seen.map((s) => s.bytes))} bytes`);
  result.big_bodies = seen.map((s) => [s.bytes, s.status]);
  await ctx.close();
}

// --- 6. Global Privacy Control: nothing is captured or sent.
{
  const { ctx, page } = await context('gpc');
  await ctx.addInitScript(() => Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true }));
  const seen = watch(ctx);
  await page.goto(SITE + '/spa/?flush=200');
  await page.waitForFunction(() => window.chronos);
  await page.click('#a');
  await page.evaluate(() => chronos.flush());
  await sleep(800);
  check(seen.length === 0, `gpc: ${seen.length} batch(es) sent despite Global Privacy Control`);
  check((await sessionOf(page)) === null, 'gpc: a session id was stored despite Global Privacy Control');
  await ctx.close();
}

await browser.close();
site.close();
console.log('RESULT ' + JSON.stringify(result));
if (failures.length) {
  console.error('browser checks failed:\n  ' + failures.join('\n  '));
  process.exit(1);
}
