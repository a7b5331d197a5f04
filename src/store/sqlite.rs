//! The SQLite backend: WAL journal, `synchronous=FULL` (a commit is on disk
//! before it is acknowledged), a generous busy timeout and `BEGIN IMMEDIATE`
//! write transactions, so concurrent writers wait instead of failing.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
    Row, SqliteConnection, SqlitePool,
};

use super::{now_rfc3339, Actor, AuditEntry, Store, StoreError, Stored};
use crate::model::{Addrs, NodeRecord, NodeSpec, NodeState, StrategyRecord};

pub struct SqliteStore {
    pool: SqlitePool,
}

const NODE_COLUMNS: &str = "id, region, weight, state, ext_tcp_addr, ext_ws_addr, ext_wss_addr, \
     int_tcp_addr, int_ws_addr, int_wss_addr, labels, version, created_at, updated_at";

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
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
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
        Ok(Self { pool })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that
        // upgrades later can fail with SQLITE_BUSY without waiting.
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn node_from_row(row: &SqliteRow) -> Result<NodeRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let labels: String = row.try_get("labels")?;
    let weight: i64 = row.try_get("weight")?;
    let bad = |what: &str| StoreError::Internal(format!("corrupt stored node: {what}").into());
    Ok(NodeRecord {
        spec: NodeSpec {
            id: row.try_get("id")?,
            region: row.try_get("region")?,
            weight: u16::try_from(weight).map_err(|_| bad("weight"))?,
            state: NodeState::parse(&state).ok_or_else(|| bad("state"))?,
            external: Addrs {
                tcp_addr: row.try_get("ext_tcp_addr")?,
                ws_addr: row.try_get("ext_ws_addr")?,
                wss_addr: row.try_get("ext_wss_addr")?,
            },
            intranet: Addrs {
                tcp_addr: row.try_get("int_tcp_addr")?,
                ws_addr: row.try_get("int_ws_addr")?,
                wss_addr: row.try_get("int_wss_addr")?,
            },
            labels: serde_json::from_str::<BTreeMap<String, String>>(&labels)
                .map_err(|_| bad("labels"))?,
        },
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn strategy_from_row(row: &SqliteRow) -> Result<StrategyRecord, StoreError> {
    let params: String = row.try_get("params")?;
    Ok(StrategyRecord {
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        params: serde_json::from_str(&params)
            .map_err(|_| StoreError::Internal("corrupt stored strategy params".into()))?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The audit form of a node: its spec plus its version.
pub fn node_json(record: &NodeRecord) -> Value {
    let mut v = serde_json::to_value(&record.spec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("version".into(), record.version.into());
    }
    v
}

fn strategy_json(record: &StrategyRecord) -> Value {
    serde_json::json!({
        "name": record.name, "kind": record.kind, "params": record.params,
        "version": record.version,
    })
}

async fn get_node(conn: &mut SqliteConnection, id: &str) -> Result<Option<NodeRecord>, StoreError> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(node_from_row).transpose()
}

async fn get_strategy(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<StrategyRecord>, StoreError> {
    let row = sqlx::query("SELECT * FROM strategies WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(strategy_from_row).transpose()
}

async fn active_strategy(conn: &mut SqliteConnection) -> Result<String, StoreError> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'active_strategy'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.unwrap_or_else(|| "default".into()))
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
        "INSERT INTO audit_log (at, action, target, before, after, request_id) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(now_rfc3339())
    .bind(action)
    .bind(target)
    .bind(before.map(|v| v.to_string()))
    .bind(after.map(|v| v.to_string()))
    .bind(&actor.request_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn check_version(expected: Option<i64>, current: Option<i64>) -> Result<(), StoreError> {
    match (expected, current) {
        (Some(e), Some(c)) if e != c => Err(StoreError::VersionMismatch { current: c }),
        (Some(_), None) => Err(StoreError::VersionMismatch { current: 0 }),
        _ => Ok(()),
    }
}

async fn write_node(
    conn: &mut SqliteConnection,
    spec: &NodeSpec,
    previous: Option<&NodeRecord>,
) -> Result<NodeRecord, StoreError> {
    let now = now_rfc3339();
    let record = NodeRecord {
        spec: spec.clone(),
        version: previous.map_or(1, |p| p.version + 1),
        created_at: previous.map_or_else(|| now.clone(), |p| p.created_at.clone()),
        updated_at: now,
    };
    let labels =
        serde_json::to_string(&spec.labels).map_err(|e| StoreError::Internal(Box::new(e)))?;
    sqlx::query(&format!(
        "INSERT OR REPLACE INTO nodes ({NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    .execute(&mut *conn)
    .await?;
    Ok(record)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Stored, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id");
        let nodes = sqlx::query(&sql)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(node_from_row)
            .collect::<Result<_, _>>()?;
        let strategies = sqlx::query("SELECT * FROM strategies ORDER BY name")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(strategy_from_row)
            .collect::<Result<_, _>>()?;
        let active_strategy = active_strategy(&mut conn).await?;
        Ok(Stored {
            nodes,
            strategies,
            active_strategy,
        })
    }

    async fn create_node(&self, spec: &NodeSpec, actor: &Actor) -> Result<NodeRecord, StoreError> {
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
        Ok(record)
    }

    async fn put_node(
        &self,
        spec: &NodeSpec,
        expected: Option<i64>,
        action: &str,
        actor: &Actor,
    ) -> Result<(NodeRecord, bool), StoreError> {
        let mut tx = self.begin().await?;
        let previous = get_node(&mut tx, &spec.id).await?;
        check_version(expected, previous.as_ref().map(|p| p.version))?;
        let record = write_node(&mut tx, spec, previous.as_ref()).await?;
        insert_audit(
            &mut tx,
            action,
            &spec.id,
            previous.as_ref().map(node_json),
            Some(node_json(&record)),
            actor,
        )
        .await?;
        tx.commit().await?;
        Ok((record, previous.is_none()))
    }

    async fn delete_node(
        &self,
        id: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<NodeRecord, StoreError> {
        let mut tx = self.begin().await?;
        let previous = get_node(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
        check_version(expected, Some(previous.version))?;
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
        Ok(previous)
    }

    async fn put_strategy(
        &self,
        name: &str,
        kind: &str,
        params: &Value,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(StrategyRecord, bool), StoreError> {
        let mut tx = self.begin().await?;
        let previous = get_strategy(&mut tx, name).await?;
        check_version(expected, previous.as_ref().map(|p| p.version))?;
        let now = now_rfc3339();
        let record = StrategyRecord {
            name: name.into(),
            kind: kind.into(),
            params: params.clone(),
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            created_at: previous
                .as_ref()
                .map_or_else(|| now.clone(), |p| p.created_at.clone()),
            updated_at: now,
        };
        sqlx::query(
            "INSERT OR REPLACE INTO strategies (name, kind, params, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(kind)
        .bind(params.to_string())
        .bind(record.version)
        .bind(&record.created_at)
        .bind(&record.updated_at)
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
        Ok((record, previous.is_none()))
    }

    async fn delete_strategy(
        &self,
        name: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<StrategyRecord, StoreError> {
        let mut tx = self.begin().await?;
        let previous = get_strategy(&mut tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("strategy {name}")))?;
        check_version(expected, Some(previous.version))?;
        if active_strategy(&mut tx).await? == name {
            return Err(StoreError::Conflict(format!(
                "strategy {name} is the active strategy; switch to another one first"
            )));
        }
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
        Ok(previous)
    }

    async fn set_active_strategy(&self, name: &str, actor: &Actor) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if get_strategy(&mut tx, name).await?.is_none() {
            return Err(StoreError::NotFound(format!("strategy {name}")));
        }
        let before = active_strategy(&mut tx).await?;
        sqlx::query("INSERT OR REPLACE INTO settings (key, value) VALUES ('active_strategy', ?)")
            .bind(name)
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
        Ok(())
    }

    async fn audit(
        &self,
        action: &str,
        target: &str,
        before: Option<Value>,
        after: Option<Value>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, action, target, before, after, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_page(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, action, target, before, after, request_id FROM audit_log \
             WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    before: json(row.try_get("before")?),
                    after: json(row.try_get("after")?),
                    request_id: row.try_get("request_id")?,
                })
            })
            .collect()
    }
}
