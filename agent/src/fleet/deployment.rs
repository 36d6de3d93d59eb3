//! One round of a desired version: what it changes against what was applied ([`plan`]), and
//! carrying it out ([`install`]): the changed components deployed in dependency order, the
//! unwanted ones removed (dependents first), and, when one fails, every component this round
//! already changed put back as it was (the supervisor has already rolled back the failing one),
//! so a failed deployment leaves the previous good set running and the outcome says why.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};

use tether_protocol::fleet::{DeploymentStatus, DesiredComponent, DesiredState};
use tether_protocol::recipe;

use crate::apps::error::SupervisorError;
use crate::apps::supervisor::{DeployRequest, Supervisor};
use crate::fleet::applied::{Applied, FailedSpec};

/// What one desired version asks of the device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Components to deploy: new or changed ones, ones never tried, and ones the version
    /// names that are not on the device as applied. In name order; [`install`] orders them.
    pub work: Vec<String>,
    /// Components to remove: applied ones the relay no longer wants, and ones the version
    /// names that are not desired but on the device.
    pub remove: Vec<String>,
}

/// Works out what `desired` changes against what was applied. A component the version does
/// not name is left alone when it was applied (even if it was removed on the device by hand:
/// the relay then shows it desired but not reported) or when this very spec failed before:
/// an unrelated deployment neither retries nor fails on it. `deployed` is what is on the
/// device now: each deployed component's version, by name.
pub fn plan(
    desired: &DesiredState,
    previous: &Applied,
    deployed: &BTreeMap<String, String>,
) -> Plan {
    let named: BTreeSet<&str> = match &desired.changes {
        Some(list) => list.iter().map(String::as_str).collect(),
        // A document from before `changes`: every component is the version's business.
        None => desired
            .components
            .keys()
            .chain(previous.components.keys())
            .map(String::as_str)
            .collect(),
    };
    let mut plan = Plan::default();
    for (name, want) in &desired.components {
        let is_named = named.contains(name.as_str());
        let needed = if previous.components.get(name) == Some(want) {
            is_named && deployed.get(name) != Some(&want.version)
        } else if previous
            .failed
            .get(name)
            .is_some_and(|f| f.component == *want)
        {
            is_named
        } else {
            true
        };
        if needed {
            plan.work.push(name.clone());
        }
    }
    let mut remove: BTreeSet<String> = previous
        .components
        .keys()
        .filter(|n| !desired.components.contains_key(*n))
        .cloned()
        .collect();
    for name in &named {
        if !desired.components.contains_key(*name) && deployed.contains_key(*name) {
            remove.insert(name.to_string());
        }
    }
    plan.remove = remove.into_iter().collect();
    plan
}

/// How a round ended: its status and message, what is applied after it, and what failed.
#[derive(Debug)]
pub struct Outcome {
    /// Succeeded, failed (nothing changed) or rolled back (changes put back).
    pub status: DeploymentStatus,
    /// Why, when it did not succeed.
    pub message: Option<String>,
    /// The components applied after the round.
    pub components: BTreeMap<String, DesiredComponent>,
    /// The desired components not applied, with why.
    pub failed: BTreeMap<String, FailedSpec>,
}

/// `previous`'s failures plus every component of `plan.work` as failed: `failing` with
/// `message`, the others as undone with it.
fn failed_round(
    previous: &Applied,
    desired: &DesiredState,
    plan: &Plan,
    failing: Option<&str>,
    message: &str,
) -> BTreeMap<String, FailedSpec> {
    let mut failed = previous.failed.clone();
    for name in &plan.work {
        let Some(want) = desired.components.get(name) else {
            continue;
        };
        let error = match failing {
            Some(f) if f != name => {
                format!("not applied: the deployment was rolled back because {f} failed: {message}")
            }
            _ => message.to_string(),
        };
        failed.insert(
            name.clone(),
            FailedSpec {
                component: want.clone(),
                error,
            },
        );
    }
    failed.retain(|n, _| desired.components.contains_key(n));
    failed
}

/// The failure outcome of a round that changed nothing.
pub fn refused(
    previous: &Applied,
    desired: &DesiredState,
    plan: &Plan,
    failing: Option<&str>,
    message: String,
) -> Outcome {
    Outcome {
        status: DeploymentStatus::Failed,
        failed: failed_round(previous, desired, plan, failing, &message),
        message: Some(message),
        components: previous.components.clone(),
    }
}

