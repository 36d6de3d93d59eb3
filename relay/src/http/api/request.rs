//! What every API handler shares: the JSON error answer ([`ApiError`]) and the statuses store
//! errors map to, the bearer token and the role it carries, the audit record of a change, the
//! answers for things the caller cannot see, and the `limit` and time query parameters.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::policy::{self, Permission};
use crate::store::blocking::{TaskFailed, with_store};
use crate::store::{ApiIdentity, Device, Store, StoreError};

/// Largest `limit` of any list endpoint.
const MAX_LIMIT: usize = 10_000;

/// An API failure, rendered as JSON `{"error": "..."}` with a status code.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

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
    pub(super) fn internal(what: impl std::fmt::Display) -> ApiError {
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
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The caller's tenant from `Authorization: Bearer <token>`.
pub(super) async fn authenticate(
    store: &Arc<Store>,
    headers: &HeaderMap,
) -> Result<ApiIdentity, ApiError> {
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
pub(super) async fn authorize_change(
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
pub(super) async fn audit_change(
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
pub(super) fn no_such_device(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no device named {id:?}"))
}

/// The answer for a deployment the caller cannot see (like [`no_such_device`]).
pub(super) fn no_such_deployment(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no deployment named {id:?}"))
}

/// The answer for an action the caller cannot see (like [`no_such_device`]).
pub(super) fn no_such_action(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no action named {id:?}"))
}

/// The caller's device `id` (id or name), or the answer for a device it cannot see.
pub(super) async fn tenant_device(
    store: &Arc<Store>,
    who: &ApiIdentity,
    id: &str,
) -> Result<Device, ApiError> {
    let (tenant_id, key) = (who.tenant_id, id.to_string());
    with_store(store, move |s| s.find_device(&[tenant_id], &key))
        .await??
        .ok_or_else(|| no_such_device(id))
}

/// The `limit` query parameter: `default` when absent, else 1 to [`MAX_LIMIT`]. A value out
/// of range is a 400 naming the parameter and its bounds rather than quietly capped, so a
/// caller never takes a short page for the whole of what it asked.
pub(super) fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
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
pub(super) fn parse_time(
    name: &str,
    text: &Option<String>,
) -> Result<Option<SystemTime>, ApiError> {
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
pub(super) fn parse_time_ms(name: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    Ok(parse_time(name, text)?.map(|time| {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        i64::try_from(ms).unwrap_or(i64::MAX)
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestResult, fixture, get};
    use crate::store::{NewToken, TokenKind};
    use axum::http::{StatusCode, header};

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
