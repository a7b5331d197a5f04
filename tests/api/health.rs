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
    assert!(m.contains(r#"imroute_users_routed_total{node="gw-1"}"#));
    // A deleted node leaves no series behind, its routed-users counter
    // included.
    assert_eq!(
        app.admin(Method::DELETE, "/admin/nodes/gw-1", None)
            .await
            .status(),
        204
    );
    let m = app.metrics().await;
    assert!(!m.contains(r#"{node="gw-1"}"#), "{m}");
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
    // The verdict is recorded before the table it changes is served.
    let panicked = eventually(DEADLINE, || async {
        app.admin_json(Method::GET, "/admin/routing", None).await.1["panic_mode"] == true
    })
    .await;
    assert!(panicked);
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
    // The verdict is recorded before the table it changes is served.
    let moved = eventually(DEADLINE, || async {
        app.assignments(&uids(100))
            .await
            .values()
            .all(|n| n == "up")
    })
    .await;
    assert!(moved, "every user goes to the node that answers");

    // The port comes back: healthy again after `healthy_after` successes.
    let back = tokio::net::TcpListener::bind(down_addr).await.unwrap();
    wait_status(&app, "down", "healthy").await;
    let spread = eventually(DEADLINE, || async {
        app.assignments(&uids(100))
            .await
            .values()
            .any(|n| n == "down")
    })
    .await;
    assert!(spread, "users come back to the node");
    drop(back);
    drop(up);
}

/// Lines of `/metrics` about node `id`.
async fn series_of(app: &TestApp, id: &str) -> Vec<String> {
    let label = format!("{{node=\"{id}\"}}");
    app.metrics()
        .await
        .lines()
        .filter(|l| l.contains(&label))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn heartbeats_racing_a_delete_leave_nothing_to_a_node_created_again() {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let app = Arc::new(spawn_app().await);
    app.add_node("x", json!({})).await;
    app.add_node("y", json!({})).await;
    assert_eq!(heartbeat(&app, "x", 77).await, 204);
    assert_eq!(health_of(&app, "x").await["status"], "healthy");
    let users = uids(200);
    assert!(app.assignments(&users).await.values().any(|n| n == "x"));
    let series = series_of(&app, "x").await;
    assert_eq!(series.len(), 3, "{series:?}");
    assert!(
        series.contains(&r#"imroute_node_connections{node="x"} 77"#.to_owned())
            && !series.contains(&r#"imroute_users_routed_total{node="x"} 0"#.to_owned()),
        "{series:?}"
    );

    let accepted = Arc::new(AtomicUsize::new(0));
    let beaters: Vec<_> = (0..8)
        .map(|_| {
            let (app, accepted) = (app.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                // Until x has been gone for a while.
                while refused < 10 {
                    match heartbeat(&app, "x", 77).await {
                        204 => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        404 => refused += 1,
                        other => panic!("heartbeat answered {other}"),
                    }
                }
            })
        })
        .collect();
    let beating = eventually(DEADLINE, || async { accepted.load(Ordering::SeqCst) >= 20 }).await;
    assert!(beating);
    let resp = app.admin(Method::DELETE, "/admin/nodes/x", None).await;
    assert_eq!(resp.status(), 204);
    for b in beaters {
        b.await.unwrap();
    }

    // Gone, series and all.
    assert_eq!(
        app.admin(Method::GET, "/admin/nodes/x", None)
            .await
            .status(),
        404
    );
    assert_eq!(series_of(&app, "x").await, Vec::<String>::new());
    assert!(app.assignments(&users).await.values().all(|n| n == "y"));

    // Created again under the same id: a new node, with nothing of the old one.
    app.add_node("x", json!({})).await;
    let h = health_of(&app, "x").await;
    assert_eq!(h["status"], "unknown", "{h}");
    assert!(h.get("connections").is_none(), "{h}");
    let mut series = series_of(&app, "x").await;
    series.sort();
    assert_eq!(
        series,
        [
            r#"imroute_node_connections{node="x"} 0"#,
            r#"imroute_node_healthy{node="x"} 1"#,
            r#"imroute_users_routed_total{node="x"} 0"#,
        ]
    );
    // Its own heartbeat makes it healthy, with its own load.
    assert_eq!(heartbeat(&app, "x", 5).await, 204);
    let h = health_of(&app, "x").await;
    assert_eq!(
        (h["status"].as_str(), h["connections"].as_u64()),
        (Some("healthy"), Some(5))
    );
}

/// A TCP listener whose accept queue is full: connection attempts to it hang
/// until the prober's timeout, so every probe round lasts that long. Keep
/// the first two parts alive as long as it is needed.
fn silent_listener() -> (
    tokio::net::TcpListener,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the queue (backlog + 1); nobody ever accepts.
    let fill = (0..2)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    (listener, fill, addr)
}

fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn probe_verdicts_of_a_deleted_node_never_reach_the_node_created_again() {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };
    const ROUND: Duration = Duration::from_millis(1000);
    const UNHEALTHY_AFTER: usize = 3;
    let app = spawn_app_with(|c| {
        c.health.probe.enabled = true;
        c.health.probe.interval_ms = 100;
        c.health.probe.timeout_ms = ROUND.as_millis() as u64;
        c.health.probe.unhealthy_after = UNHEALTHY_AFTER as u32;
        c.health.probe.healthy_after = 2;
    })
    .await;
    // `clock` is probed once per round: each accepted connection marks the
    // start of a round.
    let clock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock_addr = clock.local_addr().unwrap();
    let rounds: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let ticks = rounds.clone();
    let counter = tokio::spawn(async move {
        loop {
            let (stream, _) = clock.accept().await.unwrap();
            ticks.lock().unwrap().push(Instant::now());
            drop(stream);
        }
    });
    let (_slow, _queued, slow_addr) = silent_listener();
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_addr = open.local_addr().unwrap();
    let refused = closed_port();
    let started = |n: usize| rounds.lock().unwrap().get(n).copied();
    let count = || rounds.lock().unwrap().len();
    app.add_node(
        "clock",
        json!({"external": {"tcp_addr": clock_addr.to_string()}}),
    )
    .await;
    app.add_node(
        "slow",
        json!({"external": {"tcp_addr": slow_addr.to_string()}}),
    )
    .await;
    app.add_node(
        "x",
        json!({"external": {"tcp_addr": open_addr.to_string()}}),
    )
    .await;
    wait_status(&app, "x", "healthy").await;

    // Twice: first x is healthy when deleted (a leaked verdict would make the
    // new x healthy), then x is unhealthy with its failures still counting (a
    // leaked verdict or count would make the new x unhealthy too early).
    for cycle in 0..2 {
        // Wait for a round to start, then delete x and create it again while
        // that round, which still probes the old x, is in flight.
        let n = count();
        let begun = eventually(DEADLINE, || async { count() > n }).await;
        assert!(begun, "probe rounds run");
        let round_start = started(n).unwrap();
        let resp = app.admin(Method::DELETE, "/admin/nodes/x", None).await;
        assert_eq!(resp.status(), 204);
        let before_create = count();
        app.add_node("x", json!({"external": {"tcp_addr": refused.to_string()}}))
            .await;
        assert!(
            round_start.elapsed() < ROUND / 2,
            "cycle {cycle}: the delete and create took {:?}, longer than the round",
            round_start.elapsed()
        );
        assert_eq!(health_of(&app, "x").await["status"], "unknown");
        // Unknown, never healthy, until its own failures make it unhealthy.
        let end = Instant::now() + DEADLINE + ROUND * UNHEALTHY_AFTER as u32;
        let h = loop {
            let h = health_of(&app, "x").await;
            match h["status"].as_str().unwrap() {
                "unknown" => {}
                "unhealthy" => break h,
                _ => panic!("cycle {cycle}: the new x became {h}"),
            }
            assert!(
                Instant::now() < end,
                "cycle {cycle}: x never became unhealthy"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let own_rounds = count() - before_create;
        assert!(
            own_rounds >= UNHEALTHY_AFTER,
            "cycle {cycle}: unhealthy after {own_rounds} rounds of its own: {h}"
        );
        assert!(
            h["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("failed {UNHEALTHY_AFTER} times in a row")),
            "cycle {cycle}: {h}"
        );
    }
    counter.abort();
    drop(open);
}
