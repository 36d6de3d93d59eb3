//! The JSON API: devices of the caller's tenant, authenticated with a bearer API token.
//!
//! - `GET /v1/devices`: the tenant's devices.
//! - `GET /v1/devices/{id}`: one device, by id or name.
//! - `GET /v1/devices/{id}/telemetry|events|logs`: its stored records, filtered and paged.
//! - `GET /v1/devices/{id}/state`: its desired and reported state.
//! - `PUT /v1/devices/{id}/config`: push configuration to it (`{"component": {patch}}`),
//!   answered with its new desired state.
//! - `GET|PUT /v1/devices/{id}/tags`: its tags; PUT `{"add": [...], "remove": [...]}`.
//! - `POST /v1/deployments`: deploy recipes (`{"target": "tag:T" | "device:D", "recipes":
//!   [{"name", "text"}], "artifacts": [{"name", "base64"}], "remove": ["component"], "set":
//!   ["[component:]key=value"]}`), answered 201 with the deployment; bodies up to 4 MiB.
//!   `artifacts` carries the files recipes name by bare file name, as `relay deploy create
//!   --artifacts` does; larger files are put with `relay artifact put` first.
//! - `GET /v1/deployments`, `GET /v1/deployments/{id}`: the tenant's deployments.
//! - `POST /v1/devices/{id}/actions`: queue a remote action for the device (`{"kind": "run",
//!   "command": "...", "timeout_secs": 10}`, `{"kind": "restart", "component": "..."}` or
//!   `{"kind": "reboot"}`, each with an optional `"expires_in_secs"`), answered 201 with the
//!   action.
//! - `GET /v1/devices/{id}/actions`: the device's actions, newest first (at most 1000).
//! - `GET /v1/actions/{id}`: one action, with its result and output.
//! - `GET /v1/sessions` (`?device=&user=&limit=`): engineers' recorded sessions, newest first;
//!   `GET /v1/sessions/{id}`: one; `GET /v1/sessions/{id}/cast`: its terminal recording
//!   (asciicast v2, `application/x-asciicast`).
//! - `GET /v1/audit` (`?since=&limit=&oldest=`): the tenant's audit trail, oldest first; a
//!   limit keeps the newest entries unless `oldest=true`.
//!
//! Every answer is JSON, errors included (`{"error": "..."}`): 401 without a valid token, 404
//! for a device, deployment or action the caller cannot see, 400 for bad query parameters or
//! bodies (naming what is wrong; a `limit` outside 1-10000 too, never quietly capped), 500
//! (logged) when the store fails. A device of another tenant is answered exactly like a
//! device that does not exist, so a token cannot be used to probe other tenants' device names
//! or ids.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use tether_protocol::fleet::ActionKind;

use crate::policy::{self, Permission};
use crate::store::blocking::{TaskFailed, with_store};
use crate::store::{ApiIdentity, Device, NewDeployment, SessionQuery, Store, StoreError, Target};

/// Largest request body of `POST /v1/deployments` (recipes travel inline).
const MAX_DEPLOYMENT_BODY: usize = 4 * 1024 * 1024;

/// What the API's handlers share.
#[derive(Clone)]
struct ApiState {
    /// The store.
    store: Arc<Store>,
    /// Where artifacts (and recipes) are kept.
    artifacts_dir: Arc<PathBuf>,
    /// Where session recordings are kept.
    sessions_dir: Arc<PathBuf>,
}

impl FromRef<ApiState> for Arc<Store> {
    fn from_ref(state: &ApiState) -> Arc<Store> {
        state.store.clone()
    }
}

/// An API failure, rendered as JSON `{"error": "..."}` with a status code.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme is expected.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tether\""),
            );
        }
        response
    }
}

impl ApiError {
    /// A failure of the relay itself: logged in full, answered without details (they may
    /// name files or SQL the caller has no business seeing).
    fn internal(what: impl std::fmt::Display) -> ApiError {
        tracing::error!("api: {what}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidToken | StoreError::TokenExpired | StoreError::TokenUsedUp => {
                ApiError(StatusCode::UNAUTHORIZED, e.to_string())
            }
            StoreError::NotFound { .. } => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Invalid(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        // axum answers these in plain text by itself; the API answers in JSON throughout.
        ApiError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        // A body that is not JSON, or JSON of the wrong shape, is the client's mistake (400,
        // with serde's message naming the field); a missing content type (415) or a body over
        // the limit (413) keep axum's status.
        let status = match &e {
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                StatusCode::BAD_REQUEST
            }
            other => other.status(),
        };
        ApiError(status, e.body_text())
    }
}

impl From<TaskFailed> for ApiError {
    fn from(_: TaskFailed) -> Self {
        // Logged where it failed; the caller hears only that the relay did.
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme name is
/// case-insensitive, RFC 7235).
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The caller's tenant from `Authorization: Bearer <token>`.
async fn authenticate(store: &Arc<Store>, headers: &HeaderMap) -> Result<ApiIdentity, ApiError> {
    let token = bearer_token(headers).ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <api token>)".into(),
        )
    })?;
    Ok(with_store(store, move |s| s.api_token(&token)).await??)
}

