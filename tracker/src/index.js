// Chronos tracker: captures the catalog's built-in events in the browser and
// sends them to chronosd as wire payload v1 (docs/wire-format.md).
//
// One buffer per page: it is flushed when full, every `flushMs`, on every
// navigation (a batch never spans two pages), on visibilitychange to hidden
// and on pagehide. Batches keep their id on every retry, so the server stores
// each once; batches not acknowledged when the page goes away are kept in
// localStorage (bounded) and sent again on the next page load.

const W = window;
const D = document;
const N = navigator;
const OUTBOX = 'chronos.outbox';
const OPTOUT = 'chronos.optout';
// Browsers allow 64 KiB of keepalive/beacon bodies in flight; stay below it.
const MAX_BODY = 60000;
const MAX_OUTBOX = 16;
const MAX_ATTEMPTS = 6;

// Attribute names of the built-in types, in wire order (src/catalog.rs).
const BUILT_IN = {
  pageviews: ['navigation', 'referrer'],
  clicks: ['element', 'buttons', 'x', 'y', 'selector'],
  link_clicks: ['link_text', 'target_url'],
  mouse_moves: ['x', 'y'],
  key_presses: ['key', 'element'],
  form_submissions: ['form_id', 'action', 'fields'],
};

let opts;
let types;
let session;
let buffer = [];
let bufferBytes = 0;
let bufferUrl;
let lastUrl;
let optedOut;
let user;
const pending = new Map(); // batch id → batch not yet acknowledged
const mine = new Set(); // ids this page wrote to the outbox
let timer;
let mouse;
let mouseSent;
let mouseTimer;

const now = Date.now;
const uuid = () =>
  crypto.randomUUID
    ? crypto.randomUUID()
    : ([1e7] + -1e3 + -4e3 + -8e3 + -1e11).replace(/[018]/g, (c) =>
        (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16),
      );

const store = (s, k, v) => {
  try {
    if (v === undefined) return W[s].getItem(k);
    v === null ? W[s].removeItem(k) : W[s].setItem(k, v);
  } catch (e) {
    // Storage disabled or full: the tracker still works, without persistence.
  }
};

// At most `n` UTF-8 bytes, without NUL (the server refuses it).
const cut = (s, n) => {
  if (s == null || s === '') return null;
  s = String(s).replace(/\0/g, '');
  if (s.length * 3 <= n) return s;
  let b = 0;
  let i = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    b += c < 128 ? 1 : c < 2048 ? 2 : c < 65536 ? 3 : 4;
    if (b > n) break;
    i += ch.length;
  }
  return s.slice(0, i);
};

const tag = (el) => cut(el.tagName, 64) || '?';
const attr = (el, name) => Element.prototype.getAttribute.call(el, name);

const esc = (s) => (W.CSS && CSS.escape ? CSS.escape(s) : s);

// A short CSS path: up to 5 ancestors, stopping at the first id.
const selector = (el) => {
  const parts = [];
  for (let i = 0; el && el.nodeType === 1 && i < 5 && el !== D.body && el !== D.documentElement; i++) {
    let p = el.tagName.toLowerCase();
    const id = attr(el, 'id');
    if (id) {
      parts.unshift(p + '#' + esc(id));
      break;
    }
    const cls = (attr(el, 'class') || '').trim().split(/\s+/).filter(Boolean).slice(0, 2).map(esc).join('.');
    parts.unshift(cls ? p + '.' + cls : p);
    el = el.parentElement;
  }
  return cut(parts.join('>'), 512);
};

const coord = (v) => Math.max(-1e6, Math.min(1e7, Math.round(v) || 0));

const page = () => ({
  url: cut(bufferUrl, 2048),
  title: cut(D.title, 2048),
  user_agent: cut(N.userAgent, 2048),
  language: N.language || null,
  cookies_enabled: N.cookieEnabled,
});

