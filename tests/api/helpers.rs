//! Starts the real server on port 0 with its own SQLite file and overrides
//! path in a temp dir; talks to it over real HTTP.

// Shared by every test module; not every module uses every helper.
#![allow(dead_code)]

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use imroute::{config::Config, Application};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

pub const TOKEN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub addr: String,
    pub state: std::sync::Arc<imroute::api::AppState>,
    pub token: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub config: Config,
    /// The admin listener, when `admin_listen` is set.
    pub admin_addr: Option<std::net::SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

pub fn test_config(dir: &TempDir) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}", dir.path().join("data/imroute.db").display()),
        overrides_path: dir.path().join("config/overrides.yaml"),
        admin_token: Some(TOKEN.into()),
        ..Config::default()
    }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        imroute::telemetry::init(imroute::config::LogFormat::Text);
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(f: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(&dir);
    f(&mut config);
    start(dir, config).await
}

pub async fn start(dir: TempDir, config: Config) -> TestApp {
    init_logs();
    let app = Application::build(config.clone())
        .await
        .expect("app builds");
    let addr = format!("http://{}", app.addr());
    let token = app.admin_token().to_owned();
    let state = app.state();
    let admin_addr = app.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        addr,
        state,
        token,
        client: reqwest::Client::new(),
        dir,
        config,
        admin_addr,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    pub fn overrides_path(&self) -> PathBuf {
        self.config.overrides_path.clone()
    }

    /// Stops the server and waits until it has let go of the database.
    pub async fn stop(mut self) -> (TempDir, Config) {
        self.shutdown_now().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.config.clone())
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task ends cleanly");
        }
    }

    /// Stops and starts again on the same database and overrides file.
    pub async fn restart(self) -> TestApp {
        let (dir, config) = self.stop().await;
        start(dir, config).await
    }

    pub async fn batch(&self, uids: &[&str]) -> Response {
        self.batch_query("intranet=0", &json!(uids)).await
    }

    pub async fn batch_query(&self, query: &str, body: &Value) -> Response {
        self.client
            .post(self.url(&format!("/route/batch?{query}")))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// uid -> node id for a batch.
    pub async fn assignments(&self, uids: &[String]) -> std::collections::HashMap<String, String> {
        let refs: Vec<&str> = uids.iter().map(String::as_str).collect();
        let resp = self.batch(&refs).await;
        assert_eq!(resp.status(), 200);
        let groups: Vec<Value> = resp.json().await.unwrap();
        let mut out = std::collections::HashMap::new();
        for g in groups {
            for u in g["uids"].as_array().unwrap() {
                out.insert(
                    u.as_str().unwrap().to_owned(),
                    g["node_id"].as_str().unwrap().to_owned(),
                );
            }
        }
        out
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("request sent")
    }

    pub async fn admin_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let resp = self.admin(method, path, body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A heartbeat reporting `connections`; asserts 204.
    pub async fn heartbeat(&self, id: &str, connections: u64) {
        let resp = self
            .admin(
                Method::PUT,
                &format!("/admin/nodes/{id}/heartbeat"),
                Some(json!({ "connections": connections })),
            )
            .await;
        assert_eq!(resp.status(), 204, "heartbeat of {id}");
    }

    /// Makes a stored strategy the active one; asserts 200.
    pub async fn activate_strategy(&self, name: &str) {
        let (status, body) = self
            .admin_json(
                Method::PUT,
                "/admin/routing",
                Some(json!({ "active_strategy": name })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Creates a node with a TCP address derived from its id; asserts 201.
    pub async fn add_node(&self, id: &str, extra: Value) -> Value {
        let mut body = json!({
            "id": id,
            "external": {"tcp_addr": format!("{id}.example.com:5100"),
                         "ws_addr": format!("ws://{id}.example.com:5200"), "wss_addr": ""},
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let (status, node) = self
            .admin_json(Method::POST, "/admin/nodes", Some(body))
            .await;
        assert_eq!(status, 201, "{node}");
        node
    }

    /// Creates `n` nodes (`gw-0`...) whose three addresses are each about
    /// 200 bytes (DNS names of 3 labels of 59): the longest answers a node
    /// can give, short of the 300-byte limit.
    pub async fn add_long_address_nodes(&self, n: usize) {
        for i in 0..n {
            let host = format!(
                "{}{i}.example.com",
                format!("{}.", "h".repeat(59)).repeat(3)
            );
            self.add_node(
                &format!("gw-{i}"),
                json!({"external": {"tcp_addr": format!("{host}:5100"),
                       "ws_addr": format!("ws://{host}:5200"), "wss_addr": format!("wss://{host}:5300")}}),
            )
            .await;
        }
    }

    /// GET an admin path with the token and parse the JSON answer.
    pub async fn get_json_admin(&self, path: &str) -> Value {
        let (status, body) = self.admin_json(Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    pub fn state_admin_addr(&self) -> std::net::SocketAddr {
        self.admin_addr.expect("admin_listen is set")
    }

    /// GET a public path and parse the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        resp.json().await.expect("a JSON answer")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn uids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i}")).collect()
}

/// The server binary run as a child process (for signals and crashes).
pub struct Process {
    pub child: Child,
    pub addr: String,
}

impl Process {
    /// Starts `imroute serve` with the given env and waits for its address.
    pub fn start(dir: &std::path::Path, env: &[(&str, String)]) -> Process {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imroute"));
        cmd.arg("serve")
            .current_dir(dir)
            .env("IMROUTE_LISTEN", "127.0.0.1:0")
            .env("IMROUTE_LOG_FORMAT", "json")
            .env("IMROUTE_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "Listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server logs its address");
        Process {
            child,
            addr: format!("http://{addr}"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
