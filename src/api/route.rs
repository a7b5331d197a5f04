//! The public routing API: `POST /route/batch` and `GET /route`.

use std::sync::Arc;

use poem::{
    http::{header, HeaderValue, StatusCode},
    web::Data,
    Body, IntoResponse, Request, RequestBody, Response,
};
use poem_openapi::{
    param::Query,
    payload::{ParsePayload, Payload},
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
    ApiResponse, Object, OpenApi,
};

use super::{error::ApiError, uids::parse_batch, ApiTags, AppState};
use crate::model::valid_id;

pub struct RouteApi;

/// One group of a batch answer: the users of one node and its addresses.
#[derive(Debug, Clone, Object)]
pub struct RouteGroup {
    /// Users to connect to this node, in input order.
    pub uids: Vec<String>,
    /// `host:port` for TCP clients; `""` when the node has none.
    pub tcp_addr: String,
    /// `ws://` URL; `""` when the node has none.
    pub ws_addr: String,
    /// `wss://` URL; `""` when the node has none.
    pub wss_addr: String,
    /// The node's id (extension).
    pub node_id: String,
    /// The node's region, `""` when it has none (extension).
    pub region: String,
}

/// The answer for one user.
#[derive(Debug, Clone, Object)]
pub struct RouteAnswer {
    pub tcp_addr: String,
    pub ws_addr: String,
    pub wss_addr: String,
    pub node_id: String,
    pub region: String,
}

/// The request body of `/route/batch`: the raw bytes of a JSON array of uids,
/// parsed by `uids::parse_batch` so errors can name the offending uid.
pub struct UidBatch(pub bytes::Bytes);

impl Payload for UidBatch {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m)
            if m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        <Vec<String> as Type>::schema_ref()
    }
}

impl ParsePayload for UidBatch {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        // The body-limit middleware has already read the body into memory.
        let body = body.take()?;
        Ok(UidBatch(body.into_bytes().await?))
    }
}

use poem_openapi::impl_apirequest_for_payload;
impl_apirequest_for_payload!(UidBatch);

/// A pre-serialised JSON answer with the routing revision header.
pub struct RoutedJson<T> {
    body: Vec<u8>,
    revision: String,
    _schema: std::marker::PhantomData<T>,
}

impl<T> RoutedJson<T> {
    fn new(body: Vec<u8>, revision: &str) -> Self {
        RoutedJson {
            body,
            revision: revision.to_owned(),
            _schema: std::marker::PhantomData,
        }
    }
}

impl<T: Send> IntoResponse for RoutedJson<T> {
    fn into_response(self) -> Response {
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .content_type("application/json")
            .body(Body::from_vec(self.body));
        if let Ok(v) = HeaderValue::from_str(&self.revision) {
            resp.headers_mut().insert("x-routing-revision", v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl<T: Type + Send> ApiResponse for RoutedJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Routed. `X-Routing-Revision` names the routing table that answered.",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json",
                    schema: T::schema_ref(),
                }],
                headers: vec![MetaHeader {
                    name: "X-Routing-Revision".into(),
                    description: Some(
                        "Revision of the routing table; it changes whenever anything routing reads changes."
                            .into(),
                    ),
                    required: true,
                    deprecated: false,
                    schema: String::schema_ref(),
                }],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// `intranet=0|1`, absent meaning 0.
fn parse_intranet(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "intranet: must be 0 or 1, got {:?}",
                crate::model::truncate(other)
            ),
        )),
    }
}

fn parse_region(v: Option<&str>) -> Result<Option<&str>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(r) if valid_id(r) => Ok(Some(r)),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "region: must match [A-Za-z0-9._-]{{1,64}}, got {:?}",
                crate::model::truncate(other)
            ),
        )),
    }
}

#[OpenApi(tag = "ApiTags::Routing")]
impl RouteApi {
    /// Route a batch of users
    ///
    /// Groups the users by the node they should connect to. Every distinct uid
    /// appears in exactly one group; groups are ordered by first appearance,
    /// uids keep input order. `[]` answers `[]`.
    #[oai(path = "/route/batch", method = "post", operation_id = "route_batch")]
    async fn route_batch(
        &self,
        state: Data<&Arc<AppState>>,
        /// `1` for intranet addresses (each falls back to the external one), `0` or absent for external.
        intranet: Query<Option<String>>,
        /// The caller's region hint, read by the `region` strategy.
        region: Query<Option<String>>,
        body: UidBatch,
    ) -> Result<RoutedJson<Vec<RouteGroup>>, ApiError> {
        let intranet = parse_intranet(intranet.0.as_deref())?;
        let region = parse_region(region.0.as_deref())?;
        let uids = parse_batch(&body.0, &state.ctl.limits)?;
        let refs: Vec<&str> = uids.iter().map(|u| &**u).collect();
        let snap = state.ctl.snapshot();
        let json = snap
            .table
            .route_batch_json(&refs, region, intranet, |node, n| {
                snap.routed[node].inc_by(n as u64)
            })
            .map_err(|_| ApiError::no_routable_node())?;
        Ok(RoutedJson::new(json, snap.table.revision()))
    }

    /// Route one user
    #[oai(path = "/route", method = "get", operation_id = "route_one")]
    async fn route_one(
        &self,
        state: Data<&Arc<AppState>>,
        /// The user id.
        uid: Query<Option<String>>,
        /// `1` for intranet addresses, `0` or absent for external.
        intranet: Query<Option<String>>,
        /// The caller's region hint.
        region: Query<Option<String>>,
    ) -> Result<RoutedJson<RouteAnswer>, ApiError> {
        let intranet = parse_intranet(intranet.0.as_deref())?;
        let region = parse_region(region.0.as_deref())?;
        let uid = uid
            .0
            .ok_or_else(|| ApiError::bad_request("invalid_query", "uid: required"))?;
        crate::overrides::model::check_uid(&uid, state.ctl.limits.max_uid_bytes)
            .map_err(|e| ApiError::bad_request("invalid_uid", e))?;
        let snap = state.ctl.snapshot();
        let (node, json) = snap
            .table
            .route_one_json(&uid, region, intranet)
            .map_err(|_| ApiError::no_routable_node())?;
        snap.routed[node].inc();
        Ok(RoutedJson::new(json, snap.table.revision()))
    }
}
