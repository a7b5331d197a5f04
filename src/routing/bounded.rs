//! `bounded`: consistent hashing with bounded loads, fed by the connections
//! nodes report in heartbeats.
//!
//! Which nodes are *full* is decided outside the placement, from reported
//! loads ([`evaluate`], run by the one replica that judges health, at most
//! every few seconds) and reaches a table build as a flag per candidate. The
//! placement itself is then as pure as the others: a user goes to the inner
//! kind's (`hash` or `weighted`) first choice, or, when that node is full,
//! to the first node of the same ranking that is not. Rendezvous rankings
//! restricted to a subset keep their order, so "the next non-full node of
//! the user's ranking" is the inner kind's placement over the non-full nodes:
//! with no node full the answers are the inner kind's exactly, and only the
//! users of full nodes move.

use serde_json::{json, Value};

use super::{
    hash::HashPlacement,
    hrw::UidHash,
    strategy::{
        inner_is_weighted, json_type, params_object, Candidate, Load, ParamsError, Placement,
        StrategyKind,
    },
    weighted::WeightedPlacement,
};

pub struct BoundedKind;

pub const DEFAULT_BALANCE_FACTOR: f64 = 1.25;
pub const MIN_BALANCE_FACTOR: f64 = 1.05;
pub const MAX_BALANCE_FACTOR: f64 = 4.0;
pub const DEFAULT_MIN_CONNECTIONS: u64 = 100;

/// Validated params of the bounded kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundedParams {
    /// The inner kind is `weighted` (else `hash`).
    pub weighted: bool,
    pub balance_factor: f64,
    pub min_connections: u64,
}

impl Default for BoundedParams {
    fn default() -> Self {
        BoundedParams {
            weighted: false,
            balance_factor: DEFAULT_BALANCE_FACTOR,
            min_connections: DEFAULT_MIN_CONNECTIONS,
        }
    }
}

impl BoundedParams {
    pub fn parse(params: &Value) -> Result<BoundedParams, ParamsError> {
        let map = params_object(params)?;
        let mut out = BoundedParams::default();
        for (key, value) in map {
            match key.as_str() {
                "inner" => out.weighted = inner_is_weighted(value)?,
                "balance_factor" => match value {
                    Value::Null => {}
                    Value::Number(n) => match n.as_f64() {
                        Some(f) if (MIN_BALANCE_FACTOR..=MAX_BALANCE_FACTOR).contains(&f) => {
                            out.balance_factor = f
                        }
                        _ => {
                            return Err(ParamsError::new(
                                "params.balance_factor",
                                format!(
                                    "must be between {MIN_BALANCE_FACTOR} and {MAX_BALANCE_FACTOR}, got {}",
                                    crate::model::truncate(&n.to_string())
                                ),
                            ))
                        }
                    },
                    other => {
                        return Err(ParamsError::new(
                            "params.balance_factor",
                            format!("must be a number, got {}", json_type(other)),
                        ))
                    }
                },
                "min_connections" => match value {
                    Value::Null => {}
                    // Any JSON integer, 100.0 and 1e2 included (as JSON
                    // Schema's `integer`).
                    Value::Number(n) => match n.as_u64().or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                            .map(|f| f as u64)
                    }) {
                        Some(c) => out.min_connections = c,
                        None => {
                            return Err(ParamsError::new(
                                "params.min_connections",
                                format!(
                                    "must be a non-negative integer, got {}",
                                    crate::model::truncate(&n.to_string())
                                ),
                            ))
                        }
                    },
                    other => {
                        return Err(ParamsError::new(
                            "params.min_connections",
                            format!("must be a non-negative integer, got {}", json_type(other)),
                        ))
                    }
                },
                other => {
                    return Err(ParamsError::new(
                        format!("params.{}", crate::model::field_key(other)),
                        "unknown field (expected inner, balance_factor, min_connections)",
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Below this multiple of its fair share a full node is full no more.
    pub fn release_factor(&self) -> f64 {
        1.0 + (self.balance_factor - 1.0) / 2.0
    }
}

impl StrategyKind for BoundedKind {
    fn kind(&self) -> &'static str {
        "bounded"
    }

    fn description(&self) -> &'static str {
        "Consistent hashing with bounded loads: as the inner kind (hash or weighted), except that a node whose reported connections exceed balance_factor times its fair share is full, and the users who would go to it go to their next choice instead until it is no longer full."
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "inner": {
                    "type": "string",
                    "enum": ["hash", "weighted"],
                    "default": "hash",
                    "description": "How users are ranked: `hash` (equal shares) or `weighted` (shares by weight). The fair share follows the same rule."
                },
                "balance_factor": {
                    "type": "number",
                    "minimum": MIN_BALANCE_FACTOR,
                    "maximum": MAX_BALANCE_FACTOR,
                    "default": DEFAULT_BALANCE_FACTOR,
                    "description": "A node is full above this multiple of its fair share of the reported connections; it is full no more below 1 + (balance_factor - 1) / 2 times its share."
                },
                "min_connections": {
                    "type": "integer",
                    "minimum": 0,
                    "default": DEFAULT_MIN_CONNECTIONS,
                    "description": "A node with at most this many connections is never full."
                }
            }
        })
    }

    fn validate(&self, params: &Value) -> Result<(), ParamsError> {
        BoundedParams::parse(params).map(|_| ())
    }

    fn uses_load(&self) -> bool {
        true
    }

    fn evaluate_full(&self, params: &Value, loads: &[Load]) -> Option<Vec<bool>> {
        Some(evaluate(&BoundedParams::parse(params).ok()?, loads))
    }

    fn build(&self, params: &Value, candidates: &[Candidate<'_>]) -> Box<dyn Placement> {
        let params = BoundedParams::parse(params).unwrap_or_default();
        Box::new(BoundedPlacement::new(params.weighted, candidates))
    }
}

