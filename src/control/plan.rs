//! Planning: how a sample of users spreads over the nodes, and what a list
//! of changes would do to it, with nothing written.
//!
//! A simulation copies the controller's inputs (stored state as cached, the
//! overrides file in effect, health), applies the changes to the copy with
//! the checks of the real writes, and builds both tables through
//! [`super::compose`] and [`Table::build`]: the path `rebuild` serves from.
//! So the same change made for real moves exactly the users, and in exactly
//! the flows, that the simulation reported.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde_json::Value;

use super::{check_strategy, compose, holds_for, ControlError, Controller, Inputs, NodeHealth};
use crate::{
    model::{NodeRecord, NodeSpec, StrategyRecord},
    overrides::EffectiveNode,
    routing::Table,
};

/// The most users a sample may hold.
pub const MAX_SAMPLE: usize = 1_000_000;

/// Whose placement is counted.
#[derive(Debug, Clone)]
pub enum Sample {
    /// `count` synthetic uids from `seed`: `sim-{seed}-{i}` for `i` in
    /// `0..count`, so anyone can route the same users.
    Synthetic { count: usize, seed: u64 },
    /// Real uids (distinct, in order).
    Uids(Vec<String>),
}

impl Sample {
    pub fn len(&self) -> usize {
        match self {
            Sample::Synthetic { count, .. } => *count,
            Sample::Uids(u) => u.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each uid, in order, without allocating per uid,
    /// until `f` answers false.
    fn for_each(&self, mut f: impl FnMut(usize, &str) -> bool) {
        match self {
            Sample::Synthetic { count, seed } => {
                let mut buf = String::with_capacity(32);
                let _ = write!(buf, "sim-{seed}-");
                let prefix = buf.len();
                for i in 0..*count {
                    buf.truncate(prefix);
                    let _ = write!(buf, "{i}");
                    if !f(i, &buf) {
                        return;
                    }
                }
            }
            Sample::Uids(uids) => {
                for (i, u) in uids.iter().enumerate() {
                    if !f(i, u) {
                        return;
                    }
                }
            }
        }
    }
}

/// A node patch as `PATCH /admin/nodes/{id}` applies it.
pub type NodePatch = Box<dyn Fn(&NodeSpec) -> Result<NodeSpec, String> + Send + Sync>;

/// One proposed change.
pub enum Change {
    PutNode(NodeSpec),
    PatchNode {
        id: String,
        patch: NodePatch,
    },
    DeleteNode(String),
    SetHealth {
        id: String,
        healthy: bool,
    },
    PutStrategy {
        name: String,
        kind: String,
        params: Value,
    },
    ActivateStrategy(String),
}

/// A change that the real endpoint would refuse: which one, and why, the
/// message naming the field from the change object
/// (`patch.weight: must be 0..=65535, got 70000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub index: usize,
    pub message: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "changes[{}].{}", self.index, self.message)
    }
}

/// One node's part of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeShare {
    pub node_id: String,
    pub users: u64,
    pub share: f64,
}

/// How a sample spreads over the routable nodes of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub revision: String,
    pub sample_size: u64,
    /// Users no node could take (no routable node at all).
    pub unrouted: u64,
    /// Most users on one node over the mean per routable node (1.0 is even).
    pub max_over_mean: f64,
    pub panic_mode: bool,
    /// Every routable node, in id order, also those with no user.
    pub nodes: Vec<NodeShare>,
}

/// Users that a change moves from one node to another (`None`: no node).
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub from: Option<String>,
    pub to: Option<String>,
    pub users: u64,
    /// The moved uids, in sample order, when the sample was a list of uids.
    pub uids: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    pub sample_size: u64,
    pub moved: u64,
    pub moved_fraction: f64,
    pub before: Distribution,
    pub after: Distribution,
    /// Largest first; equal ones by `from`, then `to`.
    pub flows: Vec<Flow>,
}

const UNROUTED: u32 = u32::MAX;

/// Places every uid of the sample: the node index (or `UNROUTED`) per uid.
/// `None` once `stop` is set (checked every 65,536 uids): nobody waits for
/// the answer any more.
fn place_all(
    table: &Table,
    sample: &Sample,
    region: Option<&str>,
    stop: &AtomicBool,
) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(sample.len());
    let mut stopped = false;
    sample.for_each(|i, uid| {
        if i % 65_536 == 0 && stop.load(Ordering::Relaxed) {
            stopped = true;
            return false;
        }
        out.push(table.route(uid, region).map_or(UNROUTED, |i| i as u32));
        true
    });
    (!stopped).then_some(out)
}

/// Never set: for callers that always want the answer.
static NEVER: AtomicBool = AtomicBool::new(false);

