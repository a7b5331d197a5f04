//! The routing table: one immutable snapshot of everything routing reads.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasherDefault, Hasher},
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

/// Everything a table is built from.
#[derive(Debug, Clone, Serialize)]
pub struct TableInput {
    pub nodes: Vec<NodeInput>,
    pub strategy: StrategyInput,
    /// uid -> node id; honoured while that node is routable.
    pub pins: BTreeMap<String, String>,
    /// uid -> region, read by strategies that use regions.
    pub user_regions: BTreeMap<String, String>,
}

/// A routable node of a table, with its answer pre-serialised.
pub struct RouteNode {
    pub id: Box<str>,
    pub region: Option<Box<str>>,
    /// `"tcp_addr":...,"node_id":...,"region":...}` for external and intranet
    /// answers (intranet addresses falling back to external ones field by
    /// field): the tail of every JSON object that names this node.
    fragments: [Box<[u8]>; 2],
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

/// The uids of one batch seen so far: open addressing over the uids' routing
/// hashes (no rehashing), linear probing, sized to at most half full.
struct SeenSet {
    /// Position in the batch + 1 of the uid in each slot; 0 is empty.
    slots: Vec<u32>,
    mask: usize,
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
        }
    }

    /// Adds the uid at `pos`; false when an equal uid was added before.
    #[inline]
    fn insert(&mut self, hash: u64, pos: usize, hashes: &[u64], uids: &[&str]) -> bool {
        let mut slot = (hash as usize) & self.mask;
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
    fn len(&self) -> usize {
        self.map.values().map(Vec::len).sum()
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
    revision: String,
    strategy: StrategyInput,
    nodes: Vec<RouteNode>,
    placement: Box<dyn Placement>,
    uses_region: bool,
    pins: UidMap<u32>,
    user_regions: UidMap<Box<str>>,
    panic: bool,
    stats: TableStats,
}

/// Why a batch could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoutableNode;

impl Table {
    /// Builds a table. Unroutable nodes (not active, weight 0, unhealthy) take
    /// no users; when health alone leaves no node, every active node with a
    /// weight is used anyway (panic mode: fail open rather than refuse everyone).
    pub fn build(input: &TableInput) -> Table {
        let mut nodes: Vec<&NodeInput> = input.nodes.iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let eligible: Vec<&NodeInput> = nodes
            .iter()
            .copied()
            .filter(|n| n.state == NodeState::Active && n.weight > 0)
            .collect();
        let healthy: Vec<&NodeInput> = eligible.iter().copied().filter(|n| n.healthy).collect();
        let panic = healthy.is_empty() && !eligible.is_empty();
        let mut routable = if panic { eligible } else { healthy };
        // Candidate indexes are u32 throughout.
        routable.truncate(u32::MAX as usize);

        let candidates: Vec<Candidate<'_>> = routable
            .iter()
            .map(|n| Candidate {
                id: &n.id,
                region: n.region.as_deref(),
                weight: n.weight,
                seed: hrw::node_seed(&n.id),
            })
            .collect();
        let kind = strategy::kind(&input.strategy.kind).unwrap_or(strategy::BUILTIN[0]);
        let placement = kind.build(&input.strategy.params, &candidates);
        let uses_region = placement.uses_region();

        let index: HashMap<&str, u32> = routable
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i as u32))
            .collect();
        let mut pins = UidMap::new();
        for (uid, node) in &input.pins {
            if let Some(&i) = index.get(node.as_str()) {
                pins.insert(uid, i);
            }
        }
        let mut user_regions = UidMap::new();
        if uses_region {
            for (uid, region) in &input.user_regions {
                user_regions.insert(uid, Box::<str>::from(region.as_str()));
            }
        }

        let route_nodes: Vec<RouteNode> = routable
            .iter()
            .map(|n| {
                let intranet = n.intranet.or(&n.external);
                let fragments = [
                    fragment(&n.external, &n.id, n.region.as_deref()),
                    fragment(&intranet, &n.id, n.region.as_deref()),
                ];
                RouteNode {
                    id: n.id.as_str().into(),
                    region: n.region.as_deref().map(Into::into),
                    fragments,
                }
            })
            .collect();

        let stats = TableStats {
            nodes_total: input.nodes.len(),
            nodes_routable: if panic { 0 } else { route_nodes.len() },
            pins: pins.len(),
            user_regions: input.user_regions.len(),
        };
        Table {
            revision: revision_of(input, &routable, panic),
            strategy: input.strategy.clone(),
            nodes: route_nodes,
            placement,
            uses_region,
            pins,
            user_regions,
            panic,
            stats,
        }
    }

    /// A content hash of what routing reads: equal inputs give equal revisions,
    /// on every replica and after restarts.
    pub fn revision(&self) -> &str {
        &self.revision
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

    /// The nodes users can be placed on, in node-id order.
    pub fn nodes(&self) -> &[RouteNode] {
        &self.nodes
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
        if let Some(&i) = self.pins.get(hash.0, uid) {
            return Some(i as usize);
        }
        let region = if self.uses_region {
            self.user_regions
                .get(hash.0, uid)
                .map(|r| &**r)
                .or(region_hint)
        } else {
            None
        };
        self.placement.place(hash, region)
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
    /// `per_node[i]` receives the number of uids placed on node `i`.
    pub fn route_batch_json(
        &self,
        uids: &[&str],
        region_hint: Option<&str>,
        intranet: bool,
        mut per_node: impl FnMut(usize, usize),
    ) -> Result<Vec<u8>, NoRoutableNode> {
        if uids.is_empty() {
            return Ok(b"[]".to_vec());
        }
        if self.nodes.is_empty() {
            return Err(NoRoutableNode);
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
        // Pass 2: a counting sort of uid positions by group keeps input order.
        let mut start: Vec<u32> = Vec::with_capacity(group_len.len() + 1);
        let mut acc = 0u32;
        for &len in &group_len {
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
        // Pass 3: serialise.
        let mut out = Vec::with_capacity(out_len);
        out.push(b'[');
        for (g, &node) in group_node.iter().enumerate() {
            if g > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"uids\":[");
            let from = start[g] as usize;
            let to = from + group_len[g] as usize;
            for (k, &pos) in order[from..to].iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_json_str(&mut out, uids[pos as usize]);
            }
            out.extend_from_slice(b"],");
            out.extend_from_slice(&self.nodes[node as usize].fragments[usize::from(intranet)]);
            per_node(node as usize, group_len[g] as usize);
        }
        out.push(b']');
        Ok(out)
    }
}

/// Writes a JSON string literal. Uids carry no control characters (the API
/// rejects them), so only quotes and backslashes can need escaping.
#[inline]
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // A branch-free fold (no early exit) that the compiler can vectorise.
    let needs_escape = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
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

fn revision_of(input: &TableInput, routable: &[&NodeInput], panic: bool) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        routable: &'a [&'a NodeInput],
        strategy: &'a StrategyInput,
        pins: &'a BTreeMap<String, String>,
        user_regions: &'a BTreeMap<String, String>,
        panic: bool,
    }
    let mut hasher = Xxh3::new();
    let canonical = Canonical {
        routable,
        strategy: &input.strategy,
        pins: &input.pins,
        user_regions: &input.user_regions,
        panic,
    };
    serde_json::to_writer(HashWriter(&mut hasher), &canonical)
        .expect("serialising routing inputs cannot fail");
    format!("{:016x}", hasher.digest())
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
