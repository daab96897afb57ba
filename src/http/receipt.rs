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
    /// `None` with `enrich.enabled = false`.
    pub enricher: Option<Arc<crate::enrich::Enricher>>,
    pub bots: crate::config::BotPolicy,
    /// `enrich.geoip_db`, when set and enrichment is on.
    pub geo: Option<Arc<crate::enrich::GeoIp>>,
}

impl ReceiptShared {
    /// Everything receipt needs, from validated config.
    pub fn from_config(c: &crate::config::Config, metrics: Arc<Metrics>) -> Self {
        ReceiptShared {
            catalog: EventCatalog::from_config(&c.events, c.limits.max_string_bytes),
            keys: KeyRing::from_config(&c.keys),
            limits: Arc::new(RateLimits::new(&c.limits)),
            payload_limits: PayloadLimits::from_config(c),
            max_decompressed_bytes: c.http.max_decompressed_bytes,
            max_reasons: c.http.max_reasons,
            metrics,
            enricher: c.enrich.enabled.then(|| Arc::new(c.enrich.enricher())),
            bots: c.enrich.bots,
            // Checked readable when the config was loaded.
            geo: c
                .enrich
                .geoip_db
                .as_deref()
                .filter(|_| c.enrich.enabled)
                .and_then(|p| crate::enrich::GeoIp::open(p).map_err(|e| tracing::error!(error = %e, "GeoIP off.")).ok())
                .map(Arc::new),
        }
    }
}

/// Message: one request body to read.
pub struct Receive {
    pub body: Vec<u8>,
    pub encoding: Encoding,
    pub origin: Option<String>,
    /// The client's full address: looked up in the GeoIP database, then
    /// anonymised before anything keeps it.
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
    /// Events of a bot's batch not stored (`[enrich] bots = "drop"`).
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped: usize,
    /// The first rejection reasons (at most `http.max_reasons`).
    pub reasons: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
    let key = shared.keys.find(env.key).ok_or(IngestError::UnknownKey)?;
    key.check_origin(msg.origin.as_deref()).map_err(|refusal| match refusal {
        OriginRefusal::Missing => IngestError::MissingOrigin { key_id: key.id.clone() },
        OriginRefusal::ServerKey => IngestError::ServerKeyFromPage { key_id: key.id.clone() },
        OriginRefusal::NotAllowed => {
            IngestError::OriginNotAllowed { origin: msg.origin.as_deref().unwrap_or_default().chars().take(256).collect(), key_id: key.id.clone() }
        }
    })?;
    shared.limits.check_key(key.slot)?;
    let agent = shared.enricher.as_ref().map(|e| e.agent(msg.user_agent.as_deref(), env.webdriver));
    let bot = agent.as_ref().and_then(|a| a.bot);
    if let (Some(why), crate::config::BotPolicy::Drop) = (bot, shared.bots) {
        shared.metrics.bot_events.with_label_values(&["dropped"]).inc_by(env.events.len() as u64);
        return Ok(Accepted {
            summary: BatchSummary {
                batch_id: env.batch_id,
                accepted: 0,
                rejected: 0,
                dropped: env.events.len(),
                reasons: vec![format!("not stored: taken for a bot ({why}) and [enrich] bots = \"drop\"")],
            },
            batch: OutgoingBatch {
                session: env.session.to_string(),
                key_id: key.id.clone(),
                received_at: msg.received_at,
                record: None,
                dead_letter: None,
            },
        });
    }
    let place = shared.geo.as_ref().and_then(|g| g.lookup(msg.client_ip));
    let validated = payload::validate_events(env.events, &shared.catalog);
    if bot.is_some() {
        shared.metrics.bot_events.with_label_values(&["flagged"]).inc_by(validated.accepted.len() as u64);
    }
    let facts = ServerFacts {
        received_at: msg.received_at,
        client_ip: Some(payload::anonymise(msg.client_ip)),
        key_id: &key.id,
        user_agent: msg.user_agent.as_deref(),
        imported: false,
        agent: agent.as_deref(),
        place: place.as_ref(),
    };
    let record = encode_record(&env, &validated, &facts, &shared.catalog);
    let dead_letter = encode_dead_letter(&env, &validated, &facts);
    Ok(Accepted {
        summary: BatchSummary {
            batch_id: env.batch_id,
            accepted: validated.accepted.len(),
            rejected: validated.rejected.len(),
            dropped: 0,
            reasons: validated.rejected.iter().take(shared.max_reasons).map(|r| r.reason.clone()).collect(),
        },
        batch: OutgoingBatch { session: env.session.to_string(), key_id: key.id.clone(), received_at: msg.received_at, record, dead_letter },
    })
}

/// One receipt actor.
pub struct Receipt {
    shared: Arc<ReceiptShared>,
    mailbox_capacity: usize,
    read: Reader,
}

/// What a `Receipt` does with a batch: [`read_batch`] (a test gives one that panics).
type Reader = fn(&ReceiptShared, Receive) -> Result<Accepted, IngestError>;

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
        match catch_unwind(AssertUnwindSafe(|| (self.read)(&self.shared, msg))) {
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
        Self::start_reading(shared, threads, mailbox_capacity, read_batch)
    }

    fn start_reading(shared: Arc<ReceiptShared>, threads: usize, mailbox_capacity: usize, read: Reader) -> Self {
        let mut addrs = Vec::with_capacity(threads);
        let mut arbiters = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            let arbiter = Arbiter::new();
            let shared = shared.clone();
            addrs.push(Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Receipt { shared, mailbox_capacity, read }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const PANIC_BODY: &[u8] = b"__panic__";

    /// `read_batch`, but a panic for `PANIC_BODY`.
    fn panicking(shared: &ReceiptShared, msg: Receive) -> Result<Accepted, IngestError> {
        if msg.body == PANIC_BODY {
            panic!("injected by a test");
        }
        read_batch(shared, msg)
    }

    fn shared() -> Arc<ReceiptShared> {
        let c = Config::from_toml("[[keys]]\nid = \"t\"\nkey = \"wk_test_0123456789abcdef\"\nallow_no_origin = true\n").unwrap();
        Arc::new(ReceiptShared::from_config(&c, Arc::new(Metrics::new())))
    }

    fn receive(body: &[u8]) -> Receive {
        Receive {
            body: body.to_vec(),
            encoding: Encoding::Identity,
            origin: None,
            client_ip: "203.0.113.0".parse().unwrap(),
            user_agent: None,
            received_at: 1_764_000_000_000,
        }
    }

    #[actix_rt::test]
    async fn a_panicking_receipt_actor_is_restarted_and_keeps_serving() {
        let shared = shared();
        // The production actor and its catch_unwind; only the reader panics.
        let pool = ReceiptPool::start_reading(shared.clone(), 1, 4, panicking);
        let body = br#"{"v":1,"key":"wk_test_0123456789abcdef","batch":"0b6f5e2c-3f0e-4bb1-9a57-8f6c2a0c1d2e","sent_at":1764000000000,"session":"s","page":{"url":"u"},"events":[["mouse_moves",1764000000000,1,2]]}"#;
        assert!(matches!(pool.pick().send(receive(PANIC_BODY)).await.unwrap(), Err(IngestError::Internal)));
        // Same (only) actor, restarted by its Supervisor: it answers the next batch.
        let ok = pool.pick().send(receive(body)).await.unwrap().unwrap();
        assert_eq!(ok.summary.accepted, 1);
        assert_eq!(shared.metrics.actor_panics.with_label_values(&["receipt"]).get(), 1);
        pool.stop();
    }
}
