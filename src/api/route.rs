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

use super::{
    error::ApiError,
    uids::{parse_uids, Uids},
    ApiTags, AppState,
};
use crate::model::valid_id;

pub struct RouteApi;

/// One node of a candidate list.
#[derive(Debug, Clone, Object)]
#[oai(rename = "RouteCandidate")]
pub struct RouteCandidate {
    pub node_id: String,
    pub tcp_addr: String,
    pub ws_addr: String,
    pub wss_addr: String,
    pub region: String,
}

/// One group of a batch answer: the users of one node and its addresses.
#[derive(Debug, Clone, Object)]
pub struct RouteGroup {
    /// Users to connect to this node, in input order.
    pub uids: Vec<String>,
    /// With `candidates=K`: the group's whole candidate list (the group's
    /// users share it); the first is the node of the top-level fields.
    #[oai(skip_serializing_if_is_none)]
    pub candidates: Option<Vec<RouteCandidate>>,
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
    /// With `candidates=K`: up to K routable nodes in the user's order of
    /// preference. The first is this answer; when it becomes unroutable the
    /// user is moved to the second, and so on.
    #[oai(skip_serializing_if_is_none)]
    pub candidates: Option<Vec<RouteCandidate>>,
}

/// The request body of `/route/batch`: the raw bytes of a JSON array of uids,
/// parsed by `uids::parse_batch` so errors can name the offending uid.
pub struct UidBatch(pub bytes::Bytes);

impl Payload for UidBatch {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        super::is_json(content_type)
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
    revision: bytes::Bytes,
    /// Held until the body is sent (or the connection goes): the share of
    /// the answer budget that a large answer takes.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _schema: std::marker::PhantomData<T>,
}

impl<T> RoutedJson<T> {
    fn new(body: Vec<u8>, revision: bytes::Bytes) -> Self {
        RoutedJson {
            body,
            revision,
            permit: None,
            _schema: std::marker::PhantomData,
        }
    }
}

const X_ROUTING_REVISION: header::HeaderName =
    header::HeaderName::from_static("x-routing-revision");

/// The most bytes one answer with candidates may have: a list per user
/// repeats up to K+1 node objects, so an answer can be hundreds of times
/// its request.
pub const CANDIDATES_ANSWER_MAX: usize = 4 * 1024 * 1024;

/// A body sent in 64 KiB pieces, holding `permit` until the last piece has
/// been taken by the connection (or the connection is gone).
fn metered_body(body: Vec<u8>, permit: tokio::sync::OwnedSemaphorePermit) -> Body {
    let state = (bytes::Bytes::from(body), permit);
    Body::from_bytes_stream(futures_util::stream::unfold(
        state,
        |(mut rest, permit)| async move {
            if rest.is_empty() {
                return None;
            }
            let piece = rest.split_to(rest.len().min(64 * 1024));
            Some((Ok::<_, std::io::Error>(piece), (rest, permit)))
        },
    ))
}

impl<T: Send> IntoResponse for RoutedJson<T> {
    fn into_response(self) -> Response {
        let len = self.body.len();
        let metered = self.permit.is_some();
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .content_type("application/json")
            .body(match self.permit {
                Some(permit) => metered_body(self.body, permit),
                None => Body::from_vec(self.body),
            });
        if metered {
            // A streamed body has no length of its own: keep the header.
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(self.revision) {
            resp.headers_mut().insert(X_ROUTING_REVISION, v);
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

pub(crate) fn parse_region(v: Option<&str>) -> Result<Option<&str>, ApiError> {
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

/// `candidates=K`, K in 1..=8.
fn parse_candidates(v: Option<&str>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(raw) => match raw.parse::<usize>() {
            Ok(k) if (1..=crate::routing::hrw::MAX_RANK).contains(&k) => Ok(Some(k)),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "candidates: must be an integer from 1 to {}, got {:?}",
                    crate::routing::hrw::MAX_RANK,
                    crate::model::truncate(raw)
                ),
            )),
        },
    }
}

/// The routing query parameters, parsed once.
pub struct RouteQuery {
    pub uid: Option<String>,
    pub intranet: bool,
    pub region: Option<String>,
    /// `candidates=K`: answer with the user's first K candidates.
    pub candidates: Option<usize>,
}

impl RouteQuery {
    fn new(
        uid: Option<String>,
        intranet: Option<&str>,
        region: Option<String>,
        candidates: Option<&str>,
    ) -> Result<Self, ApiError> {
        let intranet = parse_intranet(intranet)?;
        parse_region(region.as_deref())?;
        Ok(RouteQuery {
            uid,
            intranet,
            region: region.filter(|r| !r.is_empty()),
            candidates: parse_candidates(candidates)?,
        })
    }

