//! `/admin/routing/distribution` and `/admin/routing/simulate`: how users
//! spread, and what proposed changes would move, with nothing written.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use poem::web::Data;
use poem_openapi::{param::Query, payload::Json, types::ParseFromJSON, Object, OpenApi};
use serde_json::Value;

use super::{
    auth::AdminAuth,
    error::ApiError,
    nodes::{NodePatchDto, NodeWrite},
    payload::{JsonBytes, RawJson},
    strategies::StrategyWrite,
    ApiTags, AppState,
};
use crate::control::plan::{self, distribute, Change, Distribution, Sample, MAX_SAMPLE};

pub struct PlanApi;

/// One node's part of a sample.
#[derive(Debug, Clone, Object)]
#[oai(rename = "NodeShare")]
pub struct NodeShareDto {
    pub node_id: String,
    /// Users of the sample placed on this node.
    pub users: u64,
    /// `users / sample_size`.
    pub share: f64,
}

/// How a sample of users spreads over the routable nodes.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Distribution")]
pub struct DistributionDto {
    /// The routing revision of the table the users were placed with.
    pub revision: String,
    pub sample_size: u64,
    /// Users no node could take (there was no routable node).
    pub unrouted: u64,
    /// Most users on one node over the mean per routable node (1.0 is even).
    pub max_over_mean: f64,
    /// No node was healthy: users were spread over all active nodes.
    pub panic_mode: bool,
    /// Every routable node in id order, those with no user included.
    pub nodes: Vec<NodeShareDto>,
}

impl From<plan::Distribution> for DistributionDto {
    fn from(d: plan::Distribution) -> Self {
        DistributionDto {
            revision: d.revision,
            sample_size: d.sample_size,
            unrouted: d.unrouted,
            max_over_mean: d.max_over_mean,
            panic_mode: d.panic_mode,
            nodes: d
                .nodes
                .into_iter()
                .map(|n| NodeShareDto {
                    node_id: n.node_id,
                    users: n.users,
                    share: n.share,
                })
                .collect(),
        }
    }
}

/// Users the changes move from one node to another.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Flow")]
pub struct FlowDto {
    /// `null`: users that had no node before.
    pub from: Option<String>,
    /// `null`: users that no node can take after the changes.
    pub to: Option<String>,
    pub users: u64,
    /// The moved users in sample order, when the sample was a list of uids.
    #[oai(skip_serializing_if_is_none)]
    pub uids: Option<Vec<String>>,
}

/// What the changes would do.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Simulation")]
pub struct SimulationDto {
    pub sample_size: u64,
    /// Users whose node would change.
    pub moved: u64,
    /// `moved / sample_size`.
    pub moved_fraction: f64,
    pub before: DistributionDto,
    pub after: DistributionDto,
    /// Every non-zero flow, largest first.
    pub flows: Vec<FlowDto>,
}

/// Whose placement is counted: `count` synthetic users from `seed` (uid
/// `sim-{seed}-{i}` for `i` in `0..count`), or a list of real `uids`.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Sample", deny_unknown_fields)]
pub struct SampleDto {
    /// Synthetic users, 1..=1000000 (default 100000).
    pub count: Option<u64>,
    /// Seed of the synthetic uids (default 1).
    pub seed: Option<u64>,
    /// Real uids instead (at most 1000000, within the body limit);
    /// duplicates count once.
    pub uids: Option<Vec<String>>,
}

/// Proposed changes, applied in order to a copy of the current state.
#[derive(Debug, Clone, Object)]
#[oai(rename = "SimulateRequest", deny_unknown_fields)]
pub struct SimulateRequest {
    /// Each one an object with `op` and the fields of that operation.
    pub changes: Vec<Value>,
    /// Default: 100000 synthetic users from seed 1.
    pub sample: Option<SampleDto>,
    /// Region hint for every user, as the `region` query of `/route`.
    pub region: Option<String>,
}

/// At most two plans at once: each may place two million users.
static PLANS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The most changes one simulation takes.
const MAX_CHANGES: usize = 1000;

