//! Storage behind the [`Store`] trait. Handlers never see it; the control plane
//! (`control`) is its only user, so a second backend touches nothing else.
//!
//! Two backends: SQLite (the embedded default, one process) and PostgreSQL
//! (any number of replicas sharing one database). Both keep a **change
//! counter**: every write bumps it in its own transaction and records which
//! entity it changed, so a process can ask "what changed since N" and reload
//! only that (`changes_since`). Writers are serialised by the counter row, so
//! the counter's order is the commit order and no change can be skipped.

mod memory;
mod postgres;
mod rows;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::model::{NodeRecord, NodeSpec, StrategyRecord};

/// Everything stored, as one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// In id order.
    pub nodes: Vec<NodeRecord>,
    /// In name order.
    pub strategies: Vec<StrategyRecord>,
    pub active_strategy: String,
    /// Change number of the last switch of the active strategy.
    pub active_seq: i64,
    /// The change counter this snapshot reflects.
    pub head: i64,
}

/// One changed entity: its state at `seq` (`None`: deleted).
#[derive(Debug, Clone)]
pub struct Change<T> {
    pub key: String,
    /// The latest change number of this entity in the batch.
    pub seq: i64,
    pub value: Option<T>,
}

/// What changed after a given change number, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The change counter this batch reflects.
    pub head: i64,
    /// Set when the changes are no longer all recorded (the caller is too far
    /// behind, or the database was replaced): reload everything.
    pub full: Option<Stored>,
    pub nodes: Vec<Change<NodeRecord>>,
    pub strategies: Vec<Change<StrategyRecord>>,
    pub active_strategy: Option<Change<String>>,
}

/// The result of a write and the change number it committed as.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub value: T,
    pub seq: i64,
}

/// Who made a change, recorded with it in the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub request_id: String,
    /// Set by the server, never by the client: an admin request or the
    /// server itself.
    pub kind: ActorKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ActorKind {
    /// A request that carried the admin token.
    #[default]
    Admin,
    /// The server itself: startup, the overrides watcher, SIGHUP.
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::System => "system",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "system" {
            ActorKind::System
        } else {
            ActorKind::Admin
        }
    }
}

impl Actor {
    /// The server acting on its own; `what` becomes the request id.
    pub fn system(what: &str) -> Self {
        Actor {
            request_id: what.to_owned(),
            kind: ActorKind::System,
        }
    }
}

/// The most JSON kept for one side (before or after) of an audit row.
pub const AUDIT_VALUE_MAX: usize = 64 * 1024;

/// One side of an audit row as stored: the JSON, or past [`AUDIT_VALUE_MAX`]
/// a stand-in with its size and digest, so no row can grow without bound.
pub(crate) fn audit_value(value: Option<Value>) -> Option<String> {
    let text = value?.to_string();
    if text.len() <= AUDIT_VALUE_MAX {
        return Some(text);
    }
    Some(
        serde_json::json!({
            "truncated": true,
            "bytes": text.len(),
            "xxh3": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
        })
        .to_string(),
    )
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
    pub actor: ActorKind,
}

/// The last good overrides file of one replica, kept so that a replica that
/// starts with an invalid file keeps what it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedOverrides {
    pub content: String,
    pub revision: String,
    /// Node ids the file patches or pins (a delete of those is refused).
    pub refs: Vec<String>,
    /// Of `refs`, those that were stored when the file was validated. The
    /// save fails with `Conflict` if one of them is gone by then (another
    /// replica deleted it meanwhile); not kept, so a load returns it empty.
    pub stored_refs: Vec<String>,
    /// The strategy the file makes active (a delete of it is refused).
    pub active_strategy: Option<String>,
    pub loaded_at: String,
}

/// Node health as stored: the facts every replica derives the same status
/// from. Times are RFC 3339 on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    pub node: String,
    /// The node's `created_seq` when the record was written: a node deleted
    /// and created again under the same id starts with a clean record.
    pub incarnation: i64,
    /// Orders the writes of one node's record: a copy never goes back to an
    /// older one.
    pub version: i64,
    pub connections: Option<u64>,
    /// Last heartbeat.
    pub heartbeat_at: Option<String>,
    /// Start of the current run of heartbeats (the node came back then).
    pub heartbeat_since: Option<String>,
    /// Set while the heartbeats have stopped for longer than the TTL.
    pub expired_at: Option<String>,
    /// The probes' verdict: `Some(true)` down, `Some(false)` up.
    pub probe_down: Option<bool>,
    pub probe_since: Option<String>,
    pub probe_reason: String,
    /// Over its bound of the reported connections, as the judge last
    /// evaluated (the `bounded` kind).
    pub full: bool,
    pub created_at: String,
}

