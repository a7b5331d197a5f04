//! The SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it is acknowledged), a generous busy timeout and `BEGIN IMMEDIATE`
//! write transactions, so concurrent writers wait instead of failing. Health
//! and the replica registry live in memory (one process).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Row, SqliteConnection, SqlitePool,
};

use super::{
    audit_value, check_version, gone_node, gone_strategy, memory::MemoryHealth, node_json,
    now_rfc3339, rows, strategy_json, Actor, AuditEntry, Change, Changes, FullMark, HealthBatch,
    HealthRecord, Listener, NodePatchFn, ProbeVerdict, ReplicaInfo, SavedOverrides, Store,
    StoreError, Stored, Written, CHANGES_KEPT,
};
use crate::model::{NodeRecord, NodeSpec, StrategyRecord};

pub struct SqliteStore {
    pool: SqlitePool,
    health: MemoryHealth,
    /// Orders heartbeats against node deletes, so a heartbeat that raced a
    /// delete cannot leave a record behind.
    health_gate: tokio::sync::Mutex<()>,
}

const NODE_COLUMNS: &str = "id, region, weight, state, ext_tcp_addr, ext_ws_addr, ext_wss_addr, \
     int_tcp_addr, int_ws_addr, int_wss_addr, labels, version, created_at, updated_at, seq, created_seq";

const STRATEGY_COLUMNS: &str = "name, kind, params, version, created_at, updated_at, seq";

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let file = options.get_filename();
        if let Some(dir) = file.parent() {
            if !dir.as_os_str().is_empty() && file.as_os_str() != ":memory:" {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Internal(Box::new(e)))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            health: MemoryHealth::default(),
            health_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Opens an existing database read-only, without migrating (for checks).
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .read_only(true)
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            health: MemoryHealth::default(),
            health_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// `PRAGMA synchronous` as every pooled connection sees it (2 = FULL).
    pub async fn synchronous(&self) -> Result<Vec<i64>, StoreError> {
        let mut conns = Vec::new();
        let mut out = Vec::new();
        for _ in 0..self.pool.options().get_max_connections() {
            let mut conn = self.pool.acquire().await?;
            out.push(
                sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut *conn)
                    .await?,
            );
            conns.push(conn);
        }
        Ok(out)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that
        // upgrades later can fail with SQLITE_BUSY without waiting.
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

async fn get_node(conn: &mut SqliteConnection, id: &str) -> Result<Option<NodeRecord>, StoreError> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::node).transpose()
}

async fn get_strategy(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<StrategyRecord>, StoreError> {
    let sql = format!("SELECT {STRATEGY_COLUMNS} FROM strategies WHERE name = ?");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::strategy).transpose()
}

async fn active_strategy(conn: &mut SqliteConnection) -> Result<(String, i64), StoreError> {
    let row = sqlx::query("SELECT active_strategy, active_seq FROM cluster_state WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Bumps the change counter and records what changed; returns the change number.
async fn bump(conn: &mut SqliteConnection, kind: &str, key: &str) -> Result<i64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE cluster_state SET change_seq = change_seq + 1 WHERE id = 1 RETURNING change_seq",
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO changes (seq, kind, key) VALUES (?, ?, ?)")
        .bind(seq)
        .bind(kind)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM changes WHERE seq <= ?")
        .bind(seq - CHANGES_KEPT)
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

/// The version a new entity starts from: one past the last version of an
/// earlier entity of the same name, so `If-Match` with a version of a
/// deleted node never matches the node created after it under its id.
async fn first_version(
    conn: &mut SqliteConnection,
    kind: &str,
    key: &str,
) -> Result<i64, StoreError> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT version FROM retired WHERE kind = ? AND key = ?")
            .bind(kind)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(last.unwrap_or(0) + 1)
}

/// Remembers the last version of a deleted entity (for 30 days).
async fn retire(
    conn: &mut SqliteConnection,
    kind: &str,
    key: &str,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO retired (kind, key, version, retired_at) VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
         ON CONFLICT (kind, key) DO UPDATE SET version = EXCLUDED.version, retired_at = EXCLUDED.retired_at",
    )
    .bind(kind)
    .bind(key)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM retired WHERE retired_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days')",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_audit(
    conn: &mut SqliteConnection,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
    actor: &Actor,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, action, target, before, after, request_id, actor) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    conn: &mut SqliteConnection,
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
        "INSERT OR REPLACE INTO nodes ({NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    Ok(record)
}