/** Adds one event `[type, time, ...attrs]` to the buffer. */
const push = (type, values) => {
  if (!opts || !types[type] || optedOut) return;
  const ev = [type, now(), ...values];
  // Length in JSON is close enough to bytes for deciding when to flush.
  bufferBytes += JSON.stringify(ev).length + 1;
  buffer.push(ev);
  if (buffer.length >= opts.maxEvents || bufferBytes >= MAX_BODY - 4096) flush();
};

/** Sends the buffer now; `unloading` uses sendBeacon (the page is going away). */
export const flush = (unloading) => {
  if (!opts) return;
  if (buffer.length) {
    const events = buffer;
    const p = page();
    buffer = [];
    bufferBytes = 0;
    const b = { v: 1, key: opts.key, batch: uuid(), session, page: p, events };
    if (user) b.user = user;
    // An automated browser (Selenium, Playwright, Puppeteer) says so: chronosd flags its events as a bot's.
    if (N.webdriver === true) b.webdriver = true;
    for (const batch of split(b)) {
      if (unloading) beacon(batch);
      else send(batch, 0);
    }
  }
  if (unloading) keep();
};

// UTF-8 size; a string of n UTF-16 units takes at most 3n bytes, so most need no encoding.
const bytes = (s) => (s.length * 3 < MAX_BODY ? s.length : new TextEncoder().encode(s).length);

// Splits a batch whose body would reach MAX_BODY bytes into halves, each with its own id.
const split = (batch) => {
  const ev = batch.events;
  if (ev.length < 2 || bytes(body(batch)) < MAX_BODY) return [batch];
  const half = ev.length >> 1;
  return [
    ...split({ ...batch, events: ev.slice(0, half) }),
    ...split({ ...batch, batch: uuid(), events: ev.slice(half) }),
  ];
};

// Every attempt carries its own send time (for clock-skew correction) and the same batch id.
const body = (batch) => JSON.stringify({ ...batch, sent_at: now() });

const beacon = (batch) => {
  pending.set(batch.batch, batch);
  let ok = false;
  try {
    ok = N.sendBeacon(opts.endpoint, body(batch));
  } catch (e) {}
  // Refused (quota, size): try a keepalive fetch; the outbox keeps it meanwhile.
  if (ok) pending.delete(batch.batch);
  else send(batch, 0);
};

const send = (batch, attempt) => {
  pending.set(batch.batch, batch);
  let retryAfter = 0;
  const b = body(batch);
  fetch(opts.endpoint, {
    method: 'POST',
    body: b,
    headers: { 'Content-Type': 'text/plain' },
    // A single event too large for the keepalive quota still goes, without keepalive.
    keepalive: bytes(b) < MAX_BODY,
    credentials: 'omit',
  })
    .then((r) => {
      if (r.ok || (r.status < 500 && r.status !== 429 && r.status !== 408)) {
        // Stored, or refused for good (4xx: say why, in the console): never resent.
        // 408 (the body arrived too slowly) and 429 are retried like a 5xx.
        if (!r.ok) r.text().then((t) => console.warn('Chronos: batch refused', r.status, t));
        pending.delete(batch.batch);
        if (mine.has(batch.batch)) keep();
        return;
      }
      return r.json().then(
        (j) => {
          retryAfter = (j && j.error && j.error.retry_after) || 0;
          throw 0;
        },
        () => {
          throw 0;
        },
      );
    })
    .catch(() => {
      if (attempt + 1 >= MAX_ATTEMPTS) return keep();
      // Exponential backoff with full jitter, at least the server's Retry-After.
      const delay = Math.max(retryAfter * 1000, Math.random() * opts.retryMs * 2 ** attempt);
      setTimeout(() => pending.has(batch.batch) && send(batch, attempt + 1), delay);
    });
};

