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
//!
//! One module per resource, each with its routes (`devices`, `telemetry`, `deployments`,
//! `actions`, `sessions`, `audit`); what their handlers share is in `request`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;

use crate::store::Store;

mod actions;
mod audit;
mod deployments;
mod devices;
mod request;
mod sessions;
mod telemetry;
#[cfg(test)]
mod testing;

/// What the API's handlers share.
#[derive(Clone)]
pub(super) struct ApiState {
    /// The store.
    pub(super) store: Arc<Store>,
    /// Where artifacts (and recipes) are kept.
    pub(super) artifacts_dir: Arc<PathBuf>,
    /// Where session recordings are kept.
    pub(super) sessions_dir: Arc<PathBuf>,
}

impl FromRef<ApiState> for Arc<Store> {
    fn from_ref(state: &ApiState) -> Arc<Store> {
        state.store.clone()
    }
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
        .merge(audit::routes())
        .merge(sessions::routes())
        .merge(devices::routes())
        .merge(telemetry::routes())
        .merge(deployments::routes())
        .merge(actions::routes())
        .with_state(state)
}
