//! `hash`: unweighted rendezvous hashing over all routable nodes.

use serde_json::{json, Value};

use super::{
    hrw,
    strategy::{expect_no_params, Candidate, ParamsError, Placement, StrategyKind},
};

pub struct HashKind;

impl StrategyKind for HashKind {
    fn kind(&self) -> &'static str {
        "hash"
    }

    fn description(&self) -> &'static str {
        "Rendezvous hashing: every routable node takes an equal share; adding or removing a node moves only about 1/N of the users, and none between surviving nodes."
    }

    fn params_schema(&self) -> Value {
        json!({"type": "object", "additionalProperties": false, "properties": {}})
    }

    fn validate(&self, params: &Value) -> Result<(), ParamsError> {
        expect_no_params(self.kind(), params)
    }

    fn build(&self, _params: &Value, candidates: &[Candidate<'_>]) -> Box<dyn Placement> {
        Box::new(HashPlacement::new(candidates))
    }
}

/// Unweighted rendezvous over a fixed candidate list.
pub struct HashPlacement {
    /// Candidate seeds, in candidate (node-id) order.
    seeds: Box<[u32]>,
}

impl HashPlacement {
    pub fn new(candidates: &[Candidate<'_>]) -> Self {
        Self {
            seeds: candidates.iter().map(|c| c.seed.primary).collect(),
        }
    }
}

impl Placement for HashPlacement {
    fn rank(&self, uid: hrw::UidHash, _region: Option<&str>, k: usize, out: &mut Vec<usize>) {
        let best = hrw::top_k(uid, &self.seeds, k);
        out.clear();
        out.extend(best.iter().map(|&(_, i)| i as usize));
    }

    #[inline]
    fn place(&self, uid: hrw::UidHash, _region: Option<&str>) -> Option<usize> {
        hrw::argmax(uid, &self.seeds).map(|(i, _)| i)
    }
}