async fn load_all(conn: &mut SqliteConnection) -> Result<Stored, StoreError> {
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

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn op_timeout(&self) -> Duration {
        // Contention with another process is waited out (busy timeout), not
        // reported; only a store stuck for longer than that is an error.
        Duration::from_secs(35)
    }

    async fn load(&self) -> Result<Stored, StoreError> {
        // One read transaction: one snapshot of the WAL.
        let mut tx = self.pool.begin().await?;
        let stored = load_all(&mut tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn head(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT change_seq FROM cluster_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn changes_since(&self, after: i64) -> Result<Changes, StoreError> {
        let mut tx = self.pool.begin().await?;
        let head: i64 = sqlx::query_scalar("SELECT change_seq FROM cluster_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if head == after {
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
            "SELECT kind, key, MAX(seq) AS seq FROM changes WHERE seq > ? GROUP BY kind, key",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Changes {
            head,
            ..Changes::default()
        };
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let key: String = row.try_get("key")?;
            let seq: i64 = row.try_get("seq")?;
            match kind.as_str() {
                "node" => out.nodes.push(Change {
                    value: get_node(&mut tx, &key).await?,
                    key,
                    seq,
                }),
                "strategy" => out.strategies.push(Change {
                    value: get_strategy(&mut tx, &key).await?,
                    key,
                    seq,
                }),
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
        tx.commit().await?;
        Ok(out)
    }

    async fn create_node(
        &self,
        spec: &NodeSpec,
        actor: &Actor,
    ) -> Result<Written<NodeRecord>, StoreError> {
        let mut tx = self.begin().await?;
        if get_node(&mut tx, &spec.id).await?.is_some() {
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
        let mut tx = self.begin().await?;
        let previous = get_node(&mut tx, &spec.id).await?;
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
        let mut tx = self.begin().await?;
        let previous = get_node(&mut tx, id)
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
        let _gate = self.health_gate.lock().await;
        let mut tx = self.begin().await?;
        let previous = get_node(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        check_version(expected, Some(previous.version))?;
        // The last good overrides kept in the store name their nodes too (one
        // process: the same file the controller already checked).
        let referenced: Vec<String> = sqlx::query_scalar(
            "SELECT replica_id FROM replica_overrides WHERE replica_id <> ? \
             AND EXISTS (SELECT 1 FROM json_each(replica_overrides.refs) WHERE value = ?) \
             ORDER BY replica_id",
        )
        .bind(replica)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !referenced.is_empty() {
            return Err(StoreError::Conflict(format!(
                "node {id} is referenced by the overrides file; remove it there first"
            )));
        }
        let seq = bump(&mut tx, "node", id).await?;
        retire(&mut tx, "node", id, previous.version).await?;
        sqlx::query("DELETE FROM nodes WHERE id = ?")
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
        self.health.forget(id);
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
        let mut tx = self.begin().await?;
        let previous = get_strategy(&mut tx, name).await?;
        check_version(expected, previous.as_ref().map(|p| p.version))?;
        let seq = bump(&mut tx, "strategy", name).await?;
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
            "INSERT OR REPLACE INTO strategies ({STRATEGY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
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
        let mut tx = self.begin().await?;
        let previous = get_strategy(&mut tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("strategy {name}")))?;
        check_version(expected, Some(previous.version))?;
        if active_strategy(&mut tx).await?.0 == name {
            return Err(StoreError::Conflict(format!(
                "strategy {name} is the active strategy; switch to another one first"
            )));
        }
        let seq = bump(&mut tx, "strategy", name).await?;
        retire(&mut tx, "strategy", name, previous.version).await?;
        sqlx::query("DELETE FROM strategies WHERE name = ?")
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
        let mut tx = self.begin().await?;
        if get_strategy(&mut tx, name).await?.is_none() {
            return Err(StoreError::NotFound(format!("strategy {name}")));
        }
        let (before, _) = active_strategy(&mut tx).await?;
        let seq = bump(&mut tx, "active", "").await?;
        sqlx::query("UPDATE cluster_state SET active_strategy = ?, active_seq = ? WHERE id = 1")
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
             WHERE id < ? ORDER BY id DESC LIMIT ?",
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
        let mut tx = self.begin().await?;
        // One writer at a time: nothing can delete them before the commit.
        for id in &saved.stored_refs {
            if get_node(&mut tx, id).await?.is_none() {
                return Err(gone_node(id));
            }
        }
        if let Some(name) = &saved.active_strategy {
            if get_strategy(&mut tx, name).await?.is_none() {
                return Err(gone_strategy(name));
            }
        }
        let refs =
            serde_json::to_string(&saved.refs).map_err(|e| StoreError::Internal(Box::new(e)))?;
        sqlx::query(
            "INSERT OR REPLACE INTO replica_overrides (replica_id, content, revision, refs, loaded_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(replica)
        .bind(&saved.content)
        .bind(&saved.revision)
        .bind(refs)
        .bind(&saved.loaded_at)
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
        tx.commit().await?;
        Ok(())
    }

    async fn load_overrides(&self, replica: &str) -> Result<Option<SavedOverrides>, StoreError> {
        let row = sqlx::query(
            "SELECT content, revision, refs, loaded_at FROM replica_overrides WHERE replica_id = ?",
        )
        .bind(replica)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let refs: String = row.try_get("refs")?;
            Ok(SavedOverrides {
                content: row.try_get("content")?,
                revision: row.try_get("revision")?,
                refs: serde_json::from_str(&refs).unwrap_or_default(),
                stored_refs: Vec::new(),
                active_strategy: None,
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
        let _gate = self.health_gate.lock().await;
        let incarnation = if file_only {
            0
        } else {
            sqlx::query_scalar::<_, i64>("SELECT created_seq FROM nodes WHERE id = ?")
                .bind(node)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("node {node}")))?
        };
        Ok(self.health.heartbeat(node, incarnation, connections))
    }

    async fn health_since(&self, cursor: i64) -> Result<HealthBatch, StoreError> {
        Ok(self.health.since(cursor))
    }

    async fn lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn expire(&self, ttl: Duration) -> Result<Vec<HealthRecord>, StoreError> {
        Ok(self.health.expire(ttl))
    }

    async fn set_probe_verdicts(
        &self,
        verdicts: &[ProbeVerdict],
    ) -> Result<Vec<HealthRecord>, StoreError> {
        let _gate = self.health_gate.lock().await;
        let mut alive = std::collections::HashSet::new();
        for v in verdicts {
            if v.incarnation == 0 {
                alive.insert((v.node.clone(), 0));
                continue;
            }
            let found: Option<i64> =
                sqlx::query_scalar("SELECT created_seq FROM nodes WHERE id = ?")
                    .bind(&v.node)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(inc) = found {
                alive.insert((v.node.clone(), inc));
            }
        }
        Ok(self
            .health
            .set_probe_verdicts(verdicts, |id, inc| alive.contains(&(id.to_owned(), inc))))
    }

    async fn set_full(&self, marks: &[FullMark]) -> Result<Vec<HealthRecord>, StoreError> {
        let _gate = self.health_gate.lock().await;
        Ok(self.health.set_full(marks))
    }

    async fn report_replica(&self, me: &ReplicaInfo) -> Result<(), StoreError> {
        self.health.report_replica(me);
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        Ok(self.health.replicas())
    }

    async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        self.health.leave(replica);
        Ok(())
    }

    async fn listen(&self) -> Result<Option<Box<dyn Listener>>, StoreError> {
        Ok(None)
    }
}
