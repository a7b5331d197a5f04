//! The overrides file: its YAML model, validation against what is stored, and
//! how it is layered over stored nodes. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{valid_id, Addrs, NodeRecord, NodeSpec, NodeState};
use crate::store::Stored;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Replaces the active strategy stored through the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_strategy: Option<String>,
    /// Patches of stored nodes, or nodes that exist only here.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodePatch>,
    /// uid -> node id, bypassing the strategy while that node is routable.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// uid -> region, read by the region strategy.
    #[serde(default)]
    pub user_regions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodeState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<AddrsPatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intranet: Option<AddrsPatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss_addr: Option<String>,
}

impl AddrsPatch {
    fn apply(&self, to: &mut Addrs) {
        if let Some(v) = &self.tcp_addr {
            to.tcp_addr = v.clone();
        }
        if let Some(v) = &self.ws_addr {
            to.ws_addr = v.clone();
        }
        if let Some(v) = &self.wss_addr {
            to.wss_addr = v.clone();
        }
    }
}

impl NodePatch {
    /// The patch laid over `spec`, field by field.
    pub fn apply(&self, spec: &NodeSpec) -> NodeSpec {
        let mut out = spec.clone();
        if let Some(v) = &self.region {
            out.region = Some(v.clone());
        }
        if let Some(v) = self.weight {
            out.weight = v;
        }
        if let Some(v) = self.state {
            out.state = v;
        }
        if let Some(p) = &self.external {
            p.apply(&mut out.external);
        }
        if let Some(p) = &self.intranet {
            p.apply(&mut out.intranet);
        }
        if let Some(v) = &self.labels {
            out.labels = v.clone();
        }
        out
    }
}

/// Where a node's effective values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    #[serde(rename = "db")]
    Db,
    #[serde(rename = "overrides")]
    Overrides,
    #[serde(rename = "db+overrides")]
    DbAndOverrides,
}

/// A node as routing and the admin API see it.
#[derive(Debug, Clone)]
pub struct EffectiveNode {
    pub spec: NodeSpec,
    pub source: Source,
    /// The stored record, when there is one.
    pub stored: Option<NodeRecord>,
}

impl EffectiveNode {
    /// The stored node's creation change number; 0 for file-only nodes.
    pub fn incarnation(&self) -> i64 {
        self.stored.as_ref().map_or(0, |s| s.created_seq)
    }

    /// Shown as the start of an `unknown` health.
    pub fn created_at(&self) -> &str {
        self.stored.as_ref().map_or("", |s| s.created_at.as_str())
    }
}

/// Parses a file's text. An empty file (or only comments) means no overrides.
/// Errors name the place (key path, line) but quote nothing of the file
/// beyond the words of the format itself.
pub fn parse(text: &str) -> Result<Overrides, String> {
    super::file::check_nesting(text)?;
    let parsed: Option<Overrides> =
        serde_yaml::from_str(text).map_err(|e| super::file::sanitize(&e.to_string()))?;
    Ok(parsed.unwrap_or_default())
}

impl Overrides {
    /// Checks the file against what is stored: node patches must give valid
    /// nodes, pins must name known nodes, the strategy must exist.
    ///
    /// With `stored: None` (no database at hand, as in `imroute check-config`
    /// before a deploy) references to stored nodes and strategies are not checked.
    pub fn validate(&self, stored: Option<&Stored>, max_uid_bytes: usize) -> Result<(), String> {
        let no_nodes = Vec::new();
        let stored_nodes = stored.map_or(&no_nodes, |s| &s.nodes);
        let mut known: BTreeSet<&str> = stored_nodes.iter().map(|n| n.spec.id.as_str()).collect();
        let by_id: HashMap<&str, &NodeRecord> = stored_nodes
            .iter()
            .map(|n| (n.spec.id.as_str(), n))
            .collect();
        // File-only nodes may not share a routing seed with another node
        // (the API refuses such ids too).
        let mut seeds: HashMap<u32, &str> = stored_nodes
            .iter()
            .map(|n| {
                (
                    crate::routing::hrw::node_seed(&n.spec.id),
                    n.spec.id.as_str(),
                )
            })
            .collect();
        for (id, patch) in &self.nodes {
            if !valid_id(id) {
                return Err(format!(
                    "nodes.{}: node id must match [A-Za-z0-9._-]{{1,64}}",
                    crate::model::field_key(id)
                ));
            }
            let found = by_id.get(id.as_str());
            let base = found.map_or_else(|| NodeSpec::new(id.clone()), |n| n.spec.clone());
            let spec = patch.apply(&base);
            spec.validate_fields()
                .map_err(|e| format!("nodes.{id}.{e}"))?;
            // A node without an external address takes no users and no
            // client could connect to it: the file may not clear one, nor
            // create a node without one.
            let clears = patch.external.as_ref().and_then(|e| e.tcp_addr.as_deref()) == Some("");
            let file_only = stored.is_some() && found.is_none();
            if found.is_none() && stored.is_some() {
                let seed = crate::routing::hrw::node_seed(id);
                if let Some(other) = seeds.insert(seed, id.as_str()) {
                    if other != id.as_str() {
                        return Err(format!(
                            "nodes.{id}: the id hashes to the same 32-bit routing seed as node {other:?}; choose another id"
                        ));
                    }
                }
            }
            if spec.external.tcp_addr.is_empty() && (clears || file_only) {
                return Err(format!(
                    "nodes.{id}.external.tcp_addr: required: clients connect to this host:port"
                ));
            }
            known.insert(id);
        }
        for (uid, node) in &self.pins {
            check_uid(uid, max_uid_bytes).map_err(|e| format!("pins: {e}"))?;
            if stored.is_some() && !known.contains(node.as_str()) {
                return Err(format!(
                    "pins.{}: unknown node {:?}",
                    crate::model::field_key(uid),
                    crate::model::truncate(node)
                ));
            }
        }
        for (uid, region) in &self.user_regions {
            check_uid(uid, max_uid_bytes).map_err(|e| format!("user_regions: {e}"))?;
            if !valid_id(region) {
                return Err(format!(
                    "user_regions.{}: region must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                    crate::model::field_key(uid),
                    crate::model::truncate(region)
                ));
            }
        }
        if let (Some(name), Some(stored)) = (&self.active_strategy, stored) {
            if !stored.strategies.iter().any(|s| &s.name == name) {
                return Err(format!(
                    "active_strategy: unknown strategy {:?}",
                    crate::model::truncate(name)
                ));
            }
        }
        Ok(())
    }

