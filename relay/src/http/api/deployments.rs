//! `/v1/deployments…`: deploying recipes (with the files they name, removals and
//! configuration) to a device or a tag of the tenant's devices, and the tenant's deployments.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::ApiState;
use super::request::{ApiError, audit_change, authenticate, authorize_change, no_such_deployment};
use crate::store::blocking::with_store;
use crate::store::{NewDeployment, Store, StoreError, Target};

/// This resource's routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/deployments",
            post(create_deployment)
                .layer(DefaultBodyLimit::max(MAX_DEPLOYMENT_BODY))
                .get(list_deployments),
        )
        .route("/v1/deployments/{id}", get(show_deployment))
}

/// Largest request body of `POST /v1/deployments` (recipes travel inline).
const MAX_DEPLOYMENT_BODY: usize = 4 * 1024 * 1024;

/// One recipe in a deployment request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeBody {
    /// File name, used in error messages and as the stored recipe's name.
    name: String,
    /// The recipe (YAML).
    text: String,
}

/// One file a recipe names by bare file name, in a deployment request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactBody {
    /// The bare file name the recipe's `uri` gives.
    name: String,
    /// The file's bytes, base64 (standard alphabet, padded).
    base64: String,
}

/// Body of `POST /v1/deployments`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentRequest {
    /// `tag:T` or `device:D`.
    target: String,
    /// The recipes.
    #[serde(default)]
    recipes: Vec<RecipeBody>,
    /// Files the recipes name by bare file name (like `relay deploy create --artifacts`).
    #[serde(default)]
    artifacts: Vec<ArtifactBody>,
    /// Components to remove from the devices.
    #[serde(default)]
    remove: Vec<String>,
    /// Configuration assignments, `[component:]key=value`.
    #[serde(default)]
    set: Vec<String>,
}

async fn create_deployment(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<axum::Json<DeploymentRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let who = authorize_change(&store, &headers).await?;
    let tenant = who.tenant.clone();
    let axum::Json(request) = body?;
    let target: Target = request
        .target
        .parse()
        .map_err(|e: StoreError| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let artifacts_dir = state.artifacts_dir.clone();
    let recipes = request
        .recipes
        .into_iter()
        .map(|r| (r.name, r.text))
        .collect();
    let set = request.set;
    let remove = request.remove;
    let mut artifacts = Vec::with_capacity(request.artifacts.len());
    for (i, a) in request.artifacts.into_iter().enumerate() {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD
            .decode(a.base64.as_bytes())
            .map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("artifacts[{i}].base64 ({}): {e}", a.name),
                )
            })?;
        artifacts.push((a.name, data));
    }
    // A device of another tenant is not found, answered as `no device named ...` exactly like
    // a device that does not exist (the store's NotFound reads like `no_such_device`).
    let view = with_store(&store, move |s| {
        s.create_deployment(
            &artifacts_dir,
            NewDeployment {
                tenant: &tenant,
                target,
                recipes,
                set,
                os: None,
                artifacts,
                remove,
            },
        )
    })
    .await??;
    let detail = serde_json::to_value(&view).unwrap_or_default();
    let id = detail["id"].as_str().unwrap_or_default().to_string();
    audit_change(&store, &who, "deploy.create", id, detail).await;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn list_deployments(
    State(store): State<Arc<Store>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let views = with_store(&store, move |s| s.deployments(Some(&who.tenant))).await??;
    Ok(axum::Json(views).into_response())
}

