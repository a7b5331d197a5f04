//! The dashboard in a real Chromium: sign-in, what it shows, drain with a
//! preview, a 412, the overrides error, the uid lookup, 1,000 nodes, and
//! `/docs`. Screenshots land in `target/ui-screenshots/`.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::{browser::Browser, helpers::*};

const ENTER: &str = "\u{E007}";

/// Opens `/` (which sends the browser to the dashboard) and signs in with
/// the token typed into the password field, Enter submitting.
async fn sign_in(b: &Browser, app: &TestApp) {
    b.goto(&app.url("/")).await;
    b.wait_until(
        "the sign-in form",
        "!document.getElementById('signin-view').hidden",
    )
    .await;
    b.type_into("#token", &format!("{}{ENTER}", app.token))
        .await;
    b.wait_until(
        "the dashboard",
        "!document.getElementById('dash-view').hidden",
    )
    .await;
}

async fn row_text(b: &Browser, id: &str) -> String {
    b.text(&format!("tr[data-node-id=\"{id}\"]")).await
}

async fn cell(b: &Browser, id: &str, column: usize) -> String {
    b.text(&format!("tr[data-node-id=\"{id}\"] > :nth-child({column})"))
        .await
}

/// Console errors other than the failed requests a test provoked on purpose.
async fn unexpected_console_errors(b: &Browser, allowed: &[&str]) -> Vec<String> {
    b.console_errors()
        .await
        .into_iter()
        .filter(|m| !allowed.iter().any(|a| m.contains(a)))
        .collect()
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_right_one_signs_in_for_the_tab() {
    let Some(b) = Browser::start("ui sign-in").await else {
        return;
    };
    let app = spawn_app().await;
    app.add_node("gw-1", json!({"region": "eu"})).await;
    b.goto(&app.url("/")).await;
    b.wait_until(
        "the sign-in form",
        "!document.getElementById('signin-view').hidden",
    )
    .await;
    assert_eq!(
        b.js("return location.pathname;", json!([])).await,
        "/ui",
        "/ redirects to the dashboard"
    );
    assert_eq!(
        b.js("return document.getElementById('token').type;", json!([]))
            .await,
        "password"
    );
    b.type_into("#token", &format!("not-the-token{ENTER}"))
        .await;
    b.wait_until(
        "the wrong-token message",
        "document.getElementById('signin-error').textContent.includes('Wrong token')",
    )
    .await;
    assert_eq!(
        b.js(
            "return document.getElementById('dash-view').hidden;",
            json!([])
        )
        .await,
        true,
        "nothing is shown"
    );
    assert_eq!(
        b.js("return sessionStorage.length;", json!([])).await,
        0,
        "a wrong token is not kept"
    );
    b.screenshot("sign-in-wrong-token").await;

    b.clear("#token").await;
    b.type_into("#token", &format!("{}{ENTER}", app.token))
        .await;
    b.wait_for("tr[data-node-id=\"gw-1\"]").await;
    // Kept for the tab: a reload stays signed in.
    b.goto(&app.url("/ui")).await;
    b.wait_for("tr[data-node-id=\"gw-1\"]").await;
    assert_eq!(
        b.js(
            "return document.getElementById('signin-view').hidden;",
            json!([])
        )
        .await,
        true
    );
    // Signing out forgets it.
    b.click("#sign-out").await;
    b.wait_until(
        "the sign-in form",
        "!document.getElementById('signin-view').hidden",
    )
    .await;
    assert_eq!(b.js("return sessionStorage.length;", json!([])).await, 0);
    b.goto(&app.url("/ui")).await;
    b.wait_until(
        "the sign-in form",
        "!document.getElementById('signin-view').hidden",
    )
    .await;
    let errors = unexpected_console_errors(&b, &["401"]).await;
    assert!(errors.is_empty(), "{errors:?}");
    b.quit().await;
}

#[tokio::test]
async fn every_node_shows_with_its_state_and_share_and_a_drain_applies_after_its_preview() {
    let Some(b) = Browser::start("ui nodes and drain").await else {
        return;
    };
    let app = spawn_app().await;
    for (i, region) in ["eu", "eu", "us", "ap"].iter().enumerate() {
        app.add_node(&format!("gw-{}", i + 1), json!({"region": region}))
            .await;
    }
    app.add_node("gw-5", json!({"state": "disabled"})).await;
    app.heartbeat("gw-1", 1200).await;
    app.heartbeat("gw-2", 800).await;
    sign_in(&b, &app).await;
    let distribution = app
        .get_json_admin("/admin/routing/distribution?sample=100000")
        .await;
    for n in distribution["nodes"].as_array().unwrap() {
        let id = n["node_id"].as_str().unwrap();
        let share = format!("{:.1}%", n["share"].as_f64().unwrap() * 100.0);
        b.wait_until(
            &format!("{id} shows its share"),
            &format!(
                "(document.querySelector('tr[data-node-id=\"{id}\"] > :nth-child(7)') || {{}}).textContent === '{share}'"
            ),
        )
        .await;
        assert_eq!(cell(&b, id, 3).await, "active");
    }
    assert_eq!(cell(&b, "gw-5", 3).await, "disabled");
    assert_eq!(cell(&b, "gw-5", 7).await, "0.0%");
    assert!(row_text(&b, "gw-1").await.contains("1200"));
    assert!(row_text(&b, "gw-1").await.contains("healthy"));
    // One bar per node in the chart.
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#chart rect').length;",
            json!([])
        )
        .await,
        5
    );
    // The summary cards.
    let routing = app.get_json_admin("/admin/routing").await;
    assert_eq!(
        b.text("#revision").await,
        routing["revision"].as_str().unwrap()
    );
    assert_eq!(b.text("#strategy-name").await, "default");
    assert_eq!(b.text("#panic").await, "off");
    assert_eq!(b.text("#converged").await, "converged");
    b.screenshot("dashboard").await;

    // Drain gw-2: the preview first.
    let share_gw2 = distribution["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "gw-2")
        .unwrap()["share"]
        .as_f64()
        .unwrap();
    b.click("tr[data-node-id=\"gw-2\"] button[data-action=\"drain\"]")
        .await;
    b.wait_for("#preview-body .moved").await;
    let moved: f64 = b
        .js(
            "return Number(document.querySelector('#preview-body .moved').dataset.moved);",
            json!([]),
        )
        .await
        .as_f64()
        .unwrap();
    assert!(
        (moved - share_gw2).abs() < 0.005,
        "the preview moves gw-2's users: {moved} vs {share_gw2}"
    );
    assert!(b.text("#preview-body").await.contains("gw-2"));
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-2", None).await;
    assert_eq!(node["state"], "active", "nothing written by the preview");
    b.screenshot("drain-preview").await;
    b.click("#preview-apply").await;
    b.wait_until(
        "the dialog closes",
        "!document.getElementById('preview').open",
    )
    .await;
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-2", None).await;
    assert_eq!(node["state"], "draining");
    assert_eq!(node["version"], 2);
    b.wait_until(
        "the row shows the drain",
        "document.querySelector('tr[data-node-id=\"gw-2\"] > :nth-child(3)').textContent === 'draining'",
    )
    .await;
    // The audit panel lists it.
    b.wait_until(
        "the audit panel",
        "document.getElementById('audit').textContent.includes('node.update')",
    )
    .await;

    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let host = app.url("/");
    for url in b.requested_urls().await {
        assert!(url.starts_with(&host), "a request to another host: {url}");
    }
    b.quit().await;
}

