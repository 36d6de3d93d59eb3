//! Conformance: engineers, their keys and roles, unique names and keys per tenant.

use super::*;

pub(crate) fn users_and_engineer_identities(s: &dyn Backend) -> TestResult {
    s.add_tenant("acme")?;
    s.add_tenant("globex")?;
    let u = s.add_user("alice", "acme", Role::Admin, KEY_A)?;
    s.add_user("alice", "globex", Role::Viewer, KEY_A)?;
    s.add_user("bob", "acme", Role::Operator, KEY_B)?;
    assert!(u.fingerprint.starts_with("SHA256:"));
    assert!(matches!(
        s.add_user("alice", "acme", Role::Viewer, KEY_B),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_user("carol", "acme", Role::Viewer, "not a key"),
        Err(StoreError::Invalid(_))
    ));
    // One key is one engineer per tenant.
    let e = s
        .add_user("alias", "acme", Role::Viewer, KEY_B)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("\"bob\"") && e.contains("acme"), "{e}");
    assert!(matches!(
        s.add_user("Bad Name", "acme", Role::Viewer, KEY_B),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.add_user("dave", "nope", Role::Viewer, KEY_B),
        Err(StoreError::NotFound { .. })
    ));
    let ids = s.engineer_identities(&u.fingerprint)?;
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1].role, Role::Viewer);
    assert_eq!(s.users()?.len(), 3);
    Ok(())
}

pub(crate) fn engineers_are_disabled_re_keyed_and_removed_by_exact_name(
    store: &dyn Backend,
) -> TestResult {
    store.add_tenant("acme")?;
    store.add_tenant("globex")?;
    let alice = store.add_user("alice", "acme", Role::Operator, &key(1)?)?;
    store.add_user("alice", "globex", Role::Operator, &key(2)?)?;
    assert_eq!(store.engineer_identities(&alice.fingerprint)?.len(), 1);

    assert!(store.set_user_disabled("acme", "alice", true)?);
    assert!(!store.set_user_disabled("acme", "alice", true)?);
    assert!(store.engineer_identities(&alice.fingerprint)?.is_empty());
    assert_eq!(
        store.disabled_engineers(&alice.fingerprint)?,
        vec![("acme".to_string(), "alice".to_string())]
    );
    assert!(store.set_user_disabled("acme", "alice", false)?);

    let second = store.add_user_key("acme", "alice", &key(3)?)?;
    assert_eq!(store.user("acme", "alice")?.fingerprints.len(), 2);
    // A key is one engineer within a tenant.
    assert!(store.add_user_key("acme", "alice", &key(3)?).is_err());
    store.remove_user_key("acme", "alice", &second)?;
    let e = store
        .remove_user_key("acme", "alice", &alice.fingerprint)
        .err()
        .ok_or("last key removed")?;
    assert!(e.to_string().contains("last key"), "{e}");

    assert_eq!(
        store.set_user_role("acme", "alice", Role::Viewer)?,
        Role::Operator
    );
    let live = store.live_engineer_grants(std::slice::from_ref(&alice.fingerprint), &[], &[])?;
    assert_eq!(live.engineers.len(), 1);
    assert_eq!(live.engineers[0].role, Role::Viewer);

    // Names are exact: another spelling is refused, never matched to someone.
    assert!(store.remove_user("acme", "ALICE").is_err());
    assert!(store.remove_user("acme", "bob").is_err());
    store.remove_user("acme", "alice")?;
    assert_eq!(store.users()?.len(), 1);
    assert_eq!(store.users()?[0].tenant, "globex");
    Ok(())
}
