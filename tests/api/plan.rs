//! Planning: `GET /admin/routing/distribution` and
//! `POST /admin/routing/simulate`, checked against the same changes made for
//! real.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// uid -> node, and the routing revision that answered.
async fn routed(app: &TestApp, users: &[String]) -> (HashMap<String, String>, String) {
    let resp = app.batch_query("intranet=0", &json!(users)).await;
    assert_eq!(resp.status(), 200);
    let revision = resp.headers()["x-routing-revision"]
        .to_str()
        .unwrap()
        .to_owned();
    let groups: Vec<Value> = resp.json().await.unwrap();
    let mut out = HashMap::new();
    for g in groups {
        for u in g["uids"].as_array().unwrap() {
            out.insert(
                u.as_str().unwrap().to_owned(),
                g["node_id"].as_str().unwrap().to_owned(),
            );
        }
    }
    (out, revision)
}

async fn simulate(app: &TestApp, body: Value) -> (u16, Value) {
    app.admin_json(Method::POST, "/admin/routing/simulate", Some(body))
        .await
}

/// (from, to) -> moved uids in sample order.
type Flows = BTreeMap<(String, String), Vec<String>>;

fn flows_between(
    users: &[String],
    before: &HashMap<String, String>,
    after: &HashMap<String, String>,
) -> Flows {
    let mut flows = Flows::new();
    for u in users {
        if before[u] != after[u] {
            flows
                .entry((before[u].clone(), after[u].clone()))
                .or_default()
                .push(u.clone());
        }
    }
    flows
}

fn flows_of(sim: &Value) -> Flows {
    sim["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let uids: Vec<String> = f["uids"]
                .as_array()
                .expect("a uid sample lists the moved uids")
                .iter()
                .map(|u| u.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(f["users"], uids.len());
            (
                (
                    f["from"].as_str().unwrap().to_owned(),
                    f["to"].as_str().unwrap().to_owned(),
                ),
                uids,
            )
        })
        .collect()
}

fn per_node(assigned: &HashMap<String, String>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for node in assigned.values() {
        *out.entry(node.clone()).or_default() += 1;
    }
    out
}

