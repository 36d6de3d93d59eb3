//! `/v1/devices/{id}/telemetry|events|logs`: a device's stored records of one kind, filtered
//! by topic, level and producer time, paged by sequence number, and for a follower waited for.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::ApiState;
use super::request::{ApiError, authenticate, no_such_device, page_limit, parse_time_ms};
use crate::store::Store;
use crate::store::blocking::with_store;

/// This resource's routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/devices/{id}/telemetry", get(device_metrics))
        .route("/v1/devices/{id}/events", get(device_events))
        .route("/v1/devices/{id}/logs", get(device_logs))
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

async fn device_records(
    store: Arc<Store>,
    headers: HeaderMap,
    id: String,
    kind: &'static str,
    params: Result<Query<RecordsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    // Who is asking comes first: an unauthenticated caller learns nothing, not even that its
    // query parameters are wrong.
    let who = authenticate(&store, &headers).await?;
    let Query(params) = params?;
    let key = id.clone();
    let device = with_store(&store, move |s| s.find_device(&[who.tenant_id], &key))
        .await??
        .ok_or_else(|| no_such_device(&id))?;
    if let Some(level) = &params.level
        && level.parse::<tether_protocol::telemetry::Level>().is_err()
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("level={level:?}: expected info, warning or critical"),
        ));
    }
    let from_ms = parse_time_ms("from", &params.from)?;
    let to_ms = parse_time_ms("to", &params.to)?;
    let limit = page_limit(params.limit, 100)?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(25);
    loop {
        let (device_id, topic, level) = (
            device.id.clone(),
            params.topic.clone(),
            params.level.clone(),
        );
        let after = params.after.unwrap_or(0);
        let records = with_store(&store, move |s| {
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
        .await??;
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
    params: Result<Query<RecordsParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_records(store, headers, id, "metric", params).await
}

async fn device_events(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    params: Result<Query<RecordsParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_records(store, headers, id, "event", params).await
}

async fn device_logs(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    params: Result<Query<RecordsParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    device_records(store, headers, id, "log", params).await
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestResult, fixture, get};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn bad_query_parameters_are_400_in_json() -> TestResult {
        let f = fixture()?;
        for query in ["bogus=1", "after=minus", "from=yesterday", "level=loud"] {
            let uri = format!("/v1/devices/board1/events?{query}");
            let (status, _, body) = get(&f.app, &uri, Some(&f.acme)).await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        let (status, _, body) =
            get(&f.app, "/v1/devices/board1/events?limit=5", Some(&f.acme)).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({ "records": [], "next_after": 0 }));
        Ok(())
    }
}
