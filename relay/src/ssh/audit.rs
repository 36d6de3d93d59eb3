//! Appending to the audit trail from the SSH front's tasks, which must not stop for a trail
//! that cannot be written: a failure is logged and the connection goes on.

use std::sync::Arc;

use crate::store::Store;
use crate::store::blocking::with_store;

/// Appends an event to the audit trail from a connection's task (a failure is logged).
pub(super) async fn audit_event(
    store: Arc<Store>,
    tenant: Option<String>,
    actor: String,
    action: &'static str,
    target: Option<String>,
    source: String,
    detail: serde_json::Value,
) {
    let written = with_store(&store, move |s| {
        s.audit(crate::store::NewAudit {
            tenant: tenant.as_deref(),
            actor: &actor,
            action,
            target: target.as_deref(),
            source: Some(&source),
            detail,
        })
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::error!("audit trail: {e}");
    }
}
