// Script-tag entry: exposes the tracker as `window.Chronos` (and `window.chronos`).
// `chronos tracker build` appends `Chronos.init({...})` with the config file's settings.
import { api } from './index.js';

window.Chronos = window.chronos = api;
