use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

async fn raw_batch(app: &TestApp, content_type: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/route/batch?intranet=0"))
        .body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn batch_route_rejects_an_empty_uid_naming_its_index() {
    let app = spawn_app().await;
    app.add_node("a", json!({})).await;
    let body = expect_error(app.batch(&["u0", "u1", "u2", ""]).await, 400, "invalid_uid").await;
    assert_eq!(body["msg"], "uid at index 3 is empty");
}

#[tokio::test]
async fn malformed_bodies_are_400_never_422() {
    let app = spawn_app().await;
    app.add_node("a", json!({})).await;
    let ct = Some("application/json");
    expect_error(raw_batch(&app, ct, r#"["a","#).await, 400, "invalid_json").await;
    expect_error(
        raw_batch(&app, ct, r#"{"uids":["a"]}"#).await,
        400,
        "invalid_body",
    )
    .await;
    expect_error(raw_batch(&app, ct, "").await, 400, "invalid_body").await;
    expect_error(raw_batch(&app, ct, r#"["a",1]"#).await, 400, "invalid_uid").await;
    expect_error(
        raw_batch(&app, ct, r#"["a",null]"#).await,
        400,
        "invalid_uid",
    )
    .await;
    expect_error(
        raw_batch(&app, ct, r#"["a\u0007"]"#).await,
        400,
        "invalid_uid",
    )
    .await;
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    expect_error(raw_batch(&app, ct, &deep).await, 400, "invalid_uid").await;
}

#[tokio::test]
async fn bad_query_values_are_400() {
    let app = spawn_app().await;
    app.add_node("a", json!({})).await;
    let body = expect_error(
        app.batch_query("intranet=yes", &json!(["a"])).await,
        400,
        "invalid_query",
    )
    .await;
    assert!(body["msg"].as_str().unwrap().starts_with("intranet:"));
    expect_error(
        app.batch_query("region=%20bad", &json!(["a"])).await,
        400,
        "invalid_query",
    )
    .await;
    // Bytes that are not UTF-8 are a 400, as they are in a batch body.
    for query in ["uid=%FF", "uid=%C3", "uid=a&region=%FE"] {
        let resp = app
            .client
            .get(app.url(&format!("/route?{query}")))
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "invalid_query").await;
    }
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = spawn_app().await;
    app.add_node("a", json!({})).await;
    expect_error(
        raw_batch(&app, Some("text/plain"), r#"["a"]"#).await,
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        raw_batch(&app, None, r#"["a"]"#).await,
        415,
        "unsupported_media_type",
    )
    .await;
    let resp = raw_batch(&app, Some("application/json; charset=utf-8"), r#"["a"]"#).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_the_error_body() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/nope")).send().await.unwrap();
    expect_error(resp, 404, "not_found").await;
    let resp = app
        .client
        .delete(app.url("/route/batch"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 405, "method_not_allowed").await;
    let resp = app
        .admin(Method::GET, "/admin/nodes/does-not-exist", None)
        .await;
    expect_error(resp, 404, "not_found").await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_or_without_content_length() {
    let app = spawn_app_with(|c| c.limits.max_body_bytes = 1024).await;
    app.add_node("a", json!({})).await;
    let big = json!(vec!["x".repeat(50); 100]);
    expect_error(app.batch_query("", &big).await, 413, "payload_too_large").await;

    // Chunked, no Content-Length: the limit holds while reading.
    let addr = app.addr.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /route/batch HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!(
        "[{}\"x\"]",
        "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",".repeat(50)
    );
    stream
        .write_all(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
}

#[tokio::test]
async fn admin_endpoints_need_the_token() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/admin/nodes"),
        (Method::POST, "/admin/nodes"),
        (Method::GET, "/admin/routing"),
        (Method::GET, "/admin/strategies"),
        (Method::GET, "/admin/strategy-kinds"),
        (Method::GET, "/admin/overrides"),
        (Method::DELETE, "/admin/nodes/x"),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        expect_error(resp, 401, "unauthorized").await;
        let resp = app
            .client
            .request(method, app.url(path))
            .bearer_auth("test-admin-token-0123456788")
            .send()
            .await
            .unwrap();
        expect_error(resp, 401, "unauthorized").await;
    }
    // Nothing was created by the refused POST.
    let (_, nodes) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(nodes, json!([]));
}

#[tokio::test]
async fn a_server_without_a_configured_token_makes_a_random_one() {
    let app = spawn_app_with(|c| c.admin_token = None).await;
    assert!(app.token.len() >= 32);
    assert_ne!(app.token, TOKEN);
    let (status, _) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(status, 200);
    let resp = app
        .client
        .get(app.url("/admin/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
