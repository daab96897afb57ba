//! The browser tracker bundle, configured from the config file (`chronos tracker build`).
//!
//! The script-tag bundle (`tracker/dist/chronos.min.js`, built by `npm run build`
//! in `tracker/` and committed) is compiled into this binary; a build appends
//! `Chronos.init({...})` with the endpoint, the write key, the enabled event
//! types with their attribute names, and the sampling and flush intervals. No
//! Node.js is needed at run time. A unit test keeps the committed bundle equal to
//! a fresh build of `tracker/src`.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde_json::json;

use crate::config::{Config, KeyKind};

/// The minified script-tag bundle; it defines `window.Chronos`.
pub const BUNDLE: &str = include_str!("../tracker/dist/chronos.min.js");

/// The `Chronos.init` options for this config; the error says which key to set.
pub fn init_options(config: &Config) -> Result<serde_json::Value, String> {
    let t = &config.tracker;
    let key = if t.key_id.is_empty() {
        config
            .keys
            .iter()
            .find(|k| !k.origins.is_empty() && k.kind == KeyKind::Browser)
            .ok_or("no write key for browsers: add a [[keys]] entry with `origins` (or name one in tracker.key_id)")?
    } else {
        config.keys.iter().find(|k| k.id == t.key_id).ok_or(format!("tracker.key_id: no [[keys]] entry has id `{}`", t.key_id))?
    };
    // Everything in the bundle is public: a server key there is a published secret.
    if key.kind == KeyKind::Server {
        return Err(crate::config::tracker_server_key_problem(&key.id));
    }
    let endpoint = if t.endpoint.is_empty() {
        let listen = config.http.listen;
        if listen.ip().is_unspecified() {
            return Err(format!("tracker.endpoint: set the URL browsers reach chronosd at (http.listen is {listen}, which browsers cannot use)"));
        }
        match listen.ip() {
            IpAddr::V4(_) => format!("http://{listen}"),
            IpAddr::V6(ip) => format!("http://[{ip}]:{}", listen.port()),
        }
    } else {
        t.endpoint.trim_end_matches('/').to_string()
    };
    let events: serde_json::Map<String, serde_json::Value> = config
        .events
        .iter()
        .filter(|(_, e)| e.enabled)
        .map(|(name, e)| (name.clone(), e.attributes.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().into()))
        .collect();
    Ok(json!({
        "endpoint": endpoint,
        "path": config.http.batch_path,
        "key": key.key,
        "events": events,
        "mouseMs": t.mouse_interval_ms,
        "flushMs": t.flush_interval_ms,
        "maxEvents": t.max_events,
        "respectDnt": t.respect_dnt,
    }))
}

/// The bundle with `Chronos.init(<options>)` appended: one file to serve to pages.
pub fn build(config: &Config) -> Result<String, String> {
    let options = init_options(config)?;
    Ok(format!("{}\nChronos.init({options});\n", BUNDLE.trim_end()))
}

/// The bundle gzipped as served (and as `chronos tracker build` reports its size).
pub fn gzip(script: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(script.as_bytes()).and_then(|()| gz.finish()).expect("gzip into memory")
}

