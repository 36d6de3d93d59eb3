//! Conformance: remote actions queued once, handed out once, results recorded once.

use tether_protocol::fleet::MAX_ACTION_OUTPUT;

use super::*;
use crate::store::actions::{MAX_COMMAND_BYTES, MAX_TIMEOUT_SECS};

pub(crate) struct Fixture<'a> {
    pub(crate) store: &'a dyn Backend,
}

impl Fixture<'_> {
    pub(crate) fn enroll(&self, tenant: &str, name: &str) -> Result<String, StoreError> {
        enroll(self.store, tenant, name)
    }

    pub(crate) fn tenant_id(&self, name: &str) -> Result<i64, Box<dyn std::error::Error>> {
        Ok(self.store.tenant_by_name(name)?.ok_or("no tenant")?.id)
    }
}

/// Tenants acme and globex on `store`.
pub(crate) fn fixture(store: &dyn Backend) -> Result<Fixture<'_>, Box<dyn std::error::Error>> {
    store.add_tenant("acme")?;
    store.add_tenant("globex")?;
    Ok(Fixture { store })
}

pub(crate) fn result(id: &str, status: ActionStatus, output: &str) -> ActionResult {
    ActionResult {
        id: id.into(),
        status,
        exit_code: Some(0),
        output: output.into(),
        truncated: false,
        error: None,
    }
}

