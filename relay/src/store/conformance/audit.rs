//! Conformance: the audit trail.

use super::*;

/// Entries come back as appended, filtered by time and tenant; the interface has no way to
/// change or delete one (the SQLite backend also refuses it in the database itself).
pub(crate) fn entries_are_appended_and_listed(store: &dyn Backend) -> TestResult {
    store.audit(NewAudit {
        tenant: Some("acme"),
        actor: "admin",
        action: "tenant.add",
        target: Some("acme"),
        ..Default::default()
    })?;
    store.audit(NewAudit {
        actor: "engineer:alice",
        action: "auth.failure",
        source: Some("192.0.2.1:5000"),
        detail: serde_json::json!({"fingerprint": "SHA256:x"}),
        ..Default::default()
    })?;
    let all = store.audit_entries(None, None, 100, false)?;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].detail["fingerprint"], "SHA256:x");
    assert_eq!(
        store.audit_entries(None, Some("acme"), 100, false)?.len(),
        1
    );
    let hour = std::time::Duration::from_secs(3600);
    let since = |t| {
        store
            .audit_entries(Some(t), None, 100, false)
            .map(|e| e.len())
    };
    assert_eq!(since(SystemTime::now() - hour)?, 2);
    assert_eq!(since(SystemTime::now() + hour)?, 0);
    assert_eq!(store.audit_entries(None, None, 100, false)?.len(), 2);
    // A limit keeps the newest entries unless the oldest are asked for; oldest first.
    let newest = store.audit_entries(None, None, 1, false)?;
    assert_eq!(newest[0].action, "auth.failure");
    let oldest = store.audit_entries(None, None, 1, true)?;
    assert_eq!(oldest[0].action, "tenant.add");
    let both = store.audit_entries(None, None, 2, false)?;
    assert!(both[0].id < both[1].id);
    Ok(())
}