/// Sets its flag when dropped: the request went away.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs a plan off the async workers, two at most at once. The slot goes
/// with the work, and the work gives up soon after its client does (the
/// flag it is handed is set when the request is dropped).
async fn run<T: Send + 'static>(
    f: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let permit = PLANS.acquire().await.map_err(|_| ApiError::internal())?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&stop)
    })
    .await
    .map_err(|_| ApiError::internal())
}

/// The last distribution answered, by (revision, sample size, seed,
/// region). A revision is a content hash of everything routing reads, so
/// an entry is right for any table with that revision, in any process.
static DISTRIBUTION_CACHE: std::sync::Mutex<Option<(String, Arc<Distribution>)>> =
    std::sync::Mutex::new(None);

fn cached_distribution(key: &str) -> Option<Arc<Distribution>> {
    DISTRIBUTION_CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|(k, _)| k == key)
        .map(|(_, d)| d.clone())
}

/// A plan given up on (only reachable once its client has gone).
fn gone() -> ApiError {
    ApiError::new(
        poem::http::StatusCode::SERVICE_UNAVAILABLE,
        "cancelled",
        "the plan was cancelled",
    )
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_field", msg)
}

fn synthetic(count: Option<u64>, seed: Option<u64>, at: &str) -> Result<Sample, ApiError> {
    let count = count.unwrap_or(100_000);
    if !(1..=MAX_SAMPLE as u64).contains(&count) {
        return Err(invalid(format!(
            "{at}: must be an integer from 1 to {MAX_SAMPLE}, got {count}"
        )));
    }
    Ok(Sample::Synthetic {
        count: count as usize,
        seed: seed.unwrap_or(1),
    })
}

