//! Node health: heartbeats with load, TCP probes, and the registry that both
//! feed. A status change goes through the control plane's one rebuild path.

pub mod monitor;

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{config::ProbeConfig, store::now_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Unhealthy,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
            Status::Unknown => "unknown",
        }
    }
}

/// What the admin API shows of a node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    pub status: Status,
    pub since: String,
    pub reason: String,
    pub connections: Option<u64>,
}

#[derive(Debug, Clone)]
struct Entry {
    status: Status,
    since: String,
    reason: String,
    connections: Option<u64>,
    last_heartbeat: Option<Instant>,
    heartbeat_expired: bool,
    /// `Some(true)` when probes say down, `Some(false)` when up.
    probe_down: Option<bool>,
    probe_failures: u32,
    probe_successes: u32,
    probe_error: String,
}

impl Entry {
    fn new() -> Self {
        Entry {
            status: Status::Unknown,
            since: now_rfc3339(),
            reason: "no heartbeat or probe yet".into(),
            connections: None,
            last_heartbeat: None,
            heartbeat_expired: false,
            probe_down: None,
            probe_failures: 0,
            probe_successes: 0,
            probe_error: String::new(),
        }
    }

    fn derive(&self, ttl: Duration) -> (Status, String) {
        if self.heartbeat_expired {
            return (
                Status::Unhealthy,
                format!("no heartbeat for {}s", ttl.as_secs()),
            );
        }
        if self.probe_down == Some(true) {
            return (
                Status::Unhealthy,
                format!(
                    "tcp probe failed {} times in a row: {}",
                    self.probe_failures, self.probe_error
                ),
            );
        }
        if self.last_heartbeat.is_some() {
            return (Status::Healthy, "heartbeat received".into());
        }
        if self.probe_down == Some(false) {
            return (Status::Healthy, "tcp probe succeeded".into());
        }
        (Status::Unknown, "no heartbeat or probe yet".into())
    }

    /// Recomputes the status; true when it changed.
    fn settle(&mut self, ttl: Duration) -> bool {
        let (status, reason) = self.derive(ttl);
        let changed = status != self.status;
        if changed {
            self.since = now_rfc3339();
        }
        self.status = status;
        self.reason = reason;
        changed
    }
}

/// A status change of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: Status,
    pub to: Status,
    pub reason: String,
}

/// Health of every node, in memory: heartbeats are frequent and need not be
/// durable; a restart starts every node as `unknown` (routable).
pub struct HealthRegistry {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
}

impl HealthRegistry {
    pub fn new(heartbeat_ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl: heartbeat_ttl,
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) -> Option<Transition> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(id.to_owned()).or_insert_with(Entry::new);
        let from = entry.status;
        f(entry);
        entry.settle(self.ttl).then(|| Transition {
            node: id.to_owned(),
            from,
            to: entry.status,
            reason: entry.reason.clone(),
        })
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, id: &str, connections: u64, now: Instant) -> Option<Transition> {
        self.update(id, |e| {
            e.last_heartbeat = Some(now);
            e.heartbeat_expired = false;
            e.connections = Some(connections);
        })
    }

    /// Marks nodes whose heartbeats stopped for longer than the TTL.
    pub fn expire(&self, now: Instant) -> Vec<Transition> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, entry) in entries.iter_mut() {
            let expired = entry
                .last_heartbeat
                .is_some_and(|t| now.saturating_duration_since(t) > self.ttl);
            if expired != entry.heartbeat_expired {
                let from = entry.status;
                entry.heartbeat_expired = expired;
                if entry.settle(self.ttl) {
                    out.push(Transition {
                        node: id.clone(),
                        from,
                        to: entry.status,
                        reason: entry.reason.clone(),
                    });
                }
            }
        }
        out
    }

    /// Records one probe result; `unhealthy_after` failures or `healthy_after`
    /// successes in a row flip the probe verdict (no flapping on one result).
    pub fn probe_result(
        &self,
        id: &str,
        result: Result<(), String>,
        cfg: &ProbeConfig,
    ) -> Option<Transition> {
        self.update(id, |e| match result {
            Ok(()) => {
                e.probe_failures = 0;
                e.probe_successes = e.probe_successes.saturating_add(1);
                if e.probe_successes >= cfg.healthy_after
                    || (e.probe_down.is_none() && e.probe_successes >= 1)
                {
                    e.probe_down = Some(false);
                }
            }
            Err(error) => {
                e.probe_successes = 0;
                e.probe_failures = e.probe_failures.saturating_add(1);
                e.probe_error = error;
                if e.probe_failures >= cfg.unhealthy_after {
                    e.probe_down = Some(true);
                }
            }
        })
    }

    pub fn is_unhealthy(&self, id: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(id)
            .is_some_and(|e| e.status == Status::Unhealthy)
    }

    /// Unhealthy node ids, for a table build.
    pub fn unhealthy(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|(_, e)| e.status == Status::Unhealthy)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn view(&self, id: &str) -> HealthView {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // The first look at a node starts its `unknown` period, so `since`
        // stays put between reads.
        let e = entries.entry(id.to_owned()).or_insert_with(Entry::new);
        HealthView {
            status: e.status,
            since: e.since.clone(),
            reason: e.reason.clone(),
            connections: e.connections,
        }
    }

    /// Forgets a deleted node.
    pub fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_expires_and_its_next_heartbeat_revives_it() {
        let reg = HealthRegistry::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(reg.view("a").status, Status::Unknown);
        let t = reg.heartbeat("a", 5, t0).unwrap();
        assert_eq!((t.from, t.to), (Status::Unknown, Status::Healthy));
        assert!(reg.expire(t0 + Duration::from_secs(10)).is_empty());
        let t = reg.expire(t0 + Duration::from_secs(11));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, Status::Unhealthy);
        assert_eq!(reg.unhealthy(), vec!["a".to_string()]);
        let t = reg.heartbeat("a", 6, t0 + Duration::from_secs(12)).unwrap();
        assert_eq!(t.to, Status::Healthy);
        assert_eq!(reg.view("a").connections, Some(6));
    }

    #[test]
    fn probes_need_consecutive_results_to_flip() {
        let reg = HealthRegistry::new(Duration::from_secs(10));
        let cfg = ProbeConfig {
            unhealthy_after: 2,
            healthy_after: 2,
            ..ProbeConfig::default()
        };
        assert_eq!(
            reg.probe_result("a", Ok(()), &cfg).unwrap().to,
            Status::Healthy
        );
        assert!(reg.probe_result("a", Err("refused".into()), &cfg).is_none());
        assert!(reg.probe_result("a", Ok(()), &cfg).is_none());
        assert!(reg.probe_result("a", Err("refused".into()), &cfg).is_none());
        let t = reg.probe_result("a", Err("refused".into()), &cfg).unwrap();
        assert_eq!(t.to, Status::Unhealthy);
        assert!(reg.probe_result("a", Ok(()), &cfg).is_none());
        assert_eq!(
            reg.probe_result("a", Ok(()), &cfg).unwrap().to,
            Status::Healthy
        );
    }
}
