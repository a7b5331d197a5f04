//! Store-level behaviour, one test body per behaviour, run against both
//! backends: SQLite in a temp dir and a PostgreSQL database of its own.

use std::{sync::Arc, time::Duration};

use imroute::{
    model::NodeSpec,
    store::{
        Actor, PostgresStore, ProbeVerdict, ReplicaInfo, SavedOverrides, SqliteStore, Store,
        StoreError,
    },
};
use serde_json::json;

use crate::pg::TestDb;

fn actor(id: &str) -> Actor {
    Actor {
        request_id: id.into(),
        ..Actor::default()
    }
}

fn spec(id: &str) -> NodeSpec {
    let mut s = NodeSpec::new(id);
    s.external.tcp_addr = format!("{id}.example.com:5100");
    s
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("s.db").display());
                    let store = imroute::store::SqliteStore::open(&url).await.unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::pg::TestDb::create(stringify!($name)).await else { return };
                    let store = imroute::store::PostgresStore::open(&db.url).await.unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                    drop(db);
                }
            )*
        }
    };
}

on_both_stores!(
    versions_and_if_match_are_checked_in_the_transaction,
    every_write_bumps_the_change_counter_and_the_feed_names_what_changed,
    a_reader_too_far_behind_gets_everything,
    every_write_appends_its_audit_row,
    conflicts_and_missing_entities_are_refused,
    heartbeats_need_a_stored_node_and_a_new_incarnation_starts_clean,
    expiry_and_probe_verdicts_are_stored,
    the_last_good_overrides_are_kept_with_one_audit_row_per_revision,
    overrides_naming_a_node_deleted_since_validation_are_refused,
    a_save_and_a_delete_racing_never_both_succeed,
    replicas_report_themselves,
);

