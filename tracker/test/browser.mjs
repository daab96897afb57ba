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
  ignoreDefaultArgs: ['--disable-back-forward-cache'], // as in a user's browser
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
    const entry = { batch: body.batch, events: body.events, page: body.page.url, bytes: Buffer.byteLength(r.postData()), type: r.resourceType(), url: r.url(), status: null };
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
// every batch leaves on navigation or when the tab closes, by sendBeacon
// (resource type `ping`; Playwright does not even see those sent during unload).
{
  const { ctx, page } = await context('site');
  const seen = watch(ctx);
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
  check((await ctx.cookies()).length === 0, `site: cookies were set: ${JSON.stringify(await ctx.cookies())}`);
  // Closing the tab: pagehide sends the last batch.
  await page.close();
  await sleep(500);
  const fetched = seen.filter((s) => s.type !== 'ping');
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
  // A link with a long text: cut at 512 bytes, on a character boundary.
  await page.evaluate(() => {
    // (Absolute href: the page has <base href="/">.)
    document.body.insertAdjacentHTML('beforeend', `<a id="long" href="${location.href.split('#')[0]}#long">${'é'.repeat(300)}</a>`);
  });
  await page.click('#long');
  await nav(() => history.back()); // #long → back: one more hash pageview
  await page.waitForFunction(() => !location.hash);
  await sleep(40);
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

// --- 3. chronosd answers 503 (after storing the batch), then 429, then 2xx:
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
    const [status, code] = n === 1 ? [503, 'overloaded'] : [429, 'rate_limited'];
    await route.fulfill({
      status,
      headers: { 'access-control-allow-origin': SITE, 'content-type': 'application/json', 'retry-after': '1' },
      body: JSON.stringify({ ok: false, error: { code, message: 'test', retry_after: 1 } }),
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
  check(JSON.stringify(attempts.map((a) => a.status)) === '[503,429,200]', `retry: statuses ${JSON.stringify(attempts.map((a) => a.status))}`);
  result.retry_batch = target;
  result.retry_events = attempts[0].events.length;
  await ctx.close();
}

// --- 3b. A 4xx is final: not retried, and said in the console. (The endpoint is
// given as …/v1/batch/ here: the tracker still posts to …/v1/batch.)
{
  const { ctx, page } = await context('refused');
  const seen = watch(ctx);
  const warnings = [];
  page.on('console', (m) => m.type() === 'warning' && warnings.push(m.text()));
  await ctx.route(BATCH, (route) =>
    route.fulfill({
      status: 400,
      headers: { 'access-control-allow-origin': SITE, 'content-type': 'application/json' },
      body: JSON.stringify({ ok: false, error: { code: 'invalid_batch', message: 'test', path: 'page' } }),
    }),
  );
  await page.goto(SITE + '/spa/?flush=600000&ep=/v1/batch/');
  await page.waitForFunction(() => window.chronos);
  await page.click('#a');
  await page.evaluate(() => chronos.flush());
  await waitFor('the answer', () => seen.length > 0 && seen[0].status !== null);
  await sleep(2500); // a retry would come within 1 s
  check(seen.length === 1 && seen[0].status === 400, `refused: ${seen.length} attempts (${JSON.stringify(seen.map((s) => s.status))}), expected 1`);
  check(seen[0]?.url === BATCH, `refused: posted to ${seen[0]?.url}, expected ${BATCH}`);
  check(warnings.some((w) => w.includes('Chronos: batch refused 400') && w.includes('invalid_batch')), `refused: warnings ${JSON.stringify(warnings)}`);
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
  let mark = Infinity; // attempts after the new document committed come from the new page
  page.once('framenavigated', () => (mark = seen.length));
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

// --- 5b. The outbox is bounded: of 20 unsent batches the newest 16 are kept and sent later.
{
  const { ctx, page } = await context('outbox-bound');
  const seen = watch(ctx);
  let down = true;
  await ctx.route(BATCH, (route) => (down ? route.abort() : route.continue()));
  await page.goto(SITE + '/spa/?flush=600000');
  await page.waitForFunction(() => window.chronos);
  result.bound_session = await sessionOf(page);
  for (let i = 0; i < 20; i++) {
    await page.click('#a');
    await page.evaluate(() => chronos.flush());
  }
  await waitFor('20 failed batches', () => new Set(seen.filter((s) => s.status === 'failed').map((s) => s.batch)).size === 20);
  // Oldest first, by the time of their click.
  const clickTime = (s) => s.events.find((e) => e[0] === 'clicks')[1];
  const ids = [...new Set(seen.map((s) => s.batch))].sort((a, b) => clickTime(seen.find((s) => s.batch === a)) - clickTime(seen.find((s) => s.batch === b)));
  // Attempts after the new document committed come from the new page (the old one may
  // still retry until then).
  let mark = Infinity;
  page.once('framenavigated', () => (mark = seen.length));
  await page.goto(SITE + '/spa/?flush=600000'); // pagehide: the outbox is written
  await waitFor('the kept batches tried again', () => new Set(seen.slice(mark).map((s) => s.batch)).size >= 16);
  down = false;
  await waitFor('the kept batches stored', () => ids.slice(4).every((id) => seen.some((s) => s.batch === id && s.status === 200)), 30000);
  // (That the 4 oldest were not kept shows in the database: only 16 clicks arrive.)
  result.bound_kept = ids.slice(4);
  await ctx.close();
}

// --- 6. Global Privacy Control and Do-Not-Track: nothing is captured or sent,
// unless the site turned `respectDnt` off.
for (const [signal, value] of [['globalPrivacyControl', true], ['doNotTrack', '1']]) {
  for (const respect of [true, false]) {
    const { ctx, page } = await context(signal);
    await ctx.addInitScript(([name, v]) => Object.defineProperty(Navigator.prototype, name, { get: () => v }), [signal, value]);
    const seen = watch(ctx);
    await page.goto(SITE + `/spa/?flush=600000&dnt=${respect ? 1 : 0}`);
    await page.waitForFunction(() => window.chronos);
    await page.click('#a');
    await page.evaluate(() => chronos.flush());
    if (respect) await sleep(800);
    else await waitFor('the batch answered', () => seen.length > 0 && seen[0].status !== null);
    const sent = seen.length;
    const session = await sessionOf(page);
    if (respect) {
      check(sent === 0, `${signal}: ${sent} batch(es) sent despite it`);
      check(session === null, `${signal}: a session id was stored despite it`);
    } else {
      check(sent === 1 && seen[0].status === 200, `${signal} with respectDnt off: ${sent} batch(es) sent, expected 1`);
    }
    await ctx.close();
  }
}

// --- 7. visibilitychange to hidden sends the buffer by beacon, without navigation.
{
  const { ctx, page } = await context('hidden');
  const seen = watch(ctx);
  await page.goto(SITE + '/spa/?flush=600000');
  await page.waitForFunction(() => window.chronos);
  result.hidden_session = await sessionOf(page);
  await page.click('#c');
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
    delete document.visibilityState;
  });
  await page.click('#d'); // in the next batch (sent when the tab closes)
  await page.close();
  await sleep(300);
  const beacon = seen.find((s) => s.events.some((e) => e[0] === 'clicks' && e[6] === 'button#c'));
  check(beacon && beacon.type === 'ping', `hidden: #c was not sent by beacon when the page was hidden: ${JSON.stringify(seen)}`);
  await ctx.close();
}

// --- 8. No crypto.randomUUID (pages on plain http outside localhost): ids from getRandomValues.
{
  const { ctx, page } = await context('uuid');
  await ctx.addInitScript(() => delete Crypto.prototype.randomUUID);
  const seen = watch(ctx);
  await page.goto(SITE + '/spa/?flush=600000');
  await page.waitForFunction(() => window.chronos);
  await page.click('#a');
  await page.evaluate(() => chronos.flush());
  await waitFor('the batch answered', () => seen.length === 1 && seen[0].status !== null);
  const v4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const session = await sessionOf(page);
  check(v4.test(session) && v4.test(seen[0].batch), `uuid: session ${session}, batch ${seen[0].batch} are not UUID v4`);
  check(seen[0].status === 200, `uuid: status ${seen[0].status}`);
  await ctx.close();
}

// --- 9. Back to a page from the back/forward cache: a `restore` pageview.
{
  const { ctx, page } = await context('bfcache');
  await ctx.addInitScript(() => addEventListener('pageshow', (e) => e.persisted && (window.__restored = true)));
  await page.goto(SITE + '/index.html');
  result.bfcache_session = await sessionOf(page);
  await page.goto(SITE + '/thanks.html');
  await page.goBack({ waitUntil: 'commit' }); // a restored page fires no load event
  await page.waitForFunction(() => location.pathname === '/index.html' && document.readyState === 'complete');
  await sleep(100);
  check(await page.evaluate(() => window.__restored === true), 'bfcache: index.html was not restored from the back/forward cache');
  await page.click('button.buy');
  await page.close();
  await sleep(300);
  await ctx.close();
}

await browser.close();
site.close();
console.log('RESULT ' + JSON.stringify(result));
if (failures.length) {
  console.error('browser checks failed:\n  ' + failures.join('\n  '));
  process.exit(1);
}
