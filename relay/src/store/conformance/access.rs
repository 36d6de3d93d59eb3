//! Conformance, with two handles on one store: every write that can narrow who may stay
//! connected, made through one handle (the admin CLI, another relay), reaches the other's
//! eviction sweep through its change feed; other writes do not wake it.

use futures_util::FutureExt;

use super::*;

/// Whether `relay`'s feed signalled an access change since the last call.
fn swept(relay: &dyn Backend) -> Result<bool, StoreError> {
    relay.pick_up_changes()?;
    Ok(relay
        .notifier()
        .access_changes()
        .notified()
        .now_or_never()
        .is_some())
}

/// `relay` serves; `cli` writes. Both are handles on the same, empty store.
pub(crate) fn access_changes_reach_the_serving_handle(
    relay: &dyn Backend,
    cli: &dyn Backend,
) -> TestResult {
    relay.add_tenant("acme")?;
    relay.add_tenant("globex")?;
    let a = enroll(relay, "acme", "a")?;
    let b = enroll(relay, "acme", "b")?;
    relay.add_user("alice", "acme", Role::Admin, KEY_A)?;
    relay.add_user("bob", "acme", Role::Operator, KEY_B)?;
    let _ = swept(relay)?;
    assert!(!swept(relay)?, "nothing changed");

    // Writes that narrow nobody's access do not wake the sweep.
    cli.create_action(None, &a, &run("uptime"), None)?;
    cli.mark_online(&a, "192.0.2.1:1", None)?;
    cli.set_device_status(&a, DeviceStatus::Accepted)?;
    let second_key = cli.add_user_key("acme", "alice", &key(7)?)?;
    assert!(
        !swept(relay)?,
        "an action, a link, an unchanged status, a new key"
    );

    let cases: [(&str, &dyn Fn() -> TestResult); 8] = [
        ("device rejected", &|| {
            cli.set_device_status(&a, DeviceStatus::Rejected)?;
            Ok(())
        }),
        ("device removed", &|| Ok(cli.remove_device(&b)?)),
        ("engineer disabled", &|| {
            cli.set_user_disabled("acme", "alice", true)?;
            Ok(())
        }),
        ("role lowered", &|| {
            cli.set_user_role("acme", "bob", Role::Viewer)?;
            Ok(())
        }),
        ("key removed", &|| {
            cli.remove_user_key("acme", "alice", &second_key)?;
            Ok(())
        }),
        ("engineer removed", &|| {
            cli.remove_user("acme", "bob")?;
            Ok(())
        }),
        ("CA's role changed", &|| {
            cli.trust_ca("globex", KEY_B, Role::Admin, &[])?;
            let _ = swept(relay)?;
            cli.trust_ca("globex", KEY_B, Role::Viewer, &[])?;
            Ok(())
        }),
        ("tenant removed", &|| {
            cli.remove_tenant("globex", true)?;
            Ok(())
        }),
    ];
    for (what, write) in cases {
        write()?;
        assert!(swept(relay)?, "{what} must wake the sweep");
        assert!(!swept(relay)?, "{what} wakes it once");
    }
    Ok(())
}
