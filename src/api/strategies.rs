//! `/admin/strategy-kinds`, `/admin/strategies`, `/admin/routing`.

use std::sync::Arc;

use poem::{web::Data, Request};
use poem_openapi::{
    param::{Header, Path},
    payload::Json,
    ApiResponse, Object, OpenApi,
};
use serde_json::Value;

use super::{
    actor, auth::AdminAuth, error::ApiError, if_match, nodes::NoContent, ApiTags, AppState,
};
use crate::{model::StrategyRecord, routing::BUILTIN};

pub struct StrategiesApi;

/// An installed strategy plugin.
#[derive(Debug, Clone, Object)]
pub struct StrategyKindInfo {
    pub kind: String,
    pub description: String,
    /// JSON Schema of the params object.
    pub params_schema: Value,
}

/// A stored routing strategy.
#[derive(Debug, Clone, Object)]
pub struct Strategy {
    pub name: String,
    /// One of `GET /admin/strategy-kinds`.
    pub kind: String,
    /// Validated by the kind's plugin.
    pub params: Value,
    /// True for the strategy in effect.
    pub active: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A strategy as written by `PUT`.
#[derive(Debug, Clone, Object)]
#[oai(rename = "StrategyWrite", deny_unknown_fields)]
pub struct StrategyWrite {
    /// Must equal the path's name when given.
    pub name: Option<String>,
    pub kind: String,
    /// Params of the kind; `{}` when omitted.
    pub params: Option<Value>,
    /// Read-only: ignored.
    pub active: Option<Value>,
    /// Read-only: ignored (use `If-Match`).
    pub version: Option<Value>,
    /// Read-only: ignored.
    pub created_at: Option<Value>,
    /// Read-only: ignored.
    pub updated_at: Option<Value>,
}

/// The routing in effect.
#[derive(Debug, Clone, Object)]
pub struct Routing {
    /// Name of the strategy in effect.
    pub active_strategy: String,
    /// Its kind.
    pub kind: String,
    /// `db` (set with `PUT /admin/routing`) or `overrides` (the file's `active_strategy`).
    pub source: String,
    /// Revision of the routing table, as sent in `X-Routing-Revision`.
    pub revision: String,
    pub nodes_total: u64,
    /// Nodes that can take users now.
    pub nodes_routable: u64,
    /// True while no node is healthy and users are routed over all active nodes.
    pub panic_mode: bool,
    pub pins: u64,
    pub user_regions: u64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "RoutingWrite", deny_unknown_fields)]
pub struct RoutingWrite {
    /// Name of a stored strategy.
    pub active_strategy: String,
}

#[derive(ApiResponse)]
pub enum StrategyResponse {
    #[oai(status = 200)]
    Ok(Json<Strategy>, #[oai(header = "ETag")] String),
    #[oai(status = 201)]
    Created(Json<Strategy>, #[oai(header = "ETag")] String),
}

fn strategy_dto(s: &StrategyRecord, active: &str) -> Strategy {
    Strategy {
        name: s.name.clone(),
        kind: s.kind.clone(),
        params: s.params.clone(),
        active: s.name == active,
        version: s.version,
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
    }
}

pub fn routing_dto(state: &AppState) -> Routing {
    let snap = state.ctl.snapshot();
    let view = &snap.view;
    let table = &snap.table;
    let stats = table.stats();
    Routing {
        active_strategy: view.active_strategy.clone(),
        kind: table.strategy().kind.clone(),
        source: view.active_strategy_source.into(),
        revision: table.revision().into(),
        nodes_total: stats.nodes_total as u64,
        nodes_routable: stats.nodes_routable as u64,
        panic_mode: table.panic_mode(),
        pins: stats.pins as u64,
        user_regions: stats.user_regions as u64,
    }
}

#[OpenApi(tag = "ApiTags::Strategies")]
impl StrategiesApi {
    /// List the installed strategy plugins
    #[oai(
        path = "/admin/strategy-kinds",
        method = "get",
        operation_id = "list_strategy_kinds"
    )]
    async fn kinds(&self, _auth: AdminAuth) -> Json<Vec<StrategyKindInfo>> {
        Json(
            BUILTIN
                .iter()
                .map(|k| StrategyKindInfo {
                    kind: k.kind().into(),
                    description: k.description().into(),
                    params_schema: k.params_schema(),
                })
                .collect(),
        )
    }

