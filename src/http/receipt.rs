//! `Receipt`: the supervised actors that turn a request body into records —
//! decompress, parse, authenticate, validate, encode. CPU-bound, so they run
//! on their own arbiters (threads), away from the HTTP workers' I/O.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use uuid::Uuid;

use super::auth::{KeyRing, OriginRefusal};
use super::body::{decode, Encoding};
use super::error::IngestError;
use super::limits::RateLimits;
use crate::catalog::EventCatalog;
use crate::payload::{self, encode_dead_letter, encode_record, Envelope, PayloadLimits, ServerFacts};
use crate::produce::OutgoingBatch;
use crate::telemetry::Metrics;

/// What every receipt actor reads.
pub struct ReceiptShared {
    pub catalog: EventCatalog,
    pub keys: KeyRing,
    pub limits: Arc<RateLimits>,
    pub payload_limits: PayloadLimits,
    pub max_decompressed_bytes: usize,
    pub max_reasons: usize,
    pub metrics: Arc<Metrics>,
}

/// Message: one request body to read.
pub struct Receive {
    pub body: Vec<u8>,
    pub encoding: Encoding,
    pub origin: Option<String>,
    /// Already anonymised.
    pub client_ip: IpAddr,
    pub user_agent: Option<String>,
    pub received_at: i64,
}

/// What the response tells the client about its batch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchSummary {
    pub batch_id: Uuid,
    pub accepted: usize,
    pub rejected: usize,
    /// The first rejection reasons (at most `http.max_reasons`).
    pub reasons: Vec<String>,
}

/// A batch that passed receipt: its records and its summary.
#[derive(Debug)]
pub struct Accepted {
    pub summary: BatchSummary,
    pub batch: OutgoingBatch,
}

impl Message for Receive {
    type Result = Result<Accepted, IngestError>;
}

/// Reads one body end to end (also used directly by benchmarks and the fuzz target).
pub fn read_batch(shared: &ReceiptShared, msg: Receive) -> Result<Accepted, IngestError> {
    let mut body = decode(msg.body, msg.encoding, shared.max_decompressed_bytes)?;
    let root = payload::parse(&mut body)?;
    let env = Envelope::from_value(&root, &shared.payload_limits)?;
    let (index, key) = shared.keys.find(env.key).ok_or(IngestError::UnknownKey)?;
    key.check_origin(msg.origin.as_deref()).map_err(|refusal| match refusal {
        OriginRefusal::Missing => IngestError::MissingOrigin { key_id: key.id.clone() },
        OriginRefusal::NotAllowed => IngestError::OriginNotAllowed {
            origin: msg.origin.as_deref().unwrap_or_default().chars().take(256).collect(),
            key_id: key.id.clone(),
        },
    })?;
    shared.limits.check_key(index)?;
    let validated = payload::validate_events(env.events, &shared.catalog);
    let facts = ServerFacts {
        received_at: msg.received_at,
        client_ip: msg.client_ip,
        key_id: &key.id,
        user_agent: msg.user_agent.as_deref(),
    };
    let record = encode_record(&env, &validated, &facts, &shared.catalog);
    let dead_letter = encode_dead_letter(&env, &validated, &facts);
    Ok(Accepted {
        summary: BatchSummary {
            batch_id: env.batch_id,
            accepted: validated.accepted.len(),
            rejected: validated.rejected.len(),
            reasons: validated.rejected.iter().take(shared.max_reasons).map(|r| r.reason.clone()).collect(),
        },
        batch: OutgoingBatch {
            session: env.session.to_string(),
            key_id: key.id.clone(),
            received_at: msg.received_at,
            record,
            dead_letter,
        },
    })
}

/// One receipt actor.
pub struct Receipt {
    shared: Arc<ReceiptShared>,
    mailbox_capacity: usize,
}

impl Actor for Receipt {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Supervised for Receipt {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!("Receipt actor restarting after a panic.");
    }
}

impl Handler<Receive> for Receipt {
    type Result = Result<Accepted, IngestError>;

    fn handle(&mut self, msg: Receive, ctx: &mut Context<Self>) -> Self::Result {
        match catch_unwind(AssertUnwindSafe(|| read_batch(&self.shared, msg))) {
            Ok(result) => result,
            Err(_) => {
                // A panic stops the actor; its Supervisor starts it again. The
                // request gets a 500 and nothing of it was kept.
                self.shared.metrics.actor_panics.with_label_values(&["receipt"]).inc();
                ctx.stop();
                Err(IngestError::Internal)
            }
        }
    }
}

/// Receipt actors, one per arbiter, used in turn.
pub struct ReceiptPool {
    addrs: Vec<Addr<Receipt>>,
    arbiters: Vec<Arbiter>,
    next: AtomicUsize,
}

impl ReceiptPool {
    pub fn start(shared: Arc<ReceiptShared>, threads: usize, mailbox_capacity: usize) -> Self {
        let mut addrs = Vec::with_capacity(threads);
        let mut arbiters = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            let arbiter = Arbiter::new();
            let shared = shared.clone();
            addrs.push(Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Receipt { shared, mailbox_capacity }));
            arbiters.push(arbiter);
        }
        ReceiptPool { addrs, arbiters, next: AtomicUsize::new(0) }
    }

    /// The next actor in turn.
    pub fn pick(&self) -> &Addr<Receipt> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        &self.addrs[i]
    }

    pub fn stop(&self) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}