    /// Parses a raw query string (`intranet=1&region=eu`); unknown parameters
    /// are ignored, as the documented operation ignores them.
    /// The first of each known parameter, decoded as form encoding (what
    /// `serde_urlencoded` reads); values are borrowed from the query unless
    /// they hold escapes, and only the ones kept are copied.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut uid = None;
        let mut intranet = None;
        let mut region = None;
        let mut candidates = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "uid" if uid.is_none() => uid = Some(value.into_owned()),
                "intranet" if intranet.is_none() => intranet = Some(value),
                "region" if region.is_none() => region = Some(value.into_owned()),
                "candidates" if candidates.is_none() => candidates = Some(value),
                _ => {}
            }
        }
        Self::new(uid, intranet.as_deref(), region, candidates.as_deref())
    }
}

/// `POST /route/batch`, shared by the served fast path and the documented
/// operation.
pub fn batch(
    state: &AppState,
    query: &RouteQuery,
    body: &[u8],
) -> Result<RoutedJson<Vec<RouteGroup>>, ApiError> {
    // Each user's list repeats up to K nodes in the answer: with candidates
    // a batch holds at most max_batch / K uids, so an answer stays within
    // what a plain batch of max_batch uids can take.
    let limits = match query.candidates {
        Some(k) if k > 1 => &crate::config::Limits {
            max_batch: (state.ctl.limits.max_batch / k).max(1),
            ..state.ctl.limits
        },
        _ => &state.ctl.limits,
    };
    let parsed = parse_uids(body, limits)?;
    let mixed: Vec<&str>;
    let (refs, plain): (&[&str], bool) = match &parsed {
        Uids::Plain(v) => (v, true),
        Uids::Mixed(v) => {
            mixed = v.iter().map(|u| &**u).collect();
            (&mixed, false)
        }
    };
    let snap = state.ctl.snapshot();
    // A bound on the answer of a batch with candidates, from the longest
    // node object: past it 413, before any routing.
    if let Some(k) = query.candidates {
        let text: usize = refs.iter().map(|u| u.len() + 3).sum();
        // Groups: one per distinct list, so at most one per uid and at most
        // the ordered choices of min(K, N) of the N routable nodes. Each
        // holds `{"uids":[...],"candidates":[...],` (32 bytes at most) and
        // min(K, N) + 1 node objects with their commas.
        let n = snap.table.nodes().len();
        let listed = k.min(n);
        let lists = (0..listed).fold(1usize, |acc, i| acc.saturating_mul(n - i));
        let groups = refs.len().min(lists);
        let per_group = 32 + (listed + 1) * (snap.table.max_node_json() + 1);
        let most = text.saturating_add(groups.saturating_mul(per_group));
        if most > CANDIDATES_ANSWER_MAX {
            let per_uid = most.div_ceil(refs.len().max(1)).max(1);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "with candidates={k} this answer could reach {most} bytes, over the limit of {CANDIDATES_ANSWER_MAX}; send at most {} uids per request",
                    CANDIDATES_ANSWER_MAX / per_uid
                ),
            ));
        }
    }
    let region = query.region.as_deref();
    let count = |node: usize, n: usize| snap.routed[node].inc_by(n as u64);
    let json = match query.candidates {
        None => snap
            .table
            .route_batch_json(refs, region, query.intranet, plain, count),
        Some(k) => snap
            .table
            .route_batch_candidates_json(refs, region, query.intranet, k, count),
    }
    .map_err(|_| ApiError::no_routable_node())?;
    let mut answer = RoutedJson::new(json, snap.table.revision_bytes());
    if query.candidates.is_some() {
        // Answers with candidates share one budget while they are sent: a
        // client that does not read cannot pin gigabytes.
        let kib = u32::try_from(answer.body.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let permit = state
            .answer_budget
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                let mut busy = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many large answers in flight; retry shortly",
                );
                busy.retry_after = Some(1);
                busy
            })?;
        answer.permit = Some(permit);
    }
    Ok(answer)
}