impl HealthRecord {
    pub fn new(node: &str, incarnation: i64, now: String) -> Self {
        HealthRecord {
            node: node.to_owned(),
            incarnation,
            version: 0,
            connections: None,
            heartbeat_at: None,
            heartbeat_since: None,
            expired_at: None,
            probe_down: None,
            probe_since: None,
            probe_reason: String::new(),
            full: false,
            created_at: now,
        }
    }
}

/// Health records changed since the last read.
#[derive(Debug, Clone, Default)]
pub struct HealthBatch {
    pub records: Vec<HealthRecord>,
    /// Pass back to the next `health_since`.
    pub cursor: i64,
    /// The batch holds every record (not only changes).
    pub complete: bool,
}

/// A node to probe, as the prober saw it when the round started.
#[derive(Debug, Clone)]
pub struct ProbeVerdict {
    pub node: String,
    pub incarnation: i64,
    /// True when the probes say the node is down.
    pub down: bool,
    pub reason: String,
}

/// A node's place in the full set, as the judge evaluated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullMark {
    pub node: String,
    pub incarnation: i64,
    pub full: bool,
}

/// One process serving imroute, as it reports itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub id: String,
    pub addr: String,
    pub version: String,
    pub revision: String,
    pub started_at: String,
    pub last_seen: String,
}

/// What a listener heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stored state changed.
    Changes,
    /// Health changed.
    Health,
    /// The connection was lost and re-established: notifications may be lost.
    Reconnected,
}

/// Notifications from the store (PostgreSQL `LISTEN`). A hint, never the data.
#[async_trait]
pub trait Listener: Send {
    async fn recv(&mut self) -> Result<Signal, StoreError>;
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
    /// A patch could not be applied to the stored record.
    #[error("{0}")]
    Invalid(String),
    /// The database cannot be reached (connection refused or lost, timeout).
    #[error("the store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database answers but this operation waited too long (a lock held
    /// by a stuck session, a statement timeout): this request fails, the
    /// store is not taken for down.
    #[error("the store is busy")]
    Busy(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("storage failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A save of overrides that name a node deleted since they were validated.
pub(crate) fn gone_node(id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "node {id:?} named by the file was deleted meanwhile"
    ))
}

/// A save of overrides whose active strategy was deleted since.
pub(crate) fn gone_strategy(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "active_strategy: strategy {name:?} was deleted meanwhile"
    ))
}

impl StoreError {
    pub fn internal(msg: impl Into<String>) -> Self {
        StoreError::Internal(msg.into().into())
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        // All pooled connections busy: this request waited too long, but
        // the database may well be up (the change feed's own check, on a
        // connection of its own, decides that).
        if matches!(err, sqlx::Error::PoolTimedOut) {
            return StoreError::Busy(Box::new(err));
        }
        if let sqlx::Error::Database(db) = &err {
            // 57014: statement timeout; 55P03: lock timeout.
            if db.code().is_some_and(|c| c == "57014" || c == "55P03") {
                return StoreError::Busy(Box::new(err));
            }
        }
        let unavailable = match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Class 08: connection exception; 57P01-57P03: the server is
                // shutting down or not yet accepting; 53300: too many
                // connections; 25P03: idle-in-transaction timeout.
                code.starts_with("08")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "25P03")
            }),
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(Box::new(err))
        } else {
            StoreError::Internal(Box::new(err))
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            other => StoreError::Internal(Box::new(other)),
        }
    }
}

/// A patch applied to a stored node inside the store's transaction, so the
/// version check and the read-modify-write see the same row.
pub type NodePatchFn<'a> = &'a (dyn Fn(&NodeSpec) -> Result<NodeSpec, String> + Send + Sync);

