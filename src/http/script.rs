//! `GET <http.tracker_path>` (default `/chronos.js`): the tracker bundle built
//! from the running config, served first-party from chronosd itself, so a
//! site can put it under any path of its own origin (behind its reverse
//! proxy) where blockers that match well-known script names do not look.
//!
//! Built at start, and again when the config file's keys or `[tracker]`
//! change: the bytes, their gzip, and an `ETag` of their SHA-256. Answers 304
//! to a matching `If-None-Match`, gzip when the browser accepts it, and
//! `Cache-Control: public, max-age=300`: a change reaches browsers within
//! five minutes.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

use crate::config::Config;

/// How long browsers and proxies may use the bundle before they revalidate (300 s).
const CACHE_CONTROL: &str = "public, max-age=300";

/// The served bundle, or why there is none.
pub enum Script {
    Ready {
        plain: Bytes,
        gzip: Bytes,
        etag: String,
    },
    /// The config cannot make a bundle (e.g. no browser key): the reason.
    Unavailable(String),
}

impl Script {
    /// The bundle of `config`.
    pub fn build(config: &Config) -> Script {
        use sha2::Digest;
        let text = match crate::tracker::build(config) {
            Ok(text) => text,
            Err(e) => return Script::Unavailable(e),
        };
        let gzip = crate::tracker::gzip(&text);
        let digest = sha2::Sha256::digest(text.as_bytes());
        let etag = format!("\"{}\"", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
        Script::Ready { plain: Bytes::from(text), gzip: Bytes::from(gzip), etag }
    }
}

fn accepts_gzip(req: &HttpRequest) -> bool {
    let Some(v) = req.headers().get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else { return false };
    v.split(',').any(|part| {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
    })
}

fn matches_etag(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag))
}

/// The bundle being served; replaced when the config file's `[[keys]]` or
/// `[tracker]` change (`crate::reload`).
pub type Served = arc_swap::ArcSwap<Script>;

/// The handler.
pub async fn serve(req: HttpRequest, served: web::Data<Served>) -> HttpResponse {
    let script = served.load();
    let (plain, gzip, etag) = match script.as_ref() {
        Script::Ready { plain, gzip, etag } => (plain, gzip, etag),
        Script::Unavailable(why) => {
            return HttpResponse::NotFound().json(serde_json::json!({ "ok": false, "error": "no_tracker", "message": why }));
        }
    };
    if matches_etag(&req, etag) {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag.as_str()))
            .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
            .insert_header((header::VARY, "Accept-Encoding"))
            .finish();
    }
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_TYPE, "text/javascript; charset=utf-8"))
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if accepts_gzip(&req) {
        res.insert_header((header::CONTENT_ENCODING, "gzip")).body(gzip.clone())
    } else {
        res.body(plain.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn gzip_only_when_accepted_and_etags_match_weak_or_listed() {
        let req = |name: header::HeaderName, v: &str| TestRequest::default().insert_header((name, v)).to_http_request();
        assert!(accepts_gzip(&req(header::ACCEPT_ENCODING, "gzip, deflate, br")));
        assert!(accepts_gzip(&req(header::ACCEPT_ENCODING, "br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(&req(header::ACCEPT_ENCODING, "br, gzip;q=0")));
        assert!(!accepts_gzip(&req(header::ACCEPT_ENCODING, "identity")));
        assert!(!accepts_gzip(&TestRequest::default().to_http_request()));
        assert!(matches_etag(&req(header::IF_NONE_MATCH, "\"a\", \"b\""), "\"b\""));
        assert!(matches_etag(&req(header::IF_NONE_MATCH, "W/\"b\""), "\"b\""));
        assert!(!matches_etag(&req(header::IF_NONE_MATCH, "\"c\""), "\"b\""));
    }
}