async fn versions_and_if_match_are_checked_in_the_transaction(store: Arc<dyn Store>) {
    let a = actor("r1");
    let w = store.create_node(&spec("gw-1"), &a).await.unwrap();
    assert_eq!(w.value.version, 1);
    assert_eq!(w.value.created_seq, w.seq);
    let (w2, created) = store.put_node(&spec("gw-1"), Some(1), &a).await.unwrap();
    assert!(!created);
    assert_eq!(w2.value.version, 2);
    assert_eq!(
        w2.value.created_seq, w.seq,
        "an update keeps the incarnation"
    );
    match store.put_node(&spec("gw-1"), Some(1), &a).await {
        Err(StoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("a stale If-Match must fail: {other:?}"),
    }
    let patch = |s: &NodeSpec| {
        let mut s = s.clone();
        s.weight = 7;
        Ok(s)
    };
    match store.patch_node("gw-1", Some(1), &patch, &a).await {
        Err(StoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("{other:?}"),
    }
    let p = store.patch_node("gw-1", Some(2), &patch, &a).await.unwrap();
    assert_eq!((p.value.version, p.value.spec.weight), (3, 7));
    let bad = |_: &NodeSpec| Err::<NodeSpec, _>("weight: nope".to_string());
    match store.patch_node("gw-1", None, &bad, &a).await {
        Err(StoreError::Invalid(m)) => assert_eq!(m, "weight: nope"),
        other => panic!("{other:?}"),
    }
    match store.delete_node("gw-1", Some(2), "me", &a).await {
        Err(StoreError::VersionMismatch { current: 3 }) => {}
        other => panic!("{other:?}"),
    }
    // A create-only If-Match on a missing node fails too.
    match store.put_node(&spec("gw-2"), Some(1), &a).await {
        Err(StoreError::VersionMismatch { current: 0 }) => {}
        other => panic!("{other:?}"),
    }
    store.delete_node("gw-1", Some(3), "me", &a).await.unwrap();
    let stored = store.load().await.unwrap();
    assert!(stored.nodes.is_empty());
    // Created again under the same id: versions go on, so an If-Match that
    // was meant for the deleted node never matches the new one.
    let again = store.create_node(&spec("gw-1"), &a).await.unwrap();
    assert_eq!(again.value.version, 4);
    assert!(matches!(
        store.put_node(&spec("gw-1"), Some(1), &a).await,
        Err(StoreError::VersionMismatch { current: 4 })
    ));
}

async fn every_write_bumps_the_change_counter_and_the_feed_names_what_changed(
    store: Arc<dyn Store>,
) {
    let a = actor("r");
    let start = store.head().await.unwrap();
    let w1 = store.create_node(&spec("a"), &a).await.unwrap();
    let w2 = store.create_node(&spec("b"), &a).await.unwrap();
    assert_eq!((w1.seq, w2.seq), (start + 1, start + 2));
    let (s, _) = store
        .put_strategy("w", "weighted", &json!({}), None, &a)
        .await
        .unwrap();
    let act = store.set_active_strategy("w", &a).await.unwrap();
    let del = store.delete_node("a", None, "me", &a).await.unwrap();
    assert!(s.seq < act.seq && act.seq < del.seq);
    assert_eq!(store.head().await.unwrap(), del.seq);

    let changes = store.changes_since(start).await.unwrap();
    assert!(changes.full.is_none());
    assert_eq!(changes.head, del.seq);
    let mut nodes: Vec<(String, i64, bool)> = changes
        .nodes
        .iter()
        .map(|c| (c.key.clone(), c.seq, c.value.is_some()))
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        vec![("a".into(), del.seq, false), ("b".into(), w2.seq, true)]
    );
    assert_eq!(changes.strategies.len(), 1);
    assert_eq!(changes.active_strategy.unwrap().value.as_deref(), Some("w"));
    // Nothing new: an empty batch at the same head.
    let none = store.changes_since(del.seq).await.unwrap();
    assert!(none.nodes.is_empty() && none.full.is_none());
    assert_eq!(none.head, del.seq);
    // A failed write consumes no change number.
    assert!(store.create_node(&spec("b"), &a).await.is_err());
    assert_eq!(store.head().await.unwrap(), del.seq);
}

async fn a_reader_too_far_behind_gets_everything(store: Arc<dyn Store>) {
    let a = actor("r");
    store.create_node(&spec("a"), &a).await.unwrap();
    let head = store.head().await.unwrap();
    // A counter ahead of the store's: the database was replaced.
    let changes = store.changes_since(head + 100).await.unwrap();
    let full = changes.full.expect("a full reload");
    assert_eq!(full.nodes.len(), 1);
    assert_eq!(full.head, head);
    assert_eq!(full.active_strategy, "default");
}

async fn every_write_appends_its_audit_row(store: Arc<dyn Store>) {
    store
        .create_node(&spec("a"), &actor("req-1"))
        .await
        .unwrap();
    store
        .put_node(&spec("a"), Some(1), &actor("req-2"))
        .await
        .unwrap();
    store
        .delete_node("a", None, "me", &actor("req-3"))
        .await
        .unwrap();
    let rows = store.audit_page(10, None).await.unwrap();
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.action.as_str(), r.request_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("node.delete", "req-3"),
            ("node.replace", "req-2"),
            ("node.create", "req-1")
        ]
    );
    assert_eq!(rows[1].before.as_ref().unwrap()["version"], 1);
    assert_eq!(rows[1].after.as_ref().unwrap()["version"], 2);
    let older = store.audit_page(10, Some(rows[1].id)).await.unwrap();
    assert_eq!(older.len(), 1);
}

