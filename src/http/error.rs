//! Every way a request can fail, mapped to an HTTP status and a JSON body in
//! one place. The body always says what was wrong and where.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::payload::PayloadError;
use crate::produce::ProduceError;

/// A request refused; nothing of it was kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("decompressed body is larger than the limit of {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("the request body was not received within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("too many request bodies are being read; retry after {retry_after} s")]
    Busy { retry_after: u64 },
    #[error("the request body ended early: {0}")]
    IncompleteBody(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("Content-Encoding `{0}` is not supported (send gzip or no encoding)")]
    UnsupportedEncoding(String),
    #[error("Content-Type `{0}` is not supported (send text/plain or application/json)")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("unknown write key")]
    UnknownKey,
    #[error("origin `{origin}` is not allowed for write key `{key_id}`")]
    OriginNotAllowed { origin: String, key_id: String },
    #[error("requests without an Origin header are not allowed for write key `{key_id}`")]
    MissingOrigin { key_id: String },
    #[error("write key `{key_id}` is a server key: it is refused from pages (the request has an Origin header)")]
    ServerKeyFromPage { key_id: String },
    #[error("write key `{key_id}` is a browser key; {path} takes a server key (kind = \"server\")")]
    NotAServerKey { key_id: String, path: String },
    #[error("{0}")]
    NoKey(&'static str),
    #[error("too many requests for this {scope}; retry after {retry_after} s")]
    RateLimited { scope: &'static str, retry_after: u64 },
    #[error("the event pipeline is saturated; retry after {retry_after} s")]
    Overloaded { retry_after: u64 },
    #[error("the broker did not acknowledge the batch in time; retry after {retry_after} s")]
    BrokerTimeout { retry_after: u64 },
    #[error("the broker could not store the batch ({reason}); retry after {retry_after} s")]
    BrokerUnavailable { reason: String, retry_after: u64 },
    #[error("the broker refused the batch for good: {0}")]
    BrokerRejected(String),
    #[error("PostgreSQL cannot be reached to skip the batches stored before ({reason}); retry after {retry_after} s")]
    StoreUnavailable { reason: String, retry_after: u64 },
    #[error("chronosd is shutting down; retry after {retry_after} s")]
    ShuttingDown { retry_after: u64 },
    #[error("internal error while reading the batch")]
    Internal,
}

impl IngestError {
    /// What a batch the producer could not store means for its request:
    /// 503 with `retry_after` while a retry may help, 500 when it cannot.
    pub fn produce(e: ProduceError, retry_after: u64) -> Self {
        match e {
            ProduceError::Saturated => IngestError::Overloaded { retry_after },
            ProduceError::Timeout => IngestError::BrokerTimeout { retry_after },
            ProduceError::Unavailable(reason) => IngestError::BrokerUnavailable { reason, retry_after },
            ProduceError::Rejected(reason) => IngestError::BrokerRejected(reason),
        }
    }

    /// Stable machine-readable code, also the `status` label of the request metric.
    pub fn code(&self) -> &'static str {
        use IngestError::*;
        match self {
            BodyTooLarge { .. } => "body_too_large",
            DecompressedTooLarge { .. } => "decompressed_too_large",
            BodyTimeout { .. } => "body_timeout",
            Busy { .. } => "busy",
            IncompleteBody(_) => "incomplete_body",
            BadGzip(_) => "bad_gzip",
            UnsupportedEncoding(_) => "unsupported_encoding",
            UnsupportedMediaType(_) => "unsupported_media_type",
            Payload(PayloadError::Malformed { .. }) => "malformed_json",
            Payload(PayloadError::Invalid { .. }) => "invalid_batch",
            Payload(PayloadError::TooDeep { .. }) => "too_deep",
            UnknownKey => "unknown_key",
            OriginNotAllowed { .. } => "origin_not_allowed",
            MissingOrigin { .. } => "missing_origin",
            ServerKeyFromPage { .. } => "server_key_from_page",
            NotAServerKey { .. } => "not_a_server_key",
            NoKey(_) => "no_key",
            RateLimited { .. } => "rate_limited",
            Overloaded { .. } => "overloaded",
            BrokerTimeout { .. } => "broker_timeout",
            BrokerUnavailable { .. } => "broker_unavailable",
            BrokerRejected(_) => "broker_rejected",
            ShuttingDown { .. } => "shutting_down",
            StoreUnavailable { .. } => "store_unavailable",
            Internal => "internal",
        }
    }

    /// Whether the body leaves out this error's detail (then the log has it).
    pub fn hides_detail(&self) -> bool {
        matches!(self, IngestError::BrokerUnavailable { .. } | IngestError::BrokerRejected(_) | IngestError::StoreUnavailable { .. })
    }

    /// What the response body says. A backend's own words (a PostgreSQL or
    /// librdkafka error, which may name hosts, users or the connection string)
    /// go to the log, never to the client: those errors get a fixed sentence.
    fn public_message(&self) -> String {
        use IngestError::*;
        match self {
            BrokerUnavailable { retry_after, .. } => format!("the broker could not store the batch; retry after {retry_after} s"),
            BrokerRejected(_) => "the broker refused the batch for good".into(),
            StoreUnavailable { retry_after, .. } => format!("PostgreSQL cannot be reached; retry after {retry_after} s"),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        use IngestError::*;
        match self {
            RateLimited { retry_after, .. }
            | Busy { retry_after }
            | Overloaded { retry_after }
            | BrokerTimeout { retry_after }
            | BrokerUnavailable { retry_after, .. }
            | ShuttingDown { retry_after }
            | StoreUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        use IngestError::*;
        match self {
            BodyTooLarge { .. } | DecompressedTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IncompleteBody(_) | BadGzip(_) | Payload(_) => StatusCode::BAD_REQUEST,
            UnsupportedEncoding(_) | UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UnknownKey | NoKey(_) => StatusCode::UNAUTHORIZED,
            OriginNotAllowed { .. } | MissingOrigin { .. } | ServerKeyFromPage { .. } | NotAServerKey { .. } => StatusCode::FORBIDDEN,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Busy { .. } | Overloaded { .. } | BrokerTimeout { .. } | BrokerUnavailable { .. } | ShuttingDown { .. } | StoreUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            BrokerRejected(_) | Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut detail = json!({ "code": self.code(), "message": self.public_message() });
        match self {
            IngestError::BodyTooLarge { limit } | IngestError::DecompressedTooLarge { limit } => detail["limit"] = json!(limit),
            IngestError::BodyTimeout { secs } => detail["limit_secs"] = json!(secs),
            IngestError::Payload(PayloadError::Malformed { offset, .. }) => detail["offset"] = json!(offset),
            IngestError::Payload(PayloadError::Invalid { path, .. }) => detail["path"] = json!(path),
            IngestError::Payload(PayloadError::TooDeep { offset, limit }) => {
                detail["offset"] = json!(offset);
                detail["limit"] = json!(limit);
            }
            _ => {}
        }
        if let Some(secs) = self.retry_after() {
            detail["retry_after"] = json!(secs);
        }
        let mut res = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.json(json!({ "ok": false, "error": detail }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_produce_error_is_503_with_retry_after_while_a_retry_may_help_and_500_when_not() {
        let errors = [
            ProduceError::Saturated,
            ProduceError::Timeout,
            ProduceError::Unavailable("leader not available".into()),
            ProduceError::Rejected("message too large".into()),
        ];
        for e in errors {
            let retryable = e.retryable();
            let mapped = IngestError::produce(e.clone(), 7);
            let res = mapped.error_response();
            if retryable {
                assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{e:?}");
                assert_eq!(res.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("7"), "{e:?}");
            } else {
                assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{e:?}");
                assert!(res.headers().get(header::RETRY_AFTER).is_none(), "{e:?}");
            }
        }
        assert!(IngestError::produce(ProduceError::Unavailable("leader not available".into()), 1).to_string().contains("leader not available"));
    }

    #[test]
    fn a_5xx_body_leaves_the_backend_s_words_to_the_log() {
        let reason = "PostgreSQL at postgres://chronos:***@db.internal:5432/chronos is not reachable";
        for e in [
            IngestError::StoreUnavailable { reason: reason.into(), retry_after: 2 },
            IngestError::BrokerUnavailable { reason: reason.into(), retry_after: 2 },
            IngestError::BrokerRejected(reason.into()),
        ] {
            assert!(e.status_code().is_server_error() && e.hides_detail());
            let body = actix_web::body::to_bytes(e.error_response().into_body());
            let body = String::from_utf8(futures_util::FutureExt::now_or_never(body).unwrap().unwrap().to_vec()).unwrap();
            assert!(!body.contains("db.internal") && !body.contains("chronos:"), "{body}");
            assert!(body.contains(e.code()), "{body}");
        }
    }

    #[test]
    fn a_body_too_slow_is_408_naming_its_limit() {
        let e = IngestError::BodyTimeout { secs: 10 };
        assert_eq!(e.status_code(), StatusCode::REQUEST_TIMEOUT);
        let body = actix_web::body::to_bytes(e.error_response().into_body());
        let body: serde_json::Value = serde_json::from_slice(&futures_util::FutureExt::now_or_never(body).unwrap().unwrap()).unwrap();
        assert_eq!(body["error"]["limit_secs"], 10);
        assert_eq!(body["error"]["code"], "body_timeout");
    }
}
