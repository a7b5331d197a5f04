//! The OpenAPI document as served: poem-openapi's, made exact where the
//! derive macros cannot say it. One function builds it; `/openapi.json`,
//! `/openapi.yaml`, `/docs`, `imroute openapi` and the request validator all
//! read the same value, so none of them can drift from the others.
//!
//! What is added: tags in reading order (the public routing API first), one
//! tag per operation, exactly the error statuses each operation answers
//! (401 on every admin operation and no other), patterns, ranges, enums and
//! nullability, an example for every request body that the server accepts as
//! it stands, and descriptions without rustdoc link brackets.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

/// Tags in the order a developer reads them.
const TAG_ORDER: &[&str] = &[
    "Routing",
    "Nodes",
    "Strategies",
    "Planning",
    "Overrides",
    "Audit",
    "Cluster",
    "Operations",
];

const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

/// The served document.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let raw: Value = serde_json::from_str(&super::openapi_service().spec())
            .expect("poem-openapi writes valid JSON");
        refine(raw)
    })
}

pub fn json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| serde_json::to_string_pretty(document()).unwrap_or_default())
}

pub fn yaml() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| serde_yaml::to_string(document()).unwrap_or_default())
}

/// The Swagger UI page: poem-openapi's bundle, our document, our title, and
/// the bearer token kept across reloads.
pub fn swagger_html() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let html = super::openapi_service().swagger_ui_html();
        // No icon: browsers would ask for /favicon.ico (a 404 in the console).
        let html = html.replacen(
            "<title>Swagger UI</title>",
            "<title>imroute API</title><link rel=\"icon\" href=\"data:,\">",
            1,
        );
        let html = html.replacen(
            "deepLinking: true,",
            "deepLinking: true,\n        persistAuthorization: true,\n        tryItOutEnabled: true,",
            1,
        );
        // Swap the embedded document for ours.
        match (html.find("let spec = "), html.find("let oauth2RedirectUrl")) {
            (Some(start), Some(end)) if start < end => format!(
                "{}let spec = {};\n    {}",
                &html[..start],
                serde_json::to_string(document()).unwrap_or_default(),
                &html[end..]
            ),
            _ => html,
        }
    })
}

fn refine(mut doc: Value) -> Value {
    strip_rustdoc_links(&mut doc);
    order_tags(&mut doc);
    refine_schemas(&mut doc);
    refine_operations(&mut doc);
    doc
}

/// `[`Node`]` -> `` `Node` ``.
fn strip_rustdoc_links(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("[`") => {
            *s = s.replace("[`", "`").replace("`]", "`");
        }
        Value::Array(a) => a.iter_mut().for_each(strip_rustdoc_links),
        Value::Object(o) => o.values_mut().for_each(strip_rustdoc_links),
        _ => {}
    }
}

fn order_tags(doc: &mut Value) {
    if let Some(tags) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        tags.sort_by_key(|t| {
            TAG_ORDER
                .iter()
                .position(|n| t["name"] == *n)
                .unwrap_or(usize::MAX)
        });
    }
}

fn schema_mut<'a>(doc: &'a mut Value, name: &str) -> Option<&'a mut Map<String, Value>> {
    doc.get_mut("components")?
        .get_mut("schemas")?
        .get_mut(name)?
        .as_object_mut()
}

fn set_property(doc: &mut Value, schema: &str, property: &str, patch: Value) {
    if let Some(p) = schema_mut(doc, schema)
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut(property))
        .and_then(Value::as_object_mut)
    {
        if let Value::Object(patch) = patch {
            p.extend(patch);
        }
    }
}

/// The params of every installed kind, from each plugin's own JSON Schema
/// (so the document cannot fall behind a plugin).
fn params_description() -> String {
    let mut out = String::from(
        "Params of the kind; `{}` when omitted. Each installed kind's params (their JSON Schemas are served by `GET /admin/strategy-kinds`):",
    );
    for kind in crate::routing::BUILTIN {
        let schema = kind.params_schema();
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        out.push_str(&format!("\n- `{}`: ", kind.kind()));
        if props.is_empty() {
            out.push_str("none.");
            continue;
        }
        let fields: Vec<String> = props
            .iter()
            .map(|(name, p)| {
                let mut facts = Vec::new();
                if let Some(values) = p["enum"].as_array() {
                    let values: Vec<String> = values
                        .iter()
                        .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                        .collect();
                    facts.push(values.join(" or "));
                } else if let Some(t) = p["type"].as_str() {
                    facts.push(t.to_owned());
                } else if let Some(ts) = p["type"].as_array() {
                    let ts: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                    facts.push(ts.join(" or "));
                }
                match (p.get("minimum"), p.get("maximum")) {
                    (Some(lo), Some(hi)) => facts.push(format!("{lo}..={hi}")),
                    (Some(lo), None) => facts.push(format!(">= {lo}")),
                    _ => {}
                }
                if let Some(d) = p.get("default") {
                    facts.push(format!("default {d}"));
                }
                if facts.is_empty() {
                    format!("`{name}`")
                } else {
                    format!("`{name}` ({})", facts.join(", "))
                }
            })
            .collect();
        out.push_str(&fields.join(", "));
        out.push('.');
    }
    out
}

