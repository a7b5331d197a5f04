//! `/admin/nodes`: node CRUD, heartbeats.

use std::{collections::BTreeMap, sync::Arc};

use poem::{web::Data, Request};
use poem_openapi::{
    param::{Header, Path, Query},
    payload::Json,
    types::MaybeUndefined,
    ApiResponse, Enum, Object, OpenApi,
};
use serde_json::Value;

use super::{
    actor, auth::AdminAuth, error::ApiError, if_match, payload::JsonArray, ApiTags, AppState,
};
use crate::{
    health::{HealthView, Status},
    model::{Addrs, NodeRecord, NodeSpec, NodeState, DEFAULT_WEIGHT},
    overrides::{EffectiveNode, Source},
};

pub struct NodesApi;

/// Addresses of a node on one network. `""` (or absent) means none.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename = "Addresses", deny_unknown_fields)]
pub struct AddrsDto {
    /// `host:port`, host a DNS name, IPv4 or `[IPv6]`.
    #[oai(default)]
    pub tcp_addr: String,
    /// `ws://host[:port][/path]`.
    #[oai(default)]
    pub ws_addr: String,
    /// `wss://host[:port][/path]`.
    #[oai(default)]
    pub wss_addr: String,
}

impl From<AddrsDto> for Addrs {
    fn from(a: AddrsDto) -> Self {
        Addrs {
            tcp_addr: a.tcp_addr,
            ws_addr: a.ws_addr,
            wss_addr: a.wss_addr,
        }
    }
}

impl From<&Addrs> for AddrsDto {
    fn from(a: &Addrs) -> Self {
        AddrsDto {
            tcp_addr: a.tcp_addr.clone(),
            ws_addr: a.ws_addr.clone(),
            wss_addr: a.wss_addr.clone(),
        }
    }
}

/// Fields of an address group to change; absent fields stay.
#[derive(Debug, Clone, Default, Object)]
#[oai(rename = "AddressesPatch", deny_unknown_fields)]
pub struct AddrsPatchDto {
    pub tcp_addr: Option<String>,
    pub ws_addr: Option<String>,
    pub wss_addr: Option<String>,
}

impl AddrsPatchDto {
    fn apply(self, to: &mut Addrs) {
        if let Some(v) = self.tcp_addr {
            to.tcp_addr = v;
        }
        if let Some(v) = self.ws_addr {
            to.ws_addr = v;
        }
        if let Some(v) = self.wss_addr {
            to.wss_addr = v;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "NodeState", rename_all = "lowercase")]
pub enum NodeStateDto {
    /// Takes users.
    Active,
    /// Takes no new users; stays listed with its health (planned shutdown).
    Draining,
    /// Takes no users.
    Disabled,
}

impl From<NodeStateDto> for NodeState {
    fn from(s: NodeStateDto) -> Self {
        match s {
            NodeStateDto::Active => NodeState::Active,
            NodeStateDto::Draining => NodeState::Draining,
            NodeStateDto::Disabled => NodeState::Disabled,
        }
    }
}

impl From<NodeState> for NodeStateDto {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Active => NodeStateDto::Active,
            NodeState::Draining => NodeStateDto::Draining,
            NodeState::Disabled => NodeStateDto::Disabled,
        }
    }
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename = "HealthStatus", rename_all = "lowercase")]
pub enum HealthStatusDto {
    Healthy,
    Unhealthy,
    Unknown,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename = "NodeSource")]
pub enum SourceDto {
    #[oai(rename = "db")]
    Db,
    #[oai(rename = "overrides")]
    Overrides,
    #[oai(rename = "db+overrides")]
    DbAndOverrides,
}

/// A node's health as last observed.
#[derive(Debug, Clone, Object)]
#[oai(rename = "NodeHealth")]
pub struct HealthDto {
    pub status: HealthStatusDto,
    /// RFC 3339 time of the last status change.
    pub since: String,
    pub reason: String,
    /// Connections reported by the last heartbeat.
    #[oai(skip_serializing_if_is_none)]
    pub connections: Option<u64>,
    /// Over its bound of the reported connections: the `bounded` kind sends
    /// its users to their next choice (always false with other kinds).
    pub full: bool,
}

