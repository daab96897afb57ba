//! HTTP receipt (actix-web): `POST /v1/batch` with its CORS preflight,
//! `POST /v1/import` (server keys), and `/healthz`, `/readyz`, `/metrics`.
//!
//! A batch request goes: per-IP rate limit → content checks → body read under
//! its cap → a `Receipt` actor (decompress, parse, key, origin, per-key rate,
//! validate, encode) → the `KafkaSink` actor (enqueue) → the broker's
//! acknowledgement → 200. Any failure answers with a JSON error and keeps nothing.

pub mod auth;
pub mod body;
pub mod client_ip;
pub mod error;
pub mod import;
pub mod limits;
pub mod receipt;
pub mod script;
pub mod stored_keys;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use self::auth::KeyRing;
use self::body::Encoding;
use self::error::IngestError;
use self::limits::RateLimits;
use self::receipt::{Accepted, BatchSummary, ReceiptPool, Receive};
use crate::clock::now_ms;
use crate::produce::sink::InFlight;
use crate::produce::{KafkaSink, Produce, ProducerHealth};
use crate::telemetry::Metrics;

/// Everything the handlers share.
pub struct AppState {
    pub receipts: ReceiptPool,
    pub sink: Addr<KafkaSink>,
    pub keys: KeyRing,
    pub limits: Arc<RateLimits>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProducerHealth>,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<IpAddr>,
    pub produce_deadline: Duration,
    pub retry_after: u64,
    pub queue_max_messages: u32,
    pub stats_max_age_ms: i64,
    /// `http.batch_path` and `http.tracker_path` (empty: not served).
    pub batch_path: String,
    pub tracker_path: String,
    /// The tracker bundle served at `tracker_path`.
    pub script: web::Data<script::Served>,
    /// The config chronosd started with (`POST /v1/import` reads the catalog,
    /// the caps and `[import]` from it, and `postgres.url`).
    pub config: Arc<crate::config::Config>,
    /// Receipt's enricher, shared with `POST /v1/import` (`None`: enrichment off).
    pub enricher: Option<Arc<crate::enrich::Enricher>>,
}

/// Routes of chronosd.
pub fn routes(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let (batch, tracker, script) = (state.batch_path.clone(), state.tracker_path.clone(), state.script.clone());
        cfg.app_data(state)
            .app_data(web::PayloadConfig::new(usize::MAX))
            .service(web::resource(batch).route(web::post().to(post_batch)).route(web::method(actix_web::http::Method::OPTIONS).to(preflight)))
            .route(import::PATH, web::post().to(import::post))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics));
        if !tracker.is_empty() {
            cfg.service(web::resource(tracker).app_data(script).route(web::get().to(script::serve)).route(web::head().to(script::serve)));
        }
        cfg.default_service(web::to(not_found));
    }
}

/// Any other path or method: 404 (405 on a known path) with a JSON body naming
/// where batches go, so a tracker built for other paths says what is wrong.
async fn not_found(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let path = req.path();
    let body = |error: &str, message: String| serde_json::json!({ "ok": false, "error": error, "message": message });
    if path == state.batch_path || path == state.tracker_path || crate::config::OWN_PATHS.contains(&path) {
        let message = format!("{} is not allowed on {path}", req.method());
        return HttpResponse::MethodNotAllowed().json(body("method_not_allowed", message));
    }
    let message = format!("no endpoint at {} {path}; batches go to POST {} (http.batch_path)", req.method(), state.batch_path);
    HttpResponse::NotFound().json(body("not_found", message))
}

pub(crate) fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The answer to a POST: 200 with `{"ok": true, …summary}` or the error's
/// JSON, counted in the request metric (`ok_code` for a 200).
pub(crate) fn answer<S: serde::Serialize>(state: &AppState, outcome: &Result<S, IngestError>, ok_code: &str) -> HttpResponse {
    #[derive(serde::Serialize)]
    struct Ok<'a, S> {
        ok: bool,
        #[serde(flatten)]
        summary: &'a S,
    }
    let (res, code) = match outcome {
        Result::Ok(summary) => (HttpResponse::Ok().json(Ok { ok: true, summary }), ok_code),
        Err(e) => (e.error_response(), e.code()),
    };
    state.metrics.http_requests.with_label_values(&[res.status().as_str(), code]).inc();
    res
}

