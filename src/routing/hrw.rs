//! The rendezvous (highest random weight) core shared by every strategy.
//!
//! A uid is hashed once per request (`uid_hash`, xxh3-64); every node carries a
//! 32-bit seed computed once per node change (`NodeSeed`). The score of a
//! (uid, node) pair is the murmur3 finaliser `fmix32` of their xor: a bijective
//! 32-bit mixer with full avalanche, so the scores of one uid across nodes
//! behave as independent uniform draws, which the balance and minimal-movement
//! guarantees of rendezvous hashing rest on. It uses 32-bit lanes only, so
//! ranking N nodes vectorises (8 nodes per AVX2 instruction) and needs no
//! further hashing. Both hashes use fixed seeds: the same uid and node id give
//! the same score on every process, run and platform, with or without SIMD.
//!
//! Because the mixer is a bijection, two nodes with different seeds never tie
//! for any uid. Two distinct ids can share a 32-bit seed, though (about 1 % of
//! fleets of 10,000 ids hold such a pair): these "twins" would tie for every
//! uid. [`effective_seeds`] scores such twins with a second, independent seed
//! instead, so each takes its own share and every score still depends only on
//! the uid and the node.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed seed for uid hashes. Changing it reshuffles every user: never do that.
const UID_SEED: u64 = 0x696d_726f_7574_6531; // "imroute1"
/// Fixed seed for node-id hashes, distinct from the uid seed.
const NODE_SEED: u64 = 0x6e6f_6465_7365_6564; // "nodeseed"

/// xxh3-64 of a uid, computed once per uid per request. The full 64 bits key
/// the per-request dedupe set and the pin lookups; `key32` feeds the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UidHash(pub u64);

impl UidHash {
    /// Both halves folded into the 32 bits that are scored.
    #[inline(always)]
    pub fn key32(self) -> u32 {
        (self.0 ^ (self.0 >> 32)) as u32
    }
}

/// Hash of a uid, computed once per uid per request.
#[inline]
pub fn uid_hash(uid: &str) -> UidHash {
    UidHash(xxh3_64_with_seed(uid.as_bytes(), UID_SEED))
}

/// Seed of the second draw, used only between twins.
const TWIN_SEED: u64 = 0x7477_696e_7365_6564; // "twinseed"
/// Seed of the last resort between twins: a 64-bit hash of the id.
const KEY_SEED: u64 = 0x6e6f_6465_6b65_7931; // "nodekey1"

/// Primary 32-bit seed of a node: what every score is computed from.
#[inline]
pub fn node_seed(node_id: &str) -> u32 {
    let h = xxh3_64_with_seed(node_id.as_bytes(), NODE_SEED);
    (h ^ (h >> 32)) as u32
}

/// Everything a node contributes to scores, computed once per node change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSeed {
    /// Scored for every uid.
    pub primary: u32,
    /// Scored only against twins (nodes with the same primary seed).
    pub secondary: u32,
    /// Breaks a tie of both draws: a 64-bit hash of the id.
    pub key: u64,
}

impl NodeSeed {
    pub fn of(node_id: &str) -> Self {
        let h = xxh3_64_with_seed(node_id.as_bytes(), TWIN_SEED);
        NodeSeed {
            primary: node_seed(node_id),
            secondary: (h ^ (h >> 32)) as u32,
            key: xxh3_64_with_seed(node_id.as_bytes(), KEY_SEED),
        }
    }
}

