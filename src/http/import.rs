//! `POST /v1/import`: the historical import of `chronos import` over HTTP,
//! for a back end holding a server key (`Authorization: Bearer <key>`). The
//! body is JSON lines in either import form (docs/import.md), gzip allowed;
//! the answer, once the broker acknowledged every batch, is the import's
//! summary: lines, batches, accepted, rejected (with reasons naming lines),
//! duplicates (batches stored by an earlier request, not sent again).

use std::collections::HashSet;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::OriginRefusal;
use super::body::{self, Encoding};
use super::error::IngestError;
use super::{header_str, AppState};
use crate::clock::now_ms;
use crate::config::KeyKind;
use crate::import::{send, Importer, Item, Summary};
use crate::produce::Produce;

pub const PATH: &str = "/v1/import";

/// An import waits this long at least for the broker (a body holds many batches).
const MIN_DEADLINE: Duration = Duration::from_secs(30);

pub async fn post(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let outcome = import(&req, payload, &state).await;
    super::answer(&state, &outcome, "imported")
}

async fn import(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<Summary, IngestError> {
    let secret = header_str(req, header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(IngestError::NoKey("POST /v1/import needs `Authorization: Bearer <server key>`"))?;
    let key = state.keys.find(secret.trim()).ok_or(IngestError::UnknownKey)?;
    if key.kind != KeyKind::Server {
        return Err(IngestError::NotAServerKey { key_id: key.id.clone(), path: PATH.into() });
    }
    if key.check_origin(header_str(req, header::ORIGIN)) == Err(OriginRefusal::ServerKey) {
        return Err(IngestError::ServerKeyFromPage { key_id: key.id.clone() });
    }
    state.limits.check_key(key.slot)?;
    let config = state.config.clone();
    let limit = config.import.max_body_bytes;
    let encoding = Encoding::from_header(header_str(req, header::CONTENT_ENCODING))?;
    let body = super::read_body(req, payload, state, limit, Duration::from_secs(config.import.body_timeout_secs)).await?;

    // Decompress, parse and check off the HTTP worker: a body may hold a million events.
    let (key_id, enricher) = (key.id.clone(), state.enricher.clone());
    let (checked, lines) = web::block(move || -> Result<(Vec<Item>, u64), IngestError> {
        let body = body::decode(body, encoding, limit)?;
        let mut importer = Importer::new(&config, &key_id, now_ms(), enricher);
        let mut lines = 0;
        for line in body.split(|&b| b == b'\n') {
            lines += 1;
            importer.line(lines, line);
        }
        importer.finish();
        Ok((importer.drain().collect(), lines - u64::from(body.ends_with(b"\n") || body.is_empty())))
    })
    .await
    .map_err(|_| IngestError::Internal)??;

    let mut summary = Summary { lines, ..Summary::default() };
    let batches: Vec<_> = checked.into_iter().filter_map(|item| summary.take(item)).collect();
    let unavailable = |e: anyhow::Error| IngestError::StoreUnavailable { reason: format!("{e:#}"), retry_after: state.retry_after };
    let client = crate::store::connect(&state.config.postgres.url).await.map_err(unavailable)?;
    let fresh = send::fresh(Some(&client), batches, &mut HashSet::new(), &mut summary).await.map_err(unavailable)?;

    let deadline = tokio::time::Instant::now() + state.produce_deadline.max(MIN_DEADLINE);
    let mut pending = Vec::with_capacity(fresh.len());
    for b in fresh {
        let sent = tokio::time::timeout_at(deadline, state.sink.send(Produce(b.outgoing))).await;
        let p = sent
            .map_err(|_| IngestError::Overloaded { retry_after: state.retry_after })?
            .map_err(|_| IngestError::ShuttingDown { retry_after: state.retry_after })?
            .map_err(|e| IngestError::produce(e, state.retry_after))?;
        pending.push(p);
    }
    for p in pending {
        p.acknowledged(deadline).await.map_err(|e| IngestError::produce(e, state.retry_after))?;
    }
    state.metrics.events_accepted.inc_by(summary.accepted);
    state.metrics.events_rejected.inc_by(summary.rejected);
    Ok(summary)
}
