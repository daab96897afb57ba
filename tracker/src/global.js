// Script-tag entry: exposes the tracker as `window.Chronos` (and `window.chronos`).
// `chronos tracker build` appends `Chronos.init({...})` with the config file's settings.
// Calls queued by the snippet's stub before this script ran (`chronos.q`) are
// replayed once the tracker is initialised.
import { api, init } from './index.js';

const queued = (window.chronos && window.chronos.q) || [];
window.Chronos = window.chronos = {
  ...api,
  init: (o) => {
    const r = init(o);
    for (const args of queued.splice(0)) api.track(...args);
    return r;
  },
};
