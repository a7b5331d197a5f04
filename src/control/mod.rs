//! The control plane: the one path through which every change (admin write,
//! change feed, overrides reload, health transition, startup) reaches routing.
//!
//! **Architecture invariant:** a change updates one input (stored state,
//! overrides or health), then calls [`Controller::rebuild`], which builds a new
//! [`Table`] from all current inputs and swaps it in, together with the view
//! the admin API reads, as one generation. Readers load it lock-free and never
//! see a half-applied change.
//!
//! Stored state is cached per entity with the change number of its last
//! write. A change is applied only when it is newer than what is cached, so
//! the three ways a change arrives (the result of a local write, the change
//! feed, a full reload) can race without ever going backwards.

pub mod plan;
pub mod tasks;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use serde_json::Value;
use tracing::Instrument;
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    config::{Config, Limits, ProbeConfig},
    health::{HealthRecord, HealthRegistry, HealthView, Transition},
    metrics::Metrics,
    model::{NodeRecord, NodeSpec, StrategyRecord},
    overrides::{self, EffectiveNode, Overrides},
    routing::{
        strategy, NodeInput, PreparedNode, PreparedOverrides, StrategyInput, Table, TableInput,
        TableNode,
    },
    store::{
        now_rfc3339, Actor, AuditEntry, FullMark, ReplicaInfo, SavedOverrides, Store, StoreError,
        Stored, Written,
    },
};

/// One generation of everything readers see: the routing table with its
/// per-node metric handles, and the admin view built from the same inputs.
pub struct Snapshot {
    pub table: Table,
    pub routed: Vec<IntCounter>,
    pub view: View,
}

/// What the admin API reads: effective nodes and strategies after overrides.
pub struct View {
    /// In id order.
    pub nodes: Vec<Arc<EffectiveNode>>,
    /// In name order.
    pub strategies: Vec<Arc<StrategyRecord>>,
    /// The strategy in effect.
    pub active_strategy: String,
    /// `db` or `overrides`.
    pub active_strategy_source: &'static str,
}

impl View {
    pub fn node(&self, id: &str) -> Option<&Arc<EffectiveNode>> {
        self.nodes
            .binary_search_by(|n| n.spec.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.nodes[i])
    }

    pub fn strategy(&self, name: &str) -> Option<&Arc<StrategyRecord>> {
        self.strategies
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.strategies[i])
    }
}

/// The state of the overrides file as last loaded.
#[derive(Debug, Clone)]
pub struct OverridesStatus {
    pub path: PathBuf,
    /// xxh3 of the file content in effect (`""` when there is no file).
    pub revision: String,
    pub loaded_at: Option<String>,
    /// The error of the last load attempt, if it failed.
    pub error: Option<String>,
    /// The overrides in effect: the last good file.
    pub effective: Arc<Overrides>,
}

/// This process, as `/admin/cluster` lists it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub addr: String,
    pub started_at: String,
}

/// `GET /admin/cluster`.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub store_kind: &'static str,
    pub store_up: bool,
    pub converged: bool,
    pub replicas: Vec<ReplicaInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("version mismatch: the stored version is {current}")]
    VersionMismatch { current: i64 },
    #[error("the store is unavailable")]
    Unavailable,
    #[error("storage failure")]
    Store(#[source] StoreError),
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for ControlError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ControlError::NotFound(what),
            StoreError::Conflict(msg) => ControlError::Conflict(msg),
            StoreError::VersionMismatch { current } => ControlError::VersionMismatch { current },
            StoreError::Invalid(msg) => ControlError::Invalid(msg),
            StoreError::Unavailable(_) | StoreError::Busy(_) => ControlError::Unavailable,
            other => ControlError::Store(other),
        }
    }
}

/// The cached stored state, per entity, with change numbers.
#[derive(Default, Clone)]
struct Inputs {
    nodes: BTreeMap<String, Arc<NodeRecord>>,
    /// Deleted nodes: id -> change number of the delete. Kept until the
    /// change feed has passed it, so a stale read cannot bring a node back.
    node_tombs: HashMap<String, i64>,
    strategies: BTreeMap<String, Arc<StrategyRecord>>,
    strategy_tombs: HashMap<String, i64>,
    active: String,
    active_seq: i64,
    /// Every change up to this number has been applied.
    applied: i64,
    overrides: Arc<Overrides>,
    /// The file's pins and user regions, indexed once per load.
    prepared_overrides: Arc<PreparedOverrides>,
    /// Nodes as routing and the admin API see them (stored ⊕ overrides),
    /// recomputed only for what changed, each with what routing derives
    /// from it (seeds, answer fragments), so a rebuild costs O(N) pointer
    /// copies, not O(N) serialisations.
    effective: BTreeMap<String, (Arc<EffectiveNode>, Arc<PreparedNode>)>,
    /// Bumped whenever a node (incarnation) joins or leaves `effective`.
    members: u64,
}

impl Inputs {
    fn from_stored(stored: Stored) -> Self {
        let mut inputs = Inputs {
            overrides: Arc::new(Overrides::default()),
            prepared_overrides: Arc::new(PreparedOverrides::empty()),
            ..Inputs::default()
        };
        inputs.install(stored);
        inputs
    }

    fn node_seq(&self, id: &str) -> i64 {
        self.nodes
            .get(id)
            .map(|n| n.seq)
            .or_else(|| self.node_tombs.get(id).copied())
            .unwrap_or(i64::MIN)
    }

    fn strategy_seq(&self, name: &str) -> i64 {
        self.strategies
            .get(name)
            .map(|s| s.seq)
            .or_else(|| self.strategy_tombs.get(name).copied())
            .unwrap_or(i64::MIN)
    }

    /// Applies a node's state as of change `seq`; false when what is cached
    /// is as new or newer.
    fn apply_node(&mut self, id: &str, seq: i64, value: Option<NodeRecord>) -> bool {
        // At or below `applied`, the feed (or a full load) has already
        // brought this change or a newer one, whose tombstone may be gone.
        if seq <= self.applied || seq <= self.node_seq(id) {
            return false;
        }
        match value {
            Some(record) => {
                self.node_tombs.remove(id);
                self.nodes.insert(id.to_owned(), Arc::new(record));
            }
            None => {
                self.nodes.remove(id);
                self.node_tombs.insert(id.to_owned(), seq);
            }
        }
        self.refresh_effective(id);
        true
    }

    fn apply_strategy(&mut self, name: &str, seq: i64, value: Option<StrategyRecord>) -> bool {
        if seq <= self.applied || seq <= self.strategy_seq(name) {
            return false;
        }
        match value {
            Some(record) => {
                self.strategy_tombs.remove(name);
                self.strategies.insert(name.to_owned(), Arc::new(record));
            }
            None => {
                self.strategies.remove(name);
                self.strategy_tombs.insert(name.to_owned(), seq);
            }
        }
        true
    }

    fn apply_active(&mut self, seq: i64, name: String) -> bool {
        if seq <= self.applied || seq <= self.active_seq {
            return false;
        }
        self.active = name;
        self.active_seq = seq;
        true
    }