// Writes the unacknowledged batches to the outbox (newest kept when over the bound).
const keep = () => {
  let saved = [];
  try {
    saved = JSON.parse(store('localStorage', OUTBOX) || '[]');
  } catch (e) {}
  // Batches of other tabs stay until they are resent; ours are the pending ones,
  // oldest first (acknowledged ones leave); the newest MAX_OUTBOX are kept.
  saved = saved.filter((b) => !pending.has(b.batch) && !mine.has(b.batch));
  saved = [...saved, ...pending.values()].slice(-MAX_OUTBOX);
  for (const b of pending.values()) mine.add(b.batch);
  while (saved.length && JSON.stringify(saved).length > 4 * MAX_BODY) saved.shift();
  store('localStorage', OUTBOX, saved.length ? JSON.stringify(saved) : null);
};

// Batches left by earlier pages: sent again with the same ids.
const resend = () => {
  let saved = [];
  try {
    saved = JSON.parse(store('localStorage', OUTBOX) || '[]');
  } catch (e) {}
  store('localStorage', OUTBOX, null);
  for (const b of saved) if (b && b.batch && b.events) send(b, 0);
};

// A new page (first load or SPA navigation): flush the old page's events first.
const navigated = (kind) => {
  const url = location.href;
  if (url === lastUrl) return;
  const referrer = lastUrl === undefined ? D.referrer : lastUrl;
  if (kind === 'pop' && lastUrl && url.split('#')[0] === lastUrl.split('#')[0]) kind = 'hash';
  flush();
  lastUrl = bufferUrl = url;
  push('pageviews', [kind, cut(referrer, 2048)]);
};

const onClick = (e) => {
  const el = e.target;
  if (!el || el.nodeType !== 1) return;
  push('clicks', [tag(el), e.buttons & 31, coord(e.pageX), coord(e.pageY), selector(el)]);
  const a = el.closest('a');
  // SVG links have no string href; empty links give nulls.
  if (a) push('link_clicks', [cut((a.innerText || a.textContent || '').trim(), 512), cut(typeof a.href == 'string' ? a.href : attr(a, 'href'), 2048)]);
};

const textual = (el) =>
  el.isContentEditable || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.tagName === 'INPUT';

const onKey = (e) => {
  // The real target, also inside shadow roots (e.target would be the host).
  const el = (e.composedPath && e.composedPath()[0]) || e.target;
  if (!el || el.nodeType !== 1) return;
  if (el.tagName === 'INPUT' && (el.type || '').toLowerCase() === 'password') return;
  push('key_presses', [textual(el) ? null : cut(e.key, 32), tag(el)]);
};

const onSubmit = (e) => {
  const f = e.target;
  if (!f || f.tagName !== 'FORM') return;
  const action = attr(f, 'action');
  const names = [];
  for (const el of Element.prototype.querySelectorAll.call(f, 'input[name],select[name],textarea[name]')) {
    const n = cut(attr(el, 'name'), 256);
    if (n && !names.includes(n) && names.length < 256) names.push(n);
  }
  push('form_submissions', [cut(attr(f, 'id'), 256), action == null ? null : cut(new URL(action, location.href).href, 2048), names]);
};

const onMove = (e) => {
  mouse = [coord(e.pageX), coord(e.pageY)];
  // The sampler runs only while the pointer moves.
  if (!mouseTimer) mouseTimer = setInterval(sample, opts.mouseMs);
};

const sample = () => {
  if (mouseSent && mouse[0] === mouseSent[0] && mouse[1] === mouseSent[1]) {
    clearInterval(mouseTimer);
    mouseTimer = 0;
    return;
  }
  mouseSent = mouse;
  push('mouse_moves', mouse);
};

const wrap = (name) => {
  const orig = history[name];
  history[name] = function () {
    const r = orig.apply(this, arguments);
    try {
      navigated(name === 'pushState' ? 'push' : 'replace');
    } catch (x) {}
    return r;
  };
};

/**
 * Starts the tracker. Options: `endpoint` (chronosd URL), `path` (its batch
 * path, default `/v1/batch`), `key` (write key), `events` (type → attribute
 * names; only these are captured), `mouseMs`, `flushMs`, `maxEvents`,
 * `retryMs`, `respectDnt` (DNT and GPC).
 */
