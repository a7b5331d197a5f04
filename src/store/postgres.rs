//! The PostgreSQL backend, for several replicas sharing one database.
//!
//! - Writes bump the change counter first (`cluster_state.change_seq`); its
//!   row lock serialises writers, so change numbers follow commit order, and
//!   version checks made after it see every earlier commit. Each write sends
//!   `NOTIFY imroute_changes` (delivered at commit).
//! - Health facts live in `node_health`; every write stamps the writing
//!   transaction id, so `health_since` can return what changed since a
//!   snapshot without missing transactions that commit out of order.
//! - One replica at a time holds an advisory lock on a dedicated connection
//!   and judges heartbeat expiry (on the database's clock) and runs probes.
//! - Every operation is bounded: pool acquire and statement timeouts here,
//!   and an overall timeout in the control plane, so an unreachable database
//!   is reported within seconds, never waited for.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
    Connection, PgConnection, PgPool, Row,
};

use super::{
    audit_value, check_version, gone_node, gone_strategy, node_json, now_rfc3339, rfc3339, rows,
    strategy_json, Actor, AuditEntry, Change, Changes, FullMark, HealthBatch, HealthRecord,
    Listener, NodePatchFn, ProbeVerdict, ReplicaInfo, SavedOverrides, Signal, Store, StoreError,
    Stored, Written, CHANGES_KEPT,
};
use crate::model::{NodeRecord, NodeSpec, StrategyRecord};

const NODE_COLUMNS: &str = "id, region, weight, state, ext_tcp_addr, ext_ws_addr, ext_wss_addr, \
     int_tcp_addr, int_ws_addr, int_wss_addr, labels, version, created_at, updated_at, seq, created_seq";

const STRATEGY_COLUMNS: &str = "name, kind, params, version, created_at, updated_at, seq";

const HEALTH_COLUMNS: &str = "node_id, incarnation, version, connections, heartbeat_at, \
     heartbeat_since, expired_at, probe_down, probe_since, probe_reason, is_full, created_at";

/// The advisory lock of the replica that judges expiry and runs probes (the
/// two-key form, which never collides with sqlx's migration lock).
const LEADER_LOCK: (i32, i32) = (0x696d_726f, 1);

pub const CHANGES_CHANNEL: &str = "imroute_changes";
pub const HEALTH_CHANNEL: &str = "imroute_health";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const XID: &str = "pg_current_xact_id()::text::bigint";

struct Leader {
    conn: PgConnection,
    held: bool,
    /// The database's clock at the last successful query on `conn`.
    last_ok: DateTime<Utc>,
    /// A query was started and not finished (its caller was cancelled).
    in_flight: bool,
    /// When leadership was taken (database clock): expiry counts from no
    /// earlier than this, so nobody expires because of an outage.
    resume: DateTime<Utc>,
}

pub struct PostgresStore {
    pool: PgPool,
    /// For heartbeats and probe verdicts: soft state, committed without
    /// waiting for the disk (a crash of the database loses at most the last
    /// fraction of a second of them; the next heartbeat restores it).
    soft: PgPool,
    /// One connection for the change counter check, which tells whether
    /// the database answers: never queued behind busy requests.
    check: PgPool,
    options: PgConnectOptions,
    leader: tokio::sync::Mutex<Option<Leader>>,
    migrated: tokio::sync::OnceCell<()>,
}

/// Bound on connecting, acquiring a pooled connection and each statement.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const STATEMENT_TIMEOUT_MS: &str = "3500";

