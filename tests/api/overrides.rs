use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const DEADLINE: Duration = Duration::from_secs(10);

async fn overrides(app: &TestApp) -> Value {
    app.admin_json(Method::GET, "/admin/overrides", None)
        .await
        .1
}

async fn node_of(app: &TestApp, uid: &str) -> String {
    let v = app.get_json(&format!("/route?uid={uid}")).await;
    v["node_id"].as_str().unwrap_or_default().to_owned()
}

/// Writes the file the way most editors do: a temp file, then a rename.
fn save_by_rename(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until the overrides state differs from `old` (revision, status or
/// error), polling with a deadline.
async fn wait_for_reload(app: &TestApp, old: &Value) -> Value {
    wait_for_reload_within(app, old, DEADLINE).await
}

async fn wait_for_reload_within(app: &TestApp, old: &Value, deadline: Duration) -> Value {
    let end = std::time::Instant::now() + deadline;
    loop {
        let now = overrides(app).await;
        if now["revision"] != old["revision"]
            || now["status"] != old["status"]
            || now["error"] != old["error"]
        {
            return now;
        }
        assert!(
            std::time::Instant::now() < end,
            "the watcher did not pick up the change within {deadline:?}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn two_nodes() -> TestApp {
    let app = spawn_app().await;
    app.add_node("gw-1", json!({"region": "eu"})).await;
    app.add_node("gw-2", json!({"region": "us"})).await;
    app
}

#[tokio::test]
async fn a_file_created_after_start_is_picked_up_and_pins_route() {
    let app = two_nodes().await;
    let before = overrides(&app).await;
    assert_eq!(before["status"], "ok");
    assert_eq!(before["revision"], "");
    let pinned_elsewhere = if node_of(&app, "vip").await == "gw-1" {
        "gw-2"
    } else {
        "gw-1"
    };
    std::fs::write(
        app.overrides_path(),
        format!("pins:\n  vip: {pinned_elsewhere}\n"),
    )
    .unwrap();
    let after = wait_for_reload(&app, &before).await;
    assert_eq!(after["status"], "ok", "{after}");
    assert_eq!(after["effective"]["pins"]["vip"], pinned_elsewhere);
    assert!(after["loaded_at"].is_string());
    assert_eq!(node_of(&app, "vip").await, pinned_elsewhere);
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["pins"], 1);
}

#[tokio::test]
async fn editors_that_save_by_rename_and_deleting_the_file_work() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let s0 = overrides(&app).await;
    save_by_rename(&path, "nodes:\n  gw-1: {weight: 0}\n");
    let s1 = wait_for_reload(&app, &s0).await;
    assert_eq!(s1["effective"]["nodes"]["gw-1"]["weight"], 0);
    let users = uids(100);
    assert!(app.assignments(&users).await.values().all(|n| n == "gw-2"));
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(node["weight"], 0);
    assert_eq!(node["source"], "db+overrides");

    // mv over the file.
    let other = path.with_file_name("staged.yaml");
    std::fs::write(&other, "nodes:\n  gw-2: {weight: 0}\n").unwrap();
    std::fs::rename(&other, &path).unwrap();
    let s2 = wait_for_reload(&app, &s1).await;
    assert_eq!(s2["effective"]["nodes"]["gw-2"]["weight"], 0);
    assert!(app.assignments(&users).await.values().all(|n| n == "gw-1"));

    // Deleted: no overrides.
    std::fs::remove_file(&path).unwrap();
    let s3 = wait_for_reload(&app, &s2).await;
    assert_eq!(s3["status"], "ok");
    assert_eq!(s3["revision"], "");
    let spread = app.assignments(&users).await;
    assert!(spread.values().any(|n| n == "gw-1") && spread.values().any(|n| n == "gw-2"));
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_until_it_is_fixed() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let s0 = overrides(&app).await;
    std::fs::write(&path, "pins:\n  vip: gw-2\n").unwrap();
    let good = wait_for_reload(&app, &s0).await;
    let routing_before = app.admin_json(Method::GET, "/admin/routing", None).await.1;

    let bad_files = [
        ("pins:\n  vip: gw-7\n", "pins.vip: unknown node"),
        // The place is named; the file's own words are not quoted back.
        (
            "pinz:\n  vip: gw-1\n",
            "unknown field `…`, expected one of `active_strategy`",
        ),
        (
            "nodes:\n  gw-1: {wieght: 3}\n",
            "nodes.gw-1: unknown field `…`",
        ),
        (
            "nodes:\n  gw-1: {external: {tcp_addr: nope}}\n",
            "nodes.gw-1.external.tcp_addr",
        ),
        (
            "active_strategy: missing\n",
            "active_strategy: unknown strategy",
        ),
        ("pins:\n  vip: [gw-1\n", "line"),
    ];
    let mut last = good.clone();
    for (text, needle) in bad_files {
        std::fs::write(&path, text).unwrap();
        last = wait_for_reload(&app, &last).await;
        assert_eq!(last["status"], "error", "{text}");
        assert!(
            last["error"].as_str().unwrap().contains(needle),
            "{text}: {}",
            last["error"]
        );
        assert_eq!(
            last["revision"], good["revision"],
            "the last good overrides stay"
        );
        assert_eq!(last["effective"], good["effective"]);
        assert_eq!(node_of(&app, "vip").await, "gw-2");
        let (status, err) = app
            .admin_json(Method::POST, "/admin/overrides/reload", None)
            .await;
        assert_eq!(status, 400);
        assert_eq!(err["code"], "invalid_overrides");
        assert!(err["msg"].as_str().unwrap().contains(needle));
    }
    let routing_after = app.admin_json(Method::GET, "/admin/routing", None).await.1;
    assert_eq!(routing_before["revision"], routing_after["revision"]);

    std::fs::write(&path, "pins:\n  vip: gw-1\n").unwrap();
    let fixed = wait_for_reload(&app, &last).await;
    assert_eq!(fixed["status"], "ok");
    assert!(fixed.get("error").is_none());
    assert_eq!(node_of(&app, "vip").await, "gw-1");
    let m = app.metrics().await;
    assert!(
        m.contains(r#"imroute_overrides_reloads_total{result="error"}"#),
        "{m}"
    );
    assert!(m.contains(r#"imroute_overrides_reloads_total{result="ok"}"#));
    assert!(m.contains(&format!(
        r#"imroute_overrides_info{{revision="{}"}} 1"#,
        fixed["revision"].as_str().unwrap()
    )));
}

#[tokio::test]
async fn a_half_written_file_is_never_applied() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let s0 = overrides(&app).await;
    let full = "nodes:\n  gw-1: {weight: 0}\npins:\n  vip: gw-2\n";
    // The first half alone does not validate (truncated flow mapping).
    std::fs::write(&path, &full[..20]).unwrap();
    let s1 = wait_for_reload(&app, &s0).await;
    assert_eq!(s1["status"], "error");
    std::fs::write(&path, full).unwrap();
    let s2 = wait_for_reload(&app, &s1).await;
    assert_eq!(s2["status"], "ok");
    assert_eq!(s2["effective"]["pins"]["vip"], "gw-2");
}

#[tokio::test]
async fn a_pin_to_a_drained_node_falls_back_to_the_strategy() {
    let app = two_nodes().await;
    let natural = node_of(&app, "vip").await;
    let other = if natural == "gw-1" { "gw-2" } else { "gw-1" };
    std::fs::write(app.overrides_path(), format!("pins:\n  vip: {other}\n")).unwrap();
    let (status, _) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(node_of(&app, "vip").await, other);
    app.admin(
        Method::PATCH,
        &format!("/admin/nodes/{other}"),
        Some(json!({"state": "draining"})),
    )
    .await;
    assert_eq!(node_of(&app, "vip").await, natural);
    app.admin(
        Method::PATCH,
        &format!("/admin/nodes/{other}"),
        Some(json!({"state": "active"})),
    )
    .await;
    assert_eq!(node_of(&app, "vip").await, other);
}

#[tokio::test]
async fn nodes_that_exist_only_in_the_file_route_users() {
    let app = spawn_app().await;
    std::fs::write(
        app.overrides_path(),
        "nodes:\n  gw-9: {region: eu, external: {tcp_addr: \"198.51.100.9:5100\", ws_addr: \"\", wss_addr: \"\"}}\n",
    )
    .unwrap();
    let (status, body) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let groups: Vec<Value> = app.batch(&["a", "b"]).await.json().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["node_id"], "gw-9");
    assert_eq!(groups[0]["tcp_addr"], "198.51.100.9:5100");
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-9", None).await;
    assert_eq!(node["source"], "overrides");
    assert_eq!(node["version"], 0);
    let (status, err) = app
        .admin_json(Method::DELETE, "/admin/nodes/gw-9", None)
        .await;
    assert_eq!(status, 409, "{err}");
}

/// A client cannot connect to a node without an external `tcp_addr`: a file
/// that creates such a node or clears a stored node's address is refused
/// whole, and routing keeps the last good overrides.
#[tokio::test]
async fn a_file_may_not_leave_a_node_without_an_external_tcp_addr() {
    let app = two_nodes().await;
    std::fs::write(app.overrides_path(), "nodes:\n  gw-1: {weight: 7}\n").unwrap();
    let (status, body) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, before) = app.admin_json(Method::GET, "/admin/routing", None).await;
    for (file, field) in [
        (
            "nodes:\n  gw-9: {region: eu}\n",
            "nodes.gw-9.external.tcp_addr",
        ),
        (
            "nodes:\n  gw-2: {external: {tcp_addr: \"\"}}\n",
            "nodes.gw-2.external.tcp_addr",
        ),
    ] {
        std::fs::write(app.overrides_path(), file).unwrap();
        let (status, err) = app
            .admin_json(Method::POST, "/admin/overrides/reload", None)
            .await;
        assert_eq!(status, 400, "{file}: {err}");
        assert!(err["msg"].as_str().unwrap().contains(field), "{err}");
        let (_, status) = app.admin_json(Method::GET, "/admin/overrides", None).await;
        assert!(
            status["error"].as_str().unwrap().contains(field),
            "{status}"
        );
        let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
        assert_eq!(routing["revision"], before["revision"], "{file}");
        assert_eq!(routing["nodes_routable"], 2, "{routing}");
    }
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(node["weight"], 7, "the last good file still applies");
}

#[tokio::test]
async fn the_file_wins_field_by_field_over_admin_writes() {
    let app = two_nodes().await;
    std::fs::write(app.overrides_path(), "nodes:\n  gw-1: {weight: 7}\n").unwrap();
    app.admin(Method::POST, "/admin/overrides/reload", None)
        .await;
    let (status, node) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-1",
            Some(json!({"weight": 50, "region": "ap"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(node["weight"], 7, "the file sets weight");
    assert_eq!(
        node["region"], "ap",
        "the admin write stands for other fields"
    );
    assert_eq!(node["version"], 2, "the write was stored");
    std::fs::remove_file(app.overrides_path()).unwrap();
    app.admin(Method::POST, "/admin/overrides/reload", None)
        .await;
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(node["weight"], 50);
    assert_eq!(node["source"], "db");
}

#[tokio::test]
async fn the_file_can_switch_strategy_and_set_user_regions() {
    let app = two_nodes().await;
    app.admin(
        Method::PUT,
        "/admin/strategies/geo",
        Some(json!({"kind": "region", "params": {"default_region": "eu"}})),
    )
    .await;
    std::fs::write(
        app.overrides_path(),
        "active_strategy: geo\nuser_regions:\n  alice: us\n",
    )
    .unwrap();
    let (status, body) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["active_strategy"], "geo");
    assert_eq!(routing["source"], "overrides");
    assert_eq!(node_of(&app, "alice").await, "gw-2");
    assert_eq!(node_of(&app, "bob").await, "gw-1");
    let (status, _) = app
        .admin_json(Method::DELETE, "/admin/strategies/geo", None)
        .await;
    assert_eq!(status, 409, "the strategy in effect cannot be deleted");
}

#[tokio::test]
async fn a_thousand_pins_take_effect() {
    let app = two_nodes().await;
    let mut text = String::from("pins:\n");
    for i in 0..1000 {
        text.push_str(&format!("  pinned-{i}: gw-{}\n", 1 + i % 2));
    }
    std::fs::write(app.overrides_path(), text).unwrap();
    let (status, _) = app
        .admin_json(Method::POST, "/admin/overrides/reload", None)
        .await;
    assert_eq!(status, 200);
    let users: Vec<String> = (0..1000).map(|i| format!("pinned-{i}")).collect();
    let got = app.assignments(&users).await;
    for (i, u) in users.iter().enumerate() {
        assert_eq!(got[u], format!("gw-{}", 1 + i % 2));
    }
}

#[tokio::test]
async fn a_server_starts_with_an_invalid_file_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    std::fs::create_dir_all(config.overrides_path.parent().unwrap()).unwrap();
    std::fs::write(&config.overrides_path, "pins: [oops\n").unwrap();
    let app = start(dir, config).await;
    let s = overrides(&app).await;
    assert_eq!(s["status"], "error");
    assert!(s["error"].is_string());
    assert_eq!(s["effective"]["pins"], json!({}));
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn check_config_validates_the_overrides_file_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_imroute"))
            .arg("check-config")
            .current_dir(dir)
            .env("IMROUTE_OVERRIDES_PATH", "ov.yaml")
            .env("IMROUTE_DATABASE_URL", "sqlite://data/imroute.db")
            .output()
            .unwrap()
    };
    std::fs::write(
        dir.path().join("ov.yaml"),
        "nodes:\n  gw-1: {weight: 70000}\n",
    )
    .unwrap();
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ov.yaml") && err.contains("weight"), "{err}");
    std::fs::write(
        dir.path().join("ov.yaml"),
        "nodes:\n  gw-1: {weight: 7}\npins: {vip: gw-1}\n",
    )
    .unwrap();
    let out = run(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The file is changed through a hard link in another folder, which raises no
/// event the watcher sees (only its 5 s periodic check would): so the pin
/// routes after SIGHUP and not before, and the reload is audited as SIGHUP's.
#[tokio::test]
async fn sighup_reloads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let alias = elsewhere.join("overrides.yaml");
    std::fs::write(&alias, "pins: {}\n").unwrap();
    std::fs::hard_link(&alias, dir.path().join("config/overrides.yaml")).unwrap();
    let server = Process::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let get = |path: String| {
        client
            .get(format!("{}{path}", server.addr))
            .bearer_auth(TOKEN)
            .send()
    };
    let node_of = |uid: &'static str| async move {
        let v: Value = get(format!("/route?uid={uid}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["node_id"].as_str().unwrap_or_default().to_owned()
    };
    for id in ["gw-1", "gw-2"] {
        let resp = client
            .post(format!("{}/admin/nodes", server.addr))
            .bearer_auth(TOKEN)
            .json(&json!({"id": id, "external": {"tcp_addr": format!("{id}.example.com:1")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    // The periodic check may, rarely, re-read the file between the write and
    // the signal; then try again, pinning to the other node.
    let mut clean = false;
    for attempt in 0..3 {
        let before: Value = get("/admin/overrides".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let was = node_of("vip").await;
        let pinned = if was == "gw-1" { "gw-2" } else { "gw-1" };
        std::fs::write(&alias, format!("pins: {{vip: {pinned}}}\n# {attempt}\n")).unwrap();
        let now: Value = get("/admin/overrides".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if now["revision"] != before["revision"] {
            continue;
        }
        assert_eq!(node_of("vip").await, was, "not pinned before SIGHUP");
        std::process::Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        // Well within the 5 s periodic check.
        let routed = eventually(Duration::from_secs(3), || async {
            node_of("vip").await == pinned
        })
        .await;
        assert!(routed, "the pin to {pinned} routes after SIGHUP");
        let audit: Vec<Value> = get("/admin/audit?limit=10".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reload = audit
            .iter()
            .find(|r| r["action"] == "overrides.reload")
            .expect("the reload is audited");
        let after: Value = get("/admin/overrides".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(after["status"], "ok", "{after}");
        assert_eq!(after["effective"]["pins"]["vip"], pinned);
        if reload["request_id"] == "sighup" {
            clean = true;
            break;
        }
        // The periodic check got there first after all.
    }
    assert!(clean, "three attempts raced the periodic check");
}

#[tokio::test]
async fn a_file_that_keeps_changing_is_still_reloaded() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    // Rewrite every 50 ms, faster than the settle time, for two seconds: the
    // watcher must not wait for a quiet moment that never comes.
    let writer = {
        let path = path.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                save_by_rename(&path, &format!("pins:\n  vip-{i}: gw-1\n"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let reloaded_while_busy = eventually(Duration::from_millis(1800), || async {
        overrides(&app).await["effective"]["pins"]
            .as_object()
            .is_some_and(|p| !p.is_empty())
    })
    .await;
    writer.await.unwrap();
    assert!(reloaded_while_busy, "no reload during a stream of saves");
    let last = eventually(DEADLINE, || async {
        overrides(&app).await["effective"]["pins"]
            .get("vip-39")
            .is_some()
    })
    .await;
    assert!(last, "the final content is applied");
}

/// Publishes `text` the way kubelet updates a ConfigMap volume: the data goes
/// into a new timestamped folder, a `..data_tmp` symlink to it is renamed over
/// `..data` (atomic), then the previous folder is removed. `overrides.yaml`
/// is a symlink to `..data/overrides.yaml`, created with the first version and
/// never touched again.
#[cfg(unix)]
fn configmap_publish(folder: &std::path::Path, stamp: &str, text: &str) {
    use std::os::unix::fs::symlink;
    let data = format!("..2026_11_26_10_00_00.{stamp}");
    std::fs::create_dir(folder.join(&data)).unwrap();
    std::fs::write(folder.join(&data).join("overrides.yaml"), text).unwrap();
    let previous = std::fs::read_link(folder.join("..data")).ok();
    symlink(&data, folder.join("..data_tmp")).unwrap();
    std::fs::rename(folder.join("..data_tmp"), folder.join("..data")).unwrap();
    if let Some(previous) = previous {
        std::fs::remove_dir_all(folder.join(previous)).unwrap();
    }
    let file = folder.join("overrides.yaml");
    if std::fs::symlink_metadata(&file).is_err() {
        symlink("..data/overrides.yaml", file).unwrap();
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_update_that_swaps_the_data_symlink_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let folder = config.overrides_path.parent().unwrap().to_owned();
    std::fs::create_dir_all(&folder).unwrap();
    // Mounted before the server starts, as in a pod.
    configmap_publish(&folder, "000000001", "user_regions:\n  alice: eu\n");
    let app = start(dir, config).await;
    let mut state = overrides(&app).await;
    assert_eq!(state["effective"]["user_regions"]["alice"], "eu", "{state}");
    for (stamp, region) in [("000000002", "us"), ("000000003", "ap")] {
        configmap_publish(
            &folder,
            stamp,
            &format!("user_regions:\n  alice: {region}\n"),
        );
        state = wait_for_reload_within(&app, &state, Duration::from_secs(2)).await;
        assert_eq!(state["status"], "ok", "{state}");
        assert_eq!(state["effective"]["user_regions"]["alice"], region);
    }
}

#[tokio::test]
async fn a_folder_removed_and_created_again_is_watched_again() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let folder = path.parent().unwrap();
    let mut state = overrides(&app).await;
    std::fs::write(&path, "pins:\n  vip: gw-1\n").unwrap();
    state = wait_for_reload(&app, &state).await;
    // Two rounds back to back with a 2 s deadline: a watcher that found the
    // new folder only on its 5 s timer would miss at least one of them.
    for round in 0..2 {
        std::fs::remove_dir_all(folder).unwrap();
        state = wait_for_reload(&app, &state).await;
        assert_eq!(state["revision"], "", "no folder, no file, no overrides");
        std::fs::create_dir(folder).unwrap();
        std::fs::write(&path, format!("pins:\n  vip: gw-2\n# round {round}\n")).unwrap();
        state = wait_for_reload_within(&app, &state, Duration::from_secs(2)).await;
        assert_eq!(state["effective"]["pins"]["vip"], "gw-2", "{state}");
        // The new folder's own events are seen.
        std::fs::write(&path, format!("pins:\n  vip: gw-1\n# round {round}\n")).unwrap();
        state = wait_for_reload_within(&app, &state, Duration::from_secs(2)).await;
        assert_eq!(state["effective"]["pins"]["vip"], "gw-1", "{state}");
    }
}

/// A write through a hard link in another folder changes the file in place
/// but raises no event in the watched folder: inotify reports a change to the
/// folder of the path it was made through. Only the periodic check sees it.
#[tokio::test]
async fn a_change_no_event_reports_is_picked_up_by_the_periodic_check() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let elsewhere = app.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let alias = elsewhere.join("overrides.yaml");
    std::fs::write(&alias, "pins:\n  vip: gw-1\n").unwrap();
    let s0 = overrides(&app).await;
    // Linking it into the folder is an event like any new file.
    std::fs::hard_link(&alias, &path).unwrap();
    let s1 = wait_for_reload(&app, &s0).await;
    assert_eq!(s1["effective"]["pins"]["vip"], "gw-1", "{s1}");
    std::fs::write(&alias, "pins:\n  vip: gw-2\n").unwrap();
    // Two check periods.
    let s2 = wait_for_reload_within(&app, &s1, Duration::from_secs(10)).await;
    assert_eq!(s2["effective"]["pins"]["vip"], "gw-2", "{s2}");
    assert_eq!(node_of(&app, "vip").await, "gw-2");
}

/// Reloads counted by the metric (good and bad) and audited reloads.
async fn reload_counts(app: &TestApp) -> (f64, usize) {
    let metric = app
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("imroute_overrides_reloads_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let (_, audit) = app
        .admin_json(Method::GET, "/admin/audit?limit=1000", None)
        .await;
    let audited = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["action"] == "overrides.reload")
        .count();
    (metric, audited)
}

#[tokio::test]
async fn unrelated_files_in_the_folder_cause_no_reload() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let folder = path.parent().unwrap();
    let s0 = overrides(&app).await;
    std::fs::write(&path, "pins:\n  vip: gw-1\n").unwrap();
    wait_for_reload(&app, &s0).await;
    // The audit row is written just after the new state is visible.
    let audited = eventually(DEADLINE, || async { reload_counts(&app).await.1 == 1 }).await;
    assert!(audited, "{:?}", reload_counts(&app).await);
    let before = reload_counts(&app).await;
    // A busy folder for a second: other files written, renamed, removed.
    for i in 0..20 {
        let other = folder.join(format!("other-{}.yaml", i % 3));
        std::fs::write(&other, format!("n: {i}\n")).unwrap();
        std::fs::rename(&other, folder.join("other.yaml")).unwrap();
        std::fs::create_dir(folder.join("sub")).unwrap();
        std::fs::remove_dir(folder.join("sub")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(folder.join("other.yaml")).unwrap();
    // Proving an absence: keep checking for longer than a burst takes to
    // settle and reload (MAX_DELAY, 700 ms), so a reload would have shown.
    let reloaded = eventually(Duration::from_millis(1500), || async {
        reload_counts(&app).await != before
    })
    .await;
    assert!(!reloaded, "{before:?} -> {:?}", reload_counts(&app).await);
    assert_eq!(node_of(&app, "vip").await, "gw-1");
}

/// Audit rows, newest first.
async fn audit(app: &TestApp) -> Vec<Value> {
    let (status, rows) = app
        .admin_json(Method::GET, "/admin/audit?limit=1000", None)
        .await;
    assert_eq!(status, 200, "{rows}");
    rows.as_array().unwrap().clone()
}

#[tokio::test]
async fn a_node_the_file_patches_or_pins_to_cannot_be_deleted_until_the_file_lets_go() {
    let app = two_nodes().await;
    let path = app.overrides_path();
    let s0 = overrides(&app).await;
    std::fs::write(&path, "nodes:\n  gw-1: {region: eu}\npins:\n  vip: gw-2\n").unwrap();
    let s1 = wait_for_reload(&app, &s0).await;
    assert_eq!(s1["status"], "ok", "{s1}");
    let mut users = uids(300);
    users.push("vip".into());
    let routes_before = app.assignments(&users).await;
    assert_eq!(routes_before["vip"], "gw-2");
    let (_, nodes_before) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    let (_, routing_before) = app.admin_json(Method::GET, "/admin/routing", None).await;
    let audited_before = audit(&app).await.len();

    for (id, named, not_named) in [
        ("gw-1", "nodes.gw-1", "pins.vip"),
        ("gw-2", "pins.vip", "nodes.gw-1"),
    ] {
        let (status, err) = app
            .admin_json(Method::DELETE, &format!("/admin/nodes/{id}"), None)
            .await;
        assert_eq!(status, 409, "{id}: {err}");
        assert_eq!(err["code"], "conflict");
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains(named) && !msg.contains(not_named),
            "{id}: {msg}"
        );
    }
    let (_, nodes_after) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(
        nodes_before, nodes_after,
        "nothing deleted, no version moved"
    );
    let (_, routing_after) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing_before["revision"], routing_after["revision"]);
    assert_eq!(app.assignments(&users).await, routes_before);
    assert_eq!(
        audit(&app).await.len(),
        audited_before,
        "a refusal writes nothing"
    );

    // The file lets go of gw-1 (the watcher reloads it): gw-1 can go, gw-2
    // is still pinned to.
    // Many pins to one node: the refusal names a few and counts the rest.
    let many: String = (0..9).map(|i| format!("  v{i}: gw-2\n")).collect();
    std::fs::write(&path, format!("pins:\n  vip: gw-2\n{many}")).unwrap();
    let s2 = wait_for_reload(&app, &s1).await;
    assert_eq!(s2["status"], "ok", "{s2}");
    let resp = app.admin(Method::DELETE, "/admin/nodes/gw-1", None).await;
    assert_eq!(resp.status(), 204);
    let (status, err) = app
        .admin_json(Method::DELETE, "/admin/nodes/gw-2", None)
        .await;
    assert_eq!(status, 409, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("pins.v0") && msg.contains("and 5 more"),
        "{msg}"
    );

    std::fs::write(&path, "pins: {}\n").unwrap();
    let s3 = wait_for_reload(&app, &s2).await;
    assert_eq!(s3["status"], "ok", "{s3}");
    let resp = app.admin(Method::DELETE, "/admin/nodes/gw-2", None).await;
    assert_eq!(resp.status(), 204);
    let (_, nodes) = app.admin_json(Method::GET, "/admin/nodes", None).await;
    assert_eq!(nodes, json!([]));
    let deleted: Vec<String> = audit(&app)
        .await
        .iter()
        .filter(|r| r["action"] == "node.delete")
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deleted, ["gw-2", "gw-1"]);
}

/// The last good file is kept per replica id. The default id is the host
/// name and the bound port, and a test server binds port 0, so a restart
/// would be another replica with nothing kept: the id is fixed here, as a
/// deployment that wants this must fix it (`cluster.replica_id`).
#[tokio::test]
async fn the_last_good_overrides_survive_a_restart_with_an_invalid_file() {
    let app = spawn_app_with(|c| c.cluster.replica_id = Some("the-one".into())).await;
    app.add_node("gw-1", json!({"region": "eu"})).await;
    app.add_node("gw-2", json!({"region": "us"})).await;
    let path = app.overrides_path();
    let natural = node_of(&app, "vip").await;
    let pinned = if natural == "gw-1" { "gw-2" } else { "gw-1" };
    let s0 = overrides(&app).await;
    std::fs::write(&path, format!("pins:\n  vip: {pinned}\n")).unwrap();
    let good = wait_for_reload(&app, &s0).await;
    assert_eq!(good["status"], "ok", "{good}");
    assert_eq!(node_of(&app, "vip").await, pinned);
    std::fs::write(&path, "pins:\n  vip: [gw-1\n").unwrap();
    let bad = wait_for_reload(&app, &good).await;
    assert_eq!(bad["status"], "error", "{bad}");

    let app = app.restart().await;
    let s = overrides(&app).await;
    assert_eq!(s["status"], "error", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("line"), "the parse error is shown: {error}");
    assert_eq!(s["revision"], good["revision"], "{s}");
    assert_eq!(s["effective"], good["effective"]);
    assert_eq!(s["effective"]["pins"]["vip"], pinned);
    assert_eq!(node_of(&app, "vip").await, pinned, "the pin still routes");
    let (_, routing) = app.admin_json(Method::GET, "/admin/routing", None).await;
    assert_eq!(routing["pins"], 1);
}

#[tokio::test]
async fn hostile_files_are_refused_quickly_without_quoting_them_and_writes_go_on() {
    let app = spawn_app_with(|c| c.limits.max_overrides_bytes = 64 * 1024).await;
    app.add_node("gw-1", json!({})).await;
    let path = app.overrides_path();
    let dir = path.parent().unwrap().to_owned();
    let reload = || async {
        let t = std::time::Instant::now();
        let (status, body) = app
            .admin_json(Method::POST, "/admin/overrides/reload", None)
            .await;
        (status, body, t.elapsed())
    };
    // A "secret" behind a symlink: its content never comes back.
    let secret = dir.join("secret");
    std::fs::write(&secret, "root:SECRET-HASH-42:20228:0:99999:7:::\n").unwrap();
    std::os::unix::fs::symlink(&secret, &path).unwrap();
    let (status, body, _) = reload().await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("SECRET-HASH-42"), "{body}");
    let (_, shown) = app.admin_json(Method::GET, "/admin/overrides", None).await;
    assert!(!shown.to_string().contains("SECRET-HASH-42"), "{shown}");
    std::fs::remove_file(&path).unwrap();

    // A FIFO would block a reader forever.
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink(&fifo, &path).unwrap();
    let (status, body, took) = reload().await;
    assert_eq!(status, 400);
    assert!(
        body["msg"].as_str().unwrap().contains("not a regular file"),
        "{body}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    std::fs::remove_file(&path).unwrap();

    // Too large, and too deeply nested.
    std::fs::write(&path, format!("pins:\n{}", "  x: gw-1\n".repeat(10_000))).unwrap();
    let (status, body, _) = reload().await;
    assert_eq!(status, 400);
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .contains("max_overrides_bytes"),
        "{body}"
    );
    std::fs::write(
        &path,
        format!("pins: {}{}\n", "[".repeat(5000), "]".repeat(5000)),
    )
    .unwrap();
    let (status, body, took) = reload().await;
    assert_eq!(status, 400);
    assert!(
        body["msg"].as_str().unwrap().contains("nested deeper"),
        "{body}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Admin writes were never held up, and still work.
    let t = std::time::Instant::now();
    app.add_node("gw-2", json!({})).await;
    assert!(t.elapsed() < Duration::from_secs(2));
}
