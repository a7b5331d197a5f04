//! Several replicas on one PostgreSQL database: real servers on port 0 (and
//! real child processes where a crash is the point), real HTTP.

use std::time::{Duration, Instant};

use imroute::config::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    helpers::{eventually, spawn_app_with, uids, Process, TestApp, TOKEN},
    pg::{with_database, TestDb},
    proxy::Proxy,
};

/// `n` replicas on one database, started at the same moment.
async fn replicas(url: &str, n: usize, f: impl Fn(usize, &mut Config) + Clone) -> Vec<TestApp> {
    let starts = (0..n).map(|i| {
        let url = url.to_owned();
        let f = f.clone();
        spawn_app_with(move |c| {
            c.database_url = url;
            c.cluster.replica_id = Some(format!("r{i}"));
            f(i, c);
        })
    });
    futures_util::future::join_all(starts).await
}

async fn revision(app: &TestApp) -> String {
    let (status, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(status, 200, "{routing}");
    routing["revision"].as_str().unwrap().to_owned()
}

async fn revisions(apps: &[TestApp]) -> Vec<String> {
    let mut out = Vec::new();
    for app in apps {
        out.push(revision(app).await);
    }
    out
}

/// Waits until every replica shows `want` (or, with `None`, one revision).
async fn converge(apps: &[TestApp], want: Option<&str>, deadline: Duration) -> bool {
    eventually(deadline, || async {
        let revs = revisions(apps).await;
        revs.windows(2).all(|w| w[0] == w[1]) && want.is_none_or(|w| revs[0] == w)
    })
    .await
}

fn node_body(id: &str) -> Value {
    json!({"id": id, "external": {"tcp_addr": format!("{id}.example.com:5100")}})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test]
async fn three_replicas_start_together_and_see_each_others_writes() {
    let Some(db) = TestDb::create("three_replicas_see_writes").await else {
        return;
    };
    let apps = replicas(&db.url, 3, |_, _| {}).await;
    let mut lags = Vec::new();
    for i in 0..30 {
        let writer = &apps[i % 3];
        let (status, body) = writer
            .admin_json(
                Method::POST,
                "/admin/nodes",
                Some(node_body(&format!("gw-{i}"))),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let written = Instant::now();
        let want = revision(writer).await;
        assert!(
            converge(&apps, Some(&want), Duration::from_secs(3)).await,
            "write {i} on r{} reached every replica",
            i % 3
        );
        lags.push(written.elapsed());
    }
    lags.sort();
    println!(
        "write on one replica -> same revision on all three: p50 {:?}, p90 {:?}, max {:?} (30 writes)",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        lags[lags.len() - 1]
    );
    // Every replica lists every node, with the same versions.
    for app in &apps {
        let (_, nodes) = app.admin_json(Method::GET, "/admin/nodes", None).await;
        assert_eq!(nodes.as_array().unwrap().len(), 30);
    }
    let (_, cluster) = apps[0]
        .admin_json(Method::GET, "/admin/cluster", None)
        .await;
    assert_eq!(cluster["store"], json!({"kind": "postgres", "up": true}));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, c) = apps[1]
                .admin_json(Method::GET, "/admin/cluster", None)
                .await;
            c["replicas"].as_array().unwrap().len() == 3 && c["converged"] == true
        })
        .await
    );
}