pub(crate) fn created_actions_are_taken_once_in_order_and_marked_running(
    store: &dyn Backend,
) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let b2 = f.enroll("acme", "b2")?;
    let first = f.store.create_action(None, "b1", &run("uptime"), None)?;
    assert!(
        first.id.starts_with("act_") && first.id.len() == 16,
        "{}",
        first.id
    );
    assert_eq!(
        (
            first.tenant.as_str(),
            first.device_id.as_str(),
            first.device_name.as_str()
        ),
        ("acme", b1.as_str(), "b1")
    );
    assert_eq!(first.status, ActionStatus::Pending);
    assert_eq!(
        (&first.expires_at, &first.sent_at, &first.finished_at),
        (&None, &None, &None)
    );
    let acme = f.tenant_id("acme")?;
    let second = f.store.create_action(
        Some(acme),
        &b1,
        &ActionKind::Restart {
            component: "com.example.app".into(),
        },
        Some(Duration::from_secs(3600)),
    )?;
    assert!(second.expires_at.is_some());
    let third = f
        .store
        .create_action(Some(acme), "b1", &ActionKind::Reboot, None)?;
    f.store.create_action(None, &b2, &run("other"), None)?;

    let taken = f.store.take_pending_actions(&b1)?;
    let ids: Vec<&str> = taken.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![first.id.as_str(), second.id.as_str(), third.id.as_str()]
    );
    assert_eq!(taken[0].action, run("uptime"));
    assert_eq!(taken[2].action, ActionKind::Reboot);
    for id in &ids {
        let view = f.store.action(id, None)?.ok_or("missing")?;
        assert_eq!(view.status, ActionStatus::Running);
        assert!(view.sent_at.is_some());
    }
    // Handed out once; the other device's action is untouched.
    assert!(f.store.take_pending_actions(&b1)?.is_empty());
    assert_eq!(f.store.take_pending_actions(&b2)?.len(), 1);
    assert!(f.store.take_pending_actions("dev_nope")?.is_empty());
    // Listing: newest first, by tenant and device.
    let listed = f.store.actions(Some("acme"), Some("b1"))?;
    let listed: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        listed,
        vec![third.id.as_str(), second.id.as_str(), first.id.as_str()]
    );
    assert_eq!(f.store.actions(None, None)?.len(), 4);
    assert_eq!(f.store.actions(None, Some(&b2))?.len(), 1);
    assert!(f.store.actions(Some("globex"), None)?.is_empty());
    assert!(matches!(
        f.store.actions(Some("nope"), None),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    assert!(matches!(
        f.store.actions(Some("globex"), Some(&b1)),
        Err(StoreError::NotFound { what: "device", .. })
    ));
    // Tenant scoping of one action.
    let globex = f.tenant_id("globex")?;
    assert_eq!(f.store.action(&first.id, Some(globex))?, None);
    assert!(f.store.action(&first.id, Some(acme))?.is_some());
    Ok(())
}

pub(crate) fn expired_actions_are_marked_and_not_sent(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let gone = f
        .store
        .create_action(None, &b1, &run("late"), Some(Duration::ZERO))?;
    let fresh = f
        .store
        .create_action(None, &b1, &run("now"), Some(Duration::from_secs(3600)))?;
    // Shown as expired already, before the device connects.
    let view = f.store.action(&gone.id, None)?.ok_or("missing")?;
    assert_eq!(
        (view.status, view.finished_at),
        (ActionStatus::Expired, None)
    );
    assert_eq!(
        f.store.action(&fresh.id, None)?.map(|v| v.status),
        Some(ActionStatus::Pending)
    );
    let taken = f.store.take_pending_actions(&b1)?;
    assert_eq!(
        taken.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec![fresh.id.as_str()]
    );
    let view = f.store.action(&gone.id, None)?.ok_or("missing")?;
    assert_eq!(view.status, ActionStatus::Expired);
    assert!(view.finished_at.is_some() && view.sent_at.is_none());
    Ok(())
}

pub(crate) fn results_are_recorded_capped_and_idempotent(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let ok = f.store.create_action(None, &b1, &run("echo hi"), None)?;
    let big = f.store.create_action(None, &b1, &run("yes"), None)?;
    f.store.take_pending_actions(&b1)?;
    f.store
        .record_action_result(&b1, &result(&ok.id, ActionStatus::Succeeded, "hi\n"))?;
    let view = f.store.action(&ok.id, None)?.ok_or("missing")?;
    assert_eq!(view.status, ActionStatus::Succeeded);
    assert_eq!(
        (view.exit_code, view.output.as_deref(), view.truncated),
        (Some(0), Some("hi\n"), false)
    );
    assert!(view.finished_at.is_some());
    // A repeated result changes nothing.
    f.store
        .record_action_result(&b1, &result(&ok.id, ActionStatus::Failed, "again"))?;
    assert_eq!(f.store.action(&ok.id, None)?, Some(view));

    // Over the limit, with a multi-byte character across the cut.
    let mut output = "x".repeat(MAX_ACTION_OUTPUT - 1);
    output.push('é');
    output.push_str("tail");
    let mut failed = result(&big.id, ActionStatus::Failed, &output);
    failed.exit_code = Some(2);
    failed.error = Some("exit status 2".into());
    f.store.record_action_result(&b1, &failed)?;
    let view = f.store.action(&big.id, None)?.ok_or("missing")?;
    assert_eq!(view.status, ActionStatus::Failed);
    let stored = view.output.ok_or("no output")?;
    assert_eq!(stored.len(), MAX_ACTION_OUTPUT - 1);
    assert!(stored.bytes().all(|b| b == b'x'));
    assert!(view.truncated);
    assert_eq!(
        (view.exit_code, view.error.as_deref()),
        (Some(2), Some("exit status 2"))
    );
    // A device may not report a status other than succeeded or failed.
    let again = f.store.create_action(None, &b1, &run("x"), None)?;
    let e = err_text(
        f.store
            .record_action_result(&b1, &result(&again.id, ActionStatus::Running, "")),
    );
    assert!(e.contains("succeeded or failed"), "{e}");
    Ok(())
}

pub(crate) fn a_result_for_another_devices_action_is_refused(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let b2 = f.enroll("acme", "b2")?;
    let g1 = f.enroll("globex", "g1")?;
    let a = f.store.create_action(None, &b1, &run("id"), None)?;
    f.store.take_pending_actions(&b1)?;
    for other in [&b2, &g1] {
        assert!(matches!(
            f.store
                .record_action_result(other, &result(&a.id, ActionStatus::Succeeded, "")),
            Err(StoreError::NotFound { what: "action", .. })
        ));
    }
    assert!(matches!(
        f.store
            .record_action_result(&b1, &result("act_nope", ActionStatus::Succeeded, "")),
        Err(StoreError::NotFound { what: "action", .. })
    ));
    let view = f.store.action(&a.id, None)?.ok_or("missing")?;
    assert_eq!((view.status, view.output), (ActionStatus::Running, None));
    Ok(())
}

pub(crate) fn invalid_actions_and_devices_are_refused_by_name(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    f.enroll("globex", "g1")?;
    let cases = [
        (run(""), "command"),
        (run("  \n"), "command"),
        (run(&"x".repeat(MAX_COMMAND_BYTES + 1)), "command"),
        (
            ActionKind::Run {
                command: "x".into(),
                timeout_secs: Some(0),
            },
            "timeout_secs",
        ),
        (
            ActionKind::Run {
                command: "x".into(),
                timeout_secs: Some(MAX_TIMEOUT_SECS + 1),
            },
            "timeout_secs",
        ),
        (
            ActionKind::Restart {
                component: " ".into(),
            },
            "component",
        ),
    ];
    for (action, field) in cases {
        let e = f.store.create_action(None, &b1, &action, None);
        assert!(matches!(e, Err(StoreError::Invalid(_))), "{action:?}");
        let e = err_text(e);
        assert!(e.contains(field), "{field}: {e}");
    }
    // The limits themselves are fine.
    f.store.create_action(
        None,
        &b1,
        &ActionKind::Run {
            command: "x".repeat(MAX_COMMAND_BYTES),
            timeout_secs: Some(MAX_TIMEOUT_SECS),
        },
        None,
    )?;
    // Another tenant's device is not found, by name or by id.
    let globex = f.tenant_id("globex")?;
    for key in ["b1", b1.as_str()] {
        assert!(matches!(
            f.store
                .create_action(Some(globex), key, &ActionKind::Reboot, None),
            Err(StoreError::NotFound { what: "device", .. })
        ));
    }
    assert!(matches!(
        f.store
            .create_action(None, "nothing", &ActionKind::Reboot, None),
        Err(StoreError::NotFound { what: "device", .. })
    ));
    assert_eq!(f.store.actions(None, None)?.len(), 1);
    Ok(())
}

pub(crate) fn running_actions_are_requeued_and_sent_again(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let b2 = f.enroll("acme", "b2")?;
    let a = f.store.create_action(None, &b1, &run("a"), None)?;
    let done = f.store.create_action(None, &b1, &run("b"), None)?;
    let other = f.store.create_action(None, &b2, &run("c"), None)?;
    f.store.take_pending_actions(&b1)?;
    f.store.take_pending_actions(&b2)?;
    f.store
        .record_action_result(&b1, &result(&done.id, ActionStatus::Succeeded, ""))?;
    assert_eq!(f.store.requeue_running_actions(&b1)?, 1);
    let view = f.store.action(&a.id, None)?.ok_or("missing")?;
    assert_eq!((view.status, view.sent_at), (ActionStatus::Pending, None));
    let view = f.store.action(&done.id, None)?.ok_or("missing")?;
    assert_eq!(view.status, ActionStatus::Succeeded);
    let view = f.store.action(&other.id, None)?.ok_or("missing")?;
    assert_eq!(view.status, ActionStatus::Running);
    let again = f.store.take_pending_actions(&b1)?;
    assert_eq!(
        again.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        vec![a.id.as_str()]
    );
    assert_eq!(f.store.requeue_running_actions("dev_nope")?, 0);
    // A result arriving after a requeue (the device had done it) is still recorded.
    f.store.requeue_running_actions(&b1)?;
    f.store
        .record_action_result(&b1, &result(&a.id, ActionStatus::Succeeded, "late"))?;
    assert!(f.store.take_pending_actions(&b1)?.is_empty());
    Ok(())
}
