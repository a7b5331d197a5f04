//! Candidate lists for client-side failover: `candidates=K` on `/route` and
//! `/route/batch`, and the guarantee behind them.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["node_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn candidates(app: &TestApp, uid: &str, k: usize) -> Value {
    app.get_json(&format!("/route?uid={uid}&candidates={k}"))
        .await
}

async fn nodes(app: &TestApp) {
    for (id, region) in [
        ("gw-1", "eu"),
        ("gw-2", "eu"),
        ("gw-3", "us"),
        ("gw-4", "us"),
        ("gw-5", "ap"),
    ] {
        app.add_node(
            id,
            json!({"region": region, "intranet": {"tcp_addr": format!("10.0.0.{}:5100", &id[3..])}}),
        )
        .await;
    }
}

#[tokio::test]
async fn the_second_candidate_is_where_the_user_goes_when_the_first_is_gone() {
    let app = spawn_app().await;
    nodes(&app).await;
    let users = uids(60);
    let mut lists = HashMap::new();
    for u in &users {
        let answer = candidates(&app, u, 3).await;
        let list = ids(&answer["candidates"]);
        assert_eq!(list.len(), 3, "{answer}");
        assert_eq!(list.iter().collect::<HashSet<_>>().len(), 3, "{answer}");
        assert_eq!(
            answer["node_id"],
            list[0].as_str(),
            "the first is the answer"
        );
        let first = &answer["candidates"][0];
        for field in ["tcp_addr", "ws_addr", "wss_addr", "region", "node_id"] {
            assert_eq!(first[field], answer[field], "{field}");
        }
        // Without candidates, the same node and no list.
        let plain = app.get_json(&format!("/route?uid={u}")).await;
        assert_eq!(plain["node_id"], answer["node_id"]);
        assert!(plain.get("candidates").is_none());
        lists.insert(u.clone(), list);
    }
    // Drain each user's first candidate in turn: the user lands on the
    // second, whose list is the rest of the old one.
    let victim = lists[&users[0]][0].clone();
    let resp = app
        .admin(
            Method::PATCH,
            &format!("/admin/nodes/{victim}"),
            Some(json!({"state": "draining"})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut checked = 0;
    for u in &users {
        let list = &lists[u];
        let now = ids(&candidates(&app, u, 2).await["candidates"]);
        if list[0] == victim {
            assert_eq!(now, list[1..3].to_vec(), "{u}");
            checked += 1;
        } else {
            assert_eq!(now[0], list[0], "{u}: not on the drained node, not moved");
        }
    }
    assert!(checked > 0);
    // Disabled counts the same: disable the second too, and the user goes
    // to the third.
    let second = lists[&users[0]][1].clone();
    let resp = app
        .admin(
            Method::PATCH,
            &format!("/admin/nodes/{second}"),
            Some(json!({"state": "disabled"})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let now = app.get_json(&format!("/route?uid={}", users[0])).await;
    assert_eq!(now["node_id"], lists[&users[0]][2].as_str());
}

#[tokio::test]
async fn region_candidates_follow_the_fallback_order_and_pins_come_first() {
    let app = spawn_app().await;
    nodes(&app).await;
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/strategies/geo",
            Some(json!({"kind": "region", "params": {"fallback": {"eu": ["ap", "us"]}}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/routing",
            Some(json!({"active_strategy": "geo"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer = app
        .get_json("/route?uid=alice&region=eu&candidates=8")
        .await;
    let regions: Vec<&str> = answer["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["eu", "eu", "ap", "us", "us"], "{answer}");
    // Intranet addresses in the list too.
    let intranet = app
        .get_json("/route?uid=alice&region=eu&candidates=2&intranet=1")
        .await;
    assert!(intranet["candidates"][0]["tcp_addr"]
        .as_str()
        .unwrap()
        .starts_with("10.0.0."));
    // A pin leads the list.
    std::fs::create_dir_all(app.overrides_path().parent().unwrap()).unwrap();
    std::fs::write(app.overrides_path(), "pins:\n  alice: gw-4\n").unwrap();
    let pinned = eventually(std::time::Duration::from_secs(15), || async {
        app.get_json("/route?uid=alice&region=eu").await["node_id"] == "gw-4"
    })
    .await;
    assert!(pinned);
    let answer = app
        .get_json("/route?uid=alice&region=eu&candidates=3")
        .await;
    let list = ids(&answer["candidates"]);
    assert_eq!(list[0], "gw-4");
    // The pinned node drained: the pin falls back to the strategy, and the
    // user lands where the list said.
    let resp = app
        .admin(
            Method::PATCH,
            "/admin/nodes/gw-4",
            Some(json!({"state": "draining"})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let answer = app
        .get_json("/route?uid=alice&region=eu&candidates=2")
        .await;
    assert_eq!(ids(&answer["candidates"]), list[1..]);
}

#[tokio::test]
async fn a_batch_groups_users_by_their_whole_list() {
    let app = spawn_app().await;
    nodes(&app).await;
    let users = uids(300);
    let resp = app.batch_query("candidates=2", &json!(users)).await;
    assert_eq!(resp.status(), 200);
    let groups: Vec<Value> = resp.json().await.unwrap();
    let mut seen_lists = HashSet::new();
    let mut seen_uids = 0;
    for g in &groups {
        let list = ids(&g["candidates"]);
        assert!(seen_lists.insert(list.clone()), "one group per list");
        assert_eq!(g["node_id"], list[0].as_str(), "top level is the first");
        assert_eq!(g["tcp_addr"], g["candidates"][0]["tcp_addr"]);
        for u in g["uids"].as_array().unwrap() {
            let one = candidates(&app, u.as_str().unwrap(), 2).await;
            assert_eq!(ids(&one["candidates"]), list, "{u}");
            seen_uids += 1;
        }
    }
    assert_eq!(seen_uids, 300);
    assert!(groups.len() > 5, "5 nodes, ordered pairs: {}", groups.len());
    // Group order, input order and duplicates as without candidates.
    let resp = app
        .batch_query("candidates=1", &json!(["b", "a", "b", "c"]))
        .await;
    let groups: Vec<Value> = resp.json().await.unwrap();
    let all: Vec<&str> = groups
        .iter()
        .flat_map(|g| g["uids"].as_array().unwrap())
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 3);
    assert_eq!(groups[0]["uids"][0], "b");
    let plain: Vec<Value> = app.batch(&["b", "a", "b", "c"]).await.json().await.unwrap();
    assert_eq!(plain.len(), groups.len());
    for (p, g) in plain.iter().zip(&groups) {
        assert_eq!(p["uids"], g["uids"]);
        assert_eq!(p["node_id"], g["node_id"]);
    }
    // K is 1..=8.
    for bad in ["0", "9", "x", "-1", ""] {
        let resp = app
            .batch_query(&format!("candidates={bad}"), &json!(["a"]))
            .await;
        assert_eq!(resp.status(), 400, "candidates={bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["msg"]
                .as_str()
                .unwrap()
                .starts_with("candidates: must be an integer from 1 to 8"),
            "{body}"
        );
        let resp = app
            .client
            .get(app.url(&format!("/route?uid=a&candidates={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
    // More than there are nodes: all of them.
    let answer = candidates(&app, "a", 8).await;
    assert_eq!(answer["candidates"].as_array().unwrap().len(), 5);
    assert_eq!(
        app.batch_query("candidates=3", &json!([]))
            .await
            .text()
            .await
            .unwrap(),
        "[]"
    );
}

/// A node that falls silent (health, not an admin's state change) sends
/// its users to their second candidate.
#[tokio::test]
async fn a_silent_node_sends_its_users_to_their_second_candidate() {
    let app = spawn_app_with(|c| c.health.heartbeat_ttl_secs = 1).await;
    nodes(&app).await;
    let users = uids(100);
    let mut lists = HashMap::new();
    for u in &users {
        lists.insert(u.clone(), ids(&candidates(&app, u, 2).await["candidates"]));
    }
    let victim = lists[&users[0]][0].clone();
    let beat = |id: String| {
        let app = &app;
        async move {
            app.admin(
                Method::PUT,
                &format!("/admin/nodes/{id}/heartbeat"),
                Some(json!({"connections": 1})),
            )
            .await
            .status()
        }
    };
    assert_eq!(beat(victim.clone()).await, 204);
    let revision = app
        .client
        .get(app.url("/route?uid=x"))
        .send()
        .await
        .unwrap()
        .headers()["x-routing-revision"]
        .to_str()
        .unwrap()
        .to_owned();
    let moved = eventually(std::time::Duration::from_secs(15), || async {
        let resp = app
            .client
            .get(app.url("/route?uid=x"))
            .send()
            .await
            .unwrap();
        resp.headers()["x-routing-revision"].to_str().unwrap() != revision
    })
    .await;
    assert!(moved, "{victim} never expired");
    for u in &users {
        let now = app.get_json(&format!("/route?uid={u}")).await;
        let list = &lists[u];
        let want = if list[0] == victim {
            &list[1]
        } else {
            &list[0]
        };
        assert_eq!(now["node_id"], want.as_str(), "{u}");
    }
}

#[tokio::test]
async fn a_batch_with_candidates_holds_max_batch_over_k_uids() {
    let app = spawn_app_with(|c| c.limits.max_batch = 100).await;
    nodes(&app).await;
    let users = uids(26);
    assert_eq!(
        app.batch_query("candidates=4", &json!(users[..25]))
            .await
            .status(),
        200
    );
    let resp = app.batch_query("candidates=4", &json!(users)).await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["msg"].as_str().unwrap().contains("more than 25"),
        "{body}"
    );
    assert_eq!(
        app.batch_query("candidates=1", &json!(uids(100)))
            .await
            .status(),
        200
    );
}

/// Lists repeat node objects: an answer that could pass 4 MiB is refused
/// before any routing, naming how many uids fit.
#[tokio::test]
async fn a_batch_whose_lists_could_be_huge_is_413() {
    let app = spawn_app().await;
    app.add_long_address_nodes(20).await;
    let users = uids(1250);
    let resp = app.batch_query("candidates=8", &json!(users)).await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    let msg = body["msg"].as_str().unwrap();
    assert!(msg.contains("send at most"), "{msg}");
    let fits: usize = msg
        .rsplit("send at most ")
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(fits > 100 && fits < 1250, "{msg}");
    let resp = app.batch_query("candidates=8", &json!(users[..fits])).await;
    assert_eq!(resp.status(), 200);
    let declared: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(declared, body.len());
    assert!(body.len() <= 4 * 1024 * 1024);
    // One candidate: one group per node at most, whatever the uid count.
    let resp = app.batch_query("candidates=1", &json!(uids(10_000))).await;
    assert_eq!(resp.status(), 200);
}