/// The seed each node is scored with, in input order.
///
/// A node scores with its primary seed unless another node of the input shares
/// that primary ("twins": they would tie on every uid and the second would never
/// take a user). Twins score with their secondary seed instead, an independent
/// draw, so each takes exactly its own share. The table passes every known
/// node, whatever its state or health, so a drain, a weight change or a failed
/// probe never changes a node's seed: only creating or deleting a node's twin
/// does (then the other twin's users move as if it had re-joined; about
/// N / 2^32 per created node). A twin whose secondary seed is some node's
/// primary, or another twin's seed, takes the next of three draws from its
/// 64-bit id hash instead. O(N log N), once per table build.
pub fn effective_seeds(seeds: &[NodeSeed]) -> Vec<u32> {
    let mut out: Vec<u32> = seeds.iter().map(|s| s.primary).collect();
    let mut primaries = out.clone();
    primaries.sort_unstable();
    if primaries.windows(2).all(|w| w[0] != w[1]) {
        return out;
    }
    let shared = |p: u32| {
        let at = primaries.partition_point(|&q| q < p);
        primaries.get(at + 1) == Some(&p)
    };
    // Twins in key order, so the choice never depends on input order.
    let mut twins: Vec<usize> = (0..seeds.len())
        .filter(|&i| shared(seeds[i].primary))
        .collect();
    twins.sort_unstable_by_key(|&i| (seeds[i].key, i));
    let mut used: Vec<u32> = Vec::with_capacity(twins.len());
    for i in twins {
        let s = seeds[i];
        // The first draw that no node scores with already: a seed equal to
        // another node's would tie with it on every uid.
        let choices = [
            s.secondary,
            (s.key ^ (s.key >> 32)) as u32,
            s.key as u32,
            (s.key >> 32) as u32,
        ];
        let free = |c: &u32| primaries.binary_search(c).is_err() && !used.contains(c);
        // Past the three, further draws from the id hash until one is free
        // (there are fewer nodes than seeds, so this ends): crafted ids
        // cannot block every choice.
        let seed = choices.iter().copied().find(free).unwrap_or_else(|| {
            let mut x = s.key;
            loop {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let z = fmix64(x);
                let c = (z ^ (z >> 32)) as u32;
                if free(&c) {
                    break c;
                }
            }
        });
        used.push(seed);
        out[i] = seed;
    }
    out
}