async fn show_deployment(
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&store, &headers).await?;
    let key = id.clone();
    let view = with_store(&store, move |s| s.deployment(&key, Some(who.tenant_id))).await??;
    match view {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(no_such_deployment(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{RECIPE, TestResult, deployment_body, fixture, get, send};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn a_deployment_carries_the_files_its_recipe_names_and_removals() -> TestResult {
        use base64::Engine;
        let f = fixture()?;
        let data = b"print('hi')\n";
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
        let recipe = format!(
            "name: com.example.py\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: app.py\n        sha256: {sha}\n    lifecycle:\n      run: python3 {{artifacts:path}}/app.py\n"
        );
        let body = |b64: &str| {
            serde_json::json!({
                "target": format!("device:{}", f.board),
                "recipes": [{ "name": "py.yaml", "text": recipe }],
                "artifacts": [{ "name": "app.py", "base64": b64 }],
            })
        };
        let (status, e) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.acme),
            Some(&body("%%%")),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains("artifacts[0]")),
            "{e}"
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        let (status, view) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.acme),
            Some(&body(&b64)),
        )
        .await?;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert!(f.store.artifact("acme", &sha)?.is_some());
        let recipe_sha = view["components"]["com.example.py"]["recipe_sha256"]
            .as_str()
            .ok_or("no recipe digest")?;
        let stored = std::fs::read_to_string(f.path.with_file_name("artifacts").join(recipe_sha))?;
        assert!(
            stored.contains(&format!("relay:sha256:{sha}/app.py")),
            "{stored}"
        );
        let removal = serde_json::json!({
            "target": format!("device:{}", f.board),
            "remove": ["com.example.py"],
        });
        let (status, view) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.acme),
            Some(&removal),
        )
        .await?;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert_eq!(view["removed"], serde_json::json!(["com.example.py"]));
        Ok(())
    }

    #[tokio::test]
    async fn deployments_are_created_and_seen_by_their_tenant_only() -> TestResult {
        let f = fixture()?;
        f.store.set_tags(&f.board, &["edge".into()], &[])?;
        let body = deployment_body("tag:edge");
        let (status, view) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.acme),
            Some(&body),
        )
        .await?;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        let id = view["id"].as_str().ok_or("no id")?.to_string();
        assert_eq!(view["target"], "tag:edge");
        assert_eq!(view["devices"][0]["device_name"], "board1");
        assert_eq!(view["devices"][0]["status"], "pending");
        assert_eq!(
            view["components"]["com.example.app"]["configuration"],
            serde_json::json!({ "port": 9000, "mode": "fast" })
        );
        // The recipe was stored as an artifact under the artifacts directory.
        let sha = view["components"]["com.example.app"]["recipe_sha256"]
            .as_str()
            .ok_or("no recipe digest")?;
        let path = f.path.with_file_name("artifacts").join(sha);
        assert_eq!(std::fs::read_to_string(path)?, RECIPE);

        let uri = format!("/v1/deployments/{id}");
        let (status, shown) = send(&f.app, "GET", &uri, Some(&f.acme), None).await?;
        assert_eq!((status, &shown), (StatusCode::OK, &view));
        let (status, list) = send(&f.app, "GET", "/v1/deployments", Some(&f.acme), None).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        // Another tenant sees neither the deployment nor the list entry.
        let (status, hidden) = send(&f.app, "GET", &uri, Some(&f.globex), None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{hidden}");
        let (status, missing) = send(
            &f.app,
            "GET",
            "/v1/deployments/dep_000000000000",
            Some(&f.globex),
            None,
        )
        .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            hidden["error"].as_str().map(|e| e.replace(&id, "X")),
            missing["error"]
                .as_str()
                .map(|e| e.replace("dep_000000000000", "X"))
        );
        let (status, list) = send(&f.app, "GET", "/v1/deployments", Some(&f.globex), None).await?;
        assert_eq!((status, list), (StatusCode::OK, serde_json::json!([])));
        // Deploying to another tenant's device looks like deploying to no device.
        let (status, foreign) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.globex),
            Some(&deployment_body(&format!("device:{}", f.board))),
        )
        .await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, _, show_foreign) =
            get(&f.app, &format!("/v1/devices/{}", f.board), Some(&f.globex)).await?;
        assert_eq!(foreign, show_foreign);
        // And without a token nothing happens at all.
        for auth in [None, Some("Bearer tet_wrong")] {
            let (status, _) = send(&f.app, "POST", "/v1/deployments", auth, Some(&body)).await?;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(f.store.deployments(None)?.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn bad_deployment_requests_are_400_naming_the_problem() -> TestResult {
        let f = fixture()?;
        let bad_recipe = serde_json::json!({
            "target": "device:board1",
            "recipes": [{ "name": "broken.yaml", "text": "name: [" }],
        });
        let cases = [
            (deployment_body("group:x"), "group:x"),
            (deployment_body("tag:nobody"), "nobody"),
            (bad_recipe, "broken.yaml"),
            (
                serde_json::json!({ "target": "device:board1", "recipes": [], "extra": 1 }),
                "extra",
            ),
            (
                serde_json::json!({ "target": "device:board1", "recipes": [{ "name": "a.yaml", "text": RECIPE }], "set": ["com.example.other:x=1"] }),
                "com.example.other",
            ),
            (serde_json::json!({ "recipes": [] }), "target"),
        ];
        for (body, expected) in cases {
            let (status, answer) = send(
                &f.app,
                "POST",
                "/v1/deployments",
                Some(&f.acme),
                Some(&body),
            )
            .await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(message.contains(expected), "{body}: {message}");
        }
        // Larger than 4 MiB: refused before it is parsed.
        let huge = serde_json::json!({
            "target": "device:board1",
            "recipes": [{ "name": "a.yaml", "text": "x".repeat(5 * 1024 * 1024) }],
        });
        let (status, _) = send(
            &f.app,
            "POST",
            "/v1/deployments",
            Some(&f.acme),
            Some(&huge),
        )
        .await?;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(f.store.deployments(None)?.is_empty());
        Ok(())
    }
}
