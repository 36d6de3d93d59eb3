//! `/v1/devices/{id}/actions` and `/v1/actions/{id}`: remote actions queued for a device
//! (run a command, restart a component, reboot), and their results.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tether_protocol::fleet::ActionKind;

use super::ApiState;
use super::request::{
    ApiError, audit_change, authenticate, authorize_change, no_such_action, tenant_device,
};
use crate::store::Store;
use crate::store::blocking::with_store;

/// This resource's routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/devices/{id}/actions",
            get(device_actions).post(create_action),
        )
        .route("/v1/actions/{id}", get(show_action))
}

/// Reads the body of `POST /v1/devices/{id}/actions`: the action as the device gets it
/// ([`ActionKind`]: `kind` and its fields) plus an optional `expires_in_secs`. Unknown fields
/// are refused, also beside a `reboot` (whose variant has no fields for serde to check).
fn action_request(
    mut body: serde_json::Map<String, serde_json::Value>,
) -> Result<(ActionKind, Option<std::time::Duration>), ApiError> {
    let bad = |message: String| ApiError(StatusCode::BAD_REQUEST, message);
    let expires = match body.remove("expires_in_secs") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            let secs: u64 =
                serde_json::from_value(value).map_err(|e| bad(format!("expires_in_secs: {e}")))?;
            if secs == 0 {
                return Err(bad("expires_in_secs must be at least 1".into()));
            }
            Some(std::time::Duration::from_secs(secs))
        }
    };
    if body.get("kind").and_then(serde_json::Value::as_str) == Some("reboot")
        && let Some(extra) = body.keys().find(|k| *k != "kind")
    {
        return Err(bad(format!(
            "unknown field `{extra}`: a reboot action has no fields"
        )));
    }
    let action = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| bad(format!("bad action: {e}")))?;
    Ok((action, expires))
}

