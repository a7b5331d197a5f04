//! The control plane: the one path through which every change (admin write,
//! overrides reload, health transition, startup) reaches routing.
//!
//! **Architecture invariant:** a change updates one input (stored state,
//! overrides or health), then calls [`Controller::rebuild`], which builds a new
//! [`Table`] from all current inputs and swaps it in. Readers load the current
//! table lock-free and never see a half-applied change.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    config::{Config, Limits, ProbeConfig},
    health::{HealthRegistry, Transition},
    metrics::Metrics,
    model::{NodeRecord, NodeSpec, StrategyRecord},
    overrides::{self, EffectiveNode, Overrides},
    routing::{strategy, NodeInput, StrategyInput, Table, TableInput},
    store::{now_rfc3339, Actor, AuditEntry, Store, StoreError, Stored},
};

/// A routing table plus the per-node metric handles aligned with its nodes.
pub struct Snapshot {
    pub table: Table,
    pub routed: Vec<IntCounter>,
}

/// What the admin API reads: effective nodes and strategies after overrides.
pub struct View {
    pub nodes: Vec<EffectiveNode>,
    pub strategies: Vec<StrategyRecord>,
    /// The strategy in effect.
    pub active_strategy: String,
    /// `db` or `overrides`.
    pub active_strategy_source: &'static str,
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
    #[error("storage failure")]
    Store(#[source] StoreError),
}

impl From<StoreError> for ControlError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ControlError::NotFound(what),
            StoreError::Conflict(msg) => ControlError::Conflict(msg),
            StoreError::VersionMismatch { current } => ControlError::VersionMismatch { current },
            other => ControlError::Store(other),
        }
    }
}

struct Inputs {
    stored: Arc<Stored>,
    overrides: Arc<Overrides>,
}

pub struct Controller {
    store: Arc<dyn Store>,
    snapshot: ArcSwap<Snapshot>,
    view: ArcSwap<View>,
    inputs: Mutex<Inputs>,
    /// Serialises writes so each store write is followed by its own rebuild.
    write: tokio::sync::Mutex<()>,
    overrides_status: ArcSwap<OverridesStatus>,
    pub health: HealthRegistry,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub probe: ProbeConfig,
    ready: AtomicBool,
    /// Nodes with an `imroute_node_healthy` series.
    labelled_nodes: Mutex<HashSet<String>>,
}

