//! What the API's tests share: requests through the router in-process, and a store with two
//! tenants' API tokens and one enrolled device.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};

use super::router;
use crate::store::{DeviceEnrollment, NewToken, Store, StoreError, TokenKind};

/// What a test returns: any error fails it with its message.
pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One request through the router in-process; returns status, headers and JSON body.
pub(super) async fn get(
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
pub(super) async fn send(
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

/// A recipe with one configuration value and nothing to fetch.
pub(super) const RECIPE: &str = "name: com.example.app\nversion: 1.2.3\nconfiguration:\n  port: 8080\nmanifests:\n  - platform: { os: linux }\n    lifecycle:\n      run:\n        script: sleep 1000\n";

/// A deployment of [`RECIPE`] to `target`, with configuration for the component and for all.
pub(super) fn deployment_body(target: &str) -> serde_json::Value {
    serde_json::json!({
        "target": target,
        "recipes": [{ "name": "app.yaml", "text": RECIPE }],
        "set": ["com.example.app:port=9000", "mode=fast"],
    })
}

/// A store in a temporary directory, the router on it, and what the tests need of it.
pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) path: std::path::PathBuf,
    pub(super) store: Arc<Store>,
    pub(super) app: Router,
    pub(super) acme: String,
    pub(super) globex: String,
    pub(super) board: String,
}

/// Tenants acme and globex with an operator API token each (as `Bearer …` headers), and
/// device board1 enrolled and accepted in acme.
pub(super) fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
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
