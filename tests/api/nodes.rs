use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn post_creates_a_node_with_defaults_and_bookkeeping() {
    let app = spawn_app().await;
    let resp = app
        .admin(
            Method::POST,
            "/admin/nodes",
            Some(json!({"id": "gw-1", "external": {"tcp_addr": "[::1]:5100"}})),
        )
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let node: Value = resp.json().await.unwrap();
    assert_eq!(node["id"], "gw-1");
    assert_eq!(node["weight"], 100);
    assert_eq!(node["state"], "active");
    assert_eq!(node["source"], "db");
    assert_eq!(node["version"], 1);
    assert_eq!(node["labels"], json!({}));
    assert_eq!(node["external"]["ws_addr"], "");
    assert_eq!(node["health"]["status"], "unknown");
    assert!(node.get("region").is_none());
    let created = node["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert_eq!(node["created_at"], node["updated_at"]);

    let (status, body) = app
        .admin_json(
            Method::POST,
            "/admin/nodes",
            Some(json!({"id": "gw-1", "external": {"tcp_addr": "10.0.0.1:1"}})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");
}

#[tokio::test]
async fn invalid_nodes_are_400_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let cases = [
        (json!({"id": "bad id"}), "id:"),
        (json!({}), "id:"),
        (json!({"id": "x".repeat(65)}), "id:"),
        (
            json!({"id": "n", "weight": 70000}),
            "weight: must be an integer from 0 to 65535",
        ),
        (json!({"id": "n", "weight": -1}), "weight:"),
        (
            json!({"id": "n", "external": {"tcp_addr": "nohost"}}),
            "external.tcp_addr:",
        ),
        (
            json!({"id": "n", "external": {"tcp_addr": "h:70000"}}),
            "external.tcp_addr:",
        ),
        (
            json!({"id": "n", "external": {"ws_addr": "wss://h"}}),
            "external.ws_addr:",
        ),
        (
            json!({"id": "n", "intranet": {"wss_addr": "ws://h"}}),
            "intranet.wss_addr:",
        ),
        (
            json!({"id": "n", "intranet": {"wss_addr": "wss://h:0/x"}}),
            "intranet.wss_addr:",
        ),
        (json!({"id": "n", "region": "e u"}), "region:"),
        // Every client connects to the external tcp_addr: no node without one.
        (json!({"id": "n"}), "external.tcp_addr: required"),
        (
            json!({"id": "n", "external": {"tcp_addr": "", "ws_addr": "ws://h:1"}}),
            "external.tcp_addr: required",
        ),
        // Values of the wrong type: the field, in the contract's words, and
        // never a framework type name.
        (
            json!({"id": "n", "state": "sleeping"}),
            "state: must be one of active, draining, disabled",
        ),
        (
            json!({"id": "n", "weight": "x"}),
            "weight: must be an integer from 0 to 65535",
        ),
        (
            json!({"id": "n", "weight": 1.5}),
            "weight: must be an integer from 0 to 65535",
        ),
        (json!({"id": "n", "colour": "red"}), "colour: unknown field"),
        (
            json!({"id": "n", "labels": {"a": 1}}),
            "labels.a: must be a string",
        ),
    ];
    for (body, needle) in cases {
        let (status, err) = app
            .admin_json(Method::POST, "/admin/nodes", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} -> {err}");
        assert!(
            err["msg"].as_str().unwrap().contains(needle),
            "{body} -> {err}"
        );
    }
    let (_, nodes) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(nodes, json!([]));
    // Neither PUT nor PATCH may leave a node without its address.
    let (status, _) = app
        .admin_json(
            Method::POST,
            "/admin/nodes",
            Some(json!({"id": "n", "external": {"tcp_addr": "10.0.0.1:1"}})),
        )
        .await;
    assert_eq!(status, 201);
    for (method, body) in [
        (Method::PUT, json!({"id": "n", "weight": 5})),
        (Method::PATCH, json!({"external": {"tcp_addr": ""}})),
    ] {
        let (status, err) = app
            .admin_json(method.clone(), "/admin/nodes/n", Some(body))
            .await;
        assert_eq!(status, 400, "{method}: {err}");
        assert!(
            err["msg"]
                .as_str()
                .unwrap()
                .starts_with("external.tcp_addr: required"),
            "{err}"
        );
    }
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/n", None).await;
    assert_eq!(node["external"]["tcp_addr"], "10.0.0.1:1");
    assert_eq!(node["version"], 1);
}

#[tokio::test]
async fn put_creates_then_replaces_the_whole_node() {
    let app = spawn_app().await;
    let body = json!({"region": "eu", "weight": 7, "labels": {"rack": "r1"},
                      "external": {"tcp_addr": "10.1.1.1:1"}});
    let resp = app
        .admin(Method::PUT, "/admin/nodes/gw-1", Some(body))
        .await;
    assert_eq!(resp.status(), 201);
    let resp = app
        .admin(
            Method::PUT,
            "/admin/nodes/gw-1",
            Some(json!({"id": "gw-1", "external": {"tcp_addr": "10.1.1.2:2"}})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    let node: Value = resp.json().await.unwrap();
    assert_eq!(node["weight"], 100, "omitted fields take their defaults");
    assert!(node.get("region").is_none());
    assert_eq!(node["labels"], json!({}));
    assert_eq!(node["external"]["tcp_addr"], "10.1.1.2:2");
    assert_eq!(node["version"], 2);

    let (status, err) = app
        .admin_json(
            Method::PUT,
            "/admin/nodes/gw-1",
            Some(json!({"id": "gw-2"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(err["msg"].as_str().unwrap().starts_with("id:"));
}

/// A node read with `GET` can be written back with `PUT` (its read-only
/// fields are accepted and ignored), and doing so changes nothing but its
/// version and `updated_at`.
#[tokio::test]
async fn a_node_read_with_get_and_written_back_with_put_is_unchanged() {
    let app = spawn_app().await;
    app.add_node(
        "gw-1",
        json!({"region": "eu", "weight": 7, "state": "draining",
               "labels": {"rack": "r1", "zone": "z2"},
               "external": {"tcp_addr": "203.0.113.1:5100", "ws_addr": "ws://203.0.113.1:5200",
                            "wss_addr": "wss://im.example.com:5300"},
               "intranet": {"tcp_addr": "10.1.1.1:5100", "ws_addr": "", "wss_addr": "wss://10.1.1.1/im"}}),
    )
    .await;
    let (_, read) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(read["version"], 1);
    let (status, written) = app
        .admin_json(Method::PUT, "/admin/nodes/gw-1", Some(read.clone()))
        .await;
    assert_eq!(status, 200, "{written}");
    let (_, reread) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(written, reread);
    assert_eq!(reread["version"], 2);
    let (at_read, at_write) = (
        read["updated_at"].as_str().unwrap(),
        reread["updated_at"].as_str().unwrap(),
    );
    assert!(at_write >= at_read, "{at_read} -> {at_write}");
    let without_bookkeeping = |v: &Value| {
        let mut v = v.clone();
        let map = v.as_object_mut().unwrap();
        map.remove("version");
        map.remove("updated_at");
        v
    };
    assert_eq!(without_bookkeeping(&read), without_bookkeeping(&reread));
}

#[tokio::test]
async fn limit_and_after_page_through_the_nodes_in_id_order() {
    let app = spawn_app().await;
    // Created out of id order.
    let nodes = [
        ("g", "eu", "active"),
        ("a", "eu", "active"),
        ("e", "us", "active"),
        ("c", "eu", "draining"),
        ("f", "eu", "active"),
        ("b", "us", "draining"),
        ("d", "eu", "active"),
    ];
    for (id, region, state) in nodes {
        app.add_node(id, json!({"region": region, "state": state}))
            .await;
    }
    /// Follows `rel="next"` links from `first`; the ids of each page.
    async fn pages(app: &TestApp, first: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(first.to_owned());
        while let Some(path) = next {
            assert!(out.len() < 20, "the links never end");
            let resp = app.admin(Method::GET, &path, None).await;
            assert_eq!(resp.status(), 200, "{path}");
            next = resp.headers().get("link").map(|link| {
                let link = link.to_str().unwrap();
                let target = link
                    .strip_prefix('<')
                    .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                    .unwrap_or_else(|| panic!("{path}: Link {link}"));
                target.to_owned()
            });
            let page: Vec<Value> = resp.json().await.unwrap();
            out.push(
                page.iter()
                    .map(|n| n["id"].as_str().unwrap().to_owned())
                    .collect(),
            );
        }
        out
    }
    assert_eq!(
        pages(&app, "/admin/nodes?limit=3").await,
        [vec!["a", "b", "c"], vec!["d", "e", "f"], vec!["g"]]
    );
    // A last page that is full has no link either.
    assert_eq!(
        pages(&app, "/admin/nodes?limit=7").await,
        [vec!["a", "b", "c", "d", "e", "f", "g"]]
    );
    assert_eq!(
        pages(&app, "/admin/nodes?limit=1").await.concat(),
        ["a", "b", "c", "d", "e", "f", "g"]
    );
    // `after` need not be an existing id.
    assert_eq!(
        pages(&app, "/admin/nodes?limit=2&after=bb").await,
        [vec!["c", "d"], vec!["e", "f"], vec!["g"]]
    );
    // Filters carry over to every page.
    assert_eq!(
        pages(&app, "/admin/nodes?region=eu&limit=2").await,
        [vec!["a", "c"], vec!["d", "f"], vec!["g"]]
    );
    assert_eq!(
        pages(&app, "/admin/nodes?region=eu&state=active&limit=2").await,
        [vec!["a", "d"], vec!["f", "g"]]
    );
    assert_eq!(
        pages(&app, "/admin/nodes?state=draining&limit=1").await,
        [vec!["b"], vec!["c"]]
    );
    for bad in ["limit=0", "limit=10001", "limit=-1", "limit=x"] {
        let (status, err) = app
            .admin_json(Method::GET, &format!("/admin/nodes?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    let resp = app
        .admin(Method::GET, "/admin/nodes?limit=10000", None)
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("link").is_none());
}

#[tokio::test]
async fn patch_merges_only_the_fields_given() {
    let app = spawn_app().await;
    app.add_node(
        "gw-1",
        json!({"region": "eu", "weight": 5, "labels": {"a": "b"}}),
    )
    .await;
    let (status, node) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-1",
            Some(json!({"weight": 9, "external": {"wss_addr": "wss://x.example.com/im"}})),
        )
        .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["weight"], 9);
    assert_eq!(node["region"], "eu");
    assert_eq!(node["labels"], json!({"a": "b"}));
    assert_eq!(node["external"]["tcp_addr"], "gw-1.example.com:5100");
    assert_eq!(node["external"]["wss_addr"], "wss://x.example.com/im");
    assert_eq!(node["version"], 2);
    let (_, node) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-1",
            Some(json!({"region": null})),
        )
        .await;
    assert!(node.get("region").is_none());

    let (status, _) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-1",
            Some(json!({"weight": 65536})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/nope",
            Some(json!({"weight": 1})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(node["weight"], 9, "a refused patch changes nothing");
}

#[tokio::test]
async fn list_filters_by_region_and_state() {
    let app = spawn_app().await;
    app.add_node("a", json!({"region": "eu"})).await;
    app.add_node("b", json!({"region": "us", "state": "draining"}))
        .await;
    app.add_node("c", json!({"region": "eu", "state": "disabled"}))
        .await;
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(ids(all), ["a", "b", "c"]);
    let (_, eu) = app
        .admin_json(Method::GET, "/admin/nodes?region=eu", None)
        .await;
    assert_eq!(ids(eu), ["a", "c"]);
    let (_, draining) = app
        .admin_json(Method::GET, "/admin/nodes?state=draining", None)
        .await;
    assert_eq!(ids(draining), ["b"]);
    let (_, both) = app
        .admin_json(Method::GET, "/admin/nodes?region=eu&state=active", None)
        .await;
    assert_eq!(ids(both), ["a"]);
    let (status, _) = app
        .admin_json(Method::GET, "/admin/nodes?state=zzz", None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn delete_removes_the_node_and_its_users_move() {
    let app = spawn_app().await;
    for id in ["a", "b", "c"] {
        app.add_node(id, json!({})).await;
    }
    let users = uids(300);
    let before = app.assignments(&users).await;
    let resp = app.admin(Method::DELETE, "/admin/nodes/b", None).await;
    assert_eq!(resp.status(), 204);
    let after = app.assignments(&users).await;
    for u in &users {
        if before[u] != "b" {
            assert_eq!(before[u], after[u], "{u} was not on b and must stay");
        } else {
            assert_ne!(after[u], "b");
        }
    }
    assert_eq!(
        app.admin(Method::DELETE, "/admin/nodes/b", None)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.admin(Method::GET, "/admin/nodes/b", None)
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn draining_and_disabled_nodes_take_no_users_and_only_theirs_move() {
    let app = spawn_app().await;
    for id in ["a", "b", "c", "d"] {
        app.add_node(id, json!({})).await;
    }
    let users = uids(400);
    let before = app.assignments(&users).await;
    for (node, state) in [("b", "draining"), ("c", "disabled")] {
        let (status, _) = app
            .admin_json(
                Method::PATCH,
                &format!("/admin/nodes/{node}"),
                Some(json!({"state": state})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let after = app.assignments(&users).await;
    for u in &users {
        assert!(after[u] == "a" || after[u] == "d");
        if before[u] == "a" || before[u] == "d" {
            assert_eq!(before[u], after[u]);
        }
    }
    // Back to active: the same users come back.
    for node in ["b", "c"] {
        app.admin(
            Method::PATCH,
            &format!("/admin/nodes/{node}"),
            Some(json!({"state": "active"})),
        )
        .await;
    }
    assert_eq!(app.assignments(&users).await, before);
}

#[tokio::test]
async fn weight_zero_takes_no_users() {
    let app = spawn_app().await;
    app.add_node("a", json!({"weight": 0})).await;
    app.add_node("b", json!({})).await;
    let users = uids(100);
    assert!(app.assignments(&users).await.values().all(|n| n == "b"));
}

#[tokio::test]
async fn if_match_guards_against_stale_writes() {
    let app = spawn_app().await;
    app.add_node("a", json!({})).await;
    let stale = app
        .client
        .patch(app.url("/admin/nodes/a"))
        .bearer_auth(&app.token)
        .header("if-match", "\"7\"")
        .json(&json!({"weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let fresh = app
        .client
        .patch(app.url("/admin/nodes/a"))
        .bearer_auth(&app.token)
        .header("if-match", "\"1\"")
        .json(&json!({"weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    let del = app
        .client
        .delete(app.url("/admin/nodes/a"))
        .bearer_auth(&app.token)
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 412);
}

/// Two ids whose 32-bit routing seeds collide cannot both be created: the
/// second is refused naming the first (and so is a file-only twin).
#[tokio::test]
async fn an_id_that_shares_a_routing_seed_with_a_node_is_refused() {
    let app = spawn_app().await;
    app.add_node("gw-27287", json!({})).await;
    let (status, err) = app
        .admin_json(
            Method::POST,
            "/admin/nodes",
            Some(json!({"id": "gw-84159", "external": {"tcp_addr": "10.0.0.2:1"}})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.starts_with("id:") && msg.contains("gw-27287"), "{msg}");
    let (status, _) = app
        .admin_json(
            Method::PUT,
            "/admin/nodes/gw-84159",
            Some(json!({"external": {"tcp_addr": "10.0.0.2:1"}})),
        )
        .await;
    assert_eq!(status, 400);
    // Rewriting the existing node is fine.
    let (status, _) = app
        .admin_json(
            Method::PUT,
            "/admin/nodes/gw-27287",
            Some(json!({"external": {"tcp_addr": "10.0.0.3:1"}})),
        )
        .await;
    assert_eq!(status, 200);
    std::fs::write(
        app.overrides_path(),
        "nodes:\n  gw-84159: {external: {tcp_addr: \"10.0.0.2:1\"}}\n",
    )
    .unwrap();
    let (status, err) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("gw-27287"), "{err}");
    // A weak validator never matches If-Match.
    let resp = app
        .client
        .patch(app.url("/admin/nodes/gw-27287"))
        .bearer_auth(&app.token)
        .header("if-match", "W/\"2\"")
        .json(&json!({"weight": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);
}
