//! A real Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), with a small client on `reqwest`: the few W3C
//! WebDriver commands the dashboard tests need, and ChromeDriver's browser
//! log for console errors.
//!
//! Where no Chromium is installed the tests print why and skip; with
//! `IMROUTE_REQUIRE_BROWSER=1` (set by `.ci/run`) a missing browser fails.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser and its driver, or the reason there are none.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let chromium = find_binary(
        "IMROUTE_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    )
    .ok_or("no chromium on PATH (apt-get install chromium chromium-driver)")?;
    let driver = find_binary("IMROUTE_CHROMEDRIVER", &["chromedriver"])
        .ok_or("no chromedriver on PATH (apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

/// Where screenshots go: `target/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    quit: bool,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends the session (ChromeDriver then closes Chromium), also when a
    /// test panicked before `quit`, then stops the driver, so no browser
    /// outlives its test.
    fn drop(&mut self) {
        if !self.quit {
            let _ = delete_session(&self.base, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` without an async runtime (for `Drop`).
fn delete_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(())
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session; `None` (after
    /// saying why) where there is no browser and none is required.
    pub async fn start(test: &str) -> Option<Browser> {
        let (chromium, driver) = match binaries() {
            Ok(b) => b,
            Err(why) => {
                if std::env::var_os("IMROUTE_REQUIRE_BROWSER").is_some_and(|v| v == "1") {
                    panic!("{test}: a browser is required (IMROUTE_REQUIRE_BROWSER=1) but {why}");
                }
                eprintln!("skipped {test}: {why}");
                return None;
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        // A port picked here may be taken by another test before the driver
        // binds it: then the driver exits, and we try another.
        let (mut child, base) = 'start: {
            for _ in 0..5 {
                let port = {
                    let l = TcpListener::bind("127.0.0.1:0").expect("free port");
                    l.local_addr().unwrap().port()
                };
                let mut child = Command::new(&driver)
                    .arg(format!("--port={port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("chromedriver starts");
                let base = format!("http://127.0.0.1:{port}");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    if child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    let ready = http
                        .get(format!("{base}/status"))
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success());
                    if ready.is_some() {
                        break 'start (child, base);
                    }
                    assert!(Instant::now() < deadline, "chromedriver never answered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            panic!("chromedriver could not start");
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1440,1500",
                         "--no-first-run", "--no-default-browser-check",
                         "--disable-background-networking", "--disable-extensions",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.path().display())]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let Some(session) = resp["value"]["sessionId"].as_str().map(str::to_owned) else {
            let _ = child.kill();
            panic!("no session: {resp}");
        };
        Some(Browser {
            driver: child,
            base,
            session,
            http,
            quit: false,
            _profile: profile,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp: Value = req
            .send()
            .await
            .expect("webdriver command")
            .json()
            .await
            .expect("webdriver json");
        resp["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// Runs a script in the page (`return ...;`) and gives its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        let v = self
            .post("/execute/sync", json!({"script": script, "args": args}))
            .await;
        if v.get("error").is_some() {
            panic!("script failed: {v}\n{script}");
        }
        v
    }

    /// The element matching a CSS selector now, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v.get(ELEMENT).and_then(Value::as_str).map(str::to_owned)
    }

    /// Waits for an element matching `css` (10 s).
    pub async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `script` (an expression) is truthy in the page (10 s).
    pub async fn wait_until(&self, what: &str, expr: &str) {
        self.wait_until_for(what, expr, Duration::from_secs(10))
            .await
    }

    /// [`Browser::wait_until`] with another deadline.
    pub async fn wait_until_for(&self, what: &str, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(&format!("return !!({expr});"), json!([])).await;
            if v == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "never: {what} ({expr})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        let v = self.post(&format!("/element/{e}/click"), json!({})).await;
        assert!(v.is_null(), "click {css}: {v}");
    }

    /// Types into an element, like a user (`\u{E007}` is Enter).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        let v = self
            .post(&format!("/element/{e}/value"), json!({"text": text}))
            .await;
        assert!(v.is_null(), "type into {css}: {v}");
    }

    pub async fn clear(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
    }

    /// The visible text of the first element matching `css` ("" if none).
    pub async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a PNG of the window to `target/ui-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot data"))
            .expect("base64 png");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        path
    }

    /// Console messages at level SEVERE since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let v = self.post("/se/log", json!({"type": "browser"})).await;
        let entries = v
            .as_array()
            .unwrap_or_else(|| panic!("the browser log could not be read: {v}"));
        entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Every URL the page has loaded or fetched.
    pub async fn requested_urls(&self) -> Vec<String> {
        let v = self
            .js(
                "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
                json!([]),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Opens a new tab in front (the page's tab becomes hidden).
    pub async fn new_tab(&self) {
        let v = self.post("/window/new", json!({"type": "tab"})).await;
        let handle = v["handle"].as_str().expect("new tab").to_owned();
        self.post("/window", json!({"handle": handle})).await;
    }

    /// Closes the front tab and shows the first one again.
    pub async fn back_to_first_tab(&self) {
        self.cmd(reqwest::Method::DELETE, "/window", None).await;
        let handles = self
            .cmd(reqwest::Method::GET, "/window/handles", None)
            .await;
        let first = handles[0].as_str().expect("a tab").to_owned();
        self.post("/window", json!({"handle": first})).await;
    }

    pub async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        self.quit = true;
    }
}
