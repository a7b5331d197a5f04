//! Domain types shared by the store, the routing core and the API, with the
//! validation rules of the contract. Pure: no I/O.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

/// `[A-Za-z0-9._-]{1,64}`: node ids, strategy names and region codes.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The three addresses of a node on one network. `""` means "none".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Addrs {
    pub tcp_addr: String,
    pub ws_addr: String,
    pub wss_addr: String,
}

impl Addrs {
    /// Validates every field; the error names the field under `prefix`
    /// (`external.ws_addr: ...`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        check_tcp(&self.tcp_addr).map_err(|e| format!("{prefix}.tcp_addr: {e}"))?;
        check_url(&self.ws_addr, "ws").map_err(|e| format!("{prefix}.ws_addr: {e}"))?;
        check_url(&self.wss_addr, "wss").map_err(|e| format!("{prefix}.wss_addr: {e}"))?;
        Ok(())
    }

    /// Each field of `self`, or of `fallback` where `self` has none.
    pub fn or(&self, fallback: &Addrs) -> Addrs {
        let pick = |a: &String, b: &String| if a.is_empty() { b.clone() } else { a.clone() };
        Addrs {
            tcp_addr: pick(&self.tcp_addr, &fallback.tcp_addr),
            ws_addr: pick(&self.ws_addr, &fallback.ws_addr),
            wss_addr: pick(&self.wss_addr, &fallback.wss_addr),
        }
    }
}

/// Administrative state of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Active,
    Draining,
    Disabled,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(NodeState::Active),
            "draining" => Some(NodeState::Draining),
            "disabled" => Some(NodeState::Disabled),
            _ => None,
        }
    }
}

pub const DEFAULT_WEIGHT: u16 = 100;

/// The most connections a heartbeat may report: 2^53 - 1, exact in every
/// JSON reader (a JavaScript one included) and in a PostgreSQL BIGINT.
pub const MAX_CONNECTIONS: u64 = (1 << 53) - 1;

/// Everything an admin sets on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: String,
    pub region: Option<String>,
    pub weight: u16,
    pub state: NodeState,
    pub external: Addrs,
    pub intranet: Addrs,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// A node with every optional field at its default.
    pub fn new(id: impl Into<String>) -> Self {
        NodeSpec {
            id: id.into(),
            region: None,
            weight: DEFAULT_WEIGHT,
            state: NodeState::Active,
            external: Addrs::default(),
            intranet: Addrs::default(),
            labels: BTreeMap::new(),
        }
    }

    /// Checks every rule of the contract; the error names the field. A node
    /// must have an external `tcp_addr`: every client connects to it.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_fields()?;
        if self.external.tcp_addr.is_empty() {
            return Err(
                "external.tcp_addr: required: clients connect to this host:port".to_owned(),
            );
        }
        Ok(())
    }

    /// Every rule but the required address: the overrides file may patch a
    /// stored node it cannot see (`imroute check-config` has no database).
    pub fn validate_fields(&self) -> Result<(), String> {
        if !valid_id(&self.id) {
            return Err(format!(
                "id: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                truncate(&self.id)
            ));
        }
        if let Some(region) = &self.region {
            if !valid_id(region) {
                return Err(format!(
                    "region: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                    truncate(region)
                ));
            }
        }
        self.external.validate("external")?;
        self.intranet.validate("intranet")?;
        if self.labels.len() > 64 {
            return Err(format!(
                "labels: at most 64 labels, got {}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            if k.is_empty()
                || k.len() > 63
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            {
                return Err(format!(
                    "labels: key must match [A-Za-z0-9._/-]{{1,63}}, got {:?}",
                    truncate(k)
                ));
            }
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(format!(
                    "labels.{k}: value must be at most 256 bytes without control characters"
                ));
            }
        }
        Ok(())
    }
}

/// A stored node with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub spec: NodeSpec,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Change number of the last write of this node.
    pub seq: i64,
    /// Change number of its creation: tells a node apart from an earlier one
    /// that was deleted under the same id (its "incarnation").
    pub created_seq: i64,
}

