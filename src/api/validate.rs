//! Admin requests checked against the served document before a handler sees
//! them, so every 400 names the field in the contract's words
//! (`weight: must be an integer from 0 to 65535`) instead of the framework's
//! type names, and bodies the schema forbids (unknown fields, `null` where a
//! value is needed) never reach a handler. Patterns and address formats are
//! left to the handlers, whose messages say more.

use std::{collections::HashMap, sync::OnceLock};

use serde_json::Value;

/// What is checked of one operation.
struct Operation {
    body: Option<Value>,
    /// Query parameters: name and schema.
    query: Vec<(String, Value)>,
}

fn operations() -> &'static HashMap<(String, &'static str), Operation> {
    static OPS: OnceLock<HashMap<(String, &'static str), Operation>> = OnceLock::new();
    OPS.get_or_init(|| {
        let doc = super::spec::document();
        let mut out = HashMap::new();
        let Some(paths) = doc["paths"].as_object() else {
            return out;
        };
        for (path, ops) in paths {
            let endpoint = crate::metrics::endpoint_of(path);
            for (method, op) in ops.as_object().into_iter().flatten() {
                let body = op["requestBody"]["content"]
                    .as_object()
                    .and_then(|c| c.values().next())
                    .map_or(Value::Null, |m| m["schema"].clone());
                let query = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or_default().to_owned(),
                            p["schema"].clone(),
                        )
                    })
                    .collect();
                out.insert(
                    (method.to_uppercase(), endpoint),
                    Operation {
                        body: (!body.is_null()).then_some(body),
                        query,
                    },
                );
            }
        }
        out
    })
}

/// Whether the operation reads query parameters at all.
pub fn has_query(method: &str, endpoint: &str) -> bool {
    operations()
        .get(&(method.to_owned(), endpoint))
        .is_some_and(|op| !op.query.is_empty())
}

/// Checks the query of a request against its operation's parameters.
pub fn query(method: &str, endpoint: &str, query: &str) -> Result<(), String> {
    let Some(op) = operations().get(&(method.to_owned(), endpoint)) else {
        return Ok(());
    };
    if query.is_empty() || op.query.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    for (name, schema) in &op.query {
        if let Some((_, raw)) = pairs.iter().find(|(k, _)| k == name) {
            check_query(name, raw, schema)?;
        }
    }
    Ok(())
}

/// Checks a JSON body against its operation's schema. A body that is not
/// JSON at all is left to the handler, which says so.
pub fn body(method: &str, endpoint: &str, bytes: &[u8]) -> Result<(), String> {
    let Some(schema) = operations()
        .get(&(method.to_owned(), endpoint))
        .and_then(|op| op.body.as_ref())
    else {
        return Ok(());
    };
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => check(&value, schema, ""),
        Err(_) => Ok(()),
    }
}

/// Checks a value against a named schema of the served document; the
/// message names the field under `at` (`changes[0].node.weight: ...`).
pub fn value(value: &Value, schema: &str, at: &str) -> Result<(), String> {
    let reference = serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") });
    check(value, &reference, at)
}

fn resolve(schema: &Value) -> &Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            &super::spec::document()["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn join(at: &str, key: &str) -> String {
    let key = crate::model::field_key(key);
    if at.is_empty() {
        key
    } else {
        format!("{at}.{key}")
    }
}

fn name(at: &str) -> &str {
    if at.is_empty() {
        "body"
    } else {
        at
    }
}

fn integer_rule(schema: &Value) -> String {
    match (schema["minimum"].as_i64(), schema["maximum"].as_i64()) {
        (Some(lo), Some(hi)) => format!("must be an integer from {lo} to {hi}"),
        (Some(lo), None) => format!("must be an integer of at least {lo}"),
        (None, Some(hi)) => format!("must be an integer of at most {hi}"),
        (None, None) => "must be an integer".to_owned(),
    }
}

fn one_of(values: &[Value]) -> String {
    let names: Vec<String> = values
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect();
    format!("must be one of {}", names.join(", "))
}

