//! The strategy plugin interface and the registry of built-in kinds.
//!
//! A strategy kind validates its params and builds a [`Placement`] from params and
//! the routable candidates of a snapshot. Building happens once per snapshot, off
//! the hot path; placing happens per uid and must be cheap and pure.
//!
//! Adding a kind: write one file with a type implementing [`StrategyKind`] and add
//! one line to [`BUILTIN`].

use serde_json::Value;

use super::{
    bounded::BoundedKind,
    hash::HashKind,
    hrw::{NodeSeed, UidHash},
    region::RegionKind,
    weighted::WeightedKind,
};

/// A node as strategies see it: routable, in node-id order.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub region: Option<&'a str>,
    pub weight: u16,
    /// `NodeSeed::of(id)`, computed once per node change, with `primary`
    /// replaced by the seed to score with ([`super::hrw::effective_seeds`]):
    /// placements score `seed.primary` and need nothing else.
    pub seed: NodeSeed,
    /// Over its bound of the reported connections (only for kinds whose
    /// [`StrategyKind::uses_load`] is true; false for the others).
    pub full: bool,
}

/// One routable node's load, as a full set is evaluated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub weight: u16,
    /// Reported connections; a node that never reported counts as empty.
    pub connections: u64,
    /// Full at the last evaluation.
    pub full: bool,
}

/// A built strategy: ranks the candidates for a uid.
pub trait Placement: Send + Sync {
    /// Up to `k` indexes into the candidate slice the placement was built
    /// from, in this user's order of preference, written to `out` (cleared
    /// first; empty when there is no candidate at all).
    ///
    /// The contract every kind keeps, and the property tests check: the
    /// first is [`Placement::place`]'s answer; and a placement built from the
    /// same candidates without the first one places the user on the second,
    /// and so on down the list. So a client that holds the list fails over
    /// exactly where the router would move it.
    fn rank(&self, uid: UidHash, region: Option<&str>, k: usize, out: &mut Vec<usize>);

    /// The first of the ranking: the index this user is placed on, or `None`
    /// when there is no candidate at all. Kinds override it with a faster
    /// path that must give the same answer.
    fn place(&self, uid: UidHash, region: Option<&str>) -> Option<usize> {
        let mut out = Vec::with_capacity(1);
        self.rank(uid, region, 1, &mut out);
        out.first().copied()
    }

    /// Whether `place` reads the region; when false the table skips the
    /// per-uid region lookup.
    fn uses_region(&self) -> bool {
        false
    }
}

/// A strategy plugin.
pub trait StrategyKind: Send + Sync + 'static {
    /// The kind name stored with a strategy (`hash`, `weighted`, ...).
    fn kind(&self) -> &'static str;
    /// One sentence for `GET /admin/strategy-kinds`.
    fn description(&self) -> &'static str;
    /// JSON Schema of the params object.
    fn params_schema(&self) -> Value;
    /// Checks params; the error names the offending field.
    fn validate(&self, params: &Value) -> Result<(), ParamsError>;
    /// Whether placements read [`Candidate::full`]: the full set is then
    /// part of the table's revision, and the judge keeps it up to date.
    fn uses_load(&self) -> bool {
        false
    }
    /// The full set for the next period, per routable node of `loads` (in
    /// candidate order), for kinds that use load; `None` for the others.
    /// Run by the one replica that judges health, never on the hot path.
    fn evaluate_full(&self, _params: &Value, _loads: &[Load]) -> Option<Vec<bool>> {
        None
    }
    /// Builds the placement for one snapshot. `params` has passed `validate`.
    fn build(&self, params: &Value, candidates: &[Candidate<'_>]) -> Box<dyn Placement>;
}

/// A params validation failure, naming the field (`params.fallback.eu[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamsError {
    pub field: String,
    pub message: String,
}

impl ParamsError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every installed kind. One line per kind.
pub static BUILTIN: &[&dyn StrategyKind] = &[&HashKind, &WeightedKind, &RegionKind, &BoundedKind];

/// Looks a kind up by name.
pub fn kind(name: &str) -> Option<&'static dyn StrategyKind> {
    BUILTIN.iter().copied().find(|k| k.kind() == name)
}

/// Params for kinds that take none: `{}` or `null`.
pub(crate) fn expect_no_params(kind: &str, params: &Value) -> Result<(), ParamsError> {
    match params {
        Value::Null => Ok(()),
        Value::Object(map) => match map.keys().next() {
            None => Ok(()),
            Some(key) => Err(ParamsError::new(
                format!("params.{key}"),
                format!("unknown field: `{kind}` takes no params"),
            )),
        },
        other => Err(ParamsError::new(
            "params",
            format!("must be an object, got {}", json_type(other)),
        )),
    }
}

/// The params of a kind that takes some, as an object (`null` is `{}`).
pub(crate) fn params_object(
    params: &Value,
) -> Result<&serde_json::Map<String, Value>, ParamsError> {
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();
    match params {
        Value::Null => Ok(EMPTY.get_or_init(serde_json::Map::new)),
        Value::Object(map) => Ok(map),
        other => Err(ParamsError::new(
            "params",
            format!("must be an object, got {}", json_type(other)),
        )),
    }
}

/// The `inner` param of kinds that place with `hash` or `weighted`: true for
/// `weighted`; `null` or absent is `hash`.
pub(crate) fn inner_is_weighted(value: &Value) -> Result<bool, ParamsError> {
    match value {
        Value::String(s) if s == "hash" => Ok(false),
        Value::String(s) if s == "weighted" => Ok(true),
        Value::Null => Ok(false),
        other => Err(ParamsError::new(
            "params.inner",
            format!(
                "must be \"hash\" or \"weighted\", got {}",
                crate::model::truncate(&other.to_string())
            ),
        )),
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