/// `chronos tracker build`: writes the configured bundle to `out` (stdout when `None`)
/// and says on stderr where it went and how large it is.
pub fn write_bundle(config: &Config, out: Option<&Path>) -> anyhow::Result<()> {
    let script = build(config).map_err(anyhow::Error::msg)?;
    let gzipped = gzip(&script).len();
    match out {
        Some(path) => {
            std::fs::write(path, &script).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            eprintln!("wrote {} ({} bytes, {gzipped} gzipped)", path.display(), script.len());
        }
        None => std::io::stdout().write_all(script.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "[[keys]]\nid = \"srv\"\nkey = \"wk_server_0123456789\"\norigins = []\nallow_no_origin = true\n\
                        [[keys]]\nid = \"web\"\nkey = \"wk_web_0123456789ab\"\norigins = [\"example.com\"]\n";

    fn config(extra: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{KEYS}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn build_appends_init_with_key_endpoint_and_enabled_events() {
        let c = config(
            "[http]\nlisten = \"127.0.0.1:8080\"\n[events.mouse_moves]\nenabled = false\n\
             [events.signup]\nattributes = [{ name = \"plan\", type = \"text\" }, { name = \"seats\", type = \"int\" }]\n\
             [tracker]\nmouse_interval_ms = 50\n",
        )
        .unwrap();
        let script = build(&c).unwrap();
        assert!(script.starts_with(BUNDLE.trim_end()));
        let init = script.rsplit_once("\nChronos.init(").unwrap().1.strip_suffix(");\n").unwrap();
        let o: serde_json::Value = serde_json::from_str(init).unwrap();
        assert_eq!(o["endpoint"], "http://127.0.0.1:8080");
        assert_eq!(o["key"], "wk_web_0123456789ab", "the first key with origins");
        assert_eq!(o["mouseMs"], 50);
        assert_eq!(o["events"]["signup"], json!(["plan", "seats"]));
        assert_eq!(o["events"]["clicks"], json!(["element", "buttons", "x", "y", "selector"]));
        assert!(o["events"].get("mouse_moves").is_none(), "disabled types are not captured");
    }

    #[test]
    fn endpoint_and_key_id_are_taken_as_configured() {
        let c = config("[tracker]\nendpoint = \"https://c.example.com/\"\nkey_id = \"srv\"\n").unwrap();
        let o = init_options(&c).unwrap();
        assert_eq!(o["endpoint"], "https://c.example.com");
        assert_eq!(o["key"], "wk_server_0123456789");
    }

    #[test]
    fn a_server_key_is_never_put_into_the_bundle() {
        // The config check refuses it (config::tracker); the build refuses it too,
        // whatever config it is given.
        let mut c = config("[tracker]\nkey_id = \"srv\"\n").unwrap();
        c.keys[0].kind = KeyKind::Server;
        let err = build(&c).unwrap_err();
        assert!(err.contains("tracker.key_id: `srv` is a server key"), "{err}");
        let mut c = config("").unwrap();
        c.keys[1].kind = KeyKind::Server;
        assert!(build(&c).unwrap_err().contains("no write key for browsers"), "not picked as the default either");
    }

    #[test]
    fn bad_tracker_settings_name_their_key() {
        let err = config("[tracker]\nendpoint = \"c.example.com\"\nkey_id = \"nope\"\nmouse_interval_ms = 0\nmax_events = 5000\n").unwrap_err();
        for key in ["tracker.endpoint", "tracker.key_id: no [[keys]] entry has id `nope`", "tracker.mouse_interval_ms", "tracker.max_events"] {
            assert!(err.contains(key), "{key} in {err}");
        }
        let c = config("[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        assert!(init_options(&c).unwrap_err().contains("tracker.endpoint: set the URL"));
        let c = Config::from_toml("[[keys]]\nid = \"srv\"\nkey = \"wk_server_0123456789\"\norigins = []\nallow_no_origin = true\n").unwrap();
        assert!(init_options(&c).unwrap_err().contains("no write key for browsers"));
    }

    /// The tracker's own list of built-in attributes (tracker/src/index.js) is the catalog's.
    #[test]
    fn tracker_built_ins_match_the_catalog() {
        let src = include_str!("../tracker/src/index.js");
        let block = src.split("const BUILT_IN = {").nth(1).unwrap().split("};").next().unwrap();
        let tracker: std::collections::BTreeMap<String, Vec<String>> = block
            .lines()
            .filter_map(|l| l.trim().split_once(": ["))
            .map(|(name, attrs)| {
                let attrs = attrs.trim_end_matches("],").split(", ").map(|a| a.trim_matches('\'').to_string()).collect();
                (name.to_string(), attrs)
            })
            .collect();
        let catalog: std::collections::BTreeMap<String, Vec<String>> =
            crate::catalog::built_in_events().into_iter().map(|(name, t)| (name, t.attributes.into_iter().map(|a| a.name).collect())).collect();
        assert_eq!(tracker, catalog);
    }

    /// The committed bundle is what `npm run build` makes of `tracker/src`.
    #[test]
    fn committed_bundle_equals_a_fresh_build() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tracker");
        assert!(root.join("node_modules/esbuild").exists(), "tracker/node_modules is missing: run `npm ci --prefix tracker` (or .ci/setup)");
        let out = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("node")
            .arg("build.mjs")
            .arg("--outdir")
            .arg(out.path())
            .current_dir(&root)
            .status()
            .expect("run node (Node.js 18+ is needed to build the tracker)");
        assert!(status.success(), "node build.mjs failed");
        for f in ["chronos.min.js", "chronos.esm.js"] {
            let fresh = std::fs::read_to_string(out.path().join(f)).unwrap();
            let committed = std::fs::read_to_string(root.join("dist").join(f)).unwrap();
            assert!(fresh == committed, "tracker/dist/{f} is stale: run `npm run build --prefix tracker` and commit it");
        }
    }
}
