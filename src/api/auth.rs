//! Bearer-token authentication of `/admin/*`.

use std::sync::Arc;

use poem::Request;
use poem_openapi::{auth::Bearer, SecurityScheme};
use subtle::ConstantTimeEq;

use super::AppState;

/// `Authorization: Bearer <token>`: the token from `IMROUTE_ADMIN_TOKEN`, the
/// config file, or the one generated and logged at start.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_token")]
pub struct AdminAuth(());

async fn check_token(req: &Request, bearer: Bearer) -> Option<()> {
    let state = req.data::<Arc<AppState>>()?;
    // Also here, not only in the outer layer by path: whatever path reached
    // an admin operation, the listener and allowlist rules hold.
    state.access.reachable(req).ok()?;
    // Constant time in the token's content: a wrong guess takes as long
    // whichever byte it gets wrong.
    bool::from(bearer.token.as_bytes().ct_eq(state.token.as_bytes())).then_some(())
}

/// Whether `Authorization: Bearer <token>` carries the admin token, compared
/// in constant time; read from the headers alone, before any body.
pub fn bearer_matches(req: &Request, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

/// A random token: 32 bytes from the OS, hex-encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
