//! Prometheus metrics. Handles for the hot path are resolved once (per endpoint
//! at start, per node at each table build), so recording is an atomic add.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub users_routed: IntCounterVec,
    pub node_healthy: IntGaugeVec,
    pub node_connections: IntGaugeVec,
    pub health_transitions: IntCounterVec,
    pub panic_mode: IntGauge,
    pub overrides_reloads: IntCounterVec,
    pub overrides_last_success: IntGauge,
    pub overrides_revision: IntGaugeVec,
    pub table_rebuilds: IntCounter,
    pub table_build_seconds: Histogram,
    pub routable_nodes: IntGauge,
    pub store_up: IntGauge,
    pub leader: IntGauge,
    pub task_restarts: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_closed: IntCounterVec,
}

/// Endpoints as they appear in the `endpoint` label: fixed templates, so
/// unknown paths cannot blow up the label set.
pub const ENDPOINTS: &[&str] = &[
    "/route/batch",
    "/route",
    "/admin/nodes",
    "/admin/nodes/{id}",
    "/admin/nodes/{id}/heartbeat",
    "/admin/strategies",
    "/admin/strategies/{name}",
    "/admin/strategy-kinds",
    "/admin/routing",
    "/admin/routing/distribution",
    "/admin/routing/simulate",
    "/admin/overrides",
    "/admin/overrides/reload",
    "/admin/audit",
    "/admin/cluster",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/ui",
    "/openapi",
    "other",
];

/// The endpoint template a path belongs to.
pub fn endpoint_of(path: &str) -> &'static str {
    // Up to five segments on the stack: this runs on every request.
    let mut buf = [""; 5];
    let mut len = 0;
    for segment in path.trim_end_matches('/').split('/').skip(1) {
        if len == buf.len() {
            return "other";
        }
        buf[len] = segment;
        len += 1;
    }
    match &buf[..len] {
        ["route", "batch"] => "/route/batch",
        ["route"] => "/route",
        ["admin", "nodes"] => "/admin/nodes",
        ["admin", "nodes", _] => "/admin/nodes/{id}",
        ["admin", "nodes", _, "heartbeat"] => "/admin/nodes/{id}/heartbeat",
        ["admin", "strategies"] => "/admin/strategies",
        ["admin", "strategies", _] => "/admin/strategies/{name}",
        ["admin", "strategy-kinds"] => "/admin/strategy-kinds",
        ["admin", "routing"] => "/admin/routing",
        ["admin", "routing", "distribution"] => "/admin/routing/distribution",
        ["admin", "routing", "simulate"] => "/admin/routing/simulate",
        ["admin", "overrides"] => "/admin/overrides",
        ["admin", "overrides", "reload"] => "/admin/overrides/reload",
        ["admin", "audit"] => "/admin/audit",
        ["admin", "cluster"] => "/admin/cluster",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["docs", ..] => "/docs",
        ["ui", ..] | [] => "/ui",
        ["openapi.json"] | ["openapi.yaml"] => "/openapi",
        _ => "other",
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definitions are static and valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        Metrics {
            connections_open: reg!(IntGauge::new(
                "imroute_connections_open",
                "Client connections open now, on every listener."
            )),
            connections_closed: reg!(IntCounterVec::new(
                Opts::new(
                    "imroute_connections_closed_total",
                    "Client connections closed by the server before the client was done, by reason: \
                     header_timeout, keepalive_timeout, idle_timeout, tls_handshake, over_limit, not_allowed."
                ),
                &["reason"]
            )),
            http_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "imroute_http_requests_total",
                    "HTTP requests by endpoint and status."
                ),
                &["endpoint", "status"]
            )),
            http_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "imroute_http_request_duration_seconds",
                    "HTTP request latency by endpoint."
                )
                .buckets(buckets),
                &["endpoint"]
            )),
            users_routed: reg!(IntCounterVec::new(
                Opts::new("imroute_users_routed_total", "Uids routed, by node."),
                &["node"]
            )),
            node_healthy: reg!(IntGaugeVec::new(
                Opts::new(
                    "imroute_node_healthy",
                    "1 when the node is healthy or unknown, 0 when unhealthy."
                ),
                &["node"]
            )),
            node_connections: reg!(IntGaugeVec::new(
                Opts::new(
                    "imroute_node_connections",
                    "Connections last reported by the node's heartbeat."
                ),
                &["node"]
            )),
            health_transitions: reg!(IntCounterVec::new(
                Opts::new(
                    "imroute_health_transitions_total",
                    "Node health transitions, by new status."
                ),
                &["to"]
            )),
            panic_mode: reg!(IntGauge::new(
                "imroute_panic_mode",
                "1 while no node is healthy and users are routed over all active nodes."
            )),
            overrides_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "imroute_overrides_reloads_total",
                    "Overrides file reloads, by result."
                ),
                &["result"]
            )),
            overrides_last_success: reg!(IntGauge::new(
                "imroute_overrides_last_success_timestamp_seconds",
                "Unix time of the last successful overrides load."
            )),
            overrides_revision: reg!(IntGaugeVec::new(
                Opts::new(
                    "imroute_overrides_info",
                    "1 for the revision of the overrides in effect."
                ),
                &["revision"]
            )),
            table_rebuilds: reg!(IntCounter::new(
                "imroute_routing_table_rebuilds_total",
                "Routing tables built and swapped in."
            )),
            table_build_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "imroute_routing_table_build_seconds",
                    "Time to build a routing table and admin view from the inputs."
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25
                ])
            )),
            routable_nodes: reg!(IntGauge::new(
                "imroute_routable_nodes",
                "Nodes that can take users in the current routing table."
            )),
            store_up: reg!(IntGauge::new(
                "imroute_store_up",
                "1 while the store answers; 0 during an outage (routing goes on from the last table)."
            )),
            leader: reg!(IntGauge::new(
                "imroute_leader",
                "1 on the replica that judges heartbeat expiry and runs probes."
            )),
            task_restarts: reg!(IntCounterVec::new(
                Opts::new(
                    "imroute_task_restarts_total",
                    "Background tasks restarted after a panic, by task."
                ),
                &["task"]
            )),
            registry,
        }
    }

    /// Handles for one endpoint label, resolved once.
    pub fn endpoint(&self, endpoint: &'static str) -> EndpointMetrics {
        EndpointMetrics {
            duration: self.http_duration.with_label_values(&[endpoint]),
            ok: self.http_requests.with_label_values(&[endpoint, "200"]),
            endpoint,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Pre-resolved handles of one endpoint: the common 200 case is lock-free.
pub struct EndpointMetrics {
    pub endpoint: &'static str,
    pub duration: Histogram,
    pub ok: IntCounter,
}