#[tokio::test]
async fn a_weight_change_meets_a_412_when_the_node_changed_in_between() {
    let Some(b) = Browser::start("ui 412").await else {
        return;
    };
    let app = spawn_app().await;
    for i in 1..=3 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    app.admin(
        Method::PUT,
        "/admin/routing",
        Some(json!({"active_strategy": "default"})),
    )
    .await;
    sign_in(&b, &app).await;
    b.click("tr[data-node-id=\"gw-1\"] button[data-action=\"weight\"]")
        .await;
    b.wait_until(
        "the weight field",
        "document.activeElement.id === 'weight-input'",
    )
    .await;
    b.clear("#weight-input").await;
    b.type_into("#weight-input", &format!("50{ENTER}")).await;
    b.wait_for("#preview-body .moved").await;
    // Someone else changes the node meanwhile.
    let (status, _) = app
        .admin_json(
            Method::PATCH,
            "/admin/nodes/gw-1",
            Some(json!({"weight": 70})),
        )
        .await;
    assert_eq!(status, 200);
    b.click("#preview-apply").await;
    b.wait_until(
        "the 412 message",
        "document.getElementById('preview-error').textContent.includes('Someone else changed gw-1')",
    )
    .await;
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(node["weight"], 70, "the other change stands");
    b.screenshot("weight-412").await;
    // Reload, preview again, apply.
    b.click("#preview-reload").await;
    b.wait_until(
        "a fresh preview",
        "!document.getElementById('preview-apply').disabled && document.getElementById('preview-error').textContent === ''",
    )
    .await;
    b.click("#preview-apply").await;
    b.wait_until(
        "the dialog closes",
        "!document.getElementById('preview').open",
    )
    .await;
    let (_, node) = app.admin_json(Method::GET, "/admin/nodes/gw-1", None).await;
    assert_eq!(node["weight"], 50);
    assert_eq!(node["version"], 3);
    let errors = unexpected_console_errors(&b, &["412"]).await;
    assert!(errors.is_empty(), "{errors:?}");
    b.quit().await;
}