    /// Installs a full snapshot taken at change `stored.head`. Entities
    /// written locally after that snapshot are kept; a database whose counter
    /// went backwards (replaced or restored) is taken as it is.
    fn install(&mut self, stored: Stored) {
        let head = stored.head;
        if head < self.applied {
            let overrides = self.overrides.clone();
            let prepared_overrides = self.prepared_overrides.clone();
            *self = Inputs {
                overrides,
                prepared_overrides,
                members: self.members + 1,
                ..Inputs::default()
            };
        }
        let present: HashSet<&str> = stored.nodes.iter().map(|n| n.spec.id.as_str()).collect();
        self.nodes
            .retain(|id, n| n.seq > head || present.contains(id.as_str()));
        self.node_tombs.retain(|_, seq| *seq > head);
        for node in stored.nodes {
            let id = node.spec.id.clone();
            if node.seq > self.node_seq(&id) || !self.nodes.contains_key(&id) {
                if self.node_tombs.get(&id).is_some_and(|t| *t > node.seq) {
                    continue;
                }
                self.nodes.insert(id, Arc::new(node));
            }
        }
        let present: HashSet<&str> = stored.strategies.iter().map(|s| s.name.as_str()).collect();
        self.strategies
            .retain(|name, s| s.seq > head || present.contains(name.as_str()));
        self.strategy_tombs.retain(|_, seq| *seq > head);
        for s in stored.strategies {
            let name = s.name.clone();
            if s.seq > self.strategy_seq(&name) || !self.strategies.contains_key(&name) {
                if self.strategy_tombs.get(&name).is_some_and(|t| *t > s.seq) {
                    continue;
                }
                self.strategies.insert(name, Arc::new(s));
            }
        }
        if stored.active_seq >= self.active_seq || self.active.is_empty() {
            self.active = stored.active_strategy;
            self.active_seq = stored.active_seq;
        }
        self.applied = self.applied.max(head);
        self.refresh_all_effective();
    }

    fn refresh_effective(&mut self, id: &str) {
        match self
            .overrides
            .effective_node(id, self.nodes.get(id).map(|n| &**n))
        {
            Some(node) => {
                let prepared = Arc::new(PreparedNode::new(&NodeInput {
                    id: node.spec.id.clone(),
                    region: node.spec.region.clone(),
                    weight: node.spec.weight,
                    state: node.spec.state,
                    healthy: true,
                    external: node.spec.external.clone(),
                    intranet: node.spec.intranet.clone(),
                }));
                let incarnation = node.incarnation();
                let old = self
                    .effective
                    .insert(id.to_owned(), (Arc::new(node), prepared));
                if old.is_none_or(|(n, _)| n.incarnation() != incarnation) {
                    self.members += 1;
                }
            }
            None => {
                if self.effective.remove(id).is_some() {
                    self.members += 1;
                }
            }
        }
    }

    fn refresh_all_effective(&mut self) {
        let ids: Vec<String> = self
            .nodes
            .keys()
            .chain(self.overrides.nodes.keys())
            .cloned()
            .collect();
        self.effective.clear();
        self.members += 1;
        for id in ids {
            self.refresh_effective(&id);
        }
    }

    fn set_overrides(&mut self, overrides: Arc<Overrides>, prepared: Arc<PreparedOverrides>) {
        self.overrides = overrides;
        self.prepared_overrides = prepared;
        self.refresh_all_effective();
    }

    /// The change feed has applied everything up to `head`.
    fn advance(&mut self, head: i64) {
        if head > self.applied {
            self.applied = head;
        }
        let applied = self.applied;
        self.node_tombs.retain(|_, seq| *seq > applied);
        self.strategy_tombs.retain(|_, seq| *seq > applied);
    }

    /// See [`Controller::check_no_twin`].
    fn check_no_twin(&self, id: &str) -> Result<(), ControlError> {
        let seed = crate::routing::hrw::node_seed(id);
        if self.effective.contains_key(id) {
            return Ok(());
        }
        match self
            .effective
            .iter()
            .find(|(_, (_, p))| p.seed.primary == seed)
        {
            Some((other, _)) => Err(ControlError::Invalid(format!(
                "id: {id:?} hashes to the same 32-bit routing seed as node {other:?} \
                 (a one-in-four-billion coincidence); choose another id"
            ))),
            None => Ok(()),
        }
    }

    /// What `Overrides::validate` checks the file against.
    fn stored(&self) -> Stored {
        Stored {
            nodes: self.nodes.values().map(|n| (**n).clone()).collect(),
            strategies: self.strategies.values().map(|s| (**s).clone()).collect(),
            active_strategy: self.active.clone(),
            active_seq: self.active_seq,
            head: self.applied,
        }
    }
}

/// Everything a table and view are built from, read from the inputs at one
/// moment (O(N) pointer copies).
pub(crate) struct Parts {
    nodes: Vec<Arc<EffectiveNode>>,
    prepared: Vec<Arc<PreparedNode>>,
    members: u64,
    strategies: Vec<Arc<StrategyRecord>>,
    active_db: String,
    file: Arc<Overrides>,
    prepared_overrides: Arc<PreparedOverrides>,
}

impl Inputs {
    fn parts(&self) -> Parts {
        let (nodes, prepared): (Vec<_>, Vec<_>) = self.effective.values().cloned().unzip();
        Parts {
            nodes,
            prepared,
            members: self.members,
            strategies: self.strategies.values().cloned().collect(),
            active_db: self.active.clone(),
            file: self.overrides.clone(),
            prepared_overrides: self.prepared_overrides.clone(),
        }
    }
}

/// What a table build reads of each node's health.
pub(crate) struct NodeHealth<'a> {
    pub unhealthy: &'a dyn Fn(&EffectiveNode) -> bool,
    /// In the full set of the `bounded` kind.
    pub full: &'a dyn Fn(&EffectiveNode) -> bool,
}

/// Per node id, the incarnation a health fact holds for.
pub(crate) fn holds_for(map: &HashMap<String, i64>, n: &EffectiveNode) -> bool {
    !map.is_empty() && map.get(n.spec.id.as_str()) == Some(&n.incarnation())
}

/// A table's input, with the view's parts.
pub(crate) struct Composed {
    pub input: TableInput,
    pub nodes: Vec<Arc<EffectiveNode>>,
    pub strategies: Vec<Arc<StrategyRecord>>,
    pub active: String,
    /// `db` or `overrides`.
    pub source: &'static str,
}