impl PostgresStore {
    /// Connects and migrates. Several replicas starting at once on an empty
    /// database are serialised by the migrator's advisory lock.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("imroute")
            .options([
                ("statement_timeout", STATEMENT_TIMEOUT_MS),
                ("lock_timeout", STATEMENT_TIMEOUT_MS),
                // A session stuck in a transaction (its replica paused or cut
                // off mid-write) must not hold the change counter's lock.
                ("idle_in_transaction_session_timeout", "5000"),
                // Let the server notice a vanished replica (and free its
                // advisory lock) within seconds, not hours.
                ("tcp_keepalives_idle", "5"),
                ("tcp_keepalives_interval", "2"),
                ("tcp_keepalives_count", "3"),
            ]);
        // Connections are made on demand: a replica that starts while the
        // database is unreachable serves (not ready) and catches up later.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options.clone());
        let soft = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let check = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options.clone());
        let store = Self {
            pool,
            soft,
            check,
            options,
            leader: tokio::sync::Mutex::new(None),
            migrated: tokio::sync::OnceCell::new(),
        };
        match store.migrated().await {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => {
                tracing::error!(error = %e, "PostgreSQL is unreachable; will migrate once it answers");
            }
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// Runs the migrations once. Several replicas starting at once on an
    /// empty database are serialised by the migrator's advisory lock.
    async fn migrated(&self) -> Result<(), StoreError> {
        self.migrated
            .get_or_try_init(|| async {
                // Migrations may wait on another replica's: no statement or
                // lock timeout for them, only an overall one.
                let options = self
                    .options
                    .clone()
                    .options([("statement_timeout", "0"), ("lock_timeout", "0")]);
                let mut conn =
                    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                        .await
                        .map_err(|_| {
                            StoreError::Unavailable("connecting to PostgreSQL timed out".into())
                        })??;
                let run = MIGRATOR.run_direct(&mut conn);
                tokio::time::timeout(Duration::from_secs(30), run)
                    .await
                    .map_err(|_| StoreError::Unavailable("migrations timed out".into()))??;
                let _ = conn.close().await;
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Connects without migrating (for `check-config`).
    pub async fn connect_only(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        Ok(Self {
            soft: pool.clone(),
            check: pool.clone(),
            pool,
            options,
            leader: tokio::sync::Mutex::new(None),
            migrated: tokio::sync::OnceCell::new_with(Some(())),
        })
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    async fn notify(&self, channel: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&self.soft)
            .await?;
        Ok(())
    }
}

fn health_from_row(row: &PgRow) -> Result<HealthRecord, StoreError> {
    let time = |col: &str| -> Result<Option<String>, StoreError> {
        Ok(row.try_get::<Option<DateTime<Utc>>, _>(col)?.map(rfc3339))
    };
    let connections: Option<i64> = row.try_get("connections")?;
    Ok(HealthRecord {
        node: row.try_get("node_id")?,
        incarnation: row.try_get("incarnation")?,
        version: row.try_get("version")?,
        connections: connections.map(|c| u64::try_from(c).unwrap_or(0)),
        heartbeat_at: time("heartbeat_at")?,
        heartbeat_since: time("heartbeat_since")?,
        expired_at: time("expired_at")?,
        probe_down: row.try_get("probe_down")?,
        probe_since: time("probe_since")?,
        probe_reason: row.try_get("probe_reason")?,
        full: row.try_get("is_full")?,
        created_at: time("created_at")?.unwrap_or_default(),
    })
}

async fn get_node(conn: &mut PgConnection, id: &str) -> Result<Option<NodeRecord>, StoreError> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::node).transpose()
}

async fn get_strategy(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<StrategyRecord>, StoreError> {
    let sql = format!("SELECT {STRATEGY_COLUMNS} FROM strategies WHERE name = $1");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::strategy).transpose()
}

async fn active_strategy(conn: &mut PgConnection) -> Result<(String, i64), StoreError> {
    let row = sqlx::query("SELECT active_strategy, active_seq FROM cluster_state WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Bumps the change counter (taking its row lock until commit), records what
/// changed and queues the notification; returns the change number.
async fn bump(conn: &mut PgConnection, kind: &str, key: &str) -> Result<i64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE cluster_state SET change_seq = change_seq + 1 WHERE id = 1 RETURNING change_seq",
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO changes (seq, kind, key) VALUES ($1, $2, $3)")
        .bind(seq)
        .bind(kind)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM changes WHERE seq <= $1")
        .bind(seq - CHANGES_KEPT)
        .execute(&mut *conn)
        .await?;
    // No payload: identical notifications of one transaction, or of several
    // before a listener reads them, fold into one wake-up.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANGES_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

/// The version a new entity starts from: one past the last version of an
/// earlier entity of the same name, so `If-Match` with a version of a
/// deleted node never matches the node created after it under its id.
async fn first_version(conn: &mut PgConnection, kind: &str, key: &str) -> Result<i64, StoreError> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT version FROM retired WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(last.unwrap_or(0) + 1)
}

/// Remembers the last version of a deleted entity (for 30 days).
async fn retire(
    conn: &mut PgConnection,
    kind: &str,
    key: &str,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO retired (kind, key, version, retired_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (kind, key) DO UPDATE SET version = EXCLUDED.version, retired_at = EXCLUDED.retired_at",
    )
    .bind(kind)
    .bind(key)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM retired WHERE retired_at < now() - interval '30 days'")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_audit(
    conn: &mut PgConnection,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
    actor: &Actor,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, action, target, before, after, request_id, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_rfc3339())
    .bind(action)
    .bind(target)
    .bind(audit_value(before))
    .bind(audit_value(after))
    .bind(&actor.request_id)
    .bind(actor.kind.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_node(
    conn: &mut PgConnection,
    spec: &NodeSpec,
    previous: Option<&NodeRecord>,
) -> Result<NodeRecord, StoreError> {
    let seq = bump(conn, "node", &spec.id).await?;
    let now = now_rfc3339();
    let version = match previous {
        Some(p) => p.version + 1,
        None => first_version(conn, "node", &spec.id).await?,
    };
    let record = NodeRecord {
        spec: spec.clone(),
        version,
        created_at: previous.map_or_else(|| now.clone(), |p| p.created_at.clone()),
        updated_at: now,
        seq,
        created_seq: previous.map_or(seq, |p| p.created_seq),
    };
    let labels =
        serde_json::to_string(&spec.labels).map_err(|e| StoreError::Internal(Box::new(e)))?;
    sqlx::query(&format!(
        "INSERT INTO nodes ({NODE_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region, weight = EXCLUDED.weight, \
         state = EXCLUDED.state, ext_tcp_addr = EXCLUDED.ext_tcp_addr, \
         ext_ws_addr = EXCLUDED.ext_ws_addr, ext_wss_addr = EXCLUDED.ext_wss_addr, \
         int_tcp_addr = EXCLUDED.int_tcp_addr, int_ws_addr = EXCLUDED.int_ws_addr, \
         int_wss_addr = EXCLUDED.int_wss_addr, labels = EXCLUDED.labels, \
         version = EXCLUDED.version, created_at = EXCLUDED.created_at, \
         updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq, created_seq = EXCLUDED.created_seq"
    ))
    .bind(&spec.id)
    .bind(&spec.region)
    .bind(i64::from(spec.weight))
    .bind(spec.state.as_str())
    .bind(&spec.external.tcp_addr)
    .bind(&spec.external.ws_addr)
    .bind(&spec.external.wss_addr)
    .bind(&spec.intranet.tcp_addr)
    .bind(&spec.intranet.ws_addr)
    .bind(&spec.intranet.wss_addr)
    .bind(labels)
    .bind(record.version)
    .bind(&record.created_at)
    .bind(&record.updated_at)
    .bind(record.seq)
    .bind(record.created_seq)
    .execute(&mut *conn)
    .await?;
    if previous.is_none() {
        // A node created under the id of a deleted one starts clean.
        sqlx::query("DELETE FROM node_health WHERE node_id = $1")
            .bind(&spec.id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(record)
}

async fn load_all(conn: &mut PgConnection) -> Result<Stored, StoreError> {
    let head: i64 = sqlx::query_scalar("SELECT change_seq FROM cluster_state WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id");
    let nodes = sqlx::query(&sql)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(rows::node)
        .collect::<Result<_, _>>()?;
    let sql = format!("SELECT {STRATEGY_COLUMNS} FROM strategies ORDER BY name");
    let strategies = sqlx::query(&sql)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(rows::strategy)
        .collect::<Result<_, _>>()?;
    let (active_strategy, active_seq) = active_strategy(conn).await?;
    Ok(Stored {
        nodes,
        strategies,
        active_strategy,
        active_seq,
        head,
    })
}

/// Upserts a health record for a node that must exist with the given
/// incarnation (`$2`; -1: any) or, when `stored` is false, a node that exists
/// only in an overrides file. A record left by an earlier incarnation is
/// reset. `set` lists the new facts as (column, value on insert, expression
/// on update); an update expression may read the old row as `h` and the word
/// `fresh` (true when the record was reset).
fn health_upsert(stored: bool, set: &[(&str, &str, &str)]) -> String {
    let source = if stored {
        "SELECT id, created_seq FROM nodes WHERE id = $1 \
         AND ($2::bigint < 0 OR created_seq = $2::bigint) FOR KEY SHARE"
    } else {
        "SELECT $1::text AS id, 0::bigint AS created_seq WHERE $2::bigint >= -1"
    };
    let fresh = "(h.incarnation <> EXCLUDED.incarnation)";
    let resets: [(&str, &str); 9] = [
        ("heartbeat_at", "NULL"),
        ("heartbeat_since", "NULL"),
        ("expired_at", "NULL"),
        ("connections", "NULL"),
        ("probe_down", "NULL"),
        ("probe_since", "NULL"),
        ("probe_reason", "''"),
        ("is_full", "false"),
        ("created_at", "now()"),
    ];
    let mut assignments: Vec<String> = resets
        .iter()
        .filter(|(col, _)| !set.iter().any(|(c, _, _)| c == col))
        .map(|(col, reset)| format!("{col} = CASE WHEN {fresh} THEN {reset} ELSE h.{col} END"))
        .collect();
    assignments.extend(
        set.iter()
            .map(|(col, _, update)| format!("{col} = {}", update.replace("fresh", fresh))),
    );
    let cols: Vec<&str> = set.iter().map(|(c, _, _)| *c).collect();
    let vals: Vec<&str> = set.iter().map(|(_, v, _)| *v).collect();
    format!(
        "WITH n AS ({source}) \
         INSERT INTO node_health AS h (node_id, incarnation, xid, {cols}) \
         SELECT n.id, n.created_seq, {XID}, {vals} FROM n \
         ON CONFLICT (node_id) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
           xid = EXCLUDED.xid, version = h.version + 1, {assignments} \
         RETURNING {HEALTH_COLUMNS}, \
           coalesce(heartbeat_since = heartbeat_at, false) AS revived",
        cols = cols.join(", "),
        vals = vals.join(", "),
        assignments = assignments.join(", "),
    )
}

struct PgSignals(PgListener);

#[async_trait]
impl Listener for PgSignals {
    async fn recv(&mut self) -> Result<Signal, StoreError> {
        match self.0.try_recv().await? {
            Some(n) if n.channel() == HEALTH_CHANNEL => Ok(Signal::Health),
            Some(_) => Ok(Signal::Changes),
            None => Ok(Signal::Reconnected),
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn op_timeout(&self) -> Duration {
        Duration::from_secs(4)
    }

    async fn load(&self) -> Result<Stored, StoreError> {
        self.migrated().await?;
        let mut tx = self.begin_read().await?;
        let stored = load_all(&mut tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn head(&self) -> Result<i64, StoreError> {
        self.migrated().await?;
        sqlx::query_scalar("SELECT change_seq FROM cluster_state WHERE id = 1")
            .fetch_one(&self.check)
            .await
            .map_err(|e| match e {
                // Its own connection timing out: the database does not answer.
                sqlx::Error::PoolTimedOut => StoreError::Unavailable(Box::new(e)),
                other => other.into(),
            })
    }

    async fn changes_since(&self, after: i64) -> Result<Changes, StoreError> {
        let mut tx = self.begin_read().await?;
        let head: i64 = sqlx::query_scalar("SELECT change_seq FROM cluster_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if head == after {
            tx.commit().await?;
            return Ok(Changes {
                head,
                ..Changes::default()
            });
        }
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM changes")
            .fetch_one(&mut *tx)
            .await?;
        if head < after || oldest.is_none_or(|o| o > after + 1) {
            let full = load_all(&mut tx).await?;
            tx.commit().await?;
            return Ok(Changes {
                head: full.head,
                full: Some(full),
                ..Changes::default()
            });
        }
        let rows = sqlx::query(
            "SELECT kind, key, MAX(seq) AS seq FROM changes WHERE seq > $1 AND seq <= $2 \
             GROUP BY kind, key",
        )
        .bind(after)
        .bind(head)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Changes {
            head,
            ..Changes::default()
        };
        let mut node_keys: Vec<(String, i64)> = Vec::new();
        let mut strategy_keys: Vec<(String, i64)> = Vec::new();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let key: String = row.try_get("key")?;
            let seq: i64 = row.try_get("seq")?;
            match kind.as_str() {
                "node" => node_keys.push((key, seq)),
                "strategy" => strategy_keys.push((key, seq)),
                "active" => {
                    let (name, _) = active_strategy(&mut tx).await?;
                    out.active_strategy = Some(Change {
                        key,
                        seq,
                        value: Some(name),
                    });
                }
                other => return Err(StoreError::internal(format!("unknown change kind {other}"))),
            }
        }
        if !node_keys.is_empty() {
            let ids: Vec<String> = node_keys.iter().map(|(k, _)| k.clone()).collect();
            let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ANY($1)");
            let mut found: BTreeMap<String, NodeRecord> = BTreeMap::new();
            for row in sqlx::query(&sql).bind(&ids).fetch_all(&mut *tx).await? {
                let n = rows::node(&row)?;
                found.insert(n.spec.id.clone(), n);
            }
            out.nodes = node_keys
                .into_iter()
                .map(|(key, seq)| Change {
                    value: found.remove(&key),
                    key,
                    seq,
                })
                .collect();
        }
        if !strategy_keys.is_empty() {
            let names: Vec<String> = strategy_keys.iter().map(|(k, _)| k.clone()).collect();
            let sql = format!("SELECT {STRATEGY_COLUMNS} FROM strategies WHERE name = ANY($1)");
            let mut found: BTreeMap<String, StrategyRecord> = BTreeMap::new();
            for row in sqlx::query(&sql).bind(&names).fetch_all(&mut *tx).await? {
                let s = rows::strategy(&row)?;
                found.insert(s.name.clone(), s);
            }
            out.strategies = strategy_keys
                .into_iter()
                .map(|(key, seq)| Change {
                    value: found.remove(&key),
                    key,
                    seq,
                })
                .collect();
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn create_node(
        &self,
        spec: &NodeSpec,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Take the counter lock first: the existence check then sees every
        // earlier commit.
        let seq_probe = get_node_after_lock(&mut tx, &spec.id).await?;
        if seq_probe.is_some() {
            return Err(StoreError::Conflict(format!(
                "node {} already exists",
                spec.id
            )));
        }
        let record = write_node(&mut tx, spec, None).await?;
        insert_audit(
            &mut tx,
            "node.create",
            &spec.id,
            None,
            Some(node_json(&record)),
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok(Written {
            seq: record.seq,
            value: record,
        })
    }

    async fn put_node(
        &self,
        spec: &NodeSpec,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(Written<NodeRecord>, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let previous = get_node_after_lock(&mut tx, &spec.id).await?;
        check_version(expected, previous.as_ref().map(|p| p.version))?;
        let record = write_node(&mut tx, spec, previous.as_ref()).await?;
        insert_audit(
            &mut tx,
            "node.replace",
            &spec.id,
            previous.as_ref().map(node_json),
            Some(node_json(&record)),
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok((
            Written {
                seq: record.seq,
                value: record,
            },
            previous.is_none(),
        ))
    }

    async fn patch_node(
        &self,
        id: &str,
        expected: Option<i64>,
        patch: NodePatchFn<'_>,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let previous = get_node_after_lock(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        check_version(expected, Some(previous.version))?;
        let spec = patch(&previous.spec).map_err(StoreError::Invalid)?;
        let record = write_node(&mut tx, &spec, Some(&previous)).await?;
        insert_audit(
            &mut tx,
            "node.update",
            id,
            Some(node_json(&previous)),
            Some(node_json(&record)),
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok(Written {
            seq: record.seq,
            value: record,
        })
    }

    async fn delete_node(
        &self,
        id: &str,
        expected: Option<i64>,
        replica: &str,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let previous = get_node_after_lock(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        check_version(expected, Some(previous.version))?;
        let referenced: Vec<String> = sqlx::query_scalar(
            "SELECT o.replica_id FROM replica_overrides o LEFT JOIN replicas r ON r.id = o.replica_id \
             WHERE o.replica_id <> $2 \
               AND (r.last_seen > now() - interval '5 seconds' OR o.saved_at > now() - interval '5 seconds') \
               AND o.refs ? $1 ORDER BY o.replica_id",
        )
        .bind(id)
        .bind(replica)
        .fetch_all(&mut *tx)
        .await?;
        if !referenced.is_empty() {
            return Err(StoreError::Conflict(format!(
                "node {id} is referenced by the overrides file of replica {}; remove it there first",
                referenced.join(", ")
            )));
        }
        let seq = bump(&mut tx, "node", id).await?;
        retire(&mut tx, "node", id, previous.version).await?;
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM node_health WHERE node_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            "node.delete",
            id,
            Some(node_json(&previous)),
            None,
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok(Written {
            value: previous,
            seq,
        })
    }

    async fn put_strategy(
        &self,
        name: &str,
        kind: &str,
        params: &Value,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(Written<StrategyRecord>, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq = bump(&mut tx, "strategy", name).await?;
        let previous = get_strategy(&mut tx, name).await?;
        check_version(expected, previous.as_ref().map(|p| p.version))?;
        let now = now_rfc3339();
        let version = match &previous {
            Some(p) => p.version + 1,
            None => first_version(&mut tx, "strategy", name).await?,
        };
        let record = StrategyRecord {
            name: name.into(),
            kind: kind.into(),
            params: params.clone(),
            version,
            created_at: previous
                .as_ref()
                .map_or_else(|| now.clone(), |p| p.created_at.clone()),
            updated_at: now,
            seq,
        };
        sqlx::query(&format!(
            "INSERT INTO strategies ({STRATEGY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, params = EXCLUDED.params, \
             version = EXCLUDED.version, created_at = EXCLUDED.created_at, \
             updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq"
        ))
        .bind(name)
        .bind(kind)
        .bind(params.to_string())
        .bind(record.version)
        .bind(&record.created_at)
        .bind(&record.updated_at)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            "strategy.put",
            name,
            previous.as_ref().map(strategy_json),
            Some(strategy_json(&record)),
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok((Written { value: record, seq }, previous.is_none()))
    }

    async fn delete_strategy(
        &self,
        name: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<Written<StrategyRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq = bump(&mut tx, "strategy", name).await?;
        let previous = get_strategy(&mut tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("strategy {name}")))?;
        check_version(expected, Some(previous.version))?;
        if active_strategy(&mut tx).await?.0 == name {
            return Err(StoreError::Conflict(format!(
                "strategy {name} is the active strategy; switch to another one first"
            )));
        }
        let activating: Vec<String> = sqlx::query_scalar(
            "SELECT o.replica_id FROM replica_overrides o LEFT JOIN replicas r ON r.id = o.replica_id \
             WHERE (r.last_seen > now() - interval '5 seconds' OR o.saved_at > now() - interval '5 seconds') \
               AND o.active_strategy = $1 ORDER BY o.replica_id",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !activating.is_empty() {
            return Err(StoreError::Conflict(format!(
                "strategy {name} is made active by the overrides file of replica {}; change it there first",
                activating.join(", ")
            )));
        }
        retire(&mut tx, "strategy", name, previous.version).await?;
        sqlx::query("DELETE FROM strategies WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            "strategy.delete",
            name,
            Some(strategy_json(&previous)),
            None,
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok(Written {
            value: previous,
            seq,
        })
    }

    async fn set_active_strategy(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<Written<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq = bump(&mut tx, "active", "").await?;
        if get_strategy(&mut tx, name).await?.is_none() {
            return Err(StoreError::NotFound(format!("strategy {name}")));
        }
        let (before, _) = active_strategy(&mut tx).await?;
        sqlx::query("UPDATE cluster_state SET active_strategy = $1, active_seq = $2 WHERE id = 1")
            .bind(name)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            "routing.switch",
            "active_strategy",
            Some(Value::String(before)),
            Some(Value::String(name.into())),
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok(Written {
            value: name.into(),
            seq,
        })
    }

    async fn audit_page(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, action, target, before, after, request_id, actor FROM audit_log \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit).collect()
    }

    async fn save_overrides(
        &self,
        replica: &str,
        saved: &SavedOverrides,
        previous_revision: Option<&str>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let refs =
            serde_json::to_value(&saved.refs).map_err(|e| StoreError::Internal(Box::new(e)))?;
        // The (possibly large) row first, the counter lock last: admin writes
        // wait for this save only while it checks its references.
        sqlx::query(
            "INSERT INTO replica_overrides \
             (replica_id, content, revision, refs, loaded_at, active_strategy, saved_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (replica_id) DO UPDATE SET \
             content = EXCLUDED.content, revision = EXCLUDED.revision, refs = EXCLUDED.refs, \
             active_strategy = EXCLUDED.active_strategy, \
             loaded_at = EXCLUDED.loaded_at, saved_at = now()",
        )
        .bind(replica)
        .bind(&saved.content)
        .bind(&saved.revision)
        .bind(refs)
        .bind(&saved.loaded_at)
        .bind(&saved.active_strategy)
        .execute(&mut *tx)
        .await?;
        if previous_revision != Some(saved.revision.as_str()) {
            insert_audit(
                &mut tx,
                "overrides.reload",
                replica,
                previous_revision
                    .filter(|r| !r.is_empty())
                    .map(|r| Value::String(r.into())),
                Some(Value::String(saved.revision.clone())),
                actor,
            )
            .await?;
        }
        // The counter lock orders this save with every delete, which takes it
        // before reading the files' references: a delete that committed
        // first is seen here (the node is gone: refused); one that comes
        // later waits for this commit and then sees these references.
        sqlx::query("SELECT change_seq FROM cluster_state WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        if !saved.stored_refs.is_empty() {
            let present: Vec<String> =
                sqlx::query_scalar("SELECT id FROM nodes WHERE id = ANY($1)")
                    .bind(&saved.stored_refs)
                    .fetch_all(&mut *tx)
                    .await?;
            let present: std::collections::HashSet<&str> =
                present.iter().map(String::as_str).collect();
            if let Some(id) = saved
                .stored_refs
                .iter()
                .find(|id| !present.contains(id.as_str()))
            {
                return Err(gone_node(id));
            }
        }
        if let Some(name) = &saved.active_strategy {
            if get_strategy(&mut tx, name).await?.is_none() {
                return Err(gone_strategy(name));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_overrides(&self, replica: &str) -> Result<Option<SavedOverrides>, StoreError> {
        let row = sqlx::query(
            "SELECT content, revision, refs, loaded_at, active_strategy FROM replica_overrides \
             WHERE replica_id = $1",
        )
        .bind(replica)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let refs: Value = row.try_get("refs")?;
            Ok(SavedOverrides {
                content: row.try_get("content")?,
                revision: row.try_get("revision")?,
                refs: serde_json::from_value(refs).unwrap_or_default(),
                stored_refs: Vec::new(),
                active_strategy: row.try_get("active_strategy")?,
                loaded_at: row.try_get("loaded_at")?,
            })
        })
        .transpose()
    }

    async fn heartbeat(
        &self,
        node: &str,
        file_only: bool,
        connections: u64,
    ) -> Result<(HealthRecord, bool), StoreError> {
        let upsert = health_upsert(
            !file_only,
            &[
                ("connections", "$3", "EXCLUDED.connections"),
                ("heartbeat_at", "now()", "now()"),
                (
                    "heartbeat_since",
                    "now()",
                    "CASE WHEN fresh OR h.heartbeat_at IS NULL OR h.expired_at IS NOT NULL \
                     THEN now() ELSE h.heartbeat_since END",
                ),
                ("expired_at", "NULL", "NULL"),
            ],
        );
        let row = sqlx::query(&upsert)
            .bind(node)
            .bind(-1i64)
            .bind(i64::try_from(connections).unwrap_or(i64::MAX))
            .fetch_optional(&self.soft)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {node}")))?;
        let record = health_from_row(&row)?;
        let revived: bool = row.try_get("revived")?;
        if revived {
            self.notify(HEALTH_CHANNEL).await?;
        }
        Ok((record, revived))
    }

    async fn health_since(&self, cursor: i64) -> Result<HealthBatch, StoreError> {
        let mut tx = self.begin_read().await?;
        let next: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(&format!(
            "SELECT {HEALTH_COLUMNS} FROM node_health WHERE xid >= $1"
        ))
        .bind(cursor)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(HealthBatch {
            records: rows.iter().map(health_from_row).collect::<Result<_, _>>()?,
            cursor: next,
            complete: cursor == 0,
        })
    }

    async fn lead(&self) -> Result<bool, StoreError> {
        let mut guard = self.leader.lock().await;
        if guard.as_ref().is_some_and(|l| l.in_flight) {
            // A call was dropped mid-query (a timeout): the connection's
            // state is unknown. Closing it frees the lock for whoever is next.
            *guard = None;
        }
        if let Some(leader) = guard.as_mut() {
            leader.in_flight = true;
            let check = if leader.held {
                renew(&mut leader.conn).await.map(Some)
            } else {
                try_lock(&mut leader.conn).await
            };
            leader.in_flight = false;
            match check {
                Ok(Some(now)) => {
                    if !leader.held || now - leader.last_ok > STALL {
                        // Taken now, or this replica could not reach the
                        // database for a while (heartbeats could not be
                        // stored either): expiry counts from now.
                        leader.resume = now;
                    }
                    leader.held = true;
                    leader.last_ok = now;
                    return Ok(true);
                }
                Ok(None) => return Ok(false),
                Err(e) => {
                    // The connection (and with it the lock) is gone.
                    *guard = None;
                    return Err(e.into());
                }
            }
        }
        let mut conn =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| {
                    StoreError::Unavailable("connecting to PostgreSQL timed out".into())
                })??;
        let taken = try_lock(&mut conn).await?;
        let now = taken.unwrap_or_else(Utc::now);
        *guard = Some(Leader {
            conn,
            held: taken.is_some(),
            resume: now,
            last_ok: now,
            in_flight: false,
        });
        Ok(taken.is_some())
    }

    async fn expire(&self, ttl: Duration) -> Result<Vec<HealthRecord>, StoreError> {
        let mut guard = self.leader.lock().await;
        let Some(leader) = guard.as_mut().filter(|l| l.held && !l.in_flight) else {
            return Ok(Vec::new());
        };
        // A stall (of the database, the network or this process) longer than
        // half the TTL (at least two of the judge's ticks) restarts the count: heartbeats could not be
        // stored meanwhile. The statement re-checks it, in case the stall
        // falls between this check and the update.
        let gap = chrono::Duration::from_std(
            (ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(2)),
        )
        .unwrap_or(STALL);
        leader.in_flight = true;
        let result = async {
            let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(&mut leader.conn)
                .await?;
            if now - leader.last_ok > gap {
                leader.resume = now;
            }
            leader.last_ok = now;
            sqlx::query(&format!(
                "UPDATE node_health SET expired_at = now(), version = version + 1, xid = {XID} \
                 WHERE expired_at IS NULL AND heartbeat_at IS NOT NULL \
                   AND greatest(heartbeat_at, $1) < now() - make_interval(secs => $2) \
                   AND now() - $3 < make_interval(secs => $4) \
                 RETURNING {HEALTH_COLUMNS}"
            ))
            .bind(leader.resume)
            .bind(ttl.as_secs_f64())
            .bind(now)
            .bind(gap.num_milliseconds() as f64 / 1000.0)
            .fetch_all(&mut leader.conn)
            .await
        }
        .await;
        leader.in_flight = false;
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                *guard = None;
                return Err(e.into());
            }
        };
        drop(guard);
        let records = rows
            .iter()
            .map(health_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if !records.is_empty() {
            self.notify(HEALTH_CHANNEL).await?;
        }
        Ok(records)
    }

    async fn set_probe_verdicts(
        &self,
        verdicts: &[ProbeVerdict],
    ) -> Result<Vec<HealthRecord>, StoreError> {
        let mut out = Vec::new();
        for v in verdicts {
            let upsert = health_upsert(
                v.incarnation != 0,
                &[
                    (
                        "probe_since",
                        "now()",
                        "CASE WHEN fresh OR h.probe_down IS DISTINCT FROM EXCLUDED.probe_down \
                         THEN now() ELSE h.probe_since END",
                    ),
                    ("probe_down", "$3", "EXCLUDED.probe_down"),
                    ("probe_reason", "$4", "EXCLUDED.probe_reason"),
                ],
            );
            let row = sqlx::query(&upsert)
                .bind(&v.node)
                .bind(v.incarnation)
                .bind(v.down)
                .bind(&v.reason)
                .fetch_optional(&self.soft)
                .await?;
            if let Some(row) = row {
                out.push(health_from_row(&row)?);
            }
        }
        if !out.is_empty() {
            self.notify(HEALTH_CHANNEL).await?;
        }
        Ok(out)
    }

    async fn set_full(&self, marks: &[FullMark]) -> Result<Vec<HealthRecord>, StoreError> {
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        // One statement: only records of the same incarnation whose flag
        // differs (a node that never reported has no record, and cannot be
        // full).
        let nodes: Vec<&str> = marks.iter().map(|m| m.node.as_str()).collect();
        let incarnations: Vec<i64> = marks.iter().map(|m| m.incarnation).collect();
        let full: Vec<bool> = marks.iter().map(|m| m.full).collect();
        let sql = format!(
            "UPDATE node_health AS h SET is_full = m.is_full, version = h.version + 1, xid = {XID} \
             FROM unnest($1::text[], $2::bigint[], $3::bool[]) AS m(node_id, incarnation, is_full) \
             WHERE h.node_id = m.node_id AND h.incarnation = m.incarnation \
               AND h.is_full IS DISTINCT FROM m.is_full \
             RETURNING h.node_id, h.incarnation, h.version, h.connections, h.heartbeat_at, \
               h.heartbeat_since, h.expired_at, h.probe_down, h.probe_since, h.probe_reason, \
               h.is_full, h.created_at"
        );
        let rows = sqlx::query(&sql)
            .bind(&nodes)
            .bind(&incarnations)
            .bind(&full)
            .fetch_all(&self.soft)
            .await?;
        let out = rows
            .iter()
            .map(health_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if !out.is_empty() {
            self.notify(HEALTH_CHANNEL).await?;
        }
        Ok(out)
    }

    async fn report_replica(&self, me: &ReplicaInfo) -> Result<(), StoreError> {
        let started = DateTime::parse_from_rfc3339(&me.started_at)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        sqlx::query(
            "INSERT INTO replicas (id, addr, version, revision, started_at, last_seen) \
             VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (id) DO UPDATE SET \
             addr = EXCLUDED.addr, version = EXCLUDED.version, revision = EXCLUDED.revision, \
             started_at = EXCLUDED.started_at, last_seen = now()",
        )
        .bind(&me.id)
        .bind(&me.addr)
        .bind(&me.version)
        .bind(&me.revision)
        .bind(started)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE last_seen < now() - interval '1 day'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, addr, version, revision, started_at, last_seen FROM replicas \
             WHERE last_seen > now() - interval '5 seconds' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReplicaInfo {
                    id: row.try_get("id")?,
                    addr: row.try_get("addr")?,
                    version: row.try_get("version")?,
                    revision: row.try_get("revision")?,
                    started_at: rfc3339(row.try_get("started_at")?),
                    last_seen: rfc3339(row.try_get("last_seen")?),
                })
            })
            .collect()
    }

    async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(replica)
            .execute(&self.pool)
            .await?;
        let mut guard = self.leader.lock().await;
        if let Some(leader) = guard.take() {
            let _ = leader.conn.close().await;
        }
        Ok(())
    }

    async fn listen(&self) -> Result<Option<Box<dyn Listener>>, StoreError> {
        // A pool of its own: a listener stuck on a dead connection must not
        // hold one of the pool's connections.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&own).await?;
        listener
            .listen_all([CHANGES_CHANNEL, HEALTH_CHANNEL])
            .await?;
        Ok(Some(Box::new(PgSignals(listener))))
    }
}

/// Takes the counter lock, then reads a node: what the caller then checks
/// cannot change before it commits.
async fn get_node_after_lock(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<NodeRecord>, StoreError> {
    sqlx::query("SELECT change_seq FROM cluster_state WHERE id = 1 FOR UPDATE")
        .execute(&mut *conn)
        .await?;
    get_node(conn, id).await
}

/// A silence of the leader's connection longer than this restarts the
/// expiry count (the judge checks in at least every second).
const STALL: chrono::Duration = chrono::Duration::seconds(2);

/// How long the leader's lease lasts without renewal. A leader that stops
/// renewing (frozen, or cut off from the database while its session lives
/// on) has its session terminated by the next replica that wants the lock.
const LEASE_SECS: f64 = 5.0;

/// Records (or renews) this session as the leader; the database's clock.
async fn renew(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO leader_lease (id, pid, renewed_at) VALUES (1, pg_backend_pid(), now()) \
         ON CONFLICT (id) DO UPDATE SET pid = EXCLUDED.pid, renewed_at = EXCLUDED.renewed_at \
         RETURNING renewed_at",
    )
    .fetch_one(&mut *conn)
    .await
}

/// `Some(now)` when the leader lock was taken on this connection. When it is
/// held by a session whose lease ran out, that session is terminated, so the
/// lock is free at the next try.
async fn try_lock(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LEADER_LOCK.0)
        .bind(LEADER_LOCK.1)
        .fetch_one(&mut *conn)
        .await?;
    if taken {
        return renew(conn).await.map(Some);
    }
    // Only the session that holds the lock (never an unrelated backend that
    // was given a dead leader's process id).
    let stale: Option<i32> = sqlx::query_scalar(
        "SELECT l.pid FROM leader_lease l JOIN pg_locks k ON k.pid = l.pid \
         WHERE l.id = 1 AND l.renewed_at < now() - make_interval(secs => $3) \
           AND k.locktype = 'advisory' AND k.granted \
           AND k.classid = $1::int::oid AND k.objid = $2::int::oid AND k.objsubid = 2",
    )
    .bind(LEADER_LOCK.0)
    .bind(LEADER_LOCK.1)
    .bind(LEASE_SECS)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(pid) = stale {
        tracing::warn!(
            pid,
            "The leader stopped renewing its lease; ending its session"
        );
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut *conn)
            .await?;
    }
    Ok(None)
}
