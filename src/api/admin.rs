//! `/admin/overrides`, `/admin/audit` and `/admin/cluster`.

use std::sync::Arc;

use poem::{web::Data, Request};
use poem_openapi::{param::Query, payload::Json, ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::{actor, auth::AdminAuth, error::ApiError, ApiTags, AppState};

pub struct AdminApi;

/// The overrides file as last loaded.
#[derive(Debug, Clone, Object)]
pub struct OverridesInfo {
    pub path: String,
    /// Content hash of the file in effect; `""` when there is no file.
    pub revision: String,
    /// RFC 3339 time of the last successful load.
    #[oai(skip_serializing_if_is_none)]
    pub loaded_at: Option<String>,
    /// `ok`, or `error` when the last load failed (the last good overrides stay).
    pub status: String,
    /// The error of the last load.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    /// The overrides in effect.
    pub effective: Value,
}

/// One admin change.
#[derive(Debug, Clone, Object)]
pub struct AuditRecord {
    /// Increasing; pass the smallest seen as `before` for the next page.
    pub id: i64,
    pub at: String,
    /// `node.create`, `node.replace`, `node.update`, `node.delete`,
    /// `strategy.put`, `strategy.delete`, `routing.switch`, `overrides.reload`.
    pub action: String,
    pub target: String,
    #[oai(skip_serializing_if_is_none)]
    pub before: Option<Value>,
    #[oai(skip_serializing_if_is_none)]
    pub after: Option<Value>,
    /// The request's `X-Request-Id` (or the one the server gave it); for
    /// system actions, what acted (`startup`, `watcher`, `sighup`).
    pub request_id: String,
    /// `admin` (a request with the admin token) or `system` (the server
    /// itself), set by the server whatever the request id says.
    pub actor: String,
}

#[derive(ApiResponse)]
pub enum AuditPage {
    /// Newest first. A page holds at most `limit` entries and about 1 MiB.
    #[oai(status = 200)]
    Ok(
        Json<Vec<AuditRecord>>,
        /// `</admin/audit?limit=N&before=ID>; rel="next"` when there may be more.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

/// A page of the audit trail stops after about this many bytes of JSON
/// (always holding at least one entry).
const AUDIT_PAGE_BYTES: usize = 1024 * 1024;

/// The store behind the replicas.
#[derive(Debug, Clone, Object)]
pub struct StoreInfo {
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// False while this replica cannot reach it (routing goes on from the
    /// last table; writes answer 503 `store_unavailable`).
    pub up: bool,
}

/// One replica, as it last reported itself (every second).
#[derive(Debug, Clone, Object)]
pub struct Replica {
    /// `cluster.replica_id` (default: host name and port).
    pub id: String,
    /// `cluster.advertise_addr` (default: the listen address).
    pub addr: String,
    pub version: String,
    /// Its routing revision (`X-Routing-Revision`).
    pub revision: String,
    pub started_at: String,
    pub last_seen: String,
}

/// The replicas sharing the store. A replica silent for 5 s is not listed.
#[derive(Debug, Clone, Object)]
pub struct Cluster {
    pub store: StoreInfo,
    /// True when every listed replica reports the same revision.
    pub converged: bool,
    pub replicas: Vec<Replica>,
}

fn overrides_info(state: &AppState, with_effective: bool) -> OverridesInfo {
    let s = state.ctl.overrides_status();
    OverridesInfo {
        path: s.path.display().to_string(),
        revision: s.revision.clone(),
        loaded_at: s.loaded_at.clone(),
        status: if s.error.is_some() { "error" } else { "ok" }.into(),
        error: s.error.clone(),
        effective: if with_effective {
            serde_json::to_value(&*s.effective).unwrap_or(Value::Null)
        } else {
            Value::Null
        },
    }
}

#[OpenApi(tag = "ApiTags::Overrides")]
impl AdminApi {
    /// Show the overrides file's state
    #[oai(
        path = "/admin/overrides",
        method = "get",
        operation_id = "get_overrides"
    )]
    async fn overrides(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        /// `false`: leave out `effective` (`null`), for a cheap status check
        /// however many pins the file holds.
        effective: Query<Option<bool>>,
    ) -> Json<OverridesInfo> {
        Json(overrides_info(&state, effective.0.unwrap_or(true)))
    }

    /// Reload the overrides file now
    ///
    /// 400 with the parse or validation error when the file is invalid; the
    /// last good overrides stay in effect.
    #[oai(
        path = "/admin/overrides/reload",
        method = "post",
        operation_id = "reload_overrides"
    )]
    async fn reload(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
    ) -> Result<Json<OverridesInfo>, ApiError> {
        state
            .ctl
            .reload_overrides(&actor(req))
            .await
            .map_err(|e| ApiError::bad_request("invalid_overrides", e))?;
        Ok(Json(overrides_info(&state, true)))
    }

    /// Page through the audit trail, newest first
    #[oai(
        path = "/admin/audit",
        method = "get",
        operation_id = "list_audit",
        tag = "ApiTags::Audit"
    )]
    async fn audit(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        /// 1..=1000, default 100.
        limit: Query<Option<u32>>,
        /// Only entries with an id below this.
        before: Query<Option<i64>>,
    ) -> Result<AuditPage, ApiError> {
        let limit = limit.0.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit: must be 1..=1000, got {limit}"),
            ));
        }
        // In chunks, so a page of large rows never loads more than it sends.
        const CHUNK: u32 = 50;
        let mut page: Vec<AuditRecord> = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = before.0;
        let mut more = true;
        'fill: while page.len() < limit as usize {
            let want = (limit - page.len() as u32).min(CHUNK);
            let rows = state.ctl.audit_page(want, cursor).await?;
            let got = rows.len();
            for r in rows {
                // Each side is at most 64 KiB as stored.
                let size = 256
                    + r.request_id.len()
                    + r.target.len()
                    + r.before.as_ref().map_or(0, |v| v.to_string().len())
                    + r.after.as_ref().map_or(0, |v| v.to_string().len());
                if !page.is_empty() && bytes + size > AUDIT_PAGE_BYTES {
                    break 'fill;
                }
                bytes += size;
                cursor = Some(r.id);
                page.push(AuditRecord {
                    id: r.id,
                    at: r.at,
                    action: r.action,
                    target: r.target,
                    before: r.before,
                    after: r.after,
                    request_id: r.request_id,
                    actor: r.actor.as_str().to_owned(),
                });
            }
            if got < want as usize {
                more = false;
                break;
            }
        }
        let link = match page.last() {
            Some(last) if more => Some(format!(
                "</admin/audit?limit={limit}&before={}>; rel=\"next\"",
                last.id
            )),
            _ => None,
        };
        Ok(AuditPage::Ok(Json(page), link))
    }

    /// List the replicas and whether they agree
    ///
    /// With SQLite the list holds this one process.
    #[oai(
        path = "/admin/cluster",
        method = "get",
        operation_id = "get_cluster",
        tag = "ApiTags::Cluster"
    )]
    async fn cluster(&self, _auth: AdminAuth, state: Data<&Arc<AppState>>) -> Json<Cluster> {
        let c = state.ctl.cluster();
        Json(Cluster {
            store: StoreInfo {
                kind: c.store_kind.into(),
                up: c.store_up,
            },
            converged: c.converged,
            replicas: c
                .replicas
                .into_iter()
                .map(|r| Replica {
                    id: r.id,
                    addr: r.addr,
                    version: r.version,
                    revision: r.revision,
                    started_at: r.started_at,
                    last_seen: r.last_seen,
                })
                .collect(),
        })
    }
}
