//! The HTTP layer: poem-openapi handlers that parse, authorize and translate.
//! **Architecture invariant:** no SQL and no hashing here; handlers call the
//! control plane for writes and read the routing snapshot for routes.

pub mod admin;
pub mod auth;
pub mod cors;
pub mod error;
pub mod json_guard;
pub mod nodes;
pub mod ops;
pub mod payload;
pub mod plan;
pub mod route;
pub mod spec;
pub mod strategies;
pub mod ui;
pub mod uids;
pub mod validate;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use futures_util::FutureExt;
use poem::{
    http::{HeaderValue, Method},
    Body, Endpoint, IntoResponse, Request, Response, Route,
};
use poem_openapi::{OpenApiService, Tags};
use tracing::Instrument;

use crate::{
    control::Controller,
    metrics::{endpoint_of, EndpointMetrics, ENDPOINTS},
    store::Actor,
};
use error::{error_response, ApiError};

#[derive(Tags)]
pub enum ApiTags {
    /// Which node a user should connect to. No authentication.
    Routing,
    /// Gateway nodes (bearer token).
    Nodes,
    /// Routing strategies and the active one (bearer token).
    Strategies,
    /// How users spread over the nodes, and what a change would move before
    /// it is made (bearer token).
    Planning,
    /// The hot-reloaded overrides file (bearer token).
    Overrides,
    /// Every admin change (bearer token).
    Audit,
    /// The replicas sharing one store, and whether they agree (bearer token).
    Cluster,
    /// Liveness, readiness, metrics.
    Operations,
}

/// Shared by every handler.
pub struct AppState {
    pub ctl: Arc<Controller>,
    pub token: String,
    pub access: AdminAccess,
    /// A request's whole body must arrive within this (`limits.body_timeout_ms`).
    pub body_timeout: std::time::Duration,
    pub cors: cors::Cors,
    /// Bytes of request bodies buffered at once, in KiB: past it a request
    /// with a body is 503 (many connections, or HTTP/2 streams, each holding
    /// a body up to the limit would otherwise add up to gigabytes).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// The same for admin bodies, which only token holders can send.
    pub admin_body_budget: Arc<tokio::sync::Semaphore>,
    /// KiB of batch answers with candidates being sent at once
    /// ([`ANSWER_BUDGET_KIB`]); past it such a batch is 503.
    pub answer_budget: Arc<tokio::sync::Semaphore>,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// KiB of batch answers with candidates in flight at once (256 MiB).
pub const ANSWER_BUDGET_KIB: usize = 256 * 1024;

/// The budget of buffered request bodies for a body limit, in KiB.
pub fn body_budget_kib(max_body_bytes: usize) -> usize {
    (256 * 1024).max(16 * max_body_bytes.div_ceil(1024))
}

/// Who may reach `/admin/*`, checked before the token and before any byte of
/// the body is read.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// `admin_listen` is set: `/admin/*` is served only there.
    pub separate: bool,
    /// `admin_allow`: client networks allowed; empty allows any.
    pub allow: Vec<ipnet::IpNet>,
}

impl AdminAccess {
    /// 404 on the public listener when the admin API has its own, 403 from a
    /// network not allowed, then 401 without the token.
    fn admit(&self, req: &Request, token: &str) -> Result<(), ApiError> {
        self.reachable(req)?;
        if !auth::bearer_matches(req, token) {
            return Err(ApiError::new(
                poem::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token",
            ));
        }
        Ok(())
    }

    /// The listener and `admin_allow` rules alone (also checked by every
    /// admin operation's own authentication, whatever path reached it).
    pub fn reachable(&self, req: &Request) -> Result<(), ApiError> {
        let role = req.extensions().get::<crate::server::Role>().copied();
        if self.separate && role != Some(crate::server::Role::Admin) {
            return Err(ApiError::new(
                poem::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such path",
            ));
        }
        if !self.allow.is_empty() {
            let ip = req
                .remote_addr()
                .as_socket_addr()
                .map(|a| a.ip().to_canonical());
            if !ip.is_some_and(|ip| self.allow.iter().any(|n| n.contains(&ip))) {
                return Err(ApiError::new(
                    poem::http::StatusCode::FORBIDDEN,
                    "forbidden",
                    "the admin API is not open to this address (admin_allow)",
                ));
            }
        }
        Ok(())
    }
}

pub type Apis = (
    route::RouteApi,
    nodes::NodesApi,
    strategies::StrategiesApi,
    plan::PlanApi,
    admin::AdminApi,
    ops::OpsApi,
);

