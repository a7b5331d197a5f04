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

#[tokio::test]
async fn acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Process::start(dir.path(), &[]);
    let mut acked = Vec::new();
    for i in 0..20 {
        let resp = client
            .post(format!("{}/admin/nodes", server.addr))
            .bearer_auth(TOKEN)
            .json(&json!({"id": format!("n{i}"), "weight": i + 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        acked.push(format!("n{i}"));
    }
    // SIGKILL: no shutdown path runs.
    drop(server);
    let server = Process::start(dir.path(), &[]);
    let nodes: Vec<serde_json::Value> = client
        .get(format!("{}/admin/nodes", server.addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    for id in &acked {
        assert!(ids.contains(&id.as_str()), "{id} lost");
    }
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
