//! The audit trail of admin commands: each command that changes something records what it
//! changed ([`Change`]) as actor `admin`, whether it succeeded or not; reads are not recorded.

use anyhow::Result;
use serde::Serialize;

use crate::store::{Device, Store};

/// The longest string an audit entry keeps of an argument: a name or path is far shorter,
/// and a megabyte of garbage in an argument must not become a megabyte in every listing.
const AUDIT_STRING_LIMIT: usize = 256;

/// `text` cut to [`AUDIT_STRING_LIMIT`] characters, with a visible marker when it was cut.
fn bounded(text: &str) -> String {
    if text.chars().count() <= AUDIT_STRING_LIMIT {
        return text.to_string();
    }
    let kept: String = text.chars().take(AUDIT_STRING_LIMIT).collect();
    format!("{kept}… ({} bytes)", text.len())
}

/// An admin change as the audit trail records it: its action, tenant and target, and a
/// detail of the fields the README's audit table documents. Built from the parsed arguments
/// before the command runs and completed by the command with what it learned (a token's id,
/// a device's tenant). It never holds a secret: token secrets are never arguments and are
/// never put here, and keys appear only as fingerprints.
pub(super) struct Change {
    /// The audit action, e.g. `user.remove`; empty for a read, which is not recorded.
    action: &'static str,
    /// The tenant it concerns (only a valid tenant name).
    pub(super) tenant: Option<String>,
    /// What it changed: a name, an id, a fingerprint.
    pub(super) target: Option<String>,
    /// The documented fields of the change, strings bounded.
    pub(super) detail: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    /// A change of `tenant` (a name as given) to `target`.
    pub(super) fn new(action: &'static str, tenant: Option<&str>, target: Option<&str>) -> Change {
        Change {
            action,
            // A tenant that is not even a valid name is not a tenant's entry.
            tenant: tenant
                .filter(|t| crate::store::validate_name("tenant", t).is_ok())
                .map(str::to_string),
            target: target.map(bounded),
            detail: serde_json::Map::new(),
        }
    }

    /// A read: nothing to record.
    pub(super) fn read() -> Change {
        Change::new("", None, None)
    }

    /// Whether this is a change (recorded), not a read.
    pub(super) fn is_change(&self) -> bool {
        !self.action.is_empty()
    }

    /// Adds a detail field; strings (also inside lists and objects) are bounded.
    pub(super) fn with(mut self, key: &str, value: impl Serialize) -> Change {
        self.set(key, value);
        self
    }

    /// Sets a detail field.
    pub(super) fn set(&mut self, key: &str, value: impl Serialize) {
        fn bound(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::String(s) => serde_json::Value::String(bounded(&s)),
                serde_json::Value::Array(a) => a.into_iter().map(bound).collect(),
                serde_json::Value::Object(o) => {
                    serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, bound(v))).collect())
                }
                other => other,
            }
        }
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.detail.insert(key.to_string(), bound(value));
    }

    /// The change concerns device `d`: its tenant, its id as the target, its name.
    pub(super) fn device(&mut self, d: &Device) {
        self.tenant = Some(d.tenant.clone());
        self.target = Some(d.id.clone());
        self.set("device_id", &d.id);
        self.set("device_name", &d.name);
    }
}

/// Records an admin change (attempted or done: `ok`, and `error` when it failed) in the audit
/// trail as actor `admin`; reads are not recorded.
pub(super) fn record(store: &Store, change: Change, result: Result<()>) -> Result<()> {
    if change.action.is_empty() {
        return result;
    }
    let mut detail = change.detail;
    detail.insert("ok".into(), result.is_ok().into());
    if let Err(e) = &result {
        detail.insert("error".into(), bounded(&format!("{e:#}")).into());
    }
    let entry = crate::store::NewAudit {
        tenant: change.tenant.as_deref(),
        actor: "admin",
        action: change.action,
        target: change.target.as_deref(),
        source: None,
        detail: serde_json::Value::Object(detail),
    };
    if let Err(e) = store.audit(entry) {
        tracing::error!("audit trail: {e}");
    }
    result
}
