//! The routing table: one immutable snapshot of everything routing reads.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

use serde::Serialize;
use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

use super::{
    hrw,
    strategy::{self, Candidate, Placement},
};
use crate::model::{Addrs, NodeState};

/// One node as routing needs it: effective values after overrides, plus health.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInput {
    pub id: String,
    pub region: Option<String>,
    pub weight: u16,
    pub state: NodeState,
    /// False while health checks say the node is down.
    pub healthy: bool,
    pub external: Addrs,
    pub intranet: Addrs,
}

/// The active strategy.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyInput {
    pub name: String,
    pub kind: String,
    pub params: Value,
}

/// A node with everything routing derives from it computed once per change of
/// the node (seeds, answer fragments, its share of the revision), so a table
/// build over N nodes costs O(N) cheap steps however often it runs.
pub struct PreparedNode {
    pub id: Box<str>,
    pub region: Option<Box<str>>,
    pub weight: u16,
    pub state: NodeState,
    /// Whether the node has an external `tcp_addr`: without one no client
    /// can connect to it, so it never takes users.
    pub addressed: bool,
    pub seed: hrw::NodeSeed,
    /// `"tcp_addr":...,"node_id":...,"region":...}` for external and intranet
    /// answers (intranet addresses falling back to external ones field by
    /// field): the tail of every JSON object that names this node.
    fragments: [Box<[u8]>; 2],
    /// xxh3 of what routing reads of the node (not its health).
    digest: u64,
}