/// A stored routing strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyRecord {
    pub name: String,
    pub kind: String,
    pub params: serde_json::Value,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Change number of the last write of this strategy.
    pub seq: i64,
}

/// Shortens a value quoted back in an error message.
pub fn truncate(s: &str) -> String {
    if s.chars().count() <= 70 {
        s.to_owned()
    } else {
        s.chars().take(64).collect::<String>() + "..."
    }
}

fn check_port(port: &str) -> Result<(), String> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "port must be a number 1-65535, got {:?}",
            truncate(port)
        ));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!("port must be 1-65535, got {port}")),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let ip = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("host {:?}: unclosed '['", truncate(host)))?;
        return ip
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("host {:?} is not an IPv6 address", truncate(host)));
    }
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("host {:?} is not an IPv4 address", truncate(host)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "host {:?} is not a DNS name, IPv4 address or [IPv6] address",
            truncate(host)
        ));
    }
    Ok(())
}

/// Splits `host:port` where host may be `[v6]`.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        Some((&s[..=end], rest.strip_prefix(':')?))
    } else {
        s.rsplit_once(':')
    }
}

/// `host:port`, or `""`.
pub fn check_tcp(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let (host, port) =
        split_host_port(s).ok_or_else(|| format!("must be host:port, got {:?}", truncate(s)))?;
    check_host(host)?;
    check_port(port)
}

/// `scheme://host[:port][/path]`, or `""`.
pub fn check_url(s: &str, scheme: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let rest = s
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("must be a {scheme}:// URL, got {:?}", truncate(s)))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '#')
    {
        return Err(format!(
            "path {:?} has a space, control character or '#'",
            truncate(path)
        ));
    }
    let ends_with_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    if ends_with_port {
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("bad host:port {:?}", truncate(authority)))?;
        check_host(host)?;
        check_port(port)
    } else {
        check_host(authority)
    }
}

/// Shortens a long message to at most `max` characters.
pub fn truncate_long(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max).collect::<String>() + "..."
    }
}

/// A key as it appears in a field path of a message: cut like
/// [`truncate`], control characters escaped.
pub fn field_key(s: &str) -> String {
    truncate(s).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_contract() {
        for ok in [
            "",
            "127.0.0.1:5100",
            "gw-1.example.com:1",
            "[::1]:65535",
            "localhost:80",
        ] {
            assert_eq!(check_tcp(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "1.2.3:80",
            "host:0",
            "host:65536",
            "host:",
            ":80",
            "[::1:80",
            "a b:1",
            "-x:1",
        ] {
            assert!(check_tcp(bad).is_err(), "{bad}");
        }
        for ok in [
            "",
            "ws://127.0.0.1:5200",
            "ws://im.example.com",
            "ws://[::1]:1/ws/path",
            "ws://h/x?y=1",
        ] {
            assert_eq!(check_url(ok, "ws"), Ok(()), "{ok}");
        }
        for bad in [
            "http://h",
            "wss://h",
            "ws://",
            "ws://h:0",
            "ws://h:99999",
            "ws://h/a b",
            "ws:/h",
        ] {
            assert!(check_url(bad, "ws").is_err(), "{bad}");
        }
        assert_eq!(check_url("wss://im.example.com:5300", "wss"), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut spec = NodeSpec::new("gw-1");
        spec.external.ws_addr = "http://x".into();
        assert!(spec
            .validate()
            .unwrap_err()
            .starts_with("external.ws_addr: "));
        spec = NodeSpec::new("bad id");
        assert!(spec.validate().unwrap_err().starts_with("id: "));
    }

    #[test]
    fn intranet_addresses_fall_back_field_by_field() {
        let ext = Addrs {
            tcp_addr: "1.1.1.1:1".into(),
            ws_addr: "ws://a".into(),
            wss_addr: "wss://a".into(),
        };
        let int = Addrs {
            tcp_addr: "10.0.0.1:1".into(),
            ..Default::default()
        };
        let eff = int.or(&ext);
        assert_eq!(eff.tcp_addr, "10.0.0.1:1");
        assert_eq!(eff.ws_addr, "ws://a");
    }
}
