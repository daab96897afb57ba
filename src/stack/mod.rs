//! The local stack (chronos start): PostgreSQL, the broker and chronosd.