/// The caller's identity, if its token may change things (role operator or admin): a viewer
/// token reads only.
async fn authorize_change(
    store: &Arc<Store>,
    headers: &HeaderMap,
) -> Result<ApiIdentity, ApiError> {
    let who = authenticate(store, headers).await?;
    if !policy::allows(who.role, Permission::Change) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "token {} has role {}, which may only read; create one with --role operator",
                who.token_id, who.role
            ),
        ));
    }
    Ok(who)
}

/// Records a change made through the API in the audit trail (a failure to record is logged).
async fn audit_change(
    store: &Arc<Store>,
    who: &ApiIdentity,
    action: &'static str,
    target: String,
    detail: serde_json::Value,
) {
    let (tenant, actor) = (who.tenant.clone(), format!("api:{}", who.token_id));
    let written = with_store(store, move |s| {
        s.audit(crate::store::NewAudit {
            tenant: Some(&tenant),
            actor: &actor,
            action,
            target: Some(&target),
            source: None,
            detail,
        })
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::error!("audit trail: {e}");
    }
}

/// The answer for a device the caller cannot see, whether it exists in another tenant or not
/// at all: one function, so the two cannot drift apart.
fn no_such_device(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no device named {id:?}"))
}

/// The answer for a deployment the caller cannot see (like [`no_such_device`]).
fn no_such_deployment(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no deployment named {id:?}"))
}

/// The answer for an action the caller cannot see (like [`no_such_device`]).
fn no_such_action(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no action named {id:?}"))
}

/// The API routes, sharing `store`; deployments store recipes in `artifacts_dir`, recordings
/// are read from `sessions_dir`.
pub fn router(store: Arc<Store>, artifacts_dir: PathBuf, sessions_dir: PathBuf) -> Router {
    let state = ApiState {
        store,
        artifacts_dir: Arc::new(artifacts_dir),
        sessions_dir: Arc::new(sessions_dir),
    };
    Router::new()
        .route("/v1/audit", get(list_audit))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", get(show_session))
        .route("/v1/sessions/{id}/cast", get(session_cast))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(show_device))
        .route("/v1/devices/{id}/telemetry", get(device_metrics))
        .route("/v1/devices/{id}/events", get(device_events))
        .route("/v1/devices/{id}/logs", get(device_logs))
        .route("/v1/devices/{id}/state", get(device_state))
        .route("/v1/devices/{id}/config", axum::routing::put(push_config))
        .route("/v1/devices/{id}/tags", get(device_tags).put(set_tags))
        .route(
            "/v1/deployments",
            post(create_deployment)
                .layer(DefaultBodyLimit::max(MAX_DEPLOYMENT_BODY))
                .get(list_deployments),
        )
        .route("/v1/deployments/{id}", get(show_deployment))
        .route(
            "/v1/devices/{id}/actions",
            get(device_actions).post(create_action),
        )
        .route("/v1/actions/{id}", get(show_action))
        .with_state(state)
}

/// The caller's device `id` (id or name), or the answer for a device it cannot see.
async fn tenant_device(
    store: &Arc<Store>,
    who: &ApiIdentity,
    id: &str,
) -> Result<Device, ApiError> {
    let (tenant_id, key) = (who.tenant_id, id.to_string());
    with_store(store, move |s| s.find_device(&[tenant_id], &key))
        .await??
        .ok_or_else(|| no_such_device(id))
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

/// Largest `limit` of any list endpoint.
const MAX_LIMIT: usize = 10_000;

/// The `limit` query parameter: `default` when absent, else 1 to [`MAX_LIMIT`]. A value out
/// of range is a 400 naming the parameter and its bounds rather than quietly capped, so a
/// caller never takes a short page for the whole of what it asked.
fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit={n}: must be between 1 and {MAX_LIMIT} (the maximum)"),
        )),
    }
}

/// The time parameter `name` (RFC 3339, any form), or 400 naming the parameter and its value.
fn parse_time(name: &str, text: &Option<String>) -> Result<Option<SystemTime>, ApiError> {
    let Some(t) = text else { return Ok(None) };
    crate::timestamp::parse_rfc3339(t).map(Some).map_err(|e| {
        // An unencoded `+` of an offset arrives as a blank: say so rather than leave the
        // caller staring at a time that looks right.
        let hint = if t.contains(' ') {
            " (a '+' in a query string must be sent as %2B)"
        } else {
            ""
        };
        ApiError(StatusCode::BAD_REQUEST, format!("{name}={t:?}: {e}{hint}"))
    })
}

