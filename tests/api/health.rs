use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const DEADLINE: Duration = Duration::from_secs(15);

async fn heartbeat(app: &TestApp, id: &str, connections: u64) -> u16 {
    app.admin(
        Method::PUT,
        &format!("/admin/nodes/{id}/heartbeat"),
        Some(json!({"connections": connections})),
    )
    .await
    .status()
    .as_u16()
}

async fn health_of(app: &TestApp, id: &str) -> Value {
    app.admin_json(Method::GET, &format!("/admin/nodes/{id}"), None)
        .await
        .1["health"]
        .clone()
}

async fn wait_status(app: &TestApp, id: &str, status: &str) {
    let ok = eventually(DEADLINE, || async {
        health_of(app, id).await["status"] == status
    })
    .await;
    assert!(
        ok,
        "{id} never became {status}: {}",
        health_of(app, id).await
    );
}

#[tokio::test]
async fn heartbeats_report_load_and_unknown_nodes_are_404() {
    let app = spawn_app().await;
    app.add_node("gw-1", json!({})).await;
    assert_eq!(health_of(&app, "gw-1").await["status"], "unknown");
    assert_eq!(heartbeat(&app, "gw-1", 1234).await, 204);
    let h = health_of(&app, "gw-1").await;
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["connections"], 1234);
    assert!(h["since"].is_string() && h["reason"].is_string());
    assert_eq!(heartbeat(&app, "nope", 1).await, 404);
    let resp = app
        .client
        .put(app.url("/admin/nodes/gw-1/heartbeat"))
        .json(&json!({"connections": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let m = app.metrics().await;
    assert!(
        m.contains(r#"imroute_node_connections{node="gw-1"} 1234"#),
        "{m}"
    );
    assert!(m.contains(r#"imroute_node_healthy{node="gw-1"} 1"#));
    // A deleted node's gauges go away (its routed-users counter stays: counters
    // keep their history).
    assert_eq!(
        app.admin(Method::DELETE, "/admin/nodes/gw-1", None)
            .await
            .status(),
        204
    );
    let m = app.metrics().await;
    assert!(!m.contains(r#"imroute_node_healthy{node="gw-1"}"#), "{m}");
    assert!(
        !m.contains(r#"imroute_node_connections{node="gw-1"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_silent_node_fails_over_exactly_and_its_users_come_back() {
    let app = spawn_app_with(|c| c.health.heartbeat_ttl_secs = 1).await;
    for id in ["a", "b", "c", "d"] {
        app.add_node(id, json!({})).await;
    }
    let users = uids(800);
    let before = app.assignments(&users).await;
    // a, b, c keep beating; d beats once, then falls silent.
    heartbeat(&app, "d", 5).await;
    let beating = ["a", "b", "c"];
    let expired = eventually(DEADLINE, || async {
        for id in beating {
            heartbeat(&app, id, 1).await;
        }
        health_of(&app, "d").await["status"] == "unhealthy"
    })
    .await;
    assert!(expired, "d never expired");
    let h = health_of(&app, "d").await;
    assert!(
        h["reason"].as_str().unwrap().contains("no heartbeat"),
        "{h}"
    );

    let after = app.assignments(&users).await;
    let mut moved_to = std::collections::HashMap::new();
    for u in &users {
        if before[u] == "d" {
            assert_ne!(after[u], "d");
            *moved_to.entry(after[u].clone()).or_insert(0) += 1;
        } else {
            assert_eq!(before[u], after[u], "{u} was not on d and must stay");
        }
    }
    assert_eq!(
        moved_to.len(),
        3,
        "d's users spread over the others: {moved_to:?}"
    );
    let m = app.metrics().await;
    assert!(m.contains(r#"imroute_node_healthy{node="d"} 0"#), "{m}");
    assert!(m.contains(r#"imroute_health_transitions_total{to="unhealthy"}"#));

    heartbeat(&app, "d", 5).await;
    assert_eq!(health_of(&app, "d").await["status"], "healthy");
    assert_eq!(
        app.assignments(&users).await,
        before,
        "the same users come back"
    );
}

#[tokio::test]
async fn panic_mode_routes_over_all_active_nodes_when_none_is_healthy() {
    let app = spawn_app_with(|c| c.health.heartbeat_ttl_secs = 1).await;
    app.add_node("a", json!({})).await;
    app.add_node("b", json!({})).await;
    app.add_node("off", json!({"state": "disabled"})).await;
    heartbeat(&app, "a", 1).await;
    heartbeat(&app, "b", 1).await;
    wait_status(&app, "a", "unhealthy").await;
    wait_status(&app, "b", "unhealthy").await;
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["panic_mode"], true, "{routing}");
    assert_eq!(routing["nodes_routable"], 0);
    let got = app.assignments(&uids(200)).await;
    assert!(got.values().any(|n| n == "a") && got.values().any(|n| n == "b"));
    assert!(
        got.values().all(|n| n != "off"),
        "panic mode uses active nodes only"
    );
    assert!(app.metrics().await.contains("imroute_panic_mode 1"));

    heartbeat(&app, "a", 1).await;
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["panic_mode"], false);
    assert!(app.assignments(&uids(200)).await.values().all(|n| n == "a"));
}

#[tokio::test]
async fn tcp_probes_mark_a_closed_port_unhealthy_and_an_open_one_healthy() {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let down_addr = down.local_addr().unwrap();
    drop(down); // Nothing listens there any more: connections are refused.

    let app = spawn_app_with(|c| {
        c.health.probe.enabled = true;
        c.health.probe.interval_ms = 50;
        c.health.probe.timeout_ms = 200;
        c.health.probe.unhealthy_after = 2;
        c.health.probe.healthy_after = 2;
    })
    .await;
    app.add_node("up", json!({"intranet": {"tcp_addr": up_addr.to_string()}, "external": {"tcp_addr": "203.0.113.1:1"}}))
        .await;
    app.add_node(
        "down",
        json!({"external": {"tcp_addr": down_addr.to_string()}}),
    )
    .await;
    wait_status(&app, "up", "healthy").await;
    wait_status(&app, "down", "unhealthy").await;
    let h = health_of(&app, "down").await;
    assert!(
        h["reason"].as_str().unwrap().contains("tcp probe failed"),
        "{h}"
    );
    assert!(app
        .assignments(&uids(100))
        .await
        .values()
        .all(|n| n == "up"));

    // The port comes back: healthy again after `healthy_after` successes.
    let back = tokio::net::TcpListener::bind(down_addr).await.unwrap();
    wait_status(&app, "down", "healthy").await;
    let spread = app.assignments(&uids(100)).await;
    assert!(spread.values().any(|n| n == "down"));
    drop(back);
    drop(up);
}
