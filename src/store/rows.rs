//! Row decoding shared by both backends (the same columns and types).

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{AuditEntry, StoreError};
use crate::model::{Addrs, NodeRecord, NodeSpec, NodeState, StrategyRecord};

/// A row type whose columns decode into the types the store uses.
pub trait StoreRow: Row
where
    for<'a> &'a str: ColumnIndex<Self>,
{
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
}

impl<R: Row> StoreRow for R
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
}

pub fn node<R: StoreRow>(row: &R) -> Result<NodeRecord, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let state = row.text("state")?;
    let labels = row.text("labels")?;
    let weight = row.int("weight")?;
    let bad = |what: &str| StoreError::internal(format!("corrupt stored node: {what}"));
    Ok(NodeRecord {
        spec: NodeSpec {
            id: row.text("id")?,
            region: row.opt_text("region")?,
            weight: u16::try_from(weight).map_err(|_| bad("weight"))?,
            state: NodeState::parse(&state).ok_or_else(|| bad("state"))?,
            external: Addrs {
                tcp_addr: row.text("ext_tcp_addr")?,
                ws_addr: row.text("ext_ws_addr")?,
                wss_addr: row.text("ext_wss_addr")?,
            },
            intranet: Addrs {
                tcp_addr: row.text("int_tcp_addr")?,
                ws_addr: row.text("int_ws_addr")?,
                wss_addr: row.text("int_wss_addr")?,
            },
            labels: serde_json::from_str::<BTreeMap<String, String>>(&labels)
                .map_err(|_| bad("labels"))?,
        },
        version: row.int("version")?,
        created_at: row.text("created_at")?,
        updated_at: row.text("updated_at")?,
        seq: row.int("seq")?,
        created_seq: row.int("created_seq")?,
    })
}

pub fn strategy<R: StoreRow>(row: &R) -> Result<StrategyRecord, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let params = row.text("params")?;
    Ok(StrategyRecord {
        name: row.text("name")?,
        kind: row.text("kind")?,
        params: serde_json::from_str(&params)
            .map_err(|_| StoreError::internal("corrupt stored strategy params"))?,
        version: row.int("version")?,
        created_at: row.text("created_at")?,
        updated_at: row.text("updated_at")?,
        seq: row.int("seq")?,
    })
}

pub fn audit<R: StoreRow>(row: &R) -> Result<AuditEntry, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    Ok(AuditEntry {
        id: row.int("id")?,
        at: row.text("at")?,
        action: row.text("action")?,
        target: row.text("target")?,
        before: json(row.opt_text("before")?),
        after: json(row.opt_text("after")?),
        request_id: row.text("request_id")?,
        actor: super::ActorKind::parse(&row.text("actor")?),
    })
}