/// The one composition of routing's input from stored state, the overrides
/// file and health: `rebuild` serves what it gives, and a simulation builds
/// its tables with it, so a simulated change cannot route differently from
/// the same change made for real.
pub(crate) fn compose(parts: Parts, health: &NodeHealth<'_>) -> Composed {
    let Parts {
        nodes,
        prepared,
        strategies,
        active_db,
        file,
        prepared_overrides,
        ..
    } = parts;
    let has = |name: &str| {
        strategies
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .is_ok()
    };
    let (active, source) = match &file.active_strategy {
        Some(name) if has(name) => (name.clone(), "overrides"),
        _ => (active_db, "db"),
    };
    let strategy = strategies
        .iter()
        .find(|s| s.name == active)
        .map(|s| StrategyInput {
            name: s.name.clone(),
            kind: s.kind.clone(),
            params: s.params.clone(),
        })
        .unwrap_or_else(|| StrategyInput {
            name: active.clone(),
            kind: "hash".into(),
            params: Value::Null,
        });
    let input = TableInput {
        nodes: nodes
            .iter()
            .zip(prepared)
            .map(|(n, node)| TableNode {
                node,
                healthy: !(health.unhealthy)(n),
                full: (health.full)(n),
            })
            .collect(),
        strategy,
        overrides: prepared_overrides,
    };
    Composed {
        input,
        nodes,
        strategies,
        active,
        source,
    }
}

/// Checks a strategy's kind and params as `PUT /admin/strategies` does;
/// the params to store (`null` becomes `{}`). The error names the field.
pub(crate) fn check_strategy(kind: &str, params: Value) -> Result<Value, String> {
    let plugin = strategy::kind(kind).ok_or_else(|| {
        let kinds: Vec<&str> = strategy::BUILTIN.iter().map(|k| k.kind()).collect();
        format!(
            "kind: unknown strategy kind {:?} (installed: {})",
            crate::model::truncate(kind),
            kinds.join(", ")
        )
    })?;
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    // Params are stored, kept in every audit row and read by every
    // replica: keep them small (a strategy then always fits an audit row).
    const PARAMS_MAX: usize = 32 * 1024;
    let size = params.to_string().len();
    if size > PARAMS_MAX {
        return Err(format!(
            "params: at most {PARAMS_MAX} bytes of JSON, got {size}"
        ));
    }
    plugin.validate(&params).map_err(|e| e.to_string())?;
    Ok(params)
}

/// Per-node metric series, kept in step with the node set by `rebuild`.
struct NodeSeries {
    /// The node incarnation the series count for.
    incarnation: i64,
    routed: IntCounter,
    healthy: IntGauge,
    connections: IntGauge,
}

#[derive(Default)]
struct Series {
    /// One per effective node of the last rebuild, in the same (id) order.
    nodes: Vec<(String, NodeSeries)>,
    /// `Inputs::members` when `nodes` was last matched to the node set.
    members: u64,
    /// Nodes unhealthy at the last rebuild: only their gauges, and those of
    /// newly unhealthy ones, need setting while the node set stays the same.
    unhealthy: HashMap<String, i64>,
}

impl Series {
    fn get(&self, id: &str) -> Option<&NodeSeries> {
        self.nodes
            .binary_search_by(|(k, _)| k.as_str().cmp(id))
            .ok()
            .map(|i| &self.nodes[i].1)
    }
}

pub struct Controller {
    store: Arc<dyn Store>,
    snapshot: ArcSwap<Snapshot>,
    inputs: Mutex<Inputs>,
    /// Serialises table builds (on blocking threads) and owns the per-node
    /// metric series, so swaps happen in the order of the inputs they read.
    series: Mutex<Series>,

    /// Coalesces rebuild requests: one build serves every request made
    /// before it read the inputs (a burst of health changes costs a few
    /// builds, not one each).
    rebuild_turn: tokio::sync::Mutex<()>,
    rebuilds_requested: AtomicU64,
    rebuilds_done: AtomicU64,
    /// One overrides reload at a time.
    reload: tokio::sync::Mutex<()>,
    /// Serialises this process's admin writes and overrides reloads.
    write: tokio::sync::Mutex<()>,
    overrides_status: ArcSwap<OverridesStatus>,
    /// The revision of the overrides last saved as this replica's last good
    /// file, and a save still owed to the store (it was down).
    overrides_saved: Mutex<(String, Option<(SavedOverrides, Actor)>)>,
    pub health: HealthRegistry,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub probe: ProbeConfig,
    pub poll_interval: Duration,
    pub full_eval_interval: Duration,
    pub me: Identity,
    ready: AtomicBool,
    store_up: AtomicBool,
    /// Wakes the change feed (after a local write, or a version mismatch
    /// that says the cache is behind).
    feed: tokio::sync::Notify,
    replicas: ArcSwap<Vec<ReplicaInfo>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Controller {
    /// Loads everything and builds the first table through the same path
    /// later changes use. An invalid overrides file does not stop startup:
    /// the last good one stored for this replica is used instead.
    pub async fn start(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        me: Identity,
    ) -> Result<Arc<Controller>, StoreError> {
        // A store that does not answer yet is not fatal: the replica serves
        // (not ready, no routable node) and the change feed loads
        // everything once the store answers.
        let stored = match store.load().await {
            Ok(stored) => Some(stored),
            Err(error) if error.is_unavailable() => {
                tracing::error!(error = %error, "The store is unreachable at start; not ready until it answers");
                None
            }
            Err(error) => return Err(error),
        };
        let loaded = stored.is_some();
        let ttl = Duration::from_secs(config.health.heartbeat_ttl_secs);
        let ctl = Arc::new(Controller {
            snapshot: ArcSwap::from_pointee(empty_snapshot()),
            inputs: Mutex::new(Inputs::from_stored(stored.unwrap_or_default())),
            series: Mutex::new(Series::default()),

            rebuild_turn: tokio::sync::Mutex::new(()),
            reload: tokio::sync::Mutex::new(()),
            rebuilds_requested: AtomicU64::new(0),
            rebuilds_done: AtomicU64::new(0),
            write: tokio::sync::Mutex::new(()),
            overrides_status: ArcSwap::from_pointee(OverridesStatus {
                path: config.overrides_path.clone(),
                revision: String::new(),
                loaded_at: None,
                error: None,
                effective: Arc::new(Overrides::default()),
            }),
            overrides_saved: Mutex::new((String::new(), None)),
            health: HealthRegistry::new(ttl),
            metrics,
            limits: config.limits,
            probe: config.health.probe,
            poll_interval: Duration::from_millis(config.cluster.poll_interval_ms),
            full_eval_interval: Duration::from_millis(config.health.full_eval_interval_ms),
            me,
            ready: AtomicBool::new(false),
            store_up: AtomicBool::new(loaded),
            feed: tokio::sync::Notify::new(),
            replicas: ArcSwap::from_pointee(Vec::new()),
            stop: tokio::sync::watch::channel(false).0,
            store,
        });
        ctl.metrics.store_up.set(i64::from(loaded));
        if loaded {
            ctl.become_ready().await?;
        } else {
            ctl.rebuild();
        }
        Ok(ctl)
    }

    /// After the first full load: health, overrides (validated against what
    /// was loaded), the first table.
    async fn become_ready(self: &Arc<Self>) -> Result<(), StoreError> {
        let health = self.store_call(self.store.health_since(0)).await?;
        self.health.apply(health.records, true);
        self.start_overrides().await;
        self.rebuild_async().await;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The current generation: a lock-free load.
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current generation, to hold across awaits.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn overrides_status(&self) -> Arc<OverridesStatus> {
        self.overrides_status.load_full()
    }

    /// A node's health as the admin API shows it. `full` is shown only
    /// where it counts: a routable node, under a kind that reads it (the
    /// judge clears the stored flag within a period after either changes).
    pub fn health_view(&self, node: &EffectiveNode) -> HealthView {
        let mut view = self
            .health
            .view(&node.spec.id, node.incarnation(), node.created_at());
        if view.full {
            let snap = self.snapshot();
            let table = &snap.table;
            view.full = strategy::kind(&table.strategy().kind).is_some_and(|k| k.uses_load())
                && table
                    .nodes()
                    .binary_search_by(|n| n.id().cmp(&node.spec.id))
                    .is_ok();
        }
        view
    }

    /// Asks the background tasks to stop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Leaves the replica registry (and the leader lock, so another replica
    /// takes over at once); after the background tasks have stopped, so the
    /// registry task cannot report this replica again.
    pub async fn leave(&self) {
        if self.store_up() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.store.leave(&self.me.id)).await;
        }
    }