fn distribution(table: &Table, placed: &[u32]) -> Distribution {
    let mut users = vec![0u64; table.nodes().len()];
    let mut unrouted = 0u64;
    for &i in placed {
        match users.get_mut(i as usize) {
            Some(n) => *n += 1,
            None => unrouted += 1,
        }
    }
    let total = placed.len() as u64;
    let routed = total - unrouted;
    let max = users.iter().copied().max().unwrap_or(0);
    let max_over_mean = if routed == 0 || users.is_empty() {
        0.0
    } else {
        max as f64 * users.len() as f64 / routed as f64
    };
    Distribution {
        revision: table.revision().to_owned(),
        sample_size: total,
        unrouted,
        max_over_mean: round6(max_over_mean),
        panic_mode: table.panic_mode(),
        nodes: table
            .nodes()
            .iter()
            .zip(users)
            .map(|(n, users)| NodeShare {
                node_id: n.id().to_owned(),
                users,
                share: if total == 0 {
                    0.0
                } else {
                    round6(users as f64 / total as f64)
                },
            })
            .collect(),
    }
}

/// Six decimals: exact enough to read, stable to compare.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// How `sample` spreads over `table`'s nodes; `None` once `stop` is set.
pub fn distribute(
    table: &Table,
    sample: &Sample,
    region: Option<&str>,
    stop: &AtomicBool,
) -> Option<Distribution> {
    Some(distribution(
        table,
        &place_all(table, sample, region, stop)?,
    ))
}

/// Compares the placements of one sample under two tables.
pub fn compare(before: &Table, after: &Table, sample: &Sample, region: Option<&str>) -> Simulation {
    compare_until(before, after, sample, region, &NEVER).unwrap_or_else(|| unreachable!())
}

/// [`compare`], giving up (`None`) once `stop` is set.
pub fn compare_until(
    before: &Table,
    after: &Table,
    sample: &Sample,
    region: Option<&str>,
    stop: &AtomicBool,
) -> Option<Simulation> {
    let was = place_all(before, sample, region, stop)?;
    let now = place_all(after, sample, region, stop)?;
    // Index in `after` of each node of `before`, matched by id (both lists
    // are in id order): a move is then an integer comparison.
    let mut same = vec![UNROUTED; before.nodes().len()];
    let mut j = 0;
    for (i, n) in before.nodes().iter().enumerate() {
        while j < after.nodes().len() && after.nodes()[j].id() < n.id() {
            j += 1;
        }
        if j < after.nodes().len() && after.nodes()[j].id() == n.id() {
            same[i] = j as u32;
        }
    }
    let listed = matches!(sample, Sample::Uids(_));
    let mut flows: HashMap<(u32, u32), (u64, Vec<u32>)> = HashMap::new();
    let mut moved = 0u64;
    for (pos, (&b, &a)) in was.iter().zip(&now).enumerate() {
        let stays = match b {
            UNROUTED => a == UNROUTED,
            b => same[b as usize] == a && a != UNROUTED,
        };
        if !stays {
            moved += 1;
            let f = flows.entry((b, a)).or_default();
            f.0 += 1;
            if listed {
                f.1.push(pos as u32);
            }
        }
    }
    let id = |t: &Table, i: u32| (i != UNROUTED).then(|| t.nodes()[i as usize].id().to_owned());
    let uids = match sample {
        Sample::Uids(u) => Some(u),
        Sample::Synthetic { .. } => None,
    };
    let mut flows: Vec<Flow> = flows
        .into_iter()
        .map(|((b, a), (users, positions))| Flow {
            from: id(before, b),
            to: id(after, a),
            users,
            uids: uids.map(|u| positions.iter().map(|&p| u[p as usize].clone()).collect()),
        })
        .collect();
    flows.sort_by(|x, y| {
        y.users
            .cmp(&x.users)
            .then_with(|| x.from.cmp(&y.from))
            .then_with(|| x.to.cmp(&y.to))
    });
    let total = was.len() as u64;
    Some(Simulation {
        sample_size: total,
        moved,
        moved_fraction: if total == 0 {
            0.0
        } else {
            round6(moved as f64 / total as f64)
        },
        before: distribution(before, &was),
        after: distribution(after, &now),
        flows,
    })
}

impl Controller {
    /// The table now served.
    pub fn distribution(
        &self,
        sample: &Sample,
        region: Option<&str>,
        stop: &AtomicBool,
    ) -> Option<Distribution> {
        distribute(&self.current().table, sample, region, stop)
    }

