//! Why a store operation failed, in terms every backend shares.
//!
//! Callers match on the variants that mean something to them (not found, conflict, invalid,
//! the token checks); whatever the backend itself reports is [`StoreError::Backend`], so no
//! caller depends on which database is behind the store.

use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Something named does not exist.
    #[error("no {what} named {key:?}")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// The name or id asked for.
        key: String,
    },
    /// The change would break a uniqueness rule.
    #[error("{0}")]
    Conflict(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The token is unknown, of the wrong kind or revoked.
    #[error("invalid token")]
    InvalidToken,
    /// The token's lifetime is over.
    #[error("the token has expired")]
    TokenExpired,
    /// The token was used as often as it may be.
    #[error("the token has been used up")]
    TokenUsedUp,
    /// The database was written by a newer relay.
    #[error(
        "the store is at schema version {found}, newer than this relay understands ({known}); upgrade the relay"
    )]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this code knows.
        known: i64,
    },
    /// A schema migration failed; the store stays at the version before it.
    #[error("migrating the store to schema version {version} ({name}) failed: {source}")]
    Migration {
        /// The version the step would have reached.
        version: i64,
        /// What the step is for.
        name: &'static str,
        /// The backend's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Creating the store's directory or file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The backend failed (an I/O error, a damaged file, a lost database connection): the
    /// backend's own error, kept as the source so its text reaches the log.
    #[error("store: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}
