//! `region`: region affinity with an ordered fallback.
//!
//! The user's region is, in order: the overrides file's `user_regions`, the
//! request's `region` hint, the strategy's `default_region`. Users are placed by
//! the inner kind (`hash` or `weighted`) among that region's routable nodes; when
//! it has none, among the first fallback region that has some; else among all
//! routable nodes. A user with no region at all is placed among all nodes.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::{
    hash::HashPlacement,
    hrw::UidHash,
    strategy::{json_type, Candidate, ParamsError, Placement, StrategyKind},
    weighted::WeightedPlacement,
};

pub struct RegionKind;

/// Validated params of the region kind.
struct RegionParams {
    default_region: Option<String>,
    fallback: HashMap<String, Vec<String>>,
    weighted: bool,
}

/// Region codes share the node-id alphabet.
pub fn valid_region(s: &str) -> bool {
    crate::model::valid_id(s)
}

fn region_at(field: &str, v: &Value) -> Result<String, ParamsError> {
    match v {
        Value::String(s) if valid_region(s) => Ok(s.clone()),
        Value::String(s) => Err(ParamsError::new(
            field,
            format!(
                "must be a region code of 1-64 characters [A-Za-z0-9._-], got {:?}",
                crate::model::truncate(s)
            ),
        )),
        other => Err(ParamsError::new(
            field,
            format!("must be a string, got {}", json_type(other)),
        )),
    }
}

fn parse(params: &Value) -> Result<RegionParams, ParamsError> {
    let empty = Map::new();
    let map = match params {
        Value::Null => &empty,
        Value::Object(map) => map,
        other => {
            return Err(ParamsError::new(
                "params",
                format!("must be an object, got {}", json_type(other)),
            ))
        }
    };
    let mut out = RegionParams {
        default_region: None,
        fallback: HashMap::new(),
        weighted: false,
    };
    for (key, value) in map {
        match key.as_str() {
            "default_region" => {
                if !value.is_null() {
                    out.default_region = Some(region_at("params.default_region", value)?);
                }
            }
            "inner" => {
                out.weighted = match value {
                    Value::String(s) if s == "hash" => false,
                    Value::String(s) if s == "weighted" => true,
                    Value::Null => false,
                    other => {
                        return Err(ParamsError::new(
                            "params.inner",
                            format!(
                                "must be \"hash\" or \"weighted\", got {}",
                                crate::model::truncate(&other.to_string())
                            ),
                        ))
                    }
                }
            }
            "fallback" => match value {
                Value::Null => {}
                Value::Object(fallback) => {
                    for (region, list) in fallback {
                        let field = format!("params.fallback.{}", crate::model::field_key(region));
                        if !valid_region(region) {
                            return Err(ParamsError::new(
                                field,
                                "the key must be a region code of 1-64 characters [A-Za-z0-9._-]",
                            ));
                        }
                        let Value::Array(items) = list else {
                            return Err(ParamsError::new(
                                field,
                                format!(
                                    "must be an array of region codes, got {}",
                                    json_type(list)
                                ),
                            ));
                        };
                        let regions = items
                            .iter()
                            .enumerate()
                            .map(|(i, v)| region_at(&format!("{field}[{i}]"), v))
                            .collect::<Result<Vec<_>, _>>()?;
                        out.fallback.insert(region.clone(), regions);
                    }
                }
                other => {
                    return Err(ParamsError::new(
                        "params.fallback",
                        format!(
                            "must be an object mapping a region to a list of regions, got {}",
                            json_type(other)
                        ),
                    ))
                }
            },
            other => {
                return Err(ParamsError::new(
                    format!("params.{}", crate::model::field_key(other)),
                    "unknown field (expected default_region, fallback, inner)",
                ))
            }
        }
    }
    Ok(out)
}