impl From<HealthView> for HealthDto {
    fn from(h: HealthView) -> Self {
        HealthDto {
            status: match h.status {
                Status::Healthy => HealthStatusDto::Healthy,
                Status::Unhealthy => HealthStatusDto::Unhealthy,
                Status::Unknown => HealthStatusDto::Unknown,
            },
            since: h.since,
            reason: h.reason,
            connections: h.connections,
            full: h.full,
        }
    }
}

/// A node with its effective values (stored values with overrides applied).
#[derive(Debug, Clone, Object)]
pub struct Node {
    /// `[A-Za-z0-9._-]{1,64}`, immutable.
    pub id: String,
    #[oai(skip_serializing_if_is_none)]
    pub region: Option<String>,
    /// 0..=65535; 0 takes no users.
    pub weight: u32,
    pub state: NodeStateDto,
    pub external: AddrsDto,
    pub intranet: AddrsDto,
    pub labels: BTreeMap<String, String>,
    pub health: HealthDto,
    /// Where the values come from: `db`, `overrides` or `db+overrides`.
    pub source: SourceDto,
    /// Stored version, incremented by every write (0 for nodes that exist only
    /// in the overrides file). Also sent as `ETag`.
    pub version: i64,
    #[oai(skip_serializing_if_is_none)]
    pub created_at: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub updated_at: Option<String>,
}

/// A node as written by `POST` and `PUT`. Omitted fields take their defaults.
/// Read-only fields of [`Node`] are accepted and ignored, so a node read with
/// `GET` can be sent back with `PUT`.
#[derive(Debug, Clone, Object)]
#[oai(rename = "NodeWrite", deny_unknown_fields)]
pub struct NodeWrite {
    /// Required for `POST`; for `PUT` it must equal the path id when given.
    pub id: Option<String>,
    pub region: Option<String>,
    /// 0..=65535, default 100.
    pub weight: Option<i64>,
    /// Default `active`.
    pub state: Option<NodeStateDto>,
    pub external: Option<AddrsDto>,
    pub intranet: Option<AddrsDto>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Read-only: ignored.
    pub health: Option<Value>,
    /// Read-only: ignored.
    pub source: Option<Value>,
    /// Read-only: ignored (use `If-Match` for optimistic concurrency).
    pub version: Option<Value>,
    /// Read-only: ignored.
    pub created_at: Option<Value>,
    /// Read-only: ignored.
    pub updated_at: Option<Value>,
}

/// Fields to change; absent fields stay. `region: null` clears the region;
/// `labels`, when given, replace all labels.
#[derive(Debug, Clone, Object)]
#[oai(rename = "NodePatch", deny_unknown_fields)]
pub struct NodePatchDto {
    pub region: MaybeUndefined<String>,
    pub weight: Option<i64>,
    pub state: Option<NodeStateDto>,
    pub external: Option<AddrsPatchDto>,
    pub intranet: Option<AddrsPatchDto>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Heartbeat {
    /// Connections the node currently holds.
    #[oai(default)]
    pub connections: u64,
}

fn weight(w: Option<i64>) -> Result<Option<u16>, String> {
    match w {
        None => Ok(None),
        Some(w) => u16::try_from(w)
            .map(Some)
            .map_err(|_| format!("weight: must be 0..=65535, got {w}")),
    }
}

impl NodeWrite {
    pub(crate) fn into_spec(self, id: String) -> Result<NodeSpec, String> {
        Ok(NodeSpec {
            id,
            region: self.region,
            weight: weight(self.weight)?.unwrap_or(DEFAULT_WEIGHT),
            state: self.state.map_or(NodeState::Active, Into::into),
            external: self.external.map(Into::into).unwrap_or_default(),
            intranet: self.intranet.map(Into::into).unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
        })
    }
}

impl NodePatchDto {
    pub(crate) fn apply(self, spec: &NodeSpec) -> Result<NodeSpec, String> {
        let mut out = spec.clone();
        match self.region {
            MaybeUndefined::Undefined => {}
            MaybeUndefined::Null => out.region = None,
            MaybeUndefined::Value(r) => out.region = Some(r),
        }
        if let Some(w) = weight(self.weight)? {
            out.weight = w;
        }
        if let Some(s) = self.state {
            out.state = s.into();
        }
        if let Some(p) = self.external {
            p.apply(&mut out.external);
        }
        if let Some(p) = self.intranet {
            p.apply(&mut out.intranet);
        }
        if let Some(l) = self.labels {
            out.labels = l;
        }
        Ok(out)
    }
}

pub fn node_dto(state: &AppState, n: &EffectiveNode) -> Node {
    Node {
        id: n.spec.id.clone(),
        region: n.spec.region.clone(),
        weight: u32::from(n.spec.weight),
        state: n.spec.state.into(),
        external: (&n.spec.external).into(),
        intranet: (&n.spec.intranet).into(),
        labels: n.spec.labels.clone(),
        health: state.ctl.health_view(n).into(),
        source: match n.source {
            Source::Db => SourceDto::Db,
            Source::Overrides => SourceDto::Overrides,
            Source::DbAndOverrides => SourceDto::DbAndOverrides,
        },
        version: n.stored.as_ref().map_or(0, |s| s.version),
        created_at: n.stored.as_ref().map(|s| s.created_at.clone()),
        updated_at: n.stored.as_ref().map(|s| s.updated_at.clone()),
    }
}

fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[derive(ApiResponse)]
pub enum NodeResponse {
    /// The node.
    #[oai(status = 200)]
    Ok(Json<Node>, #[oai(header = "ETag")] String),
    /// Created.
    #[oai(status = 201)]
    Created(Json<Node>, #[oai(header = "ETag")] String),
}

#[derive(ApiResponse)]
pub enum NodeList {
    /// The nodes (one page with `limit`).
    #[oai(status = 200)]
    Ok(
        JsonArray<Node>,
        /// `</admin/nodes?limit=N&after=ID>; rel="next"` when there are more.
        #[oai(header = "Link")]
        Option<String>,
    ),
}

#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if crate::model::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "node {:?} not found",
            crate::model::truncate(id)
        )))
    }
}

