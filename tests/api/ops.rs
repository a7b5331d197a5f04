use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// A server whose store answered at start is live and ready. This is only
/// the positive case: the 503 of a replica whose store does not answer yet is
/// `cluster::a_replica_started_before_its_database_is_not_ready_until_it_answers`.
#[tokio::test]
async fn a_server_whose_store_answers_is_live_and_ready() {
    let app = spawn_app().await;
    let h = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");
}

#[tokio::test]
async fn metrics_count_requests_latency_and_routed_users() {
    let app = spawn_app().await;
    app.add_node("gw-1", json!({})).await;
    assert_eq!(app.batch(&["a", "b", "c"]).await.status(), 200);
    assert_eq!(app.batch(&[""]).await.status(), 400);
    let m = app.metrics().await;
    assert!(
        m.contains(r#"imroute_http_requests_total{endpoint="/route/batch",status="200"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"imroute_http_requests_total{endpoint="/route/batch",status="400"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"imroute_http_request_duration_seconds_count{endpoint="/route/batch"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"imroute_users_routed_total{node="gw-1"} 3"#),
        "{m}"
    );
}

#[tokio::test]
async fn swagger_ui_and_the_spec_are_served() {
    let app = spawn_app().await;
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "Swagger UI page");
    let spec = app.get_json("/openapi.json").await;
    for path in [
        "/route/batch",
        "/route",
        "/admin/nodes",
        "/admin/nodes/{id}",
        "/admin/routing",
        "/admin/strategies/{name}",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} documented");
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["AdminAuth"]["scheme"],
        "bearer"
    );
    let yaml = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(yaml, imroute::api::openapi_yaml());
}

#[tokio::test]
async fn the_committed_openapi_yaml_equals_what_the_code_serves() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert!(
        committed == imroute::api::openapi_yaml(),
        "openapi.yaml is stale: run `cargo run -- openapi > openapi.yaml`"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_a_given_one() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(!r.headers()["x-request-id"].is_empty());
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let (status, _) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(status, 200);
}
