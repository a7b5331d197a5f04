//! WuKongIM's own clients and tools, as their sources call imroute: a bare
//! `GET /route`, browsers from other origins, the CLI's uid -> `tcp_addr`
//! mapping and the SDKs' host:port split.

use std::collections::HashSet;

use reqwest::{header, Method};
use serde_json::{json, Value};

use crate::helpers::*;

async fn three_nodes(app: &TestApp) {
    for (i, id) in ["gw-1", "gw-2", "gw-3"].iter().enumerate() {
        let (status, body) = app
            .admin_json(
                Method::POST,
                "/admin/nodes",
                Some(
                    json!({"id": id, "external": {"tcp_addr": format!("10.0.0.{i}:51{i:02}"),
                            "ws_addr": format!("ws://10.0.0.{i}:5200")}}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

#[tokio::test]
async fn a_bare_get_route_answers_a_node_for_the_caller() {
    let app = spawn_app().await;
    three_nodes(&app).await;
    let first = app.get_json("/route").await;
    let node = first["node_id"]
        .as_str()
        .expect("a node, not an error")
        .to_owned();
    assert!(first["tcp_addr"].as_str().unwrap().contains(':'));
    for path in ["/route", "/route?uid=", "/route?intranet=0"] {
        let again = app.get_json(path).await;
        assert_eq!(
            again["node_id"],
            node.as_str(),
            "{path}: the same caller, the same node"
        );
    }
    // Callers from other addresses spread over the nodes.
    let mut seen = HashSet::new();
    for last in 2..=24u8 {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap();
        let answer: Value = client
            .get(app.url("/route"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.insert(answer["node_id"].as_str().unwrap().to_owned());
    }
    assert!(seen.len() >= 2, "23 callers all got {seen:?}");
}

#[tokio::test]
async fn browsers_may_route_from_any_origin_but_not_administer() {
    let app = spawn_app().await;
    three_nodes(&app).await;
    let origin = "https://chat.example.com";
    // Preflight of a batch.
    let resp = app
        .client
        .request(Method::OPTIONS, app.url("/route/batch?intranet=0"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(h[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_lowercase()
        .contains("content-type"));
    // The cross-origin calls themselves.
    let resp = app
        .client
        .get(app.url("/route?uid=alice"))
        .header(header::ORIGIN, origin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(resp.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap()
        .contains("X-Routing-Revision"));
    let resp = app
        .client
        .post(app.url("/route/batch"))
        .header(header::ORIGIN, origin)
        .json(&json!(["a", "b"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    // Admin answers carry no CORS headers by default, and a preflight is
    // not granted.
    let resp = app
        .client
        .get(app.url("/admin/nodes"))
        .bearer_auth(&app.token)
        .header(header::ORIGIN, origin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    let resp = app
        .client
        .request(Method::OPTIONS, app.url("/admin/nodes"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    // A request without Origin gets no CORS headers at all.
    let resp = app
        .client
        .get(app.url("/route?uid=a"))
        .send()
        .await
        .unwrap();
    assert!(resp
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[tokio::test]
async fn configured_origins_are_the_only_ones_answered() {
    let app = spawn_app_with(|c| {
        c.cors_origins = vec!["https://chat.example.com".into()];
        c.admin_cors_origins = vec!["https://admin.example.com".into()];
    })
    .await;
    three_nodes(&app).await;
    let get = |path: &str, origin: &str| {
        app.client
            .get(app.url(path))
            .bearer_auth(&app.token)
            .header(header::ORIGIN, origin)
            .send()
    };
    let resp = get("/route?uid=a", "https://chat.example.com")
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://chat.example.com"
    );
    assert!(resp.headers()[header::VARY]
        .to_str()
        .unwrap()
        .contains("Origin"));
    let resp = get("/route?uid=a", "https://evil.example.com")
        .await
        .unwrap();
    assert!(resp
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    let resp = get("/admin/nodes", "https://admin.example.com")
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://admin.example.com"
    );
    // The admin preflight needs no token: browsers never send one on it.
    let resp = app
        .client
        .request(Method::OPTIONS, app.url("/admin/nodes/gw-1"))
        .header(header::ORIGIN, "https://admin.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let allow = resp.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap();
    assert!(
        allow.contains("Authorization") && allow.contains("If-Match"),
        "{allow}"
    );
    assert!(resp.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap()
        .contains("PATCH"));
}

/// The CLI maps every uid it sent to its group's `tcp_addr`, and the SDKs
/// split `tcp_addr` into a host and an integer port.
#[tokio::test]
async fn every_uid_comes_back_with_a_tcp_addr_that_splits_into_host_and_port() {
    let app = spawn_app().await;
    three_nodes(&app).await;
    let sent: Vec<String> = (0..500).map(|i| format!("cli-user-{i}")).collect();
    // The CLI sends no `intranet`.
    let resp = app
        .client
        .post(app.url("/route/batch"))
        .json(&sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let groups: Vec<Value> = resp.json().await.unwrap();
    let mut back = HashSet::new();
    for g in &groups {
        let addr = g["tcp_addr"].as_str().unwrap();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        assert!(!host.is_empty(), "{addr}");
        let port: u16 = port.parse().expect("an integer port");
        assert!(port > 0);
        for u in g["uids"].as_array().unwrap() {
            assert!(back.insert(u.as_str().unwrap().to_owned()), "{u} twice");
        }
    }
    let sent: HashSet<String> = sent.into_iter().collect();
    assert_eq!(back, sent);
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        (Method::DELETE, "/route", "GET"),
        (Method::GET, "/route/batch", "POST"),
        (Method::POST, "/admin/routing", "GET, PUT"),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()[header::ALLOW], allow, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "method_not_allowed");
    }
}

/// Behind a load balancer every caller has its address: with the balancer in
/// `trusted_proxies`, its `X-Forwarded-For` names the caller; without, the
/// header is ignored (anyone could write it).
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_caller() {
    for trusted in [true, false] {
        let app = spawn_app_with(|c| {
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1".into()];
            }
        })
        .await;
        three_nodes(&app).await;
        let mut seen = HashSet::new();
        for i in 1..=24 {
            let answer: Value = app
                .client
                .get(app.url("/route"))
                .header("x-forwarded-for", format!("198.51.100.7, 203.0.113.{i}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            seen.insert(answer["node_id"].as_str().unwrap().to_owned());
        }
        if trusted {
            assert!(seen.len() >= 2, "{seen:?}");
        } else {
            assert_eq!(seen.len(), 1, "{seen:?}");
        }
    }
}

/// The address forms load balancers write (`ip:port`, `[v6]`, `[v6]:port`)
/// name the caller as the bare address does; an entry that is no address
/// ends the walk, so a client cannot slip its own key past it; and the key
/// is no uid (no uid length limit applies, `uid=ip:...` is another user).
#[tokio::test]
async fn forwarded_addresses_in_every_form_name_the_same_caller() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.max_uid_bytes = 16;
    })
    .await;
    three_nodes(&app).await;
    let node = |xff: String| {
        let app = &app;
        async move {
            let resp = app
                .client
                .get(app.url("/route"))
                .header("x-forwarded-for", xff.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{xff}");
            let answer: Value = resp.json().await.unwrap();
            answer["node_id"].as_str().unwrap().to_owned()
        }
    };
    let mut seen = HashSet::new();
    for i in 1..=12 {
        let v4 = node(format!("203.0.113.{i}")).await;
        assert_eq!(node(format!("198.51.100.1, 203.0.113.{i}:5678")).await, v4);
        let v6 = node(format!("2001:db8:1234:5678:9abc:def0:1234:{i}")).await;
        assert_eq!(
            node(format!("[2001:db8:1234:5678:9abc:def0:1234:{i}]")).await,
            v6
        );
        assert_eq!(
            node(format!("[2001:db8:1234:5678:9abc:def0:1234:{i}]:443")).await,
            v6
        );
        seen.insert(v4);
        seen.insert(v6);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    // Garbage on the right: the balancer's own peer, whatever is on the left.
    let peer = app.get_json("/route").await["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=12 {
        assert_eq!(node(format!("203.0.113.{i}, unknown")).await, peer);
    }
}
