// Loads the test site in headless Chromium, clicks once, and reports what the
// tracker's requests to chronosd got; run by tests/https.rs and
// tests/first_party.rs, which then check the rows in PostgreSQL. With SPKI,
// Chromium trusts a test certificate through its public key only
// (--ignore-certificate-errors-spki-list), so any other certificate fails.
//
// Env: CHRONOS_JS (the bundle the site serves as /chronos.js), OPTIONS
// (Chronos.init options as JSON), SITE_PORT, SPKI (optional: base64 SHA-256
// of the certificate's public key), CHROMIUM, IDENTIFY (optional: a user id;
// then the page also calls chronos.identify(IDENTIFY, IDENTIFY_TRAITS as JSON if set), clicks, flushes,
// calls chronos.reset(), clicks and flushes, and reports both sessions).
// Prints `RESULT {"session": …, "statuses": […]}` on the last line.
import { chromium } from 'playwright-core';
import { serveSite } from './serve.mjs';

const options = JSON.parse(process.env.OPTIONS);
// SITE_URL: a site someone else serves (a reverse proxy); otherwise the test site here.
const site = process.env.SITE_URL
  ? { close() {}, url: process.env.SITE_URL }
  : await serveSite({ port: Number(process.env.SITE_PORT), chronosJs: process.env.CHRONOS_JS, options });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    ...(process.env.SPKI ? [`--ignore-certificate-errors-spki-list=${process.env.SPKI}`] : [])],
});
const fail = async (why) => {
  console.error(why);
  await browser.close();
  site.close();
  process.exit(1);
};
try {
  const page = await (await browser.newContext()).newPage();
  const statuses = [];
  const methods = [];
  page.on('request', (r) => r.url().startsWith(options.endpoint) && methods.push(r.method()));
  page.on('response', (r) => r.url().startsWith(options.endpoint) && statuses.push(r.status()));
  page.on('requestfailed', (r) => r.url().startsWith(options.endpoint) && statuses.push(`failed: ${r.failure()?.errorText}`));
  const scripts = [];
  page.on('response', (r) => r.request().resourceType() === 'script' && scripts.push(`${r.status()} ${r.url()}`));
  await page.goto(site.url || `http://127.0.0.1:${site.address().port}/`);
  await page.mouse.click(200, 200);
  const until = Date.now() + 20000;
  while (!statuses.length && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  if (!statuses.length) await fail(`no request reached ${options.endpoint} in 20 s`);
  const session = await page.evaluate(() => sessionStorage.getItem('chronos.session'));
  const identity = {};
  if (process.env.IDENTIFY) {
    const answered = async (n) => {
      const until = Date.now() + 20000;
      while (statuses.length < n && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      if (statuses.length < n) await fail(`${n - statuses.length} batch(es) never answered`);
    };
    const before = statuses.length;
    const traits = process.env.IDENTIFY_TRAITS ? JSON.parse(process.env.IDENTIFY_TRAITS) : undefined;
    if (!(await page.evaluate(([u, t]) => chronos.identify(u, t), [process.env.IDENTIFY, traits]))) await fail('identify refused the user id');
    if (await page.evaluate(() => chronos.identify('has a space'))) await fail('identify took an id with a space');
    await page.mouse.click(210, 210);
    await page.evaluate(() => chronos.flush());
    await answered(before + 1);
    identity.identified_session = await page.evaluate(() => sessionStorage.getItem('chronos.session'));
    await page.evaluate(() => chronos.reset());
    await page.mouse.click(220, 220);
    await page.evaluate(() => chronos.flush());
    await answered(before + 2);
    identity.reset_session = await page.evaluate(() => sessionStorage.getItem('chronos.session'));
    identity.user_after_reset = await page.evaluate(() => sessionStorage.getItem('chronos.user'));
  }
  console.log(`RESULT ${JSON.stringify({ session, statuses, methods, scripts, ...identity })}`);
} catch (e) {
  await fail(`browser run failed: ${e.stack || e}`);
}
await browser.close();
site.close();
