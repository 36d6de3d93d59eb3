//! Conformance: artifacts, tags, deployments and desired state composition, reports.

use sha2::{Digest, Sha256};
use tether_protocol::recipe::{self, ArtifactUri};

use super::*;

pub(crate) const SHA_A: &str = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b";

pub(crate) fn recipe_text(name: &str, version: &str, artifact: Option<&str>) -> String {
    let artifacts = match artifact {
        Some(sha) => {
            format!("    artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n")
        }
        None => String::new(),
    };
    format!(
        "name: {name}\nversion: {version}\nconfiguration:\n  port: 8080\nmanifests:\n  - platform: {{ os: linux }}\n{artifacts}    lifecycle:\n      run:\n        script: sleep 1000\n"
    )
}

/// A backend with tenants acme and globex, and a directory for artifact files: they live in
/// files beside any backend.
pub(crate) struct Fixture<'a> {
    dir: tempfile::TempDir,
    pub(crate) store: &'a dyn Backend,
}

impl Fixture<'_> {
    pub(crate) fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    pub(crate) fn enroll(&self, tenant: &str, name: &str) -> Result<String, StoreError> {
        enroll(self.store, tenant, name)
    }

    pub(crate) fn deploy(
        &self,
        target: &str,
        recipes: &[(&str, String)],
        set: &[&str],
    ) -> Result<DeploymentView, StoreError> {
        self.store.create_deployment(
            &self.artifacts(),
            NewDeployment {
                tenant: "acme",
                target: target.parse()?,
                recipes: recipes
                    .iter()
                    .map(|(f, t)| (f.to_string(), t.clone()))
                    .collect(),
                set: set.iter().map(|s| s.to_string()).collect(),
                os: None,
                artifacts: Vec::new(),
                remove: Vec::new(),
            },
        )
    }
}

pub(crate) fn fixture(store: &dyn Backend) -> Result<Fixture<'_>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    store.add_tenant("acme")?;
    store.add_tenant("globex")?;
    Ok(Fixture { dir, store })
}