fn users_of(distribution: &Value) -> BTreeMap<String, u64> {
    distribution["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["users"].as_u64().unwrap() > 0)
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_owned(),
                n["users"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Simulates `changes` over `users`, makes them for real with `apply`, and
/// checks that the simulation said exactly what happened: the same uids
/// moved, in the same flows, to a table of the same revision.
async fn simulate_then_apply<F, Fut>(app: &TestApp, users: &[String], changes: Value, apply: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (before, rev_before) = routed(app, users).await;
    let (status, sim) = simulate(
        app,
        json!({"changes": changes.clone(), "sample": {"uids": users}}),
    )
    .await;
    assert_eq!(status, 200, "{sim}");
    assert_eq!(sim["before"]["revision"], rev_before.as_str());
    assert_eq!(users_of(&sim["before"]), per_node(&before));
    apply().await;
    // A health verdict is recorded before the table it changes is served.
    let served = eventually(Duration::from_secs(10), || async {
        routed(app, users).await.1 != rev_before
    })
    .await;
    assert!(served, "{changes}: the change was made");
    let (after, rev_after) = routed(app, users).await;
    assert_eq!(
        sim["after"]["revision"],
        rev_after.as_str(),
        "{changes}: the simulated table is the real one"
    );
    assert_eq!(users_of(&sim["after"]), per_node(&after), "{changes}");
    let real = flows_between(users, &before, &after);
    let moved: usize = real.values().map(Vec::len).sum();
    assert!(moved > 0, "{changes}: the change moves someone");
    assert_eq!(sim["moved"], moved, "{changes}");
    assert_eq!(
        flows_of(&sim),
        real,
        "{changes}: the same uids, the same flows"
    );
    // Largest first.
    let sizes: Vec<u64> = sim["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["users"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
}

async fn put(app: &TestApp, method: Method, path: &str, body: Value) {
    let (status, answer) = app.admin_json(method, path, Some(body)).await;
    assert!(status < 300, "{path}: {status} {answer}");
}

async fn five_nodes(app: &TestApp) {
    for (id, region) in [
        ("gw-1", "eu"),
        ("gw-2", "eu"),
        ("gw-3", "us"),
        ("gw-4", "us"),
        ("gw-5", ""),
    ] {
        let extra = if region.is_empty() {
            json!({})
        } else {
            json!({ "region": region })
        };
        app.add_node(id, extra).await;
    }
}

#[tokio::test]
async fn a_simulated_change_made_for_real_moves_exactly_the_users_it_said() {
    let app = spawn_app_with(|c| c.health.heartbeat_ttl_secs = 1).await;
    five_nodes(&app).await;
    put(
        &app,
        Method::PUT,
        "/admin/strategies/w",
        json!({"kind": "weighted"}),
    )
    .await;
    // With equal weights `weighted` places exactly as `hash` does.
    put(
        &app,
        Method::PATCH,
        "/admin/nodes/gw-4",
        json!({"weight": 250}),
    )
    .await;
    let users: Vec<String> = (0..3000).map(|i| format!("user{i}")).collect();

    // A drain.
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "patch_node", "id": "gw-2", "patch": {"state": "draining"}}]),
        || {
            put(
                &app,
                Method::PATCH,
                "/admin/nodes/gw-2",
                json!({"state": "draining"}),
            )
        },
    )
    .await;
    // A strategy switch.
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "activate_strategy", "name": "w"}]),
        || {
            put(
                &app,
                Method::PUT,
                "/admin/routing",
                json!({"active_strategy": "w"}),
            )
        },
    )
    .await;
    // A weight change.
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "patch_node", "id": "gw-3", "patch": {"weight": 300}}]),
        || {
            put(
                &app,
                Method::PATCH,
                "/admin/nodes/gw-3",
                json!({"weight": 300}),
            )
        },
    )
    .await;
    // An added node.
    let gw6 =
        json!({"id": "gw-6", "region": "eu", "external": {"tcp_addr": "gw-6.example.com:5100"}});
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "put_node", "node": gw6.clone()}]),
        || put(&app, Method::PUT, "/admin/nodes/gw-6", gw6.clone()),
    )
    .await;
    // A deleted node.
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "delete_node", "id": "gw-5"}]),
        || async {
            let resp = app.admin(Method::DELETE, "/admin/nodes/gw-5", None).await;
            assert_eq!(resp.status(), 204);
        },
    )
    .await;
    // A new strategy and its activation, in one plan.
    let eu_first = json!({"kind": "region",
        "params": {"default_region": "eu", "fallback": {"eu": ["us"]}, "inner": "weighted"}});
    simulate_then_apply(
        &app,
        &users,
        json!([
            {"op": "put_strategy", "name": "eu-first", "strategy": eu_first.clone()},
            {"op": "activate_strategy", "name": "eu-first"}
        ]),
        || async {
            put(
                &app,
                Method::PUT,
                "/admin/strategies/eu-first",
                eu_first.clone(),
            )
            .await;
            put(
                &app,
                Method::PUT,
                "/admin/routing",
                json!({"active_strategy": "eu-first"}),
            )
            .await;
        },
    )
    .await;
    // A health change: gw-1 beats once, then falls silent.
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "set_health", "id": "gw-1", "status": "unhealthy"}]),
        || async {
            put(
                &app,
                Method::PUT,
                "/admin/nodes/gw-1/heartbeat",
                json!({"connections": 1}),
            )
            .await;
            let expired = eventually(Duration::from_secs(15), || async {
                app.get_json_admin("/admin/nodes/gw-1").await["health"]["status"] == "unhealthy"
            })
            .await;
            assert!(expired, "gw-1 never expired");
        },
    )
    .await;
    // And its recovery.
    simulate_then_apply(
        &app,
        &users,
        json!([{"op": "set_health", "id": "gw-1", "status": "healthy"}]),
        || {
            put(
                &app,
                Method::PUT,
                "/admin/nodes/gw-1/heartbeat",
                json!({"connections": 1}),
            )
        },
    )
    .await;
}