fn sample_of(dto: Option<SampleDto>, max_uid: usize) -> Result<Sample, ApiError> {
    let Some(dto) = dto else {
        return synthetic(None, None, "sample.count");
    };
    let Some(uids) = dto.uids else {
        return synthetic(dto.count, dto.seed, "sample.count");
    };
    if dto.count.is_some() || dto.seed.is_some() {
        return Err(invalid(
            "sample: give either count and seed, or uids, not both",
        ));
    }
    if uids.is_empty() {
        return Err(invalid("sample.uids: at least one uid"));
    }
    if uids.len() > MAX_SAMPLE {
        return Err(invalid(format!(
            "sample.uids: at most {MAX_SAMPLE} uids, got {}",
            uids.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(uids.len());
    let mut keep = Vec::with_capacity(uids.len());
    for (i, uid) in uids.iter().enumerate() {
        crate::overrides::model::check_uid(uid, max_uid)
            .map_err(|e| invalid(format!("sample.uids[{i}]: {e}")))?;
        keep.push(seen.insert(uid.as_str()));
    }
    drop(seen);
    let mut keep = keep.into_iter();
    let mut uids = uids;
    uids.retain(|_| keep.next().unwrap_or(false));
    Ok(Sample::Uids(uids))
}

/// The operations a change may name.
const OPS: &str = "put_node, patch_node, delete_node, set_health, put_strategy, activate_strategy";

fn string_field(
    obj: &serde_json::Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<String, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(format!("{at}.{key}: must be a string"))),
        None => Err(invalid(format!("{at}.{key}: required"))),
    }
}

fn id_field(obj: &serde_json::Map<String, Value>, at: &str, key: &str) -> Result<String, ApiError> {
    let id = string_field(obj, at, key)?;
    if !crate::model::valid_id(&id) {
        return Err(invalid(format!(
            "{at}.{key}: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
            crate::model::truncate(&id)
        )));
    }
    Ok(id)
}

/// A body part checked against its schema in the served document (so the
/// message names the field), then parsed.
fn object<T: ParseFromJSON>(value: &Value, schema: &str, at: &str) -> Result<T, ApiError> {
    super::validate::value(value, schema, at).map_err(invalid)?;
    T::parse_from_json(Some(value.clone()))
        .map_err(|_| invalid(format!("{at}: does not match the {schema} schema")))
}

/// One change object, checked as the real endpoint checks its request.
fn parse_change(i: usize, value: Value) -> Result<Change, ApiError> {
    let at = format!("changes[{i}]");
    let Value::Object(obj) = value else {
        return Err(invalid(format!("{at}: must be a JSON object")));
    };
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => return Err(invalid(format!("{at}.op: must be one of {OPS}"))),
        None => return Err(invalid(format!("{at}.op: required (one of {OPS})"))),
    };
    let fields: &[&str] = match op.as_str() {
        "put_node" => &["node"],
        "patch_node" => &["id", "patch"],
        "delete_node" => &["id"],
        "set_health" => &["id", "status"],
        "put_strategy" => &["name", "strategy"],
        "activate_strategy" => &["name"],
        _ => {
            return Err(invalid(format!(
                "{at}.op: must be one of {OPS}, got {:?}",
                crate::model::truncate(&op)
            )))
        }
    };
    for key in obj.keys() {
        if key != "op" && !fields.contains(&key.as_str()) {
            return Err(invalid(format!(
                "{at}.{}: unknown field for {op}",
                crate::model::field_key(key)
            )));
        }
    }
    for key in fields {
        if !obj.contains_key(*key) {
            return Err(invalid(format!("{at}.{key}: required")));
        }
    }
    Ok(match op.as_str() {
        "put_node" => {
            let at = format!("{at}.node");
            let node: NodeWrite = object(&obj["node"], "NodeCreate", &at)?;
            let id = node
                .id
                .clone()
                .ok_or_else(|| invalid(format!("{at}.id: required")))?;
            if !crate::model::valid_id(&id) {
                return Err(invalid(format!(
                    "{at}.id: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                    crate::model::truncate(&id)
                )));
            }
            let spec = node
                .into_spec(id)
                .map_err(|e| invalid(format!("{at}.{e}")))?;
            Change::PutNode(spec)
        }
        "patch_node" => {
            let id = id_field(&obj, &at, "id")?;
            let patch: NodePatchDto = object(&obj["patch"], "NodePatch", &format!("{at}.patch"))?;
            Change::PatchNode {
                id,
                patch: Box::new(move |spec| patch.clone().apply(spec)),
            }
        }
        "delete_node" => Change::DeleteNode(id_field(&obj, &at, "id")?),
        "set_health" => {
            let id = id_field(&obj, &at, "id")?;
            let healthy = match string_field(&obj, &at, "status")?.as_str() {
                "healthy" => true,
                "unhealthy" => false,
                other => {
                    return Err(invalid(format!(
                        "{at}.status: must be one of healthy, unhealthy, got {:?}",
                        crate::model::truncate(other)
                    )))
                }
            };
            Change::SetHealth { id, healthy }
        }
        "put_strategy" => {
            let name = string_field(&obj, &at, "name")?;
            let at = format!("{at}.strategy");
            let strategy: StrategyWrite = object(&obj["strategy"], "StrategyWrite", &at)?;
            if let Some(inner) = &strategy.name {
                if *inner != name {
                    return Err(invalid(format!(
                        "{at}.name: {:?} differs from the change's name {:?}",
                        crate::model::truncate(inner),
                        crate::model::truncate(&name)
                    )));
                }
            }
            Change::PutStrategy {
                name,
                kind: strategy.kind,
                params: strategy.params.unwrap_or(Value::Null),
            }
        }
        _ => Change::ActivateStrategy(string_field(&obj, &at, "name")?),
    })
}

#[OpenApi(tag = "ApiTags::Planning")]
impl PlanApi {
    /// How users spread over the nodes now
    ///
    /// Places `sample` synthetic users (uid `sim-{seed}-{i}`) with the
    /// routing table now served and counts them per routable node. The
    /// same query gives the same answer until the revision changes.
    #[oai(
        path = "/admin/routing/distribution",
        method = "get",
        operation_id = "get_distribution"
    )]
    async fn distribution(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        /// Synthetic users to place, 1..=1000000.
        sample: Query<Option<u64>>,
        /// Seed of the synthetic uids.
        seed: Query<Option<u64>>,
        /// Region hint for every user.
        region: Query<Option<String>>,
    ) -> Result<Json<DistributionDto>, ApiError> {
        let sample = synthetic(sample.0, seed.0, "sample")?;
        let region = super::route::parse_region(region.0.as_deref())?.map(str::to_owned);
        // The same question about the same table has the same answer: the
        // last one is kept (every open dashboard asks it after each change).
        let snap = state.ctl.current();
        let key = format!(
            "{}|{}|{:?}|{:?}",
            snap.table.revision(),
            sample.len(),
            seed.0.unwrap_or(1),
            region
        );
        if let Some(d) = cached_distribution(&key) {
            return Ok(Json((*d).clone().into()));
        }
        let d = run(move |stop| distribute(&snap.table, &sample, region.as_deref(), stop))
            .await?
            .ok_or_else(gone)?;
        let d = Arc::new(d);
        *DISTRIBUTION_CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, d.clone()));
        Ok(Json((*d).clone().into()))
    }

    /// What proposed changes would do
    ///
    /// Applies `changes` in order to a copy of the current nodes, strategies,
    /// overrides and health, each checked as its real endpoint checks it (a
    /// bad one is 400 naming `changes[i]`), builds the routing table they
    /// would give, and compares where the sample's users go before and
    /// after. Nothing is written: not the store, the revision, the audit
    /// trail or the metrics. Made for real, the same changes move exactly
    /// these users.
    #[oai(
        path = "/admin/routing/simulate",
        method = "post",
        operation_id = "simulate"
    )]
    async fn simulate(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        body: RawJson<SimulateRequest>,
    ) -> Result<JsonBytes<SimulationDto>, ApiError> {
        let max_uid = state.ctl.limits.max_uid_bytes;
        let ctl = state.ctl.clone();
        // Parsing a large sample and writing a large answer are work too:
        // all of it off the async workers.
        run(move |stop| {
            let body: Value = serde_json::from_slice(&body.0)
                .map_err(|_| ApiError::bad_request("invalid_body", "body: not valid JSON"))?;
            let body = SimulateRequest::parse_from_json(Some(body)).map_err(|_| {
                ApiError::bad_request("invalid_body", "body: not a SimulateRequest")
            })?;
            if body.changes.len() > MAX_CHANGES {
                return Err(invalid(format!(
                    "changes: at most {MAX_CHANGES} changes, got {}",
                    body.changes.len()
                )));
            }
            let sim = simulate_parsed(&ctl, body, max_uid, stop)?;
            Ok(JsonBytes::of(&sim))
        })
        .await?
    }
}