    /// Completes once `stop` was called.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    fn lock_inputs(&self) -> std::sync::MutexGuard<'_, Inputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- the one rebuild path -----

    /// Builds a table and view from the current inputs and swaps them in.
    pub fn rebuild(&self) {
        let started = std::time::Instant::now();
        let parts = self.lock_inputs().parts();
        let members = parts.members;
        let unhealthy = self.health.unhealthy();
        let full = self.health.full();
        let is_unhealthy = |n: &EffectiveNode| holds_for(&unhealthy, n);
        let Composed {
            input,
            nodes,
            strategies,
            active,
            source,
        } = compose(
            parts,
            &NodeHealth {
                unhealthy: &is_unhealthy,
                full: &|n| holds_for(&full, n),
            },
        );
        let table = Table::build(&input);

        let was_panic = self.snapshot.load().table.panic_mode();
        if table.panic_mode() && !was_panic {
            tracing::warn!(
                nodes = table.nodes().len(),
                "No node is healthy; routing over all active nodes (panic mode)"
            );
        } else if !table.panic_mode() && was_panic {
            tracing::info!("A node is healthy again; panic mode is over");
        }
        let m = &self.metrics;
        m.panic_mode.set(i64::from(table.panic_mode()));
        m.routable_nodes.set(table.stats().nodes_routable as i64);
        m.table_rebuilds.inc();

        // Per-node series: created for new nodes, updated in place, removed
        // for nodes that are gone, so a scrape never sees a live node's
        // series missing and a deleted node leaves none behind. While the
        // node set stays the same (most rebuilds: a weight, a state, a
        // health change) nothing is matched again.
        // Held only for the series update: a heartbeat takes it to set its
        // node's gauge, and must not wait for a whole table build.
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.members != members || series.nodes.len() != nodes.len() {
            self.match_series(&mut series, &nodes, &is_unhealthy);
            series.members = members;
            // Records of nodes re-created under another incarnation are
            // dead; only a change of the node set can make any.
            self.health.retain(|id| {
                nodes
                    .binary_search_by(|n| n.spec.id.as_str().cmp(id))
                    .ok()
                    .map(|i| nodes[i].incarnation())
            });
        } else {
            let changed: HashSet<&str> = series
                .unhealthy
                .keys()
                .chain(unhealthy.keys())
                .map(String::as_str)
                .collect();
            for id in changed {
                if let Ok(i) = nodes.binary_search_by(|n| n.spec.id.as_str().cmp(id)) {
                    series.nodes[i]
                        .1
                        .healthy
                        .set(i64::from(!is_unhealthy(&nodes[i])));
                }
            }
        }
        let routed = table
            .sources()
            .iter()
            .map(|&i| series.nodes[i as usize].1.routed.clone())
            .collect();
        series.unhealthy = unhealthy;

        m.table_build_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(revision = table.revision(), "Routing table rebuilt");
        self.snapshot.store(Arc::new(Snapshot {
            table,
            routed,
            view: View {
                nodes,
                strategies,
                active_strategy: active,
                active_strategy_source: source,
            },
        }));
    }

    /// Matches the per-node series to a changed node set: one merge of two
    /// id-ordered lists.
    fn match_series(
        &self,
        series: &mut Series,
        nodes: &[Arc<EffectiveNode>],
        is_unhealthy: &dyn Fn(&EffectiveNode) -> bool,
    ) {
        let m = &self.metrics;
        let drop_series = |id: &str| {
            m.users_routed.remove_label_values(&[id]).ok();
            m.node_healthy.remove_label_values(&[id]).ok();
            m.node_connections.remove_label_values(&[id]).ok();
        };
        let mut old = std::mem::take(&mut series.nodes).into_iter().peekable();
        let mut kept: Vec<(String, NodeSeries)> = Vec::with_capacity(nodes.len());
        for n in nodes {
            let id = n.spec.id.as_str();
            while let Some((gone, _)) = old.next_if(|(k, _)| k.as_str() < id) {
                drop_series(&gone);
            }
            // A node deleted and created again (even if this process never
            // saw it gone) starts with fresh series.
            let entry = match old.next_if(|(k, _)| k.as_str() == id) {
                Some(e) if e.1.incarnation == n.incarnation() => Some(e),
                Some((stale, _)) => {
                    drop_series(&stale);
                    None
                }
                None => None,
            };
            let entry = entry.unwrap_or_else(|| {
                let s = NodeSeries {
                    incarnation: n.incarnation(),
                    routed: m.users_routed.with_label_values(&[id]),
                    healthy: m.node_healthy.with_label_values(&[id]),
                    connections: m.node_connections.with_label_values(&[id]),
                };
                if let Some(c) = self.health_view(n).connections {
                    s.connections.set(i64::try_from(c).unwrap_or(i64::MAX));
                }
                (id.to_owned(), s)
            });
            entry.1.healthy.set(i64::from(!is_unhealthy(n)));
            kept.push(entry);
        }
        for (gone, _) in old {
            drop_series(&gone);
        }
        series.nodes = kept;
    }

    /// `rebuild` on a blocking thread (a build over many nodes must not
    /// stall the async workers that serve routes), after the inputs this
    /// caller changed. Requests that arrive while a build waits to start
    /// share it.
    pub async fn rebuild_async(self: &Arc<Self>) {
        let mine = self.rebuilds_requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.rebuild_turn.lock().await;
        if self.rebuilds_done.load(Ordering::SeqCst) >= mine {
            return;
        }
        // Every request counted so far changed its inputs before it was
        // counted, so the build below (which reads the inputs after this
        // load) serves them all.
        let upto = self.rebuilds_requested.load(Ordering::SeqCst);
        let ctl = self.clone();
        match tokio::task::spawn_blocking(move || ctl.rebuild()).await {
            Ok(()) => {
                self.rebuilds_done.fetch_max(upto, Ordering::SeqCst);
            }
            Err(error) => tracing::error!(error = %error, "Routing table rebuild failed"),
        }
    }