fn refine_schemas(doc: &mut Value) {
    set_property(
        doc,
        "StrategyWrite",
        "params",
        json!({"description": params_description()}),
    );
    let id = json!({"pattern": ID_PATTERN, "minLength": 1, "maxLength": 64});
    let weight = json!({"minimum": 0, "maximum": 65535,
        "description": "0..=65535; 0 takes no users."});
    for schema in ["NodeWrite", "NodePatch"] {
        set_property(
            doc,
            schema,
            "region",
            json!({"pattern": ID_PATTERN, "maxLength": 64,
            "description": "Region code, [A-Za-z0-9._-]{1,64}; read by the region strategy."}),
        );
        set_property(doc, schema, "weight", weight.clone());
        set_property(doc, schema, "labels", json!({"maxProperties": 64}));
    }
    set_property(doc, "NodeWrite", "id", id.clone());
    set_property(doc, "NodeWrite", "weight", json!({"default": 100}));
    set_property(
        doc,
        "NodePatch",
        "region",
        json!({"nullable": true,
        "description": "Region code, [A-Za-z0-9._-]{1,64}; `null` clears it."}),
    );
    set_property(doc, "StrategyWrite", "name", id.clone());
    set_property(doc, "RoutingWrite", "active_strategy", id.clone());
    // At most 2^53 - 1: exact in every JSON reader (and in a JavaScript
    // dashboard), far above what a gateway holds.
    set_property(
        doc,
        "Heartbeat",
        "connections",
        json!({"minimum": 0, "maximum": crate::model::MAX_CONNECTIONS}),
    );
    for (schema, field) in [("Addresses", "tcp_addr"), ("AddressesPatch", "tcp_addr")] {
        set_property(
            doc,
            schema,
            field,
            json!({"maxLength": 300,
            "description": "`host:port`; host a DNS name, IPv4 or `[IPv6]`. The external one is required."}),
        );
    }
    for (schema, field, scheme) in [
        ("Addresses", "ws_addr", "ws"),
        ("Addresses", "wss_addr", "wss"),
        ("AddressesPatch", "ws_addr", "ws"),
        ("AddressesPatch", "wss_addr", "wss"),
    ] {
        set_property(
            doc,
            schema,
            field,
            json!({"maxLength": 300,
            "description": format!("`{scheme}://host[:port][/path]`, or `\"\"` for none.")}),
        );
    }
    // `POST /admin/nodes` needs the id; `PUT` takes it from the path. The
    // two share one type in the code, so the document gets a copy.
    if let Some(mut create) = schema_mut(doc, "NodeWrite").cloned() {
        create.insert("title".into(), json!("NodeCreate"));
        create.insert("required".into(), json!(["id"]));
        create.insert(
            "description".into(),
            json!("A node as created by `POST`. Omitted fields take their defaults; `external.tcp_addr` is required."),
        );
        if let Some(id) = create
            .get_mut("properties")
            .and_then(|p| p.get_mut("id"))
            .and_then(Value::as_object_mut)
        {
            id.insert("description".into(), json!("The node's id, immutable."));
        }
        if let Some(schemas) = doc
            .get_mut("components")
            .and_then(|c| c.get_mut("schemas"))
            .and_then(Value::as_object_mut)
        {
            schemas.insert("NodeCreate".into(), Value::Object(create));
        }
    }
    // In bodies that replace a whole record, `null` means "the default", as
    // the handlers read it.
    for schema in ["NodeWrite", "NodeCreate", "StrategyWrite"] {
        if let Some(s) = schema_mut(doc, schema) {
            let required: Vec<Value> = s
                .get("required")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
                for (name, p) in props.iter_mut() {
                    if !required.contains(&Value::String(name.clone())) {
                        if let Some(p) = p.as_object_mut() {
                            p.insert("nullable".into(), Value::Bool(true));
                        }
                    }
                }
            }
        }
    }
    planning_schemas(doc);
    // Write bodies refuse unknown fields.
    for schema in [
        "SimulateRequest",
        "Sample",
        "NodeWrite",
        "NodeCreate",
        "NodePatch",
        "Addresses",
        "AddressesPatch",
        "StrategyWrite",
        "RoutingWrite",
        "Heartbeat",
    ] {
        if let Some(s) = schema_mut(doc, schema) {
            s.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
}

/// The simulate body: each change is one of six shapes, told apart by `op`
/// (the handler reads them; the document says what they are).
fn planning_schemas(doc: &mut Value) {
    let id = json!({"type": "string", "pattern": ID_PATTERN});
    let shape = |op: &str, fields: Value, description: &str| {
        let mut properties = json!({"op": {"type": "string", "enum": [op]}});
        let mut required = vec![json!("op")];
        for (k, v) in fields.as_object().into_iter().flatten() {
            properties[k] = v.clone();
            required.push(json!(k));
        }
        json!({"title": op, "type": "object", "description": description,
               "required": required, "properties": properties,
               "additionalProperties": false})
    };
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let change = json!({
        "description": "One proposed change: `op` names it, the other fields are those of its endpoint, checked the same way.",
        "oneOf": [
            shape("put_node", json!({"node": schema("NodeCreate")}),
                  "Create or replace a node, as `PUT /admin/nodes/{id}` (the id in the node)."),
            shape("patch_node", json!({"id": id, "patch": schema("NodePatch")}),
                  "Change some fields of a stored node, as `PATCH /admin/nodes/{id}`."),
            shape("delete_node", json!({"id": id}),
                  "Delete a stored node, as `DELETE /admin/nodes/{id}`."),
            shape("set_health", json!({"id": id, "status": {"type": "string", "enum": ["healthy", "unhealthy"]}}),
                  "Take the node's health as given (a failed probe, a missed heartbeat, a recovery)."),
            shape("put_strategy", json!({"name": id, "strategy": schema("StrategyWrite")}),
                  "Create or replace a strategy, as `PUT /admin/strategies/{name}`."),
            shape("activate_strategy", json!({"name": id}),
                  "Switch the active strategy, as `PUT /admin/routing`."),
        ]
    });
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(Value::as_object_mut)
    {
        schemas.insert("Change".into(), change);
    }
    set_property(
        doc,
        "SimulateRequest",
        "changes",
        json!({"items": schema("Change")}),
    );
    set_property(
        doc,
        "SimulateRequest",
        "region",
        json!({"pattern": ID_PATTERN}),
    );
    set_property(
        doc,
        "Sample",
        "count",
        json!({"minimum": 1, "maximum": 1_000_000, "default": 100_000}),
    );
    set_property(doc, "Sample", "seed", json!({"minimum": 0, "default": 1}));
}

/// The request body example of each operation that takes one.
fn example(operation: &str) -> Option<Value> {
    Some(match operation {
        "route_batch" => json!(["user1", "user2", "user3"]),
        "create_node" => json!({
            "id": "gw-1",
            "region": "eu",
            "external": {"tcp_addr": "203.0.113.5:5100", "ws_addr": "ws://203.0.113.5:5200",
                         "wss_addr": "wss://im.example.com:5300"},
            "intranet": {"tcp_addr": "10.0.0.5:5100"},
            "labels": {"rack": "r1"}
        }),
        "put_node" => json!({
            "region": "eu",
            "weight": 100,
            "external": {"tcp_addr": "203.0.113.6:5100", "ws_addr": "ws://203.0.113.6:5200"},
            "intranet": {"tcp_addr": "10.0.0.6:5100"}
        }),
        "patch_node" => json!({"weight": 50, "state": "draining"}),
        "heartbeat" => json!({"connections": 1234}),
        "put_strategy" => json!({"kind": "bounded",
            "params": {"inner": "hash", "balance_factor": 1.25, "min_connections": 100}}),
        "put_routing" => json!({"active_strategy": "default"}),
        "simulate" => json!({
            "changes": [
                {"op": "patch_node", "id": "gw-1", "patch": {"state": "draining"}},
                {"op": "put_node", "node": {"id": "gw-9", "region": "eu",
                    "external": {"tcp_addr": "203.0.113.9:5100"}}}
            ],
            "sample": {"count": 100000, "seed": 1}
        }),
        _ => return None,
    })
}

/// The statuses an operation answers beyond its success ones.
fn error_statuses(path: &str, method: &str, op: &Value) -> Vec<&'static str> {
    let admin = path.starts_with("/admin");
    let id = op["operationId"].as_str().unwrap_or_default();
    let params = op["parameters"].as_array();
    let has_param = |name: &str| params.is_some_and(|p| p.iter().any(|x| x["name"] == name));
    let has_query = params.is_some_and(|p| p.iter().any(|x| x["in"] == "query"));
    let body = op.get("requestBody").is_some();
    let write = method != "get";
    let mut out = Vec::new();
    if body || has_query || has_param("If-Match") || id == "reload_overrides" {
        out.push("400");
    }
    if admin {
        out.push("401");
    }
    // PUT creates what is missing.
    if path.contains('{') && method != "put" {
        out.push("404");
    }
    if matches!(id, "create_node" | "delete_node" | "delete_strategy") {
        out.push("409");
    }
    if has_param("If-Match") {
        out.push("412");
    }
    if body {
        out.push("413");
        out.push("415");
    }
    // Writes and the audit trail need the store; routes need a node.
    if ((admin && write) || path.starts_with("/route") || id == "list_audit")
        && !matches!(id, "reload_overrides" | "simulate")
    {
        out.push("503");
    }
    out
}

