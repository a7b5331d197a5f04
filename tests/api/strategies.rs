use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn strategy_kinds_list_the_plugins_with_schemas() {
    let app = spawn_app().await;
    let (status, kinds) = app
        .admin_json(Method::GET, "/admin/strategy-kinds", None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hash", "weighted", "region", "bounded"]);
    for k in kinds.as_array().unwrap() {
        assert!(!k["description"].as_str().unwrap().is_empty());
        assert_eq!(k["params_schema"]["type"], "object");
    }
    let region = &kinds[2]["params_schema"]["properties"];
    assert!(region.get("default_region").is_some() && region.get("fallback").is_some());
}

#[tokio::test]
async fn a_fresh_database_has_the_default_hash_strategy_active() {
    let app = spawn_app().await;
    let (_, list) = app.admin_json(Method::GET, "/admin/strategies", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["kind"], "hash");
    assert_eq!(list[0]["active"], true);
}

#[tokio::test]
async fn strategies_are_stored_validated_and_deleted() {
    let app = spawn_app().await;
    let body =
        json!({"kind": "region", "params": {"default_region": "eu", "fallback": {"eu": ["us"]}}});
    let resp = app
        .admin(
            Method::PUT,
            "/admin/strategies/eu-first",
            Some(body.clone()),
        )
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let (status, s) = app
        .admin_json(Method::PUT, "/admin/strategies/eu-first", Some(body))
        .await;
    assert_eq!(status, 200);
    assert_eq!(s["version"], 2);
    assert_eq!(s["active"], false);
    let (status, s) = app
        .admin_json(Method::GET, "/admin/strategies/eu-first", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(s["params"]["fallback"]["eu"], json!(["us"]));

    let bad = [
        (json!({"kind": "nope"}), "kind:"),
        (json!({"kind": "hash", "params": {"x": 1}}), "params.x"),
        (
            json!({"kind": "region", "params": {"default_region": 5}}),
            "params.default_region",
        ),
        (
            json!({"kind": "region", "params": {"fallback": {"eu": ["ok", "b a d"]}}}),
            "params.fallback.eu[1]",
        ),
        (
            json!({"kind": "region", "params": {"inner": "random"}}),
            "params.inner",
        ),
        (
            json!({"kind": "region", "params": {"fallback": {"eu": (0..33).map(|i| format!("r{i}")).collect::<Vec<_>>()}}}),
            "params.fallback.eu: at most 32 regions",
        ),
        (
            json!({"kind": "region", "params": {"fallback": {"eu": ["us", "eu"]}}}),
            "params.fallback.eu[1]",
        ),
        (
            json!({"kind": "region", "params": {"colour": "red"}}),
            "params.colour",
        ),
        (json!({"kind": "weighted", "params": []}), "params"),
        (json!({"name": "other", "kind": "hash"}), "name:"),
    ];
    for (body, field) in bad {
        let (status, err) = app
            .admin_json(
                Method::PUT,
                "/admin/strategies/eu-first",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            err["msg"].as_str().unwrap().starts_with(field),
            "{body} -> {err}"
        );
    }
    let (_, s) = app
        .admin_json(Method::GET, "/admin/strategies/eu-first", None)
        .await;
    assert_eq!(s["version"], 2, "refused writes change nothing");

    assert_eq!(
        app.admin(Method::DELETE, "/admin/strategies/eu-first", None)
            .await
            .status(),
        204
    );
    assert_eq!(
        app.admin(Method::GET, "/admin/strategies/eu-first", None)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.admin(Method::DELETE, "/admin/strategies/eu-first", None)
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn the_active_strategy_cannot_be_deleted() {
    let app = spawn_app().await;
    let (status, err) = app
        .admin_json(Method::DELETE, "/admin/strategies/default", None)
        .await;
    assert_eq!(status, 409);
    assert_eq!(err["code"], "conflict");
}

#[tokio::test]
async fn switching_strategy_is_live_before_the_response() {
    let app = spawn_app().await;
    for (id, region, weight) in [
        ("eu-1", "eu", 100),
        ("eu-2", "eu", 100),
        ("us-1", "us", 100),
        ("us-2", "us", 1),
    ] {
        app.add_node(id, json!({"region": region, "weight": weight}))
            .await;
    }
    app.admin(
        Method::PUT,
        "/admin/strategies/eu-first",
        Some(json!({"kind": "region", "params": {"default_region": "eu", "fallback": {"eu": ["us"]}}})),
    )
    .await;
    let users = uids(200);
    let before = app.assignments(&users).await;
    assert!(
        before.values().any(|n| n.starts_with("us")),
        "hash spreads over all"
    );

    let (status, routing) = app
        .admin_json(
            Method::PUT,
            "/admin/routing",
            Some(json!({"active_strategy": "eu-first"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(routing["active_strategy"], "eu-first");
    assert_eq!(routing["kind"], "region");
    assert_eq!(routing["nodes_total"], 4);
    assert_eq!(routing["nodes_routable"], 4);
    let after = app.assignments(&users).await;
    assert!(
        after.values().all(|n| n.starts_with("eu")),
        "default region eu"
    );

    // The region hint picks the region.
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let groups: Vec<Value> = app
        .batch_query("region=us", &json!(refs))
        .await
        .json()
        .await
        .unwrap();
    assert!(groups.iter().all(|g| g["region"] == "us"));

    // Draining eu falls back to us.
    for id in ["eu-1", "eu-2"] {
        app.admin(
            Method::PATCH,
            &format!("/admin/nodes/{id}"),
            Some(json!({"state": "draining"})),
        )
        .await;
    }
    let fallback = app.assignments(&users).await;
    assert!(fallback.values().all(|n| n.starts_with("us")));

    let (status, err) = app
        .admin_json(
            Method::PUT,
            "/admin/routing",
            Some(json!({"active_strategy": "missing"})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["active_strategy"], "eu-first");

    // The switch is stored.
    let app = app.restart().await;
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["active_strategy"], "eu-first");
}

#[tokio::test]
async fn weighted_routing_follows_weights_over_http() {
    let app = spawn_app().await;
    app.add_node("big", json!({"weight": 300})).await;
    app.add_node("small", json!({"weight": 100})).await;
    app.admin(
        Method::PUT,
        "/admin/strategies/w",
        Some(json!({"kind": "weighted"})),
    )
    .await;
    app.admin(
        Method::PUT,
        "/admin/routing",
        Some(json!({"active_strategy": "w"})),
    )
    .await;
    let users = uids(4000);
    let a = app.assignments(&users).await;
    let big = a.values().filter(|n| *n == "big").count();
    // Expected 3000; 5 standard deviations is about 137.
    assert!((2860..=3140).contains(&big), "big got {big}");
}