async fn post_batch(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let outcome = receive(&req, payload, &state).await;
    let mut res = answer(&state, &outcome, "accepted");
    if let Some(origin) = header_str(&req, header::ORIGIN) {
        if state.keys.any_allows(origin) {
            cors_headers(&mut res, origin);
        }
    }
    res
}

async fn receive(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<BatchSummary, IngestError> {
    let peer = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let ip = client_ip::client_ip(peer, header_str(req, header::X_FORWARDED_FOR), &state.trusted_proxies);
    state.limits.check_ip(ip)?;
    if let Some(ct) = header_str(req, header::CONTENT_TYPE) {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("text/plain") && !mime.eq_ignore_ascii_case("application/json") {
            return Err(IngestError::UnsupportedMediaType(mime.chars().take(64).collect()));
        }
    }
    let encoding = Encoding::from_header(header_str(req, header::CONTENT_ENCODING))?;
    let content_length = header_str(req, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let body = body::read_capped(payload, content_length, state.max_body_bytes).await?;
    let msg = Receive {
        body,
        encoding,
        origin: header_str(req, header::ORIGIN).map(str::to_owned),
        client_ip: ip,
        user_agent: header_str(req, header::USER_AGENT).map(|ua| ua.chars().take(crate::payload::MAX_USER_AGENT_CHARS).collect()),
        received_at: now_ms(),
    };
    let overloaded = || IngestError::Overloaded { retry_after: state.retry_after };

    // One deadline for the whole request. Bounded mailboxes: `send` waits for room.
    let deadline = tokio::time::Instant::now() + state.produce_deadline;
    state.metrics.receipt_in_flight.inc();
    let read = tokio::time::timeout_at(deadline, state.receipts.pick().send(msg)).await;
    state.metrics.receipt_in_flight.dec();
    let accepted = read.map_err(|_| overloaded())?.map_err(|_| IngestError::Internal)??;

    let Accepted { summary, batch } = accepted;
    let sent = tokio::time::timeout_at(deadline, state.sink.send(Produce(batch))).await;
    let pending = sent
        .map_err(|_| overloaded())?
        .map_err(|_| IngestError::ShuttingDown { retry_after: state.retry_after })?
        .map_err(|e| IngestError::produce(e, state.retry_after))?;
    let enqueued_at = pending.enqueued_at;
    pending.acknowledged(deadline).await.map_err(|e| IngestError::produce(e, state.retry_after))?;

    state.metrics.produce_latency.observe(enqueued_at.elapsed().as_secs_f64());
    state.metrics.batches_produced.inc();
    state.metrics.events_accepted.inc_by(summary.accepted as u64);
    state.metrics.events_rejected.inc_by(summary.rejected as u64);
    Ok(summary)
}

fn cors_headers(res: &mut HttpResponse, origin: &str) {
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After"));
}

/// CORS preflight: allowed when some write key allows the origin (the key is in
/// the body, which a preflight does not carry; the POST checks the key's own list).
async fn preflight(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match header_str(&req, header::ORIGIN) {
        Some(origin) if state.keys.any_allows(origin) => {
            let mut res = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type, content-encoding"))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"))
                .finish();
            cors_headers(&mut res, origin);
            res
        }
        origin => HttpResponse::Forbidden().json(json!({
            "ok": false,
            "error": {
                "code": "origin_not_allowed",
                "message": match origin {
                    Some(o) => format!("origin `{}` is not allowed by any write key", o.chars().take(256).collect::<String>()),
                    None => "a CORS preflight needs an Origin header".to_string(),
                },
            }
        })),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "ok": true }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let queued = match tokio::time::timeout(Duration::from_secs(2), state.sink.send(InFlight)).await {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => return HttpResponse::Ok().json(json!({ "ready": true, "sink": "discard" })),
        _ => return HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": "the producer actor does not answer" })),
    };
    let broker_up = state.health.broker_up(state.stats_max_age_ms);
    let saturated = queued * 10 >= state.queue_max_messages as u64 * 9;
    let ready = broker_up && !saturated;
    let body = json!({
        "ready": ready,
        "broker_up": broker_up,
        "producer_queue": queued,
        "producer_queue_max": state.queue_max_messages,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().insert_header((header::RETRY_AFTER, state.retry_after.to_string())).json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}
