//! The JSON API: devices of the caller's tenant, authenticated with a bearer API token.
//!
//! A device of another tenant is answered exactly like a device that does not exist.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
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
        .route("/v1/devices/{id}/telemetry", get(device_metrics))
        .route("/v1/devices/{id}/events", get(device_events))
        .route("/v1/devices/{id}/logs", get(device_logs))
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

/// Query parameters of the telemetry, events and logs endpoints.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsParams {
    /// Only this topic.
    topic: Option<String>,
    /// Only this level (events).
    level: Option<String>,
    /// Producer time at or after (RFC 3339).
    from: Option<String>,
    /// Producer time before (RFC 3339).
    to: Option<String>,
    /// Records after this sequence number (the `next_after` of the previous page).
    after: Option<u64>,
    /// Page size (default 100, at most 10000).
    limit: Option<usize>,
    /// Wait up to 25 s for records when there are none yet (logs).
    follow: Option<bool>,
}

fn parse_time(name: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(t) = text else { return Ok(None) };
    let time = humantime::parse_rfc3339_weak(t)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{name}={t:?}: {e}")))?;
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("{name}={t:?} is before 1970"),
            )
        })?
        .as_millis() as i64;
    Ok(Some(ms))
}

async fn device_records(
    store: Arc<Store>,
    headers: HeaderMap,
    id: String,
    kind: &'static str,
    params: RecordsParams,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let key = id.clone();
    let device = blocking(&store, move |s| s.find_device(&[who.tenant_id], &key))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no device named {id:?}")))?;
    if let Some(level) = &params.level
        && level.parse::<tether_protocol::telemetry::Level>().is_err()
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("level={level:?}: expected info, warning or critical"),
        ));
    }
    let from_ms = parse_time("from", &params.from)?;
    let to_ms = parse_time("to", &params.to)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 10_000);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(25);
    loop {
        let (device_id, topic, level) = (
            device.id.clone(),
            params.topic.clone(),
            params.level.clone(),
        );
        let after = params.after.unwrap_or(0);
        let records = blocking(&store, move |s| {
            s.telemetry(&crate::store::TelemetryQuery {
                device_id: &device_id,
                topic: topic.as_deref(),
                kind: Some(kind),
                level: level.as_deref(),
                from_ms,
                to_ms,
                after_seq: after,
                limit,
            })
        })
        .await?;
        let waiting = params.follow.unwrap_or(false)
            && records.is_empty()
            && tokio::time::Instant::now() < deadline;
        if !waiting {
            let next_after = records.last().map(|r| r.seq).unwrap_or(after);
            return Ok(
                axum::Json(json!({ "records": records, "next_after": next_after })).into_response(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn device_metrics(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    Query(params): Query<RecordsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_records(store, headers, id, "metric", params).await
}

async fn device_events(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    Query(params): Query<RecordsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_records(store, headers, id, "event", params).await
}

async fn device_logs(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    Query(params): Query<RecordsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_records(store, headers, id, "log", params).await
}
