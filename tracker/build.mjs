// Builds dist/chronos.esm.js (ES module) and dist/chronos.min.js (script tag),
// both minified. `--size` also prints their minified and gzipped sizes;
// `--outdir DIR` writes them to DIR instead of dist/ (the Rust test that keeps
// the committed bundle equal to a fresh build uses it).
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const i = process.argv.indexOf('--outdir');
const out = i > 0 ? process.argv[i + 1] : 'dist';
const common = { bundle: true, minify: true, target: 'es2018', legalComments: 'none', logLevel: 'warning' };
await build({ ...common, entryPoints: ['src/index.js'], format: 'esm', outfile: `${out}/chronos.esm.js` });
await build({ ...common, entryPoints: ['src/global.js'], format: 'iife', outfile: `${out}/chronos.min.js` });

if (process.argv.includes('--size')) {
  for (const f of [`${out}/chronos.min.js`, `${out}/chronos.esm.js`]) {
    const b = readFileSync(f);
    console.log(`${f}: ${b.length} B minified, ${gzipSync(b, { level: 9 }).length} B gzipped`);
  }
}
