//! CORS for browser clients, and the `Allow` header of 405 answers.
//!
//! The public routing endpoints answer any origin by default (`cors_origins:
//! ["*"]`): web IM clients ask `/route` from their own origin. Admin answers
//! carry no CORS headers unless `admin_cors_origins` names origins. A
//! preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered 204
//! here, before authentication: browsers never send credentials on it.

use std::{collections::HashMap, sync::OnceLock};

use poem::{
    http::{header, HeaderValue, Method, StatusCode},
    Request, Response,
};

/// Which origins may read answers.
#[derive(Debug, Clone, Default)]
pub enum Origins {
    /// No CORS headers at all.
    #[default]
    None,
    Any,
    List(Vec<String>),
}

impl Origins {
    pub fn from_config(list: &[String]) -> Self {
        if list.iter().any(|o| o == "*") {
            Origins::Any
        } else if list.is_empty() {
            Origins::None
        } else {
            Origins::List(list.iter().map(|o| o.to_ascii_lowercase()).collect())
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match self {
            Origins::None => None,
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => {
                let o = origin.to_str().ok()?;
                list.iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
                    .then(|| origin.clone())
            }
        }
    }
}

/// The CORS rules of both kinds of endpoints.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub public: Origins,
    pub admin: Origins,
}

/// What a path is, for CORS: the public routing endpoints, the admin API, or
/// anything else (no CORS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Routing,
    Admin,
    None,
}

impl Scope {
    pub fn of(endpoint: &str) -> Self {
        match endpoint {
            "/route" | "/route/batch" => Scope::Routing,
            e if e.starts_with("/admin/") => Scope::Admin,
            _ => Scope::None,
        }
    }
}

const EXPOSE_ROUTING: &str = "X-Routing-Revision, X-Request-Id, Retry-After";
const EXPOSE_ADMIN: &str = "ETag, Link, X-Routing-Revision, X-Request-Id, Retry-After";

impl Cors {
    fn origins(&self, scope: Scope) -> &Origins {
        match scope {
            Scope::Routing => &self.public,
            Scope::Admin => &self.admin,
            Scope::None => &Origins::None,
        }
    }

    /// A CORS preflight for an endpoint that allows the origin: 204 with the
    /// methods and headers it may use. `None` for everything else.
    pub fn preflight(&self, req: &Request, endpoint: &str) -> Option<Response> {
        if req.method() != Method::OPTIONS {
            return None;
        }
        let origin = req.headers().get(header::ORIGIN)?;
        req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let scope = Scope::of(endpoint);
        let allow = self.origins(scope).allow(origin)?;
        let methods = allowed_methods(endpoint)?;
        let mut resp = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow.clone())
            .header(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_str(methods).unwrap_or(HeaderValue::from_static("GET")),
            )
            .header(header::ACCESS_CONTROL_MAX_AGE, "600")
            .finish();
        let headers = match scope {
            Scope::Admin => "Authorization, Content-Type, If-Match, X-Request-Id",
            _ => "Content-Type, X-Request-Id",
        };
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(headers),
        );
        Some(resp)
    }

    /// Adds the CORS headers to an answer for an allowed origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, endpoint: &str, resp: &mut Response) {
        let scope = Scope::of(endpoint);
        let Some(origin) = origin else { return };
        let Some(allow) = self.origins(scope).allow(origin) else {
            return;
        };
        let vary = allow != "*";
        let headers = resp.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(if scope == Scope::Admin {
                EXPOSE_ADMIN
            } else {
                EXPOSE_ROUTING
            }),
        );
        if vary {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The methods an endpoint answers, as the spec documents them (`GET, PUT`),
/// for `Allow` on 405 and for preflights. `None` for paths not in the spec.
pub fn allowed_methods(endpoint: &str) -> Option<&'static str> {
    static TABLE: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let spec = super::spec::document();
        let mut out = HashMap::new();
        if let Some(paths) = spec["paths"].as_object() {
            for (path, ops) in paths {
                let mut methods: Vec<String> = ops
                    .as_object()
                    .map(|o| o.keys().map(|m| m.to_uppercase()).collect())
                    .unwrap_or_default();
                methods.sort_by_key(|m| {
                    ["GET", "POST", "PUT", "PATCH", "DELETE"]
                        .iter()
                        .position(|x| x == m)
                });
                let endpoint = crate::metrics::endpoint_of(path.as_str());
                let list: &'static str = Box::leak(methods.join(", ").into_boxed_str());
                out.insert(endpoint.to_owned(), list);
            }
        }
        out.insert("/docs".into(), "GET");
        out.insert("/openapi".into(), "GET");
        out
    });
    table.get(endpoint).copied()
}
