//! Hostile input, concurrency, audit trail, request ids, shutdown.

use std::{collections::HashMap, sync::Arc, time::Duration};

use proptest::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Words that would betray internals in an error message.
const LEAKS: &[&str] = &[
    "sqlx", "sqlite", "src/", ".rs", "panicked", "::", "SELECT", "INSERT", "/tmp",
];

fn assert_no_leak(body: &str) {
    assert_no_leak_beyond(body, "");
}

/// Like `assert_no_leak`, but a word the client itself sent may come back
/// (error messages quote the offending value).
fn assert_no_leak_beyond(body: &str, sent: &str) {
    for word in LEAKS {
        assert!(
            !body.contains(word) || sent.contains(word),
            "{word:?} leaks in {body}"
        );
    }
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&app.token)
        .body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("the server answers");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn hostile_uids_get_400_and_valid_unicode_gets_200() {
    let app = spawn_app().await;
    app.add_node("a", json!({})).await;
    let j = Some("application/json");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("truncated", br#"["a","b"#.to_vec(), 400),
        ("object", br#"{"a":"b"}"#.to_vec(), 400),
        ("number", b"42".to_vec(), 400),
        ("null", b"null".to_vec(), 400),
        ("nested", br#"[["a"]]"#.to_vec(), 400),
        ("object element", br#"[{"a":1}]"#.to_vec(), 400),
        ("bool element", br#"["a",true]"#.to_vec(), 400),
        ("empty uid", br#"[""]"#.to_vec(), 400),
        ("escaped NUL", br#"["a\u0000b"]"#.to_vec(), 400),
        ("raw NUL", b"[\"a\x00b\"]".to_vec(), 400),
        ("newline", br#"["a\nb"]"#.to_vec(), 400),
        ("DEL", "[\"a\u{7f}\"]".as_bytes().to_vec(), 400),
        // A C1 control (U+0085, bytes C2 85), raw, after a clean uid.
        ("raw C1", "[\"a\",\"b\u{85}\"]".as_bytes().to_vec(), 400),
        ("raw C1 alone", b"[\"\xc2\x9f\"]".to_vec(), 400),
        // Whitespace around the array is not screened; what is inside is.
        ("DEL, final newline", b"[\"a\x7f\"]\n".to_vec(), 400),
        (
            "C1, whitespace around",
            " \r\n[\"a\u{85}\"]\n\t".as_bytes().to_vec(),
            400,
        ),
        (
            "raw tab in a uid, final newline",
            b"[\"a\tb\"]\n".to_vec(),
            400,
        ),
        ("final newline", b"[\"a\",\"b\"]\n".to_vec(), 200),
        // U+00A0 shares the lead byte and is not a control.
        ("no-break space", "[\"a\u{a0}b\"]".as_bytes().to_vec(), 200),
        ("invalid utf-8", b"[\"\xff\xfe\"]".to_vec(), 400),
        ("lone surrogate", br#"["\ud800"]"#.to_vec(), 400),
        (
            "too long",
            format!(r#"["{}"]"#, "x".repeat(257)).into_bytes(),
            400,
        ),
        (
            "unicode",
            r#"["用户-1","ユーザー","emoji-🙂","Ünïcödé"]"#.as_bytes().to_vec(),
            200,
        ),
        (
            "max length",
            format!(r#"["{}"]"#, "é".repeat(128)).into_bytes(),
            200,
        ),
        (
            "sql-looking",
            br#"["x'; DROP TABLE nodes;--","../../etc/passwd"]"#.to_vec(),
            200,
        ),
    ];
    for (name, body, want) in cases {
        let (status, text) = send(&app, Method::POST, "/route/batch?intranet=0", j, body).await;
        assert_eq!(status, want, "{name}: {text}");
        assert_no_leak(&text);
        if want == 400 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["status"], 400, "{name}");
        }
    }
    // Unicode uids come back unchanged.
    let groups: Vec<Value> = app
        .batch(&["用户-1", "emoji-🙂"])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(groups[0]["uids"], json!(["用户-1", "emoji-🙂"]));
    assert_eq!(app.batch(&["ok"]).await.status(), 200, "still serving");
}

#[tokio::test]
async fn hostile_admin_input_changes_nothing() {
    let app = spawn_app().await;
    app.add_node("a", json!({"weight": 5})).await;
    let j = Some("application/json");
    type Case<'a> = (Method, &'a str, Option<&'a str>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"x'; DROP TABLE nodes;--"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"../../etc/passwd"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"b","weight":1,"weight":2}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"b","labels":{"k":"v","k":"w"}}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"b","unknown":1}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"b","weight":"heavy"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"b","weight":1e400}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            br#"{"id":"b""#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            "{\"id\":\"b\",\"region\":\"\u{0}\"}".as_bytes().to_vec(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            j,
            (String::from("{\"id\":") + &"[".repeat(5000)).into_bytes(),
            400,
        ),
        (
            Method::POST,
            "/admin/nodes",
            Some("text/plain"),
            br#"{"id":"b"}"#.to_vec(),
            415,
        ),
        (
            Method::POST,
            "/admin/nodes",
            None,
            br#"{"id":"b"}"#.to_vec(),
            415,
        ),
        (Method::PUT, "/admin/nodes/a", j, br#"[1,2]"#.to_vec(), 400),
        (
            Method::PATCH,
            "/admin/nodes/a",
            j,
            br#"{"weight":-5}"#.to_vec(),
            400,
        ),
        (
            Method::PATCH,
            "/admin/nodes/a",
            j,
            br#"{"state":"gone"}"#.to_vec(),
            400,
        ),
        (
            Method::GET,
            "/admin/nodes/..%2F..%2Fetc%2Fpasswd",
            None,
            vec![],
            404,
        ),
        (Method::GET, "/admin/nodes/a'%20OR%201=1", None, vec![], 404),
        (Method::DELETE, "/admin/nodes/a%00", None, vec![], 404),
        (
            Method::PUT,
            "/admin/strategies/x",
            j,
            br#"{"kind":"hash","params":{"a":1}}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/admin/strategies/bad%20name",
            j,
            br#"{"kind":"hash"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/admin/routing",
            j,
            br#"{"active_strategy":"'; --"}"#.to_vec(),
            400,
        ),
        (Method::GET, "/admin/audit?limit=0", None, vec![], 400),
        (Method::GET, "/admin/audit?limit=abc", None, vec![], 400),
        (Method::TRACE, "/admin/nodes", None, vec![], 405),
        (Method::PATCH, "/route/batch", j, br#"["a"]"#.to_vec(), 405),
    ];
    let (_, before) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    let (_, strategies_before) = app.admin_json(Method::GET, "/admin/strategies", None).await;
    for (method, path, ct, body, want) in cases {
        let (status, text) = send(&app, method.clone(), path, ct, body).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        assert_no_leak(&text);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(v["status"], want);
    }
    let (_, after) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(before, after);
    let (_, strategies_after) = app.admin_json(Method::GET, "/admin/strategies", None).await;
    assert_eq!(strategies_before, strategies_after);
    let (_, audit) = app.admin_json(Method::GET, "/admin/audit", None).await;
    assert_eq!(
        audit.as_array().unwrap().len(),
        1,
        "only the one real write is audited: {audit}"
    );
}

fn endpoint() -> impl Strategy<Value = (Method, &'static str)> {
    prop::sample::select(vec![
        (Method::POST, "/route/batch?intranet=0"),
        (Method::GET, "/route?uid=x"),
        (Method::POST, "/admin/nodes"),
        (Method::PUT, "/admin/nodes/fuzz"),
        (Method::PATCH, "/admin/nodes/a"),
        (Method::PUT, "/admin/nodes/a/heartbeat"),
        (Method::PUT, "/admin/strategies/fuzz"),
        (Method::PUT, "/admin/routing"),
        (Method::POST, "/admin/overrides/reload"),
    ])
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "id",
            "weight",
            "state",
            "kind",
            "params",
            "active_strategy",
            "external"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "id",
                        "weight",
                        "state",
                        "region",
                        "external",
                        "intranet",
                        "labels",
                        "kind",
                        "params",
                        "active_strategy",
                        "connections",
                        "tcp_addr",
                        "ws_addr",
                    ])
                    .prop_map(String::from),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn random_bytes_and_json_never_get_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(async {
        let app = spawn_app().await;
        app.add_node("a", json!({})).await;
        app
    });
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ];
    // A fixed seed: the same 300 cases on every run, so CI is reproducible.
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig::with_cases(300),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    runner
        .run(&(endpoint(), body), |((method, path), body)| {
            let sent = String::from_utf8_lossy(&body).into_owned();
            let (status, text) = rt.block_on(send(
                &app,
                method.clone(),
                path,
                Some("application/json"),
                body,
            ));
            prop_assert!(status < 500, "{method} {path} -> {status}: {text}");
            if status >= 400 {
                assert_no_leak_beyond(&text, &sent);
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            app.client
                .get(app.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(app.batch(&["alive"]).await.status(), 200);
    });
}

#[tokio::test]
async fn concurrent_writers_lose_no_update_and_readers_see_whole_snapshots() {
    let app = Arc::new(spawn_app().await);
    for i in 0..5 {
        app.add_node(&format!("n{i}"), json!({})).await;
    }
    app.add_node("counter", json!({"weight": 1})).await;
    let writers = 6;
    let increments = 8;

    // Each writer increments the counter's weight with If-Match, retrying on 412.
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < increments {
                let resp = app.admin(Method::GET, "/admin/nodes/counter", None).await;
                assert_eq!(resp.status(), 200);
                let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
                let node: Value = resp.json().await.unwrap();
                let w = node["weight"].as_u64().unwrap();
                let resp = app
                    .client
                    .patch(app.url("/admin/nodes/counter"))
                    .bearer_auth(&app.token)
                    .header("if-match", etag)
                    .json(&json!({"weight": w + 1}))
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => done += 1,
                    412 => {}
                    other => panic!("writer got {other}"),
                }
            }
        }));
    }
    // Others move node addresses: every write gives all five nodes' answers a
    // new generation, one node at a time.
    let churn = {
        let app = app.clone();
        tokio::spawn(async move {
            for generation in 1..=6 {
                for i in 0..5 {
                    let resp = app
                        .admin(
                            Method::PUT,
                            &format!("/admin/nodes/n{i}"),
                            Some(json!({"external": {"tcp_addr": format!("10.0.{generation}.{i}:1")}})),
                        )
                        .await;
                    assert_eq!(resp.status(), 200);
                }
                let resp = app
                    .admin(
                        Method::POST,
                        "/admin/nodes",
                        Some(json!({"id": format!("tmp{generation}"), "external": {"tcp_addr": "10.9.9.9:1"}})),
                    )
                    .await;
                assert_eq!(resp.status(), 201);
                let resp = app
                    .admin(
                        Method::DELETE,
                        &format!("/admin/nodes/tmp{generation}"),
                        None,
                    )
                    .await;
                assert_eq!(resp.status(), 204);
            }
        })
    };
    // Readers. The churn moves n0, n1, .., n4 to generation g one at a time,
    // each write answered only after its table is in place, so every table
    // ever published has n0..n(j-1) at generation g and the rest at g - 1.
    // On every answer: the five addresses are such a state (an answer mixing
    // tables of different moments is not), and it is not older than the
    // previous answer's. Whenever a revision comes back, its table must too.
    // The reader runs until every writer is done, then reads once more.
    let writes_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let app = app.clone();
        let writes_done = writes_done.clone();
        tokio::spawn(async move {
            let users = uids(200);
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
            let mut last_position = 0;
            let mut answers = 0;
            let mut positions = std::collections::BTreeSet::new();
            loop {
                let finished = writes_done.load(std::sync::atomic::Ordering::SeqCst);
                let resp = app.batch(&refs).await;
                assert_eq!(resp.status(), 200);
                let rev = resp.headers()["x-routing-revision"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let groups: Vec<Value> = resp.json().await.unwrap();
                let routed: usize = groups
                    .iter()
                    .map(|g| g["uids"].as_array().unwrap().len())
                    .sum();
                assert_eq!(routed, refs.len(), "every uid answered once");
                // Generation of n0..n4 in this answer (0: the address they were
                // created with).
                let mut gens = vec![None; 5];
                for g in &groups {
                    let node = g["node_id"].as_str().unwrap();
                    let Some(i) = node.strip_prefix('n').and_then(|i| i.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    let addr = g["tcp_addr"].as_str().unwrap();
                    let gen = if addr == format!("n{i}.example.com:5100") {
                        0
                    } else {
                        let want_suffix = format!(".{i}:1");
                        let gen = addr
                            .strip_prefix("10.0.")
                            .and_then(|a| a.strip_suffix(&want_suffix))
                            .and_then(|g| g.parse::<u32>().ok());
                        gen.unwrap_or_else(|| panic!("{node} answered {addr}"))
                    };
                    gens[i] = Some(gen);
                }
                let gens: Vec<u32> = gens
                    .into_iter()
                    .enumerate()
                    .map(|(i, g)| g.unwrap_or_else(|| panic!("n{i} took none of 200 users")))
                    .collect();
                assert!(
                    gens.windows(2).all(|w| w[0] >= w[1]) && gens[0] - gens[4] <= 1,
                    "revision {rev}: generations {gens:?} were never one table"
                );
                // Writes applied so far, in the churn's order.
                let position = gens.iter().sum::<u32>();
                assert!(
                    position >= last_position,
                    "revision {rev}: generations {gens:?} are older than an earlier answer"
                );
                last_position = position;
                positions.insert(position);
                let first = seen.entry(rev.clone()).or_insert_with(|| gens.clone());
                assert_eq!(*first, gens, "revision {rev} answered two different tables");
                answers += 1;
                if finished && answers >= 150 {
                    break;
                }
            }
            (answers, positions, last_position)
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    churn.await.unwrap();
    writes_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answers, positions, last) = reader.await.unwrap();
    assert!(answers >= 150);
    assert_eq!(
        last,
        5 * 6,
        "the answer after the last write has all of them"
    );
    // The reader saw the churn in progress, not only before and after.
    assert!(
        positions.len() >= 10,
        "{answers} answers saw only {positions:?} of the 31 states"
    );
    let (_, counter) = app
        .admin_json(Method::GET, "/admin/nodes/counter", None)
        .await;
    assert_eq!(
        counter["weight"],
        1 + writers * increments,
        "no lost update"
    );
    assert_eq!(counter["version"], 1 + writers * increments);
}

#[tokio::test]
async fn strategies_honour_if_match_too() {
    let app = spawn_app().await;
    let put = |tag: &'static str| {
        app.client
            .put(app.url("/admin/strategies/s"))
            .bearer_auth(&app.token)
            .header("if-match", tag)
            .json(&json!({"kind": "hash"}))
            .send()
    };
    assert_eq!(
        put("\"3\"").await.unwrap().status(),
        412,
        "no such version yet"
    );
    assert_eq!(
        app.admin(
            Method::PUT,
            "/admin/strategies/s",
            Some(json!({"kind": "hash"}))
        )
        .await
        .status(),
        201
    );
    assert_eq!(put("\"1\"").await.unwrap().status(), 200);
    assert_eq!(put("\"1\"").await.unwrap().status(), 412);
    let resp = app.admin(Method::GET, "/admin/strategies/s", None).await;
    assert_eq!(resp.headers()["etag"], "\"2\"");
}

#[tokio::test]
async fn every_admin_change_is_in_the_audit_trail_with_its_request_id() {
    let app = spawn_app().await;
    let with_id = |method: Method, path: &str, body: Value, id: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(&app.token)
            .header("x-request-id", id)
            .json(&body)
            .send()
    };
    with_id(
        Method::POST,
        "/admin/nodes",
        json!({"id": "a", "weight": 3, "external": {"tcp_addr": "10.0.0.1:1"}}),
        "req-1",
    )
    .await
    .unwrap();
    with_id(
        Method::PATCH,
        "/admin/nodes/a",
        json!({"weight": 4}),
        "req-2",
    )
    .await
    .unwrap();
    with_id(
        Method::PUT,
        "/admin/strategies/w",
        json!({"kind": "weighted"}),
        "req-3",
    )
    .await
    .unwrap();
    with_id(
        Method::PUT,
        "/admin/routing",
        json!({"active_strategy": "w"}),
        "req-4",
    )
    .await
    .unwrap();
    app.client
        .delete(app.url("/admin/nodes/a"))
        .bearer_auth(&app.token)
        .header("x-request-id", "req-5")
        .send()
        .await
        .unwrap();
    std::fs::write(app.overrides_path(), "user_regions: {alice: eu}\n").unwrap();
    app.client
        .post(app.url("/admin/overrides/reload"))
        .bearer_auth(&app.token)
        .header("x-request-id", "req-6")
        .send()
        .await
        .unwrap();

    let (status, page) = app
        .admin_json(Method::GET, "/admin/audit?limit=100", None)
        .await;
    assert_eq!(status, 200);
    let rows = page.as_array().unwrap();
    let actions: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("overrides.reload", "req-6"),
            ("node.delete", "req-5"),
            ("routing.switch", "req-4"),
            ("strategy.put", "req-3"),
            ("node.update", "req-2"),
            ("node.create", "req-1"),
        ]
    );
    let update = &rows[4];
    assert_eq!(update["target"], "a");
    assert_eq!(update["before"]["weight"], 3);
    assert_eq!(update["after"]["weight"], 4);
    assert!(rows[1]["after"].is_null() || rows[1].get("after").is_none());
    assert_eq!(rows[2]["after"], "w");

    // Paging.
    let (_, first) = app
        .admin_json(Method::GET, "/admin/audit?limit=2", None)
        .await;
    assert_eq!(first.as_array().unwrap().len(), 2);
    let last_id = first[1]["id"].as_i64().unwrap();
    let (_, next) = app
        .admin_json(
            Method::GET,
            &format!("/admin/audit?limit=2&before={last_id}"),
            None,
        )
        .await;
    assert_eq!(next[0]["action"], "routing.switch");
}

#[tokio::test]
async fn requests_in_flight_at_sigterm_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Process::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/admin/nodes", server.addr))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "a", "external": {"tcp_addr": "a.example.com:5100"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Start a request and hold its body back. `Expect: 100-continue` makes
    // the server say when the handler starts reading the body: from then on
    // the request is provably in flight.
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = br#"["u1","u2","u3"]"#;
    let head = format!(
        "POST /route/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !interim.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            interim.push(byte[0]);
        }
    })
    .await
    .expect("the server asks for the body");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    // Wait until the server stops accepting new connections.
    let stopped_accepting = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&addr).await.is_err()
    })
    .await;
    assert!(stopped_accepting);
    stream.write_all(body).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"u1\""));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_the_config_is_logged_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imroute"));
    cmd.arg("serve")
        .current_dir(dir.path())
        .env("IMROUTE_LISTEN", "127.0.0.1:0")
        .env("IMROUTE_LOG_FORMAT", "json")
        .env("IMROUTE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("log line");
        lines.push(line.clone());
        let v: Value = serde_json::from_str(&line).expect("every log line is JSON");
        if v["message"] == "Listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    let start = lines
        .iter()
        .find(|l| l.contains("Starting imroute"))
        .expect("config logged");
    assert!(
        start.contains("<redacted>") && !start.contains(TOKEN),
        "{start}"
    );
    reqwest::Client::new()
        .post(format!("http://{addr}/admin/nodes"))
        .bearer_auth(TOKEN)
        .header("x-request-id", "trace-me-42")
        .json(&json!({"id": "a", "external": {"tcp_addr": "a.example.com:5100"}}))
        .send()
        .await
        .unwrap();
    let found = loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            break false;
        };
        if line.contains("Node created") {
            let v: Value = serde_json::from_str(&line).unwrap();
            break v["span"]["request_id"] == "trace-me-42" || line.contains("trace-me-42");
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the change's log line carries its request id");
}

