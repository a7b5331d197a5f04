//! Node health: every replica derives a node's status from the same stored
//! facts ([`HealthRecord`]: heartbeats, expiry judged by the leader on the
//! store's clock, probe verdicts), so every replica routes on the same view.
//! [`HealthRegistry`] is this process's copy of those facts; status changes
//! reach routing through the control plane's one rebuild path.

pub mod probe;

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use serde::Serialize;

pub use crate::store::HealthRecord;

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
    /// In the full set of the `bounded` kind.
    pub full: bool,
}

/// A node's status from its stored facts (the status [`derive`] gives,
/// without building the view). Expiry wins over probes, probes over
/// heartbeats: a node is healthy only when nothing says it is down.
pub fn status(r: &HealthRecord) -> Status {
    if r.expired_at.is_some() {
        return Status::Unhealthy;
    }
    match (r.probe_down, &r.heartbeat_at) {
        (Some(true), _) => Status::Unhealthy,
        (_, Some(_)) | (Some(false), None) => Status::Healthy,
        (None, None) => Status::Unknown,
    }
}

/// The view of a node's health: [`status`] with its reason and since.
pub fn derive(r: &HealthRecord, ttl: Duration) -> HealthView {
    let view = |status, since: &Option<String>, reason: String| HealthView {
        status,
        since: since.clone().unwrap_or_else(|| r.created_at.clone()),
        reason,
        connections: r.connections,
        full: r.full,
    };
    if r.expired_at.is_some() {
        return view(
            Status::Unhealthy,
            &r.expired_at,
            format!("no heartbeat for {}s", ttl.as_secs()),
        );
    }
    match (r.probe_down, &r.heartbeat_at) {
        (Some(true), _) => view(Status::Unhealthy, &r.probe_since, r.probe_reason.clone()),
        (_, Some(_)) => {
            // Healthy since the later of "heartbeats resumed" and "probes
            // turned up".
            let since = match (&r.heartbeat_since, &r.probe_since) {
                (Some(h), Some(p)) if r.probe_down == Some(false) && p > h => Some(p.clone()),
                (h, _) => h.clone(),
            };
            view(Status::Healthy, &since, "heartbeat received".into())
        }
        (Some(false), None) => view(
            Status::Healthy,
            &r.probe_since,
            "tcp probe succeeded".into(),
        ),
        (None, None) => view(Status::Unknown, &None, "no heartbeat or probe yet".into()),
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

/// This process's copy of the stored health facts, keyed by node id. A
/// record counts only for the node incarnation it was written for, so a node
/// created again under a deleted node's id never inherits its health.
pub struct HealthRegistry {
    records: Mutex<HashMap<String, HealthRecord>>,
    ttl: Duration,
}

impl HealthRegistry {
    pub fn new(heartbeat_ttl: Duration) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            ttl: heartbeat_ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HealthRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in records read from or written to the store. With `complete`,
    /// records not in the batch are dropped (a full re-read). Returns the
    /// status changes, and whether the full set changed.
    pub fn apply(
        &self,
        records: impl IntoIterator<Item = HealthRecord>,
        complete: bool,
    ) -> (Vec<Transition>, bool) {
        let mut map = self.lock();
        let mut out = Vec::new();
        let mut full_changed = false;
        let mut seen = HashSet::new();
        for r in records {
            if complete {
                seen.insert(r.node.clone());
            }
            let old = map.get(&r.node);
            // Several paths bring records (a write's own result, the read
            // back, expiry): only a newer write of the row counts.
            if old.is_some_and(|o| (o.incarnation, o.version) > (r.incarnation, r.version)) {
                continue;
            }
            let from = old.map_or(Status::Unknown, |o| {
                if o.incarnation == r.incarnation {
                    derive(o, self.ttl).status
                } else {
                    Status::Unknown
                }
            });
            let was_full = old.is_some_and(|o| o.incarnation == r.incarnation && o.full);
            full_changed |= was_full != r.full;
            let to = derive(&r, self.ttl);
            if from != to.status {
                out.push(Transition {
                    node: r.node.clone(),
                    from,
                    to: to.status,
                    reason: to.reason,
                });
            }
            map.insert(r.node.clone(), r);
        }
        if complete {
            map.retain(|id, r| {
                let keep = seen.contains(id);
                full_changed |= !keep && r.full;
                if !keep && derive(r, self.ttl).status != Status::Unknown {
                    out.push(Transition {
                        node: id.clone(),
                        from: derive(r, self.ttl).status,
                        to: Status::Unknown,
                        reason: "health record removed".into(),
                    });
                }
                keep
            });
        }
        (out, full_changed)
    }

    /// Health of one node incarnation; `unknown_since` is shown when nothing
    /// was recorded yet (the node's creation).
    pub fn view(&self, id: &str, incarnation: i64, unknown_since: &str) -> HealthView {
        let map = self.lock();
        match map.get(id).filter(|r| r.incarnation == incarnation) {
            Some(r) => derive(r, self.ttl),
            None => HealthView {
                status: Status::Unknown,
                since: unknown_since.to_owned(),
                reason: "no heartbeat or probe yet".into(),
                connections: None,
                full: false,
            },
        }
    }

    /// The probe verdict on record for a node incarnation.
    pub fn probe_down(&self, id: &str, incarnation: i64) -> Option<bool> {
        self.lock()
            .get(id)
            .filter(|r| r.incarnation == incarnation)
            .and_then(|r| r.probe_down)
    }

    /// Unhealthy nodes as id -> incarnation, for a table build.
    pub fn unhealthy(&self) -> HashMap<String, i64> {
        self.lock()
            .values()
            .filter(|r| status(r) == Status::Unhealthy)
            .map(|r| (r.node.clone(), r.incarnation))
            .collect()
    }

    /// Full nodes as id -> incarnation, for a table build.
    pub fn full(&self) -> HashMap<String, i64> {
        self.lock()
            .values()
            .filter(|r| r.full)
            .map(|r| (r.node.clone(), r.incarnation))
            .collect()
    }

    /// Whether any record is in the full set.
    pub fn any_full(&self) -> bool {
        self.lock().values().any(|r| r.full)
    }

    /// Per node id: (incarnation, reported connections, full), for the
    /// evaluation of the full set.
    pub fn loads(&self) -> HashMap<String, (i64, Option<u64>, bool)> {
        self.lock()
            .values()
            .map(|r| (r.node.clone(), (r.incarnation, r.connections, r.full)))
            .collect()
    }

    /// Drops the records of node incarnations that are gone: `alive` tells,
    /// for an id, the incarnation that exists here now. Records of ids not
    /// known here, or of a newer incarnation, are kept: the node may not have
    /// reached this process yet (a full re-read drops those that never do).
    pub fn retain(&self, alive: impl Fn(&str) -> Option<i64>) {
        self.lock()
            .retain(|id, r| alive(id).is_none_or(|inc| r.incarnation >= inc));
    }

    /// Forgets a deleted node.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str) -> HealthRecord {
        HealthRecord::new(node, 1, "2026-01-01T00:00:00.000Z".into())
    }

    #[test]
    fn status_follows_expiry_then_probes_then_heartbeats() {
        let ttl = Duration::from_secs(10);
        let mut r = record("a");
        assert_eq!(derive(&r, ttl).status, Status::Unknown);
        r.heartbeat_at = Some("2026-01-01T00:00:01.000Z".into());
        r.heartbeat_since = r.heartbeat_at.clone();
        assert_eq!(derive(&r, ttl).status, Status::Healthy);
        r.probe_down = Some(true);
        r.probe_reason = "refused".into();
        assert_eq!(derive(&r, ttl).status, Status::Unhealthy);
        assert_eq!(derive(&r, ttl).reason, "refused");
        r.probe_down = Some(false);
        r.expired_at = Some("2026-01-01T00:00:20.000Z".into());
        let v = derive(&r, ttl);
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Status::Unhealthy, "no heartbeat for 10s")
        );
    }

    #[test]
    fn the_quick_status_agrees_with_the_view_in_every_case() {
        let ttl = Duration::from_secs(10);
        for expired in [false, true] {
            for probe in [None, Some(false), Some(true)] {
                for beat in [false, true] {
                    let mut r = record("a");
                    r.expired_at = expired.then(|| "2026-01-01T00:00:20.000Z".into());
                    r.probe_down = probe;
                    r.heartbeat_at = beat.then(|| "2026-01-01T00:00:01.000Z".into());
                    assert_eq!(status(&r), derive(&r, ttl).status, "{r:?}");
                }
            }
        }
    }

    #[test]
    fn a_record_of_an_earlier_incarnation_is_not_inherited() {
        let reg = HealthRegistry::new(Duration::from_secs(10));
        let mut r = record("a");
        r.expired_at = Some("2026-01-01T00:00:20.000Z".into());
        r.heartbeat_at = Some("2026-01-01T00:00:01.000Z".into());
        let (t, _) = reg.apply([r], false);
        assert_eq!(t.len(), 1);
        assert_eq!(reg.view("a", 1, "x").status, Status::Unhealthy);
        assert_eq!(reg.view("a", 2, "x").status, Status::Unknown);
        reg.retain(|_| Some(2));
        assert!(reg.is_empty());
    }

    #[test]
    fn an_older_copy_of_a_record_never_replaces_a_newer_one() {
        let reg = HealthRegistry::new(Duration::from_secs(10));
        let mut healthy = record("a");
        healthy.heartbeat_at = Some("2026-01-01T00:00:01.000Z".into());
        healthy.version = 5;
        let mut expired = healthy.clone();
        expired.expired_at = Some("2026-01-01T00:00:20.000Z".into());
        expired.version = 4;
        reg.apply([healthy], false);
        assert!(reg.apply([expired], false).0.is_empty());
        assert_eq!(reg.view("a", 1, "x").status, Status::Healthy);
        // A newer incarnation wins whatever its version.
        let mut fresh = record("a");
        fresh.incarnation = 2;
        reg.apply([fresh], false);
        assert_eq!(reg.view("a", 2, "x").status, Status::Unknown);
        reg.retain(|_| Some(1));
        assert_eq!(reg.len(), 1, "a newer incarnation is kept");
    }

    #[test]
    fn a_complete_batch_drops_what_it_does_not_hold() {
        let reg = HealthRegistry::new(Duration::from_secs(10));
        reg.apply([record("a"), record("b")], false);
        reg.apply([record("b")], true);
        assert_eq!(reg.len(), 1);
    }
}