/// 64-bit finaliser (murmur3 `fmix64`), for further twin draws.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Score of a (uid, node) pair.
#[inline(always)]
pub fn score(uid: u32, seed: u32) -> u32 {
    let mut x = uid ^ seed;
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// Scores are computed in blocks of this many nodes on the stack.
const BLOCK: usize = 64;

/// The portable body of [`argmax`]; compiled once per instruction set.
#[inline(always)]
fn argmax_body(uid: u32, seeds: &[u32]) -> Option<(usize, u32)> {
    let mut best: Option<(usize, u32)> = None;
    for (b, block) in seeds.chunks(BLOCK).enumerate() {
        let mut buf = [0u32; BLOCK];
        let buf = &mut buf[..block.len()];
        for (out, &seed) in buf.iter_mut().zip(block) {
            *out = score(uid, seed);
        }
        let top = buf.iter().copied().fold(0, u32::max);
        // Strictly greater: a tie keeps the earlier block, and `position`
        // finds the first index within a block, so ties go to the lowest index.
        if best.is_none_or(|(_, s)| top > s) {
            let i = buf.iter().position(|&s| s == top).unwrap_or(0);
            best = Some((b * BLOCK + i, top));
        }
    }
    best
}

/// [`argmax_body`] in one pass of AVX2 over 8 nodes at a time: each lane
/// keeps its best score and that score's index (strictly greater wins, and
/// a lane sees its indexes in increasing order, so a tie keeps the lowest),
/// the last `len % 8` nodes are scored in one masked step (the missing
/// lanes are never loaded and never win), then the 8 lanes are reduced
/// (highest score, then lowest index). No buffer, no second scan, no scalar
/// tail: about a third of the instructions of the portable body.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn argmax_avx2(uid: u32, seeds: &[u32]) -> Option<(usize, u32)> {
    use std::arch::x86_64::*;
    /// `&LANES[8 - r..][..8]`: the first `r` lanes set.
    const LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    if seeds.is_empty() {
        return None;
    }
    let full = seeds.len() / 8 * 8;
    let rest = seeds.len() - full;
    // Scores are unsigned; AVX2 compares signed: compare them with the
    // top bit flipped.
    let flip = _mm256_set1_epi32(i32::MIN);
    let key = _mm256_set1_epi32(uid as i32);
    let m1 = _mm256_set1_epi32(0x85eb_ca6b_u32 as i32);
    let m2 = _mm256_set1_epi32(0xc2b2_ae35_u32 as i32);
    let eight = _mm256_set1_epi32(8);
    let scores = |s: __m256i| {
        let mut x = _mm256_xor_si256(s, key);
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<16>(x));
        x = _mm256_mullo_epi32(x, m1);
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<13>(x));
        x = _mm256_mullo_epi32(x, m2);
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<16>(x));
        _mm256_xor_si256(x, flip)
    };
    let mut index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Score 0 (flipped: i32::MIN) at each lane's first index: what a lane
    // whose every score is 0 answers, as the portable body does. With fewer
    // than 8 nodes, a lane past the end keeps an index past the end and
    // score 0, and loses to lane 0 (score 0 or more, lower index).
    let mut best_score = flip;
    let mut best_index = index;
    for chunk in seeds[..full].chunks_exact(8) {
        // SAFETY: `chunk` holds 8 u32 (32 bytes); unaligned load.
        let s = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>()) };
        let flipped = scores(s);
        let greater = _mm256_cmpgt_epi32(flipped, best_score);
        best_score = _mm256_blendv_epi8(best_score, flipped, greater);
        best_index = _mm256_blendv_epi8(best_index, index, greater);
        index = _mm256_add_epi32(index, eight);
    }
    if rest > 0 {
        // SAFETY: LANES holds 16 i32 and `8 - rest` is in 1..=7, so 8 lanes
        // from there are in bounds.
        let lanes = unsafe { _mm256_loadu_si256(LANES[8 - rest..].as_ptr().cast::<__m256i>()) };
        // SAFETY: only the first `rest` lanes are read (a masked load never
        // touches, nor faults on, the lanes outside its mask), and those
        // are the last `rest` seeds.
        let s = unsafe { _mm256_maskload_epi32(seeds[full..].as_ptr().cast::<i32>(), lanes) };
        let flipped = scores(s);
        let greater = _mm256_and_si256(_mm256_cmpgt_epi32(flipped, best_score), lanes);
        best_score = _mm256_blendv_epi8(best_score, flipped, greater);
        best_index = _mm256_blendv_epi8(best_index, index, greater);
    }
    // The 8 lanes reduced without branches (their outcome is random per
    // uid, so branches would mispredict): three rounds, each lane taking
    // its partner's pair when the partner scores higher, or the same
    // with a lower index. Indexes are below 2^31: signed compares.
    macro_rules! round {
        ($s:expr, $i:expr, $s2:expr, $i2:expr $(,)?) => {{
            let (s, i, s2, i2) = ($s, $i, $s2, $i2);
            let higher = _mm256_cmpgt_epi32(s2, s);
            let tie_lower = _mm256_and_si256(_mm256_cmpeq_epi32(s2, s), _mm256_cmpgt_epi32(i, i2));
            let take = _mm256_or_si256(higher, tie_lower);
            (
                _mm256_blendv_epi8(s, s2, take),
                _mm256_blendv_epi8(i, i2, take),
            )
        }};
    }
    let (mut s, mut i) = (best_score, best_index);
    (s, i) = round!(
        s,
        i,
        _mm256_permute2x128_si256::<0x01>(s, s),
        _mm256_permute2x128_si256::<0x01>(i, i),
    );
    (s, i) = round!(
        s,
        i,
        _mm256_shuffle_epi32::<0b01_00_11_10>(s),
        _mm256_shuffle_epi32::<0b01_00_11_10>(i),
    );
    (s, i) = round!(
        s,
        i,
        _mm256_shuffle_epi32::<0b10_11_00_01>(s),
        _mm256_shuffle_epi32::<0b10_11_00_01>(i),
    );
    let score = (_mm256_cvtsi256_si32(s) ^ i32::MIN) as u32;
    Some((_mm256_cvtsi256_si32(i) as usize, score))
}