impl StrategyKind for RegionKind {
    fn kind(&self) -> &'static str {
        "region"
    }

    fn description(&self) -> &'static str {
        "Region affinity: users go to nodes of their region (overrides user_regions, then the request's region hint, then default_region); with none routable there, to the ordered fallback regions, then to all nodes."
    }

    fn params_schema(&self) -> Value {
        let region = json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"});
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "default_region": {
                    "description": "Region of users with neither a user_regions entry nor a region hint.",
                    "type": ["string", "null"], "pattern": "^[A-Za-z0-9._-]{1,64}$"
                },
                "fallback": {
                    "description": "Region -> ordered regions to try when it has no routable node.",
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": region}
                },
                "inner": {
                    "description": "How users are spread within a region.",
                    "type": "string", "enum": ["hash", "weighted"], "default": "hash"
                }
            }
        })
    }

    fn validate(&self, params: &Value) -> Result<(), ParamsError> {
        parse(params).map(|_| ())
    }

    fn build(&self, params: &Value, candidates: &[Candidate<'_>]) -> Box<dyn Placement> {
        // Params were validated when stored; fall back to no params rather than
        // refusing to build a snapshot.
        let params = parse(params).unwrap_or(RegionParams {
            default_region: None,
            fallback: HashMap::new(),
            weighted: false,
        });
        let inner = |subset: &[Candidate<'_>]| -> Box<dyn Placement> {
            if params.weighted {
                Box::new(WeightedPlacement::new(subset))
            } else {
                Box::new(HashPlacement::new(subset))
            }
        };
        let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, c) in candidates.iter().enumerate() {
            if let Some(region) = c.region {
                members.entry(region).or_default().push(i);
            }
        }
        let by_region = members
            .into_iter()
            .map(|(region, index)| {
                let subset: Vec<Candidate<'_>> = index.iter().map(|&i| candidates[i]).collect();
                let sub = SubPlacement {
                    inner: inner(&subset),
                    index: index.iter().map(|&i| i as u32).collect(),
                };
                (Box::<str>::from(region), sub)
            })
            .collect();
        Box::new(RegionPlacement {
            default_region: params.default_region.map(Into::into),
            fallback: params
                .fallback
                .into_iter()
                .map(|(k, v)| (k.into(), v.into_iter().map(Into::into).collect()))
                .collect(),
            by_region,
            all: inner(candidates),
        })
    }
}

struct SubPlacement {
    inner: Box<dyn Placement>,
    /// Candidate index of each member of the region.
    index: Box<[u32]>,
}

struct RegionPlacement {
    default_region: Option<Box<str>>,
    fallback: HashMap<Box<str>, Box<[Box<str>]>>,
    by_region: HashMap<Box<str>, SubPlacement>,
    all: Box<dyn Placement>,
}

impl RegionPlacement {
    fn in_region(&self, region: &str, uid: UidHash) -> Option<usize> {
        let sub = self.by_region.get(region)?;
        sub.inner.place(uid, None).map(|i| sub.index[i] as usize)
    }
}

impl Placement for RegionPlacement {
    /// The region's nodes, then each fallback region's in order, then every
    /// other node, each part in the inner kind's order: exactly the order in
    /// which `place` would reach them as nodes before them go away.
    fn rank(&self, uid: UidHash, region: Option<&str>, k: usize, out: &mut Vec<usize>) {
        out.clear();
        let mut part = Vec::with_capacity(k);
        let mut visited: Vec<&str> = Vec::new();
        if let Some(region) = region.or(self.default_region.as_deref()) {
            let fallback = self.fallback.get(region).map_or(&[][..], |l| &l[..]);
            for r in std::iter::once(region).chain(fallback.iter().map(|r| &**r)) {
                if out.len() >= k {
                    return;
                }
                if visited.contains(&r) {
                    continue;
                }
                visited.push(r);
                if let Some(sub) = self.by_region.get(r) {
                    sub.inner.rank(uid, None, k - out.len(), &mut part);
                    out.extend(part.iter().map(|&i| sub.index[i] as usize));
                }
            }
        }
        if out.len() < k {
            // At most `out.len()` of the k best of all are listed already,
            // so the rest of them are the best unlisted ones, enough of them.
            self.all.rank(uid, None, k, &mut part);
            for &i in &part {
                if out.len() == k {
                    break;
                }
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
    }

    fn place(&self, uid: UidHash, region: Option<&str>) -> Option<usize> {
        if let Some(region) = region.or(self.default_region.as_deref()) {
            if let Some(i) = self.in_region(region, uid) {
                return Some(i);
            }
            if let Some(list) = self.fallback.get(region) {
                if let Some(i) = list.iter().find_map(|r| self.in_region(r, uid)) {
                    return Some(i);
                }
            }
        }
        self.all.place(uid, None)
    }

    fn uses_region(&self) -> bool {
        true
    }
}