/// The one OpenAPI service, used both to serve and to print the spec.
pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            route::RouteApi,
            nodes::NodesApi,
            strategies::StrategiesApi,
            plan::PlanApi,
            admin::AdminApi,
            ops::OpsApi,
        ),
        "imroute",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Tells IM clients which gateway node to connect to. `POST /route/batch` groups users \
         by node (WuKongIM's response shape); the admin API manages nodes and strategies.",
    )
}

/// The spec as served at `/openapi.yaml` and printed by `imroute openapi`.
pub fn openapi_yaml() -> String {
    spec::yaml().to_owned()
}

/// `If-Match: "3"` (or `3`, or `W/"3"`) -> version 3; `*` or absent -> none.
pub fn if_match(header: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = header else { return Ok(None) };
    let v = raw.trim();
    if v == "*" {
        return Ok(None);
    }
    // If-Match compares strongly: a weak tag never matches (412).
    if v.starts_with("W/") {
        return Ok(Some(-1));
    }
    let v = v.trim_matches('"');
    v.parse::<i64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_header",
            format!(
                "If-Match: must be a version such as \"3\", got {:?}",
                crate::model::truncate(raw)
            ),
        )
    })
}

/// The request id of a request, set by the observe middleware.
#[derive(Clone)]
pub struct RequestId(pub String);

pub fn actor(req: &Request) -> Actor {
    Actor {
        request_id: req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        kind: crate::store::ActorKind::Admin,
    }
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// A request's id: the client's `X-Request-Id` when it is usable, else
/// `{8 hex of a per-process random prefix}-{12 hex of a counter}`, unique
/// within the process and unlikely to repeat across processes. Made
/// without allocating (this runs on every request); a `String` is made
/// only for the requests that reach a handler.
enum Rid {
    Given(HeaderValue),
    Made([u8; 21]),
}

impl Rid {
    fn of(req: &Request) -> Rid {
        if let Some(v) = req.headers().get(X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic) {
                return Rid::Given(v.clone());
            }
        }
        static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let prefix = *PREFIX.get_or_init(|| {
            let mut b = [0u8; 4];
            let _ = getrandom::fill(&mut b);
            u32::from_le_bytes(b)
        });
        let seq = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 21];
        for (i, slot) in out[..8].iter_mut().enumerate() {
            *slot = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, slot) in out[9..].iter_mut().enumerate() {
            *slot = HEX[((seq >> (44 - 4 * i)) & 0xf) as usize];
        }
        Rid::Made(out)
    }

    fn as_str(&self) -> &str {
        match self {
            Rid::Given(v) => v.to_str().unwrap_or_default(),
            // Hex digits and a dash: ASCII.
            Rid::Made(b) => std::str::from_utf8(b).unwrap_or_default(),
        }
    }

    fn header(&self) -> HeaderValue {
        match self {
            Rid::Given(v) => v.clone(),
            Rid::Made(b) => HeaderValue::from_bytes(b).unwrap_or(HeaderValue::from_static("-")),
        }
    }
}

impl std::fmt::Display for Rid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const X_REQUEST_ID: poem::http::HeaderName = poem::http::HeaderName::from_static("x-request-id");
const X_CONTENT_TYPE_OPTIONS: poem::http::HeaderName =
    poem::http::HeaderName::from_static("x-content-type-options");
const CONTENT_SECURITY_POLICY: poem::http::HeaderName =
    poem::http::HeaderName::from_static("content-security-policy");
const X_FRAME_OPTIONS: poem::http::HeaderName =
    poem::http::HeaderName::from_static("x-frame-options");
const REFERRER_POLICY: poem::http::HeaderName =
    poem::http::HeaderName::from_static("referrer-policy");