async fn conflicts_and_missing_entities_are_refused(store: Arc<dyn Store>) {
    let a = actor("r");
    store.create_node(&spec("a"), &a).await.unwrap();
    assert!(matches!(
        store.create_node(&spec("a"), &a).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.delete_node("zz", None, "me", &a).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_strategy("default", None, &a).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.set_active_strategy("nope", &a).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn heartbeats_need_a_stored_node_and_a_new_incarnation_starts_clean(store: Arc<dyn Store>) {
    let a = actor("r");
    assert!(matches!(
        store.heartbeat("ghost", false, 1).await,
        Err(StoreError::NotFound(_))
    ));
    let first = store.create_node(&spec("a"), &a).await.unwrap();
    let (r, revived) = store.heartbeat("a", false, 5).await.unwrap();
    assert!(revived, "the first heartbeat brings a node in");
    assert_eq!(r.incarnation, first.value.created_seq);
    assert_eq!(r.connections, Some(5));
    let (r, revived) = store.heartbeat("a", false, 6).await.unwrap();
    assert!(!revived);
    assert_eq!(r.connections, Some(6));
    // A file-only node needs no stored record.
    let (r, _) = store.heartbeat("file-only", true, 1).await.unwrap();
    assert_eq!(r.incarnation, 0);

    store.delete_node("a", None, "me", &a).await.unwrap();
    let again = store.create_node(&spec("a"), &a).await.unwrap();
    assert_ne!(again.value.created_seq, first.value.created_seq);
    let batch = store.health_since(0).await.unwrap();
    assert!(
        batch
            .records
            .iter()
            .all(|r| r.node != "a" || r.incarnation == again.value.created_seq),
        "the deleted node's record is gone: {:?}",
        batch.records
    );
    let (r, revived) = store.heartbeat("a", false, 1).await.unwrap();
    assert!(revived);
    assert_eq!(r.incarnation, again.value.created_seq);
    // What changed since a read is what a reader gets next.
    let before = store.health_since(0).await.unwrap();
    store.heartbeat("a", false, 2).await.unwrap();
    let after = store.health_since(before.cursor).await.unwrap();
    assert!(after
        .records
        .iter()
        .any(|r| r.node == "a" && r.connections == Some(2)));
    assert!(!after.complete);
}

async fn expiry_and_probe_verdicts_are_stored(store: Arc<dyn Store>) {
    let a = actor("r");
    let n = store.create_node(&spec("a"), &a).await.unwrap();
    assert!(store.lead().await.unwrap(), "a lone process leads");
    store.heartbeat("a", false, 1).await.unwrap();
    // Long TTL: nothing expires.
    assert!(store
        .expire(Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = store.expire(Duration::from_millis(1)).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert!(expired[0].expired_at.is_some());
    // Expired once: not again.
    assert!(store
        .expire(Duration::from_millis(1))
        .await
        .unwrap()
        .is_empty());
    let (r, revived) = store.heartbeat("a", false, 1).await.unwrap();
    assert!(revived && r.expired_at.is_none());

    let verdict = |incarnation| ProbeVerdict {
        node: "a".into(),
        incarnation,
        down: true,
        reason: "refused".into(),
    };
    let out = store
        .set_probe_verdicts(&[verdict(n.value.created_seq)])
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].probe_down, Some(true));
    // A verdict for another incarnation (the node was re-created meanwhile)
    // is dropped.
    let out = store
        .set_probe_verdicts(&[verdict(n.value.created_seq + 1000)])
        .await
        .unwrap();
    assert!(out.is_empty());
}

async fn the_last_good_overrides_are_kept_with_one_audit_row_per_revision(store: Arc<dyn Store>) {
    assert!(store.load_overrides("r1").await.unwrap().is_none());
    let saved = SavedOverrides {
        content: "pins: {vip: a}\n".into(),
        revision: "abc".into(),
        refs: vec!["a".into()],
        stored_refs: Vec::new(),
        active_strategy: None,
        loaded_at: "2026-01-01T00:00:00.000Z".into(),
    };
    store
        .save_overrides("r1", &saved, Some(""), &actor("w"))
        .await
        .unwrap();
    store
        .save_overrides("r1", &saved, Some("abc"), &actor("w"))
        .await
        .unwrap();
    assert_eq!(store.load_overrides("r1").await.unwrap(), Some(saved));
    assert!(store.load_overrides("r2").await.unwrap().is_none());
    let audit = store.audit_page(10, None).await.unwrap();
    let reloads = audit
        .iter()
        .filter(|r| r.action == "overrides.reload")
        .count();
    assert_eq!(reloads, 1);
}

/// Another replica can delete a node between this replica's validation of
/// its file and the save: the save is then refused and nothing is kept.
async fn overrides_naming_a_node_deleted_since_validation_are_refused(store: Arc<dyn Store>) {
    store.create_node(&spec("a"), &actor("w")).await.unwrap();
    store.create_node(&spec("b"), &actor("w")).await.unwrap();
    store
        .delete_node("b", None, "r2", &actor("w"))
        .await
        .unwrap();
    let saved = SavedOverrides {
        content: "pins: {vip: a, vop: b}\n".into(),
        revision: "abc".into(),
        refs: vec!["a".into(), "b".into(), "file-only".into()],
        stored_refs: vec!["a".into(), "b".into()],
        active_strategy: None,
        loaded_at: "2026-01-01T00:00:00.000Z".into(),
    };
    let err = store
        .save_overrides("r1", &saved, Some(""), &actor("w"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("\"b\"")),
        "{err:?}"
    );
    assert!(store.load_overrides("r1").await.unwrap().is_none());
    let gone_strategy = SavedOverrides {
        stored_refs: vec!["a".into()],
        active_strategy: Some("nope".into()),
        ..saved.clone()
    };
    let err = store
        .save_overrides("r1", &gone_strategy, Some(""), &actor("w"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let fine = SavedOverrides {
        stored_refs: vec!["a".into()],
        ..saved
    };
    store
        .save_overrides("r1", &fine, Some(""), &actor("w"))
        .await
        .unwrap();
    assert!(store.load_overrides("r1").await.unwrap().is_some());
}

/// A replica saving a file that names node `n` and another replica deleting
/// `n` at the same moment: one of the two must lose, every time.
async fn a_save_and_a_delete_racing_never_both_succeed(store: Arc<dyn Store>) {
    let mut outcomes = [0usize; 3];
    for i in 0..40 {
        let id = format!("n{i}");
        store.create_node(&spec(&id), &actor("w")).await.unwrap();
        let saved = SavedOverrides {
            content: format!("pins: {{vip: {id}}}\n"),
            revision: format!("rev{i}"),
            refs: vec![id.clone()],
            stored_refs: vec![id.clone()],
            active_strategy: None,
            loaded_at: "2026-01-01T00:00:00.000Z".into(),
        };
        let (a, b) = (store.clone(), store.clone());
        let save =
            tokio::spawn(
                async move { a.save_overrides("r1", &saved, Some(""), &actor("s")).await },
            );
        let del = {
            let id = id.clone();
            tokio::spawn(async move { b.delete_node(&id, None, "r2", &actor("d")).await })
        };
        let (save, del) = (save.await.unwrap(), del.await.unwrap());
        assert!(
            !(save.is_ok() && del.is_ok()),
            "round {i}: the file names {id} and {id} was deleted"
        );
        outcomes[usize::from(save.is_ok()) + 2 * usize::from(del.is_ok()) - 1] += 1;
        // Let go of the node for the next round.
        let empty = SavedOverrides {
            content: String::new(),
            revision: format!("empty{i}"),
            refs: Vec::new(),
            stored_refs: Vec::new(),
            active_strategy: None,
            loaded_at: "2026-01-01T00:00:00.000Z".into(),
        };
        store
            .save_overrides("r1", &empty, Some(""), &actor("s"))
            .await
            .unwrap();
    }
    // Both orders happen at least sometimes, or the race was not raced.
    assert_eq!(outcomes[2], 0);
    assert!(outcomes[0] + outcomes[1] == 40, "{outcomes:?}");
}

async fn replicas_report_themselves(store: Arc<dyn Store>) {
    let me = ReplicaInfo {
        id: "r1".into(),
        addr: "127.0.0.1:1".into(),
        version: "0".into(),
        revision: "aaaa".into(),
        started_at: "2026-01-01T00:00:00.000Z".into(),
        last_seen: String::new(),
    };
    store.report_replica(&me).await.unwrap();
    let list = store.replicas().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].revision, "aaaa");
    assert!(!list[0].last_seen.is_empty());
    store.leave("r1").await.unwrap();
    assert!(store.replicas().await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_commits_are_durable_on_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    // 2 = FULL: a commit is on disk before it is acknowledged.
    let pragmas = store.synchronous().await.unwrap();
    assert!(!pragmas.is_empty());
    assert!(pragmas.iter().all(|&p| p == 2), "{pragmas:?}");
}

#[tokio::test]
async fn three_stores_opened_at_once_on_an_empty_postgres_database_all_migrate() {
    let Some(db) = TestDb::create("three_stores_opened_at_once").await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        PostgresStore::open(&db.url),
        PostgresStore::open(&db.url),
        PostgresStore::open(&db.url)
    );
    for s in [a, b, c] {
        let s = s.expect("every replica comes up");
        assert_eq!(s.load().await.unwrap().active_strategy, "default");
    }
}