    /// List strategies
    #[oai(
        path = "/admin/strategies",
        method = "get",
        operation_id = "list_strategies"
    )]
    async fn list(&self, _auth: AdminAuth, state: Data<&Arc<AppState>>) -> Json<Vec<Strategy>> {
        let snap = state.ctl.current();
        let view = &snap.view;
        Json(
            view.strategies
                .iter()
                .map(|s| strategy_dto(s, &view.active_strategy))
                .collect(),
        )
    }

    /// Get a strategy
    #[oai(
        path = "/admin/strategies/:name",
        method = "get",
        operation_id = "get_strategy"
    )]
    async fn get(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        name: Path<String>,
    ) -> Result<StrategyResponse, ApiError> {
        let snap = state.ctl.current();
        let view = &snap.view;
        let s = view
            .strategies
            .iter()
            .find(|s| s.name == *name)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "strategy {:?} not found",
                    crate::model::truncate(&name)
                ))
            })?;
        Ok(StrategyResponse::Ok(
            Json(strategy_dto(s, &view.active_strategy)),
            format!("\"{}\"", s.version),
        ))
    }

    /// Create or replace a strategy
    ///
    /// Params are validated by the kind's plugin; a 400 names the field. A change
    /// to the active strategy is live before the response.
    #[oai(
        path = "/admin/strategies/:name",
        method = "put",
        operation_id = "put_strategy"
    )]
    async fn put(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        name: Path<String>,
        /// Only replace when the stored version matches.
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<String>>,
        body: Json<StrategyWrite>,
    ) -> Result<StrategyResponse, ApiError> {
        if let Some(body_name) = &body.0.name {
            if *body_name != *name {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!(
                        "name: the body's name {:?} differs from the path's {:?}",
                        crate::model::truncate(body_name),
                        crate::model::truncate(&name)
                    ),
                ));
            }
        }
        let expected = if_match(if_match_header.0.as_deref())?;
        let body = body.0;
        let (record, created) = state
            .ctl
            .put_strategy(
                &name,
                &body.kind,
                body.params.unwrap_or(Value::Null),
                expected,
                &actor(req),
            )
            .await?;
        let dto = strategy_dto(&record, &state.ctl.snapshot().view.active_strategy);
        let tag = format!("\"{}\"", record.version);
        Ok(if created {
            StrategyResponse::Created(Json(dto), tag)
        } else {
            StrategyResponse::Ok(Json(dto), tag)
        })
    }

    /// Delete a strategy
    ///
    /// The active strategy cannot be deleted (409).
    #[oai(
        path = "/admin/strategies/:name",
        method = "delete",
        operation_id = "delete_strategy"
    )]
    async fn delete(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        name: Path<String>,
        /// Only delete when the stored version matches.
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<String>>,
    ) -> Result<NoContent, ApiError> {
        let expected = if_match(if_match_header.0.as_deref())?;
        state
            .ctl
            .delete_strategy(&name, expected, &actor(req))
            .await?;
        Ok(NoContent::Done)
    }

    /// Show the routing in effect
    #[oai(path = "/admin/routing", method = "get", operation_id = "get_routing")]
    async fn routing(&self, _auth: AdminAuth, state: Data<&Arc<AppState>>) -> Json<Routing> {
        Json(routing_dto(&state))
    }

    /// Switch the active strategy
    #[oai(path = "/admin/routing", method = "put", operation_id = "put_routing")]
    async fn switch(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        body: Json<RoutingWrite>,
    ) -> Result<Json<Routing>, ApiError> {
        state
            .ctl
            .set_active_strategy(&body.0.active_strategy, &actor(req))
            .await
            .map_err(|e| match e {
                crate::control::ControlError::NotFound(what) => ApiError::bad_request(
                    "invalid_field",
                    format!("active_strategy: {what} not found"),
                ),
                other => other.into(),
            })?;
        Ok(Json(routing_dto(&state)))
    }
}