/// A client that cancels its write a few milliseconds after sending it goes
/// away at every point from before the handler to after the commit. Over
/// HTTP/2 a cancelled request (RST_STREAM) makes the server drop its handler;
/// over HTTP/1 (poem 3.1) a closed connection does not, so HTTP/2 it is. A
/// write that committed must reach routing anyway, with no later write to
/// carry it: after each cancelled request, every node the audit trail says
/// was created is listed and routable.
#[tokio::test]
async fn a_committed_write_reaches_routing_even_when_its_client_goes_away() {
    // The change feed's periodic check of the change counter would bring a
    // committed change in sooner or later: make it too slow to matter.
    let app = spawn_app_with(|c| c.cluster.poll_interval_ms = 3_600_000).await;
    let host = app.addr.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut cancelled_after_commit = 0;
    let mut sent = 0;
    while sent < 300 && (sent < 40 || cancelled_after_commit < 5) {
        let id = format!("n{sent}");
        let wait = Duration::from_millis(sent % 7);
        sent += 1;
        let request = http::Request::post(format!("http://{host}/admin/nodes"))
            .header("authorization", format!("Bearer {}", app.token))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let mut h2 = h2.clone().ready().await.unwrap();
        let (response, mut body) = h2.send_request(request, false).unwrap();
        body.send_data(
            json!({"id": id, "external": {"tcp_addr": "gw.example.com:5100"}})
                .to_string()
                .into(),
            true,
        )
        .unwrap();
        match tokio::time::timeout(wait, response).await {
            Ok(answer) => {
                assert_eq!(answer.unwrap().status(), 201, "{id}");
                continue;
            }
            Err(_) => body.send_reset(h2::Reason::CANCEL),
        }
        // Cancelled. Whatever committed so far must show, without another
        // write. (The cancelled write itself may still be committing; if it
        // is not audited yet it is checked after the next cancelled one.)
        let consistent = eventually(Duration::from_secs(10), || async {
            let (created, listed, routable) = created_listed_routable(&app).await;
            listed == created && routable == created.len()
        })
        .await;
        let (created, listed, routable) = created_listed_routable(&app).await;
        assert!(
            consistent,
            "after cancelling {id}: audited {created:?}, listed {listed:?}, {routable} routable"
        );
        if created.contains(&id) {
            cancelled_after_commit += 1;
        }
    }
    assert!(
        cancelled_after_commit >= 5,
        "only {cancelled_after_commit} of {sent} writes were cancelled after their commit"
    );
    connection.abort();
}

/// Nodes the audit trail says were created, nodes listed, nodes routable.
async fn created_listed_routable(app: &TestApp) -> (Vec<String>, Vec<String>, usize) {
    let (_, audit) = app
        .admin_json(Method::GET, "/admin/audit?limit=1000", None)
        .await;
    let mut created: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "node.create")
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    created.sort();
    let (_, nodes) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    let mut listed: Vec<String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    let routable = routing["nodes_routable"].as_u64().unwrap() as usize;
    (created, listed, routable)
}
