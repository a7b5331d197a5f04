//! The "floor" of the load benchmark: a minimal poem server that parses the
//! same JSON array as `POST /route/batch` (borrowed uids), hashes each uid
//! with xxh3 onto 50 fixed nodes and answers the same shape through serde;
//! `GET /route?uid=` answers one user the same way. It has no real routing
//! (no ranking, pins, dedupe or revision), no auth, no metrics, no logging:
//! imroute's throughput divided by this one's is what our routing, grouping
//! and bookkeeping cost.
//!
//! `cargo run --release --example floor -- 127.0.0.1:5002`

use poem::{
    get, handler, listener::TcpListener, post, web::Json, web::Query, EndpointExt, IntoResponse,
    Route, Server,
};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

#[derive(Serialize)]
struct Group<'a> {
    uids: Vec<&'a str>,
    #[serde(flatten)]
    node: Node,
}

#[derive(Serialize)]
struct Node {
    tcp_addr: String,
    ws_addr: String,
    wss_addr: String,
    node_id: String,
    region: &'static str,
}

const NODES: u64 = 50;

fn node_of(uid: &str) -> usize {
    (xxh3_64(uid.as_bytes()) % NODES) as usize
}

fn node(i: usize) -> Node {
    Node {
        tcp_addr: format!("10.0.0.{i}:5100"),
        ws_addr: format!("ws://gw-{i}.example.com:5200"),
        wss_addr: format!("wss://gw-{i}.example.com:5300"),
        node_id: format!("gw-{i:02}"),
        region: "eu",
    }
}

#[handler]
async fn route_batch(bytes: bytes::Bytes) -> poem::Response {
    let uids: Vec<&str> = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return poem::http::StatusCode::BAD_REQUEST.into_response(),
    };
    let mut slot = [usize::MAX; NODES as usize];
    let mut groups: Vec<Group> = Vec::new();
    for uid in uids {
        let n = node_of(uid);
        if slot[n] == usize::MAX {
            slot[n] = groups.len();
            groups.push(Group {
                uids: Vec::new(),
                node: node(n),
            });
        }
        groups[slot[n]].uids.push(uid);
    }
    Json(groups).into_response()
}

#[derive(Deserialize)]
struct One {
    uid: String,
}

#[handler]
async fn route_one(Query(q): Query<One>) -> poem::Response {
    Json(node(node_of(&q.uid))).into_response()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5002".into());
    let app = Route::new()
        .at("/route/batch", post(route_batch))
        .at("/route", get(route_one))
        .map_to_response();
    Server::new(TcpListener::bind(addr)).run(app).await
}