/// Whether a Content-Type names JSON as the handlers read it (the `mime`
/// parse, case-insensitive): `application/json` or `application/*+json`.
pub(crate) fn is_json(content_type: &str) -> bool {
    // The common spelling without a full parse (this runs on every batch).
    if content_type == "application/json" {
        return true;
    }
    matches!(content_type.parse::<mime::Mime>(), Ok(m)
        if m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
}

/// Reads the body into memory up to the limit (413 past it, with or without
/// Content-Length) so no handler ever sees an oversized body, and rejects
/// admin JSON objects with repeated keys. The bytes are charged to `budget`
/// (in KiB) as they arrive, not as declared: a client that announces a large
/// body and sends little holds little. Past the budget: 503.
async fn limit_body(
    mut req: Request,
    max: usize,
    endpoint: &str,
    budget: Arc<tokio::sync::Semaphore>,
) -> poem::Result<(Request, Option<tokio::sync::OwnedSemaphorePermit>)> {
    let too_large = || {
        ApiError::new(
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is over the limit of {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large().into());
    }
    let busy = || {
        let mut busy = ApiError::new(
            poem::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many request bodies in flight; retry shortly",
        );
        busy.retry_after = Some(1);
        busy
    };
    let mut stream = std::pin::pin!(req.take_body().into_bytes_stream());
    // A body that has fully arrived with its first piece (most) is kept as
    // it came. A piece the body does not end with is copied into a buffer of
    // the body's own size, so no slice of a larger read buffer (an HTTP/2
    // frame buffer, say) is held while a client stalls: what is held is
    // what is charged.
    let mut single: Option<bytes::Bytes> = None;
    let mut buf: Option<bytes::BytesMut> = None;
    let mut next: Option<bytes::Bytes> = None;
    let mut len = 0usize;
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut charged = 0u32;
    let read_error = || ApiError::bad_request("invalid_body", "cannot read the request body");
    loop {
        let chunk = match next.take() {
            Some(chunk) => chunk,
            None => match futures_util::StreamExt::next(&mut stream).await {
                Some(chunk) => chunk.map_err(|_| read_error())?,
                None => break,
            },
        };
        if len + chunk.len() > max {
            return Err(too_large().into());
        }
        len += chunk.len();
        let need = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
        if need > charged {
            let more = budget
                .clone()
                .try_acquire_many_owned(need - charged)
                .map_err(|_| busy())?;
            match &mut permit {
                Some(p) => p.merge(more),
                None => permit = Some(more),
            }
            charged = need;
        }
        match &mut buf {
            Some(b) => b.extend_from_slice(&chunk),
            None => {
                // The first piece: is the body already complete?
                let peek = futures_util::StreamExt::next(&mut stream);
                match futures_util::FutureExt::now_or_never(peek) {
                    Some(None) => {
                        single = Some(chunk);
                        break;
                    }
                    Some(Some(more)) => next = Some(more.map_err(|_| read_error())?),
                    None => {}
                }
                buf = Some(bytes::BytesMut::from(&chunk[..]));
            }
        }
    }
    let bytes = match (single, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(s), None) => s,
        (None, None) => bytes::Bytes::new(),
    };
    if req.uri().path().starts_with("/admin/")
        && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    {
        if let Some(msg) = json_guard::duplicate_key(&bytes) {
            return Err(ApiError::bad_request("invalid_body", msg).into());
        }
    }
    // A body of another type is the handler's 415, not a 400 about fields.
    if req.uri().path().starts_with("/admin/") && req.content_type().is_some_and(is_json) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(
                ApiError::bad_request("invalid_body", "body: required (a JSON object)").into(),
            );
        }
        validate::body(req.method().as_str(), endpoint, &bytes)
            .map_err(|msg| ApiError::bad_request("invalid_body", msg))?;
    }
    req.set_body(Body::from_bytes(bytes));
    Ok((req, permit))
}

/// Everything around the routes, in one layer (one future per request rather
/// than one per middleware): request id, shared state, tracing span, body
/// limit, panic catching, the one error body, metrics.
struct Outer<E> {
    inner: E,
    state: Arc<AppState>,
    metrics: HashMap<&'static str, EndpointMetrics>,
    max_body: usize,
    /// Off only in the test that checks the documented operations directly.
    fast_path: bool,
}

/// Whether a request's body is read at all: only the operations that take
/// one. Every other request is answered without reading a byte of its body
/// (and without `100 Continue`). A new operation with a body goes here.
fn takes_body(method: &Method, endpoint: &str) -> bool {
    match *method {
        Method::POST => matches!(
            endpoint,
            "/route/batch" | "/admin/nodes" | "/admin/routing/simulate"
        ),
        Method::PUT => matches!(
            endpoint,
            "/admin/nodes/{id}"
                | "/admin/nodes/{id}/heartbeat"
                | "/admin/strategies/{name}"
                | "/admin/routing"
        ),
        Method::PATCH => endpoint == "/admin/nodes/{id}",
        _ => false,
    }
}

