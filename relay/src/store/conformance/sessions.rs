//! Conformance: engineers' sessions.

use super::*;

pub(crate) fn sessions_open_close_list_and_expire(store: &dyn Backend) -> TestResult {
    let acme = store.add_tenant("acme")?;
    let other = store.add_tenant("other")?;
    let new = |tenant_id, engineer| NewSession {
        tenant_id,
        device_id: "dev_1",
        device_name: "board1",
        engineer,
        fingerprint: "SHA256:x",
        source: "127.0.0.1:1",
    };
    let a = store.open_session(new(acme.id, "alice"))?;
    let b = store.open_session(new(other.id, "bob"))?;
    store.describe_session(&a, "shell", None, Some("a.cast"))?;
    store.close_session(
        &a,
        &SessionEnd {
            kind: Some("shell".into()),
            reason: "exited".into(),
            exit_status: Some(3),
            bytes_out: 10,
            cast_file: Some("a.cast".into()),
            ..Default::default()
        },
    )?;
    // A late description does not reopen an ended session.
    store.describe_session(&a, "exec", Some("x"), None)?;
    let (rec, cast) = store.session(&a, Some(acme.id))?;
    assert_eq!(rec.kind.as_deref(), Some("shell"));
    assert_eq!(rec.exit_status, Some(3));
    assert_eq!(cast.as_deref(), Some("a.cast"));
    assert!(store.session(&a, Some(other.id)).is_err());
    let q = SessionQuery {
        tenant_id: Some(acme.id),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.sessions(&q)?.len(), 1);
    let q = SessionQuery {
        engineer: Some("bob".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.sessions(&q)?[0].id, b);
    assert_eq!(store.close_interrupted_sessions()?, 1);
    let (rec, _) = store.session(&b, None)?;
    assert_eq!(rec.end_reason.as_deref(), Some("interrupted"));
    assert!(store.expire_sessions()?.is_empty());
    store.set_session_retention("acme", 1)?;
    // A session younger than its tenant's retention stays.
    assert!(store.expire_sessions()?.is_empty());
    assert!(store.session(&a, None).is_ok());
    assert!(store.set_session_retention("acme", 0).is_err());
    Ok(())
}