#[tokio::test]
async fn an_overrides_file_error_and_a_uid_lookup_show_on_the_page() {
    let Some(b) = Browser::start("ui overrides and lookup").await else {
        return;
    };
    let app = spawn_app().await;
    for i in 1..=4 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    sign_in(&b, &app).await;
    b.wait_until(
        "the overrides status",
        "document.getElementById('overrides-status').textContent === 'ok'",
    )
    .await;

    // The uid lookup, with candidates.
    b.type_into("#lookup-uid", &format!("alice{ENTER}")).await;
    b.wait_for("#lookup-result strong[data-node]").await;
    let answer = app.get_json("/route?uid=alice&candidates=3").await;
    let shown = b
        .js(
            "return document.querySelector('#lookup-result strong').dataset.node;",
            json!([]),
        )
        .await;
    assert_eq!(shown, answer["node_id"]);
    let items: Vec<String> = b
        .js(
            "return [...document.querySelectorAll('#lookup-result li')].map(li => li.textContent);",
            json!([]),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<&str> = answer["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(items.len(), 3);
    for (item, id) in items.iter().zip(&want) {
        assert!(item.starts_with(id), "{item} vs {id}");
    }

    // A broken overrides file.
    std::fs::write(app.overrides_path(), "pins:\n  alice: gw-404\n").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get_json_admin("/admin/overrides").await["status"] == "error"
        })
        .await
    );
    b.wait_until(
        "the overrides error",
        "document.getElementById('overrides-error').textContent.includes('gw-404')",
    )
    .await;
    assert!(b.text("#overrides-status").await.starts_with("error"));
    b.screenshot("overrides-error").await;
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    b.quit().await;
}