    // ----- store access -----

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Acquire)
    }

    /// Records whether the store answers; true when that changed to up.
    pub fn mark_store(&self, up: bool) -> bool {
        let was = self.store_up.swap(up, Ordering::AcqRel);
        if was != up {
            self.metrics.store_up.set(i64::from(up));
            if up {
                tracing::info!(store = self.store.kind(), "The store is reachable again");
            } else {
                tracing::error!(
                    store = self.store.kind(),
                    "The store is unreachable; routing continues on the last table, writes answer 503"
                );
            }
        }
        up && !was
    }

    /// Runs one store operation within the store's time bound and keeps the
    /// store's availability up to date (a connection failure or a timeout
    /// marks it down; a lock or statement timeout fails only this call).
    pub async fn store_call<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.store.op_timeout(), op).await {
            Err(_) => {
                self.mark_store(false);
                Err(StoreError::Unavailable(
                    "the store did not answer in time".into(),
                ))
            }
            Ok(Err(e)) if e.is_unavailable() => {
                self.mark_store(false);
                Err(e)
            }
            Ok(result) => {
                if self.mark_store(true) {
                    self.feed.notify_one();
                }
                result
            }
        }
    }

    /// An admin write: fails fast while the store is down; a refusal that
    /// may come from a stale cache (version, existence) wakes the feed.
    async fn write_call<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ControlError> {
        if !self.store_up() {
            return Err(ControlError::Unavailable);
        }
        self.store_call(op).await.map_err(|e| {
            if matches!(
                e,
                StoreError::VersionMismatch { .. }
                    | StoreError::NotFound(_)
                    | StoreError::Conflict(_)
            ) {
                self.feed.notify_one();
            }
            e.into()
        })
    }

    /// Runs a write to completion on its own task: once it has started, a
    /// client that goes away (or a shutdown cut-off) cannot stop it between
    /// its commit and its rebuild.
    async fn detached<T, F>(
        self: &Arc<Self>,
        f: impl FnOnce(Arc<Controller>) -> F,
    ) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ControlError>> + Send + 'static,
    {
        // The task keeps the request's span: its log lines carry the request id.
        let task = f(self.clone()).instrument(tracing::Span::current());
        // The answer never waits longer than the store may take (plus the
        // queue of this replica's writes): past it, 503. The write itself
        // goes on and, if it commits, reaches routing.
        let deadline = self.store.op_timeout() + Duration::from_secs(1);
        match tokio::time::timeout(deadline, tokio::spawn(task)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                tracing::error!(error = %error, "A write task failed");
                Err(ControlError::Internal)
            }
            Err(_) => {
                tracing::warn!(
                    "A write did not finish in time; answering 503 (it may still apply)"
                );
                Err(ControlError::Unavailable)
            }
        }
    }

    /// Applies a committed node write to the cache, rebuilds, and wakes the
    /// feed (which fetches anything that committed in between).
    async fn applied_node(self: &Arc<Self>, id: &str, seq: i64, value: Option<NodeRecord>) {
        self.lock_inputs().apply_node(id, seq, value);
        self.rebuild_async().await;
        self.feed.notify_one();
    }

    async fn applied_strategy(
        self: &Arc<Self>,
        name: &str,
        seq: i64,
        value: Option<StrategyRecord>,
    ) {
        self.lock_inputs().apply_strategy(name, seq, value);
        self.rebuild_async().await;
        self.feed.notify_one();
    }

    // ----- the change feed -----

    /// Fetches and applies what changed since the last applied change.
    pub async fn catch_up(self: &Arc<Self>) -> Result<(), StoreError> {
        let after = self.lock_inputs().applied;
        let changes = self.store_call(self.store.changes_since(after)).await?;
        let mut changed = false;
        let mut gone: Vec<String> = Vec::new();
        {
            let mut inputs = self.lock_inputs();
            if let Some(full) = changes.full {
                inputs.install(full);
                changed = true;
            }
            for c in changes.nodes {
                if c.value.is_none() {
                    gone.push(c.key.clone());
                }
                changed |= inputs.apply_node(&c.key, c.seq, c.value);
            }
            for c in changes.strategies {
                if c.value.is_none() {
                    gone.push(format!("strategy:{}", c.key));
                }
                changed |= inputs.apply_strategy(&c.key, c.seq, c.value);
            }
            if let Some(c) = changes.active_strategy {
                changed |= inputs.apply_active(c.seq, c.value.unwrap_or_default());
            }
            inputs.advance(changes.head);
        }
        if changed {
            self.rebuild_async().await;
        }
        if !gone.is_empty() {
            self.flag_dangling_overrides(&gone);
        }
        Ok(())
    }

    /// Another replica deleted something this replica's overrides name (it
    /// could: this replica was not seen for a while). Routing is safe (a node
    /// without an address takes no users, a pin to it falls back to the
    /// strategy), but the file no longer validates: say so in its status.
    fn flag_dangling_overrides(&self, gone: &[String]) {
        let status = self.overrides_status();
        if status.error.is_some() {
            return;
        }
        let refs = status.effective.referenced_nodes();
        let named = gone.iter().find(|g| match g.strip_prefix("strategy:") {
            Some(name) => status.effective.active_strategy.as_deref() == Some(name),
            None => refs.binary_search(g).is_ok(),
        });
        let Some(named) = named else { return };
        let what = match named.strip_prefix("strategy:") {
            Some(name) => format!("active_strategy: strategy {name:?}"),
            None => format!("node {named:?}"),
        };
        let error =
            format!("{what} named by the file was deleted through another replica; fix the file");
        tracing::error!(error = %error, "The overrides in effect name something deleted");
        let mut next = (*status).clone();
        next.error = Some(error);
        self.overrides_status.store(Arc::new(next));
    }

    /// Reloads everything (after a reconnect: notifications may be lost).
    pub async fn resync(self: &Arc<Self>) -> Result<(), StoreError> {
        let stored = self.store_call(self.store.load()).await?;
        self.lock_inputs().install(stored);
        if self.is_ready() {
            self.rebuild_async().await;
        } else {
            self.become_ready().await?;
            tracing::info!("The store answers; ready");
        }
        Ok(())
    }

    /// The change number every earlier change has been applied up to.
    pub fn applied(&self) -> i64 {
        self.lock_inputs().applied
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn feed_signal(&self) -> &tokio::sync::Notify {
        &self.feed
    }

    // ----- health -----

    /// Takes in health records; logs and rebuilds on status changes.
    pub async fn apply_health(self: &Arc<Self>, records: Vec<HealthRecord>, complete: bool) {
        let connections: Vec<(String, Option<u64>)> = records
            .iter()
            .map(|r| (r.node.clone(), r.connections))
            .collect();
        let (transitions, full_changed) = self.health.apply(records, complete);
        {
            let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            for (node, c) in connections {
                if let (Some(s), Some(c)) = (series.get(&node), c) {
                    s.connections.set(i64::try_from(c).unwrap_or(i64::MAX));
                }
            }
        }
        self.on_transitions(&transitions).await;
        if full_changed && transitions.is_empty() {
            self.rebuild_async().await;
        }
    }

    async fn on_transitions(self: &Arc<Self>, transitions: &[Transition]) {
        if transitions.is_empty() {
            return;
        }
        for t in transitions {
            self.metrics
                .health_transitions
                .with_label_values(&[t.to.as_str()])
                .inc();
            tracing::warn!(
                node = %t.node, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason,
                "Node health changed"
            );
        }
        self.rebuild_async().await;
    }

    /// The changes of the full set that the served table's kind asks for,
    /// from the connections on record: a node whose flag should differ
    /// from its record's. Nodes that are not routable are not full; with a
    /// kind that does not use load, nobody is.
    pub fn evaluate_full(&self) -> Vec<FullMark> {
        let snap = self.current();
        let kind = strategy::kind(&snap.table.strategy().kind).filter(|k| k.uses_load());
        if kind.is_none() && !self.health.any_full() {
            return Vec::new();
        }
        let loads = self.health.loads();
        let incarnation = |id: &str| snap.view.node(id).map(|n| n.incarnation());
        // (connections, full) on record for the node as it exists now.
        let on_record = |id: &str| {
            loads
                .get(id)
                .filter(|(inc, _, _)| Some(*inc) == incarnation(id))
                .map(|&(_, c, f)| (c.unwrap_or(0), f))
        };
        let table = &snap.table;
        let mut wanted: HashMap<&str, bool> = HashMap::new();
        if let Some(kind) = kind {
            let nodes = table.nodes();
            let input: Vec<strategy::Load> = nodes
                .iter()
                .map(|n| {
                    let (connections, full) = on_record(n.id()).unwrap_or((0, false));
                    strategy::Load {
                        weight: n.weight,
                        connections,
                        full,
                    }
                })
                .collect();
            if let Some(full) = kind.evaluate_full(&table.strategy().params, &input) {
                for (n, f) in nodes.iter().zip(full) {
                    if f {
                        wanted.insert(n.id(), true);
                    }
                }
            }
        }
        let mut marks: Vec<FullMark> = loads
            .iter()
            .filter_map(|(id, &(inc, _, full))| {
                let want = wanted.get(id.as_str()).copied().unwrap_or(false);
                (incarnation(id) == Some(inc) && full != want).then(|| FullMark {
                    node: id.clone(),
                    incarnation: inc,
                    full: want,
                })
            })
            .collect();
        // Rows in one order for every writer.
        marks.sort_by(|a, b| a.node.cmp(&b.node));
        marks
    }

    /// Records a heartbeat (shared with every replica through the store).
    pub async fn heartbeat(
        self: &Arc<Self>,
        id: &str,
        connections: u64,
    ) -> Result<(), ControlError> {
        if !self.store_up() {
            return Err(ControlError::Unavailable);
        }
        // A node missing here may have just been created on another replica:
        // the store decides.
        let file_only = self
            .snapshot()
            .view
            .node(id)
            .is_some_and(|n| n.stored.is_none());
        let (record, _) = self
            .store_call(self.store.heartbeat(id, file_only, connections))
            .await?;
        // Applied on a task of its own: a client that goes away now must not
        // leave the registry updated and the table not rebuilt.
        let ctl = self.clone();
        let _ = tokio::spawn(async move { ctl.apply_health(vec![record], false).await }).await;
        Ok(())
    }

    // ----- nodes -----

    /// A stored record as the API shows it: with the current overrides applied.
    /// Built from the record itself, so an answer reflects its own write even
    /// when another write lands right after it.
    pub fn effective(&self, record: NodeRecord) -> EffectiveNode {
        let overrides = self.lock_inputs().overrides.clone();
        let id = record.spec.id.clone();
        overrides
            .effective_node(&id, Some(&record))
            .unwrap_or(EffectiveNode {
                spec: record.spec.clone(),
                source: overrides::Source::Db,
                stored: Some(record),
            })
    }

    /// A new node whose 32-bit routing seed equals an existing node's is
    /// refused: the two would have to share draws, and one of them coming or
    /// going would move the other's users (about N / 2^32 per new id).
    fn check_no_twin(&self, id: &str) -> Result<(), ControlError> {
        self.lock_inputs().check_no_twin(id)
    }

    pub async fn create_node(
        self: &Arc<Self>,
        spec: NodeSpec,
        actor: &Actor,
    ) -> Result<NodeRecord, ControlError> {
        spec.validate().map_err(ControlError::Invalid)?;
        self.check_no_twin(&spec.id)?;
        let actor = actor.clone();
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            let w = ctl.write_call(ctl.store.create_node(&spec, &actor)).await?;
            ctl.applied_node(&spec.id, w.seq, Some(w.value.clone()))
                .await;
            tracing::info!(node = %spec.id, version = w.value.version, "Node created");
            Ok(w.value)
        })
        .await
    }

    pub async fn put_node(
        self: &Arc<Self>,
        spec: NodeSpec,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(NodeRecord, bool), ControlError> {
        spec.validate().map_err(ControlError::Invalid)?;
        self.check_no_twin(&spec.id)?;
        let actor = actor.clone();
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            let (w, created) = ctl
                .write_call(ctl.store.put_node(&spec, expected, &actor))
                .await?;
            ctl.applied_node(&spec.id, w.seq, Some(w.value.clone()))
                .await;
            tracing::info!(node = %spec.id, version = w.value.version, created, "Node stored");
            Ok((w.value, created))
        })
        .await
    }

    /// Read-modify-write of a stored node, inside the store's transaction:
    /// the version check and the patch see the same row.
    pub async fn patch_node(
        self: &Arc<Self>,
        id: &str,
        expected: Option<i64>,
        patch: impl Fn(&NodeSpec) -> Result<NodeSpec, String> + Send + Sync + 'static,
        actor: &Actor,
    ) -> Result<NodeRecord, ControlError> {
        let (id, actor) = (id.to_owned(), actor.clone());
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            let checked = move |spec: &NodeSpec| {
                let out = patch(spec)?;
                out.validate()?;
                Ok(out)
            };
            let w: Written<NodeRecord> = ctl
                .write_call(ctl.store.patch_node(&id, expected, &checked, &actor))
                .await?;
            ctl.applied_node(&id, w.seq, Some(w.value.clone())).await;
            tracing::info!(node = %id, version = w.value.version, "Node updated");
            Ok(w.value)
        })
        .await
    }

    /// Deletes a stored node. Refused (409) while this replica's overrides
    /// file (or, with several replicas, another live replica's) names it:
    /// the file would otherwise route users to a node with no address, or
    /// fail validation at the next start.
    pub async fn delete_node(
        self: &Arc<Self>,
        id: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(), ControlError> {
        let (id, actor) = (id.to_owned(), actor.clone());
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            // A node can carry a million pins: scan them outside the lock,
            // name a few, count the rest.
            let overrides = ctl.lock_inputs().overrides.clone();
            let (refs, total) = overrides.references(&id, 5);
            if total > 0 {
                let mut named = refs.join(", ");
                if total > refs.len() {
                    named.push_str(&format!(" and {} more", total - refs.len()));
                }
                return Err(ControlError::Conflict(format!(
                    "node {id} is named by the overrides file ({named}); remove it there first"
                )));
            }
            let w = ctl
                .write_call(ctl.store.delete_node(&id, expected, &ctl.me.id, &actor))
                .await?;
            ctl.health.forget(&id);
            ctl.applied_node(&id, w.seq, None).await;
            tracing::info!(node = %id, "Node deleted");
            Ok(())
        })
        .await
    }

    // ----- strategies -----

    pub async fn put_strategy(
        self: &Arc<Self>,
        name: &str,
        kind: &str,
        params: Value,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(StrategyRecord, bool), ControlError> {
        if !crate::model::valid_id(name) {
            return Err(ControlError::Invalid(format!(
                "name: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                crate::model::truncate(name)
            )));
        }
        let params = check_strategy(kind, params).map_err(ControlError::Invalid)?;
        let (name, kind, actor) = (name.to_owned(), kind.to_owned(), actor.clone());
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            let (w, created) = ctl
                .write_call(ctl.store.put_strategy(&name, &kind, &params, expected, &actor))
                .await?;
            ctl.applied_strategy(&name, w.seq, Some(w.value.clone()))
                .await;
            tracing::info!(strategy = %name, kind = %kind, version = w.value.version, "Strategy stored");
            Ok((w.value, created))
        })
        .await
    }

    pub async fn delete_strategy(
        self: &Arc<Self>,
        name: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(), ControlError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            if ctl.snapshot().view.active_strategy == name {
                return Err(ControlError::Conflict(format!(
                    "strategy {name} is the active strategy; switch to another one first"
                )));
            }
            let w = ctl
                .write_call(ctl.store.delete_strategy(&name, expected, &actor))
                .await?;
            ctl.applied_strategy(&name, w.seq, None).await;
            tracing::info!(strategy = %name, "Strategy deleted");
            Ok(())
        })
        .await
    }

    pub async fn set_active_strategy(
        self: &Arc<Self>,
        name: &str,
        actor: &Actor,
    ) -> Result<(), ControlError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        self.detached(move |ctl| async move {
            let _w = ctl.write.lock().await;
            let w = ctl
                .write_call(ctl.store.set_active_strategy(&name, &actor))
                .await?;
            ctl.lock_inputs().apply_active(w.seq, w.value);
            ctl.rebuild_async().await;
            ctl.feed.notify_one();
            tracing::info!(strategy = %name, "Active strategy switched");
            Ok(())
        })
        .await
    }

    pub async fn audit_page(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        if !self.store_up() {
            return Err(ControlError::Unavailable);
        }
        Ok(self
            .store_call(self.store.audit_page(limit, before))
            .await?)
    }

    // ----- cluster -----

    /// Records the replicas registry as last read.
    pub(crate) fn set_replicas(&self, replicas: Vec<ReplicaInfo>) {
        self.replicas.store(Arc::new(replicas));
    }

    /// This replica as it reports itself.
    pub fn me_info(&self) -> ReplicaInfo {
        ReplicaInfo {
            id: self.me.id.clone(),
            addr: self.me.addr.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            revision: self.snapshot().table.revision().to_owned(),
            started_at: self.me.started_at.clone(),
            last_seen: now_rfc3339(),
        }
    }

    pub fn cluster(&self) -> ClusterView {
        let me = self.me_info();
        let mut replicas: Vec<ReplicaInfo> = self
            .replicas
            .load()
            .iter()
            .filter(|r| r.id != me.id)
            .cloned()
            .collect();
        replicas.push(me);
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        // During an outage the others' revisions are unknown: not converged.
        let converged =
            self.store_up() && replicas.windows(2).all(|w| w[0].revision == w[1].revision);
        ClusterView {
            store_kind: self.store.kind(),
            store_up: self.store_up(),
            converged,
            replicas,
        }
    }

    // ----- overrides -----

    /// The first load at start: an invalid file falls back to the last good
    /// overrides stored for this replica, and the error is shown.
    async fn start_overrides(self: &Arc<Self>) {
        let saved = match self
            .store_call(self.store.load_overrides(self.overrides_key()))
            .await
        {
            Ok(saved) => saved,
            Err(error) => {
                tracing::warn!(error = %error, "Cannot read the last good overrides");
                None
            }
        };
        if let Some(saved) = &saved {
            self.overrides_saved_lock().0 = saved.revision.clone();
        }
        let startup = Actor {
            request_id: "startup".into(),
            kind: crate::store::ActorKind::System,
        };
        let Err(error) = self.reload_inner(&startup, true).await else {
            return;
        };
        let Some(saved) = saved else {
            tracing::error!(error = %error, "Overrides file is invalid and no earlier good one is stored; starting without overrides");
            return;
        };
        match overrides::parse(&saved.content) {
            Ok(parsed) => {
                let prepared = Arc::new(PreparedOverrides::new(&parsed.pins, &parsed.user_regions));
                let parsed = Arc::new(parsed);
                self.lock_inputs().set_overrides(parsed.clone(), prepared);
                let mut status = (*self.overrides_status()).clone();
                status.revision = saved.revision.clone();
                status.loaded_at = Some(saved.loaded_at.clone());
                status.effective = parsed;
                self.overrides_status.store(Arc::new(status));
                tracing::warn!(
                    revision = %saved.revision, loaded_at = %saved.loaded_at,
                    "Overrides file is invalid; using the last good overrides stored for this replica"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "The stored last good overrides do not parse; starting without overrides");
            }
        }
    }

    /// Whose last good overrides are kept: this replica's (PostgreSQL:
    /// set `cluster.replica_id` for it to survive a new host name or port);
    /// with SQLite there is one process per file, whatever its name.
    fn overrides_key(&self) -> &str {
        if self.store.kind() == "sqlite" {
            "local"
        } else {
            &self.me.id
        }
    }

    fn overrides_saved_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (String, Option<(SavedOverrides, Actor)>)> {
        self.overrides_saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reads, parses and validates the overrides file; applies it when valid,
    /// keeps the last good overrides and records the error when not. A missing
    /// file means no overrides. Runs to completion even if the caller goes away.
    pub async fn reload_overrides(self: &Arc<Self>, actor: &Actor) -> Result<(), String> {
        let actor = actor.clone();
        let ctl = self.clone();
        let task = async move { ctl.reload_inner(&actor, false).await };
        match tokio::spawn(task.instrument(tracing::Span::current())).await {
            Ok(result) => result,
            Err(_) => Err("internal error".into()),
        }
    }

    async fn reload_inner(self: &Arc<Self>, actor: &Actor, startup: bool) -> Result<(), String> {
        // Reloads one at a time; reading and parsing happen before the write
        // lock, so a slow file never holds up admin writes.
        let _reload = self.reload.lock().await;
        let path = self.overrides_status().path.clone();
        let max = self.limits.max_overrides_bytes;
        // Reading (the path may lead to anything) and parsing (a large file
        // takes a while) run on a blocking thread, never on an async worker.
        let read = tokio::task::spawn_blocking(move || {
            let bytes = overrides::file::read(&path, max).map_err(|e| e.to_string())?;
            let Some(bytes) = bytes else {
                return Ok((Overrides::default(), String::new(), String::new()));
            };
            let revision = format!("{:016x}", xxh3_64(&bytes));
            let text = String::from_utf8(bytes).map_err(|_| "file is not valid UTF-8")?;
            let parsed = overrides::parse(&text)?;
            Ok::<_, String>((parsed, revision, text))
        })
        .await
        .map_err(|_| "internal error".to_string())?;
        let (parsed, revision, content) = match read {
            Ok(read) => read,
            Err(e) => return self.reload_failed(e),
        };
        let path = self.overrides_status().path.clone();
        let _w = self.write.lock().await;
        let stored = self.lock_inputs().stored();
        let max_uid = self.limits.max_uid_bytes;
        // Validating and indexing many pins take a while: not on a worker.
        let checked = tokio::task::spawn_blocking(move || {
            parsed.validate(Some(&stored), max_uid)?;
            let prepared = PreparedOverrides::new(&parsed.pins, &parsed.user_regions);
            let refs = parsed.referenced_nodes();
            let ids: HashSet<&str> = stored.nodes.iter().map(|n| n.spec.id.as_str()).collect();
            let stored_refs = refs
                .iter()
                .filter(|r| ids.contains(r.as_str()))
                .cloned()
                .collect();
            Ok::<_, String>((parsed, prepared, refs, stored_refs))
        })
        .await
        .map_err(|_| "internal error".to_string())?;
        let (parsed, prepared, refs, stored_refs) = match checked {
            Ok(checked) => checked,
            Err(e) => return self.reload_failed(e),
        };
        let previous = self.overrides_status();
        let unchanged = previous.revision == revision && !startup;
        let now = now_rfc3339();
        // Keep it as this replica's last good file (and audit the reload) in
        // one transaction, before it takes effect. A store that is down
        // delays the save, never the reload.
        let saved = SavedOverrides {
            content,
            revision: revision.clone(),
            refs,
            stored_refs,
            active_strategy: parsed.active_strategy.clone(),
            loaded_at: now.clone(),
        };
        // At start the save runs even for an unchanged file: it checks again
        // that what the file names exists, and marks this replica's
        // references as fresh (deletes elsewhere respect them at once).
        if let Err(e) = self.save_overrides(saved, actor, startup).await {
            return self.reload_failed(e);
        }
        let parsed = Arc::new(parsed);
        self.lock_inputs()
            .set_overrides(parsed.clone(), Arc::new(prepared));
        self.rebuild_async().await;
        self.overrides_status.store(Arc::new(OverridesStatus {
            path: path.clone(),
            revision: revision.clone(),
            loaded_at: Some(now),
            error: None,
            effective: parsed,
        }));
        let m = &self.metrics;
        m.overrides_reloads.with_label_values(&["ok"]).inc();
        m.overrides_last_success.set(chrono::Utc::now().timestamp());
        m.overrides_revision.reset();
        m.overrides_revision.with_label_values(&[&revision]).set(1);
        if revision.is_empty() {
            tracing::warn!(path = %path.display(), "Overrides file is absent; no overrides in effect");
        } else if !unchanged || previous.error.is_some() {
            tracing::info!(path = %path.display(), revision = %revision, "Overrides loaded");
        }
        Ok(())
    }

    /// Saves the last good overrides unless already saved; owes the save
    /// when the store is down (the change feed retries it).
    /// Keeps `saved` as this replica's last good overrides. `Err` when the
    /// store refuses them (a node or strategy they name was deleted by another
    /// replica since they were validated); any other failure is retried later.
    async fn save_overrides(
        self: &Arc<Self>,
        saved: SavedOverrides,
        actor: &Actor,
        always: bool,
    ) -> Result<(), String> {
        let previous = {
            let guard = self.overrides_saved_lock();
            if !always && guard.0 == saved.revision && guard.1.is_none() {
                return Ok(());
            }
            guard.0.clone()
        };
        let result = if self.store_up() {
            self.store_call(self.store.save_overrides(
                self.overrides_key(),
                &saved,
                Some(&previous),
                actor,
            ))
            .await
        } else {
            Err(StoreError::Unavailable("down".into()))
        };
        let mut guard = self.overrides_saved_lock();
        match result {
            Ok(()) => *guard = (saved.revision, None),
            Err(StoreError::Conflict(msg)) => return Err(msg),
            Err(error) => {
                tracing::warn!(error = %error, "Cannot save the overrides as the last good ones yet; will retry");
                guard.1 = Some((saved, actor.clone()));
            }
        }
        Ok(())
    }

    /// Retries a save of the last good overrides that the store missed.
    pub async fn retry_overrides_save(self: &Arc<Self>) {
        let conflict = {
            // Under the write lock, as reloads save: a pending save taken
            // here is the newest, never one a later reload replaced.
            let _w = self.write.lock().await;
            let pending = self.overrides_saved_lock().1.take();
            match pending {
                Some((saved, actor)) => self.save_overrides(saved, &actor, false).await.err(),
                None => None,
            }
        };
        if let Some(e) = conflict {
            // Applied while the store was down, and something it names was
            // deleted meanwhile: validate the file again, so its status shows
            // the error (the nodes it names leave routing as the change feed
            // brings their deletes).
            tracing::warn!(error = %e, "The overrides in effect name something deleted meanwhile; reloading them");
            let _ = self.reload_overrides(&Actor::system("store-retry")).await;
        }
    }

    fn reload_failed(&self, error: String) -> Result<(), String> {
        let previous = self.overrides_status();
        tracing::error!(
            path = %previous.path.display(), error = %error,
            "Overrides file is invalid; keeping the last good overrides"
        );
        self.metrics
            .overrides_reloads
            .with_label_values(&["error"])
            .inc();
        let mut status = (*previous).clone();
        status.error = Some(error.clone());
        self.overrides_status.store(Arc::new(status));
        Err(error)
    }
}

fn empty_snapshot() -> Snapshot {
    Snapshot {
        table: Table::build(&TableInput {
            nodes: vec![],
            strategy: StrategyInput {
                name: "default".into(),
                kind: "hash".into(),
                params: Value::Null,
            },
            overrides: Arc::new(PreparedOverrides::empty()),
        }),
        routed: vec![],
        view: View {
            nodes: vec![],
            strategies: vec![],
            active_strategy: String::new(),
            active_strategy_source: "db",
        },
    }
}