/// Index and score of the highest score among `seeds`; equal scores go to the
/// lowest index. Callers keep `seeds` in node-id order, so a tie goes to the
/// smallest node id and the answer never depends on the order nodes were
/// created in. Uses AVX2 where the CPU has it; the result is identical.
#[inline]
pub fn argmax(uid: UidHash, seeds: &[u32]) -> Option<(usize, u32)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { argmax_avx2(uid.key32(), seeds) };
        }
    }
    argmax_body(uid.key32(), seeds)
}

/// The same as [`argmax`] without SIMD, for tests that compare the two.
pub fn argmax_portable(uid: UidHash, seeds: &[u32]) -> Option<(usize, u32)> {
    argmax_body(uid.key32(), seeds)
}

/// Most candidate lists a caller may ask for (`candidates=K`).
pub const MAX_RANK: usize = 8;

/// The k best `(score, index)` pairs of a ranking, highest score first
/// (equal scores by index, lowest first), on the stack.
#[derive(Debug, Clone, Copy)]
pub struct TopK {
    len: usize,
    items: [(u32, u32); MAX_RANK],
}

impl TopK {
    fn new() -> Self {
        TopK {
            len: 0,
            items: [(0, 0); MAX_RANK],
        }
    }

    /// Inserts `(score, index)` in order (indexes arrive ascending, so an
    /// equal score goes after) and keeps at most `k` entries.
    #[inline(always)]
    fn insert(&mut self, k: usize, score: u32, index: u32) {
        let at = self.items[..self.len].partition_point(|&(s, _)| s >= score);
        if at < k {
            let end = self.len.min(k - 1);
            self.items.copy_within(at..end, at + 1);
            self.items[at] = (score, index);
            self.len = (self.len + 1).min(k);
        }
    }

    /// The k-th best score, once there are k.
    #[inline(always)]
    fn floor(&self, k: usize) -> Option<u32> {
        (self.len == k).then(|| self.items[k - 1].0)
    }
}

impl std::ops::Deref for TopK {
    type Target = [(u32, u32)];
    fn deref(&self) -> &[(u32, u32)] {
        &self.items[..self.len]
    }
}

/// The portable body of [`top_k`] for one K; compiled once per instruction
/// set.
///
/// Per block of 64 nodes: the scores in one vectorised pass (as in
/// [`argmax`]), then up to K vectorised maximum searches, each taking the
/// best remaining score (its first position: the lowest index) and blanking
/// it; a block whose best is not above the K-th best so far is done. (A
/// single-pass lane network with an exact threshold was tried: slower.)
#[inline(always)]
fn top_k_body<const K: usize>(uid: u32, seeds: &[u32]) -> TopK {
    let mut best = TopK::new();
    for (b, block) in seeds.chunks(BLOCK).enumerate() {
        let mut buf = [0u32; BLOCK];
        let buf = &mut buf[..block.len()];
        for (out, &seed) in buf.iter_mut().zip(block) {
            *out = score(uid, seed);
        }
        let base = b * BLOCK;
        let mut taken = [usize::MAX; K];
        let mut passes = 0;
        while passes < K.min(buf.len()) {
            let top = buf.iter().copied().fold(0, u32::max);
            // Not above the K-th best: neither is anything left here (an
            // equal score here has a higher index, so it ranks after).
            if best.floor(K).is_some_and(|floor| floor >= top) {
                break;
            }
            if top == 0 {
                // Only zeros left, real ones among blanked ones: take the
                // real ones in index order (2^-32 per score).
                for (i, &s) in buf.iter().enumerate() {
                    if s == 0 && !taken[..passes].contains(&i) {
                        best.insert(K, 0, (base + i) as u32);
                    }
                }
                break;
            }
            let i = buf.iter().position(|&s| s == top).unwrap_or(0);
            best.insert(K, top, (base + i) as u32);
            buf[i] = 0;
            taken[passes] = i;
            passes += 1;
        }
    }
    best
}