#[tokio::test]
async fn every_replica_gives_every_user_the_same_node_and_revision() {
    let Some(db) = TestDb::create("same_answers").await else {
        return;
    };
    let apps = replicas(&db.url, 3, |_, _| {}).await;
    for i in 0..24 {
        let mut body = node_body(&format!("gw-{i:02}"));
        body["weight"] = json!(10 + (i * 7) % 90);
        body["region"] = json!(["eu", "us"][i % 2]);
        let (status, _) = apps[i % 3]
            .admin_json(Method::POST, "/admin/nodes", Some(body))
            .await;
        assert_eq!(status, 201);
    }
    let (status, _) = apps[1]
        .admin_json(
            Method::PUT,
            "/admin/strategies/w",
            Some(json!({"kind": "weighted"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = apps[2]
        .admin_json(
            Method::PUT,
            "/admin/routing",
            Some(json!({"active_strategy": "w"})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let users = uids(5000);
    let mut answers = Vec::new();
    for app in &apps {
        let resp = app
            .client
            .post(app.url("/route/batch?intranet=0"))
            .json(&users)
            .send()
            .await
            .unwrap();
        let rev = resp.headers()["x-routing-revision"]
            .to_str()
            .unwrap()
            .to_owned();
        answers.push((rev, resp.text().await.unwrap()));
    }
    assert!(answers.iter().all(|a| a == &answers[0]));
    let groups: Vec<Value> = serde_json::from_str(&answers[0].1).unwrap();
    assert!(groups.len() > 20, "users spread over the nodes");
}

#[tokio::test]
async fn a_heartbeat_on_one_replica_counts_on_all_and_expiry_is_judged_alike() {
    let Some(db) = TestDb::create("shared_health").await else {
        return;
    };
    let apps = replicas(&db.url, 3, |_, c| c.health.heartbeat_ttl_secs = 1).await;
    for id in ["a", "b", "c"] {
        apps[0].add_node(id, json!({})).await;
    }
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let users = uids(3000);
    let before = apps[0].assignments(&users).await;

    let (status, _) = apps[1]
        .admin_json(
            Method::PUT,
            "/admin/nodes/a/heartbeat",
            Some(json!({"connections": 7})),
        )
        .await;
    assert_eq!(status, 204);
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let healthy_revision = revision(&apps[0]).await;
    // Seen everywhere, with its load.
    for app in &apps {
        assert!(
            eventually(Duration::from_secs(2), || async {
                let (_, n) = app.admin_json(Method::GET, "/admin/nodes/a", None).await;
                n["health"]["status"] == "healthy" && n["health"]["connections"] == 7
            })
            .await,
            "the heartbeat is seen on every replica"
        );
    }
    // Silence: the TTL (1 s) expires a on every replica alike.
    for app in &apps {
        assert!(
            eventually(Duration::from_secs(5), || async {
                let (_, n) = app.admin_json(Method::GET, "/admin/nodes/a", None).await;
                n["health"]["status"] == "unhealthy"
            })
            .await
        );
    }
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let mut after = Vec::new();
    for app in &apps {
        after.push(app.assignments(&users).await);
    }
    assert!(after.iter().all(|a| a == &after[0]), "all replicas agree");
    let moved: Vec<&String> = users
        .iter()
        .filter(|u| before[*u] != after[0][*u])
        .collect();
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|u| before[*u] == "a"),
        "only a's users move"
    );
    assert!(after[0].values().all(|n| n != "a"));
    // The next heartbeat, on another replica, brings it back everywhere.
    let (status, _) = apps[2]
        .admin_json(
            Method::PUT,
            "/admin/nodes/a/heartbeat",
            Some(json!({"connections": 1})),
        )
        .await;
    assert_eq!(status, 204);
    assert!(
        converge(&apps, Some(&healthy_revision), Duration::from_secs(3)).await,
        "every replica is back on the revision it had with a healthy"
    );
    for app in &apps {
        assert_eq!(app.assignments(&users).await, before);
    }
}

#[tokio::test]
async fn if_match_holds_across_replicas_and_no_update_is_lost() {
    let Some(db) = TestDb::create("if_match_across").await else {
        return;
    };
    let apps = replicas(&db.url, 3, |_, _| {}).await;
    apps[0].add_node("gw-1", json!({})).await;
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let mut first = node_body("gw-1");
    first["weight"] = json!(5);
    let put = |app: &TestApp, body: Value| {
        app.client
            .put(app.url("/admin/nodes/gw-1"))
            .bearer_auth(TOKEN)
            .header("If-Match", "\"1\"")
            .json(&body)
            .send()
    };
    let resp = put(&apps[1], first).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut second = node_body("gw-1");
    second["weight"] = json!(9);
    let resp = put(&apps[2], second).await.unwrap();
    assert_eq!(resp.status(), 412, "the second stale writer loses");
    // A PATCH without If-Match on a replica that may not have seen the
    // first write yet applies to the stored node, not to its cache.
    let (status, node) = apps[2]
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-1",
            Some(json!({"region": "eu"})),
        )
        .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(
        (node["version"].as_i64(), node["weight"].as_i64()),
        (Some(3), Some(5))
    );
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    for app in &apps {
        let (_, n) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
        assert_eq!(
            (n["version"].as_i64(), n["weight"].as_i64()),
            (Some(3), Some(5))
        );
        assert_eq!(n["region"], "eu");
    }
}

#[tokio::test]
async fn terminating_every_database_connection_loses_nothing() {
    let Some(db) = TestDb::create("terminate_backends").await else {
        return;
    };
    let apps = replicas(&db.url, 3, |_, _| {}).await;
    apps[0].add_node("before", json!({})).await;
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let killed = db.terminate_all().await;
    assert!(killed >= 3, "listeners and pools were connected ({killed})");
    // Writes recover on every replica (a write in the gap may answer 503).
    for (i, app) in apps.iter().enumerate() {
        let id = format!("after-{i}");
        assert!(
            eventually(Duration::from_secs(10), || async {
                let (status, _) = app
                    .admin_json(Method::POST, "/admin/nodes", Some(node_body(&id)))
                    .await;
                status == 201 || status == 409
            })
            .await,
            "writes work again on r{i}"
        );
    }
    assert!(converge(&apps, None, Duration::from_secs(5)).await);
    for app in &apps {
        let (_, nodes) = app.admin_json(Method::GET, "/admin/nodes", None).await;
        let ids: Vec<&str> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["after-0", "after-1", "after-2", "before"]);
    }
}

#[tokio::test]
async fn a_store_outage_changes_no_answer_and_writes_fail_fast_then_everything_converges() {
    let Some(db) = TestDb::create("store_outage").await else {
        return;
    };
    let upstream: std::net::SocketAddr = {
        let server = crate::pg::server_url();
        let host = url_host_port(&server);
        tokio::net::lookup_host(host).await.unwrap().next().unwrap()
    };
    let proxy = Proxy::start(upstream).await;
    let via_proxy = with_database(
        &crate::pg::server_url().replace(
            &url_host_port(&crate::pg::server_url()),
            &proxy.addr.to_string(),
        ),
        &db.name,
    );
    let apps = replicas(&via_proxy, 2, |_, c| c.health.heartbeat_ttl_secs = 2).await;
    for id in ["a", "b", "c"] {
        apps[0].add_node(id, json!({})).await;
    }
    for id in ["a", "b", "c"] {
        let (s, _) = apps[1]
            .admin_json(
                Method::PUT,
                &format!("/admin/nodes/{id}/heartbeat"),
                Some(json!({"connections": 1})),
            )
            .await;
        assert_eq!(s, 204);
    }
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let users = uids(2000);
    let before = apps[0].assignments(&users).await;
    let rev = revision(&apps[0]).await;

    proxy.cut();
    // Writes and heartbeats answer 503 store_unavailable within 5 s.
    let t = Instant::now();
    let resp = apps[0]
        .admin(Method::POST, "/admin/nodes", Some(node_body("during")))
        .await;
    let took = t.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "store_unavailable");
    assert!(took < Duration::from_secs(5), "answered in {took:?}");
    println!("first write during the outage answered 503 in {took:?}");
    let t = Instant::now();
    let (s, body) = apps[1]
        .admin_json(
            Method::PUT,
            "/admin/nodes/a/heartbeat",
            Some(json!({"connections": 1})),
        )
        .await;
    assert_eq!((s, body["code"].as_str()), (503, Some("store_unavailable")));
    assert!(t.elapsed() < Duration::from_secs(5));
    // For longer than the TTL, every answer stays what it was.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        for app in &apps {
            assert_eq!(app.assignments(&users).await, before);
            let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
            assert_eq!(ready.status(), 200);
        }
        // Admin reads answer from memory.
        let (s, _) = apps[1].admin_json(Method::GET, "/admin/nodes", None).await;
        assert_eq!(s, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for app in &apps {
        assert!(
            // The full suite runs alongside: allow a loaded machine time.
            eventually(Duration::from_secs(15), || async {
                app.metrics().await.contains("imroute_store_up 0")
            })
            .await
        );
        let (_, c) = app.admin_json(Method::GET, "/admin/cluster", None).await;
        assert_eq!(
            (&c["store"]["up"], &c["converged"]),
            (&json!(false), &json!(false))
        );
    }

    proxy.restore();
    // Keep the nodes alive as they would be.
    for app in &apps {
        assert!(
            eventually(Duration::from_secs(10), || async {
                let (s, _) = app
                    .admin_json(Method::POST, "/admin/nodes", Some(node_body("after")))
                    .await;
                s == 201 || s == 409
            })
            .await
        );
    }
    for id in ["a", "b", "c"] {
        let (s, _) = apps[0]
            .admin_json(
                Method::PUT,
                &format!("/admin/nodes/{id}/heartbeat"),
                Some(json!({"connections": 2})),
            )
            .await;
        assert_eq!(s, 204);
    }
    assert!(converge(&apps, None, Duration::from_secs(5)).await);
    assert_ne!(revision(&apps[0]).await, rev, "the new node is live");
    for app in &apps {
        let m = app.metrics().await;
        assert!(
            !m.contains("imroute_health_transitions_total{to=\"unhealthy\"}"),
            "no node turned unhealthy because of the outage:\n{m}"
        );
        assert!(m.contains("imroute_store_up 1"));
    }
}

fn url_host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split(['/', '?']).next().unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

#[tokio::test]
async fn a_killed_replica_is_dropped_its_probes_move_and_it_catches_up_on_restart() {
    let Some(db) = TestDb::create("sigkill").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = |id: &str| {
        vec![
            ("IMROUTE_DATABASE_URL", db.url.clone()),
            ("IMROUTE_REPLICA_ID", id.to_owned()),
        ]
    };
    // The child starts first, so it takes the leader lock.
    let mut child = Process::start(dir.path(), &env("child"));
    let client = reqwest::Client::new();
    let metric = |addr: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{addr}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(child.addr.clone())
                .await
                .contains("imroute_leader 1")
        })
        .await
    );
    let apps = replicas(&db.url, 2, |_, c| {
        c.health.probe.enabled = true;
        c.health.probe.interval_ms = 300;
    })
    .await;
    apps[0].add_node("gw-1", json!({})).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, c) = apps[0]
                .admin_json(Method::GET, "/admin/cluster", None)
                .await;
            c["replicas"].as_array().unwrap().len() == 3 && c["converged"] == true
        })
        .await
    );

    child.child.kill().unwrap();
    child.child.wait().unwrap();
    let killed = Instant::now();
    // Another replica takes the lock within two probe intervals (after the
    // server has seen the connection go).
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m0 = apps[0].metrics().await;
            let m1 = apps[1].metrics().await;
            m0.contains("imroute_leader 1") || m1.contains("imroute_leader 1")
        })
        .await
    );
    println!(
        "leader lock taken over {:?} after the kill",
        killed.elapsed()
    );
    // The others keep serving and drop it from the registry.
    let resp = apps[1].batch(&["u1", "u2"]).await;
    assert_eq!(resp.status(), 200);
    assert!(
        eventually(Duration::from_secs(8), || async {
            let (_, c) = apps[0]
                .admin_json(Method::GET, "/admin/cluster", None)
                .await;
            let ids: Vec<&str> = c["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap())
                .collect();
            ids == ["r0", "r1"]
        })
        .await
    );
    // Changes made while it was gone reach it when it comes back.
    apps[1].add_node("gw-2", json!({})).await;
    let child = Process::start(dir.path(), &env("child"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let want = revision(&apps[0]).await;
            let r: Value = client
                .get(format!("{}/admin/routing", child.addr))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["revision"] == want.as_str()
        })
        .await
    );
    drop(child);
}

