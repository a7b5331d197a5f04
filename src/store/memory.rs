//! Health records and the replica registry kept in memory, for the SQLite
//! store: one process, so there is nobody to share them with, and heartbeats
//! are too frequent to be worth a durable write each. After a restart every
//! node is `unknown` (routable) until it reports.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{now_rfc3339, FullMark, HealthBatch, HealthRecord, ProbeVerdict, ReplicaInfo};

struct Entry {
    record: HealthRecord,
    last_heartbeat: Option<Instant>,
    /// Change number of the last write, for `since`.
    changed: i64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    counter: i64,
    replicas: HashMap<String, (ReplicaInfo, Instant)>,
}

#[derive(Default)]
pub struct MemoryHealth {
    inner: Mutex<Inner>,
}

impl MemoryHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat; true when the node came back with it.
    pub fn heartbeat(
        &self,
        node: &str,
        incarnation: i64,
        connections: u64,
    ) -> (HealthRecord, bool) {
        let mut inner = self.lock();
        inner.counter += 1;
        let changed = inner.counter;
        let now = now_rfc3339();
        let entry = inner
            .entries
            .entry(node.to_owned())
            .or_insert_with(|| Entry {
                record: HealthRecord::new(node, incarnation, now.clone()),
                last_heartbeat: None,
                changed,
            });
        if entry.record.incarnation != incarnation {
            *entry = Entry {
                record: HealthRecord::new(node, incarnation, now.clone()),
                last_heartbeat: None,
                changed,
            };
        }
        let r = &mut entry.record;
        let revived = r.heartbeat_at.is_none() || r.expired_at.is_some();
        if revived {
            r.heartbeat_since = Some(now.clone());
        }
        r.heartbeat_at = Some(now);
        r.expired_at = None;
        r.connections = Some(connections);
        r.version = changed;
        entry.last_heartbeat = Some(Instant::now());
        entry.changed = changed;
        (entry.record.clone(), revived)
    }

    pub fn since(&self, cursor: i64) -> HealthBatch {
        let inner = self.lock();
        HealthBatch {
            records: inner
                .entries
                .values()
                .filter(|e| e.changed > cursor)
                .map(|e| e.record.clone())
                .collect(),
            cursor: inner.counter,
            complete: cursor == 0,
        }
    }

    pub fn expire(&self, ttl: Duration) -> Vec<HealthRecord> {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut counter = inner.counter;
        for entry in inner.entries.values_mut() {
            let due = entry
                .last_heartbeat
                .is_some_and(|t| now.saturating_duration_since(t) > ttl);
            if due && entry.record.expired_at.is_none() {
                counter += 1;
                entry.record.expired_at = Some(now_rfc3339());
                entry.record.version = counter;
                entry.changed = counter;
                out.push(entry.record.clone());
            }
        }
        inner.counter = counter;
        out
    }

    pub fn set_probe_verdicts(
        &self,
        verdicts: &[ProbeVerdict],
        exists: impl Fn(&str, i64) -> bool,
    ) -> Vec<HealthRecord> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for v in verdicts {
            if !exists(&v.node, v.incarnation) {
                continue;
            }
            inner.counter += 1;
            let changed = inner.counter;
            let now = now_rfc3339();
            let entry = inner
                .entries
                .entry(v.node.clone())
                .or_insert_with(|| Entry {
                    record: HealthRecord::new(&v.node, v.incarnation, now.clone()),
                    last_heartbeat: None,
                    changed,
                });
            if entry.record.incarnation != v.incarnation {
                *entry = Entry {
                    record: HealthRecord::new(&v.node, v.incarnation, now.clone()),
                    last_heartbeat: None,
                    changed,
                };
            }
            let r = &mut entry.record;
            if r.probe_down != Some(v.down) {
                r.probe_since = Some(now);
            }
            r.probe_down = Some(v.down);
            r.probe_reason = v.reason.clone();
            r.version = changed;
            entry.changed = changed;
            out.push(r.clone());
        }
        out
    }

    /// Stores changes of the full set, for nodes that have a record of the
    /// same incarnation (a node that never reported cannot be full).
    pub fn set_full(&self, marks: &[FullMark]) -> Vec<HealthRecord> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for m in marks {
            let next = inner.counter + 1;
            let Some(entry) = inner
                .entries
                .get_mut(&m.node)
                .filter(|e| e.record.incarnation == m.incarnation && e.record.full != m.full)
            else {
                continue;
            };
            entry.record.full = m.full;
            entry.record.version = next;
            entry.changed = next;
            out.push(entry.record.clone());
            inner.counter = next;
        }
        out
    }

    /// Drops a deleted node's record.
    pub fn forget(&self, node: &str) {
        self.lock().entries.remove(node);
    }

    pub fn report_replica(&self, me: &ReplicaInfo) {
        let mut inner = self.lock();
        let mut info = me.clone();
        info.last_seen = now_rfc3339();
        if let Some((old, _)) = inner.replicas.get(&me.id) {
            info.started_at = old.started_at.clone();
        }
        inner.replicas.insert(me.id.clone(), (info, Instant::now()));
    }

    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let inner = self.lock();
        let mut out: Vec<ReplicaInfo> = inner
            .replicas
            .values()
            .filter(|(_, seen)| seen.elapsed() < Duration::from_secs(5))
            .map(|(info, _)| info.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn leave(&self, replica: &str) {
        self.lock().replicas.remove(replica);
    }
}