impl<E: Endpoint> Outer<E> {
    async fn handle(&self, mut req: Request, endpoint: &'static str, rid: &Rid) -> Response {
        let run = async {
            let path = req.uri().path();
            if path == "/admin" || path.starts_with("/admin/") {
                self.state.access.admit(&req, &self.state.token)?;
            }
            if matches!(PathKind::of(path), PathKind::Ui) {
                // Served where the admin API is (the page is useless
                // elsewhere); the files hold no secret, so no token.
                self.state.access.reachable(&req)?;
                if let Some(resp) = ui::serve(path) {
                    if req.method() == Method::GET || req.method() == Method::HEAD {
                        return Ok(resp);
                    }
                    return Ok(ApiError::new(
                        poem::http::StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "the dashboard's files answer GET and HEAD only",
                    )
                    .into_response()
                    .with_header(poem::http::header::ALLOW, "GET, HEAD")
                    .into_response());
                }
            }
            if let Some(query) = req.uri().query() {
                let reads_query = endpoint.starts_with("/route")
                    || validate::has_query(req.method().as_str(), endpoint);
                if reads_query && !query_is_utf8(query) {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        "the query string is not valid UTF-8 once percent-decoded",
                    )
                    .into());
                }
                if path.starts_with("/admin/") {
                    validate::query(req.method().as_str(), endpoint, query)
                        .map_err(|msg| ApiError::bad_request("invalid_query", msg))?;
                }
            }
            // Held until the answer: the body lives as long as the handler.
            let mut _budget = None;
            if takes_body(req.method(), endpoint) {
                // Admin bodies (heartbeats among them) come only with the
                // token: anonymous clients cannot crowd them out.
                let budget = if path.starts_with("/admin/") {
                    &self.state.admin_body_budget
                } else {
                    &self.state.body_budget
                };
                let budget = budget.clone();
                let timeout = self.state.body_timeout;
                let mut read = std::pin::pin!(limit_body(req, self.max_body, endpoint, budget));
                // Most bodies have arrived with their head: read them without
                // arming a timer.
                let read = match futures_util::FutureExt::now_or_never(read.as_mut()) {
                    Some(read) => Ok(read),
                    None => tokio::time::timeout(timeout, read).await,
                };
                req = match read {
                    Ok(read) => {
                        let (req, permit) = read?;
                        _budget = permit;
                        req
                    }
                    Err(_) => {
                        return Ok(ApiError::new(
                            poem::http::StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            format!(
                                "the request body did not arrive within {} ms",
                                timeout.as_millis()
                            ),
                        )
                        .into_response()
                        .with_header(poem::http::header::CONNECTION, "close")
                        .into_response());
                    }
                };
            } else {
                req.set_body(Body::empty());
            }
            if self.fast_path {
                if let Some(resp) = route::fast_path(&self.state, &mut req).await {
                    return Ok(resp);
                }
            }
            // Only what reaches a handler needs these (the routes above do not).
            req.extensions_mut()
                .insert(RequestId(rid.as_str().to_owned()));
            req.extensions_mut().insert(self.state.clone());
            Ok::<_, poem::Error>(self.inner.call(req).await?.into_response())
        };
        match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => error_response(err),
            Err(_) => {
                tracing::error!("A request handler panicked");
                ApiError::internal().into_response()
            }
        }
    }
}

impl<E: Endpoint> Endpoint for Outer<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let start = Instant::now();
        let endpoint = endpoint_of(req.uri().path());
        let rid = Rid::of(&req);
        let method = req.method().clone();
        let span = tracing::info_span!("request", request_id = %rid);
        let path_kind = PathKind::of(req.uri().path());
        let origin = req.headers().get(poem::http::header::ORIGIN).cloned();
        let admin_path = matches!(path_kind, PathKind::Admin);
        let preflight = if admin_path && self.state.access.reachable(&req).is_err() {
            None
        } else {
            self.state.cors.preflight(&req, endpoint)
        };
        let mut resp = if let Some(resp) = preflight {
            resp
        } else if span.is_disabled() {
            self.handle(req, endpoint, &rid).await
        } else {
            self.handle(req, endpoint, &rid)
                .instrument(span.clone())
                .await
        };
        self.state
            .cors
            .decorate(origin.as_ref(), endpoint, &mut resp);
        if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
            if let Some(methods) = cors::allowed_methods(endpoint) {
                resp.headers_mut()
                    .insert(poem::http::header::ALLOW, HeaderValue::from_static(methods));
            }
        }
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        if let Some(m) = self.metrics.get(endpoint) {
            m.duration.observe(elapsed.as_secs_f64());
            if status == 200 {
                m.ok.inc();
            } else {
                self.state
                    .ctl
                    .metrics
                    .http_requests
                    .with_label_values(&[m.endpoint, &status.to_string()])
                    .inc();
            }
        }
        span.in_scope(|| {
            tracing::debug!(%method, endpoint, status, micros = elapsed.as_micros() as u64, "Request served");
        });
        resp.headers_mut().insert(X_REQUEST_ID, rid.header());
        security_headers(&mut resp, path_kind);
        Ok(resp)
    }
}