/// Deploys `plan.work` in dependency order, then removes `plan.remove` (dependents first); on
/// failure puts back what this round changed, so the outcome is the round's alone.
pub async fn install(
    device: &impl Components,
    desired: &DesiredState,
    previous: &Applied,
    plan: &Plan,
    recipes: &BTreeMap<String, String>,
    cache: &Path,
) -> Outcome {
    // Only the round's components are ordered: dependencies outside it are deployed already
    // (the supervisor checks them), so they are left out of the ordering.
    let mut parsed: Vec<recipe::Recipe> = recipes
        .values()
        .filter_map(|text| recipe::parse(text, Path::new("relay")).ok())
        .collect();
    for r in &mut parsed {
        r.dependencies.retain(|d, _| recipes.contains_key(d));
    }
    let refs: Vec<&recipe::Recipe> = parsed.iter().collect();
    let order = match recipe::start_order(&refs) {
        Ok(o) => o,
        Err(e) => return refused(previous, desired, plan, None, e.to_string()),
    };
    let mut changed: Vec<String> = Vec::new();
    let mut failure = None;
    for name in &order {
        let (Some(want), Some(text)) = (desired.components.get(name), recipes.get(name)) else {
            continue;
        };
        match device.deploy(want, text, cache).await {
            Ok(()) => changed.push(name.clone()),
            Err(e) => {
                // The supervisor's errors name the component and version already.
                failure = Some((name.clone(), e));
                break;
            }
        }
    }
    if failure.is_none() {
        // A removal must not leave a component without a hard dependency it needs.
        for name in &plan.remove {
            let blocking: Vec<String> = device
                .hard_dependents(name)
                .await
                .into_iter()
                .filter(|d| !plan.remove.contains(d))
                .collect();
            if !blocking.is_empty() {
                failure = Some((
                    name.clone(),
                    format!(
                        "cannot remove {name}: {} {} a hard dependency on it; remove {} in the same deployment",
                        blocking.join(", "),
                        if blocking.len() == 1 { "has" } else { "have" },
                        if blocking.len() == 1 { "it" } else { "them" },
                    ),
                ));
                break;
            }
        }
    }
    if let Some((failing, message)) = failure {
        for name in changed.iter().rev() {
            let restore = match previous.components.get(name) {
                Some(prev) => match std::fs::read_to_string(cache.join(&prev.recipe_sha256)) {
                    Ok(text) => device.deploy(prev, &text, cache).await,
                    Err(e) => Err(e.to_string()),
                },
                None => device.remove(name).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = restore {
                tracing::error!("restoring {name}: {e}");
            }
        }
        let failing = desired.components.contains_key(&failing).then_some(failing);
        return Outcome {
            status: DeploymentStatus::RolledBack,
            failed: failed_round(previous, desired, plan, failing.as_deref(), &message),
            message: Some(message),
            components: previous.components.clone(),
        };
    }
    let mut components = previous.components.clone();
    let mut failed = previous.failed.clone();
    for name in &changed {
        if let Some(want) = desired.components.get(name) {
            components.insert(name.clone(), want.clone());
        }
        failed.remove(name);
    }
    // Dependents first: each pass removes those nothing left in the list depends on.
    let mut left = plan.remove.clone();
    while !left.is_empty() {
        let mut next = Vec::new();
        for name in &left {
            let dependents = device.hard_dependents(name).await;
            if dependents.iter().any(|d| d != name && left.contains(d)) {
                next.push(name.clone());
                continue;
            }
            match device.remove(name).await {
                Ok(()) | Err(SupervisorError::NotDeployed(_)) => {
                    tracing::info!("removed {name}: the relay no longer wants it")
                }
                Err(e) => tracing::warn!("removing {name}: {e}"),
            }
            components.remove(name);
        }
        if next.len() == left.len() {
            tracing::warn!("could not order the removal of {}", next.join(", "));
            break;
        }
        left = next;
    }
    failed.retain(|n, _| desired.components.contains_key(n));
    Outcome {
        status: DeploymentStatus::Succeeded,
        message: None,
        components,
        failed,
    }
}

/// What a round needs of the components on the device: the supervisor in the agent, a model
/// of it in the tests below.
pub trait Components {
    /// Deploys `want` from the recipe `text`, its relay artifacts in `cache`; the error names
    /// the component and its version.
    fn deploy(
        &self,
        want: &DesiredComponent,
        text: &str,
        cache: &Path,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops and deletes a component.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), SupervisorError>> + Send;
    /// The components with a hard dependency on `name`, directly or through others.
    fn hard_dependents(&self, name: &str) -> impl Future<Output = Vec<String>> + Send;
}

impl Components for Supervisor {
    async fn deploy(
        &self,
        want: &DesiredComponent,
        text: &str,
        cache: &Path,
    ) -> Result<(), String> {
        let request = DeployRequest {
            recipe: text.to_string(),
            origin: PathBuf::from(format!("relay:sha256:{}", want.recipe_sha256)),
            artifacts_dir: None,
            set: Vec::new(),
            overrides: Some(want.configuration.clone()),
            relay_cache: Some(cache.to_path_buf()),
        };
        Supervisor::deploy(self, request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        Supervisor::remove(self, name).await
    }

    async fn hard_dependents(&self, name: &str) -> Vec<String> {
        Supervisor::hard_dependents(self, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type R = Result<(), Box<dyn std::error::Error>>;

    /// The spec of `name` at `version`; its recipe's "digest" names it, as a cache file name.
    fn spec(name: &str, version: &str) -> DesiredComponent {
        DesiredComponent {
            version: version.into(),
            recipe_sha256: format!("{:0>64}", format!("{name}-{version}")),
            configuration: serde_json::json!({}),
        }
    }

    fn desired(
        version: u64,
        components: &[(&str, &str)],
        changes: Option<&[&str]>,
    ) -> DesiredState {
        DesiredState {
            version,
            components: components
                .iter()
                .map(|(n, v)| (n.to_string(), spec(n, v)))
                .collect(),
            changes: changes.map(|c| c.iter().map(|n| n.to_string()).collect()),
            ..DesiredState::default()
        }
    }

    fn applied(components: &[(&str, &str)], failed: &[(&str, &str)]) -> Applied {
        Applied {
            version: 1,
            components: components
                .iter()
                .map(|(n, v)| (n.to_string(), spec(n, v)))
                .collect(),
            failed: failed
                .iter()
                .map(|(n, v)| {
                    let f = FailedSpec {
                        component: spec(n, v),
                        error: "it failed".into(),
                    };
                    (n.to_string(), f)
                })
                .collect(),
            ..Applied::default()
        }
    }

    fn on_device(components: &[(&str, &str)]) -> BTreeMap<String, String> {
        components
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_round_deploys_what_is_new_or_changed_and_removes_what_is_no_longer_wanted() {
        let previous = applied(&[("a", "1"), ("b", "1"), ("gone", "1")], &[]);
        let device = on_device(&[("a", "1"), ("b", "1"), ("gone", "1")]);
        let want = desired(2, &[("a", "1"), ("b", "2"), ("new", "1")], None);
        let p = plan(&want, &previous, &device);
        assert_eq!(p.work, names(&["b", "new"]));
        assert_eq!(p.remove, names(&["gone"]));
        // Nothing changed, nothing to do.
        let same = desired(3, &[("a", "1"), ("b", "1"), ("gone", "1")], None);
        assert_eq!(plan(&same, &previous, &device), Plan::default());
    }

    #[test]
    fn a_round_touches_only_what_its_version_names() {
        // b was applied but removed on the device by hand; c failed in an earlier version.
        let previous = applied(&[("a", "1"), ("b", "1")], &[("c", "1")]);
        let device = on_device(&[("a", "1"), ("local", "1")]);
        let want = desired(2, &[("a", "2"), ("b", "1"), ("c", "1")], Some(&["a"]));
        let p = plan(&want, &previous, &device);
        assert_eq!(
            p.work,
            names(&["a"]),
            "b and c are not this version's business"
        );
        assert!(p.remove.is_empty());

        // Named, they are put back and retried.
        let named = desired(3, &[("a", "1"), ("b", "1"), ("c", "1")], Some(&["b", "c"]));
        assert_eq!(plan(&named, &previous, &device).work, names(&["b", "c"]));

        // A changed spec of a failed component is always tried.
        let changed = desired(4, &[("a", "1"), ("b", "1"), ("c", "2")], Some(&[]));
        assert_eq!(plan(&changed, &previous, &device).work, names(&["c"]));

        // A named component that is not desired goes, if it is on the device.
        let drop = desired(5, &[("a", "1"), ("b", "1")], Some(&["local", "absent"]));
        assert_eq!(plan(&drop, &previous, &device).remove, names(&["local"]));

        // A document from before `changes` names everything, applied ones included.
        let old_style = desired(6, &[("a", "1"), ("b", "1"), ("c", "1")], None);
        assert_eq!(
            plan(&old_style, &previous, &device).work,
            names(&["b", "c"])
        );
    }

    /// A model of the device's components: what is deployed (name → version), which
    /// deployments fail, the hard dependencies, and every call made, in order.
    #[derive(Default)]
    struct Device {
        deployed: Mutex<BTreeMap<String, String>>,
        failing: Vec<String>,
        depends_on: Vec<(String, String)>,
        calls: Mutex<Vec<String>>,
    }

    impl Device {
        fn with(deployed: &[(&str, &str)]) -> Self {
            Self {
                deployed: Mutex::new(on_device(deployed)),
                ..Self::default()
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }

        fn deployed(&self) -> BTreeMap<String, String> {
            self.deployed.lock().map(|d| d.clone()).unwrap_or_default()
        }
    }

    impl Components for Device {
        async fn deploy(
            &self,
            want: &DesiredComponent,
            text: &str,
            _cache: &Path,
        ) -> Result<(), String> {
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("name: "))
                .unwrap_or_default()
                .to_string();
            if let Ok(mut c) = self.calls.lock() {
                c.push(format!("deploy {name} {}", want.version));
            }
            if self.failing.contains(&format!("{name} {}", want.version)) {
                return Err(format!(
                    "{name} {}: run step exited with status 1",
                    want.version
                ));
            }
            if let Ok(mut d) = self.deployed.lock() {
                d.insert(name, want.version.clone());
            }
            Ok(())
        }

        async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
            if let Ok(mut c) = self.calls.lock() {
                c.push(format!("remove {name}"));
            }
            match self.deployed.lock().map(|mut d| d.remove(name)) {
                Ok(Some(_)) => Ok(()),
                _ => Err(SupervisorError::NotDeployed(name.to_string())),
            }
        }

        async fn hard_dependents(&self, name: &str) -> Vec<String> {
            let deployed = self.deployed();
            self.depends_on
                .iter()
                .filter(|(dependent, on)| on == name && deployed.contains_key(dependent))
                .map(|(dependent, _)| dependent.clone())
                .collect()
        }
    }

    /// A recipe of `name` at `version` with hard dependencies on `deps`.
    fn recipe_text(name: &str, version: &str, deps: &[&str]) -> String {
        let mut text = format!("name: {name}\nversion: {version}.0.0\n");
        if !deps.is_empty() {
            text.push_str("dependencies:\n");
            for d in deps {
                text.push_str(&format!("  {d}:\n    version: \">=1.0.0\"\n"));
            }
        }
        text.push_str("manifests:\n  - lifecycle:\n      run: sleep 60\n");
        text
    }

    /// The cache with the recipes of `previous`'s components, as the relay sent them, so a
    /// round that fails can deploy them again.
    fn cache_of(previous: &Applied, dir: &Path) -> std::io::Result<()> {
        for (name, c) in &previous.components {
            std::fs::write(
                dir.join(&c.recipe_sha256),
                recipe_text(name, &c.version, &[]),
            )?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_round_deploys_in_dependency_order_then_removes() -> R {
        let cache = tempfile::tempdir()?;
        let previous = applied(&[("t.db", "1"), ("t.old", "1")], &[]);
        let device = Device::with(&[("t.db", "1"), ("t.old", "1")]);
        let want = desired(2, &[("t.db", "2"), ("t.api", "1")], None);
        let p = plan(&want, &previous, &device.deployed());
        let recipes: BTreeMap<String, String> = [
            ("t.api".to_string(), recipe_text("t.api", "1", &["t.db"])),
            ("t.db".to_string(), recipe_text("t.db", "2", &[])),
        ]
        .into();
        let outcome = install(&device, &want, &previous, &p, &recipes, cache.path()).await;
        assert_eq!(outcome.status, DeploymentStatus::Succeeded, "{outcome:?}");
        assert_eq!(
            device.calls(),
            ["deploy t.db 2", "deploy t.api 1", "remove t.old"]
        );
        assert_eq!(outcome.components, want.components);
        assert!(outcome.failed.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_failure_puts_back_what_the_round_changed() -> R {
        let cache = tempfile::tempdir()?;
        let previous = applied(&[("t.db", "1")], &[]);
        cache_of(&previous, cache.path())?;
        let mut device = Device::with(&[("t.db", "1")]);
        device.failing = names(&["t.web 1"]);
        let want = desired(2, &[("t.db", "2"), ("t.api", "1"), ("t.web", "1")], None);
        let p = plan(&want, &previous, &device.deployed());
        let recipes: BTreeMap<String, String> = [
            ("t.db".to_string(), recipe_text("t.db", "2", &[])),
            ("t.api".to_string(), recipe_text("t.api", "1", &["t.db"])),
            ("t.web".to_string(), recipe_text("t.web", "1", &["t.api"])),
        ]
        .into();
        let outcome = install(&device, &want, &previous, &p, &recipes, cache.path()).await;

        // db and api went in, web failed: api (new) is removed and db goes back to 1, in the
        // reverse of the order they were changed in.
        assert_eq!(
            device.calls(),
            [
                "deploy t.db 2",
                "deploy t.api 1",
                "deploy t.web 1",
                "remove t.api",
                "deploy t.db 1"
            ]
        );
        assert_eq!(device.deployed(), on_device(&[("t.db", "1")]));
        assert_eq!(outcome.status, DeploymentStatus::RolledBack);
        assert_eq!(outcome.components, previous.components);
        let message = outcome.message.unwrap_or_default();
        assert!(message.contains("t.web 1: run step exited"), "{message}");
        // Every component of the round is reported: the failing one with its error, the
        // others as undone because of it.
        assert_eq!(outcome.failed.len(), 3);
        assert_eq!(outcome.failed["t.web"].error, message);
        assert!(
            outcome.failed["t.db"]
                .error
                .starts_with("not applied: the deployment was rolled back because t.web failed"),
            "{}",
            outcome.failed["t.db"].error
        );
        assert_eq!(outcome.failed["t.api"].component, spec("t.api", "1"));
        Ok(())
    }

    #[tokio::test]
    async fn a_removal_that_would_strand_a_dependent_fails_the_round() -> R {
        let cache = tempfile::tempdir()?;
        let previous = applied(&[("t.db", "1"), ("t.app", "1")], &[]);
        cache_of(&previous, cache.path())?;
        let mut device = Device::with(&[("t.db", "1"), ("t.app", "1"), ("t.local", "1")]);
        device.depends_on = vec![("t.local".into(), "t.db".into())];
        // The relay drops db and changes app; local (deployed by hand) needs db.
        let want = desired(2, &[("t.app", "2")], None);
        let p = plan(&want, &previous, &device.deployed());
        assert_eq!(p.remove, names(&["t.db"]));
        let recipes: BTreeMap<String, String> =
            [("t.app".to_string(), recipe_text("t.app", "2", &[]))].into();
        let outcome = install(&device, &want, &previous, &p, &recipes, cache.path()).await;
        assert_eq!(outcome.status, DeploymentStatus::RolledBack);
        let message = outcome.message.unwrap_or_default();
        assert!(
            message.contains("cannot remove t.db: t.local has a hard dependency on it"),
            "{message}"
        );
        // app went back to 1, db was never removed.
        assert_eq!(device.calls(), ["deploy t.app 2", "deploy t.app 1"]);
        assert_eq!(
            device.deployed(),
            on_device(&[("t.db", "1"), ("t.app", "1"), ("t.local", "1")])
        );
        Ok(())
    }

    #[tokio::test]
    async fn removals_go_dependents_first() -> R {
        let cache = tempfile::tempdir()?;
        let previous = applied(&[("t.db", "1"), ("t.api", "1"), ("t.web", "1")], &[]);
        let mut device = Device::with(&[("t.db", "1"), ("t.api", "1"), ("t.web", "1")]);
        device.depends_on = vec![
            ("t.api".into(), "t.db".into()),
            ("t.web".into(), "t.api".into()),
            ("t.web".into(), "t.db".into()),
        ];
        let want = desired(2, &[], None);
        let p = plan(&want, &previous, &device.deployed());
        let outcome = install(
            &device,
            &want,
            &previous,
            &p,
            &BTreeMap::new(),
            cache.path(),
        )
        .await;
        assert_eq!(outcome.status, DeploymentStatus::Succeeded);
        assert_eq!(
            device.calls(),
            ["remove t.web", "remove t.api", "remove t.db"]
        );
        assert!(outcome.components.is_empty());
        Ok(())
    }

    #[test]
    fn a_refused_round_changes_nothing_and_says_why() {
        let previous = applied(&[("a", "1")], &[("old", "1")]);
        let want = desired(2, &[("a", "2"), ("b", "1")], None);
        let p = plan(&want, &previous, &on_device(&[("a", "1")]));
        let outcome = refused(
            &previous,
            &want,
            &p,
            Some("b"),
            "b 1: recipe: no such file".into(),
        );
        assert_eq!(outcome.status, DeploymentStatus::Failed);
        assert_eq!(outcome.components, previous.components);
        assert_eq!(outcome.failed["b"].error, "b 1: recipe: no such file");
        assert!(outcome.failed["a"].error.contains("because b failed"));
        // A failure of a component no longer desired is forgotten.
        assert!(!outcome.failed.contains_key("old"));
    }
}