fn check_query(param: &str, raw: &str, schema: &Value) -> Result<(), String> {
    let schema = resolve(schema);
    if let Some(values) = schema["enum"].as_array() {
        if !values.iter().any(|v| v.as_str() == Some(raw)) {
            return Err(format!(
                "{param}: {}, got {:?}",
                one_of(values),
                crate::model::truncate(raw)
            ));
        }
    }
    if schema["type"] == "boolean" && raw != "true" && raw != "false" {
        return Err(format!(
            "{param}: must be true or false, got {:?}",
            crate::model::truncate(raw)
        ));
    }
    if schema["type"] == "integer" {
        // i128 holds every i64 and u64 parameter.
        let ok = raw.parse::<i128>().is_ok_and(|n| {
            let fits = if schema["format"] == "uint64" {
                u64::try_from(n).is_ok()
            } else {
                i64::try_from(n).is_ok()
            };
            fits && schema["minimum"]
                .as_i64()
                .is_none_or(|lo| n >= i128::from(lo))
                && schema["maximum"]
                    .as_i64()
                    .is_none_or(|hi| n <= i128::from(hi))
        });
        if !ok {
            return Err(format!(
                "{param}: {}, got {:?}",
                integer_rule(schema),
                crate::model::truncate(raw)
            ));
        }
    }
    Ok(())
}

