//! The JSON API: devices of the caller's tenant, authenticated with a bearer API token.
//!
//! A device of another tenant is answered exactly like a device that does not exist.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::store::{ApiIdentity, Store, StoreError};

/// An API failure, rendered as JSON `{"error": "..."}` with a status code.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidToken | StoreError::TokenExpired | StoreError::TokenUsedUp => {
                ApiError(StatusCode::UNAUTHORIZED, e.to_string())
            }
            StoreError::NotFound { .. } => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            other => {
                tracing::error!("api: {other}");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        }
    }
}

/// Runs a blocking store call for the API.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// The caller's tenant from `Authorization: Bearer <token>`.
async fn authenticate(store: &Arc<Store>, headers: &HeaderMap) -> Result<ApiIdentity, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "missing bearer token".into()))?
        .to_string();
    blocking(store, move |s| s.api_token(&token)).await
}

/// The API routes.
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(show_device))
        .with_state(store)
}

async fn list_devices(
    State(store): State<Arc<Store>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let devices = blocking(&store, move |s| s.tenant_devices(who.tenant_id)).await?;
    Ok(axum::Json(devices).into_response())
}

async fn show_device(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let key = id.clone();
    let device = blocking(&store, move |s| s.find_device(&[who.tenant_id], &key)).await?;
    match device {
        Some(d) => Ok(axum::Json(d).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no device named {id:?}"),
        )),
    }
}
