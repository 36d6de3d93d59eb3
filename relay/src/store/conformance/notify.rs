//! Conformance: every write that changes what a device should do notifies that device, and
//! only it; reads and the device's own reports notify nobody.

use super::*;

/// Acme's a1 (tagged `edge`) and a2, globex's g1, each watched, their first change taken.
struct Watched<'a> {
    f: fleet::Fixture<'a>,
    ids: Vec<String>,
    changes: Vec<DeviceChanges>,
}

impl Watched<'_> {
    /// Which of a1, a2, g1 were notified since the last call.
    fn notified(&mut self) -> [bool; 3] {
        let mut out = [false; 3];
        for (o, c) in out.iter_mut().zip(self.changes.iter_mut()) {
            *o = c.take_change();
        }
        out
    }
}

fn watched(store: &dyn Backend) -> Result<Watched<'_>, Box<dyn std::error::Error>> {
    let f = fleet::fixture(store)?;
    let ids = vec![
        f.enroll("acme", "a1")?,
        f.enroll("acme", "a2")?,
        f.enroll("globex", "g1")?,
    ];
    store.set_tags(&ids[0], &["edge".into()], &[])?;
    let changes = ids
        .iter()
        .map(|id| store.notifier().subscribe(id))
        .collect();
    let mut w = Watched { f, ids, changes };
    // A new subscription starts out changed, so its holder reads the state first.
    assert_eq!(w.notified(), [true; 3]);
    assert_eq!(w.notified(), [false; 3]);
    Ok(w)
}

pub(crate) fn a_write_notifies_its_device_only(store: &dyn Backend) -> TestResult {
    let mut w = watched(store)?;
    let recipe = fleet::recipe_text("com.a", "1.0.0", None);

    store.create_action(None, &w.ids[0], &run("uptime"), None)?;
    assert_eq!(w.notified(), [true, false, false]);

    w.f.deploy("tag:edge", &[("a.yaml", recipe.clone())], &[])?;
    assert_eq!(w.notified(), [true, false, false]);
    w.f.deploy("device:a2", &[("a.yaml", recipe.clone())], &[])?;
    assert_eq!(w.notified(), [false, true, false]);

    store.push_config(&w.ids[1], &json!({"com.a": {"port": 1}}))?;
    assert_eq!(w.notified(), [false, true, false]);

    // A removal is a deployment too.
    store.create_deployment(
        &w.f.artifacts(),
        NewDeployment {
            tenant: "acme",
            target: Target::Device("a2".into()),
            recipes: Vec::new(),
            set: Vec::new(),
            os: None,
            artifacts: Vec::new(),
            remove: vec!["com.a".into()],
        },
    )?;
    assert_eq!(w.notified(), [false, true, false]);

    // Actions put back in the queue.
    let taken = store.take_pending_actions(&w.ids[0])?;
    assert_eq!(taken.len(), 1);
    assert_eq!(w.notified(), [false; 3]);
    assert_eq!(store.requeue_running_actions(&w.ids[0])?, 1);
    assert_eq!(w.notified(), [true, false, false]);
    let taken = store.take_pending_actions(&w.ids[0])?;
    let unsent: Vec<String> = taken.iter().map(|a| a.id.clone()).collect();
    assert_eq!(store.requeue_unsent_actions(&unsent)?, 1);
    assert_eq!(w.notified(), [true, false, false]);
    // Nothing to put back: nobody is told.
    assert_eq!(store.requeue_running_actions(&w.ids[1])?, 0);
    assert_eq!(w.notified(), [false; 3]);

    // A write that fails notifies nobody.
    assert!(store.push_config(&w.ids[2], &json!({"nope": {}})).is_err());
    assert!(
        store
            .create_action(None, "no-such-device", &run("x"), None)
            .is_err()
    );
    assert_eq!(w.notified(), [false; 3]);
    Ok(())
}

pub(crate) fn reads_and_reports_notify_nobody(store: &dyn Backend) -> TestResult {
    let mut w = watched(store)?;
    let recipe = fleet::recipe_text("com.a", "1.0.0", None);
    let dep = w.f.deploy("device:a1", &[("a.yaml", recipe)], &[])?;
    let action = store.create_action(None, &w.ids[0], &run("uptime"), None)?;
    w.notified();

    store.desired_state(&w.ids[0])?;
    store.device_state(&w.ids[0])?;
    store.deployment(&dep.id, None)?;
    store.set_tags(&w.ids[1], &["edge".into()], &[])?;
    store.mark_online(&w.ids[0], "192.0.2.1:1", None)?;
    let report = ReportedState {
        version: 1,
        deployment_id: Some(dep.id.clone()),
        status: Some(DeploymentStatus::Succeeded),
        ..Default::default()
    };
    store.record_report(&w.ids[0], &report)?;
    store.take_pending_actions(&w.ids[0])?;
    store.record_action_result(
        &w.ids[0],
        &ActionResult {
            id: action.id,
            status: ActionStatus::Succeeded,
            exit_code: Some(0),
            output: String::new(),
            truncated: false,
            error: None,
        },
    )?;
    assert_eq!(w.notified(), [false; 3]);
    Ok(())
}