/// The inner kind, dispatched statically (placing is on the hot path).
enum Inner {
    Hash(HashPlacement),
    Weighted(WeightedPlacement),
}

impl Inner {
    fn new(weighted: bool, candidates: &[Candidate<'_>]) -> Inner {
        if weighted {
            Inner::Weighted(WeightedPlacement::new(candidates))
        } else {
            Inner::Hash(HashPlacement::new(candidates))
        }
    }

    #[inline(always)]
    fn place(&self, uid: UidHash, region: Option<&str>) -> Option<usize> {
        match self {
            Inner::Hash(p) => p.place(uid, region),
            Inner::Weighted(p) => p.place(uid, region),
        }
    }

    fn rank(&self, uid: UidHash, region: Option<&str>, k: usize, out: &mut Vec<usize>) {
        match self {
            Inner::Hash(p) => p.rank(uid, region, k, out),
            Inner::Weighted(p) => p.rank(uid, region, k, out),
        }
    }
}

/// The inner placement, and a second one over the nodes that are not full.
pub struct BoundedPlacement {
    inner: Inner,
    /// When some candidate (and not every one) is full: the inner placement
    /// over the others, and each of their candidate indexes.
    spill: Option<(Inner, Box<[u32]>)>,
    /// Per candidate.
    full: Box<[bool]>,
}

impl BoundedPlacement {
    pub fn new(weighted: bool, candidates: &[Candidate<'_>]) -> Self {
        let open: Vec<u32> = (0u32..)
            .zip(candidates)
            .filter(|(_, c)| !c.full)
            .map(|(i, _)| i)
            .collect();
        let fulls = candidates.len() - open.len();
        // With no node full this is the inner kind exactly; with every node
        // full (only a stale full set can say so) nobody is refused either.
        let spill = (fulls > 0 && !open.is_empty()).then(|| {
            let rest: Vec<Candidate<'_>> = open.iter().map(|&i| candidates[i as usize]).collect();
            (Inner::new(weighted, &rest), open.into_boxed_slice())
        });
        let full = candidates
            .iter()
            .map(|c| spill.is_some() && c.full)
            .collect();
        BoundedPlacement {
            inner: Inner::new(weighted, candidates),
            spill,
            full,
        }
    }
}

impl Placement for BoundedPlacement {
    /// The non-full nodes in the inner kind's order, then the full ones in
    /// the same order: when the first becomes unroutable (and the full set
    /// stays), the user is placed on the second.
    fn rank(&self, uid: UidHash, region: Option<&str>, k: usize, out: &mut Vec<usize>) {
        let Some((spill, index)) = &self.spill else {
            return self.inner.rank(uid, region, k, out);
        };
        spill.rank(uid, region, k, out);
        for i in out.iter_mut() {
            *i = index[*i] as usize;
        }
        if out.len() < k {
            // Fewer open nodes than asked for: the best-ranked full ones
            // follow (they are all among the inner kind's first k).
            let mut all = Vec::with_capacity(k);
            self.inner.rank(uid, region, k, &mut all);
            let need = k - out.len();
            out.extend(all.into_iter().filter(|&i| self.full[i]).take(need));
        }
    }

