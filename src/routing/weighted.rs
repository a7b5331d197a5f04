//! `weighted`: weighted rendezvous hashing (logarithmic method).
//!
//! Nodes with equal weight are grouped: within a group the node with the highest
//! raw score also has the highest weighted score (the transform is monotonic), so
//! one logarithm per distinct weight suffices instead of one per node. Clusters
//! usually have few distinct weights, which makes this nearly as cheap as `hash`.
//! Building sorts the candidates by weight once: O(N log N).

use serde_json::{json, Value};

use super::{
    hrw,
    strategy::{expect_no_params, Candidate, ParamsError, Placement, StrategyKind},
};

pub struct WeightedKind;

impl StrategyKind for WeightedKind {
    fn kind(&self) -> &'static str {
        "weighted"
    }

    fn description(&self) -> &'static str {
        "Weighted rendezvous hashing: each routable node takes users in proportion to its weight; a node or weight change moves users only to or from that node."
    }

    fn params_schema(&self) -> Value {
        json!({"type": "object", "additionalProperties": false, "properties": {}})
    }

    fn validate(&self, params: &Value) -> Result<(), ParamsError> {
        expect_no_params(self.kind(), params)
    }

    fn build(&self, _params: &Value, candidates: &[Candidate<'_>]) -> Box<dyn Placement> {
        Box::new(WeightedPlacement::new(candidates))
    }
}

struct WeightGroup {
    weight: f64,
    /// Seeds of the group's members, in candidate (node-id) order.
    seeds: Box<[u32]>,
    /// Candidate index of each member.
    index: Box<[u32]>,
}

/// Weighted rendezvous over a fixed candidate list.
pub struct WeightedPlacement {
    /// By ascending weight.
    groups: Box<[WeightGroup]>,
}

impl WeightedPlacement {
    pub fn new(candidates: &[Candidate<'_>]) -> Self {
        // Candidate indexes by (weight, index): one sort, then one pass.
        let mut order: Vec<u32> = (0..candidates.len() as u32)
            .filter(|&i| candidates[i as usize].weight > 0)
            .collect();
        order.sort_unstable_by_key(|&i| (candidates[i as usize].weight, i));
        let groups = order
            .chunk_by(|&a, &b| candidates[a as usize].weight == candidates[b as usize].weight)
            .map(|members| WeightGroup {
                weight: f64::from(candidates[members[0] as usize].weight),
                seeds: members
                    .iter()
                    .map(|&i| candidates[i as usize].seed.primary)
                    .collect(),
                index: members.into(),
            })
            .collect();
        Self { groups }
    }
}

impl Placement for WeightedPlacement {
    /// Within a group the k best raw scores are the k best weighted ones
    /// (the transform is monotonic), so each group contributes its top k,
    /// merged by weighted score (ties to the lowest index, as in `place`).
    fn rank(&self, uid: hrw::UidHash, _region: Option<&str>, k: usize, out: &mut Vec<usize>) {
        out.clear();
        let k = k.min(hrw::MAX_RANK);
        if k == 0 {
            return;
        }
        let mut best = [(0f64, 0u32); hrw::MAX_RANK];
        let mut len = 0;
        for group in self.groups.iter().rev() {
            let raw = hrw::top_k(uid, &group.seeds, k);
            // As in `place`: the group's best raw score bounds its weighted
            // scores from above; below the k-th best so far, none can enter.
            if let (Some(&(top, _)), true) = (raw.first(), len == k) {
                if group.weight / (1.0 - hrw::unit_interval(top)) < best[k - 1].0 {
                    continue;
                }
            }
            for &(r, i) in raw.iter() {
                let score = hrw::weighted_score(group.weight, r);
                let index = group.index[i as usize];
                let ahead = |&(s, j): &(f64, u32)| s > score || (s == score && j < index);
                let at = best[..len].partition_point(ahead);
                if at >= k {
                    // The group's later entries score lower still.
                    break;
                }
                let end = len.min(k - 1);
                best.copy_within(at..end, at + 1);
                best[at] = (score, index);
                len = (len + 1).min(k);
            }
        }
        out.extend(best[..len].iter().map(|&(_, i)| i as usize));
    }

    #[inline]
    fn place(&self, uid: hrw::UidHash, _region: Option<&str>) -> Option<usize> {
        let mut best: Option<(f64, u32)> = None;
        // Heaviest group first: it usually wins, and then most other groups
        // are ruled out by a bound without computing their logarithm.
        for group in self.groups.iter().rev() {
            // Highest raw score within the group; ties to the lowest node id.
            // Groups of one (every weight distinct) skip the ranking.
            let (top, raw) = if let [seed] = *group.seeds {
                (0, hrw::score(uid.key32(), seed))
            } else {
                match hrw::argmax(uid, &group.seeds) {
                    Some(best) => best,
                    None => continue,
                }
            };
            // -ln(u) >= 1 - u, so w / (1 - u) bounds the score from above;
            // below the best so far, this group cannot win (nor tie).
            if let Some((b, _)) = best {
                if group.weight / (1.0 - hrw::unit_interval(raw)) < b {
                    continue;
                }
            }
            let score = hrw::weighted_score(group.weight, raw);
            let index = group.index[top];
            best = match best {
                Some((b, bi)) if b > score || (b == score && bi < index) => Some((b, bi)),
                _ => Some((score, index)),
            };
        }
        best.map(|(_, i)| i as usize)
    }
}
