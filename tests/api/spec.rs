//! The served OpenAPI document as a developer reads it in Swagger UI: every
//! rule a developer relies on, checked on the document itself, then every
//! request example sent unchanged to a real server.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

async fn served_spec(app: &TestApp) -> Value {
    app.get_json("/openapi.json").await
}

#[tokio::test]
async fn the_spec_reads_in_order_and_documents_what_each_operation_answers() {
    let app = spawn_app().await;
    let spec = served_spec(&app).await;
    let tags: Vec<&str> = spec["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tags[0], "Routing", "{tags:?}");
    assert_eq!(*tags.last().unwrap(), "Operations", "{tags:?}");
    let mut examples = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let at = format!("{} {path}", method.to_uppercase());
            assert_eq!(op["tags"].as_array().unwrap().len(), 1, "{at}: one tag");
            let statuses: Vec<&str> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let admin = path.starts_with("/admin");
            assert_eq!(
                statuses.contains(&"401"),
                admin,
                "{at}: 401 iff admin: {statuses:?}"
            );
            let with_if_match = op["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "If-Match"));
            assert_eq!(
                statuses.contains(&"412"),
                with_if_match,
                "{at}: {statuses:?}"
            );
            let body = op.get("requestBody").is_some();
            assert_eq!(statuses.contains(&"415"), body, "{at}: {statuses:?}");
            if method == "get" {
                assert!(!statuses.contains(&"201"), "{at}: {statuses:?}");
            }
            if body {
                let media = op["requestBody"]["content"]
                    .as_object()
                    .unwrap()
                    .values()
                    .next()
                    .unwrap();
                assert!(media.get("example").is_some(), "{at}: an example body");
                examples += 1;
            }
            let text = op.to_string();
            assert!(!text.contains("[`"), "{at}: rustdoc link in {text}");
        }
    }
    assert!(examples >= 7, "{examples}");
    // The schemas say what the server checks.
    let schemas = &spec["components"]["schemas"];
    let weight = &schemas["NodeWrite"]["properties"]["weight"];
    assert_eq!(
        (weight["minimum"].as_i64(), weight["maximum"].as_i64()),
        (Some(0), Some(65535))
    );
    assert!(schemas["NodeWrite"]["properties"]["id"]["pattern"].is_string());
    assert!(schemas["NodeWrite"]["properties"]["region"]["pattern"].is_string());
    assert_eq!(
        schemas["NodePatch"]["properties"]["region"]["nullable"],
        true
    );
    assert_eq!(schemas["Heartbeat"]["additionalProperties"], false);
    let intranet = spec["paths"]["/route/batch"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "intranet")
        .unwrap();
    assert_eq!(intranet["schema"]["enum"], serde_json::json!(["0", "1"]));
    // The page: our title, the token kept across reloads, our document.
    let html = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<title>imroute API</title>"));
    assert!(html.contains("persistAuthorization: true"));
    // Our refined document, not the framework's.
    assert!(html.contains("NodeCreate"));
    // The YAML and the JSON are the same document.
    let yaml = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let from_yaml: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, spec);
}