/// The time parameter `name` as ms since the Unix epoch, the form telemetry times are stored in.
fn parse_time_ms(name: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    Ok(parse_time(name, text)?.map(|time| {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        i64::try_from(ms).unwrap_or(i64::MAX)
    }))
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
    use super::*;
    use crate::store::{DeviceEnrollment, NewToken, TokenKind};
    use axum::body::Body;
    use axum::http::Request;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// One request through the router in-process; returns status, headers and JSON body.
    async fn get(
        app: &Router,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, serde_json::Value), Box<dyn std::error::Error>> {
        use tower_service::Service;
        let mut request = Request::get(path);
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        let mut app = app.clone();
        std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut app, cx)).await?;
        let response = app.call(request.body(Body::empty())?).await?;
        let (parts, body) = response.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(content_type, "application/json", "{path}");
        let bytes = axum::body::to_bytes(body, 1 << 20).await?;
        Ok((parts.status, parts.headers, serde_json::from_slice(&bytes)?))
    }

    /// A request with a method and an optional JSON body through the router in-process.
    async fn send(
        app: &Router,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), Box<dyn std::error::Error>> {
        use tower_service::Service;
        let mut request = Request::builder().method(method).uri(path);
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        let body = match body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(b)?)
            }
            None => Body::empty(),
        };
        let mut app = app.clone();
        std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut app, cx)).await?;
        let response = app.call(request.body(body)?).await?;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await?;
        Ok((parts.status, serde_json::from_slice(&bytes)?))
    }

    const RECIPE: &str = "name: com.example.app\nversion: 1.2.3\nconfiguration:\n  port: 8080\nmanifests:\n  - platform: { os: linux }\n    lifecycle:\n      run:\n        script: sleep 1000\n";

    fn deployment_body(target: &str) -> serde_json::Value {
        serde_json::json!({
            "target": target,
            "recipes": [{ "name": "app.yaml", "text": RECIPE }],
            "set": ["com.example.app:port=9000", "mode=fast"],
        })
    }

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

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        store: Arc<Store>,
        app: Router,
        acme: String,
        globex: String,
        board: String,
    }

    fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.db");
        let store = Arc::new(Store::open(&path)?);
        let api_token = |tenant: &str| -> Result<String, StoreError> {
            store.add_tenant(tenant)?;
            Ok(store
                .create_token(NewToken {
                    tenant,
                    kind: TokenKind::Api,
                    ttl: None,
                    uses: None,
                    require_accept: false,
                    allow_replace: false,
                    role: crate::store::Role::Operator,
                })?
                .secret)
        };
        let (acme, globex) = (api_token("acme")?, api_token("globex")?);
        let enroll = store.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Enroll,
            ttl: None,
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        let board = store
            .redeem_enroll_token(
                &enroll.secret,
                DeviceEnrollment {
                    name: "board1".into(),
                    public_key_openssh: "ssh-ed25519 AAAA".into(),
                    fingerprint: "SHA256:board1".into(),
                    agent_version: "0.1.0".into(),
                    force: false,
                },
            )?
            .device
            .id;
        let app = router(
            store.clone(),
            dir.path().join("artifacts"),
            dir.path().join("sessions"),
        );
        Ok(Fixture {
            _dir: dir,
            path,
            store,
            app,
            acme: format!("Bearer {acme}"),
            globex: format!("Bearer {globex}"),
            board,
        })
    }

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
    async fn missing_invalid_and_expired_tokens_are_401_in_json() -> TestResult {
        let f = fixture()?;
        let expired = f.store.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Api,
            ttl: Some(std::time::Duration::ZERO),
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        let enroll = f.store.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Enroll,
            ttl: None,
            uses: None,
            require_accept: false,
            allow_replace: false,
            role: crate::store::Role::Operator,
        })?;
        let basic = "Basic YWxpY2U6c2VjcmV0".to_string();
        let cases = [
            (None, "missing bearer token"),
            (Some(basic.as_str()), "missing bearer token"),
            (Some("Bearer "), "missing bearer token"),
            (Some("Bearer tet_wrong"), "invalid token"),
            (Some(&*format!("Bearer {}", enroll.secret)), "invalid token"),
            (Some(&*format!("Bearer {}", expired.secret)), "expired"),
        ];
        for (authorization, expected) in cases {
            for path in [
                "/v1/devices",
                "/v1/devices/board1",
                "/v1/devices/board1/logs?bad=1",
            ] {
                let (status, headers, body) = get(&f.app, path, authorization).await?;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?} {path}");
                assert!(headers.contains_key(header::WWW_AUTHENTICATE));
                let message = body["error"].as_str().unwrap_or_default();
                assert!(message.contains(expected), "{authorization:?}: {message}");
            }
        }
        Ok(())
    }

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

    #[tokio::test]
    async fn store_failures_are_500_without_details() -> TestResult {
        let f = fixture()?;
        // Break the schema behind the store's back, as a damaged file would.
        let raw = rusqlite::Connection::open(&f.path)?;
        raw.execute_batch("ALTER TABLE devices RENAME TO devices_gone")?;
        let (status, _, body) = get(&f.app, "/v1/devices", Some(&f.acme)).await?;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, serde_json::json!({ "error": "internal error" }));
        Ok(())
    }
}