#[tokio::test]
async fn a_thousand_nodes_render_within_a_second_and_sort_and_filter() {
    let Some(b) = Browser::start("ui 1000 nodes").await else {
        return;
    };
    let app = spawn_app().await;
    // A thousand nodes at once: through the overrides file (file-only nodes).
    let mut yaml = String::from("nodes:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  gw-{i:04}: {{region: {}, weight: {}, external: {{tcp_addr: \"10.0.{}.{}:5100\"}}}}\n",
            ["eu", "us", "ap"][i % 3],
            1 + (i * 7) % 200,
            i / 256,
            i % 256
        ));
    }
    std::fs::write(app.overrides_path(), yaml).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get_json_admin("/admin/routing").await["nodes_total"] == 1000
        })
        .await
    );
    sign_in(&b, &app).await;
    // A page of 100 rows, at once; the chart has every node once the
    // distribution is counted (slow in a debug build: waited for apart).
    b.wait_until(
        "the first page",
        "document.querySelectorAll('#nodes-body tr').length === 100",
    )
    .await;
    b.wait_until_for(
        "the chart",
        "document.querySelectorAll('#chart rect').length === 1000",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(b.text("#nodes-count").await, "1000 nodes");
    assert_eq!(b.text("#page-info").await, "1–100 of 1000");
    let render_ms = b
        .js("return Number(document.body.dataset.renderMs);", json!([]))
        .await
        .as_f64()
        .unwrap();
    println!("1000 nodes: the table page and chart rendered in {render_ms:.0} ms");
    assert!(render_ms < 1000.0, "{render_ms} ms");
    b.click("#page-next").await;
    b.wait_until(
        "the second page",
        "document.getElementById('page-info').textContent === '101–200 of 1000' && document.querySelector('#nodes-body tr').dataset.nodeId === 'gw-0100'",
    )
    .await;
    b.screenshot("thousand-nodes").await;

    // Sort by weight (descending on the second click): over every node,
    // from the first page.
    b.click("th[data-sort=\"weight\"] button").await;
    b.click("th[data-sort=\"weight\"] button").await;
    b.wait_until(
        "the sort",
        "document.querySelector('th[data-sort=\"weight\"]').getAttribute('aria-sort') === 'descending'",
    )
    .await;
    let weights: Vec<u64> = b
        .js(
            "return [...document.querySelectorAll('#nodes-body tr')].slice(0, 50).map(tr => Number(tr.children[3].textContent));",
            json!([]),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(weights.windows(2).all(|w| w[0] >= w[1]), "{weights:?}");
    assert_eq!(weights[0], 200, "the heaviest node of all comes first");
    assert_eq!(
        b.js(
            "return document.querySelector('th[data-sort=\"weight\"]').getAttribute('aria-sort');",
            json!([])
        )
        .await,
        "descending"
    );
    // Filter.
    b.type_into("#filter", "gw-099").await;
    b.wait_until(
        "the filter",
        "document.querySelectorAll('#nodes-body tr').length === 10",
    )
    .await;
    assert_eq!(b.text("#nodes-count").await, "10 of 1000 nodes");
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#chart rect').length;",
            json!([])
        )
        .await,
        10
    );
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    b.quit().await;
}

#[tokio::test]
async fn the_api_docs_load_without_console_errors() {
    let Some(b) = Browser::start("docs").await else {
        return;
    };
    let app = spawn_app().await;
    b.goto(&app.url("/docs")).await;
    b.wait_for(".opblock").await;
    b.wait_until(
        "the operations",
        "document.querySelectorAll('.opblock').length > 10",
    )
    .await;
    b.screenshot("docs").await;
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    let host = app.url("/");
    for url in b.requested_urls().await {
        assert!(url.starts_with(&host), "a request to another host: {url}");
    }
    b.quit().await;
}