export const init = (o) => {
  if (opts) return api;
  o = { mouseMs: 100, flushMs: 5000, maxEvents: 500, retryMs: 1000, respectDnt: true, ...o };
  if (!o.endpoint || !o.key) throw new Error('Chronos.init: `endpoint` and `key` are required');
  if (o.respectDnt && (N.doNotTrack === '1' || W.doNotTrack === '1' || N.globalPrivacyControl === true)) return api;
  o.endpoint = o.endpoint.replace(/\/+$/, '');
  const path = o.path || '/v1/batch';
  if (!o.endpoint.endsWith(path)) o.endpoint += path;
  opts = o;
  optedOut = store('localStorage', OPTOUT) === '1';
  types = o.events || BUILT_IN;
  session = store('sessionStorage', 'chronos.session');
  if (!session) store('sessionStorage', 'chronos.session', (session = uuid()));
  user = store('sessionStorage', 'chronos.user') || null;

  // A tracker must never break the page: its handlers swallow their own errors.
  const on = (t, type, fn) =>
    t.addEventListener(
      type,
      (e) => {
        try {
          fn(e);
        } catch (x) {}
      },
      { capture: true, passive: true },
    );
  on(D, 'click', onClick);
  on(D, 'keydown', onKey);
  on(D, 'submit', onSubmit);
  on(D, 'mousemove', onMove);
  on(W, 'popstate', () => navigated('pop'));
  on(W, 'hashchange', () => navigated('hash'));
  on(D, 'visibilitychange', () => D.visibilityState === 'hidden' && flush(1));
  on(W, 'pagehide', () => flush(1));
  // Back to a page kept in the back/forward cache: a new view of it.
  on(W, 'pageshow', (e) => e.persisted && ((lastUrl = ''), navigated('restore')));
  wrap('pushState');
  wrap('replaceState');
  timer = setInterval(flush, o.flushMs);
  resend();
  navigated('load');
  return api;
};

/** Records a custom event; `props` is an object (by attribute name) or an array in catalog order. */
export const track = (name, props) => {
  const names = types && types[name];
  if (!names) return false;
  push(name, Array.isArray(props) ? props : names.map((n) => (props && props[n] !== undefined ? props[n] : null)));
  return true;
};

/** Stops capturing in this browser (remembered in localStorage) and drops the buffer. */
export const optOut = () => {
  store('localStorage', OPTOUT, '1');
  optedOut = true;
  buffer = [];
  bufferBytes = 0;
};

// identify warns once per page about traits it cannot record.
let warnedTraits = false;
/**
 * Names the user of this tab (an opaque id of the site's, 1-128 printable
 * ASCII characters; prefer it to an e-mail address): every later event of the
 * tab carries it, and chronosd records which sessions were this user's.
 * Events captured before the call are sent first, without it. With a custom
 * event type `identify` in the catalog, `traits` (by attribute name, like
 * `track`) are recorded as one such event; without it they are not sent, and
 * the console says so once. Returns false for an id the server would refuse.
 */
export const identify = (userId, traits) => {
  const id = userId == null ? '' : String(userId);
  if (!id || id.length > 128 || !/^[\x21-\x7e]+$/.test(id)) return false;
  if (id !== user) {
    flush();
    user = id;
    store('sessionStorage', 'chronos.user', id);
  }
  if (traits) {
    if (types && types.identify) track('identify', traits);
    else if (!warnedTraits) {
      warnedTraits = true;
      console.warn('Chronos: identify traits not recorded: the catalog has no [events.identify] type to hold them');
    }
  }
  return true;
};

/** Forgets the user and starts a new session (a logout, a shared device). */
export const reset = () => {
  flush();
  user = null;
  store('sessionStorage', 'chronos.user', null);
  store('sessionStorage', 'chronos.session', (session = uuid()));
};

/** Undoes `optOut`. */
export const optIn = () => {
  store('localStorage', OPTOUT, null);
  optedOut = false;
};

export const api = { init, track, flush: () => flush(), optOut, optIn, identify, reset };
