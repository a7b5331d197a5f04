//! Liveness, readiness and metrics.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{payload::PlainText, ApiResponse, OpenApi};

use super::{ApiTags, AppState};

pub struct OpsApi;

#[derive(ApiResponse)]
pub enum Readiness {
    /// The store is open and the routing table built.
    #[oai(status = 200)]
    Ready(PlainText<String>),
    /// Not ready yet.
    #[oai(status = 503)]
    NotReady(PlainText<String>),
}

#[OpenApi(tag = "ApiTags::Operations")]
impl OpsApi {
    /// Liveness
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Readiness
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> Readiness {
        if state.ctl.is_ready() {
            Readiness::Ready(PlainText("ready".into()))
        } else {
            Readiness::NotReady(PlainText("not ready".into()))
        }
    }

    /// Prometheus metrics
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, state: Data<&Arc<AppState>>) -> PlainText<String> {
        PlainText(state.ctl.metrics.render())
    }
}
