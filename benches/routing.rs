//! The routing hot path: placing one uid (hash, weighted; 10/100/1000 nodes),
//! a whole 1,000-uid batch, and parse -> route -> group -> serialise; ranking
//! (candidate lists, K=3) next to placement; `bounded` with 0, 1 and 10 full
//! nodes next to `hash`; a simulation over a million users.
//!
//! Each iteration routes 1,000 uids, so the time per iteration in ns divided
//! by 1,000 is ns per uid (criterion also prints the element throughput).

use std::{collections::BTreeMap, hint::black_box};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imroute::{
    api::uids::{parse_uids, Uids},
    config::Limits,
    control::plan::{compare, Sample},
    model::{Addrs, NodeState},
    routing::{NodeInput, StrategyInput, Table, TableInput},
};
use serde_json::json;

fn table(kind: &str, n: usize, weight: impl Fn(usize) -> u16) -> Table {
    table_with(kind, n, weight, |_| NodeState::Active)
}

fn table_with(
    kind: &str,
    n: usize,
    weight: impl Fn(usize) -> u16,
    state: impl Fn(usize) -> NodeState,
) -> Table {
    let nodes: Vec<NodeInput> = (0..n)
        .map(|i| NodeInput {
            id: format!("gw-{i:04}"),
            region: Some(["eu", "us", "ap"][i % 3].into()),
            weight: weight(i),
            state: state(i),
            healthy: true,
            external: Addrs {
                tcp_addr: format!("10.0.{}.{}:5100", i / 256, i % 256),
                ws_addr: format!("ws://gw-{i}.example.com:5200"),
                wss_addr: format!("wss://gw-{i}.example.com:5300"),
            },
            intranet: Addrs::default(),
        })
        .collect();
    Table::build(&TableInput::prepare(
        &nodes,
        StrategyInput {
            name: "bench".into(),
            kind: kind.into(),
            params: json!({}),
        },
        &BTreeMap::new(),
        &BTreeMap::new(),
    ))
}

fn uids() -> Vec<String> {
    (0..1000).map(|i| format!("user-{i:08}")).collect()
}

fn place(c: &mut Criterion) {
    let users = uids();
    let mut group = c.benchmark_group("place");
    group.throughput(Throughput::Elements(users.len() as u64));
    for n in [10usize, 100, 1000] {
        let cases = [
            ("hash", table("hash", n, |_| 100)),
            // Typical clusters: a few distinct weights.
            (
                "weighted",
                table("weighted", n, |i| [50, 100, 100, 200][i % 4]),
            ),
            // Worst case: every weight distinct.
            ("weighted_distinct", table("weighted", n, |i| 1 + i as u16)),
        ];
        for (name, t) in &cases {
            group.bench_with_input(BenchmarkId::new(*name, n), t, |b, t| {
                b.iter(|| {
                    for u in &users {
                        black_box(t.route(black_box(u), None));
                    }
                })
            });
        }
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let users = uids();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let body = serde_json::to_vec(&users).unwrap();
    let limits = Limits::default();
    let t = table("hash", 100, |_| 100);
    let mut group = c.benchmark_group("batch_1000");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("route_group_serialize", |b| {
        b.iter(|| {
            black_box(
                t.route_batch_json(black_box(&refs), None, false, false, |_, _| {})
                    .unwrap(),
            )
        })
    });
    group.bench_function("parse_route_group_serialize", |b| {
        b.iter(|| {
            let Ok(Uids::Plain(refs)) = parse_uids(black_box(&body), &limits) else {
                unreachable!("plain uids")
            };
            black_box(
                t.route_batch_json(&refs, None, false, true, |_, _| {})
                    .unwrap(),
            )
        })
    });
    group.finish();
}

/// A user's first three candidates, next to placing the user (`place`).
fn rank(c: &mut Criterion) {
    let users = uids();
    let mut group = c.benchmark_group("rank_k3");
    group.throughput(Throughput::Elements(users.len() as u64));
    let cases = [
        ("hash", table("hash", 100, |_| 100)),
        (
            "weighted",
            table("weighted", 100, |i| [50, 100, 100, 200][i % 4]),
        ),
    ];
    let mut out = Vec::with_capacity(3);
    for (name, t) in &cases {
        group.bench_with_input(BenchmarkId::new(*name, 100), t, |b, t| {
            b.iter(|| {
                for u in &users {
                    t.rank(black_box(u), None, 3, &mut out);
                    black_box(&out);
                }
            })
        });
    }
    group.finish();
}

/// `bounded` at 100 nodes with 0, 1 and 10 full nodes, next to `hash`.
fn bounded(c: &mut Criterion) {
    let users = uids();
    let mut group = c.benchmark_group("place_bounded_100");
    group.throughput(Throughput::Elements(users.len() as u64));
    let build = |kind: &str, full: usize| {
        let nodes: Vec<NodeInput> = (0..100)
            .map(|i| NodeInput {
                id: format!("gw-{i:04}"),
                region: None,
                weight: 100,
                state: NodeState::Active,
                healthy: true,
                external: Addrs {
                    tcp_addr: format!("10.0.0.{i}:5100"),
                    ..Addrs::default()
                },
                intranet: Addrs::default(),
            })
            .collect();
        let mut input = TableInput::prepare(
            &nodes,
            StrategyInput {
                name: "bench".into(),
                kind: kind.into(),
                params: json!({}),
            },
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        // Every tenth node, so the full ones are spread over the ids.
        for (i, n) in input.nodes.iter_mut().enumerate() {
            n.full = i % 10 == 0 && i / 10 < full;
        }
        Table::build(&input)
    };
    let cases = [
        ("hash", build("hash", 0)),
        ("bounded_0_full", build("bounded", 0)),
        ("bounded_1_full", build("bounded", 1)),
        ("bounded_10_full", build("bounded", 10)),
    ];
    for (name, t) in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), t, |b, t| {
            b.iter(|| {
                for u in &users {
                    black_box(t.route(black_box(u), None));
                }
            })
        });
    }
    group.finish();
}

/// `POST /admin/routing/simulate`'s placing and counting: a million
/// synthetic users under two tables of 100 nodes (one drained).
fn simulate(c: &mut Criterion) {
    let before = table("hash", 100, |_| 100);
    let after = table_with(
        "hash",
        100,
        |_| 100,
        |i| {
            if i == 7 {
                NodeState::Draining
            } else {
                NodeState::Active
            }
        },
    );
    let sample = Sample::Synthetic {
        count: 1_000_000,
        seed: 1,
    };
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("1m_users_100_nodes", |b| {
        b.iter(|| black_box(compare(&before, &after, &sample, None)))
    });
    group.finish();
}

criterion_group!(benches, place, batch, rank, bounded, simulate);
criterion_main!(benches);