async fn create_action(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = authorize_change(&store, &headers).await?;
    let axum::Json(body) = body?;
    let (action, ttl) = action_request(body)?;
    let device = tenant_device(&store, &who, &id).await?;
    let (tenant_id, device_id) = (who.tenant_id, device.id.clone());
    let detail = json!({ "action": action });
    let view = with_store(&store, move |s| {
        s.create_action(Some(tenant_id), &device.id, &action, ttl)
    })
    .await??;
    audit_change(&store, &who, "action.create", device_id, detail).await;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn device_actions(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let device = tenant_device(&store, &who, &id).await?;
    let views = with_store(&store, move |s| {
        s.actions(Some(&who.tenant), Some(&device.id))
    })
    .await??;
    Ok(axum::Json(views).into_response())
}

async fn show_action(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let key = id.clone();
    let view = with_store(&store, move |s| s.action(&key, Some(who.tenant_id))).await??;
    match view {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(no_such_action(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestResult, fixture, get, send};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn actions_are_queued_listed_and_shown_to_their_tenant_only() -> TestResult {
        let f = fixture()?;
        let uri = "/v1/devices/board1/actions";
        let body = serde_json::json!({
            "kind": "run", "command": "uptime", "timeout_secs": 10, "expires_in_secs": 3600,
        });
        let (status, view) = send(&f.app, "POST", uri, Some(&f.acme), Some(&body)).await?;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        let id = view["id"].as_str().ok_or("no id")?.to_string();
        assert!(id.starts_with("act_"), "{id}");
        assert_eq!(view["device_id"], f.board.as_str());
        assert_eq!(view["device_name"], "board1");
        assert_eq!(view["tenant"], "acme");
        assert_eq!(view["status"], "pending");
        assert_eq!(
            view["action"],
            serde_json::json!({ "kind": "run", "command": "uptime", "timeout_secs": 10 })
        );
        assert!(view["expires_at"].is_string(), "{view}");
        for body in [
            serde_json::json!({ "kind": "restart", "component": "com.example.app" }),
            serde_json::json!({ "kind": "reboot" }),
        ] {
            let by_id = format!("/v1/devices/{}/actions", f.board);
            let (status, view) = send(&f.app, "POST", &by_id, Some(&f.acme), Some(&body)).await?;
            assert_eq!(status, StatusCode::CREATED, "{view}");
            assert!(view["expires_at"].is_null());
            assert_eq!(view["action"], body);
        }

        let (status, _, list) = get(&f.app, uri, Some(&f.acme)).await?;
        assert_eq!(status, StatusCode::OK);
        let kinds: Vec<&str> = list
            .as_array()
            .ok_or("not a list")?
            .iter()
            .filter_map(|v| v["action"]["kind"].as_str())
            .collect();
        assert_eq!(kinds, vec!["reboot", "restart", "run"]);
        let one = format!("/v1/actions/{id}");
        let (status, _, shown) = get(&f.app, &one, Some(&f.acme)).await?;
        assert_eq!((status, &shown), (StatusCode::OK, &view_of(&list, &id)?));

        // The result as the device reports it shows up.
        f.store.take_pending_actions(&f.board)?;
        f.store.record_action_result(
            &f.board,
            &tether_protocol::fleet::ActionResult {
                id: id.clone(),
                status: tether_protocol::fleet::ActionStatus::Succeeded,
                exit_code: Some(0),
                output: "up 3 days\n".into(),
                truncated: false,
                error: None,
            },
        )?;
        let (_, _, shown) = get(&f.app, &one, Some(&f.acme)).await?;
        assert_eq!(shown["status"], "succeeded");
        assert_eq!(shown["exit_code"], 0);
        assert_eq!(shown["output"], "up 3 days\n");

        // Another tenant: the action, the device's list and queuing all look like nothing.
        let (status, _, hidden) = get(&f.app, &one, Some(&f.globex)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, missing) =
            get(&f.app, "/v1/actions/act_000000000000", Some(&f.globex)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            hidden["error"].as_str().map(|e| e.replace(&id, "X")),
            missing["error"]
                .as_str()
                .map(|e| e.replace("act_000000000000", "X"))
        );
        let (status, _, _) = get(&f.app, uri, Some(&f.globex)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let reboot = serde_json::json!({ "kind": "reboot" });
        let (status, _) = send(&f.app, "POST", uri, Some(&f.globex), Some(&reboot)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        for auth in [None, Some("Bearer tet_wrong")] {
            let (status, _) = send(&f.app, "POST", uri, auth, Some(&reboot)).await?;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let (status, _, _) = get(&f.app, &one, auth).await?;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(f.store.actions(None, None)?.len(), 3);
        Ok(())
    }

    fn view_of(
        list: &serde_json::Value,
        id: &str,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        Ok(list
            .as_array()
            .and_then(|l| l.iter().find(|v| v["id"] == id))
            .ok_or("not listed")?
            .clone())
    }

    #[tokio::test]
    async fn bad_action_requests_are_400_naming_the_problem() -> TestResult {
        let f = fixture()?;
        let cases = [
            (serde_json::json!({ "kind": "dance" }), "dance"),
            (serde_json::json!({ "command": "x" }), "kind"),
            (
                serde_json::json!({ "kind": "run", "command": "" }),
                "command",
            ),
            (serde_json::json!({ "kind": "run" }), "command"),
            (
                serde_json::json!({ "kind": "run", "command": "x", "timeout_secs": 0 }),
                "timeout_secs",
            ),
            (
                serde_json::json!({ "kind": "restart", "component": "" }),
                "component",
            ),
            (
                serde_json::json!({ "kind": "reboot", "expires_in_secs": 0 }),
                "expires_in_secs",
            ),
            (
                serde_json::json!({ "kind": "reboot", "expires_in_secs": "soon" }),
                "expires_in_secs",
            ),
            (serde_json::json!({ "kind": "reboot", "extra": 1 }), "extra"),
            (
                serde_json::json!({ "kind": "run", "command": "x", "extra": 1 }),
                "extra",
            ),
            (serde_json::json!(["kind", "reboot"]), "map"),
        ];
        for (body, expected) in cases {
            let (status, answer) = send(
                &f.app,
                "POST",
                "/v1/devices/board1/actions",
                Some(&f.acme),
                Some(&body),
            )
            .await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(message.contains(expected), "{body}: {message}");
        }
        assert!(f.store.actions(None, None)?.is_empty());
        Ok(())
    }
}