impl Controller {
    /// Loads everything and builds the first table through the same path
    /// later changes use. An invalid overrides file does not stop startup.
    pub async fn start(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Controller>, StoreError> {
        let stored = Arc::new(store.load().await?);
        let empty = Arc::new(Overrides::default());
        let ctl = Arc::new(Controller {
            store,
            snapshot: ArcSwap::from_pointee(Snapshot {
                table: Table::build(&TableInput {
                    nodes: vec![],
                    strategy: StrategyInput {
                        name: "default".into(),
                        kind: "hash".into(),
                        params: Value::Null,
                    },
                    pins: Default::default(),
                    user_regions: Default::default(),
                }),
                routed: vec![],
            }),
            view: ArcSwap::from_pointee(View {
                nodes: vec![],
                strategies: vec![],
                active_strategy: String::new(),
                active_strategy_source: "db",
            }),
            inputs: Mutex::new(Inputs {
                stored,
                overrides: empty.clone(),
            }),
            write: tokio::sync::Mutex::new(()),
            overrides_status: ArcSwap::from_pointee(OverridesStatus {
                path: config.overrides_path.clone(),
                revision: String::new(),
                loaded_at: None,
                error: None,
                effective: empty,
            }),
            health: HealthRegistry::new(std::time::Duration::from_secs(
                config.health.heartbeat_ttl_secs,
            )),
            metrics,
            limits: config.limits,
            probe: config.health.probe,
            ready: AtomicBool::new(false),
            labelled_nodes: Mutex::new(HashSet::new()),
        });
        let startup = Actor {
            request_id: "startup".into(),
        };
        if let Err(error) = ctl.reload_overrides(&startup).await {
            tracing::error!(
                path = %config.overrides_path.display(),
                error = %error,
                "Overrides file is invalid; starting without overrides"
            );
        }
        ctl.rebuild();
        ctl.ready.store(true, Ordering::Release);
        Ok(ctl)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The current routing snapshot: a lock-free load.
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    pub fn overrides_status(&self) -> Arc<OverridesStatus> {
        self.overrides_status.load_full()
    }

    fn lock_inputs(&self) -> std::sync::MutexGuard<'_, Inputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds a table from the current inputs and swaps it in.
    pub fn rebuild(&self) {
        let inputs = self.lock_inputs();
        let stored = &inputs.stored;
        let file = &inputs.overrides;
        let nodes = file.effective_nodes(stored);
        let unhealthy: HashSet<String> = self.health.unhealthy().into_iter().collect();

        let (active, source) = match &file.active_strategy {
            Some(name) if stored.strategies.iter().any(|s| &s.name == name) => {
                (name.clone(), "overrides")
            }
            _ => (stored.active_strategy.clone(), "db"),
        };
        let strategy = stored
            .strategies
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
                .map(|n| NodeInput {
                    id: n.spec.id.clone(),
                    region: n.spec.region.clone(),
                    weight: n.spec.weight,
                    state: n.spec.state,
                    healthy: !unhealthy.contains(&n.spec.id),
                    external: n.spec.external.clone(),
                    intranet: n.spec.intranet.clone(),
                })
                .collect(),
            strategy,
            pins: file.pins.clone(),
            user_regions: file.user_regions.clone(),
        };
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
        // Update each node's series in place and drop only those of nodes
        // that are gone, so a scrape never sees a node's series missing.
        let current: HashSet<String> = nodes.iter().map(|n| n.spec.id.clone()).collect();
        for n in &nodes {
            m.node_healthy
                .with_label_values(&[&n.spec.id])
                .set(i64::from(!unhealthy.contains(&n.spec.id)));
        }
        {
            let mut labelled = self
                .labelled_nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for gone in labelled.difference(&current) {
                m.node_healthy.remove_label_values(&[gone]).ok();
            }
            *labelled = current;
        }
        let routed = table
            .nodes()
            .iter()
            .map(|n| m.users_routed.with_label_values(&[&n.id]))
            .collect();
        tracing::debug!(revision = table.revision(), "Routing table rebuilt");
        self.snapshot.store(Arc::new(Snapshot { table, routed }));
        self.view.store(Arc::new(View {
            nodes,
            strategies: stored.strategies.clone(),
            active_strategy: active,
            active_strategy_source: source,
        }));
    }

    /// Reloads stored state after a write, then rebuilds.
    async fn refresh(&self) -> Result<(), ControlError> {
        let stored = Arc::new(self.store.load().await?);
        self.lock_inputs().stored = stored;
        self.rebuild();
        Ok(())
    }

    fn stored(&self) -> Arc<Stored> {
        self.lock_inputs().stored.clone()
    }

    // ----- nodes -----

    /// A stored record as the API shows it: with the current overrides applied.
    /// Built from the record itself, so an answer reflects its own write even
    /// when another write lands right after it.
    pub fn effective(&self, record: NodeRecord) -> EffectiveNode {
        let overrides = self.lock_inputs().overrides.clone();
        match overrides.nodes.get(&record.spec.id) {
            Some(patch) => EffectiveNode {
                spec: patch.apply(&record.spec),
                source: overrides::Source::DbAndOverrides,
                stored: Some(record),
            },
            None => EffectiveNode {
                spec: record.spec.clone(),
                source: overrides::Source::Db,
                stored: Some(record),
            },
        }
    }

    pub async fn create_node(
        &self,
        spec: NodeSpec,
        actor: &Actor,
    ) -> Result<NodeRecord, ControlError> {
        spec.validate().map_err(ControlError::Invalid)?;
        let _w = self.write.lock().await;
        let record = self.store.create_node(&spec, actor).await?;
        self.refresh().await?;
        tracing::info!(node = %spec.id, version = record.version, "Node created");
        Ok(record)
    }

    pub async fn put_node(
        &self,
        spec: NodeSpec,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(NodeRecord, bool), ControlError> {
        spec.validate().map_err(ControlError::Invalid)?;
        let _w = self.write.lock().await;
        let result = self
            .store
            .put_node(&spec, expected, "node.replace", actor)
            .await?;
        self.refresh().await?;
        tracing::info!(node = %spec.id, version = result.0.version, created = result.1, "Node stored");
        Ok(result)
    }

    /// Read-modify-write of a stored node under the write lock; the store's
    /// version check also guards against other processes sharing the file.
    pub async fn patch_node(
        &self,
        id: &str,
        expected: Option<i64>,
        patch: impl FnOnce(&NodeSpec) -> Result<NodeSpec, String>,
        actor: &Actor,
    ) -> Result<NodeRecord, ControlError> {
        let _w = self.write.lock().await;
        let current = self
            .stored()
            .nodes
            .iter()
            .find(|n| n.spec.id == id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("node {id}")))?;
        if let Some(e) = expected {
            if e != current.version {
                return Err(ControlError::VersionMismatch {
                    current: current.version,
                });
            }
        }
        let spec = patch(&current.spec).map_err(ControlError::Invalid)?;
        spec.validate().map_err(ControlError::Invalid)?;
        let (record, _) = self
            .store
            .put_node(&spec, Some(current.version), "node.update", actor)
            .await?;
        self.refresh().await?;
        tracing::info!(node = %id, version = record.version, "Node updated");
        Ok(record)
    }

    pub async fn delete_node(
        &self,
        id: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(), ControlError> {
        let _w = self.write.lock().await;
        let only_in_file = self.lock_inputs().overrides.nodes.contains_key(id)
            && !self.stored().nodes.iter().any(|n| n.spec.id == id);
        if only_in_file {
            return Err(ControlError::Conflict(format!(
                "node {id} is defined only in the overrides file; remove it there"
            )));
        }
        self.store.delete_node(id, expected, actor).await?;
        self.health.forget(id);
        self.metrics
            .node_connections
            .remove_label_values(&[id])
            .ok();
        self.refresh().await?;
        tracing::info!(node = %id, "Node deleted");
        Ok(())
    }

    /// Records a heartbeat; 404-style error for an unknown node.
    pub fn heartbeat(&self, id: &str, connections: u64) -> Result<(), ControlError> {
        if !self.view().nodes.iter().any(|n| n.spec.id == id) {
            return Err(ControlError::NotFound(format!("node {id}")));
        }
        self.metrics
            .node_connections
            .with_label_values(&[id])
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        if let Some(t) = self.health.heartbeat(id, connections, Instant::now()) {
            self.on_transitions(&[t]);
        }
        Ok(())
    }

    /// Logs health transitions once each and rebuilds.
    pub fn on_transitions(&self, transitions: &[Transition]) {
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
        self.rebuild();
    }

    // ----- strategies -----

    pub async fn put_strategy(
        &self,
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
        let plugin = strategy::kind(kind).ok_or_else(|| {
            let kinds: Vec<&str> = strategy::BUILTIN.iter().map(|k| k.kind()).collect();
            ControlError::Invalid(format!(
                "kind: unknown strategy kind {:?} (installed: {})",
                crate::model::truncate(kind),
                kinds.join(", ")
            ))
        })?;
        let params = if params.is_null() {
            Value::Object(Default::default())
        } else {
            params
        };
        plugin
            .validate(&params)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let _w = self.write.lock().await;
        let result = self
            .store
            .put_strategy(name, kind, &params, expected, actor)
            .await?;
        self.refresh().await?;
        tracing::info!(strategy = %name, kind = %kind, version = result.0.version, "Strategy stored");
        Ok(result)
    }

    pub async fn delete_strategy(
        &self,
        name: &str,
        expected: Option<i64>,
        actor: &Actor,
    ) -> Result<(), ControlError> {
        let _w = self.write.lock().await;
        if self.view().active_strategy == name {
            return Err(ControlError::Conflict(format!(
                "strategy {name} is the active strategy; switch to another one first"
            )));
        }
        self.store.delete_strategy(name, expected, actor).await?;
        self.refresh().await?;
        tracing::info!(strategy = %name, "Strategy deleted");
        Ok(())
    }

    pub async fn set_active_strategy(&self, name: &str, actor: &Actor) -> Result<(), ControlError> {
        let _w = self.write.lock().await;
        self.store.set_active_strategy(name, actor).await?;
        self.refresh().await?;
        tracing::info!(strategy = %name, "Active strategy switched");
        Ok(())
    }

    pub async fn audit_page(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        Ok(self.store.audit_page(limit, before).await?)
    }

    // ----- overrides -----

    /// Reads, parses and validates the overrides file; applies it when valid,
    /// keeps the last good overrides and records the error when not. A missing
    /// file means no overrides.
    pub async fn reload_overrides(&self, actor: &Actor) -> Result<(), String> {
        let _w = self.write.lock().await;
        let path = self.overrides_status().path.clone();
        let text = match tokio::fs::read(&path).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return self.reload_failed(format!("cannot read {}: {e}", path.display())),
        };
        let (parsed, revision) = match &text {
            None => (Overrides::default(), String::new()),
            Some(bytes) => {
                let Ok(text) = std::str::from_utf8(bytes) else {
                    return self.reload_failed("file is not valid UTF-8".into());
                };
                match overrides::parse(text) {
                    Ok(parsed) => (parsed, format!("{:016x}", xxh3_64(bytes))),
                    Err(e) => return self.reload_failed(e),
                }
            }
        };
        let stored = self.stored();
        if let Err(e) = parsed.validate(Some(&stored), self.limits.max_uid_bytes) {
            return self.reload_failed(e);
        }
        let previous = self.overrides_status();
        // The same content as the overrides in effect: nothing to audit (a
        // start without a file, or a save that did not change the file).
        let unchanged = previous.revision == revision;
        let parsed = Arc::new(parsed);
        self.lock_inputs().overrides = parsed.clone();
        self.rebuild();
        let now = now_rfc3339();
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
        if text.is_none() {
            tracing::warn!(path = %path.display(), "Overrides file is absent; no overrides in effect");
        } else if !unchanged || previous.error.is_some() {
            tracing::info!(path = %path.display(), revision = %revision, "Overrides loaded");
        }
        if !unchanged {
            let audit = self
                .store
                .audit(
                    "overrides.reload",
                    &path.display().to_string(),
                    (!previous.revision.is_empty())
                        .then(|| Value::String(previous.revision.clone())),
                    Some(Value::String(revision)),
                    actor,
                )
                .await;
            if let Err(error) = audit {
                tracing::error!(error = %error, "Cannot record the overrides reload in the audit log");
            }
        }
        Ok(())
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