#[tokio::test]
async fn a_simulation_writes_nothing() {
    let app = spawn_app().await;
    five_nodes(&app).await;
    let users = uids(500);
    let (before, revision) = routed(&app, &users).await;
    let nodes = app.get_json_admin("/admin/nodes").await;
    let audit = app.get_json_admin("/admin/audit?limit=1000").await;
    let routing = app.get_json_admin("/admin/routing").await;
    let routed_series = |m: String| -> Vec<String> {
        m.lines()
            .filter(|l| l.starts_with("imroute_users_routed_total"))
            .map(str::to_owned)
            .collect()
    };
    let metrics = routed_series(app.metrics().await);
    let (status, sim) = simulate(
        &app,
        json!({"changes": [
            {"op": "delete_node", "id": "gw-1"},
            {"op": "patch_node", "id": "gw-2", "patch": {"state": "disabled", "weight": 1}},
            {"op": "put_node", "node": {"id": "gw-9", "external": {"tcp_addr": "x.example.com:1"}}},
            {"op": "set_health", "id": "gw-3", "status": "unhealthy"},
            {"op": "put_strategy", "name": "w", "strategy": {"kind": "weighted"}},
            {"op": "activate_strategy", "name": "w"}
        ], "sample": {"count": 200000, "seed": 3}}),
    )
    .await;
    assert_eq!(status, 200, "{sim}");
    assert!(sim["moved"].as_u64().unwrap() > 0);
    assert!(
        sim["flows"][0].get("uids").is_none(),
        "synthetic users are not listed"
    );
    assert_ne!(sim["after"]["revision"], revision.as_str());
    let (after, revision_after) = routed(&app, &users).await;
    assert_eq!(after, before);
    assert_eq!(revision_after, revision);
    assert_eq!(app.get_json_admin("/admin/nodes").await, nodes);
    assert_eq!(app.get_json_admin("/admin/audit?limit=1000").await, audit);
    assert_eq!(app.get_json_admin("/admin/routing").await, routing);
    assert!(app
        .get_json_admin("/admin/strategies")
        .await
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["name"] != "w"));
    // The batch above counted 500 more users; the simulation none.
    let now = routed_series(app.metrics().await);
    let total = |series: &[String]| -> f64 {
        series
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(total(&now), total(&metrics) + 500.0);
    // Nothing reached the store either: a restart serves the same.
    let app = app.restart().await;
    assert_eq!(app.get_json_admin("/admin/nodes").await, nodes);
    assert_eq!(routed(&app, &users).await.1, revision);
}