/// Whether a query string is UTF-8 once percent-decoded (`%FF` is not: it
/// would otherwise become U+FFFD, and `%FE` would name the same user).
fn query_is_utf8(query: &str) -> bool {
    if !query.contains('%') {
        return true;
    }
    let raw = query.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match raw[i] {
            b'%' if i + 2 < raw.len() => match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    std::str::from_utf8(&out).is_ok()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Admin,
    /// Swagger UI.
    Page,
    /// The dashboard and `/`, which sends browsers to it.
    Ui,
    Other,
}

impl PathKind {
    fn of(path: &str) -> Self {
        if path == "/admin" || path.starts_with("/admin/") {
            PathKind::Admin
        } else if path == "/ui" || path.starts_with("/ui/") || path == "/" {
            PathKind::Ui
        } else if path == "/docs" || path.starts_with("/docs/") {
            PathKind::Page
        } else {
            PathKind::Other
        }
    }
}

/// The Swagger UI page inlines its script and styles and loads nothing from
/// elsewhere; it may not be framed.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `nosniff` everywhere; admin answers are never cached; pages get a CSP.
fn security_headers(resp: &mut Response, kind: PathKind) {
    let headers = resp.headers_mut();
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    match kind {
        PathKind::Admin => {
            headers.insert(
                poem::http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
        }
        PathKind::Page => {
            headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
            headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        PathKind::Ui => {
            headers.insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(ui::UI_CSP),
            );
            headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        PathKind::Other => {}
    }
}

/// The whole HTTP application.
pub fn build_app(state: Arc<AppState>) -> impl Endpoint {
    build_app_with(state, true)
}

/// The application; `fast_path: false` serves `/route` and `/route/batch`
/// through their poem-openapi operations instead (for the equivalence test).
pub fn build_app_with(state: Arc<AppState>, fast_path: bool) -> impl Endpoint {
    let service = openapi_service();
    let text = |body: &'static str, content_type: &'static str| {
        poem::get(poem::endpoint::make_sync(move |_| {
            Response::builder().content_type(content_type).body(body)
        }))
    };
    let metrics = ENDPOINTS
        .iter()
        .map(|e| (*e, state.ctl.metrics.endpoint(e)))
        .collect();
    let routes = Route::new()
        .at(
            "/docs",
            text(spec::swagger_html(), "text/html; charset=utf-8"),
        )
        .at(
            "/docs/",
            text(spec::swagger_html(), "text/html; charset=utf-8"),
        )
        .at("/openapi.json", text(spec::json(), "application/json"))
        .at("/openapi.yaml", text(spec::yaml(), "application/yaml"))
        .nest("/", service);
    Outer {
        inner: routes,
        max_body: state.ctl.limits.max_body_bytes,
        state,
        metrics,
        fast_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_must_decode_to_utf8() {
        assert!(query_is_utf8("uid=alice&intranet=0"));
        assert!(query_is_utf8("uid=%C3%A9t%C3%A9"));
        assert!(query_is_utf8("uid=100%"));
        assert!(query_is_utf8("uid=%zz"));
        assert!(!query_is_utf8("uid=%FF"));
        assert!(!query_is_utf8("uid=%C3"));
        assert!(!query_is_utf8("a=1&uid=%FE%FF"));
    }

    /// Every operation with a request body in the spec is one whose body is
    /// read, and no other: the table cannot drift from the API.
    #[test]
    fn bodies_are_read_for_exactly_the_operations_that_take_one() {
        let spec: serde_json::Value = serde_json::from_str(&openapi_service().spec()).unwrap();
        let mut seen = 0;
        for (path, ops) in spec["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let endpoint = crate::metrics::endpoint_of(path);
                assert_ne!(endpoint, "other", "{path}");
                let has_body = op.get("requestBody").is_some();
                assert_eq!(takes_body(&method, endpoint), has_body, "{method} {path}");
                seen += usize::from(has_body);
            }
        }
        assert!(seen >= 6, "{seen}");
    }
}