/// Durable storage of nodes, strategies, the active strategy, the audit trail,
/// and (for backends shared by several processes) health and the replicas.
/// Every write is one transaction that bumps the change counter and appends
/// its audit row.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// How long one operation may take before the caller gives up on it.
    fn op_timeout(&self) -> Duration;

    /// Everything, in one snapshot.
    async fn load(&self) -> Result<Stored, StoreError>;

    /// The change counter (the periodic check of the change feed).
    async fn head(&self) -> Result<i64, StoreError>;

    /// What changed after change number `after`.
    async fn changes_since(&self, after: i64) -> Result<Changes, StoreError>;

    /// Creates a node; `Conflict` when the id exists.
    async fn create_node(
        &self,
        spec: &NodeSpec,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError>;

    /// Creates or replaces a node; `true` when it was created. `expected`, when
    /// given, must equal the stored version (and a missing node has none).
    async fn put_node(
        &self,
        spec: &NodeSpec,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(Written<NodeRecord>, bool), StoreError>;

    /// Read-modify-write of a stored node in one transaction.
    async fn patch_node(
        &self,
        id: &str,
        expected: Option<i64>,
        patch: NodePatchFn<'_>,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError>;

    /// Deletes a node and its health, returning what was deleted. `Conflict`
    /// when another live replica's overrides file refers to it.
    async fn delete_node(
        &self,
        id: &str,
        expected: Option<i64>,
        replica: &str,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError>;

    /// Creates or replaces a strategy; `true` when it was created.
    async fn put_strategy(
        &self,
        name: &str,
        kind: &str,
        params: &Value,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(Written<StrategyRecord>, bool), StoreError>;

    /// Deletes a strategy; `Conflict` when it is the active one.
    async fn delete_strategy(
        &self,
        name: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<Written<StrategyRecord>, StoreError>;

    /// Makes a stored strategy the active one; `NotFound` when it is not stored.
    async fn set_active_strategy(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<Written<String>, StoreError>;

    /// Audit rows with `id < before`, newest first.
    async fn audit_page(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Keeps a replica's last good overrides file and appends the audit row
    /// of the reload (when the content changed), in one transaction.
    async fn save_overrides(
        &self,
        replica: &str,
        saved: &SavedOverrides,
        previous_revision: Option<&str>,
        actor: &Actor,
    ) -> Result<(), StoreError>;

    /// A replica's last good overrides file.
    async fn load_overrides(&self, replica: &str) -> Result<Option<SavedOverrides>, StoreError>;

    // ----- health -----

    /// Records a heartbeat of a stored node, or of a node that exists only in
    /// this replica's overrides file (`file_only`, incarnation 0).
    /// `NotFound` when the node is not stored. Also tells whether the node
    /// came back (its first heartbeat, or the first after expiry).
    async fn heartbeat(
        &self,
        node: &str,
        file_only: bool,
        connections: u64,
    ) -> Result<(HealthRecord, bool), StoreError>;

    /// Health records written after `cursor` (0: all of them).
    async fn health_since(&self, cursor: i64) -> Result<HealthBatch, StoreError>;

    /// Tries to become, or checks that this process still is, the one that
    /// judges heartbeat expiry and runs probes. Cheap; called every tick.
    async fn lead(&self) -> Result<bool, StoreError>;

    /// Marks nodes whose heartbeats stopped more than `ttl` ago (on the
    /// store's clock; the count restarts when leadership is taken, so an
    /// outage never expires anyone). Leader only.
    async fn expire(&self, ttl: Duration) -> Result<Vec<HealthRecord>, StoreError>;

    /// Stores probe verdicts that changed. Leader only. Verdicts for nodes
    /// deleted (or re-created) since the round started are dropped.
    async fn set_probe_verdicts(
        &self,
        verdicts: &[ProbeVerdict],
    ) -> Result<Vec<HealthRecord>, StoreError>;

    /// Stores changes of the full set (the `bounded` kind). Leader only.
    /// Marks for nodes deleted (or re-created) since the evaluation are
    /// dropped.
    async fn set_full(&self, marks: &[FullMark]) -> Result<Vec<HealthRecord>, StoreError>;

    // ----- replicas -----

    /// Reports this replica (every second).
    async fn report_replica(&self, me: &ReplicaInfo) -> Result<(), StoreError>;

    /// Replicas that reported within the last 5 seconds, in id order.
    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError>;

    /// Removes this replica from the registry (clean shutdown).
    async fn leave(&self, replica: &str) -> Result<(), StoreError>;

    /// A listener for change notifications, for backends shared by several
    /// processes; `None` when there is nothing to listen to.
    async fn listen(&self) -> Result<Option<Box<dyn Listener>>, StoreError>;
}

/// Opens the store that `database_url` names: `sqlite:` (the default) or
/// `postgres://` / `postgresql://`.
pub async fn open(database_url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if is_postgres_url(database_url) {
        Ok(std::sync::Arc::new(
            PostgresStore::open(database_url).await?,
        ))
    } else {
        Ok(std::sync::Arc::new(SqliteStore::open(database_url).await?))
    }
}

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Current time as stored and shown: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now())
}

pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The audit form of a node: its spec plus its version.
pub fn node_json(record: &NodeRecord) -> Value {
    let mut v = serde_json::to_value(&record.spec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("version".into(), record.version.into());
    }
    v
}

/// The audit form of a strategy.
pub fn strategy_json(record: &StrategyRecord) -> Value {
    serde_json::json!({
        "name": record.name, "kind": record.kind, "params": record.params,
        "version": record.version,
    })
}

/// `expected` (from `If-Match`) against the stored version.
pub fn check_version(expected: Option<i64>, current: Option<i64>) -> Result<(), StoreError> {
    match (expected, current) {
        (Some(e), Some(c)) if e != c => Err(StoreError::VersionMismatch { current: c }),
        (Some(_), None) => Err(StoreError::VersionMismatch { current: 0 }),
        _ => Ok(()),
    }
}

/// Changes older than this many change numbers are pruned; a process further
/// behind reloads everything.
pub const CHANGES_KEPT: i64 = 10_000;