#[tokio::test]
async fn the_distribution_sums_to_the_sample_and_follows_the_served_table() {
    let app = spawn_app().await;
    five_nodes(&app).await;
    let (_, revision) = routed(&app, &uids(3)).await;
    let d = app
        .get_json_admin("/admin/routing/distribution?sample=20000&seed=7")
        .await;
    assert_eq!(d["revision"], revision.as_str());
    assert_eq!(d["sample_size"], 20000);
    assert_eq!(d["unrouted"], 0);
    let nodes = d["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    let sum: u64 = nodes.iter().map(|n| n["users"].as_u64().unwrap()).sum();
    assert_eq!(sum, 20000);
    let shares: f64 = nodes.iter().map(|n| n["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-5, "{shares}");
    let max = nodes
        .iter()
        .map(|n| n["users"].as_u64().unwrap())
        .max()
        .unwrap();
    let expected = max as f64 / 4000.0;
    assert!((d["max_over_mean"].as_f64().unwrap() - expected).abs() < 1e-5);
    // Deterministic per seed; another seed is another sample.
    let again = app
        .get_json_admin("/admin/routing/distribution?sample=20000&seed=7")
        .await;
    assert_eq!(again, d);
    let other = app
        .get_json_admin("/admin/routing/distribution?sample=20000&seed=8")
        .await;
    assert_ne!(other["nodes"], d["nodes"]);
    // The synthetic users are `sim-{seed}-{i}`: routing them gives the same counts.
    let synthetic: Vec<String> = (0..2000).map(|i| format!("sim-5-{i}")).collect();
    let (assigned, _) = routed(&app, &synthetic).await;
    let d = app
        .get_json_admin("/admin/routing/distribution?sample=2000&seed=5")
        .await;
    assert_eq!(users_of(&d), per_node(&assigned));
    // Seeds are any u64.
    let big = app
        .get_json_admin("/admin/routing/distribution?sample=10&seed=18446744073709551615")
        .await;
    assert_eq!(big["sample_size"], 10);
    // Defaults: 100000 users from seed 1.
    let d = app.get_json_admin("/admin/routing/distribution").await;
    assert_eq!(d["sample_size"], 100000);
    // A drained node is not routable and not listed.
    put(
        &app,
        Method::PATCH,
        "/admin/nodes/gw-5",
        json!({"state": "draining"}),
    )
    .await;
    let d = app
        .get_json_admin("/admin/routing/distribution?sample=1000")
        .await;
    assert_eq!(d["nodes"].as_array().unwrap().len(), 4);
    assert!(d["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["node_id"] != "gw-5"));
}

#[tokio::test]
async fn planning_needs_the_token_and_bad_input_is_400_naming_it() {
    let app = spawn_app().await;
    five_nodes(&app).await;
    for (method, path) in [
        (Method::GET, "/admin/routing/distribution"),
        (Method::POST, "/admin/routing/simulate"),
    ] {
        let resp = app
            .client
            .request(method, app.url(path))
            .json(&json!({"changes": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    for (query, needle) in [
        ("sample=0", "sample: must be an integer from 1 to 1000000"),
        (
            "sample=1000001",
            "sample: must be an integer from 1 to 1000000",
        ),
        ("seed=-1", "seed: must be an integer of at least 0"),
        ("region=%20bad", "region: must match"),
    ] {
        let (status, body) = app
            .admin_json(
                Method::GET,
                &format!("/admin/routing/distribution?{query}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["msg"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let cases = [
        (
            json!([{"op": "patch_node", "id": "gw-1", "patch": {"weight": "x"}}]),
            "changes[0].patch.weight: must be an integer from 0 to 65535",
        ),
        (
            json!([{"op": "delete_node", "id": "gw-2"},
                   {"op": "patch_node", "id": "gw-1", "patch": {"weight": 70000}}]),
            "changes[1].patch.weight: must be an integer from 0 to 65535",
        ),
        (
            json!([{"op": "put_node", "node": {"id": "gw-9"}}]),
            "changes[0].node.external.tcp_addr",
        ),
        (
            json!([{"op": "put_node", "node": {"external": {"tcp_addr": "a.example.com:1"}}}]),
            "changes[0].node.id: required",
        ),
        (
            json!([{"op": "patch_node", "id": "gw-1", "patch": {"colour": "red"}}]),
            "changes[0].patch.colour: unknown field",
        ),
        (
            json!([{"op": "rename_node", "id": "gw-1"}]),
            "changes[0].op: must be one of",
        ),
        (json!([{"id": "gw-1"}]), "changes[0].op: required"),
        (json!(["gw-1"]), "changes[0]: must be a JSON object"),
        (
            json!([{"op": "delete_node", "id": "gw-1", "force": true}]),
            "changes[0].force: unknown field",
        ),
        (
            json!([{"op": "delete_node", "id": "nope"}]),
            "changes[0].id: node \"nope\" not found",
        ),
        (
            json!([{"op": "delete_node", "id": "gw-1"}, {"op": "set_health", "id": "gw-1", "status": "unhealthy"}]),
            "changes[1].id: node \"gw-1\" not found",
        ),
        (
            json!([{"op": "set_health", "id": "gw-1", "status": "sick"}]),
            "changes[0].status: must be one of healthy, unhealthy",
        ),
        (
            json!([{"op": "activate_strategy", "name": "nope"}]),
            "changes[0].name: strategy \"nope\" not found",
        ),
        (
            json!([{"op": "put_strategy", "name": "r", "strategy": {"kind": "region", "params": {"inner": "x"}}}]),
            "changes[0].strategy.params.inner",
        ),
        (
            json!([{"op": "put_strategy", "name": "r", "strategy": {"kind": "magic"}}]),
            "changes[0].strategy.kind: unknown strategy kind",
        ),
        (
            json!([{"op": "patch_node", "id": "gw-1", "patch": {"external": {"tcp_addr": ""}}}]),
            "changes[0].patch.external.tcp_addr",
        ),
    ];
    for (changes, needle) in cases {
        let (status, body) = simulate(&app, json!({ "changes": changes })).await;
        assert_eq!(status, 400, "{changes}: {body}");
        let msg = body["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{changes}: {msg}");
    }
    for (body, needle) in [
        (
            json!({"changes": [], "sample": {"count": 5, "uids": ["a"]}}),
            "sample: give either count and seed, or uids",
        ),
        (
            json!({"changes": [], "sample": {"count": 0}}),
            "sample.count: must be an integer from 1 to 1000000",
        ),
        (
            json!({"changes": [], "sample": {"uids": ["ok", ""]}}),
            "sample.uids[1]",
        ),
        (
            json!({"changes": [], "region": "no way"}),
            "region: must match",
        ),
        (
            json!({"changes": [], "sample": {"uids": []}}),
            "sample.uids: at least one",
        ),
        (
            json!({"changes": [{"op": "put_strategy", "name": "r", "strategy": {"kind": "region",
                "params": {"fallback": {"eu": ["us", "us"]}}}}]}),
            "changes[0].strategy.params.fallback.eu[1]",
        ),
        (json!({"sample": {"count": 5}}), "changes: required"),
        (json!({"changes": [], "extra": 1}), "extra: unknown field"),
    ] {
        let (status, answer) = simulate(&app, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let msg = answer["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // No changes: nothing moves.
    let (status, sim) = simulate(&app, json!({"changes": [], "sample": {"count": 1000}})).await;
    assert_eq!(status, 200, "{sim}");
    assert_eq!(sim["moved"], 0);
    assert_eq!(sim["flows"], json!([]));
    assert_eq!(sim["before"], sim["after"]);
    // The overrides file still guards its nodes.
    std::fs::create_dir_all(app.overrides_path().parent().unwrap()).unwrap();
    std::fs::write(app.overrides_path(), "pins:\n  vip: gw-4\n").unwrap();
    let reloaded = eventually(Duration::from_secs(15), || async {
        app.get_json_admin("/admin/overrides").await["effective"]["pins"]["vip"] == "gw-4"
    })
    .await;
    assert!(reloaded, "{}", app.get_json_admin("/admin/overrides").await);
    let (status, body) = simulate(
        &app,
        json!({"changes": [{"op": "delete_node", "id": "gw-4"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("pins.vip"), "{body}");
}

#[tokio::test]
async fn a_change_that_leaves_no_node_shows_users_going_nowhere() {
    let app = spawn_app().await;
    app.add_node("only", json!({})).await;
    let (status, sim) = simulate(
        &app,
        json!({"changes": [{"op": "patch_node", "id": "only", "patch": {"state": "disabled"}}],
               "sample": {"count": 100}}),
    )
    .await;
    assert_eq!(status, 200, "{sim}");
    assert_eq!(sim["moved"], 100);
    assert_eq!(sim["moved_fraction"], 1.0);
    assert_eq!(sim["after"]["unrouted"], 100);
    assert_eq!(sim["after"]["nodes"], json!([]));
    assert_eq!(
        sim["flows"],
        json!([{"from": "only", "to": null, "users": 100}])
    );
}

/// Made one by one, the first change the state refuses stops the rest: a
/// simulation names that one, even when a later one is malformed. And a
/// plan is bounded.
#[tokio::test]
async fn the_first_refused_change_is_named_and_plans_are_bounded() {
    let app = spawn_app().await;
    five_nodes(&app).await;
    let (status, body) = simulate(
        &app,
        json!({"changes": [
            {"op": "delete_node", "id": "nope"},
            {"op": "patch_node", "id": "gw-1", "patch": {"weight": "x"}}
        ]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["msg"].as_str().unwrap().starts_with("changes[0].id"),
        "{body}"
    );
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"op": "set_health", "id": "gw-1", "status": "healthy"}))
        .collect();
    let (status, body) = simulate(&app, json!({ "changes": many })).await;
    assert_eq!(status, 400);
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .starts_with("changes: at most 1000"),
        "{body}"
    );
}

/// A plan whose client has gone stops soon after: its slot (two plans run
/// at once) is free for the next one long before the plan would have ended.
#[tokio::test]
async fn a_plan_whose_client_left_frees_its_slot() {
    let app = spawn_app().await;
    for i in 0..60 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    let body = json!({"changes": [{"op": "patch_node", "id": "gw-1", "patch": {"state": "draining"}}],
                      "sample": {"count": 1000000}});
    // How long one plan takes here.
    let started = std::time::Instant::now();
    let (status, _) = simulate(&app, body.clone()).await;
    assert_eq!(status, 200);
    let whole = started.elapsed();
    // Two plans taking both slots, their clients gone after 100 ms.
    for _ in 0..2 {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let sent = client
            .post(app.url("/admin/routing/simulate"))
            .bearer_auth(&app.token)
            .json(&body)
            .send()
            .await;
        assert!(sent.is_err(), "the client gave up");
    }
    let started = std::time::Instant::now();
    let d = app
        .get_json_admin("/admin/routing/distribution?sample=10")
        .await;
    assert_eq!(d["sample_size"], 10);
    let waited = started.elapsed();
    assert!(
        waited < whole / 2,
        "waited {waited:?} for a slot; a whole plan takes {whole:?}"
    );
}