/// Everything a developer does in Swagger UI from the examples alone:
/// create two nodes (changing only the ids), route a batch, drain one,
/// report a heartbeat, add and switch strategy. Not one 400.
#[tokio::test]
async fn every_request_example_works_as_it_stands() {
    let app = spawn_app().await;
    let spec = served_spec(&app).await;
    let example = |path: &str, method: &str| -> Value {
        spec["paths"][path][method]["requestBody"]["content"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["example"]
            .clone()
    };
    let mut first = example("/admin/nodes", "post");
    let (status, body) = app
        .admin_json(Method::POST, "/admin/nodes", Some(first.clone()))
        .await;
    assert_eq!(status, 201, "{body}");
    first["id"] = "gw-2".into();
    let (status, body) = app
        .admin_json(Method::POST, "/admin/nodes", Some(first))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/nodes/gw-3",
            Some(example("/admin/nodes/{id}", "put")),
        )
        .await;
    assert!(status == 201 || status == 200, "{body}");
    let uids = example("/route/batch", "post");
    let resp = app.batch_query("intranet=0", &uids).await;
    assert_eq!(resp.status(), 200);
    let (status, body) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-2",
            Some(example("/admin/nodes/{id}", "patch")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/nodes/gw-1/heartbeat",
            Some(example("/admin/nodes/{id}/heartbeat", "put")),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/strategies/by-weight",
            Some(example("/admin/strategies/{name}", "put")),
        )
        .await;
    assert!(status == 201 || status == 200, "{body}");
    let (status, body) = app
        .admin_json(
            Method::PUT,
            "/admin/routing",
            Some(example("/admin/routing", "put")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .admin_json(
            Method::POST,
            "/admin/routing/simulate",
            Some(example("/admin/routing/simulate", "post")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["moved"].as_u64().unwrap() > 0, "{body}");
}

/// The fuzzer's classes of findings, one case each.
#[tokio::test]
async fn bad_input_is_named_in_plain_words_and_checked_after_the_token() {
    let app = spawn_app().await;
    app.add_node("gw-1", serde_json::json!({})).await;
    for (method, path, body, want) in [
        (
            Method::PUT,
            "/admin/nodes/gw-1/heartbeat",
            r#"{"conections": 7}"#,
            "conections: unknown field",
        ),
        (
            Method::PUT,
            "/admin/nodes/gw-1/heartbeat",
            r#"{"connections": null}"#,
            "connections: must not be null",
        ),
        (
            Method::PATCH,
            "/admin/nodes/gw-1",
            r#"{"weight": "x"}"#,
            "weight: must be an integer from 0 to 65535",
        ),
        (
            Method::PUT,
            "/admin/routing",
            r#"{"active_strategy": 5}"#,
            "active_strategy: must be a string",
        ),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&app.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{method} {path} {body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["msg"], want, "{method} {path} {body}");
    }
    let (status, err) = app
        .admin_json(Method::GET, "/admin/nodes?state=bogus", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        err["msg"],
        "state: must be one of active, draining, disabled, got \"bogus\""
    );
    // Long keys with control characters are cut and escaped, not echoed.
    let key = format!("{}\u{7}x", "k".repeat(2000));
    let (status, err) = app
        .admin_json(
            Method::PUT,
            "/admin/strategies/r",
            Some(serde_json::json!({"kind": "region", "params": {"fallback": {key.clone(): ["eu"]}}})),
        )
        .await;
    assert_eq!(status, 400);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.len() < 300 && !msg.contains('\u{7}'), "{msg}");
    // No token: 401, whatever is wrong with the body.
    let resp = app
        .client
        .post(app.url("/admin/nodes"))
        .header("content-type", "application/json")
        .body(r#"{"id": "a", "id": "b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// The checks follow the Content-Type as the handlers read it (any case,
/// `+json`), and an empty body is named as such.
#[tokio::test]
async fn every_json_content_type_gets_the_same_checks() {
    let app = spawn_app().await;
    app.add_node("gw-1", serde_json::json!({})).await;
    for (content_type, body, want) in [
        (
            "Application/JSON",
            r#"{"connections": null}"#,
            "connections: must not be null",
        ),
        (
            "application/vnd.imroute+json",
            r#"{"connections": null}"#,
            "connections: must not be null",
        ),
        ("APPLICATION/JSON; charset=utf-8", "", "body: required"),
        ("application/json", "  ", "body: required"),
    ] {
        let resp = app
            .client
            .put(app.url("/admin/nodes/gw-1/heartbeat"))
            .bearer_auth(&app.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{content_type} {body:?}");
        let answer: Value = resp.json().await.unwrap();
        let msg = answer["msg"].as_str().unwrap();
        assert!(msg.starts_with(want), "{content_type} {body:?}: {msg}");
    }
    let resp = app
        .client
        .patch(app.url("/admin/nodes/gw-1"))
        .bearer_auth(&app.token)
        .header("content-type", "Application/Json")
        .body(r#"{"labels": {"a": 1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["msg"], "labels.a: must be a string");
}
