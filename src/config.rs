//! Settings: built-in defaults, then the YAML config file, then `IMROUTE_*`
//! environment variables.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "config/imroute.yaml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port` to listen on; port 0 picks a free port.
    pub listen: String,
    pub database_url: String,
    pub overrides_path: PathBuf,
    /// Bearer token of the admin API; a random one is made when unset.
    pub admin_token: Option<String>,
    pub limits: Limits,
    pub health: HealthConfig,
    /// Several replicas sharing one PostgreSQL database.
    pub cluster: ClusterConfig,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// HTTPS on `listen` (and `admin_listen`) when both paths are set.
    pub tls: TlsConfig,
    /// A second listener (e.g. `127.0.0.1:5002`): `/admin/*` is served only
    /// there, and answers 404 on `listen`.
    pub admin_listen: Option<String>,
    /// Client networks (CIDRs such as `10.0.0.0/8` or single addresses)
    /// allowed to reach `/admin/*`; empty: any. Others get 403.
    pub admin_allow: Vec<String>,
    /// Origins that browsers may call `/route` and `/route/batch` from
    /// (`*`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Origins that browsers may call `/admin/*` from; empty (the default):
    /// no CORS headers on admin answers.
    pub admin_cors_origins: Vec<String>,
    /// Load balancers and proxies (CIDRs) whose `X-Forwarded-For` names the
    /// client, for a `GET /route` without `uid`; empty: the TCP peer is the
    /// client.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; reloaded when the file changes.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); reloaded with the chain.
    pub key_path: Option<PathBuf>,
}

