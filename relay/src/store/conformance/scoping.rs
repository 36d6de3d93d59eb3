//! Conformance: tenant isolation across every family. What one tenant holds is invisible to
//! another tenant's queries, and reads like something that does not exist.

use super::*;

pub(crate) fn one_tenant_sees_nothing_of_another(store: &dyn Backend) -> TestResult {
    let f = fleet::fixture(store)?;
    let acme = store.tenant_by_name("acme")?.ok_or("no acme")?;
    let globex = store.tenant_by_name("globex")?.ok_or("no globex")?;
    let a1 = f.enroll("acme", "a1")?;
    let g1 = f.enroll("globex", "g1")?;

    // Devices and tokens.
    let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.devices(Some("globex"))?),
        std::slice::from_ref(&g1)
    );
    assert_eq!(
        ids(store.tenant_devices(globex.id)?),
        std::slice::from_ref(&g1)
    );
    assert_eq!(store.find_device(&[globex.id], "a1")?, None);
    assert_eq!(store.find_device(&[globex.id], &a1)?, None);
    assert!(
        store
            .tokens(Some("globex"))?
            .iter()
            .all(|t| t.tenant == "globex")
    );
    assert_eq!(store.tokens(Some("globex"))?.len(), 1);

    // Artifacts: the same bytes put by acme are not globex's.
    let art = store.put_artifact(&f.artifacts(), "acme", "a.bin", b"acme's bytes")?;
    assert_eq!(store.artifact("globex", &art.sha256)?, None);
    assert!(store.artifacts(Some("globex"))?.is_empty());
    assert_eq!(store.device_artifact(&g1, &art.sha256)?, None);
    assert!(store.device_artifact(&a1, &art.sha256)?.is_some());

    // Deployments and desired state.
    let dep = f.deploy(
        "device:a1",
        &[("a.yaml", fleet::recipe_text("com.a", "1.0.0", None))],
        &[],
    )?;
    assert!(store.deployments(Some("globex"))?.is_empty());
    assert_eq!(store.deployment(&dep.id, Some(globex.id))?, None);
    assert!(store.deployment(&dep.id, Some(acme.id))?.is_some());
    assert_eq!(store.desired_state(&g1)?, None);
    // A globex deployment cannot target acme's device by name or id.
    let cross = store.create_deployment(
        &f.artifacts(),
        NewDeployment {
            tenant: "globex",
            target: Target::Device(a1.clone()),
            recipes: vec![("a.yaml".into(), fleet::recipe_text("com.a", "1.0.0", None))],
            set: Vec::new(),
            os: None,
            artifacts: Vec::new(),
            remove: Vec::new(),
        },
    );
    assert!(matches!(
        cross,
        Err(StoreError::NotFound { what: "device", .. })
    ));

    // Actions.
    let act = store.create_action(Some(acme.id), "a1", &run("uptime"), None)?;
    assert!(matches!(
        store.create_action(Some(globex.id), "a1", &run("uptime"), None),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.action(&act.id, Some(globex.id))?, None);
    assert!(store.actions(Some("globex"), None)?.is_empty());
    assert!(store.take_pending_actions(&g1)?.is_empty());

    // Sessions.
    let sid = store.open_session(NewSession {
        tenant_id: acme.id,
        device_id: &a1,
        device_name: "a1",
        engineer: "alice",
        fingerprint: "SHA256:x",
        source: "192.0.2.1:1",
    })?;
    let q = SessionQuery {
        tenant_id: Some(globex.id),
        limit: 10,
        ..Default::default()
    };
    assert!(store.sessions(&q)?.is_empty());
    assert!(store.session(&sid, Some(globex.id)).is_err());
    assert!(store.session(&sid, Some(acme.id)).is_ok());

    // Audit.
    store.audit(NewAudit {
        tenant: Some("acme"),
        actor: "admin",
        action: "device.accept",
        ..Default::default()
    })?;
    assert!(
        store
            .audit_entries(None, Some("globex"), 100, false)?
            .is_empty()
    );

    // Telemetry is one device's: another device's query sees none of it.
    let record = Record {
        seq: 1,
        ts_ms: 1,
        kind: Kind::Metric,
        topic: "t".into(),
        level: None,
        payload: json!(1),
    };
    store.insert_telemetry(&a1, acme.id, &[record])?;
    let q = |device_id| TelemetryQuery {
        device_id,
        limit: 10,
        ..Default::default()
    };
    assert!(store.telemetry(&q(&g1))?.is_empty());
    assert_eq!(store.telemetry(&q(&a1))?.len(), 1);

    // Trusted CAs and engineers.
    store.trust_ca("acme", KEY_A, Role::Operator, &[])?;
    assert!(store.trusted_cas(Some("globex"))?.is_empty());
    store.add_user("alice", "acme", Role::Admin, KEY_B)?;
    assert!(matches!(
        store.user("globex", "alice"),
        Err(StoreError::Invalid(_) | StoreError::NotFound { .. })
    ));
    Ok(())
}
