//! Conformance: enrollment, pending devices, device names unique per tenant, tenant-scoped
//! lookups, link state.

use super::*;

pub(crate) fn re_enrollment_rules(s: &dyn Backend) -> TestResult {
    s.add_tenant("acme")?;
    s.add_tenant("globex")?;
    let t = token(s, "acme", None, None)?;
    let first = s.redeem_enroll_token(&t, enrollment("b1", "fp1"))?.device;
    // Same key again keeps the id and may rename.
    let again = s
        .redeem_enroll_token(&t, enrollment("b1-renamed", "fp1"))?
        .device;
    assert_eq!(first.id, again.id);
    assert_eq!(again.name, "b1-renamed");
    // Another key may not take the name without force.
    assert!(matches!(
        s.redeem_enroll_token(&t, enrollment("b1-renamed", "fp2")),
        Err(StoreError::Conflict(_))
    ));
    let mut forced = enrollment("b1-renamed", "fp2");
    forced.force = true;
    // Nor with force and a token that does not allow replacing, nor with one whose
    // devices would be pending; the device stays as it was.
    assert!(matches!(
        s.redeem_enroll_token(&t, forced.clone()),
        Err(StoreError::Conflict(m)) if m.contains("--allow-replace")
    ));
    let new_token = |require_accept: bool, allow_replace: bool| {
        s.create_token(NewToken {
            tenant: "acme",
            kind: TokenKind::Enroll,
            ttl: None,
            uses: None,
            require_accept,
            allow_replace,
            role: crate::store::Role::Operator,
        })
    };
    let pending_token = new_token(true, false)?;
    assert!(matches!(
        s.redeem_enroll_token(&pending_token.secret, forced.clone()),
        Err(StoreError::Conflict(m)) if m.contains("require-accept")
    ));
    assert_eq!(
        s.device(&first.id)?.map(|d| (d.fingerprint, d.status)),
        Some(("fp1".to_string(), DeviceStatus::Accepted))
    );
    assert!(matches!(new_token(true, true), Err(StoreError::Invalid(_))));
    let replacing = new_token(false, true)?;
    let enrolled = s.redeem_enroll_token(&replacing.secret, forced)?;
    let replaced = enrolled.device;
    assert_ne!(replaced.id, first.id);
    assert_eq!(enrolled.replaced.map(|d| d.id), Some(first.id.clone()));
    assert_eq!(enrolled.token_id, replacing.id);
    assert!(s.device(&first.id)?.is_none());
    // A key of another tenant is refused.
    let g = token(s, "globex", None, None)?;
    assert!(matches!(
        s.redeem_enroll_token(&g, enrollment("x", "fp2")),
        Err(StoreError::Conflict(_))
    ));
    // Pending devices with require_accept.
    let p = s.create_token(NewToken {
        tenant: "acme",
        kind: TokenKind::Enroll,
        ttl: None,
        uses: None,
        require_accept: true,
        allow_replace: false,
        role: crate::store::Role::Operator,
    })?;
    let pending = s
        .redeem_enroll_token(&p.secret, enrollment("b9", "fp9"))?
        .device;
    assert_eq!(pending.status, DeviceStatus::Pending);
    assert_eq!(
        s.unwelcome_devices(&[pending.id.clone(), replaced.id.clone(), "dev_gone".into()])?,
        vec![pending.id.clone(), "dev_gone".to_string()]
    );
    // Re-enrolling a pending device with a token that needs no acceptance admits it ...
    let again = s.redeem_enroll_token(&t, enrollment("b9", "fp9"))?.device;
    assert_eq!(
        (again.id.as_str(), again.status),
        (pending.id.as_str(), DeviceStatus::Accepted)
    );
    // ... and an accepted one stays accepted with a require-accept token.
    let still = s
        .redeem_enroll_token(&p.secret, enrollment("b9", "fp9"))?
        .device;
    assert_eq!(still.status, DeviceStatus::Accepted);
    // A rejected device cannot re-admit itself, and the attempt costs no token use.
    s.set_device_status(&still.id, DeviceStatus::Rejected)?;
    let once = token(s, "acme", None, Some(1))?;
    let e = s
        .redeem_enroll_token(&once, enrollment("b9", "fp9"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("rejected") && e.contains("\"b9\""), "{e}");
    assert_eq!(
        s.device(&still.id)?.map(|d| d.status),
        Some(DeviceStatus::Rejected)
    );
    s.redeem_enroll_token(&once, enrollment("b10", "fp10"))?;
    // A name conflict names the device and the tenant.
    let e = s
        .redeem_enroll_token(&t, enrollment("b10", "fp11"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("\"b10\"") && e.contains("acme"), "{e}");
    // Bad names are refused before anything else.
    assert!(matches!(
        s.redeem_enroll_token(&t, enrollment("Bad Name", "fp12")),
        Err(StoreError::Invalid(_))
    ));
    Ok(())
}

pub(crate) fn device_lookup_is_tenant_scoped(s: &dyn Backend) -> TestResult {
    let acme = s.add_tenant("acme")?;
    let globex = s.add_tenant("globex")?;
    let a = token(s, "acme", None, None)?;
    let g = token(s, "globex", None, None)?;
    let da = s.redeem_enroll_token(&a, enrollment("board", "fa"))?.device;
    let dg = s.redeem_enroll_token(&g, enrollment("board", "fg"))?.device;
    assert_eq!(
        s.find_device(&[acme.id], "board")?.map(|d| d.id),
        Some(da.id.clone())
    );
    assert_eq!(
        s.find_device(&[globex.id], "board")?.map(|d| d.id),
        Some(dg.id.clone())
    );
    assert_eq!(s.find_device(&[globex.id], &da.id)?, None);
    assert_eq!(s.find_device(&[], "board")?, None);
    // Searching both tenants finds the one listed first.
    assert_eq!(
        s.find_device(&[globex.id, acme.id], "board")?.map(|d| d.id),
        Some(dg.id.clone())
    );
    // A device named like another device's id does not shadow that id.
    let shadow = s.redeem_enroll_token(&a, enrollment(&da.id, "fs"))?.device;
    assert_eq!(
        s.find_device(&[acme.id], &da.id)?.map(|d| d.id),
        Some(da.id.clone())
    );
    assert_eq!(s.resolve_device(&shadow.id)?.name, da.id);
    assert!(matches!(
        s.resolve_device("nothing"),
        Err(StoreError::NotFound { what: "device", .. })
    ));
    assert_eq!(s.devices(Some("acme"))?.len(), 2);
    assert_eq!(s.devices(None)?.len(), 3);
    assert!(matches!(
        s.devices(Some("nope")),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.resolve_device("board"),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.resolve_device(&da.id)?.id, da.id);
    s.mark_online(&da.id, "127.0.0.1:5", Some("0.2.0"))?;
    let d = s.device(&da.id)?.ok_or("missing")?;
    assert!(d.online && d.agent_version.as_deref() == Some("0.2.0"));
    s.mark_all_offline()?;
    let d = s.device(&da.id)?.ok_or("missing")?;
    assert!(!d.online && d.last_disconnected.is_some());
    Ok(())
}