/// The body of `simulate`, parsed, on a blocking thread.
fn simulate_parsed(
    ctl: &crate::control::Controller,
    body: SimulateRequest,
    max_uid: usize,
    stop: &AtomicBool,
) -> Result<SimulationDto, ApiError> {
    {
        let sim = (|| {
            let region = match &body.region {
                Some(r) => super::route::parse_region(Some(r))
                    .map_err(|_| {
                        invalid(format!(
                            "region: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                            crate::model::truncate(r)
                        ))
                    })?
                    .map(str::to_owned),
                None => None,
            };
            let sample = sample_of(body.sample, max_uid)?;
            let mut changes = Vec::with_capacity(body.changes.len());
            for (i, change) in body.changes.into_iter().enumerate() {
                match parse_change(i, change) {
                    Ok(change) => changes.push(change),
                    Err(e) => {
                        // Made one by one, an earlier change that the state
                        // refuses would stop first: name that one.
                        ctl.simulate(changes).map_err(|e| invalid(e.to_string()))?;
                        return Err(e);
                    }
                }
            }
            let (before, after) = ctl.simulate(changes).map_err(|e| invalid(e.to_string()))?;
            plan::compare_until(&before, &after, &sample, region.as_deref(), stop).ok_or_else(gone)
        })()?;
        Ok(SimulationDto {
            sample_size: sim.sample_size,
            moved: sim.moved,
            moved_fraction: sim.moved_fraction,
            before: sim.before.into(),
            after: sim.after.into(),
            flows: sim
                .flows
                .into_iter()
                .map(|f| FlowDto {
                    from: f.from,
                    to: f.to,
                    users: f.users,
                    uids: f.uids,
                })
                .collect(),
        })
    }
}