impl TlsConfig {
    /// Both paths, when TLS is on.
    pub fn paths(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_path.as_deref()?, self.key_path.as_deref()?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This replica's name in `/admin/cluster`; default: host name and port.
    pub replica_id: Option<String>,
    /// The address other replicas and admins reach this one at; default:
    /// the listen address.
    pub advertise_addr: Option<String>,
    /// How often the stored change counter is checked, catching changes whose
    /// notification was lost.
    pub poll_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replica_id: None,
            advertise_addr: None,
            poll_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_batch: usize,
    pub max_uid_bytes: usize,
    pub max_body_bytes: usize,
    /// The largest overrides file read; a larger one is an error.
    pub max_overrides_bytes: u64,
    /// A client must send a request's headers within this time (also the
    /// longest an HTTP/1.1 keep-alive connection waits for its next request).
    pub header_timeout_ms: u64,
    /// A request's whole body must arrive within this time (408 past it).
    pub body_timeout_ms: u64,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout_ms: u64,
    /// Connections open at once; lowered at start to fit the process's file
    /// descriptor limit. Connections past it are closed at once.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub heartbeat_ttl_secs: u64,
    pub probe: ProbeConfig,
    /// How often the full set of the `bounded` kind is re-evaluated from
    /// the connections nodes report.
    pub full_eval_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub enabled: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    /// Probes in flight at once (each holds a socket).
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5001".into(),
            database_url: "sqlite://data/imroute.db".into(),
            overrides_path: "config/overrides.yaml".into(),
            admin_token: None,
            limits: Limits::default(),
            health: HealthConfig::default(),
            cluster: ClusterConfig::default(),
            log_format: LogFormat::Text,
            tls: TlsConfig::default(),
            admin_listen: None,
            admin_allow: Vec::new(),
            cors_origins: vec!["*".into()],
            admin_cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch: 10_000,
            max_uid_bytes: 256,
            max_body_bytes: 4 * 1024 * 1024,
            max_overrides_bytes: 16 * 1024 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            heartbeat_ttl_secs: 15,
            probe: ProbeConfig::default(),
            full_eval_interval_ms: 5000,
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            enabled: false,
            interval_ms: 2000,
            timeout_ms: 500,
            unhealthy_after: 2,
            healthy_after: 2,
            concurrency: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the config. `path: None` means the default path, which may be
    /// missing (built-in defaults); a path given explicitly must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |key| std::env::var(key).ok())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let explicit = path.is_some();
        let path = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Config::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        if let Some(v) = env("IMROUTE_LISTEN") {
            config.listen = v;
        }
        if let Some(v) = env("IMROUTE_DATABASE_URL") {
            config.database_url = v;
        }
        if let Some(v) = env("IMROUTE_OVERRIDES_PATH") {
            config.overrides_path = v.into();
        }
        if let Some(v) = env("IMROUTE_ADMIN_TOKEN") {
            config.admin_token = Some(v);
        }
        if let Some(v) = env("IMROUTE_REPLICA_ID") {
            config.cluster.replica_id = Some(v);
        }
        if let Some(v) = env("IMROUTE_ADVERTISE_ADDR") {
            config.cluster.advertise_addr = Some(v);
        }
        if let Some(v) = env("IMROUTE_ADMIN_LISTEN") {
            config.admin_listen = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = env("IMROUTE_ADMIN_ALLOW") {
            config.admin_allow = split_list(&v);
        }
        if let Some(v) = env("IMROUTE_TRUSTED_PROXIES") {
            config.trusted_proxies = split_list(&v);
        }
        if let Some(v) = env("IMROUTE_CORS_ORIGINS") {
            config.cors_origins = split_list(&v);
        }
        if let Some(v) = env("IMROUTE_ADMIN_CORS_ORIGINS") {
            config.admin_cors_origins = split_list(&v);
        }
        if let Some(v) = env("IMROUTE_TLS_CERT_PATH") {
            config.tls.cert_path = Some(v.into());
        }
        if let Some(v) = env("IMROUTE_TLS_KEY_PATH") {
            config.tls.key_path = Some(v.into());
        }
        if let Some(v) = env("IMROUTE_LOG_FORMAT") {
            config.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "IMROUTE_LOG_FORMAT: must be text or json, got {other:?}"
                    )))
                }
            };
        }
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Parses YAML; an empty file means all defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        let parsed: Option<Config> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        Ok(parsed.unwrap_or_default())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("listen: must be ip:port, got {:?}", self.listen));
        }
        if !self.database_url.starts_with("sqlite:")
            && !crate::store::is_postgres_url(&self.database_url)
        {
            return Err(format!(
                "database_url: must start with sqlite:, postgres:// or postgresql://, got {:?}",
                redact_url(&self.database_url)
            ));
        }
        let c = &self.cluster;
        if c.poll_interval_ms == 0 || c.poll_interval_ms > 60_000 {
            return Err(format!(
                "cluster.poll_interval_ms: must be 1..=60000, got {}",
                c.poll_interval_ms
            ));
        }
        if let Some(id) = &c.replica_id {
            if id.is_empty() || id.len() > 128 || id.chars().any(|ch| ch.is_control()) {
                return Err(
                    "cluster.replica_id: must be 1-128 characters without control characters"
                        .into(),
                );
            }
        }
        if let Some(token) = &self.admin_token {
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "admin_token: must be at least 16 characters without spaces or control characters \
                     (got {} characters); leave it unset to have a random one made and logged",
                    token.chars().count()
                ));
            }
        }
        let l = &self.limits;
        if l.max_batch == 0
            || l.max_uid_bytes == 0
            || l.max_body_bytes < 2
            || l.max_overrides_bytes == 0
        {
            return Err(
                "limits: max_batch, max_uid_bytes, max_body_bytes and max_overrides_bytes must be positive".into(),
            );
        }
        for (name, ms) in [
            ("header_timeout_ms", l.header_timeout_ms),
            ("body_timeout_ms", l.body_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(format!("limits.{name}: must be 100..=3600000, got {ms}"));
            }
        }
        if !(1..=crate::server::MAX_CONNECTIONS).contains(&l.max_connections) {
            return Err(format!(
                "limits.max_connections: must be 1..={}, got {}",
                crate::server::MAX_CONNECTIONS,
                l.max_connections
            ));
        }
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return Err("tls: set both cert_path and key_path, or neither".into());
        }
        if let Some(addr) = &self.admin_listen {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("admin_listen: must be ip:port, got {addr:?}"));
            }
        }
        self.admin_networks()?;
        self.proxy_networks()?;
        for (key, list) in [
            ("cors_origins", &self.cors_origins),
            ("admin_cors_origins", &self.admin_cors_origins),
        ] {
            for origin in list {
                let ok = origin == "*"
                    || ((origin.starts_with("http://") || origin.starts_with("https://"))
                        && !origin.ends_with('/')
                        && origin.len() <= 256
                        && origin.bytes().all(|b| b.is_ascii_graphic()));
                if !ok {
                    return Err(format!(
                        "{key}: {:?} is not an origin such as https://app.example.com or *",
                        crate::model::truncate(origin)
                    ));
                }
            }
        }
        let h = &self.health;
        if h.heartbeat_ttl_secs == 0 {
            return Err("health.heartbeat_ttl_secs: must be at least 1".into());
        }
        if !(100..=60_000).contains(&h.full_eval_interval_ms) {
            return Err("health.full_eval_interval_ms: must be between 100 and 60000".into());
        }
        let p = &h.probe;
        if p.interval_ms == 0
            || p.timeout_ms == 0
            || p.unhealthy_after == 0
            || p.healthy_after == 0
            || p.concurrency == 0
        {
            return Err("health.probe: interval_ms, timeout_ms, unhealthy_after, healthy_after and concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// `admin_allow` parsed: a bare address is a network of one.
    pub fn admin_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        networks("admin_allow", &self.admin_allow)
    }

    /// `trusted_proxies` parsed.
    pub fn proxy_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        networks("trusted_proxies", &self.trusted_proxies)
    }

    /// The config as logged at start: secrets replaced.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.admin_token.is_some() {
            c.admin_token = Some("<redacted>".into());
        }
        c.database_url = redact_url(&c.database_url);
        c
    }
}

/// CIDRs (or single addresses) of a config list.
fn networks(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    list.iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    format!(
                        "{key}: {:?} is not a network such as 10.0.0.0/8 or an address",
                        crate::model::truncate(s)
                    )
                })
        })
        .collect()
}

/// `a, b,c` -> `["a", "b", "c"]`.
fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A database URL with its password replaced (in the user info and in a
/// `password=` query parameter), for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let base = redact_userinfo(url);
    match query {
        Some(q) => format!("{base}?{q}"),
        None => base,
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_default_file_means_defaults_and_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        assert!(Config::load_with_env(Some(&missing), |_| None).is_err());
        let c = Config::load_with_env(None, |k| {
            (k == "IMROUTE_LISTEN").then(|| "127.0.0.1:7000".to_string())
        })
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::parse("lisen: x").unwrap_err().contains("lisen"));
        let c = Config::parse("limits: {max_batch: 5}").unwrap();
        assert_eq!(c.limits.max_batch, 5);
        assert_eq!(c.limits.max_uid_bytes, 256);
        assert!(Config::parse("listen: nope").unwrap().validate().is_err());
    }

    #[test]
    fn database_passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:<redacted>@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=secret"),
            "postgres://u@h/db?sslmode=require&password=<redacted>"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }

    #[test]
    fn the_shipped_config_file_equals_the_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/imroute.yaml"))
                .unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }
}