fn check(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    // `nullable` may sit beside a `$ref` or in the schema it names.
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    let schema = resolve(schema);
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(value, s, at)?;
        }
        return Ok(());
    }
    let ty = schema["type"].as_str();
    if value.is_null() {
        if (ty.is_none() && schema.get("enum").is_none()) || schema["nullable"] == true {
            return Ok(());
        }
        return Err(format!("{}: must not be null", name(at)));
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            return Err(format!("{}: {}", name(at), one_of(values)));
        }
    }
    match ty {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                return Err(format!("{}: must be a JSON object", name(at)));
            };
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str() {
                    if !obj.contains_key(r) {
                        return Err(format!("{}: required", join(at, r)));
                    }
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64() {
                if obj.len() as u64 > max {
                    return Err(format!("{}: at most {max} entries", name(at)));
                }
            }
            for (key, v) in obj {
                match schema["properties"].get(key) {
                    Some(p) => check(v, p, &join(at, key))?,
                    None => match &schema["additionalProperties"] {
                        Value::Bool(false) => {
                            return Err(format!("{}: unknown field", join(at, key)));
                        }
                        extra @ Value::Object(_) => check(v, extra, &join(at, key))?,
                        _ => {}
                    },
                }
            }
        }
        Some("integer") => {
            let ok = value.as_i64().is_some_and(|n| {
                schema["minimum"].as_i64().is_none_or(|lo| n >= lo)
                    && schema["maximum"].as_i64().is_none_or(|hi| n <= hi)
            }) || (value.as_u64().is_some() && schema["maximum"].is_null());
            if !ok {
                return Err(format!("{}: {}", name(at), integer_rule(schema)));
            }
        }
        Some("string") => {
            let Some(s) = value.as_str() else {
                return Err(format!("{}: must be a string", name(at)));
            };
            if let Some(max) = schema["maxLength"].as_u64() {
                if s.chars().count() as u64 > max {
                    return Err(format!("{}: at most {max} characters", name(at)));
                }
            }
        }
        Some("boolean") if !value.is_boolean() => {
            return Err(format!("{}: must be true or false", name(at)));
        }
        Some("number") if !value.is_number() => {
            return Err(format!("{}: must be a number", name(at)));
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return Err(format!("{}: must be a JSON array", name(at)));
            };
            for (i, item) in items.iter().enumerate() {
                check(item, &schema["items"], &format!("{}[{i}]", name(at)))?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_against_the_served_schema_naming_the_field() {
        let node = |body: &str| body_of("POST", "/admin/nodes", body);
        assert_eq!(
            node(r#"{"id":"n","weight":"x"}"#).unwrap_err(),
            "weight: must be an integer from 0 to 65535"
        );
        assert_eq!(
            node(r#"{"id":"n","weight":1.5}"#).unwrap_err(),
            "weight: must be an integer from 0 to 65535"
        );
        assert_eq!(
            node(r#"{"id":"n","weight":70000}"#).unwrap_err(),
            "weight: must be an integer from 0 to 65535"
        );
        assert_eq!(
            node(r#"{"id":"n","state":"sleeping"}"#).unwrap_err(),
            "state: must be one of active, draining, disabled"
        );
        assert_eq!(
            node(r#"{"id":"n","colour":"red"}"#).unwrap_err(),
            "colour: unknown field"
        );
        assert_eq!(
            node(r#"{"id":"n","external":{"tcp":"a:1"}}"#).unwrap_err(),
            "external.tcp: unknown field"
        );
        assert_eq!(
            node(r#"{"id":"n","labels":{"a":1}}"#).unwrap_err(),
            "labels.a: must be a string"
        );
        assert_eq!(node("[1]").unwrap_err(), "body: must be a JSON object");
        assert!(node(r#"{"id":"n","external":{"tcp_addr":"a:1"}}"#).is_ok());
        let beat = |body: &str| body_of("PUT", "/admin/nodes/{id}/heartbeat", body);
        assert_eq!(
            beat(r#"{"conections":7}"#).unwrap_err(),
            "conections: unknown field"
        );
        assert_eq!(
            beat(r#"{"connections":null}"#).unwrap_err(),
            "connections: must not be null"
        );
        assert!(beat(r#"{"connections":7}"#).is_ok());
        assert!(beat(r#"{"connections":9007199254740991}"#).is_ok());
        assert!(beat(r#"{"connections":9007199254740992}"#)
            .unwrap_err()
            .starts_with("connections:"));
        assert!(beat(r#"{"connections":18446744073709551615}"#)
            .unwrap_err()
            .starts_with("connections:"));
        assert!(beat("{}").is_ok());
        // `region: null` clears the region in a PATCH.
        assert!(body_of("PATCH", "/admin/nodes/{id}", r#"{"region":null}"#).is_ok());
        assert_eq!(
            body_of("PATCH", "/admin/nodes/{id}", r#"{"weight":null}"#).unwrap_err(),
            "weight: must not be null"
        );
    }

    fn body_of(method: &str, endpoint: &str, body: &str) -> Result<(), String> {
        body_check(method, endpoint, body.as_bytes())
    }

    fn body_check(method: &str, endpoint: &str, bytes: &[u8]) -> Result<(), String> {
        super::body(method, endpoint, bytes)
    }

    /// A `$ref` that names nothing would let any body through.
    #[test]
    fn every_reference_in_the_document_resolves() {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                        out.push(r.to_owned());
                    }
                    o.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let doc = crate::api::spec::document();
        let mut refs = Vec::new();
        walk(doc, &mut refs);
        assert!(refs.len() > 10);
        for r in refs {
            assert!(!resolve(&serde_json::json!({"$ref": r})).is_null(), "{r}");
        }
        // The refinements found what they patch.
        let weight = &doc["components"]["schemas"]["NodeWrite"]["properties"]["weight"];
        assert_eq!(weight["maximum"], 65535);
        assert!(doc["components"]["schemas"]["NodeCreate"].is_object());
    }

    #[test]
    fn null_means_the_default_in_bodies_that_replace_a_record() {
        let put = r#"{"region":null,"state":null,"weight":null,"labels":null,"external":{"tcp_addr":"a:1"},"intranet":null}"#;
        assert_eq!(body("PUT", "/admin/nodes/{id}", put.as_bytes()), Ok(()));
        assert_eq!(
            body(
                "PUT",
                "/admin/strategies/{name}",
                br#"{"kind":"hash","params":null}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn queries_are_checked_against_the_served_parameters() {
        assert_eq!(
            query("GET", "/admin/nodes", "state=bogus").unwrap_err(),
            "state: must be one of active, draining, disabled, got \"bogus\""
        );
        assert_eq!(
            query("GET", "/admin/nodes", "limit=abc").unwrap_err(),
            "limit: must be an integer from 1 to 10000, got \"abc\""
        );
        assert!(query("GET", "/admin/nodes", "state=active&limit=5").is_ok());
        assert!(query("GET", "/admin/audit", "limit=1001").is_err());
    }
}
