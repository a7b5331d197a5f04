//! The `bounded` kind end to end: real heartbeats carry the loads, the
//! judge evaluates the full set on its period, routing follows.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// The evaluation period the tests run with (the default is 5 s).
const PERIOD_MS: u64 = 500;

pub async fn is_full(app: &TestApp, id: &str) -> bool {
    let (status, node) = app
        .admin_json(Method::GET, &format!("/admin/nodes/{id}"), None)
        .await;
    assert_eq!(status, 200, "{node}");
    node["health"]["full"]
        .as_bool()
        .unwrap_or_else(|| panic!("health.full is shown: {node}"))
}

/// Creates a `bounded` strategy with `params` and makes it active.
pub async fn activate_bounded(app: &TestApp, params: Value) {
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/strategies/capacity",
            Some(json!({"kind": "bounded", "params": params})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    app.activate_strategy("capacity").await;
}

async fn spawn() -> TestApp {
    spawn_app_with(|c| c.health.full_eval_interval_ms = PERIOD_MS).await
}

async fn wait_full(app: &TestApp, id: &str, want: bool) -> Duration {
    let started = Instant::now();
    let ok = eventually(Duration::from_secs(10), || async {
        is_full(app, id).await == want
    })
    .await;
    assert!(ok, "{id} full = {want} never came");
    started.elapsed()
}

/// The assignments once `check` holds of them (the flag is shown a moment
/// before the table that follows it is served).
async fn routes_when(
    app: &TestApp,
    users: &[String],
    check: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let last = app.assignments(users).await;
        if check(&last) {
            return last;
        }
        assert!(Instant::now() < end, "routes never settled: {last:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn on(assigned: &HashMap<String, String>, node: &str) -> usize {
    assigned.values().filter(|n| *n == node).count()
}

#[tokio::test]
async fn a_node_at_five_times_the_others_stops_taking_users_and_gets_them_back() {
    let app = spawn().await;
    for i in 1..=5 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    for i in 1..=5 {
        app.heartbeat(&format!("gw-{i}"), 1000).await;
    }
    let users = uids(3000);
    let hash = app.assignments(&users).await;
    activate_bounded(&app, json!({})).await;
    // Balanced: the inner kind's answers exactly.
    let balanced = app.assignments(&users).await;
    assert_eq!(balanced, hash);
    let on_gw1 = on(&balanced, "gw-1");
    assert!(on_gw1 > 400, "{on_gw1}");
    let before = app.get_json_admin("/admin/routing").await["revision"].clone();

    // gw-1 reports 5x the others: full within one evaluation period (and
    // the time to see it from here).
    app.heartbeat("gw-1", 5000).await;
    let took = wait_full(&app, "gw-1", true).await;
    println!("full after {took:?} (period {PERIOD_MS} ms)");
    assert!(
        took < Duration::from_millis(PERIOD_MS * 2 + 2000),
        "{took:?}"
    );
    let loaded = routes_when(&app, &users, |a| on(a, "gw-1") == 0).await;
    for (uid, node) in &balanced {
        if node != "gw-1" {
            assert_eq!(&loaded[uid], node, "{uid} was not on the full node");
        }
    }
    let moved = app.get_json_admin("/admin/routing").await["revision"].clone();
    assert_ne!(before, moved, "the full set is part of the revision");
    for i in 2..=5 {
        assert!(!is_full(&app, &format!("gw-{i}")).await);
    }

    // Its load comes back: its users come back.
    app.heartbeat("gw-1", 1000).await;
    wait_full(&app, "gw-1", false).await;
    routes_when(&app, &users, |a| *a == balanced).await;
    assert_eq!(
        app.get_json_admin("/admin/routing").await["revision"],
        before
    );
}

/// Six nodes: four at 1000, `gw-5` at x, `gw-6` at y. With x = 1450 and
/// y = 2000 the fair share is 1241.7: gw-5 sits between the bounds
/// (1396.9..1552.1) and gw-6 is above them. gw-6 going full (or not) tells
/// that an evaluation has seen the loads reported before it.
#[tokio::test]
async fn a_load_between_the_two_bounds_changes_nothing() {
    let app = spawn().await;
    for i in 1..=6 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    activate_bounded(&app, json!({})).await;
    let users = uids(3000);
    for i in 1..=4 {
        app.heartbeat(&format!("gw-{i}"), 1000).await;
    }
    app.heartbeat("gw-5", 1450).await;
    let before = app.assignments(&users).await;
    app.heartbeat("gw-6", 2000).await;
    wait_full(&app, "gw-6", true).await;
    assert!(
        !is_full(&app, "gw-5").await,
        "an open node between the bounds stays open"
    );
    let after = routes_when(&app, &users, |a| on(a, "gw-6") == 0).await;
    for (uid, node) in &before {
        if node != "gw-6" {
            assert_eq!(&after[uid], node, "{uid}: only gw-6's users move");
        }
    }

    // gw-5 fills up (and gw-6, now below its release point, opens)...
    app.heartbeat("gw-5", 5000).await;
    wait_full(&app, "gw-5", true).await;
    wait_full(&app, "gw-6", false).await;
    routes_when(&app, &users, |a| on(a, "gw-5") == 0 && on(a, "gw-6") > 0).await;
    // ...then drops back between the bounds: it stays full.
    app.heartbeat("gw-5", 1450).await;
    wait_full(&app, "gw-6", true).await;
    assert!(
        is_full(&app, "gw-5").await,
        "a full node between the bounds stays full"
    );
    assert_eq!(on(&app.assignments(&users).await, "gw-5"), 0);
}

#[tokio::test]
async fn invalid_bounded_params_are_400_naming_the_field() {
    let app = spawn().await;
    for (params, field) in [
        (json!({"balance_factor": 5}), "params.balance_factor"),
        (json!({"balance_factor": 1.0}), "params.balance_factor"),
        (json!({"balance_factor": "1.5"}), "params.balance_factor"),
        (json!({"inner": "region"}), "params.inner"),
        (json!({"min_connections": -1}), "params.min_connections"),
        (json!({"min_connections": 2.5}), "params.min_connections"),
        (json!({"spread": 1}), "params.spread"),
    ] {
        let (status, body) = app
            .admin_json(
                Method::PUT,
                "/admin/strategies/capacity",
                Some(json!({"kind": "bounded", "params": params})),
            )
            .await;
        assert_eq!(status, 400, "{params}: {body}");
        assert!(
            body["msg"].as_str().unwrap().contains(field),
            "{params}: {body}"
        );
    }
    let (status, _) = app
        .admin_json(Method::GET, "/admin/strategies/capacity", None)
        .await;
    assert_eq!(status, 404, "nothing was stored");
    // The kind is listed with its params schema.
    let kinds = app.get_json_admin("/admin/strategy-kinds").await;
    let bounded = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "bounded")
        .expect("bounded is installed")
        .clone();
    assert_eq!(
        bounded["params_schema"]["properties"]["balance_factor"]["default"],
        1.25
    );
    // Defaults are accepted, and stored as given.
    activate_bounded(&app, json!({"inner": "weighted", "balance_factor": 2})).await;
    let routing = app.get_json_admin("/admin/routing").await;
    assert_eq!(routing["kind"], "bounded", "{routing}");
}

#[tokio::test]
async fn a_full_node_deleted_and_created_again_starts_open() {
    let app = spawn().await;
    for i in 1..=3 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    activate_bounded(&app, json!({})).await;
    app.heartbeat("gw-1", 9000).await;
    app.heartbeat("gw-2", 1000).await;
    app.heartbeat("gw-3", 1000).await;
    wait_full(&app, "gw-1", true).await;
    let resp = app.admin(Method::DELETE, "/admin/nodes/gw-1", None).await;
    assert_eq!(resp.status(), 204);
    app.add_node("gw-1", json!({})).await;
    assert!(
        !is_full(&app, "gw-1").await,
        "a new incarnation inherits nothing"
    );
    let users = uids(1500);
    routes_when(&app, &users, |a| on(a, "gw-1") > 300).await;
}

#[tokio::test]
async fn with_another_kind_nobody_is_full_and_switching_away_clears_the_set() {
    let app = spawn().await;
    for i in 1..=3 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    app.heartbeat("gw-1", 9000).await;
    app.heartbeat("gw-2", 1000).await;
    app.heartbeat("gw-3", 1000).await;
    activate_bounded(&app, json!({})).await;
    wait_full(&app, "gw-1", true).await;
    app.activate_strategy("default").await;
    // `hash` ignores the set at once, and the judge clears it.
    let users = uids(1000);
    routes_when(&app, &users, |a| on(a, "gw-1") > 150).await;
    wait_full(&app, "gw-1", false).await;
}