pub(crate) fn put_artifact_is_idempotent_and_stores_the_bytes(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let a = f
        .store
        .put_artifact(&f.artifacts(), "acme", "abc.txt", b"abc")?;
    assert_eq!(
        a.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        (a.tenant.as_str(), a.size, a.name.as_str()),
        ("acme", 3, "abc.txt")
    );
    let path = Store::artifact_path(&f.artifacts(), &a.sha256).ok_or("no path")?;
    assert_eq!(std::fs::read(&path)?, b"abc");
    // The same bytes again: same digest, first name kept, one row, no stray temp files.
    let again = f
        .store
        .put_artifact(&f.artifacts(), "acme", "other.txt", b"abc")?;
    assert_eq!(again, a);
    assert_eq!(f.store.artifacts(Some("acme"))?, vec![a.clone()]);
    assert_eq!(f.store.artifact("acme", &a.sha256)?, Some(a));
    assert_eq!(std::fs::read_dir(f.artifacts())?.count(), 1);
    assert_eq!(f.store.artifact("acme", SHA_A)?, None);
    assert_eq!(Store::artifact_path(&f.artifacts(), "../relay.db"), None);
    assert!(matches!(
        f.store.put_artifact(&f.artifacts(), "acme", "a/b", b"x"),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        f.store.put_artifact(&f.artifacts(), "nope", "a", b"x"),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    Ok(())
}

pub(crate) fn artifacts_belong_to_the_tenant_that_put_them(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let mine = f.enroll("acme", "b1")?;
    let theirs = f.enroll("globex", "g1")?;
    let a = f
        .store
        .put_artifact(&f.artifacts(), "acme", "tool.bin", b"acme's tool")?;
    // Only acme and acme's devices see it; for globex it is exactly as if never stored.
    assert_eq!(f.store.device_artifact(&mine, &a.sha256)?, Some(a.clone()));
    assert_eq!(f.store.device_artifact(&theirs, &a.sha256)?, None);
    assert_eq!(f.store.device_artifact(&theirs, SHA_A)?, None);
    assert_eq!(f.store.device_artifact("dev_nope", &a.sha256)?, None);
    assert_eq!(f.store.artifact("globex", &a.sha256)?, None);
    assert!(f.store.artifacts(Some("globex"))?.is_empty());
    assert!(matches!(
        f.store.artifacts(Some("nope")),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    // A globex recipe naming acme's digest is refused in the words used for a missing one.
    let needs = |sha: &str| {
        vec![(
            "needs.yaml".to_string(),
            recipe_text("com.example.a", "1.0.0", Some(sha)),
        )]
    };
    let deploy_globex = |sha: &str| {
        f.store.create_deployment(
            &f.artifacts(),
            NewDeployment {
                tenant: "globex",
                target: Target::Device("g1".into()),
                recipes: needs(sha),
                set: Vec::new(),
                os: None,
                artifacts: Vec::new(),
                remove: Vec::new(),
            },
        )
    };
    let foreign = err_text(deploy_globex(&a.sha256));
    let missing = err_text(deploy_globex(SHA_A));
    assert!(foreign.contains("not stored on the relay"), "{foreign}");
    assert_eq!(foreign.replace(&a.sha256, "X"), missing.replace(SHA_A, "X"));
    // The same bytes put by globex: one file, a row each, and now globex's device may.
    let g = f
        .store
        .put_artifact(&f.artifacts(), "globex", "copy.bin", b"acme's tool")?;
    assert_eq!(
        (g.sha256.as_str(), g.tenant.as_str()),
        (a.sha256.as_str(), "globex")
    );
    assert_eq!(
        f.store.device_artifact(&theirs, &a.sha256)?,
        Some(g.clone())
    );
    assert_eq!(std::fs::read_dir(f.artifacts())?.count(), 1);
    assert_eq!(f.store.artifacts(None)?, vec![a.clone(), g]);
    // A deployment's recipe is its tenant's artifact, not another's.
    let view = deploy_globex(&a.sha256)?;
    let recipe = &view.components["com.example.a"].recipe_sha256;
    assert!(f.store.device_artifact(&theirs, recipe)?.is_some());
    assert_eq!(f.store.device_artifact(&mine, recipe)?, None);
    Ok(())
}

pub(crate) fn tags_are_added_removed_and_validated(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let d = f.enroll("acme", "b1")?;
    let tags = f.store.set_tags(&d, &["edge".into(), "eu".into()], &[])?;
    assert_eq!(tags, vec!["edge", "eu"]);
    assert_eq!(
        f.store.set_tags(&d, &["edge".into()], &["eu".into()])?,
        vec!["edge"]
    );
    assert_eq!(f.store.device_tags(&d)?, vec!["edge"]);
    assert!(matches!(
        f.store.set_tags(&d, &["Bad Tag".into()], &[]),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        f.store.set_tags("dev_nope", &["edge".into()], &[]),
        Err(StoreError::NotFound { what: "device", .. })
    ));
    Ok(())
}

pub(crate) fn deployment_by_tag_merges_components_and_bumps_versions(
    store: &dyn Backend,
) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let b2 = f.enroll("acme", "b2")?;
    let other = f.enroll("acme", "b3")?;
    let foreign = f.enroll("globex", "g1")?;
    for d in [&b1, &b2, &foreign] {
        f.store.set_tags(d, &["edge".into()], &[])?;
    }
    // A pending device with the tag is left out.
    f.store.set_device_status(&b2, DeviceStatus::Pending)?;
    let first = f.deploy(
        "tag:edge",
        &[
            ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
            ("b.yaml", recipe_text("com.example.b", "1.0.0", None)),
        ],
        &[],
    )?;
    assert!(
        first.id.starts_with("dep_") && first.id.len() == 16,
        "{}",
        first.id
    );
    assert_eq!(
        (first.tenant.as_str(), first.target.as_str()),
        ("acme", "tag:edge")
    );
    let ids: Vec<&str> = first.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, vec![b1.as_str()]);
    assert_eq!(first.devices[0].status, DeploymentStatus::Pending);
    // The recipe text is stored as an artifact under its file name.
    let a = &first.components["com.example.a"];
    assert_eq!(a.version, "1.0.0");
    assert_eq!(a.configuration, json!({}));
    let stored = f
        .store
        .artifact("acme", &a.recipe_sha256)?
        .ok_or("recipe not stored")?;
    assert_eq!(stored.name, "a.yaml");
    let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
    assert_eq!(desired.version, 1);
    assert_eq!(desired.deployment_id.as_deref(), Some(first.id.as_str()));
    assert_eq!(desired.components.len(), 2);
    assert_eq!(f.store.desired_state(&other)?, None);
    assert_eq!(f.store.desired_state(&foreign)?, None);

    // A second deployment replaces com.example.b and keeps com.example.a.
    let second = f.deploy(
        "device:b1",
        &[("b2.yaml", recipe_text("com.example.b", "2.0.0", None))],
        &[],
    )?;
    assert_eq!(second.target, format!("device:{b1}"));
    let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
    assert_eq!(desired.version, 2);
    assert_eq!(desired.deployment_id.as_deref(), Some(second.id.as_str()));
    assert_eq!(desired.components["com.example.a"].version, "1.0.0");
    assert_eq!(desired.components["com.example.b"].version, "2.0.0");
    // Listing and tenant scoping.
    assert_eq!(f.store.deployments(Some("acme"))?.len(), 2);
    assert!(f.store.deployments(Some("globex"))?.is_empty());
    assert!(matches!(
        f.store.deployments(Some("nope")),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    let globex = f.store.tenant_by_name("globex")?.ok_or("no globex")?;
    assert_eq!(f.store.deployment(&first.id, Some(globex.id))?, None);
    assert_eq!(f.store.deployment(&first.id, None)?, Some(first));
    Ok(())
}

pub(crate) fn bad_targets_recipes_and_artifacts_are_refused_by_name(
    store: &dyn Backend,
) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    f.enroll("globex", "g1")?;
    let ok = [("a.yaml", recipe_text("com.example.a", "1.0.0", None))];
    let e = err_text(f.deploy("tag:nobody", &ok, &[]));
    assert_eq!(e, "no device of tenant acme has tag nobody");
    // Another tenant's device is not found.
    assert!(matches!(
        f.deploy("device:g1", &ok, &[]),
        Err(StoreError::NotFound { what: "device", .. })
    ));
    let e = err_text(f.deploy("device:b1", &[("broken.yaml", "name: [".into())], &[]));
    assert!(e.contains("broken.yaml"), "{e}");
    let e = err_text(f.deploy(
        "device:b1",
        &[(
            "needs.yaml",
            recipe_text("com.example.a", "1.0.0", Some(SHA_A)),
        )],
        &[],
    ));
    assert!(e.contains("needs.yaml") && e.contains(SHA_A), "{e}");
    let e = err_text(f.deploy(
        "device:b1",
        &[
            ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
            ("a2.yaml", recipe_text("com.example.a", "2.0.0", None)),
        ],
        &[],
    ));
    assert!(e.contains("a.yaml") && e.contains("a2.yaml"), "{e}");
    // Nothing was deployed by any of these.
    assert_eq!(f.store.desired_state(&b1)?, None);
    assert!(f.store.deployments(None)?.is_empty());
    // Once the artifact is stored the recipe deploys.
    let data = b"tool";
    let sha = hex::encode(Sha256::digest(data));
    f.store
        .put_artifact(&f.artifacts(), "acme", "tool.bin", data)?;
    f.deploy(
        "device:b1",
        &[(
            "needs.yaml",
            recipe_text("com.example.a", "1.0.0", Some(&sha)),
        )],
        &[],
    )?;
    Ok(())
}

pub(crate) fn set_assignments_are_routed_to_their_components(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    f.enroll("acme", "b1")?;
    let view = f.deploy(
        "device:b1",
        &[
            ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
            ("b.yaml", recipe_text("com.example.b", "1.0.0", None)),
        ],
        &[
            "com.example.a:port=9000",
            "level=debug",
            "com.example.b:url=http://x:80/?a=b",
            "com.example.b:server.host=h",
        ],
    )?;
    assert_eq!(
        view.components["com.example.a"].configuration,
        json!({"port": 9000, "level": "debug"})
    );
    assert_eq!(
        view.components["com.example.b"].configuration,
        json!({"level": "debug", "url": "http://x:80/?a=b", "server": {"host": "h"}})
    );
    let e = err_text(f.deploy(
        "device:b1",
        &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
        &["com.example.zzz:port=1"],
    ));
    assert!(e.contains("com.example.zzz"), "{e}");
    let e = err_text(f.deploy(
        "device:b1",
        &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
        &["no-equals-sign"],
    ));
    assert!(e.contains("no-equals-sign"), "{e}");
    assert_eq!(
        config_overrides(&["com.example.a:port=1".into(), "com.example.a:x.y=z".into()])?,
        json!({"com.example.a": {"port": 1, "x": {"y": "z"}}})
    );
    assert!(config_overrides(&["port=1".into()]).is_err());
    Ok(())
}

pub(crate) fn reports_update_the_deployment_only_for_its_version(
    store: &dyn Backend,
) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let first = f.deploy(
        "device:b1",
        &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
        &[],
    )?;
    let second = f.deploy(
        "device:b1",
        &[("a.yaml", recipe_text("com.example.a", "2.0.0", None))],
        &[],
    )?;
    let report = |version, deployment: &str, status| ReportedState {
        version,
        deployment_id: Some(deployment.to_string()),
        status: Some(status),
        message: Some(format!("v{version}")),
        components: vec![ReportedComponent {
            name: "com.example.a".into(),
            version: "1.0.0".into(),
            state: "running".into(),
            errors: 0,
            restarts: 0,
            last_error: None,
            configuration: json!({}),
        }],
        inventory: None,
        os_version: None,
        failed: Vec::new(),
    };
    let status = |id: &str| -> Result<(DeploymentStatus, Option<String>), StoreError> {
        let view = f.store.deployment(id, None)?.ok_or(StoreError::NotFound {
            what: "deployment",
            key: id.to_string(),
        })?;
        Ok((view.devices[0].status, view.devices[0].message.clone()))
    };
    // A late report about version 1 naming the second deployment changes nothing.
    f.store
        .record_report(&b1, &report(1, &second.id, DeploymentStatus::Succeeded))?;
    assert_eq!(status(&second.id)?.0, DeploymentStatus::Pending);
    // About version 1 and the first deployment: that one is updated.
    f.store
        .record_report(&b1, &report(1, &first.id, DeploymentStatus::Succeeded))?;
    assert_eq!(
        status(&first.id)?,
        (DeploymentStatus::Succeeded, Some("v1".into()))
    );
    f.store
        .record_report(&b1, &report(2, &second.id, DeploymentStatus::RolledBack))?;
    assert_eq!(status(&second.id)?.0, DeploymentStatus::RolledBack);
    let state = f.store.device_state(&b1)?;
    assert_eq!(state.reported.map(|r| r.version), Some(2));
    assert!(state.reported_at.is_some());
    assert_eq!(state.desired.map(|d| d.version), Some(2));
    assert!(matches!(
        f.store.record_report("dev_nope", &ReportedState::default()),
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

pub(crate) fn push_config_merges_and_refuses_unknown_components(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let e = err_text(
        f.store
            .push_config(&b1, &json!({"com.example.a": {"port": 1}})),
    );
    assert!(e.contains("com.example.a"), "{e}");
    f.deploy(
        "device:b1",
        &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
        &["port=9000", "keep=yes"],
    )?;
    let pushed = f.store.push_config(
        &b1,
        &json!({"com.example.a": {"port": 9100, "keep": null, "new": {"x": 1}}}),
    )?;
    assert_eq!(pushed.version, 2);
    assert_eq!(pushed.deployment_id, None);
    assert_eq!(
        pushed.components["com.example.a"].configuration,
        json!({"port": 9100, "new": {"x": 1}})
    );
    assert_eq!(f.store.desired_state(&b1)?, Some(pushed));
    let e = err_text(
        f.store
            .push_config(&b1, &json!({"com.example.zzz": {"a": 1}})),
    );
    assert!(e.contains("com.example.zzz"), "{e}");
    assert!(f.store.push_config(&b1, &json!([1])).is_err());
    assert_eq!(f.store.desired_state(&b1)?.map(|d| d.version), Some(2));
    Ok(())
}

pub(crate) fn bare_named_artifacts_are_stored_and_the_recipe_names_them_on_the_relay(
    store: &dyn Backend,
) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let data = b"#!/bin/sh\necho hi\n";
    let sha = hex::encode(Sha256::digest(data));
    let text = format!(
        "name: com.example.a\nversion: 1.0.0\nmanifests:\n  - artifacts:\n      - uri: tool.sh\n        sha256: {sha}\n    lifecycle:\n      run: sh {{artifacts:path}}/tool.sh\n"
    );
    let deploy = |artifacts: Vec<(String, Vec<u8>)>, remove: Vec<String>| {
        f.store.create_deployment(
            &f.artifacts(),
            NewDeployment {
                tenant: "acme",
                target: Target::Device("b1".into()),
                recipes: vec![("app.yaml".into(), text.clone())],
                set: Vec::new(),
                os: None,
                artifacts,
                remove,
            },
        )
    };
    // Neither supplied nor stored: refused, naming recipe, artifact and the way out.
    let e = err_text(deploy(Vec::new(), Vec::new()));
    assert!(
        e.contains("app.yaml: manifests[0].artifacts[0]")
            && e.contains("artifact tool.sh of com.example.a")
            && e.contains("--artifacts DIR"),
        "{e}"
    );
    let e = err_text(deploy(
        vec![("tool.sh".into(), b"other".to_vec())],
        Vec::new(),
    ));
    assert!(e.contains("tool.sh") && e.contains(&sha), "{e}");
    let e = err_text(deploy(
        vec![
            ("tool.sh".into(), data.to_vec()),
            ("extra.bin".into(), b"x".to_vec()),
        ],
        Vec::new(),
    ));
    assert!(e.contains("extra.bin"), "{e}");
    assert_eq!(f.store.desired_state(&b1)?, None);
    let view = deploy(vec![("tool.sh".into(), data.to_vec())], Vec::new())?;
    let stored = f
        .store
        .artifact("acme", &sha)?
        .ok_or("artifact not stored")?;
    assert_eq!(stored.name, "tool.sh");
    let recipe_sha = &view.components["com.example.a"].recipe_sha256;
    let path = Store::artifact_path(&f.artifacts(), recipe_sha).ok_or("no path")?;
    let deployed = recipe::parse(&std::fs::read_to_string(&path)?, &path)?;
    assert_eq!(
        deployed.manifests[0].artifacts[0].uri,
        ArtifactUri::Relay {
            sha256: sha.clone(),
            name: Some("tool.sh".into())
        }
    );
    let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
    assert_eq!(desired.changes, Some(vec!["com.example.a".to_string()]));
    // Stored now, the same recipe deploys without the file.
    deploy(Vec::new(), Vec::new())?;
    Ok(())
}

pub(crate) fn removals_take_components_out_and_name_only_what_they_change(
    store: &dyn Backend,
) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let base = "name: com.example.base\nversion: 1.0.0\nmanifests:\n  - lifecycle:\n      run: sleep 1000\n";
    let user = "name: com.example.user\nversion: 1.0.0\ndependencies:\n  com.example.base:\n    version: \">=1.0.0\"\nmanifests:\n  - lifecycle:\n      run: sleep 1000\n";
    f.deploy(
        "device:b1",
        &[
            ("base.yaml", base.to_string()),
            ("user.yaml", user.to_string()),
            ("a.yaml", recipe_text("com.example.a", "1.0.0", None)),
        ],
        &[],
    )?;
    let remove = |names: &[&str]| {
        f.store.create_deployment(
            &f.artifacts(),
            NewDeployment {
                tenant: "acme",
                target: Target::Device("b1".into()),
                recipes: Vec::new(),
                set: Vec::new(),
                os: None,
                artifacts: Vec::new(),
                remove: names.iter().map(|n| n.to_string()).collect(),
            },
        )
    };
    let e = err_text(remove(&["com.example.base"]));
    assert!(
        e.contains("com.example.user") && e.contains("--remove com.example.user"),
        "{e}"
    );
    let e = err_text(remove(&["com.example.nothing"]));
    assert!(e.contains("com.example.nothing"), "{e}");
    assert!(remove(&["bad name"]).is_err());
    let view = remove(&["com.example.a"])?;
    assert_eq!(view.removed, vec!["com.example.a"]);
    assert!(view.components.is_empty());
    let desired = f.store.desired_state(&b1)?.ok_or("no desired state")?;
    assert!(!desired.components.contains_key("com.example.a"));
    assert_eq!(desired.changes, Some(vec!["com.example.a".to_string()]));
    assert_eq!(f.store.deployment(&view.id, None)?, Some(view));
    // Both at once is fine; a configuration push names only what it patches.
    remove(&["com.example.base", "com.example.user"])?;
    f.deploy(
        "device:b1",
        &[("a.yaml", recipe_text("com.example.a", "1.0.0", None))],
        &[],
    )?;
    let pushed = f
        .store
        .push_config(&b1, &json!({"com.example.a": {"port": 1}}))?;
    assert_eq!(pushed.changes, Some(vec!["com.example.a".to_string()]));
    Ok(())
}

pub(crate) fn device_state_before_anything_happened(store: &dyn Backend) -> TestResult {
    let f = fixture(store)?;
    let b1 = f.enroll("acme", "b1")?;
    let state = f.store.device_state(&b1)?;
    assert_eq!(
        state,
        DeviceState {
            device_id: b1,
            desired: None,
            reported: None,
            reported_at: None,
        }
    );
    assert!(matches!(
        f.store.device_state("dev_nope"),
        Err(StoreError::NotFound { what: "device", .. })
    ));
    Ok(())
}
