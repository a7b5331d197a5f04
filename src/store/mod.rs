//! Storage behind the [`Store`] trait. Handlers never see it; the control plane
//! (`control`) is its only user, so a second backend touches nothing else.

mod sqlite;

use async_trait::async_trait;
use serde_json::Value;

pub use sqlite::SqliteStore;

use crate::model::{NodeRecord, NodeSpec, StrategyRecord};

/// Everything stored, as loaded at start and after each write.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// In id order.
    pub nodes: Vec<NodeRecord>,
    /// In name order.
    pub strategies: Vec<StrategyRecord>,
    pub active_strategy: String,
}

/// Who made a change, recorded with it in the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub request_id: String,
}

/// One row of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named another version than the stored one.
    #[error("version mismatch: stored version is {current}")]
    VersionMismatch { current: i64 },
    #[error("storage failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Internal(Box::new(err))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Internal(Box::new(err))
    }
}

/// Durable storage of nodes, strategies, the active strategy and the audit trail.
/// Every write is one transaction that also appends its audit row.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn load(&self) -> Result<Stored, StoreError>;

    /// Creates a node; `Conflict` when the id exists.
    async fn create_node(&self, spec: &NodeSpec, actor: &Actor) -> Result<NodeRecord, StoreError>;

    /// Creates or replaces a node; `true` when it was created. `expected`, when
    /// given, must equal the stored version (and a missing node has none).
    async fn put_node(
        &self,
        spec: &NodeSpec,
        expected: Option<i64>,
        action: &str,
        actor: &Actor,
    ) -> Result<(NodeRecord, bool), StoreError>;

    /// Deletes a node, returning what was deleted.
    async fn delete_node(
        &self,
        id: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<NodeRecord, StoreError>;

    /// Creates or replaces a strategy; `true` when it was created.
    async fn put_strategy(
        &self,
        name: &str,
        kind: &str,
        params: &Value,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(StrategyRecord, bool), StoreError>;

    /// Deletes a strategy; `Conflict` when it is the active one.
    async fn delete_strategy(
        &self,
        name: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<StrategyRecord, StoreError>;

    /// Makes a stored strategy the active one; `NotFound` when it is not stored.
    async fn set_active_strategy(&self, name: &str, actor: &Actor) -> Result<(), StoreError>;

    /// Appends an audit row for a change made outside the store (an overrides reload).
    async fn audit(
        &self,
        action: &str,
        target: &str,
        before: Option<Value>,
        after: Option<Value>,
        actor: &Actor,
    ) -> Result<(), StoreError>;

    /// Audit rows with `id < before`, newest first.
    async fn audit_page(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Current time as stored and shown: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