fn refine_operations(doc: &mut Value) {
    // The error response objects, as ApiError documents them, by status.
    let mut errors: Map<String, Value> = Map::new();
    if let Some(paths) = doc["paths"].as_object() {
        for ops in paths.values().filter_map(Value::as_object) {
            for op in ops.values() {
                if let Some(responses) = op["responses"].as_object() {
                    for (status, r) in responses {
                        if status.starts_with('4') || status.starts_with('5') {
                            errors.entry(status.clone()).or_insert_with(|| r.clone());
                        }
                    }
                }
            }
        }
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, ops) in paths.iter_mut() {
        let Some(ops) = ops.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            // One tag per operation: its own, not its group's.
            if let Some(tags) = op.get_mut("tags").and_then(Value::as_array_mut) {
                if tags.len() > 1 {
                    tags.drain(..tags.len() - 1);
                }
            }
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            // Success statuses the operation really answers.
            let drop_success: &[&str] = match (method.as_str(), id.as_str()) {
                ("get" | "patch", _) => &["201"],
                (_, "create_node") => &["200"],
                _ => &[],
            };
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                responses.retain(|status, _| !drop_success.contains(&status.as_str()));
            }
            let wanted = error_statuses(path, method, op);
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                responses.retain(|status, _| {
                    !(status.starts_with('4') || status.starts_with('5'))
                        || wanted.contains(&status.as_str())
                        || (status == "503" && path == "/readyz")
                });
                for status in &wanted {
                    if !responses.contains_key(*status) {
                        if let Some(r) = errors.get(*status) {
                            responses.insert((*status).to_owned(), r.clone());
                        }
                    }
                }
                if let Some(r) = responses.get_mut("401") {
                    r["description"] = json!("Missing or wrong bearer token.");
                }
            }
            if id == "create_node" {
                if let Some(media) = op
                    .get_mut("requestBody")
                    .and_then(|b| b.get_mut("content"))
                    .and_then(Value::as_object_mut)
                    .and_then(|c| c.values_mut().next())
                {
                    media["schema"] = json!({"$ref": "#/components/schemas/NodeCreate"});
                }
            }
            if let Some(example) = example(&id) {
                let content = op
                    .get_mut("requestBody")
                    .and_then(|b| b.get_mut("content"))
                    .and_then(Value::as_object_mut);
                if let Some(media) = content
                    .and_then(|c| c.values_mut().next())
                    .and_then(Value::as_object_mut)
                {
                    media.insert("example".into(), example);
                }
            }
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params {
                    refine_parameter(p, &id);
                }
            }
        }
    }
}