    /// The node `id` as the file makes it: the stored record patched, or a
    /// file-only node; `None` when neither exists.
    pub fn effective_node(&self, id: &str, stored: Option<&NodeRecord>) -> Option<EffectiveNode> {
        match (stored, self.nodes.get(id)) {
            (Some(record), Some(patch)) => Some(EffectiveNode {
                spec: patch.apply(&record.spec),
                source: Source::DbAndOverrides,
                stored: Some(record.clone()),
            }),
            (Some(record), None) => Some(EffectiveNode {
                spec: record.spec.clone(),
                source: Source::Db,
                stored: Some(record.clone()),
            }),
            (None, Some(patch)) => Some(EffectiveNode {
                spec: patch.apply(&NodeSpec::new(id)),
                source: Source::Overrides,
                stored: None,
            }),
            (None, None) => None,
        }
    }

    /// The file's entries that name node `id` (`nodes.gw-1`, `pins.vip`).
    /// The first `named` entries naming node `id`, and how many there are.
    pub fn references(&self, id: &str, named: usize) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        if self.nodes.contains_key(id) {
            out.push(format!("nodes.{id}"));
            total += 1;
        }
        for (uid, node) in &self.pins {
            if node == id {
                if out.len() < named {
                    out.push(format!("pins.{uid}"));
                }
                total += 1;
            }
        }
        out.truncate(named);
        (out, total)
    }

    /// Every node id the file patches or pins to.
    pub fn referenced_nodes(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .nodes
            .keys()
            .map(String::as_str)
            .chain(self.pins.values().map(String::as_str))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// Stored nodes with the file's patches applied, plus file-only nodes, in
    /// id order.
    pub fn effective_nodes(&self, stored: &Stored) -> Vec<EffectiveNode> {
        let mut out: Vec<EffectiveNode> = stored
            .nodes
            .iter()
            .map(|record| match self.nodes.get(&record.spec.id) {
                Some(patch) => EffectiveNode {
                    spec: patch.apply(&record.spec),
                    source: Source::DbAndOverrides,
                    stored: Some(record.clone()),
                },
                None => EffectiveNode {
                    spec: record.spec.clone(),
                    source: Source::Db,
                    stored: Some(record.clone()),
                },
            })
            .collect();
        for (id, patch) in &self.nodes {
            if !stored.nodes.iter().any(|n| &n.spec.id == id) {
                out.push(EffectiveNode {
                    spec: patch.apply(&NodeSpec::new(id.clone())),
                    source: Source::Overrides,
                    stored: None,
                });
            }
        }
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        out
    }
}

/// The contract's uid rules: non-empty, at most `max_bytes`, no control characters.
pub fn check_uid(uid: &str, max_bytes: usize) -> Result<(), String> {
    if uid.is_empty() {
        return Err("uid is empty".into());
    }
    if uid.len() > max_bytes {
        return Err(format!(
            "uid is {} bytes, over the limit of {max_bytes}",
            uid.len()
        ));
    }
    if uid.chars().any(char::is_control) {
        return Err("uid contains a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_validates_on_its_own() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/overrides.example.yaml"
        ))
        .unwrap();
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.pins.get("vip-001").map(String::as_str), Some("gw-9"));
        parsed.validate(None, 256).unwrap();
    }

    #[test]
    fn an_empty_file_means_no_overrides_and_errors_name_the_place() {
        assert_eq!(parse("# nothing\n").unwrap(), Overrides::default());
        let err = parse("nodes:\n  gw-1:\n    wieght: 1\n").unwrap_err();
        assert!(
            err.contains("nodes.gw-1") && err.contains("line 3"),
            "{err}"
        );
        assert!(
            !err.contains("wieght"),
            "the file's words are not quoted: {err}"
        );
    }
}