    #[inline]
    fn place(&self, uid: UidHash, region: Option<&str>) -> Option<usize> {
        let first = self.inner.place(uid, region)?;
        match &self.spill {
            Some((spill, index)) if self.full[first] => {
                spill.place(uid, region).map(|i| index[i] as usize)
            }
            _ => Some(first),
        }
    }
}

/// The full set for the next period, per node of `loads` (the routable
/// nodes). A node's fair share is the connections of all of them times its
/// share of weight (every node weighs the same with the `hash` inner kind,
/// as it places users). A node becomes full above `balance_factor ×` its
/// share (and above `min_connections`), and stays full until it is below
/// `1 + (balance_factor − 1) / 2` times its share (or at most
/// `min_connections`). Shares sum to the total, so some node is always at
/// or below its share: never full.
pub fn evaluate(params: &BoundedParams, loads: &[Load]) -> Vec<bool> {
    let weight = |l: &Load| {
        if params.weighted {
            f64::from(l.weight)
        } else {
            1.0
        }
    };
    let total_weight: f64 = loads.iter().map(weight).sum();
    let total: f64 = loads.iter().map(|l| l.connections as f64).sum();
    if total_weight <= 0.0 || total <= 0.0 {
        return vec![false; loads.len()];
    }
    let release = params.release_factor();
    // Shares sum to the total, so the least loaded node relative to its
    // share is at most at its share, below any release point: it is never
    // full. No guard is needed (the property tests check it).
    loads
        .iter()
        .map(|l| {
            let fair = total * weight(l) / total_weight;
            let c = l.connections as f64;
            if l.connections <= params.min_connections {
                false
            } else if l.full {
                c >= release * fair
            } else {
                c > params.balance_factor * fair
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(params: Value) -> String {
        BoundedParams::parse(&params).unwrap_err().to_string()
    }

    #[test]
    fn params_are_checked_field_by_field() {
        assert_eq!(
            BoundedParams::parse(&json!({})).unwrap(),
            BoundedParams::default()
        );
        let p = BoundedParams::parse(
            &json!({"inner": "weighted", "balance_factor": 2, "min_connections": 0}),
        )
        .unwrap();
        assert!(p.weighted && p.balance_factor == 2.0 && p.min_connections == 0);
        assert!(err(json!({"inner": "region"})).starts_with("params.inner:"));
        assert!(err(json!({"balance_factor": 1.01})).starts_with("params.balance_factor:"));
        assert!(err(json!({"balance_factor": 4.5})).starts_with("params.balance_factor:"));
        assert!(err(json!({"balance_factor": "2"})).starts_with("params.balance_factor:"));
        assert!(err(json!({"min_connections": -1})).starts_with("params.min_connections:"));
        assert!(err(json!({"min_connections": 1.5})).starts_with("params.min_connections:"));
        assert!(err(json!({"min_connections": -1.0})).starts_with("params.min_connections:"));
        for integral in [json!(100.0), json!(1e2), json!(-0.0)] {
            let p = BoundedParams::parse(&json!({ "min_connections": integral })).unwrap();
            assert!(p.min_connections == 100 || p.min_connections == 0);
        }
        assert!(err(json!({"factor": 2})).starts_with("params.factor:"));
        assert!(err(json!([])).starts_with("params:"));
        assert!(BoundedParams::parse(&json!({"balance_factor": 1.05})).is_ok());
        assert!(BoundedParams::parse(&json!({"balance_factor": 4})).is_ok());
    }

    fn load(connections: u64, full: bool) -> Load {
        Load {
            weight: 1,
            connections,
            full,
        }
    }

    #[test]
    fn a_node_fills_above_the_factor_and_empties_below_the_release_point() {
        let p = BoundedParams::default(); // 1.25, release 1.125, min 100
                                          // Four nodes at 1000 and one at x: fair = (4000 + x) / 5.
        let at = |x: u64, was: bool| {
            let mut loads = vec![load(1000, false); 4];
            loads.push(load(x, was));
            evaluate(&p, &loads)[4]
        };
        // x > 1.25 * (4000 + x) / 5  <=>  x > 1333.3
        assert!(!at(1333, false));
        assert!(at(1334, false));
        // x < 1.125 * (4000 + x) / 5  <=>  x < 1161.3
        assert!(at(1162, true), "between the bounds a full node stays full");
        assert!(
            !at(1200, false),
            "between the bounds an open node stays open"
        );
        assert!(!at(1161, true));
        // At most min_connections: never full.
        let small = [load(100, false), load(1, false), load(1, false)];
        assert_eq!(evaluate(&p, &small), vec![false; 3]);
        assert_eq!(
            evaluate(&p, &[load(0, true), load(0, true)]),
            vec![false; 2]
        );
        assert_eq!(evaluate(&p, &[]), Vec::<bool>::new());
    }

    #[test]
    fn the_fair_share_follows_the_weights_with_the_weighted_inner_kind() {
        let loads = [
            Load {
                weight: 3,
                connections: 3000,
                full: false,
            },
            Load {
                weight: 1,
                connections: 1000,
                full: false,
            },
        ];
        let weighted = BoundedParams {
            weighted: true,
            ..BoundedParams::default()
        };
        assert_eq!(evaluate(&weighted, &loads), vec![false, false]);
        // With `hash` both should hold 2000: the first is above 1.25 × 2000.
        assert_eq!(
            evaluate(&BoundedParams::default(), &loads),
            vec![true, false]
        );
    }
}