/// Requests the page made to an admin endpoint, from the server's counter.
async fn admin_requests(app: &TestApp, endpoint: &str) -> u64 {
    let m = app.metrics().await;
    let key = format!("imroute_http_requests_total{{endpoint=\"{endpoint}\",status=\"200\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn refreshing_pauses_while_hidden_keeps_focus_and_stops_at_sign_out() {
    let Some(b) = Browser::start("ui refresh").await else {
        return;
    };
    let app = spawn_app().await;
    for i in 1..=3 {
        app.add_node(&format!("gw-{i}"), json!({})).await;
    }
    sign_in(&b, &app).await;
    b.wait_for("tr[data-node-id=\"gw-3\"]").await;
    // Refreshes arrive by themselves, and a change shows without a reload.
    app.heartbeat("gw-2", 4321).await;
    b.wait_until(
        "the refresh",
        "document.querySelector('tr[data-node-id=\"gw-2\"]').textContent.includes('4321')",
    )
    .await;
    // Focus stays on a row's button across refreshes that re-sort the rows.
    b.click("th[data-sort=\"connections\"] button").await;
    b.js(
        "document.querySelector('tr[data-node-id=\"gw-1\"] button[data-action=\"weight\"]').focus(); return 1;",
        json!([]),
    )
    .await;
    app.heartbeat("gw-1", 9999).await;
    b.wait_until(
        "gw-1 moves down",
        "document.querySelector('#nodes-body tr:last-child').dataset.nodeId === 'gw-1'",
    )
    .await;
    assert_eq!(
        b.js(
            "const a = document.activeElement; return a.dataset.action + ' ' + a.closest('tr').dataset.nodeId;",
            json!([])
        )
        .await,
        "weight gw-1"
    );
    // Hidden (another tab in front): no refresh.
    b.new_tab().await;
    let before = admin_requests(&app, "/admin/nodes").await;
    tokio::time::sleep(Duration::from_millis(7000)).await;
    let hidden = admin_requests(&app, "/admin/nodes").await - before;
    assert!(hidden <= 1, "{hidden} refreshes while hidden");
    b.back_to_first_tab().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_requests(&app, "/admin/nodes").await > before + hidden
        })
        .await,
        "refreshes resume when the tab is shown"
    );
    // Signed out: no refresh at all.
    b.click("#sign-out").await;
    b.wait_until(
        "the sign-in form",
        "!document.getElementById('signin-view').hidden",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = admin_requests(&app, "/admin/nodes").await;
    tokio::time::sleep(Duration::from_millis(7000)).await;
    assert_eq!(
        admin_requests(&app, "/admin/nodes").await,
        at,
        "no refresh after sign-out"
    );
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    b.quit().await;
}

/// The page's files over plain HTTP: types, the CSP, HEAD, the redirects,
/// methods, and where the dashboard is served when the admin API has its
/// own listener.
#[tokio::test]
async fn the_dashboard_files_are_served_with_a_strict_policy_where_the_admin_api_is() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        let len = resp.bytes().await.unwrap().len();
        let head = client.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            len.to_string()
        );
        let post = client.post(app.url(path)).send().await.unwrap();
        assert_eq!(post.status(), 405, "{path}");
        assert_eq!(post.headers()["allow"], "GET, HEAD");
    }
    // Relative redirects (a proxy's path prefix survives them).
    let root = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 302);
    assert_eq!(root.headers()["location"], "ui");
    let slash = client.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(slash.headers()["location"], "../ui");
    for path in ["/ui/nope.js", "//evil.example/ui", "/ui/../admin"] {
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert!(
            resp.status() == 404 || resp.status() == 401,
            "{path}: {}",
            resp.status()
        );
        assert!(resp.headers().get("location").is_none());
    }

    // With admin_listen: only on the admin listener.
    let app = spawn_app_with(|c| c.admin_listen = Some("127.0.0.1:0".into())).await;
    for path in ["/", "/ui", "/ui/app.js"] {
        let public = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(public.status(), 404, "{path} on the public listener");
        let admin = client
            .get(format!("http://{}{path}", app.state_admin_addr()))
            .send()
            .await
            .unwrap();
        assert!(admin.status() == 200 || admin.status() == 302, "{path}");
    }
}
