//! Hostile connections, bodies and files against the real server: timeouts,
//! connection limits, authentication before the body, caps, headers, TLS and
//! the admin listener.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

fn host_port(app: &TestApp) -> String {
    app.addr.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (`true`) or `deadline` passes (`false`).
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 512];
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The head of the first answer on a raw connection, or `None` at the deadline.
async fn read_head(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + deadline;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

async fn healthz_within(app: &TestApp, limit: Duration) -> bool {
    let client = reqwest::Client::builder().timeout(limit).build().unwrap();
    matches!(client.get(app.url("/healthz")).send().await, Ok(r) if r.status() == 200)
}

/// This test process holds both ends of many connections: make room.
fn raise_descriptor_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test]
async fn half_request_lines_are_closed_within_the_header_timeout_while_healthz_answers() {
    raise_descriptor_limit(4096);
    let app = spawn_app_with(|c| c.limits.header_timeout_ms = 1000).await;
    let addr = host_port(&app);
    let mut slow = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // Half of them send half a request line, half send nothing at all.
        if i % 2 == 0 {
            s.write_all(b"GET /rou").await.unwrap();
        }
        slow.push(s);
    }
    let opened = Instant::now();
    let start = Instant::now();
    assert!(
        healthz_within(&app, Duration::from_secs(1)).await,
        "healthz answers within a second while 500 connections stall"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    for (i, s) in slow.iter_mut().enumerate() {
        let left = Duration::from_millis(3000).saturating_sub(opened.elapsed());
        assert!(
            closed_within(s, left).await,
            "connection {i} still open {:?} after it stalled",
            opened.elapsed()
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("imroute_connections_closed_total{reason=\"header_timeout\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    // The idle clock (800 ms), not hyper's header clock (5 s), closes it.
    let app = spawn_app_with(|c| {
        c.limits.header_timeout_ms = 5000;
        c.limits.idle_timeout_ms = 800;
    })
    .await;
    let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(2)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "{:?}",
        idle.elapsed()
    );
}

/// HTTP/2 has no header clock, and PINGs move bytes both ways: a connection
/// that sends no request is still closed, by the first-request deadline or,
/// after a request, by the idle clock.
#[tokio::test]
async fn http2_connections_that_only_ping_are_closed() {
    let app = spawn_app_with(|c| {
        c.limits.header_timeout_ms = 800;
        c.limits.idle_timeout_ms = 800;
    })
    .await;
    for send_one_request in [false, true] {
        let tcp = TcpStream::connect(host_port(&app)).await.unwrap();
        let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
        let mut pings = connection.ping_pong().expect("ping handle");
        let driver = tokio::spawn(connection);
        if send_one_request {
            let mut client = client.ready().await.unwrap();
            let req = http::Request::get(format!("{}/healthz", app.addr))
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            assert_eq!(resp.await.unwrap().status(), 200);
        }
        let start = Instant::now();
        let mut closed = false;
        while start.elapsed() < Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "request sent: {send_one_request}; still open after {:?} of PINGs",
            start.elapsed()
        );
        let _ = driver.await;
    }
}

/// An unauthenticated client is refused before it sends a byte of its body:
/// no `100 Continue`, no 400 about JSON it never sent.
#[tokio::test]
async fn admin_writes_are_authenticated_before_the_body() {
    let app = spawn_app().await;
    for (auth, expect) in [
        ("", "401"),
        ("authorization: Bearer wrong-token-0123456789\r\n", "401"),
    ] {
        let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
        let head = format!(
            "POST /admin/nodes HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 4194304\r\nexpect: 100-continue\r\n{auth}\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = read_head(&mut s, Duration::from_secs(2))
            .await
            .expect("an answer without the body");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expect}")),
            "{answer}"
        );
        assert!(!answer.contains("100 Continue"), "{answer}");
    }
    // Unknown paths and bodies nobody reads are not buffered either.
    for path in ["/nope", "/route?uid=a", "/healthz"] {
        let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 4194303\r\nexpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = read_head(&mut s, Duration::from_secs(2))
            .await
            .expect("an answer without the body");
        assert!(answer.starts_with("HTTP/1.1 40"), "{path}: {answer}");
    }
    // With the token the body is read as usual.
    let resp = app
        .admin(
            Method::POST,
            "/admin/nodes",
            Some(json!({"id": "gw-1", "external": {"tcp_addr": "10.0.0.1:1"}})),
        )
        .await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn a_slow_body_is_cut_at_its_deadline() {
    let app = spawn_app_with(|c| c.limits.body_timeout_ms = 800).await;
    let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
    s.write_all(
        b"POST /route/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[\"a\",",
    )
    .await
    .unwrap();
    let sent = Instant::now();
    let head = read_head(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer at the deadline");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        sent.elapsed() >= Duration::from_millis(700),
        "{:?}",
        sent.elapsed()
    );
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_the_rest_go_on() {
    let app = spawn_app_with(|c| {
        c.limits.max_connections = 8;
        c.limits.header_timeout_ms = 1500;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(host_port(&app)).await.unwrap());
    }
    let mut extra = TcpStream::connect(host_port(&app)).await.unwrap();
    let head = read_head(&mut extra, Duration::from_secs(2)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // Once the stalled ones time out, the server takes connections again.
    let back = eventually(Duration::from_secs(5), || {
        healthz_within(&app, Duration::from_millis(500))
    })
    .await;
    assert!(
        back,
        "the server takes connections again after the stalled ones time out"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("imroute_connections_closed_total{reason=\"over_limit\"}"));
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// With fewer descriptors than idle connections, `accept` fails with EMFILE:
/// the server backs off instead of spinning, and answers again once the idle
/// connections time out.
#[tokio::test]
async fn running_out_of_descriptors_neither_spins_nor_stops_the_server_for_good() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/imroute.yaml"),
        "limits: {header_timeout_ms: 2000}\n",
    )
    .unwrap();
    let mut server = Process::start(dir.path(), &[]);
    let pid = server.child.id();
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: prlimit only changes the limit of the child we started.
    let set = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit on the server process");
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let cpu_before = cpu_seconds(pid);
    let hold = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let held = hold.elapsed().as_secs_f64();
    assert!(
        cpu < 0.25 * held,
        "the server used {cpu:.2} s of CPU in {held:.2} s while out of descriptors"
    );
    // The idle ones time out; the waiting ones get their turn and time out
    // too; then /healthz answers again.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let url = format!("{}/healthz", server.addr);
    let back = eventually(Duration::from_secs(20), || async {
        matches!(client.get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(
        back,
        "healthz answers again once the idle connections time out"
    );
    drop(idle);
    let _ = server.child.kill();
    let _ = server.child.wait();
}

#[tokio::test]
async fn an_overrides_file_of_aliases_is_refused_quickly_while_routing_answers() {
    let app = spawn_app().await;
    app.add_node("gw-1", json!({})).await;
    // Each level doubles: 2^30 nodes if aliases were expanded.
    let mut bomb = String::from("a0: &a0 [x, y]\n");
    for i in 1..30 {
        bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
    }
    std::fs::write(app.overrides_path(), &bomb).unwrap();
    let start = Instant::now();
    let (status, err) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("aliases"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let route = app.get_json("/route?uid=u1&intranet=0").await;
    assert_eq!(route["node_id"], "gw-1");
    // The error quotes nothing of the file.
    let status = app.get_json_admin("/admin/overrides").await;
    assert!(
        !status["error"].as_str().unwrap().contains("a0"),
        "{status}"
    );
}

#[tokio::test]
async fn audit_rows_are_capped_and_say_who_acted() {
    let app = spawn_app().await;
    // Params past 32 KiB are refused.
    let huge: serde_json::Map<String, Value> = (0..3000)
        .map(|i| (format!("r{i:04}"), json!(["us"])))
        .collect();
    let (status, err) = app
        .admin_json(
            Method::PUT,
            "/admin/strategies/big",
            Some(json!({"kind": "region", "params": {"default_region": "eu", "fallback": huge}})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["msg"].as_str().unwrap().starts_with("params: at most"),
        "{err}"
    );
    // Just under the cap: each row holds two copies, so pages stop early.
    let near: serde_json::Map<String, Value> = (0..1500)
        .map(|i| (format!("r{i:04}"), json!(["us"])))
        .collect();
    for i in 0..24 {
        let mut fallback = near.clone();
        fallback.insert("x".into(), json!([format!("v{i}")]));
        let (status, err) = app
            .admin_json(
                Method::PUT,
                "/admin/strategies/big",
                Some(json!({"kind": "region", "params": {"default_region": "eu", "fallback": fallback}})),
            )
            .await;
        assert!(status == 200 || status == 201, "{err}");
    }
    let resp = app.admin(Method::GET, "/admin/audit?limit=100", None).await;
    assert_eq!(resp.status(), 200);
    let link = resp
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.bytes().await.unwrap();
    assert!(
        body.len() < 1_200_000,
        "a page is about 1 MiB at most: {}",
        body.len()
    );
    let rows: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert!(rows.len() < 24, "{}", rows.len());
    let link = link.expect("a Link to the next page");
    let last = rows.last().unwrap()["id"].as_i64().unwrap();
    assert!(link.contains(&format!("before={last}")), "{link}");

    // A client cannot pass for the server by its request id.
    app.client
        .post(app.url("/admin/nodes"))
        .bearer_auth(&app.token)
        .header("x-request-id", "watcher")
        .json(&json!({"id": "gw-1", "external": {"tcp_addr": "10.0.0.1:1"}}))
        .send()
        .await
        .unwrap();
    std::fs::write(app.overrides_path(), "nodes:\n  gw-1: {weight: 5}\n").unwrap();
    let seen = eventually(Duration::from_secs(10), || async {
        let rows = app.get_json_admin("/admin/audit?limit=5").await;
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "overrides.reload")
    })
    .await;
    assert!(seen, "the watcher reloads the file");
    let rows = app.get_json_admin("/admin/audit?limit=5").await;
    let rows = rows.as_array().unwrap();
    let create = rows.iter().find(|r| r["action"] == "node.create").unwrap();
    assert_eq!(create["request_id"], "watcher");
    assert_eq!(create["actor"], "admin");
    let reload = rows
        .iter()
        .find(|r| r["action"] == "overrides.reload")
        .unwrap();
    assert_eq!(reload["actor"], "system", "{reload}");
}

#[tokio::test]
async fn answers_carry_the_security_headers() {
    let app = spawn_app().await;
    let get = |path: &str| app.client.get(app.url(path)).bearer_auth(&app.token).send();
    for path in ["/route?uid=a", "/healthz", "/nope", "/admin/nodes", "/docs"] {
        let resp = get(path).await.unwrap();
        assert_eq!(
            resp.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
    }
    let admin = get("/admin/nodes").await.unwrap();
    assert_eq!(admin.headers()["cache-control"], "no-store");
    let unauthorized = app
        .client
        .get(app.url("/admin/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers()["cache-control"], "no-store");
    let docs = get("/docs").await.unwrap();
    let csp = docs.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let route = get("/route?uid=a").await.unwrap();
    assert!(route.headers().get("content-security-policy").is_none());
}

/// A certificate for `localhost` signed by its own test CA.
fn test_cert() -> (String, String, reqwest::Certificate) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    (leaf.pem(), key.serialize_pem(), root)
}

fn tls_client(root: reqwest::Certificate) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn tls_end_to_end_with_certificates_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root) = test_cert();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let app = spawn_app_with(|c| {
        c.tls.cert_path = Some(cert_path.clone());
        c.tls.key_path = Some(key_path.clone());
    })
    .await;
    let port = host_port(&app).rsplit(':').next().unwrap().to_owned();
    let https = format!("https://localhost:{port}");
    let client = tls_client(root);
    let resp = client.get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(format!("{https}/admin/nodes"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let refused = plain
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(refused.is_err() || refused.unwrap().status() != 200);

    // New files (as a certificate manager writes them): the new pair is used
    // without a restart.
    let (cert2, key2, root2) = test_cert();
    std::fs::write(&key_path, &key2).unwrap();
    std::fs::write(&cert_path, &cert2).unwrap();
    let client2 = tls_client(root2.clone());
    let url = format!("{https}/healthz");
    let switched = eventually(Duration::from_secs(10), || async {
        matches!(client2.get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(switched, "the new certificate is served");
    // A broken pair is refused and the one in use stays: a new client (so a
    // new handshake) still gets the second certificate.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = tls_client(root2).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_admin_api_can_have_its_own_listener_and_allowlist() {
    let app = spawn_app_with(|c| {
        c.admin_listen = Some("127.0.0.1:0".into());
        c.limits.max_connections = 4;
    })
    .await;
    let admin = app.state_admin_addr();
    // Odd spellings of admin paths reach nothing on the public listener.
    for path in [
        "/admin/nodes",
        "//admin/nodes",
        "/%61dmin/nodes",
        "/ADMIN/nodes",
        "/x/../admin/nodes",
        "/admin/../admin/nodes",
        "/docs/../admin/nodes",
    ] {
        let resp = app
            .client
            .get(app.url(path))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    // On the public listener /admin/* does not exist, token or not.
    let resp = app.admin(Method::GET, "/admin/nodes", None).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    let resp = app
        .client
        .get(format!("http://{admin}/admin/nodes"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .get(format!("http://{admin}/admin/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Routing stays on the public listener.
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A flood that fills the public listener leaves the admin one open.
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(TcpStream::connect(host_port(&app)).await.unwrap());
    }
    let mut extra = TcpStream::connect(host_port(&app)).await.unwrap();
    let head = read_head(&mut extra, Duration::from_secs(2)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let resp = reqwest::Client::new()
        .get(format!("http://{admin}/admin/nodes"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(flood);

    for (allow, expect) in [
        (vec!["10.0.0.0/8".to_owned()], 403),
        (vec!["127.0.0.1".to_owned(), "::1".to_owned()], 200),
    ] {
        let app = spawn_app_with(|c| c.admin_allow = allow.clone()).await;
        let resp = app.admin(Method::GET, "/admin/nodes", None).await;
        assert_eq!(resp.status(), expect, "{allow:?}");
        if expect == 403 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "forbidden");
            // Routing is not the admin API: still open.
            let resp = app
                .client
                .get(app.url("/route?uid=a"))
                .send()
                .await
                .unwrap();
            assert_ne!(resp.status(), 403);
        }
    }
}

/// Connections (or HTTP/2 streams) that each hold a body up to the limit add
/// up: past the body budget a request with a body is 503 at once. Bytes are
/// charged as they arrive: announcing a large body and sending little holds
/// little. Admin bodies have their own budget.
#[tokio::test]
async fn buffered_bodies_share_one_budget() {
    let max = 16 * 1024 * 1024;
    let app = spawn_app_with(|c| {
        c.limits.max_body_bytes = max;
        c.limits.body_timeout_ms = 20_000;
    })
    .await;
    app.add_node("gw-1", serde_json::json!({})).await;
    let head = format!(
        "POST /route/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {max}\r\n\r\n["
    );
    // 200 announced bodies of 16 MiB, one byte each: 3.2 GB announced.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    let batch_ok = eventually(Duration::from_secs(5), || async {
        app.batch(&["a", "b"]).await.status() == 200
    })
    .await;
    assert!(batch_ok, "announced bodies hold nothing");
    drop(stalled);
    // Bodies really sent, past the budget.
    // Each holds `[` and max - 2 spaces: max - 1 bytes, 16 MiB of budget.
    let budget = imroute::api::body_budget_kib(max) * 1024;
    let fits = budget / max;
    let chunk = vec![b' '; max - 2];
    let mut held = Vec::new();
    for _ in 0..fits {
        let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&chunk).await.unwrap();
        held.push(s);
    }
    let refused = eventually(Duration::from_secs(10), || async {
        app.batch(&["a"]).await.status() == 503
    })
    .await;
    assert!(
        refused,
        "past {fits} bodies of {max} bytes, a body is refused"
    );
    for _ in 0..5 {
        assert_eq!(app.batch(&["a"]).await.status(), 503, "while they are held");
    }
    // Heartbeats and other admin bodies go on, as do requests without one.
    let resp = app
        .admin(
            reqwest::Method::PUT,
            "/admin/nodes/gw-1/heartbeat",
            Some(serde_json::json!({"connections": 1})),
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert!(healthz_within(&app, Duration::from_secs(1)).await);
    drop(held);
    let recovered = eventually(Duration::from_secs(10), || async {
        app.batch(&["a"]).await.status() == 200
    })
    .await;
    assert!(recovered);
}

#[tokio::test]
async fn huge_request_heads_are_431_and_refused_admin_clients_never_get_a_slot() {
    let app = spawn_app_with(|c| {
        c.admin_listen = Some("127.0.0.1:0".into());
        c.admin_allow = vec!["10.0.0.0/8".into()];
    })
    .await;
    let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let head = read_head(&mut s, Duration::from_secs(2))
        .await
        .unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // 127.0.0.1 is not in admin_allow: the admin listener closes at once.
    let mut s = TcpStream::connect(app.state_admin_addr()).await.unwrap();
    let _ = s
        .write_all(b"GET /admin/nodes HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    let metrics = app.metrics().await;
    assert!(metrics.contains("imroute_connections_closed_total{reason=\"not_allowed\"}"));
}

#[tokio::test]
async fn overrides_errors_quote_at_most_a_short_escaped_excerpt() {
    let app = spawn_app().await;
    app.add_node("gw-1", json!({})).await;
    let long = "n".repeat(100_000);
    std::fs::write(
        app.overrides_path(),
        format!("pins:\n  vip: \"{long}\\u0007\"\n"),
    )
    .unwrap();
    let (status, err) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 400);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.len() < 300 && !msg.contains('\u{7}'),
        "{} bytes",
        msg.len()
    );
}

/// Answers with candidates can be hundreds of times their request: while
/// clients that do not read hold 256 MiB of them, the next such batch is
/// 503 at once, plain routing goes on, and the budget comes back when the
/// readers go.
#[tokio::test]
async fn unread_candidate_answers_share_one_budget() {
    let app = spawn_app().await;
    app.add_long_address_nodes(20).await;
    // A batch whose answer is close to 4 MiB.
    let mut n = 1250;
    let size = loop {
        let resp = app.batch_query("candidates=8", &json!(uids(n))).await;
        if resp.status() == 200 {
            break resp.bytes().await.unwrap().len();
        }
        n -= 50;
    };
    let body = serde_json::to_string(&uids(n)).unwrap();
    let request = format!(
        "POST /route/batch?candidates=8 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Enough unread answers to take the budget, one per socket (a
    // connection answers its requests in turn), with small receive buffers.
    let wanted = (256 * 1024 * 1024) / size + 16;
    let addr: std::net::SocketAddr = host_port(&app).parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..wanted {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        held.push(s);
    }
    let refused = eventually(Duration::from_secs(20), || async {
        app.batch_query("candidates=8", &json!(uids(n)))
            .await
            .status()
            == 503
    })
    .await;
    assert!(
        refused,
        "unread answers of {size} bytes are held to a budget"
    );
    assert_eq!(app.batch(&["a", "b"]).await.status(), 200);
    assert_eq!(
        app.client
            .get(app.url("/route?uid=a&candidates=3"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(held);
    let back = eventually(Duration::from_secs(20), || async {
        app.batch_query("candidates=8", &json!(uids(n)))
            .await
            .status()
            == 200
    })
    .await;
    assert!(back, "the budget comes back when the readers go");
}

/// The watchdog reads the request counters at its own deadlines: a request
/// in flight longer than the idle timeout is never cut, the idle clock
/// starts again at every request's end, and an idle connection still
/// closes one idle timeout after its last request.
#[tokio::test]
async fn a_long_request_is_not_cut_and_each_request_restarts_the_idle_clock() {
    let app = spawn_app_with(|c| {
        c.limits.header_timeout_ms = 5000;
        c.limits.idle_timeout_ms = 800;
    })
    .await;
    app.add_node("gw-1", json!({})).await;
    let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
    let body = br#"["alice","bob"]"#;
    s.write_all(
        format!(
            "POST /route/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The body dribbles in over about 1.5 s: twice the idle timeout.
    let started = Instant::now();
    for b in body {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(1400));
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(
        head.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{head:?}"
    );
    // A second request 500 ms later restarts the idle clock: still open
    // 600 ms after it (1.1 s after the first ended), closed by about 800 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(2)).await;
    assert!(
        head.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{head:?}"
    );
    let second = Instant::now();
    assert!(
        !closed_within(&mut s, Duration::from_millis(600)).await,
        "closed before its idle timeout"
    );
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(
        second.elapsed() >= Duration::from_millis(700),
        "{:?}",
        second.elapsed()
    );
}