impl PreparedNode {
    pub fn new(n: &NodeInput) -> PreparedNode {
        let intranet = n.intranet.or(&n.external);
        let fragments = [
            fragment(&n.external, &n.id, n.region.as_deref()),
            fragment(&intranet, &n.id, n.region.as_deref()),
        ];
        let mut h = Xxh3::new();
        for part in [
            n.id.as_str(),
            n.region.as_deref().unwrap_or("\u{0}"),
            n.state.as_str(),
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&n.weight.to_le_bytes());
        h.update(&fragments[0]);
        h.update(&fragments[1]);
        PreparedNode {
            id: n.id.as_str().into(),
            region: n.region.as_deref().map(Into::into),
            weight: n.weight,
            state: n.state,
            addressed: !n.external.tcp_addr.is_empty(),
            seed: hrw::NodeSeed::of(&n.id),
            fragments,
            digest: h.digest(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the node may take users when healthy.
    pub fn eligible(&self) -> bool {
        self.state == NodeState::Active && self.weight > 0 && self.addressed
    }
}

/// The overrides file's pins and user regions, indexed once per load.
pub struct PreparedOverrides {
    /// uid -> index into `pin_targets`.
    pins: UidMap<u32>,
    /// The distinct nodes pinned to, in id order.
    pin_targets: Box<[Box<str>]>,
    user_regions: UidMap<Box<str>>,
    /// Pins per target, to count the honoured ones in O(targets).
    pins_per_target: Box<[u32]>,
    user_region_count: usize,
    digest: u64,
}

impl PreparedOverrides {
    pub fn new(
        pins: &BTreeMap<String, String>,
        user_regions: &BTreeMap<String, String>,
    ) -> PreparedOverrides {
        let mut targets: Vec<&str> = pins.values().map(String::as_str).collect();
        targets.sort_unstable();
        targets.dedup();
        let mut h = Xxh3::new();
        let mut pin_map = UidMap::new();
        let mut per_target = vec![0u32; targets.len()];
        for (uid, node) in pins {
            let t = targets.binary_search(&node.as_str()).unwrap_or(0) as u32;
            pin_map.insert(uid, t);
            per_target[t as usize] += 1;
            for part in [uid.as_str(), node.as_str()] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.update(b"\xffuser_regions");
        let mut region_map = UidMap::new();
        for (uid, region) in user_regions {
            region_map.insert(uid, Box::<str>::from(region.as_str()));
            for part in [uid.as_str(), region.as_str()] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        PreparedOverrides {
            pins: pin_map,
            pin_targets: targets.into_iter().map(Into::into).collect(),
            user_regions: region_map,
            pins_per_target: per_target.into(),
            user_region_count: user_regions.len(),
            digest: h.digest(),
        }
    }

    pub fn empty() -> PreparedOverrides {
        Self::new(&BTreeMap::new(), &BTreeMap::new())
    }
}

impl Default for PreparedOverrides {
    fn default() -> Self {
        Self::empty()
    }
}

/// A node of a table's input with its current health.
#[derive(Clone)]
pub struct TableNode {
    pub node: Arc<PreparedNode>,
    /// False while health checks say the node is down.
    pub healthy: bool,
    /// Over its bound of the reported connections (read only by kinds that
    /// use load, such as `bounded`).
    pub full: bool,
}

/// Everything a table is built from.
#[derive(Clone)]
pub struct TableInput {
    pub nodes: Vec<TableNode>,
    pub strategy: StrategyInput,
    pub overrides: Arc<PreparedOverrides>,
}

impl TableInput {
    /// Prepares everything at once (tests, benches, tools); the service
    /// prepares nodes and overrides as they change.
    pub fn prepare(
        nodes: &[NodeInput],
        strategy: StrategyInput,
        pins: &BTreeMap<String, String>,
        user_regions: &BTreeMap<String, String>,
    ) -> TableInput {
        TableInput {
            nodes: nodes
                .iter()
                .map(|n| TableNode {
                    node: Arc::new(PreparedNode::new(n)),
                    healthy: n.healthy,
                    full: false,
                })
                .collect(),
            strategy,
            overrides: Arc::new(PreparedOverrides::new(pins, user_regions)),
        }
    }
}

/// Hashes a key whose hash was computed beforehand (the uid's xxh3).
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Hashed`; keep a sane answer regardless.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A per-process random key for the dedupe slots: uid hashes use a public
/// seed, so without it anyone could craft uids that all land in one run of
/// slots and make a batch quadratic.
fn slot_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b) | 1
    })
}

/// The keyed slot of a uid hash (murmur3 `fmix64` of hash xor key).
#[inline]
fn slot_of(hash: u64, key: u64) -> u64 {
    let mut x = hash ^ key;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The uids of one batch seen so far: open addressing over the uids' routing
/// hashes (no rehashing), linear probing, sized to at most half full.
struct SeenSet {
    /// Position in the batch + 1 of the uid in each slot; 0 is empty.
    slots: Vec<u32>,
    mask: usize,
    /// `slot_key()`, read once per batch.
    key: u64,
}

impl SeenSet {
    fn with_capacity(n: usize) -> Self {
        let size = if n > 1 {
            (2 * n).next_power_of_two()
        } else {
            0
        };
        SeenSet {
            slots: vec![0; size],
            mask: size.wrapping_sub(1),
            key: slot_key(),
        }
    }

    /// Adds the uid at `pos`; false when an equal uid was added before.
    #[inline]
    fn insert(&mut self, hash: u64, pos: usize, hashes: &[u64], uids: &[&str]) -> bool {
        let mut slot = (slot_of(hash, self.key) as usize) & self.mask;
        loop {
            match self.slots[slot] {
                0 => {
                    self.slots[slot] = pos as u32 + 1;
                    return true;
                }
                other => {
                    let seen = other as usize - 1;
                    if hashes[seen] == hash && uids[seen] == uids[pos] {
                        return false;
                    }
                    slot = (slot + 1) & self.mask;
                }
            }
        }
    }
}

type Bucket<V> = Vec<(Box<str>, V)>;

/// uid -> value, keyed by the uid's routing hash.
struct UidMap<V> {
    map: HashMap<u64, Bucket<V>, BuildHasherDefault<PassThrough>>,
}

impl<V> UidMap<V> {
    fn new() -> Self {
        Self {
            map: HashMap::default(),
        }
    }
    fn insert(&mut self, uid: &str, value: V) {
        self.map
            .entry(hrw::uid_hash(uid).0)
            .or_default()
            .push((uid.into(), value));
    }
    #[inline]
    fn get(&self, hash: u64, uid: &str) -> Option<&V> {
        if self.map.is_empty() {
            return None;
        }
        self.map
            .get(&hash)?
            .iter()
            .find(|(k, _)| &**k == uid)
            .map(|(_, v)| v)
    }
}

/// Counts describing a table, for `GET /admin/routing` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    pub nodes_total: usize,
    pub nodes_routable: usize,
    pub pins: usize,
    pub user_regions: usize,
}

/// An immutable routing snapshot.
pub struct Table {
    /// Hex, ASCII; shared bytes so that every answer's header is a
    /// reference count, not a copy.
    revision: bytes::Bytes,
    strategy: StrategyInput,
    nodes: Vec<Arc<PreparedNode>>,
    placement: Box<dyn Placement>,
    uses_region: bool,
    overrides: Arc<PreparedOverrides>,
    /// Per pin target: its index among `nodes`, or `NOT_ROUTABLE`.
    pin_node: Box<[u32]>,
    /// Per routable node: its index in the input's node list.
    source: Box<[u32]>,
    panic: bool,
    stats: TableStats,
    /// The longest answer fragment of a routable node.
    max_fragment: usize,
}

const NOT_ROUTABLE: u32 = u32::MAX;

/// Why a batch could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoutableNode;

impl Table {
    /// Builds a table. Unroutable nodes (not active, weight 0, no external
    /// `tcp_addr`, unhealthy) take no users; when health alone leaves no node,
    /// every eligible node is used anyway (panic mode: fail open rather than
    /// refuse everyone). O(N log N) in the nodes, O(distinct pin targets) in
    /// the pins: the overrides were indexed when they were loaded.
    pub fn build(input: &TableInput) -> Table {
        // Twins are found among all nodes, whatever their state or health, so
        // a drain or a failed probe never changes which seed a node scores with.
        let seeds: Vec<hrw::NodeSeed> = input.nodes.iter().map(|n| n.node.seed).collect();
        let scored = hrw::effective_seeds(&seeds);
        // (input index, node), in id order.
        let mut nodes: Vec<(u32, &TableNode)> = (0u32..).zip(&input.nodes).collect();
        if !nodes.is_sorted_by(|a, b| a.1.node.id <= b.1.node.id) {
            nodes.sort_by(|a, b| a.1.node.id.cmp(&b.1.node.id));
        }
        nodes.retain(|(_, n)| n.node.eligible());
        let panic = !nodes.is_empty() && nodes.iter().all(|(_, n)| !n.healthy);
        if !panic {
            nodes.retain(|(_, n)| n.healthy);
        }
        // Candidate indexes are u32 throughout.
        nodes.truncate(u32::MAX as usize - 1);
        let source: Box<[u32]> = nodes.iter().map(|(i, _)| *i).collect();
        let routable: Vec<Arc<PreparedNode>> = nodes.iter().map(|(_, n)| n.node.clone()).collect();

        let candidates: Vec<Candidate<'_>> = routable
            .iter()
            .zip(&source)
            .map(|(n, &i)| Candidate {
                id: &n.id,
                region: n.region.as_deref(),
                weight: n.weight,
                seed: hrw::NodeSeed {
                    primary: scored[i as usize],
                    ..n.seed
                },
                full: false,
            })
            .collect();
        let kind = strategy::kind(&input.strategy.kind).unwrap_or(strategy::BUILTIN[0]);
        // The full flags count only for kinds that read them: for the
        // others they neither change answers nor the revision.
        let uses_load = kind.uses_load();
        let candidates: Vec<Candidate<'_>> = candidates
            .into_iter()
            .zip(&nodes)
            .map(|(c, (_, n))| Candidate {
                full: uses_load && n.full,
                ..c
            })
            .collect();
        let placement = kind.build(&input.strategy.params, &candidates);
        let uses_region = placement.uses_region();

        // Both lists are in id order: one merge.
        let mut walk = routable.iter().enumerate().peekable();
        let pin_node = input
            .overrides
            .pin_targets
            .iter()
            .map(|t| {
                while walk.next_if(|(_, n)| *n.id < **t).is_some() {}
                walk.peek()
                    .filter(|(_, n)| *n.id == **t)
                    .map_or(NOT_ROUTABLE, |(i, _)| *i as u32)
            })
            .collect::<Box<[u32]>>();
        let pins = pin_node
            .iter()
            .zip(input.overrides.pins_per_target.iter())
            .filter(|(&i, _)| i != NOT_ROUTABLE)
            .map(|(_, &n)| n as usize)
            .sum();

        let stats = TableStats {
            nodes_total: input.nodes.len(),
            nodes_routable: if panic { 0 } else { routable.len() },
            pins,
            user_regions: input.overrides.user_region_count,
        };
        let max_fragment = routable
            .iter()
            .flat_map(|n| n.fragments.iter().map(|f| f.len()))
            .max()
            .unwrap_or(0);
        Table {
            max_fragment,
            revision: bytes::Bytes::from(revision_of(input, &routable, &candidates, panic)),
            strategy: input.strategy.clone(),
            nodes: routable,
            placement,
            uses_region,
            overrides: input.overrides.clone(),
            pin_node,
            source,
            panic,
            stats,
        }
    }

    /// A content hash of what routing reads: equal inputs give equal revisions,
    /// on every replica and after restarts.
    pub fn revision(&self) -> &str {
        std::str::from_utf8(&self.revision).unwrap_or_default()
    }

    /// The revision as shared bytes (for a header).
    pub fn revision_bytes(&self) -> bytes::Bytes {
        self.revision.clone()
    }

    pub fn strategy(&self) -> &StrategyInput {
        &self.strategy
    }

    /// True when no node is healthy and the table routes over all active ones.
    pub fn panic_mode(&self) -> bool {
        self.panic
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Bytes of the longest node object in an answer (`{` and fragment).
    pub fn max_node_json(&self) -> usize {
        self.max_fragment + 1
    }

    /// The nodes users can be placed on, in node-id order.
    pub fn nodes(&self) -> &[Arc<PreparedNode>] {
        &self.nodes
    }

    /// Per routable node (as in `nodes`), its index in the input's node list.
    pub fn sources(&self) -> &[u32] {
        &self.source
    }

    /// The node index for one uid.
    #[inline]
    pub fn route(&self, uid: &str, region_hint: Option<&str>) -> Option<usize> {
        self.route_hashed(uid, hrw::uid_hash(uid), region_hint)
    }

    #[inline]
    fn route_hashed(
        &self,
        uid: &str,
        hash: hrw::UidHash,
        region_hint: Option<&str>,
    ) -> Option<usize> {
        if let Some(i) = self.pinned(uid, hash) {
            return Some(i);
        }
        self.placement
            .place(hash, self.region_of(uid, hash, region_hint))
    }

    /// The routable node a uid is pinned to.
    #[inline(always)]
    fn pinned(&self, uid: &str, hash: hrw::UidHash) -> Option<usize> {
        let &t = self.overrides.pins.get(hash.0, uid)?;
        let i = self.pin_node[t as usize];
        (i != NOT_ROUTABLE).then_some(i as usize)
    }

    /// The region the placement reads: the overrides' user region, else the
    /// request's hint (only for kinds that read one).
    #[inline(always)]
    fn region_of<'a>(
        &'a self,
        uid: &str,
        hash: hrw::UidHash,
        region_hint: Option<&'a str>,
    ) -> Option<&'a str> {
        if self.uses_region {
            self.overrides
                .user_regions
                .get(hash.0, uid)
                .map(|r| &**r)
                .or(region_hint)
        } else {
            None
        }
    }

    /// Up to `k` routable nodes (indexes into [`Table::nodes`]) in the user's
    /// order of preference, into `out`: the first is [`Table::route`]'s
    /// answer, and when it becomes unroutable the user is placed on the
    /// second, and so on. A pin comes first; the strategy's ranking follows.
    /// `k` is at most [`hrw::MAX_RANK`].
    pub fn rank(&self, uid: &str, region_hint: Option<&str>, k: usize, out: &mut Vec<usize>) {
        self.rank_hashed(uid, hrw::uid_hash(uid), region_hint, k, out)
    }

    fn rank_hashed(
        &self,
        uid: &str,
        hash: hrw::UidHash,
        region_hint: Option<&str>,
        k: usize,
        out: &mut Vec<usize>,
    ) {
        let k = k.min(hrw::MAX_RANK);
        let region = self.region_of(uid, hash, region_hint);
        match self.pinned(uid, hash) {
            Some(pin) if k > 0 => {
                let mut rest = Vec::with_capacity(k + 1);
                self.placement.rank(hash, region, k, &mut rest);
                out.clear();
                out.push(pin);
                out.extend(rest.into_iter().filter(|&i| i != pin).take(k - 1));
            }
            _ => self.placement.rank(hash, region, k, out),
        }
    }

    /// The JSON object answering `GET /route?candidates=K` for one user: the
    /// answer itself plus `"candidates"`, its first entry being the answer.
    pub fn route_one_candidates_json(
        &self,
        uid: &str,
        region_hint: Option<&str>,
        intranet: bool,
        k: usize,
    ) -> Result<(usize, Vec<u8>), NoRoutableNode> {
        let k = k.clamp(1, hrw::MAX_RANK);
        let mut ranked = Vec::with_capacity(k);
        self.rank(uid, region_hint, k, &mut ranked);
        let &first = ranked.first().ok_or(NoRoutableNode)?;
        let at = usize::from(intranet);
        let frag = &self.nodes[first].fragments[at];
        let mut out = Vec::with_capacity((frag.len() + 2) * (k + 1) + 16);
        out.push(b'{');
        out.extend_from_slice(&frag[..frag.len() - 1]);
        out.extend_from_slice(b",\"candidates\":");
        self.write_candidates(&mut out, ranked.iter().copied(), at);
        out.push(b'}');
        Ok((first, out))
    }

    fn write_candidates(&self, out: &mut Vec<u8>, list: impl Iterator<Item = usize>, at: usize) {
        out.push(b'[');
        for (n, i) in list.enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'{');
            out.extend_from_slice(&self.nodes[i].fragments[at]);
        }
        out.push(b']');
    }

    /// `POST /route/batch?candidates=K`: users grouped by their whole
    /// candidate list; each group carries `"candidates"` and, at the top
    /// level, the first candidate's fields. Order and duplicates as in
    /// [`Table::route_batch_json`]; `per_node` counts the first candidate.
    pub fn route_batch_candidates_json(
        &self,
        uids: &[&str],
        region_hint: Option<&str>,
        intranet: bool,
        k: usize,
        mut per_node: impl FnMut(usize, usize),
    ) -> Result<Vec<u8>, NoRoutableNode> {
        if uids.is_empty() {
            return Ok(b"[]".to_vec());
        }
        if self.nodes.is_empty() {
            return Err(NoRoutableNode);
        }
        let k = k.clamp(1, hrw::MAX_RANK);
        const SKIP: u32 = u32::MAX;
        type Key = [u32; hrw::MAX_RANK];
        let mut group_of: HashMap<Key, u32> = HashMap::new();
        let mut group_key: Vec<(Key, usize)> = Vec::new();
        let mut group_len: Vec<u32> = Vec::new();
        let mut assigned: Vec<u32> = Vec::with_capacity(uids.len());
        let mut seen = SeenSet::with_capacity(uids.len());
        let mut hashes: Vec<u64> = Vec::with_capacity(uids.len());
        let mut ranked = Vec::with_capacity(k + 1);
        for &uid in uids {
            let hash = hrw::uid_hash(uid);
            hashes.push(hash.0);
            if uids.len() > 1 && !seen.insert(hash.0, hashes.len() - 1, &hashes, uids) {
                assigned.push(SKIP);
                continue;
            }
            self.rank_hashed(uid, hash, region_hint, k, &mut ranked);
            if ranked.is_empty() {
                return Err(NoRoutableNode);
            }
            let mut key: Key = [SKIP; hrw::MAX_RANK];
            for (slot, &i) in key.iter_mut().zip(&ranked) {
                *slot = i as u32;
            }
            let g = *group_of.entry(key).or_insert_with(|| {
                group_key.push((key, ranked.len()));
                group_len.push(0);
                group_key.len() as u32 - 1
            });
            group_len[g as usize] += 1;
            assigned.push(g);
        }
        let at = usize::from(intranet);
        let text: usize = uids.iter().map(|u| u.len() + 3).sum();
        let capacity = text + group_len.len() * 160 * (k + 1) + 2;
        let out = self.write_groups(uids, false, &assigned, &group_len, capacity, |out, g| {
            let (key, len) = &group_key[g];
            out.extend_from_slice(b"\"candidates\":");
            self.write_candidates(out, key[..*len].iter().map(|&i| i as usize), at);
            out.push(b',');
            let first = key[0] as usize;
            out.extend_from_slice(&self.nodes[first].fragments[at]);
            per_node(first, group_len[g] as usize);
        });
        Ok(out)
    }

    /// Passes 2 and 3 of a batch: a counting sort of uid positions by group
    /// (input order kept), then `[{"uids":[...],` + `tail(group)` per group.
    #[inline(always)]
    fn write_groups(
        &self,
        uids: &[&str],
        plain: bool,
        assigned: &[u32],
        group_len: &[u32],
        capacity: usize,
        mut tail: impl FnMut(&mut Vec<u8>, usize),
    ) -> Vec<u8> {
        const SKIP: u32 = u32::MAX;
        let mut start: Vec<u32> = Vec::with_capacity(group_len.len() + 1);
        let mut acc = 0u32;
        for &len in group_len {
            start.push(acc);
            acc += len;
        }
        let mut order = vec![0u32; acc as usize];
        let mut fill = start.clone();
        for (pos, &g) in assigned.iter().enumerate() {
            if g != SKIP {
                order[fill[g as usize] as usize] = pos as u32;
                fill[g as usize] += 1;
            }
        }
        let mut out = Vec::with_capacity(capacity);
        out.push(b'[');
        for g in 0..group_len.len() {
            if g > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"uids\":[");
            let from = start[g] as usize;
            let to = from + group_len[g] as usize;
            for (n, &pos) in order[from..to].iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_uid(&mut out, uids[pos as usize], plain);
            }
            out.extend_from_slice(b"],");
            tail(&mut out, g);
        }
        out.push(b']');
        out
    }

    /// The JSON object answering `GET /route` for one uid.
    pub fn route_one_json(
        &self,
        uid: &str,
        region_hint: Option<&str>,
        intranet: bool,
    ) -> Result<(usize, Vec<u8>), NoRoutableNode> {
        let i = self.route(uid, region_hint).ok_or(NoRoutableNode)?;
        let frag = &self.nodes[i].fragments[usize::from(intranet)];
        let mut out = Vec::with_capacity(frag.len() + 1);
        out.push(b'{');
        out.extend_from_slice(frag);
        Ok((i, out))
    }

    /// Routes a batch and writes the JSON answer: groups in order of the first
    /// appearance of their first uid, uids in input order, duplicates once.
    /// `per_node[i]` receives the number of uids placed on node `i`. With
    /// `plain`, the caller vouches that no uid needs escaping in JSON (none
    /// holds a quote, a backslash or a control character), and the uids are
    /// copied without a check.
    pub fn route_batch_json(
        &self,
        uids: &[&str],
        region_hint: Option<&str>,
        intranet: bool,
        plain: bool,
        mut per_node: impl FnMut(usize, usize),
    ) -> Result<Vec<u8>, NoRoutableNode> {
        debug_assert!(
            !plain || uids.iter().all(|u| !needs_escape(u)),
            "a uid said to be plain needs escaping"
        );
        if uids.is_empty() {
            return Ok(b"[]".to_vec());
        }
        if self.nodes.is_empty() {
            return Err(NoRoutableNode);
        }
        if let [uid] = uids {
            // One user (a client asking for itself): one group, no
            // bookkeeping, one allocation.
            let node = self.route(uid, region_hint).ok_or(NoRoutableNode)?;
            let frag = &self.nodes[node].fragments[usize::from(intranet)];
            let mut out = Vec::with_capacity(16 + 2 * uid.len() + frag.len());
            out.extend_from_slice(b"[{\"uids\":[");
            write_uid(&mut out, uid, plain);
            out.extend_from_slice(b"],");
            out.extend_from_slice(frag);
            out.push(b']');
            per_node(node, 1);
            return Ok(out);
        }
        const SKIP: u32 = u32::MAX;
        // Pass 1: place every distinct uid and number the groups by first use.
        let mut group_of_node = vec![SKIP; self.nodes.len()];
        let mut group_node: Vec<u32> = Vec::new();
        let mut group_len: Vec<u32> = Vec::new();
        let mut assigned: Vec<u32> = Vec::with_capacity(uids.len());
        let mut seen = SeenSet::with_capacity(uids.len());
        let mut hashes: Vec<u64> = Vec::with_capacity(uids.len());
        let mut out_len = 2usize;
        for &uid in uids {
            let hash = hrw::uid_hash(uid);
            hashes.push(hash.0);
            if uids.len() > 1 && !seen.insert(hash.0, hashes.len() - 1, &hashes, uids) {
                assigned.push(SKIP);
                continue;
            }
            let node = self
                .route_hashed(uid, hash, region_hint)
                .ok_or(NoRoutableNode)?;
            let g = &mut group_of_node[node];
            if *g == SKIP {
                *g = group_node.len() as u32;
                group_node.push(node as u32);
                group_len.push(0);
                out_len += 12 + self.nodes[node].fragments[usize::from(intranet)].len();
            }
            group_len[*g as usize] += 1;
            assigned.push(*g);
            out_len += uid.len() + 3;
        }
        let frags = |node: u32| &self.nodes[node as usize].fragments[usize::from(intranet)];
        Ok(
            self.write_groups(uids, plain, &assigned, &group_len, out_len, |out, g| {
                let node = group_node[g];
                out.extend_from_slice(frags(node));
                per_node(node as usize, group_len[g] as usize);
            }),
        )
    }
}

/// Whether a string needs escaping in JSON (a quote, a backslash or a
/// control character below U+0020). A branch-free fold (no early exit) that
/// the compiler can vectorise.
#[inline]
fn needs_escape(s: &str) -> bool {
    s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Writes a uid as a JSON string literal; `plain` vouches that it needs no
/// escaping (see [`Table::route_batch_json`]).
#[inline(always)]
fn write_uid(out: &mut Vec<u8>, uid: &str, plain: bool) {
    if plain {
        out.push(b'"');
        out.extend_from_slice(uid.as_bytes());
        out.push(b'"');
    } else {
        write_json_str(out, uid);
    }
}

/// Writes a JSON string literal. Uids carry no control characters (the API
/// rejects them), so only quotes and backslashes can need escaping.
#[inline]
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if needs_escape(s) {
        let quoted = serde_json::to_string(s).expect("serialising a str cannot fail");
        out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    } else {
        out.extend_from_slice(s.as_bytes());
    }
    out.push(b'"');
}

fn fragment(addrs: &Addrs, id: &str, region: Option<&str>) -> Box<[u8]> {
    let mut out = Vec::new();
    for (key, value) in [
        ("tcp_addr", addrs.tcp_addr.as_str()),
        ("ws_addr", &addrs.ws_addr),
        ("wss_addr", &addrs.wss_addr),
        ("node_id", id),
        ("region", region.unwrap_or("")),
    ] {
        if key != "tcp_addr" {
            out.push(b',');
        }
        write_json_str(&mut out, key);
        out.push(b':');
        write_json_str(&mut out, value);
    }
    out.push(b'}');
    out.into()
}

/// The revision: every input routing reads, including the seed a node
/// scores with when a twin (routable or not) makes it differ from its own,
/// and the full set when the kind reads it.
fn revision_of(
    input: &TableInput,
    routable: &[Arc<PreparedNode>],
    candidates: &[Candidate<'_>],
    panic: bool,
) -> String {
    let mut h = Xxh3::new();
    h.update(&(routable.len() as u64).to_le_bytes());
    for (n, c) in routable.iter().zip(candidates) {
        h.update(&n.digest.to_le_bytes());
        if c.seed.primary != n.seed.primary {
            h.update(&c.seed.primary.to_le_bytes());
        }
        if c.full {
            h.update(b"\xfffull");
        }
    }
    serde_json::to_writer(HashWriter(&mut h), &input.strategy)
        .expect("serialising a strategy cannot fail");
    h.update(&input.overrides.digest.to_le_bytes());
    h.update(&[u8::from(panic)]);
    format!("{:016x}", h.digest())
}

struct HashWriter<'a>(&'a mut Xxh3);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes that agree in their low bits (what a crafted batch would
    /// send) still spread over the slots: probe runs stay short.
    #[test]
    fn dedupe_slots_do_not_follow_the_public_hash() {
        let n = 10_000usize;
        let hashes: Vec<u64> = (0..n as u64).map(|i| i << 20).collect();
        let uids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = uids.iter().map(String::as_str).collect();
        let mut seen = SeenSet::with_capacity(n);
        let mut longest = 0;
        for pos in 0..n {
            let mut slot = (slot_of(hashes[pos], seen.key) as usize) & seen.mask;
            let mut run = 0;
            while seen.slots[slot] != 0 {
                slot = (slot + 1) & seen.mask;
                run += 1;
            }
            longest = longest.max(run);
            assert!(seen.insert(hashes[pos], pos, &hashes, &refs));
        }
        assert!(longest < 64, "longest probe run {longest}");
        assert!(!seen.insert(hashes[5], 5, &hashes, &refs));
    }
}
