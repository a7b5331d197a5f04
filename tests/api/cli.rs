use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

fn imroute(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imroute"))
        .args(args)
        .current_dir(dir)
        .env_remove("IMROUTE_LISTEN")
        .env_remove("IMROUTE_DATABASE_URL")
        .env_remove("IMROUTE_OVERRIDES_PATH")
        .env_remove("IMROUTE_ADMIN_TOKEN")
        .output()
        .expect("binary runs")
}

#[test]
fn openapi_prints_the_committed_spec() {
    let dir = tempfile::tempdir().unwrap();
    let out = imroute(dir.path(), &["openapi"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn check_config_accepts_defaults_and_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = imroute(dir.path(), &["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "listen: 1.2.3.4:5\nlimits: {max_btch: 3}\n",
    )
    .unwrap();
    let out = imroute(dir.path(), &["check-config", "--config", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_btch"), "{err}");

    let out = imroute(dir.path(), &["check-config", "--config", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn the_database_file_and_folder_are_created_on_first_start() {
    let app = spawn_app().await;
    assert!(app.dir.path().join("data/imroute.db").exists());
    let mode: String = {
        let pool = sqlx::SqlitePool::connect(&app.config.database_url)
            .await
            .unwrap();
        sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(mode, "wal");
    // The migration seeds the default hash strategy, active.
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["active_strategy"], "default");
    assert_eq!(routing["kind"], "hash");
    assert_eq!(routing["source"], "db");
}

/// SIGKILL while writers keep sending: after a restart on the same file,
/// every write the server acknowledged is there, and every node is there with
/// the audit row written in its transaction.
///
/// What this proves: a write is acknowledged only after its transaction has
/// committed, a process killed at an arbitrary point leaves a database that
/// opens again, and a commit is all or nothing (node and audit row). What it
/// does not prove: durability against a power loss or an OS crash. SIGKILL
/// leaves the kernel's page cache intact, so this test passes even with
/// `synchronous=OFF`; that every connection commits with `synchronous=FULL`
/// is asserted by `store::sqlite_commits_are_durable_on_every_connection`.
#[tokio::test]
async fn acknowledged_writes_survive_a_sigkill_during_writes() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    };
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = Process::start(dir.path(), &[]);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, addr) = (client.clone(), server.addr.clone());
            let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("w{w}-{i}");
                    i += 1;
                    let sent = client
                        .post(format!("{addr}/admin/nodes"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"id": id, "weight": i, "external": {"tcp_addr": "10.0.0.1:5100"}}))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 201 => {
                            acked.lock().unwrap().push(id);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(resp) => panic!("{id}: {}", resp.status()),
                        // The kill cut this request: it may or may not have
                        // committed, and nobody was told it did.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let enough = eventually(std::time::Duration::from_secs(30), || async {
        count.load(Ordering::SeqCst) >= 40
    })
    .await;
    assert!(enough, "writes are acknowledged");
    // SIGKILL with the writers still sending: no shutdown path runs.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    drop(server);
    let acked = acked.lock().unwrap().clone();

    let server = Process::start(dir.path(), &[]);
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.addr))
            .bearer_auth(TOKEN)
            .send()
    };
    let nodes: Vec<serde_json::Value> = get("/admin/nodes").await.unwrap().json().await.unwrap();
    let ids: std::collections::HashSet<&str> =
        nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    for id in &acked {
        assert!(
            ids.contains(id.as_str()),
            "{id} was acknowledged and is lost"
        );
    }
    let audit: Vec<serde_json::Value> = get("/admin/audit?limit=1000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut audited: Vec<&str> = audit
        .iter()
        .filter(|r| r["action"] == "node.create")
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    audited.sort_unstable();
    let mut listed: Vec<&str> = ids.into_iter().collect();
    listed.sort_unstable();
    assert_eq!(listed, audited, "each node committed with its audit row");
}

#[tokio::test]
async fn sigterm_finishes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Process::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline, "server did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}