fn refine_parameter(p: &mut Value, operation: &str) {
    let name = p["name"].as_str().unwrap_or_default().to_owned();
    let patch = match (p["in"].as_str().unwrap_or_default(), name.as_str()) {
        ("query", "intranet") => json!({"type": "string", "enum": ["0", "1"], "default": "0"}),
        ("query", "region") => json!({"type": "string", "pattern": "^([A-Za-z0-9._-]{1,64})?$"}),
        ("path", "id") | ("path", "name") => json!({"type": "string", "pattern": ID_PATTERN}),
        ("query", "limit") => match operation {
            "list_audit" => {
                json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
            }
            _ => json!({"type": "integer", "minimum": 1, "maximum": 10000}),
        },
        ("query", "uid") => json!({"type": "string"}),
        ("query", "candidates") => {
            json!({"type": "integer", "minimum": 1, "maximum": 8, "example": 3})
        }
        ("query", "sample") if operation == "get_distribution" => {
            json!({"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 100_000, "example": 100_000})
        }
        ("query", "sample") => {
            json!({"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 100_000})
        }
        ("query", "seed") => json!({"type": "integer", "minimum": 0, "default": 1}),
        ("header", "If-Match") => json!({"type": "string", "pattern": "^(\\*|(W/)?\"?[0-9]+\"?)$"}),
        _ => return,
    };
    if let (Some(schema), Value::Object(patch)) = (p["schema"].as_object_mut(), patch) {
        if schema.contains_key("$ref") {
            return;
        }
        schema.extend(patch);
    }
}
