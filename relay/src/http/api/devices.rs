//! `/v1/devices…`: the tenant's devices, one device, its desired and reported state, a
//! configuration push, and its tags.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;

use super::ApiState;
use super::request::{
    ApiError, audit_change, authenticate, authorize_change, no_such_device, tenant_device,
};
use crate::store::Store;
use crate::store::blocking::with_store;

/// This resource's routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(show_device))
        .route("/v1/devices/{id}/state", get(device_state))
        .route("/v1/devices/{id}/config", put(push_config))
        .route("/v1/devices/{id}/tags", get(device_tags).put(set_tags))
}

async fn list_devices(
    State(store): State<Arc<Store>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let devices = with_store(&store, move |s| s.tenant_devices(who.tenant_id)).await??;
    Ok(axum::Json(devices).into_response())
}

async fn show_device(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let key = id.clone();
    let device = with_store(&store, move |s| s.find_device(&[who.tenant_id], &key)).await??;
    match device {
        Some(d) => Ok(axum::Json(d).into_response()),
        None => Err(no_such_device(&id)),
    }
}

async fn device_state(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let device = tenant_device(&store, &who, &id).await?;
    let state = with_store(&store, move |s| s.device_state(&device.id)).await??;
    Ok(axum::Json(state).into_response())
}

async fn push_config(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = authorize_change(&store, &headers).await?;
    let axum::Json(overrides) = body?;
    let device = tenant_device(&store, &who, &id).await?;
    let device_id = device.id.clone();
    let detail = json!({ "config": overrides });
    let desired = with_store(&store, move |s| s.push_config(&device.id, &overrides)).await??;
    audit_change(&store, &who, "device.config", device_id, detail).await;
    Ok(axum::Json(desired).into_response())
}

/// Body of `PUT /v1/devices/{id}/tags`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsRequest {
    /// Tags to add.
    #[serde(default)]
    add: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    remove: Vec<String>,
}

async fn device_tags(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let device = tenant_device(&store, &who, &id).await?;
    let device_id = device.id.clone();
    let tags = with_store(&store, move |s| s.device_tags(&device_id)).await??;
    Ok(axum::Json(json!({ "device_id": device.id, "tags": tags })).into_response())
}

async fn set_tags(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<TagsRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = authorize_change(&store, &headers).await?;
    let axum::Json(request) = body?;
    let device = tenant_device(&store, &who, &id).await?;
    let device_id = device.id.clone();
    let detail = json!({ "add": request.add, "remove": request.remove });
    audit_change(&store, &who, "device.tag", device.id.clone(), detail).await;
    let tags = with_store(&store, move |s| {
        s.set_tags(&device_id, &request.add, &request.remove)
    })
    .await??;
    Ok(axum::Json(json!({ "device_id": device.id, "tags": tags })).into_response())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestResult, deployment_body, fixture, get, send};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn devices_of_the_tokens_tenant_only() -> TestResult {
        let f = fixture()?;
        let (status, _, list) = get(&f.app, "/v1/devices", Some(&f.acme)).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list[0]["name"], "board1");
        assert_eq!(list[0]["tenant"], "acme");
        assert_eq!(list[0]["status"], "accepted");
        assert_eq!(list[0]["online"], false);
        // By id and by name.
        for key in [f.board.as_str(), "board1"] {
            let (status, _, d) = get(&f.app, &format!("/v1/devices/{key}"), Some(&f.acme)).await?;
            assert_eq!(
                (status, d["id"].as_str()),
                (StatusCode::OK, Some(f.board.as_str()))
            );
        }
        // The scheme name is case-insensitive.
        let lower = f.acme.replacen("Bearer", "bearer", 1);
        let (status, _, _) = get(&f.app, "/v1/devices", Some(&lower)).await?;
        assert_eq!(status, StatusCode::OK);
        // Another tenant sees nothing.
        let (status, _, list) = get(&f.app, "/v1/devices", Some(&f.globex)).await?;
        assert_eq!((status, list), (StatusCode::OK, serde_json::json!([])));
        Ok(())
    }

    #[tokio::test]
    async fn another_tenants_device_looks_exactly_like_a_missing_one() -> TestResult {
        let f = fixture()?;
        let uri = format!("/v1/devices/{}", f.board);
        let (status, _, hidden) = get(&f.app, &uri, Some(&f.globex)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, _, hidden_records) =
            get(&f.app, &format!("{uri}/telemetry"), Some(&f.globex)).await?;
        f.store.remove_device(&f.board)?;
        let (status_gone, _, gone) = get(&f.app, &uri, Some(&f.globex)).await?;
        let (_, _, gone_records) =
            get(&f.app, &format!("{uri}/telemetry"), Some(&f.globex)).await?;
        assert_eq!((status_gone, &gone), (StatusCode::NOT_FOUND, &hidden));
        assert_eq!(gone_records, hidden_records);
        assert!(hidden["error"].is_string(), "{hidden}");
        Ok(())
    }

    #[tokio::test]
    async fn device_state_config_and_tags() -> TestResult {
        let f = fixture()?;
        let uri = format!("/v1/devices/{}/state", f.board);
        let (status, _, state) = get(&f.app, &uri, Some(&f.acme)).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(state["device_id"], f.board.as_str());
        assert!(state["desired"].is_null() && state["reported"].is_null());
        let (status, _, _) = get(&f.app, &uri, Some(&f.globex)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, _) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.acme),
            Some(&deployment_body("device:board1")),
        )
        .await?;
        assert_eq!(status, StatusCode::CREATED);
        let (_, _, state) = get(&f.app, "/v1/devices/board1/state", Some(&f.acme)).await?;
        assert_eq!(state["desired"]["version"], 1);

        let patch = serde_json::json!({ "com.example.app": { "port": 9100 } });
        let (status, desired) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/config",
            Some(&f.acme),
            Some(&patch),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{desired}");
        assert_eq!(desired["version"], 2);
        assert!(desired["deployment_id"].is_null());
        assert_eq!(
            desired["components"]["com.example.app"]["configuration"]["port"],
            9100
        );
        let unknown = serde_json::json!({ "com.example.nope": { "port": 1 } });
        let (status, answer) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/config",
            Some(&f.acme),
            Some(&unknown),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains("com.example.nope")
        );
        let (status, _) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/config",
            Some(&f.globex),
            Some(&patch),
        )
        .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let tags = serde_json::json!({ "add": ["edge", "eu"] });
        let (status, answer) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/tags",
            Some(&f.acme),
            Some(&tags),
        )
        .await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["tags"], serde_json::json!(["edge", "eu"]));
        let remove = serde_json::json!({ "remove": ["eu"] });
        let (_, answer) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/tags",
            Some(&f.acme),
            Some(&remove),
        )
        .await?;
        assert_eq!(answer["tags"], serde_json::json!(["edge"]));
        let (_, _, answer) = get(&f.app, "/v1/devices/board1/tags", Some(&f.acme)).await?;
        assert_eq!(answer["tags"], serde_json::json!(["edge"]));
        let bad = serde_json::json!({ "add": ["Not A Tag"] });
        let (status, _) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/tags",
            Some(&f.acme),
            Some(&bad),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = send(
            &f.app,
            "PUT",
            "/v1/devices/board1/tags",
            Some(&f.globex),
            Some(&tags),
        )
        .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        Ok(())
    }
}
