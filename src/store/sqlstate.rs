//! What a PostgreSQL error means for the loaders: retry the same work later
//! (transient) or stop retrying it, because the same rows will fail the same
//! way every time (permanent), decided by SQLSTATE in this one place.
//!
//! A permanent error is the data's fault: the loader finds the record at
//! fault and sets it aside as a dead letter, or, when the statement was a
//! continuous view's, marks that view broken. Retrying it with backoff would
//! stall its partition for good.

use tokio_postgres::error::SqlState;

/// How to treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Connection, resources, locks, serialization, shutdown, or anything not
    /// known to be the data's fault: try the same work again after a wait.
    Transient,
    /// The rows themselves: data exceptions (class 22: a NUL, an invalid
    /// escape, a value out of range), integrity violations (23) and program
    /// limits (54: an index row too large).
    Permanent,
}

/// The claim of batch ids (`chronos.seen_batches`) resolves its own
/// conflicts; a unique violation there is two loaders racing, which the
/// offset fence settles on the next try.
const CLAIM_CONSTRAINT: &str = "seen_batches_pkey";

/// Classifies an error of tokio-postgres.
pub fn classify(e: &tokio_postgres::Error) -> Class {
    match e.as_db_error() {
        // No answer from the server: I/O, a closed connection, a timeout.
        None => Class::Transient,
        Some(db) => classify_code(db.code(), db.constraint()),
    }
}

/// Classifies by SQLSTATE (and, for a unique violation, the constraint).
pub fn classify_code(code: &SqlState, constraint: Option<&str>) -> Class {
    if *code == SqlState::UNIQUE_VIOLATION && constraint == Some(CLAIM_CONSTRAINT) {
        return Class::Transient;
    }
    match &code.code()[..2] {
        "22" | "23" | "54" => Class::Permanent,
        // Everything else — 08 connection, 40 serialization and deadlock,
        // 53 resources, 55 lock not available, 57 shutdown or cancel, 58 I/O,
        // and 42 (a table or column missing: the schema's fault, not one
        // record's; fixed by installing it, after which the retry succeeds).
        _ => Class::Transient,
    }
}

/// `SQLSTATE: message` of an error, as PostgreSQL said it (tokio-postgres's
/// own Display says only "db error"), and its SQLSTATE when it has one.
pub fn describe(e: &tokio_postgres::Error) -> (Option<String>, String) {
    match e.as_db_error() {
        Some(db) => (Some(db.code().code().to_string()), format!("{}: {}", db.code().code(), db.message())),
        None => (None, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_s_faults_are_permanent_and_the_rest_transient() {
        let permanent = [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE, // 22021: a NUL in text
            SqlState::UNTRANSLATABLE_CHARACTER,    // 22P05: \u0000 in jsonb
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,  // 22003
            SqlState::NOT_NULL_VIOLATION,          // 23502
            SqlState::CHECK_VIOLATION,             // 23514
            SqlState::PROGRAM_LIMIT_EXCEEDED,      // 54000: index row too large
        ];
        for code in permanent {
            assert_eq!(classify_code(&code, None), Class::Permanent, "{}", code.code());
        }
        let transient = [
            SqlState::CONNECTION_FAILURE,        // 08006
            SqlState::T_R_SERIALIZATION_FAILURE, // 40001
            SqlState::T_R_DEADLOCK_DETECTED,     // 40P01
            SqlState::OUT_OF_MEMORY,             // 53200
            SqlState::DISK_FULL,                 // 53100
            SqlState::LOCK_NOT_AVAILABLE,        // 55P03
            SqlState::ADMIN_SHUTDOWN,            // 57P01
            SqlState::QUERY_CANCELED,            // 57014
            SqlState::IO_ERROR,                  // 58030
            SqlState::UNDEFINED_TABLE,           // 42P01
            SqlState::IN_FAILED_SQL_TRANSACTION, // 25P02
        ];
        for code in transient {
            assert_eq!(classify_code(&code, None), Class::Transient, "{}", code.code());
        }
        assert_eq!(classify_code(&SqlState::UNIQUE_VIOLATION, Some("seen_batches_pkey")), Class::Transient, "the claim's own conflict");
        assert_eq!(classify_code(&SqlState::UNIQUE_VIOLATION, Some("some_other_key")), Class::Permanent);
    }
}