    /// Builds the tables before and after `changes`, from one copy of the
    /// current inputs, writing nothing. Each change is checked as its real
    /// endpoint checks it, against the state the changes before it left.
    pub fn simulate(&self, changes: Vec<Change>) -> Result<(Table, Table), PlanError> {
        let mut inputs: Inputs = self.lock_inputs().clone();
        let unhealthy = self.health.unhealthy();
        let full = self.health.full();
        let real_unhealthy = |n: &EffectiveNode| holds_for(&unhealthy, n);
        let is_full = |n: &EffectiveNode| holds_for(&full, n);
        let before = Table::build(
            &compose(
                inputs.parts(),
                &NodeHealth {
                    unhealthy: &real_unhealthy,
                    full: &is_full,
                },
            )
            .input,
        );
        // Health set by the changes, by id; a node deleted and created again
        // starts with no record, as a new incarnation does.
        let mut health: HashMap<String, bool> = HashMap::new();
        // Change numbers above anything cached, as the real writes get.
        let mut seq = inputs.applied.max(
            inputs
                .nodes
                .values()
                .map(|n| n.seq)
                .chain(inputs.strategies.values().map(|s| s.seq))
                .max()
                .unwrap_or(0),
        );
        for (index, change) in changes.into_iter().enumerate() {
            seq += 1;
            apply(&mut inputs, &mut health, seq, change)
                .map_err(|message| PlanError { index, message })?;
        }
        let is_unhealthy = |n: &EffectiveNode| match health.get(n.spec.id.as_str()) {
            Some(&healthy) => !healthy,
            None => real_unhealthy(n),
        };
        // The full set stays as it is: it is re-evaluated from the loads
        // that the nodes report after a change, which no plan can know.
        let after = Table::build(
            &compose(
                inputs.parts(),
                &NodeHealth {
                    unhealthy: &is_unhealthy,
                    full: &is_full,
                },
            )
            .input,
        );
        Ok((before, after))
    }
}

fn control_message(e: ControlError) -> String {
    e.to_string()
}

/// Applies one change to the copy, with the checks of its real endpoint.
/// The error names the field within the change object.
fn apply(
    inputs: &mut Inputs,
    health: &mut HashMap<String, bool>,
    seq: i64,
    change: Change,
) -> Result<(), String> {
    let now = crate::store::now_rfc3339();
    match change {
        Change::PutNode(spec) => {
            spec.validate().map_err(|e| format!("node.{e}"))?;
            inputs
                .check_no_twin(&spec.id)
                .map_err(|e| format!("node.{}", control_message(e)))?;
            let id = spec.id.clone();
            let record = match inputs.nodes.get(&id) {
                Some(old) => NodeRecord {
                    spec,
                    version: old.version + 1,
                    updated_at: now,
                    seq,
                    ..(**old).clone()
                },
                None => NodeRecord {
                    spec,
                    version: 1,
                    created_at: now.clone(),
                    updated_at: now,
                    seq,
                    created_seq: seq,
                },
            };
            inputs.nodes.insert(id.clone(), Arc::new(record));
            inputs.refresh_effective(&id);
        }
        Change::PatchNode { id, patch } => {
            let old = inputs
                .nodes
                .get(&id)
                .ok_or_else(|| format!("id: node {id:?} not found"))?
                .clone();
            let spec = patch(&old.spec).map_err(|e| format!("patch.{e}"))?;
            spec.validate().map_err(|e| format!("patch.{e}"))?;
            let record = NodeRecord {
                spec,
                version: old.version + 1,
                updated_at: now,
                seq,
                ..(*old).clone()
            };
            inputs.nodes.insert(id.clone(), Arc::new(record));
            inputs.refresh_effective(&id);
        }
        Change::DeleteNode(id) => {
            let (refs, total) = inputs.overrides.references(&id, 5);
            if total > 0 {
                let mut named = refs.join(", ");
                if total > refs.len() {
                    named.push_str(&format!(" and {} more", total - refs.len()));
                }
                return Err(format!(
                    "id: node {id} is named by the overrides file ({named}); remove it there first"
                ));
            }
            if inputs.nodes.remove(&id).is_none() {
                return Err(format!("id: node {id:?} not found"));
            }
            health.remove(&id);
            inputs.refresh_effective(&id);
        }
        Change::SetHealth { id, healthy } => {
            if !inputs.effective.contains_key(&id) {
                return Err(format!("id: node {id:?} not found"));
            }
            health.insert(id, healthy);
        }
        Change::PutStrategy { name, kind, params } => {
            if !crate::model::valid_id(&name) {
                return Err(format!(
                    "name: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                    crate::model::truncate(&name)
                ));
            }
            let params = check_strategy(&kind, params).map_err(|e| format!("strategy.{e}"))?;
            let record = match inputs.strategies.get(&name) {
                Some(old) => StrategyRecord {
                    kind,
                    params,
                    version: old.version + 1,
                    updated_at: now,
                    seq,
                    ..(**old).clone()
                },
                None => StrategyRecord {
                    name: name.clone(),
                    kind,
                    params,
                    version: 1,
                    created_at: now.clone(),
                    updated_at: now,
                    seq,
                },
            };
            inputs.strategies.insert(name, Arc::new(record));
        }
        Change::ActivateStrategy(name) => {
            if !inputs.strategies.contains_key(&name) {
                return Err(format!("name: strategy {name:?} not found"));
            }
            inputs.active = name;
            inputs.active_seq = seq;
        }
    }
    Ok(())
}
