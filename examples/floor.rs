//! The "floor" of the load benchmark: a minimal poem server that parses the
//! same JSON array as `POST /route/batch` and answers the same shape with a
//! trivial assignment (by the uid's last byte over 50 fixed nodes). It has no
//! routing, no auth, no metrics, no logging: imroute's throughput divided by
//! this one's is what our routing, grouping and bookkeeping cost.
//!
//! `cargo run --release --example floor -- 127.0.0.1:5002`

use poem::{
    handler, listener::TcpListener, post, web::Json, EndpointExt, IntoResponse, Route, Server,
};
use serde::Serialize;

#[derive(Serialize)]
struct Group<'a> {
    uids: Vec<&'a str>,
    tcp_addr: String,
    ws_addr: String,
    wss_addr: String,
    node_id: String,
    region: &'static str,
}

const NODES: usize = 50;

#[handler]
async fn route_batch(bytes: bytes::Bytes) -> poem::Response {
    {
        let uids: Vec<&str> = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => return poem::http::StatusCode::BAD_REQUEST.into_response(),
        };
        let mut slot = [usize::MAX; NODES];
        let mut groups: Vec<Group> = Vec::new();
        for uid in uids {
            let node = usize::from(*uid.as_bytes().last().unwrap_or(&0)) % NODES;
            if slot[node] == usize::MAX {
                slot[node] = groups.len();
                groups.push(Group {
                    uids: Vec::new(),
                    tcp_addr: format!("10.0.0.{node}:5100"),
                    ws_addr: format!("ws://gw-{node}.example.com:5200"),
                    wss_addr: format!("wss://gw-{node}.example.com:5300"),
                    node_id: format!("gw-{node:02}"),
                    region: "eu",
                });
            }
            groups[slot[node]].uids.push(uid);
        }
        Json(groups).into_response()
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5002".into());
    let app = Route::new()
        .at("/route/batch", post(route_batch))
        .map_to_response();
    Server::new(TcpListener::bind(addr)).run(app).await
}
