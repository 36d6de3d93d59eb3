//! `/v1/sessions…`: engineers' recorded sessions of the tenant, one session's record, and its
//! terminal recording (asciicast v2).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use super::request::{ApiError, authenticate, page_limit, tenant_device};
use crate::store::blocking::with_store;
use crate::store::{SessionQuery, Store};

/// This resource's routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", get(show_session))
        .route("/v1/sessions/{id}/cast", get(session_cast))
}

/// Query parameters of `GET /v1/sessions`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParams {
    /// Only sessions on this device (id or name).
    device: Option<String>,
    /// Only this engineer's sessions.
    user: Option<String>,
    /// Most sessions (default 100, at most 10000).
    limit: Option<usize>,
}

/// `GET /v1/sessions`: the tenant's recorded sessions, newest first.
async fn list_sessions(
    State(store): State<Arc<Store>>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let Query(params) = params?;
    let device_id = match &params.device {
        Some(d) => Some(tenant_device(&store, &who, d).await?.id),
        None => None,
    };
    let query = SessionQuery {
        tenant_id: Some(who.tenant_id),
        device_id,
        engineer: params.user,
        limit: page_limit(params.limit, 100)?,
    };
    let sessions = with_store(&store, move |s| s.sessions(&query)).await??;
    Ok(axum::Json(sessions).into_response())
}

/// `GET /v1/sessions/{id}`: one session's record.
async fn show_session(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let (tenant_id, key) = (who.tenant_id, id.clone());
    let (session, _) = with_store(&store, move |s| s.session(&key, Some(tenant_id))).await??;
    Ok(axum::Json(session).into_response())
}

/// `GET /v1/sessions/{id}/cast`: the session's asciicast v2 recording.
async fn session_cast(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&state.store, &headers).await?;
    let (tenant_id, key) = (who.tenant_id, id.clone());
    let (_, cast_file) =
        with_store(&state.store, move |s| s.session(&key, Some(tenant_id))).await??;
    let Some(name) = cast_file.filter(|n| !n.contains('/')) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("session {id:?} has no terminal recording"),
        ));
    };
    let path = state.sessions_dir.join(name);
    let body = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(format_args!("reading {}: {e}", path.display())))?;
    Ok(([(header::CONTENT_TYPE, "application/x-asciicast")], body).into_response())
}