/// [`top_k_body`] for a K known at run time.
#[inline(always)]
fn top_k_any(uid: u32, seeds: &[u32], k: usize) -> TopK {
    match k {
        1 => top_k_body::<1>(uid, seeds),
        2 => top_k_body::<2>(uid, seeds),
        3 => top_k_body::<3>(uid, seeds),
        4 => top_k_body::<4>(uid, seeds),
        5 => top_k_body::<5>(uid, seeds),
        6 => top_k_body::<6>(uid, seeds),
        7 => top_k_body::<7>(uid, seeds),
        _ => top_k_body::<8>(uid, seeds),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn top_k_avx2(uid: u32, seeds: &[u32], k: usize) -> TopK {
    top_k_any(uid, seeds, k)
}

/// The `k` (at most [`MAX_RANK`]) highest scores among `seeds` with their
/// indexes, highest first; equal scores in index order. The first is
/// [`argmax`]'s answer, and without it the second would be: rendezvous
/// scores of one node do not depend on the others.
#[inline]
pub fn top_k(uid: UidHash, seeds: &[u32], k: usize) -> TopK {
    let k = k.min(MAX_RANK);
    if k == 0 {
        return TopK::new();
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { top_k_avx2(uid.key32(), seeds, k) };
        }
    }
    top_k_any(uid.key32(), seeds, k)
}

/// Maps a score to a uniform draw in the open interval (0, 1).
#[inline(always)]
pub fn unit_interval(score: u32) -> f64 {
    // Offset by half a step so that 0 and 1 are never hit (ln(0) would be
    // -inf and ln(1) zero); every value is exact in an f64.
    (f64::from(score) + 0.5) * (1.0 / 4_294_967_296.0)
}

/// Weighted rendezvous score (logarithmic method, Schindelhauer and Schomaker):
/// `w / -ln(u)`. A node's chance to win is exactly `w / Σw`, and the score of one
/// node does not depend on the others, so a weight change moves users only to or
/// from the changed node.
#[inline(always)]
pub fn weighted_score(weight: f64, score: u32) -> f64 {
    weight / -ln(unit_interval(score))
}

/// Natural logarithm of a positive, finite, normal `x`, from IEEE basic
/// operations only. The platform's `ln` may differ in the last bit between C
/// libraries; this one gives the same bits everywhere, so weighted answers are
/// identical on every replica. Accurate to about 1e-16 relative.
#[inline]
pub fn ln(x: f64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    const SQRT2: f64 = std::f64::consts::SQRT_2;
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // Mantissa in [1, 2), then moved to [sqrt(2)/2, sqrt(2)) so s stays small.
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT2 {
        m *= 0.5;
        exponent += 1;
    }
    // ln(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m-1)/(m+1) < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0
                    + s2 * (1.0 / 9.0
                        + s2 * (1.0 / 11.0
                            + s2 * (1.0 / 13.0
                                + s2 * (1.0 / 15.0
                                    + s2 * (1.0 / 17.0 + s2 * (1.0 / 19.0 + s2 / 21.0)))))))));
    exponent as f64 * LN2 + 2.0 * s * series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_builds_and_platforms() {
        // Golden values: if these change, every deployed user would move.
        assert_eq!(uid_hash("user1"), uid_hash("user1"));
        assert_ne!(uid_hash("user1"), uid_hash("user2"));
        assert_eq!(score(0, 0), 0);
        assert_ne!(score(1, 0), score(2, 0));
    }

    #[test]
    fn unit_interval_never_reaches_its_bounds() {
        assert!(unit_interval(0) > 0.0);
        assert!(unit_interval(u32::MAX) < 1.0);
        assert!(weighted_score(1.0, 0).is_finite());
        assert!(weighted_score(1.0, u32::MAX).is_finite());
    }

    #[test]
    fn ln_matches_the_platform_to_a_few_ulps() {
        for i in 0..100_000u32 {
            let x = unit_interval(i.wrapping_mul(2_654_435_761));
            let (a, b) = (ln(x), x.ln());
            assert!(
                (a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1e-300),
                "ln({x}): {a} vs {b}"
            );
        }
        assert_eq!(ln(1.0), 0.0);
        assert!((ln(2.0) - std::f64::consts::LN_2).abs() < 1e-16);
    }

    #[test]
    fn argmax_breaks_ties_towards_the_lowest_index() {
        let uid = UidHash(12345);
        assert_eq!(argmax(uid, &[7, 7, 7]).map(|b| b.0), Some(0));
        assert_eq!(argmax(uid, &[]), None);
        // A tie across blocks keeps the earlier block.
        let seeds = vec![9u32; 3 * BLOCK + 5];
        assert_eq!(argmax(uid, &seeds).map(|b| b.0), Some(0));
    }

    #[test]
    fn twins_score_with_their_secondary_seed_and_both_take_users() {
        // Two real ids whose primary seeds collide.
        let (a, b) = (NodeSeed::of("gw-27287"), NodeSeed::of("gw-84159"));
        assert_eq!(a.primary, b.primary, "the pair must collide for this test");
        assert_ne!(a.secondary, b.secondary);
        let other = NodeSeed::of("gw-1");
        assert_eq!(effective_seeds(&[a, other]), vec![a.primary, other.primary]);
        let seeds = effective_seeds(&[a, other, b]);
        assert_eq!(seeds, vec![a.secondary, other.primary, b.secondary]);
        let mut wins = [0usize; 3];
        for u in 0..10_000 {
            wins[argmax(uid_hash(&format!("u{u}")), &seeds).unwrap().0] += 1;
        }
        assert!(wins.iter().all(|&w| w > 3000), "{wins:?}");
        // Twins of both draws fall back to the id hash.
        let c = NodeSeed {
            key: a.key ^ 1,
            ..a
        };
        let seeds = effective_seeds(&[a, c]);
        assert_ne!(seeds[0], seeds[1]);
        // A twin never takes a seed another node scores with.
        let d = NodeSeed {
            primary: a.secondary,
            secondary: 1,
            key: 5,
        };
        let seeds = effective_seeds(&[a, other, b, d]);
        assert_ne!(seeds[0], d.primary);
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{seeds:?}");
        // Every choice taken by crafted nodes: a further draw, never a tie.
        let e = NodeSeed {
            primary: 7,
            secondary: 8,
            key: 0x1234_5678_9abc_def0,
        };
        let f = NodeSeed { key: 99, ..e };
        let blockers: Vec<NodeSeed> = [8u32, 0x1234_5678 ^ 0x9abc_def0, 0x9abc_def0, 0x1234_5678]
            .iter()
            .map(|&p| NodeSeed {
                primary: p,
                secondary: p,
                key: u64::from(p),
            })
            .collect();
        let mut all = vec![e, f];
        all.extend(&blockers);
        let crafted = effective_seeds(&all);
        let mut unique = crafted.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{crafted:?}");
        // Input order does not matter.
        let reversed = effective_seeds(&[d, b, other, a]);
        assert_eq!(reversed, vec![seeds[3], seeds[2], seeds[1], seeds[0]]);
    }

    #[test]
    fn simd_and_portable_paths_agree() {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("simd_and_portable_paths_agree: no AVX2 here, only the portable path runs");
        }
        // Ties (equal seeds), zero scores (a seed equal to the uid's key),
        // every length around the 8-lane and 64-node blocks.
        for n in 0usize..=70 {
            for u in 0..64 {
                let uid = uid_hash(&format!("t{u}"));
                let mut seeds: Vec<u32> =
                    (0..n).map(|i| node_seed(&format!("n{}", i % 5))).collect();
                if n > 0 && u % 3 == 0 {
                    seeds[(u as usize * 7) % n] = uid.key32();
                }
                if n > 3 && u % 4 == 0 {
                    for s in seeds.iter_mut() {
                        *s = uid.key32();
                    }
                }
                assert_eq!(
                    argmax(uid, &seeds),
                    argmax_portable(uid, &seeds),
                    "n={n} u={u}"
                );
            }
        }
        for n in [1usize, 3, 8, 63, 64, 65, 100, 1000] {
            let seeds: Vec<u32> = (0..n).map(|i| node_seed(&format!("node-{i}"))).collect();
            for u in 0..500 {
                let uid = uid_hash(&format!("u{u}"));
                assert_eq!(argmax(uid, &seeds), argmax_portable(uid, &seeds), "n={n}");
            }
        }
    }
}
