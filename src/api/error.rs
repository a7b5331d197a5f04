//! One error type and one body shape for every endpoint, including the
//! framework's own 400/404/405/413/415 answers and panics.

use poem::{
    error::ResponseError,
    http::{header, HeaderValue, StatusCode},
    IntoResponse, Response,
};
use poem_openapi::{
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
    ApiResponse, Object,
};

use crate::control::ControlError;

/// `{"status": 400, "code": "invalid_uid", "msg": "uid at index 3 is empty"}`:
/// WuKongIM's `{msg, status}` plus a stable machine-readable code.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Error")]
pub struct ErrorBody {
    /// The HTTP status, repeated.
    pub status: u16,
    /// Stable machine-readable code, e.g. `invalid_uid`, `no_routable_node`.
    pub code: String,
    /// What was wrong and where.
    pub msg: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {msg}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub msg: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            msg: msg.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", msg)
    }
    pub fn no_routable_node() -> Self {
        ApiError {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_routable_node",
                "no node can take users",
            )
        }
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            ControlError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            ControlError::Invalid(msg) => ApiError::bad_request("invalid_field", msg),
            ControlError::VersionMismatch { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("If-Match does not match the current version {current}"),
            ),
            ControlError::Unavailable => ApiError {
                retry_after: Some(2),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; routing goes on, changes cannot be saved now",
                )
            },
            ControlError::Internal => ApiError::internal(),
            ControlError::Store(source) => {
                tracing::error!(error = %source, cause = ?std::error::Error::source(&source), "Storage failure");
                ApiError::internal()
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = serde_json::json!({
            "status": self.status.as_u16(),
            "code": self.code,
            "msg": self.msg,
        });
        let mut resp = Response::builder()
            .status(self.status)
            .content_type("application/json; charset=utf-8")
            .body(body.to_string());
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.as_response()
    }
}

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        let error = |status: u16, description: &'static str| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema: ErrorBody::schema_ref(),
            }],
            headers: vec![],
        };
        MetaResponses {
            responses: vec![
                error(400, "Invalid input; `msg` names the field."),
                error(401, "Missing or wrong bearer token (admin endpoints)."),
                error(404, "No such resource."),
                error(409, "Conflict with the stored state."),
                error(412, "`If-Match` does not match the current version."),
                error(413, "Body or batch over the limit."),
                error(415, "Content-Type is not application/json."),
                error(
                    503,
                    "No node can take users (`no_routable_node`), or the store cannot be \
                     reached for a write (`store_unavailable`); both with `Retry-After`.",
                ),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// Turns any error that reached the top into the contract's body. Our own
/// errors keep their code; the framework's get one by status; 5xx never
/// carry details.
pub fn error_response(err: poem::Error) -> Response {
    if err.is::<ApiError>() {
        return err.into_response();
    }
    let status = err.status();
    let text = err.to_string();
    let (code, msg): (&'static str, String) = match status.as_u16() {
        400 => ("invalid_request", clean(&text)),
        401 => ("unauthorized", "missing or invalid bearer token".into()),
        404 => ("not_found", "no such path".into()),
        405 => (
            "method_not_allowed",
            "method not allowed on this path".into(),
        ),
        411 => ("length_required", "Content-Length is required".into()),
        413 => ("payload_too_large", "request body is over the limit".into()),
        415 => (
            "unsupported_media_type",
            "Content-Type must be application/json".into(),
        ),
        s if s >= 500 => {
            tracing::error!(error = %text, status = s, "Internal error");
            ("internal", "internal error".into())
        }
        _ => (
            "error",
            status.canonical_reason().unwrap_or("error").to_lowercase(),
        ),
    };
    ApiError::new(status, code, msg).into_response()
}

/// Strips the framework's prefixes from parse errors.
/// Strips the framework's prefixes from parse errors, and the copy of the
/// client's whole value that some of them carry (`..., found <value>.`): it can
/// be long and says nothing the client does not know.
fn clean(text: &str) -> String {
    let text = text
        .strip_prefix("parse request payload error: ")
        .unwrap_or(text);
    let text = match text.find(", found ") {
        Some(i) => &text[..i],
        None => text,
    };
    crate::model::truncate_long(text, 300)
}
