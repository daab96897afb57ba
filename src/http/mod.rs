//! HTTP receipt (actix-web), on two listeners. The public one (`http.listen`):
//! `POST /v1/batch` with its CORS preflight, `POST /v1/import` (server keys),
//! the tracker, `/healthz` and a bare `/readyz` (`{"ready": bool}`, for load
//! balancers); every request on it counts against its client's per-IP limit.
//! The admin one (`http.admin_listen`, loopback by default): `/metrics` and the
//! detailed `/readyz`, which name the producer's queue and the broker's state.
//!
//! A batch request goes: per-IP rate limit → content checks → body read under
//! its caps (size, time, bodies in flight) → a `Receipt` actor (decompress,
//! parse, key, origin, per-key rate, validate, encode) → the `KafkaSink` actor
//! (enqueue) → the broker's acknowledgement → 200. Any failure answers with a
//! JSON error and keeps nothing.

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
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;
use tokio::sync::Semaphore;

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
    /// `http.body_timeout_secs`: the time a client gets to send a body.
    pub body_timeout: Duration,
    /// `http.max_bodies_in_flight` permits: one per body being read.
    pub bodies: Arc<Semaphore>,
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

/// The public listener's app: every route behind the per-IP limit.
pub fn public_app(
    state: web::Data<AppState>,
) -> App<impl ServiceFactory<ServiceRequest, Config = (), Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error, InitError = ()>> {
    App::new().wrap(from_fn(limit_per_ip)).configure(routes(state))
}

/// The admin listener's app: the operational endpoints.
pub fn admin_app(
    state: web::Data<AppState>,
) -> App<impl ServiceFactory<ServiceRequest, Config = (), Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error, InitError = ()>> {
    App::new()
        .app_data(state)
        .route("/metrics", web::get().to(metrics))
        .route("/health", web::get().to(health))
        .route("/readyz", web::get().to(readyz_detailed))
        .route("/healthz", web::get().to(healthz))
        .default_service(web::to(not_found))
}

/// Routes of chronosd's public listener.
pub fn routes(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let (batch, tracker, script) = (state.batch_path.clone(), state.tracker_path.clone(), state.script.clone());
        cfg.app_data(state)
            .app_data(web::PayloadConfig::new(usize::MAX))
            .service(web::resource(batch).route(web::post().to(post_batch)).route(web::method(actix_web::http::Method::OPTIONS).to(preflight)))
            .route(import::PATH, web::post().to(import::post))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
        if !tracker.is_empty() {
            cfg.service(web::resource(tracker).app_data(script).route(web::get().to(script::serve)).route(web::head().to(script::serve)));
        }
        cfg.default_service(web::to(public_fallback));
    }
}

/// The client of a request: its peer, or whom a trusted proxy names.
fn client_of(req: &HttpRequest, state: &AppState) -> IpAddr {
    let peer = req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    client_ip::client_ip(peer, header_str(req, header::X_FORWARDED_FOR), &state.trusted_proxies)
}

/// Counts every public request against its client's per-IP limit, before
/// any route reads anything of it: 429 with Retry-After when over.
async fn limit_per_ip(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refused = req.app_data::<web::Data<AppState>>().and_then(|state| {
        let e = state.limits.check_ip(client_of(req.request(), state)).err()?;
        state.metrics.http_requests.with_label_values(&[e.status_code().as_str(), e.code()]).inc();
        let mut res = e.error_response();
        // A page's script may read the answer (and its Retry-After).
        if let Some(origin) = header_str(req.request(), header::ORIGIN).filter(|o| state.keys.any_allows(o)) {
            cors_headers(&mut res, origin);
        }
        Some(res)
    });
    match refused {
        Some(res) => Ok(req.into_response(res).map_into_right_body()),
        None => next.call(req).await.map(ServiceResponse::map_into_left_body),
    }
}

/// Any other path or method on the public listener: 405 on a path chronosd
/// serves, else the generic 404.
async fn public_fallback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let path = req.path();
    if path == state.batch_path || path == state.tracker_path || PUBLIC_PATHS.contains(&path) {
        let body = json!({ "ok": false, "error": "method_not_allowed", "message": format!("{} is not allowed here", req.method()) });
        return HttpResponse::MethodNotAllowed().json(body);
    }
    not_found().await
}

/// Paths of the public listener besides `batch_path` and `tracker_path`.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", import::PATH];

/// The 404 of both listeners: it names nothing of this deployment (not the
/// batch path, not a host), so a scanner learns nothing from it.
async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "ok": false, "error": "not_found", "message": "no such endpoint" }))
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
        Err(e) => {
            if e.hides_detail() {
                tracing::warn!(code = e.code(), error = %e, "Request failed.");
            }
            (e.error_response(), e.code())
        }
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
    // Counted against its per-IP limit already (`limit_per_ip`).
    let ip = client_of(req, state);
    if let Some(ct) = header_str(req, header::CONTENT_TYPE) {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("text/plain") && !mime.eq_ignore_ascii_case("application/json") {
            return Err(IngestError::UnsupportedMediaType(mime.chars().take(64).collect()));
        }
    }
    let encoding = Encoding::from_header(header_str(req, header::CONTENT_ENCODING))?;
    let body = read_body(req, payload, state, state.max_body_bytes, state.body_timeout).await?;
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

/// Reads a request's body under `limit` bytes and within `deadline`
/// (`http.body_timeout_secs` for a batch), holding one of the
/// `http.max_bodies_in_flight` permits meanwhile (none left: 503 with
/// Retry-After, before a byte is read).
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<u8>, IngestError> {
    let _permit = state.bodies.try_acquire().map_err(|_| IngestError::Busy { retry_after: state.retry_after })?;
    let content_length = header_str(req, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    body::read_capped(payload, content_length, limit, deadline).await
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

/// What `/readyz` finds: ready or not, and why (for the admin listener).
async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    let queued = match tokio::time::timeout(Duration::from_secs(2), state.sink.send(InFlight)).await {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => return (true, json!({ "ready": true, "sink": "discard" })),
        _ => return (false, json!({ "ready": false, "reason": "the producer actor does not answer" })),
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
    (ready, body)
}

fn ready_response(ready: bool, retry_after: u64, body: serde_json::Value) -> HttpResponse {
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().insert_header((header::RETRY_AFTER, retry_after.to_string())).json(body)
    }
}

/// The public `/readyz`: `{"ready": bool}` with 200 or 503, all a load
/// balancer needs; the reasons are on the admin listener.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (ready, _) = readiness(&state).await;
    ready_response(ready, state.retry_after, json!({ "ready": ready }))
}

/// The admin `/readyz`: readiness with the producer's queue and the broker's state.
async fn readyz_detailed(state: web::Data<AppState>) -> HttpResponse {
    let (ready, body) = readiness(&state).await;
    ready_response(ready, state.retry_after, body)
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}

/// The health board (`telemetry::board::Snapshot`): each assigned partition's
/// lag, stall and last error, the archive's runs. `chronos doctor` reads it.
async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.metrics.board.snapshot())
}
