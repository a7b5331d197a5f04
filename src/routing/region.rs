//! `region`: region affinity with an ordered fallback.
//!
//! The user's region is, in order: the overrides file's `user_regions`, the
//! request's `region` hint, the strategy's `default_region`. Users are placed by
//! the inner kind (`hash` or `weighted`) among that region's routable nodes; when
//! it has none, among the first fallback region that has some; else among all
//! routable nodes. A user with no region at all is placed among all nodes.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{
    hash::HashPlacement,
    hrw::UidHash,
    strategy::{
        inner_is_weighted, json_type, params_object, Candidate, ParamsError, Placement,
        StrategyKind,
    },
    weighted::WeightedPlacement,
};

pub struct RegionKind;

/// The most regions one fallback list may name.
const MAX_FALLBACK: usize = 32;

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
    let map = params_object(params)?;
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
            "inner" => out.weighted = inner_is_weighted(value)?,
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
                    "additionalProperties": {"type": "array", "items": region, "maxItems": MAX_FALLBACK, "uniqueItems": true}
                },
                "inner": {
                    "description": "How users are spread within a region.",
                    "type": "string", "enum": ["hash", "weighted"], "default": "hash"
                }
            }
        })
    }

    /// Beyond what `build` reads: lists short, each region once, never the
    /// region itself (a stored strategy that predates these rules still
    /// builds, its repeats ignored).
    fn validate(&self, params: &Value) -> Result<(), ParamsError> {
        let parsed = parse(params)?;
        let mut keys: Vec<&String> = parsed.fallback.keys().collect();
        keys.sort();
        for region in keys {
            let list = &parsed.fallback[region];
            let field = format!("params.fallback.{}", crate::model::field_key(region));
            if list.len() > MAX_FALLBACK {
                return Err(ParamsError::new(
                    field,
                    format!("at most {MAX_FALLBACK} regions, got {}", list.len()),
                ));
            }
            for (i, r) in list.iter().enumerate() {
                if list[..i].contains(r) || r == region {
                    return Err(ParamsError::new(
                        format!("{field}[{i}]"),
                        format!(
                            "{r:?} is listed already (each region once, not the region itself)"
                        ),
                    ));
                }
            }
        }
        Ok(())
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
        // Each region with routable nodes gets one placement; every region
        // named anywhere gets its chain: itself, then its fallback regions
        // in order, each once and only when it has nodes. Placing and
        // ranking then cost O(regions in the chain), however long or
        // repetitive the configured list.
        let mut subs: Vec<SubPlacement> = Vec::new();
        let mut sub_of: HashMap<&str, u32> = HashMap::new();
        let mut regions: Vec<&str> = members.keys().copied().collect();
        regions.sort_unstable();
        for region in regions {
            let index = &members[region];
            let subset: Vec<Candidate<'_>> = index.iter().map(|&i| candidates[i]).collect();
            sub_of.insert(region, subs.len() as u32);
            subs.push(SubPlacement {
                inner: inner(&subset),
                index: index.iter().map(|&i| i as u32).collect(),
            });
        }
        let chain_of = |region: &str| -> Box<[u32]> {
            let fallback = params.fallback.get(region).map_or(&[][..], |l| &l[..]);
            let mut chain: Vec<u32> = Vec::new();
            for r in std::iter::once(region).chain(fallback.iter().map(String::as_str)) {
                if let Some(&sub) = sub_of.get(r) {
                    if !chain.contains(&sub) {
                        chain.push(sub);
                    }
                }
            }
            chain.into()
        };
        let mut chains: HashMap<Box<str>, Box<[u32]>> = HashMap::new();
        for region in params
            .fallback
            .keys()
            .map(String::as_str)
            .chain(sub_of.keys().copied())
        {
            chains.insert(region.into(), chain_of(region));
        }
        Box::new(RegionPlacement {
            default_region: params.default_region.clone().map(Into::into),
            chains,
            subs: subs.into(),
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
    /// Region -> the placements to try in order (indexes into `subs`).
    chains: HashMap<Box<str>, Box<[u32]>>,
    subs: Box<[SubPlacement]>,
    all: Box<dyn Placement>,
}

impl RegionPlacement {
    fn chain(&self, region: Option<&str>) -> &[u32] {
        region
            .or(self.default_region.as_deref())
            .and_then(|r| self.chains.get(r))
            .map_or(&[][..], |c| &c[..])
    }
}

impl Placement for RegionPlacement {
    /// The region's nodes, then each fallback region's in order, then every
    /// other node, each part in the inner kind's order: exactly the order in
    /// which `place` would reach them as nodes before them go away.
    fn rank(&self, uid: UidHash, region: Option<&str>, k: usize, out: &mut Vec<usize>) {
        out.clear();
        let mut part = Vec::with_capacity(k);
        for &s in self.chain(region) {
            if out.len() >= k {
                return;
            }
            let sub = &self.subs[s as usize];
            sub.inner.rank(uid, None, k - out.len(), &mut part);
            out.extend(part.iter().map(|&i| sub.index[i] as usize));
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
        // Every region of a chain has nodes: the first one places.
        match self.chain(region).first() {
            Some(&s) => {
                let sub = &self.subs[s as usize];
                sub.inner.place(uid, None).map(|i| sub.index[i] as usize)
            }
            None => self.all.place(uid, None),
        }
    }

    fn uses_region(&self) -> bool {
        true
    }
}
