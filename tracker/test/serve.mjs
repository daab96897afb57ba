// A static server for the test site: files from site/, the bundles, and
// /test-config.js (window.TEST = the Chronos.init options) for pages that call init themselves.
import { createServer } from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const types = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8' };

/**
 * Serves the site on 127.0.0.1:`port`. `chronosJs` is the configured bundle
 * (what `chronos tracker build` wrote); `/spa/*` serves the single-page app.
 */
export function serveSite({ port = 0, chronosJs, options }) {
  const files = {
    '/chronos.js': () => readFileSync(chronosJs),
    '/chronos.min.js': () => readFileSync(join(here, '../dist/chronos.min.js')),
    '/chronos.esm.js': () => readFileSync(join(here, '../dist/chronos.esm.js')),
    '/test-config.js': () => `window.TEST = ${JSON.stringify(options)};`,
  };
  const server = createServer((req, res) => {
    // Form posts land here too: drain the body, answer with the page.
    req.resume();
    const path = new URL(req.url, 'http://x').pathname;
    let body;
    if (files[path]) body = files[path]();
    else {
      const file = path.startsWith('/spa') ? 'spa.html' : normalize(path === '/' ? 'index.html' : path).replace(/^(\.\.[/\\])+/, '');
      const full = join(here, 'site', file);
      if (existsSync(full)) body = readFileSync(full);
    }
    if (body === undefined) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'Content-Type': types[path.split('.').pop()] || types.html, 'Cache-Control': 'no-store' });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}