/// The routing key of a `GET /route` without `uid` (as WuKongIM's SDK
/// examples and CLI bench send it): the caller's address, so one caller
/// always gets the same node and callers spread over the nodes. Behind a
/// trusted proxy, the right-most `X-Forwarded-For` address that is not itself
/// a trusted proxy (the left part is the client's to write); an entry that
/// is not an address (`unknown`, garbage) ends the walk there, and the
/// nearest trusted hop's own peer is used, so a client cannot slip a key of
/// its choice past it. The key starts with a control character, which no
/// uid may contain: a uid can never route as a caller.
pub(crate) fn caller_key(req: &Request, trusted: &[ipnet::IpNet]) -> String {
    let Some(peer) = req
        .remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_canonical())
    else {
        return "\u{1}ip:unknown".to_owned();
    };
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer;
    if is_trusted(&peer) {
        let entries: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            match forwarded_ip(entry) {
                Some(ip) if is_trusted(&ip) => client = ip,
                Some(ip) => {
                    client = ip;
                    break;
                }
                None => break,
            }
        }
    }
    format!("\u{1}ip:{client}")
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:5678`.
fn forwarded_ip(entry: &str) -> Option<std::net::IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<std::net::Ipv6Addr>().ok())
        .map(|ip| std::net::IpAddr::V6(ip).to_canonical())
}

/// `GET /route`, shared by the served fast path and the documented operation.
pub fn one(
    state: &AppState,
    query: &RouteQuery,
    req: &Request,
) -> Result<RoutedJson<RouteAnswer>, ApiError> {
    let by_caller;
    let uid = match query.uid.as_deref() {
        Some(uid) if !uid.is_empty() => {
            crate::overrides::model::check_uid(uid, state.ctl.limits.max_uid_bytes)
                .map_err(|e| ApiError::bad_request("invalid_uid", e))?;
            uid
        }
        _ => {
            by_caller = caller_key(req, &state.trusted_proxies);
            &by_caller
        }
    };
    let snap = state.ctl.snapshot();
    let region = query.region.as_deref();
    let (node, json) = match query.candidates {
        None => snap.table.route_one_json(uid, region, query.intranet),
        Some(k) => snap
            .table
            .route_one_candidates_json(uid, region, query.intranet, k),
    }
    .map_err(|_| ApiError::no_routable_node())?;
    snap.routed[node].inc();
    Ok(RoutedJson::new(json, snap.table.revision_bytes()))
}

/// The hot path: `POST /route/batch` and `GET /route` answered straight from
/// the outer endpoint, without the router and the per-operation extractor
/// stack (a third more requests per second for small batches). `None` for
/// every other request. The answers are those of the documented operations
/// below; a test checks that both paths agree.
pub async fn fast_path(state: &AppState, req: &mut Request) -> Option<Response> {
    let method = req.method();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if method == poem::http::Method::POST && path == "/route/batch" {
        let answer = match req.content_type() {
            Some(ct) if UidBatch::check_content_type(ct) => match RouteQuery::parse(query) {
                Ok(q) => {
                    let body = req.take_body().into_bytes().await.unwrap_or_default();
                    batch(state, &q, &body).map(IntoResponse::into_response)
                }
                Err(e) => Err(e),
            },
            _ => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json",
            )),
        };
        return Some(answer.unwrap_or_else(IntoResponse::into_response));
    }
    if method == poem::http::Method::GET && path == "/route" {
        let answer = RouteQuery::parse(query).and_then(|q| one(state, &q, req));
        return Some(answer.map_or_else(IntoResponse::into_response, IntoResponse::into_response));
    }
    None
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
        /// Group users by their first K candidate nodes (1..=8) and list
        /// them in each group, for client-side failover.
        candidates: Query<Option<String>>,
        body: UidBatch,
    ) -> Result<RoutedJson<Vec<RouteGroup>>, ApiError> {
        let query = RouteQuery::new(
            None,
            intranet.0.as_deref(),
            region.0,
            candidates.0.as_deref(),
        )?;
        batch(&state, &query, &body.0)
    }

    /// Route one user
    ///
    /// Without `uid` (as WuKongIM's SDK examples and CLI bench call it), the
    /// answer is a node chosen for the caller's address: the same for one
    /// caller, spread over callers.
    #[oai(path = "/route", method = "get", operation_id = "route_one")]
    async fn route_one(
        &self,
        req: &Request,
        state: Data<&Arc<AppState>>,
        /// The user id; absent or empty: a node for the caller's address.
        uid: Query<Option<String>>,
        /// `1` for intranet addresses, `0` or absent for external.
        intranet: Query<Option<String>>,
        /// The caller's region hint.
        region: Query<Option<String>>,
        /// Also list the user's first K candidate nodes (1..=8): where the
        /// user is moved when the node before goes away.
        candidates: Query<Option<String>>,
    ) -> Result<RoutedJson<RouteAnswer>, ApiError> {
        let query = RouteQuery::new(
            uid.0,
            intranet.0.as_deref(),
            region.0,
            candidates.0.as_deref(),
        )?;
        one(&state, &query, req)
    }
}
