//! Conformance: tenants, unique names, and removing a tenant with everything it holds.

use super::*;

pub(crate) fn a_tenant_with_devices_is_removed_only_when_asked_and_takes_its_data(
    store: &dyn Backend,
) -> TestResult {
    store.add_tenant("acme")?;
    store.add_tenant("globex")?;
    enroll(store, "acme", "b1")?;
    let kept = enroll(store, "globex", "g1")?;
    store.add_user("alice", "acme", Role::Operator, &key(1)?)?;
    store.audit(crate::store::NewAudit {
        tenant: Some("acme"),
        actor: "admin",
        action: "x",
        ..Default::default()
    })?;
    let e = store
        .remove_tenant("acme", false)
        .err()
        .ok_or("removed with devices")?;
    assert!(e.to_string().contains("--with-devices"), "{e}");
    let removed = store.remove_tenant("acme", true)?;
    assert_eq!(removed.deleted.devices, 1);
    assert_eq!(removed.deleted.engineers, 1);
    assert_eq!(removed.device_ids.len(), 1);
    assert!(store.tenant_by_name("acme")?.is_none());
    assert!(store.users()?.is_empty());
    assert!(store.device(&kept)?.is_some());
    assert_eq!(store.audit_entries(None, Some("acme"), 10, false)?.len(), 1);
    Ok(())
}

pub(crate) fn tenant_names_are_unique_and_checked(store: &dyn Backend) -> TestResult {
    let acme = store.add_tenant("acme")?;
    assert_eq!(
        (acme.name.as_str(), acme.retention_days > 0),
        ("acme", true)
    );
    assert!(matches!(
        store.add_tenant("acme"),
        Err(StoreError::Conflict(_))
    ));
    for bad in ["", "Acme", "-acme", "a/b", &"a".repeat(64)] {
        assert!(
            matches!(store.add_tenant(bad), Err(StoreError::Invalid(_))),
            "{bad:?} accepted"
        );
    }
    store.add_tenant("globex")?;
    let names: Vec<String> = store.tenants()?.into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["acme", "globex"]);
    assert_eq!(
        store.tenant_by_name("globex")?.map(|t| t.name).as_deref(),
        Some("globex")
    );
    assert_eq!(store.tenant_by_name("nope")?, None);
    Ok(())
}