impl AppState {
    /// The answer to a node write: the written record, overrides applied.
    fn node_response(&self, record: NodeRecord, created: bool) -> NodeResponse {
        let dto = node_dto(self, &self.ctl.effective(record));
        let tag = etag(dto.version);
        if created {
            NodeResponse::Created(Json(dto), tag)
        } else {
            NodeResponse::Ok(Json(dto), tag)
        }
    }
}

#[OpenApi(tag = "ApiTags::Nodes")]
impl NodesApi {
    /// List nodes
    ///
    /// In id order. With `limit`, one page: the `Link` header (`rel="next"`)
    /// names the next page, which starts after the last id of this one.
    #[oai(path = "/admin/nodes", method = "get", operation_id = "list_nodes")]
    async fn list(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        /// Only nodes of this region.
        region: Query<Option<String>>,
        /// Only nodes in this state.
        #[oai(name = "state")]
        node_state: Query<Option<NodeStateDto>>,
        /// At most this many nodes (1..=10000); all when absent.
        limit: Query<Option<u32>>,
        /// Only nodes whose id sorts after this one (the last id of the
        /// previous page).
        after: Query<Option<String>>,
    ) -> Result<NodeList, ApiError> {
        if let Some(l) = limit.0 {
            if !(1..=10_000).contains(&l) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("limit: must be 1..=10000, got {l}"),
                ));
            }
        }
        let snap = state.ctl.current();
        let view = &snap.view;
        let want_state: Option<NodeState> = node_state.0.map(Into::into);
        let start = match &after.0 {
            Some(a) => view
                .nodes
                .partition_point(|n| n.spec.id.as_str() <= a.as_str()),
            None => 0,
        };
        let max = limit.0.map_or(usize::MAX, |l| l as usize);
        let mut page = Vec::new();
        let mut more = false;
        for n in view.nodes[start..]
            .iter()
            .filter(|n| region.0.is_none() || n.spec.region == region.0)
            .filter(|n| want_state.is_none_or(|s| n.spec.state == s))
        {
            if page.len() == max {
                more = true;
                break;
            }
            page.push(node_dto(&state, n));
        }
        let link = match (more, page.last()) {
            (true, Some(last)) => {
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(r) = &region.0 {
                    query.push(("region", r.clone()));
                }
                if let Some(s) = want_state {
                    query.push(("state", s.as_str().to_owned()));
                }
                query.push(("limit", max.to_string()));
                query.push(("after", last.id.clone()));
                let query = serde_urlencoded::to_string(&query).unwrap_or_default();
                Some(format!("</admin/nodes?{query}>; rel=\"next\""))
            }
            _ => None,
        };
        Ok(NodeList::Ok(JsonArray(page), link))
    }

    /// Create a node
    #[oai(path = "/admin/nodes", method = "post", operation_id = "create_node")]
    async fn create(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        body: Json<NodeWrite>,
    ) -> Result<NodeResponse, ApiError> {
        let id = body
            .0
            .id
            .clone()
            .ok_or_else(|| ApiError::bad_request("invalid_field", "id: required"))?;
        let spec = body
            .0
            .into_spec(id)
            .map_err(|e| ApiError::bad_request("invalid_field", e))?;
        let record = state.ctl.create_node(spec, &actor(req)).await?;
        Ok(state.node_response(record, true))
    }

    /// Get a node
    #[oai(path = "/admin/nodes/:id", method = "get", operation_id = "get_node")]
    async fn get(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        id: Path<String>,
    ) -> Result<NodeResponse, ApiError> {
        check_id(&id)?;
        let snap = state.ctl.current();
        let view = &snap.view;
        let node = view
            .nodes
            .iter()
            .find(|n| n.spec.id == *id)
            .ok_or_else(|| ApiError::not_found(format!("node {} not found", *id)))?;
        let dto = node_dto(&state, node);
        let tag = etag(dto.version);
        Ok(NodeResponse::Ok(Json(dto), tag))
    }

    /// Create or replace a node
    ///
    /// Replaces the whole node: omitted fields take their defaults. 201 when it
    /// was created.
    #[oai(path = "/admin/nodes/:id", method = "put", operation_id = "put_node")]
    async fn put(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<String>,
        /// Only replace when the stored version matches (`"3"` or `3`).
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<String>>,
        body: Json<NodeWrite>,
    ) -> Result<NodeResponse, ApiError> {
        if let Some(body_id) = &body.0.id {
            if *body_id != *id {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!(
                        "id: the body's id {:?} differs from the path's {:?}",
                        crate::model::truncate(body_id),
                        crate::model::truncate(&id)
                    ),
                ));
            }
        }
        let expected = if_match(if_match_header.0.as_deref())?;
        let spec = body
            .0
            .into_spec(id.0.clone())
            .map_err(|e| ApiError::bad_request("invalid_field", e))?;
        let (record, created) = state.ctl.put_node(spec, expected, &actor(req)).await?;
        Ok(state.node_response(record, created))
    }

    /// Change some fields of a node
    #[oai(
        path = "/admin/nodes/:id",
        method = "patch",
        operation_id = "patch_node"
    )]
    async fn patch(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<String>,
        /// Only change when the stored version matches.
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<String>>,
        body: Json<NodePatchDto>,
    ) -> Result<NodeResponse, ApiError> {
        check_id(&id)?;
        let expected = if_match(if_match_header.0.as_deref())?;
        let record = state
            .ctl
            .patch_node(
                &id,
                expected,
                {
                    let patch = body.0;
                    move |spec| patch.clone().apply(spec)
                },
                &actor(req),
            )
            .await?;
        Ok(state.node_response(record, false))
    }

    /// Delete a node
    #[oai(
        path = "/admin/nodes/:id",
        method = "delete",
        operation_id = "delete_node"
    )]
    async fn delete(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<String>,
        /// Only delete when the stored version matches.
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<String>>,
    ) -> Result<NoContent, ApiError> {
        check_id(&id)?;
        let expected = if_match(if_match_header.0.as_deref())?;
        state.ctl.delete_node(&id, expected, &actor(req)).await?;
        Ok(NoContent::Done)
    }

    /// Report that a node is alive, with its load
    ///
    /// A node that has sent heartbeats and then stays silent for
    /// `health.heartbeat_ttl_secs` becomes unhealthy until its next heartbeat.
    #[oai(
        path = "/admin/nodes/:id/heartbeat",
        method = "put",
        operation_id = "heartbeat"
    )]
    async fn heartbeat(
        &self,
        _auth: AdminAuth,
        state: Data<&Arc<AppState>>,
        id: Path<String>,
        body: Json<Heartbeat>,
    ) -> Result<NoContent, ApiError> {
        check_id(&id)?;
        state.ctl.heartbeat(&id, body.0.connections).await?;
        Ok(NoContent::Done)
    }
}