#[tokio::test]
async fn a_replica_started_before_its_database_is_not_ready_until_it_answers() {
    let Some(db) = TestDb::create("start_before_db").await else {
        return;
    };
    let server = crate::pg::server_url();
    let upstream = tokio::net::lookup_host(url_host_port(&server))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    proxy.cut();
    let via_proxy = with_database(
        &server.replace(&url_host_port(&server), &proxy.addr.to_string()),
        &db.name,
    );
    let app = spawn_app_with(|c| c.database_url = via_proxy).await;
    let get = |path: &'static str| app.client.get(app.url(path)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    let resp = app.batch(&["u1"]).await;
    assert_eq!(resp.status(), 503);
    let (status, body) = app
        .admin_json(Method::POST, "/admin/nodes", Some(node_body("gw-1")))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("store_unavailable"))
    );

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get("/readyz").await.unwrap().status() == 200
        })
        .await,
        "ready once the database answers"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (s, _) = app
                .admin_json(Method::POST, "/admin/nodes", Some(node_body("gw-1")))
                .await;
            s == 201
        })
        .await
    );
    assert_eq!(app.batch(&["u1"]).await.status(), 200);
}

#[tokio::test]
async fn a_stall_longer_than_the_ttl_expires_nobody() {
    let Some(db) = TestDb::create("store_stall").await else {
        return;
    };
    let server = crate::pg::server_url();
    let upstream = tokio::net::lookup_host(url_host_port(&server))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let via_proxy = with_database(
        &server.replace(&url_host_port(&server), &proxy.addr.to_string()),
        &db.name,
    );
    let apps = replicas(&via_proxy, 2, |_, c| c.health.heartbeat_ttl_secs = 2).await;
    for id in ["a", "b", "c"] {
        apps[0].add_node(id, json!({})).await;
        assert_eq!(beat(&apps[1], id).await, 204);
    }
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    let users = uids(1000);
    let before = apps[0].assignments(&users).await;

    // Sessions stay open, nothing passes: the case a closed connection does
    // not show (the database's sessions, and the leader lock, survive it).
    // Longer than the TTL (2 s), shorter than the store's time bound (4 s),
    // so the judge's own session comes back with the lock still held.
    proxy.stall();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        for app in &apps {
            assert_eq!(app.assignments(&users).await, before);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();
    // The nodes beat again as soon as heartbeats are taken; for longer than
    // the TTL after that, nobody may have expired.
    for id in ["a", "b", "c"] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                beat(&apps[0], id).await == 204
            })
            .await
        );
    }
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(3) {
        for id in ["a", "b", "c"] {
            assert_eq!(beat(&apps[1], id).await, 204);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for app in &apps {
        let m = app.metrics().await;
        assert!(
            !m.contains("imroute_health_transitions_total{to=\"unhealthy\"}"),
            "no node turned unhealthy because of the stall:\n{m}"
        );
        assert_eq!(app.assignments(&users).await, before);
    }
}

#[tokio::test]
async fn concurrent_read_modify_writes_on_every_replica_lose_no_update() {
    let Some(db) = TestDb::create("no_lost_update").await else {
        return;
    };
    let apps = replicas(&db.url, 3, |_, _| {}).await;
    let mut body = node_body("counter");
    body["weight"] = json!(0);
    let (status, _) = apps[0]
        .admin_json(Method::POST, "/admin/nodes", Some(body))
        .await;
    assert_eq!(status, 201);
    for app in &apps {
        assert!(
            eventually(Duration::from_secs(3), || async {
                app.admin_json(Method::GET, "/admin/nodes/counter", None)
                    .await
                    .0
                    == 200
            })
            .await
        );
    }
    // Each worker adds 1 to the weight 10 times: read (GET, its version),
    // write (PATCH with If-Match), retry on 412. Lost updates would leave
    // the weight below 30.
    let work = apps.iter().map(|app| async move {
        let mut done = 0;
        let mut conflicts = 0;
        while done < 10 {
            let resp = app
                .client
                .get(app.url("/admin/nodes/counter"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
            let node: Value = resp.json().await.unwrap();
            let weight = node["weight"].as_i64().unwrap();
            let resp = app
                .client
                .patch(app.url("/admin/nodes/counter"))
                .bearer_auth(TOKEN)
                .header("If-Match", etag)
                .json(&json!({"weight": weight + 1}))
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                200 => done += 1,
                412 => conflicts += 1,
                other => panic!("PATCH answered {other}"),
            }
        }
        conflicts
    });
    let conflicts: usize = futures_util::future::join_all(work).await.into_iter().sum();
    println!("30 increments over 3 replicas, {conflicts} stale writes refused");
    assert!(converge(&apps, None, Duration::from_secs(3)).await);
    for app in &apps {
        let (_, n) = app
            .admin_json(Method::GET, "/admin/nodes/counter", None)
            .await;
        assert_eq!(n["weight"], 30, "no update lost");
        assert_eq!(n["version"], 31);
    }
}

async fn beat(app: &TestApp, id: &str) -> u16 {
    let path = format!("/admin/nodes/{id}/heartbeat");
    app.admin_json(Method::PUT, &path, Some(json!({"connections": 1})))
        .await
        .0
}

#[tokio::test]
async fn a_frozen_leader_loses_its_lease_and_expiry_goes_on() {
    let Some(db) = TestDb::create("frozen_leader").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let child = Process::start(
        dir.path(),
        &[
            ("IMROUTE_DATABASE_URL", db.url.clone()),
            ("IMROUTE_REPLICA_ID", "frozen".into()),
        ],
    );
    let client = reqwest::Client::new();
    assert!(
        eventually(Duration::from_secs(5), || async {
            client
                .get(format!("{}/metrics", child.addr))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("imroute_leader 1")
        })
        .await
    );
    let apps = replicas(&db.url, 2, |_, c| c.health.heartbeat_ttl_secs = 1).await;
    apps[0].add_node("a", json!({})).await;
    assert_eq!(beat(&apps[1], "a").await, 204);
    // Frozen, not dead: its session (and the advisory lock) lives on.
    let pid = child.child.id().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let frozen = Instant::now();
    let taken = eventually(Duration::from_secs(15), || async {
        let (_, n) = apps[0]
            .admin_json(Method::GET, "/admin/nodes/a", None)
            .await;
        n["health"]["status"] == "unhealthy"
    })
    .await;
    signal("-CONT");
    assert!(
        taken,
        "another replica took the lease and judged the expiry"
    );
    println!(
        "expiry judged {:?} after the leader froze",
        frozen.elapsed()
    );
    let m = format!("{}{}", apps[0].metrics().await, apps[1].metrics().await);
    assert!(m.contains("imroute_leader 1"), "{m}");
    drop(child);
}

/// A replica unseen for a while no longer protects the nodes its file names:
/// another replica may delete one. The first replica then says its file no
/// longer validates, instead of "ok".
#[tokio::test]
async fn a_node_deleted_while_its_files_replica_was_away_marks_that_file_in_error() {
    let Some(db) = TestDb::create("dangling_overrides").await else {
        return;
    };
    let apps = replicas(&db.url, 2, |_, _| {}).await;
    let (status, _) = apps[0]
        .admin_json(Method::POST, "/admin/nodes", Some(node_body("gw-1")))
        .await;
    assert_eq!(status, 201);
    assert!(converge(&apps, None, Duration::from_secs(5)).await);
    std::fs::write(apps[0].overrides_path(), "pins:\n  vip: gw-1\n").unwrap();
    let (status, body) = apps[0]
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    // While replica 0 is live, replica 1 may not delete gw-1.
    let (status, _) = apps[1]
        .admin_json(Method::DELETE, "/admin/nodes/gw-1", None)
        .await;
    assert_eq!(status, 409);
    // Replica 0 "away": its last report and save pushed into the past.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let away = "now() - interval '1 minute'";
    // Replica 0 keeps reporting every second: age it and delete right after,
    // again until the delete lands between two reports.
    let mut deleted = false;
    for _ in 0..20 {
        for sql in [
            format!("UPDATE replicas SET last_seen = {away} WHERE id = 'r0'"),
            format!("UPDATE replica_overrides SET saved_at = {away} WHERE replica_id = 'r0'"),
        ] {
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
        }
        let (status, body) = apps[1]
            .admin_json(Method::DELETE, "/admin/nodes/gw-1", None)
            .await;
        if status == 204 {
            deleted = true;
            break;
        }
        assert_eq!(status, 409, "{body}");
    }
    assert!(deleted, "the delete lands once replica 0 looks away");
    let flagged = eventually(Duration::from_secs(5), || async {
        let (_, o) = apps[0]
            .admin_json(Method::GET, "/admin/overrides", None)
            .await;
        o["status"] == "error"
    })
    .await;
    assert!(flagged, "replica 0 says its file names a deleted node");
    let (_, o) = apps[0]
        .admin_json(Method::GET, "/admin/overrides", None)
        .await;
    assert!(o["error"].as_str().unwrap().contains("gw-1"), "{o}");
    // Routing stays safe: vip falls back to the strategy, or 503 without nodes.
    let resp = apps[0]
        .client
        .get(apps[0].url("/route?uid=vip"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
}

/// The full set of the `bounded` kind is decided by the one judging
/// replica and stored: every replica shows it and routes on it, with one
/// revision.
#[tokio::test]
async fn every_replica_routes_on_the_one_full_set() {
    let Some(db) = TestDb::create("bounded_full_set").await else {
        return;
    };
    let apps = replicas(&db.url, 2, |_, c| c.health.full_eval_interval_ms = 500).await;
    for i in 1..=4 {
        let (status, body) = apps[0]
            .admin_json(
                Method::POST,
                "/admin/nodes",
                Some(node_body(&format!("gw-{i}"))),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    crate::bounded::activate_bounded(&apps[1], json!({})).await;
    assert!(converge(&apps, None, Duration::from_secs(5)).await);
    // Loads reported to either replica.
    for i in 1..=4 {
        let app = &apps[i % 2];
        let load = if i == 1 { 8000 } else { 1000 };
        assert!(
            eventually(Duration::from_secs(5), || async {
                app.admin(
                    Method::PUT,
                    &format!("/admin/nodes/gw-{i}/heartbeat"),
                    Some(json!({"connections": load})),
                )
                .await
                .status()
                    == 204
            })
            .await
        );
    }
    for app in &apps {
        assert!(
            eventually(Duration::from_secs(10), || async {
                crate::bounded::is_full(app, "gw-1").await
            })
            .await,
            "every replica shows gw-1 full"
        );
    }
    assert!(converge(&apps, None, Duration::from_secs(5)).await);
    let users = uids(2000);
    for app in &apps {
        let assigned = app.assignments(&users).await;
        assert!(!assigned.values().any(|n| n == "gw-1"));
    }
    assert_eq!(
        apps[0].assignments(&users).await,
        apps[1].assignments(&users).await
    );
    // Heartbeats keep coming through both replicas for three periods: the
    // stored flag survives them (an upsert must not reset it) and nothing
    // flaps.
    let revision = revision(&apps[0]).await;
    let until = Instant::now() + Duration::from_millis(1600);
    let mut beats = 0;
    while Instant::now() < until {
        for (i, app) in apps.iter().enumerate() {
            let status = app
                .admin(
                    Method::PUT,
                    "/admin/nodes/gw-1/heartbeat",
                    Some(json!({"connections": 8000 + i})),
                )
                .await
                .status();
            assert_eq!(status, 204);
            beats += 1;
        }
        for app in &apps {
            assert!(
                crate::bounded::is_full(app, "gw-1").await,
                "after {beats} heartbeats"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(converge(&apps, Some(&revision), Duration::from_secs(5)).await);
}
