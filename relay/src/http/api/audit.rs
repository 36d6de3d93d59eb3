//! `/v1/audit`: the tenant's audit trail.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use super::request::{ApiError, authenticate, page_limit, parse_time};
use crate::store::Store;
use crate::store::blocking::with_store;

/// This resource's routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/audit", get(list_audit))
}

/// Query parameters of `GET /v1/audit`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Entries at or after this time (RFC 3339, any offset; compared to the second).
    since: Option<String>,
    /// Most entries (default 1000, at most 10000): the newest ones unless `oldest`.
    limit: Option<usize>,
    /// `true`: the oldest `limit` entries instead of the newest.
    oldest: Option<bool>,
}

/// `GET /v1/audit`: the token's tenant's audit entries, the newest `limit` (or with
/// `oldest=true` the oldest), listed oldest first.
async fn list_audit(
    State(store): State<Arc<Store>>,
    params: Result<Query<AuditParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let Query(params) = params?;
    let since = parse_time("since", &params.since)?;
    let limit = page_limit(params.limit, 1000)?;
    let tenant = who.tenant.clone();
    let entries = with_store(&store, move |s| {
        s.audit_entries(since, Some(&tenant), limit, params.oldest.unwrap_or(false))
    })
    .await??;
    Ok(axum::Json(entries).into_response())
}
