//! The application supervisor: installs, starts, supervises, stops and rolls back components
//! described by recipes.
//!
//! Each started component has one task that owns its processes
//! ([`crate::apps::component_task`]). A `run` step is started in its own session (process
//! group) as the configured user, restarted with exponential backoff when it fails (after the
//! `recover` step), and marked `broken` after `apps.broken_after` failures without a successful
//! run; a broken component is left alone until someone starts it again, so it never blocks
//! other work. Stopping runs the `shutdown` step, then SIGTERM to the process group, then
//! SIGKILL after `apps.stop_timeout`. The rules themselves are in [`crate::apps::policy`].
//!
//! The record on disk ([`crate::apps::component`]) is updated at every transition, including
//! the process group id, so an agent that was killed ends the orphaned processes on its next
//! start and brings components back without running `install` again.
//!
//! Operations (deploy, start, stop, restart, remove) are serialised: one at a time, each one
//! either completes or is undone, so state never stays half-changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tether_protocol::recipe::{self, Manifest, Recipe};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::account::Account;
use crate::apps::artifacts::Sources;
use crate::apps::component::{self, Desired, Layout, Record, State};
use crate::apps::component_task::{ComponentCtx, Shared, lock, supervise};
use crate::apps::error::SupervisorError;
use crate::apps::error::io_err;
use crate::apps::policy::{self, DependencyGate, Recipes, Settling};
use crate::apps::process_group::end_group;
use crate::apps::staging;
use crate::config::AppsConfig;
use crate::telemetry::producer::Producer;

/// What `agent app list` and `agent app show` print of a component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// Deployed version.
    pub version: String,
    /// Lifecycle state.
    pub state: State,
    /// Operator's wish.
    pub desired: Desired,
    /// Process group of the running step.
    pub pid: Option<i32>,
    /// Restarts since deployed.
    pub restarts: u32,
    /// Failures since the last successful run.
    pub errors: u32,
    /// Last failure.
    pub last_error: Option<String>,
    /// Effective configuration.
    pub configuration: serde_json::Value,
    /// The version before this one.
    pub previous_version: Option<String>,
}

impl From<&Record> for ComponentStatus {
    fn from(r: &Record) -> Self {
        Self {
            name: r.name.clone(),
            version: r.version.clone(),
            state: r.state,
            desired: r.desired,
            pid: r.pgid,
            restarts: r.restarts,
            errors: r.errors,
            last_error: r.last_error.clone(),
            configuration: r.configuration.clone(),
            previous_version: r.previous_version.clone(),
        }
    }
}

/// A local deployment request (`agent app deploy`).
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The recipe's text.
    pub recipe: String,
    /// Where it came from, for messages.
    pub origin: PathBuf,
    /// Directory with artifacts named by bare file name.
    pub artifacts_dir: Option<PathBuf>,
    /// `key=value` configuration assignments.
    pub set: Vec<String>,
    /// Configuration overrides (merge patch), applied after `set`; from fleet deployments.
    pub overrides: Option<serde_json::Value>,
    /// Directory of recipes and artifacts fetched from the relay, by sha256.
    pub relay_cache: Option<PathBuf>,
}

/// One component known to the supervisor.
struct Slot {
    record: Arc<std::sync::Mutex<Record>>,
    recipe: Recipe,
    manifest: Manifest,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

/// The supervisor: cheap to clone, shared by the control socket and the link.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
    slots: Arc<Mutex<BTreeMap<String, Slot>>>,
    reconcile: Arc<Mutex<()>>,
}

impl Supervisor {
    /// A supervisor for the components in `state_dir`; steps run as `config.user`.
    pub fn new(
        state_dir: PathBuf,
        config: AppsConfig,
        device_id: String,
        producer: Option<Producer>,
    ) -> Result<Self, SupervisorError> {
        let account = Account::resolve(config.user.as_deref(), None, "apps.user")?;
        let root = if nix::unistd::Uid::current().is_root() && config.allow_privileged {
            Account::resolve(Some("root"), None, "apps.allow_privileged").ok()
        } else {
            None
        };
        if account.switch {
            // systemd's StateDirectoryMode= resets the state directory to 0700 at every start;
            // applications running as apps.user must still reach their directories in it.
            let apps = component::apps_dir(&state_dir);
            tether_protocol::private_fs::create_dir(&apps)
                .and_then(|()| staging::open_for_traversal(&state_dir))
                .and_then(|()| staging::open_for_traversal(&apps))
                .map_err(io_err(format!(
                    "opening {} to {} for traversal",
                    apps.display(),
                    account.name
                )))?;
        }
        Ok(Self {
            shared: Arc::new(Shared {
                state_dir,
                config,
                device_id,
                producer,
                account,
                root,
                changes: watch::channel(0).0,
            }),
            slots: Arc::new(Mutex::new(BTreeMap::new())),
            reconcile: Arc::new(Mutex::new(())),
        })
    }

    /// Loads the deployed components, ends processes a previous agent left behind, and starts
    /// those meant to run, dependencies first.
    pub async fn recover(&self) -> Result<(), SupervisorError> {
        let mut slots = self.slots.lock().await;
        for name in component::list(&self.shared.state_dir) {
            let layout = Layout::new(&self.shared.state_dir, &name);
            let mut record = match component::load(&layout) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("component {name}: {e}; leaving it alone");
                    continue;
                }
            };
            if let Some(pgid) = record.pgid.take() {
                end_group(pgid, self.shared.config.stop_timeout).await;
                tracing::info!("component {name}: ended processes left by the previous agent");
            }
            let recipe = match recipe::load(&layout.recipe(&record.version)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("component {name}: {e}; leaving it alone");
                    continue;
                }
            };
            let manifest = match recipe.manifest_for(std::env::consts::OS, std::env::consts::ARCH) {
                Ok(m) => m.clone(),
                Err(e) => {
                    tracing::error!("component {name}: {e}");
                    continue;
                }
            };
            record.state = policy::after_agent_restart(&record);
            component::save(&layout, &record).map_err(io_err("saving a component record"))?;
            slots.insert(
                name,
                Slot {
                    record: Arc::new(std::sync::Mutex::new(record)),
                    recipe,
                    manifest,
                    stop: None,
                    task: None,
                },
            );
        }
        let order = policy::start_order(&recipes(&slots))?;
        for name in order {
            let wanted = slots
                .get(&name)
                .is_some_and(|s| policy::starts_with_agent(&lock(&s.record)));
            if wanted && let Err(e) = self.start_slot(&mut slots, &name).await {
                tracing::error!("component {name}: {e}");
            }
        }
        self.mark_changed();
        Ok(())
    }

    /// Changes whenever a component's record may have changed (state, errors, restarts,
    /// configuration, a component deployed or removed).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Passes `outcome` through once an operation is over, telling [`Self::changes`] that
    /// records may have changed, whether it succeeded or not.
    fn changed_after<T>(&self, outcome: T) -> T {
        self.mark_changed();
        outcome
    }

    fn mark_changed(&self) {
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The deployed components with a hard dependency on `name`, directly or through others.
    pub async fn hard_dependents(&self, name: &str) -> Vec<String> {
        let slots = self.slots.lock().await;
        policy::hard_dependents(&recipes(&slots), name)
    }

    /// Deploys a recipe locally: validates, fetches and checks artifacts, stops the old
    /// version, installs and starts the new one, and rolls back to the old one if the new one
    /// fails to install, start or stay up for `apps.settle_time`.
    pub async fn deploy(&self, req: DeployRequest) -> Result<ComponentStatus, SupervisorError> {
        let this = self.clone();
        run_to_completion(async move { this.changed_after(this.deploy_now(req).await) }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn start(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.changed_after(this.start_now(&name).await) }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn stop(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.changed_after(this.stop_now(&name).await) }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn restart(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.changed_after(this.restart_now(&name).await) }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.changed_after(this.remove_now(&name).await) }).await
    }

    /// Held while a desired state is being applied, so only one application of the relay's
    /// desired state runs at a time (also across control channels of successive links).
    pub fn reconcile_lock(&self) -> Arc<Mutex<()>> {
        self.reconcile.clone()
    }

    /// The account lifecycle steps run as (remote `run` actions use it too).
    pub fn step_account(&self) -> Account {
        self.shared.account.clone()
    }

    /// The supervisor's settings.
    pub fn config(&self) -> &AppsConfig {
        &self.shared.config
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// Status of every component.
    pub async fn list(&self) -> Vec<ComponentStatus> {
        let slots = self.slots.lock().await;
        slots
            .values()
            .map(|s| ComponentStatus::from(&*lock(&s.record)))
            .collect()
    }

    /// Status of one component.
    pub async fn show(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let slots = self.slots.lock().await;
        let slot = slots
            .get(name)
            .ok_or_else(|| SupervisorError::NotDeployed(name.to_string()))?;
        Ok(ComponentStatus::from(&*lock(&slot.record)))
    }

    /// Deploys a recipe locally: validates, fetches and checks artifacts, stops the old
    /// version, installs and starts the new one, and rolls back to the old one if the new one
    /// fails to install, start or stay up for `apps.settle_time`.
    async fn deploy_now(&self, req: DeployRequest) -> Result<ComponentStatus, SupervisorError> {
        let mut slots = self.slots.lock().await;
        let recipe = recipe::parse(&req.recipe, &req.origin)?;
        let manifest = recipe
            .manifest_for(std::env::consts::OS, std::env::consts::ARCH)?
            .clone();
        let name = recipe.name.clone();
        let version = recipe.version.to_string();
        let mut overrides = serde_json::Value::Object(Default::default());
        for assignment in &req.set {
            recipe::apply_set(&mut overrides, assignment)?;
        }
        if let Some(patch) = &req.overrides {
            recipe::merge(&mut overrides, patch);
        }
        let mut configuration = recipe.configuration.clone();
        recipe::merge(&mut configuration, &overrides);

        // Dependencies must hold for the set as it would be after this deployment.
        {
            let mut all: Vec<&Recipe> = slots
                .iter()
                .filter(|(n, _)| **n != name)
                .map(|(_, s)| &s.recipe)
                .collect();
            all.push(&recipe);
            recipe::start_order(&all)?;
        }

        let layout = Layout::new(&self.shared.state_dir, &name);
        let old = slots.get(&name).map(|s| lock(&s.record).clone());
        let replacing_same = old.as_ref().is_some_and(|o| o.version == version);
        let version_dir = layout.version(&version);
        let fresh_dir = !version_dir.exists();
        let sources = Sources {
            local_dir: req.artifacts_dir.clone(),
            relay_cache: req.relay_cache.clone(),
        };
        let staged = staging::stage(
            &layout,
            &version,
            &req.recipe,
            sources,
            &manifest,
            &self.shared.account,
        );
        if let Err(e) = staged.await {
            if fresh_dir {
                let _ = std::fs::remove_dir_all(&version_dir);
            }
            return Err(e);
        }

        let dependents = policy::hard_dependents(&recipes(&slots), &name);
        for d in dependents.iter().rev() {
            self.stop_slot(&mut slots, d, false).await;
        }
        if old.is_some() {
            self.stop_slot(&mut slots, &name, false).await;
        }
        let record =
            policy::deployed_record(old.as_ref(), &name, &version, configuration, overrides);
        component::save(&layout, &record).map_err(io_err("saving the component record"))?;
        let previous_slot = slots.insert(
            name.clone(),
            Slot {
                record: Arc::new(std::sync::Mutex::new(record)),
                recipe,
                manifest,
                stop: None,
                task: None,
            },
        );

        let outcome = match self.start_slot(&mut slots, &name).await {
            Ok(()) => self.settle(&slots, &name).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                for d in &dependents {
                    if let Err(e) = self.start_slot(&mut slots, d).await {
                        tracing::error!("component {d}: {e}");
                    }
                }
                if let Some(slot) = slots.get(&name) {
                    let r = lock(&slot.record).clone();
                    staging::prune_versions(&layout, &r.version, r.previous_version.as_deref());
                }
                let status = slots
                    .get(&name)
                    .map(|s| ComponentStatus::from(&*lock(&s.record)));
                status.ok_or_else(|| SupervisorError::NotDeployed(name.clone()))
            }
            Err(failure) => {
                self.stop_slot(&mut slots, &name, false).await;
                let undone = match (old, previous_slot) {
                    (Some(mut old_record), Some(old_slot)) => {
                        old_record.state = policy::at_rest(&old_record);
                        old_record.pgid = None;
                        let was_running = old_record.desired == Desired::Running;
                        let old_version = old_record.version.clone();
                        component::save(&layout, &old_record)
                            .map_err(io_err("restoring the component record"))?;
                        slots.insert(
                            name.clone(),
                            Slot {
                                record: Arc::new(std::sync::Mutex::new(old_record)),
                                recipe: old_slot.recipe,
                                manifest: old_slot.manifest,
                                stop: None,
                                task: None,
                            },
                        );
                        if was_running && let Err(e) = self.start_slot(&mut slots, &name).await {
                            tracing::error!("component {name}: restarting {old_version}: {e}");
                        }
                        if !replacing_same && fresh_dir {
                            let _ = std::fs::remove_dir_all(&version_dir);
                        }
                        format!("rolled back to {name} {old_version}")
                    }
                    _ => {
                        slots.remove(&name);
                        let _ = std::fs::remove_dir_all(&layout.root);
                        format!("{name} was not kept")
                    }
                };
                for d in &dependents {
                    if let Err(e) = self.start_slot(&mut slots, d).await {
                        tracing::error!("component {d}: {e}");
                    }
                }
                Err(SupervisorError::RolledBack {
                    message: failure.to_string(),
                    undone,
                })
            }
        }
    }

    /// Starts a stopped, finished or broken component (clearing its error count).
    async fn start_now(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let mut slots = self.slots.lock().await;
        let slot = slots
            .get(name)
            .ok_or_else(|| SupervisorError::NotDeployed(name.to_string()))?;
        {
            let mut r = lock(&slot.record);
            r.desired = Desired::Running;
            r.errors = 0;
        }
        self.start_slot(&mut slots, name).await?;
        self.wait_started(&slots, name).await;
        self.status_of(&slots, name)
    }

    /// Stops a component and keeps it stopped (also across agent restarts).
    async fn stop_now(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let mut slots = self.slots.lock().await;
        if !slots.contains_key(name) {
            return Err(SupervisorError::NotDeployed(name.to_string()));
        }
        for d in policy::hard_dependents(&recipes(&slots), name).iter().rev() {
            self.stop_slot(&mut slots, d, false).await;
        }
        self.stop_slot(&mut slots, name, true).await;
        self.status_of(&slots, name)
    }

    /// Restarts a component, and its hard dependents after it.
    async fn restart_now(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let mut slots = self.slots.lock().await;
        if !slots.contains_key(name) {
            return Err(SupervisorError::NotDeployed(name.to_string()));
        }
        let dependents = policy::hard_dependents(&recipes(&slots), name);
        for d in dependents.iter().rev() {
            self.stop_slot(&mut slots, d, false).await;
        }
        self.stop_slot(&mut slots, name, false).await;
        if let Some(slot) = slots.get(name) {
            let mut r = lock(&slot.record);
            r.desired = Desired::Running;
            r.errors = 0;
        }
        self.start_slot(&mut slots, name).await?;
        for d in &dependents {
            let running = slots
                .get(d)
                .is_some_and(|s| lock(&s.record).desired == Desired::Running);
            if running && let Err(e) = self.start_slot(&mut slots, d).await {
                tracing::error!("component {d}: {e}");
            }
        }
        self.wait_started(&slots, name).await;
        for d in &dependents {
            self.wait_started(&slots, d).await;
        }
        self.status_of(&slots, name)
    }

    /// Stops and deletes a component; refused while another deployed component has a hard
    /// dependency on it.
    async fn remove_now(&self, name: &str) -> Result<(), SupervisorError> {
        let mut slots = self.slots.lock().await;
        if !slots.contains_key(name) {
            return Err(SupervisorError::NotDeployed(name.to_string()));
        }
        let users = policy::hard_users(&recipes(&slots), name);
        if !users.is_empty() {
            return Err(SupervisorError::InUse(format!(
                "{name} is a hard dependency of {}; remove those first",
                users.join(", ")
            )));
        }
        self.stop_slot(&mut slots, name, true).await;
        slots.remove(name);
        let layout = Layout::new(&self.shared.state_dir, name);
        std::fs::remove_dir_all(&layout.root)
            .map_err(io_err(format!("removing {}", layout.root.display())))
    }

    /// Stops every component (agent shutdown), leaving their desired state as it is, so they
    /// come back when the agent starts again.
    pub async fn shutdown(&self) {
        let mut slots = self.slots.lock().await;
        let names: Vec<String> = policy::start_order(&recipes(&slots))
            .unwrap_or_else(|_| slots.keys().cloned().collect());
        for name in names.iter().rev() {
            self.stop_slot(&mut slots, name, false).await;
        }
    }

    fn status_of(
        &self,
        slots: &BTreeMap<String, Slot>,
        name: &str,
    ) -> Result<ComponentStatus, SupervisorError> {
        slots
            .get(name)
            .map(|s| ComponentStatus::from(&*lock(&s.record)))
            .ok_or_else(|| SupervisorError::NotDeployed(name.to_string()))
    }

    /// Installs (once per version) and starts the component's task.
    async fn start_slot(
        &self,
        slots: &mut BTreeMap<String, Slot>,
        name: &str,
    ) -> Result<(), SupervisorError> {
        if slots
            .get(name)
            .is_some_and(|s| s.task.as_ref().is_some_and(|t| !t.is_finished()))
        {
            return Ok(());
        }
        self.wait_for_dependencies(slots, name).await;
        let deps = dependency_configs(slots, name);
        let Some(slot) = slots.get_mut(name) else {
            return Err(SupervisorError::NotDeployed(name.to_string()));
        };
        let ctx = Arc::new(ComponentCtx {
            shared: self.shared.clone(),
            record: slot.record.clone(),
            manifest: slot.manifest.clone(),
            layout: Layout::new(&self.shared.state_dir, name),
            dependencies: deps,
        });
        {
            let mut r = lock(&ctx.record);
            r.desired = Desired::Running;
        }
        let needs_install = {
            let r = lock(&ctx.record);
            r.installed_version.as_deref() != Some(r.version.as_str())
        };
        if needs_install {
            ctx.set_state(State::New);
            if let Some(step) = &ctx.manifest.lifecycle.install
                && let Err(message) = ctx.run_step("install", step).await
            {
                ctx.fail(&message, State::Errored);
                return Err(ctx.step_error("install", message));
            }
            ctx.update(|r| r.installed_version = Some(r.version.clone()));
            ctx.set_state(State::Installed);
        }
        // Starting from now, not from when the task first runs: a caller waiting for the
        // component to get past starting must not take a state it had before (broken,
        // stopped) for the outcome of this start.
        ctx.update(|r| r.state = State::Starting);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(ctx, stop_rx));
        slot.stop = Some(stop_tx);
        slot.task = Some(task);
        Ok(())
    }

    /// Waits (up to `apps.step_timeout`) until `name`'s deployed hard dependencies are running
    /// or finished, so a dependent never starts before what it needs; after that it starts
    /// anyway, with a warning, since a dependency that is slow to start is not a reason to
    /// leave its dependents down forever.
    async fn wait_for_dependencies(&self, slots: &BTreeMap<String, Slot>, name: &str) {
        let Some(slot) = slots.get(name) else { return };
        let hard: Vec<&Slot> = slot
            .recipe
            .dependencies
            .iter()
            .filter(|(_, d)| matches!(d.kind, tether_protocol::recipe::DependencyKind::Hard))
            .filter_map(|(n, _)| slots.get(n))
            .collect();
        let deadline = Instant::now() + self.shared.config.step_timeout;
        for dep in hard {
            loop {
                let (state, desired, dep_name) = {
                    let r = lock(&dep.record);
                    (r.state, r.desired, r.name.clone())
                };
                match policy::dependency_gate(state, desired, Instant::now() >= deadline) {
                    DependencyGate::Ready => break,
                    DependencyGate::GiveUp => {
                        tracing::warn!("component {name}: starting although {dep_name} is {state}");
                        break;
                    }
                    DependencyGate::Wait => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }

    /// Stops the component's task (shutdown step, SIGTERM, SIGKILL); with `keep_stopped` the
    /// component stays stopped across agent restarts.
    async fn stop_slot(&self, slots: &mut BTreeMap<String, Slot>, name: &str, keep_stopped: bool) {
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        if keep_stopped {
            let mut r = lock(&slot.record);
            r.desired = Desired::Stopped;
        }
        if let Some(stop) = slot.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = slot.task.take() {
            let _ = task.await;
        }
        if keep_stopped {
            // Also a component that had finished or broken: stopped on request is `stopped`,
            // as `desired` says, whatever it was doing before.
            lock(&slot.record).state = State::Stopped;
        }
        let layout = Layout::new(&self.shared.state_dir, name);
        let r = lock(&slot.record).clone();
        if let Err(e) = component::save(&layout, &r) {
            tracing::error!("component {name}: saving its record: {e}");
        }
    }

    /// Waits (up to `apps.step_timeout`) until a just-started component is past starting, so
    /// `agent app start` and `restart` answer with the state it reached.
    async fn wait_started(&self, slots: &BTreeMap<String, Slot>, name: &str) {
        let Some(slot) = slots.get(name) else { return };
        let deadline = Instant::now() + self.shared.config.step_timeout;
        while Instant::now() < deadline {
            if policy::past_starting(lock(&slot.record).state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits `apps.settle_time` and fails if the component did not stay up.
    async fn settle(
        &self,
        slots: &BTreeMap<String, Slot>,
        name: &str,
    ) -> Result<(), SupervisorError> {
        let Some(slot) = slots.get(name) else {
            return Err(SupervisorError::NotDeployed(name.to_string()));
        };
        let deadline = Instant::now() + self.shared.config.settle_time;
        loop {
            let (state, errors, last_error, version) = {
                let r = lock(&slot.record);
                (r.state, r.errors, r.last_error.clone(), r.version.clone())
            };
            let now = Instant::now();
            let verdict = policy::settling(
                state,
                errors,
                now >= deadline,
                now >= deadline + self.shared.config.step_timeout,
            );
            match verdict {
                Settling::Wait => {}
                Settling::Settled => return Ok(()),
                Settling::Unstable => {
                    return Err(SupervisorError::Unstable {
                        component: name.to_string(),
                        version,
                        message: last_error.unwrap_or_else(|| "failed".into()),
                    });
                }
                Settling::NeverRan => {
                    return Err(SupervisorError::Step {
                        component: name.to_string(),
                        version,
                        step: "startup",
                        message: format!("did not reach running (state {state})"),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs an operation in its own task, so that a caller that goes away (a control client that
/// disconnects, a control channel aborted when the link drops) does not cancel it half-way:
/// operations either complete or undo themselves, and only they may decide which.
async fn run_to_completion<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, SupervisorError>> + Send + 'static,
) -> Result<T, SupervisorError> {
    tokio::spawn(op).await.unwrap_or_else(|e| {
        Err(SupervisorError::Io {
            what: "supervisor operation".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// The deployed components' recipes by name, for the dependency rules of [`policy`].
fn recipes(slots: &BTreeMap<String, Slot>) -> Recipes<'_> {
    slots.iter().map(|(n, s)| (n.clone(), &s.recipe)).collect()
}

/// Effective configurations of `name`'s dependencies, for `{dep:configuration:/…}`.
fn dependency_configs(
    slots: &BTreeMap<String, Slot>,
    name: &str,
) -> BTreeMap<String, serde_json::Value> {
    let Some(slot) = slots.get(name) else {
        return BTreeMap::new();
    };
    slot.recipe
        .dependencies
        .keys()
        .filter_map(|d| {
            slots
                .get(d)
                .map(|s| (d.clone(), lock(&s.record).configuration.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The supervisor in process, on real `/bin/sh` steps with fast timings: the rules of
    //! [`policy`] carried out on processes.

    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    fn config() -> AppsConfig {
        AppsConfig {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(80),
            stable_after: Duration::from_secs(60),
            broken_after: 3,
            settle_time: Duration::from_millis(300),
            stop_timeout: Duration::from_secs(2),
            step_timeout: Duration::from_secs(20),
            ..AppsConfig::default()
        }
    }

    fn request(text: String) -> DeployRequest {
        DeployRequest {
            recipe: text,
            origin: PathBuf::from("test.yaml"),
            artifacts_dir: None,
            set: Vec::new(),
            overrides: None,
            relay_cache: None,
        }
    }

    /// A recipe whose run step is `script`, with hard dependencies on `deps`.
    fn recipe(name: &str, deps: &[&str], script: &str) -> String {
        let mut text = format!("name: {name}\nversion: 1.0.0\n");
        if !deps.is_empty() {
            text.push_str("dependencies:\n");
            for d in deps {
                text.push_str(&format!("  {d}:\n    version: \">=1.0.0\"\n"));
            }
        }
        text.push_str(&format!(
            "manifests:\n  - lifecycle:\n      run:\n        script: {script}\n"
        ));
        text
    }

    /// Polls `name` until `done` holds of its status (at most 20 s).
    async fn wait_for(
        sup: &Supervisor,
        name: &str,
        done: impl Fn(&ComponentStatus) -> bool,
    ) -> Result<ComponentStatus, Box<dyn std::error::Error>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = sup.show(name).await?;
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{name} stayed {status:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_run_step_is_restarted_with_backoff_until_broken() -> R {
        let dir = tempfile::tempdir()?;
        let sup = Supervisor::new(dir.path().into(), config(), "dev_1".into(), None)?;
        let name = "t.flaky";
        // Up until a `fail` file appears in its work directory, then failing at once.
        let text = recipe(name, &[], "test -e fail && exit 1; exec sleep 30");
        sup.deploy(request(text)).await?;
        std::fs::write(Layout::new(dir.path(), name).work().join("fail"), "")?;
        sup.restart(name).await?;
        let broken = wait_for(&sup, name, |s| s.state == State::Broken).await?;
        // Three failures without a successful run: the first run and two restarts.
        assert_eq!((broken.errors, broken.restarts), (3, 2), "{broken:?}");
        let last = broken.last_error.unwrap_or_default();
        assert!(last.contains("run step exited with status 1"), "{last}");
        assert_eq!(broken.pid, None);
        // Left alone until started again, which clears the failures.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sup.show(name).await?.restarts, 2);
        std::fs::remove_file(Layout::new(dir.path(), name).work().join("fail"))?;
        let started = sup.start(name).await?;
        assert_eq!(started.state, State::Running, "{started:?}");
        assert_eq!(started.errors, 0);
        sup.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_dependency_restarts_and_stops_with_its_hard_dependents() -> R {
        let dir = tempfile::tempdir()?;
        let sup = Supervisor::new(dir.path().into(), config(), "dev_1".into(), None)?;
        sup.deploy(request(recipe("t.db", &[], "exec sleep 30")))
            .await?;
        sup.deploy(request(recipe("t.web", &["t.db"], "exec sleep 30")))
            .await?;
        sup.deploy(request(recipe("t.other", &[], "exec sleep 30")))
            .await?;
        let running = |s: &ComponentStatus| s.state == State::Running && s.pid.is_some();
        let web = wait_for(&sup, "t.web", running).await?;
        let other = wait_for(&sup, "t.other", running).await?;
        assert_eq!(sup.hard_dependents("t.db").await, ["t.web"]);

        sup.restart("t.db").await?;
        let web_after = wait_for(&sup, "t.web", running).await?;
        assert_ne!(web_after.pid, web.pid, "t.web was not restarted with t.db");
        assert_eq!(sup.show("t.other").await?.pid, other.pid);

        // Stopping the dependency stops the dependent too (it comes back with the agent, as
        // it was not stopped on request); removing the dependency is refused while it is used.
        let db = sup.stop("t.db").await?;
        assert_eq!((db.state, db.desired), (State::Stopped, Desired::Stopped));
        let web_stopped = sup.show("t.web").await?;
        assert_eq!(
            (web_stopped.state, web_stopped.desired, web_stopped.pid),
            (State::Stopped, Desired::Running, None)
        );
        let refused = sup.remove("t.db").await.err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("t.db is a hard dependency of t.web")),
            "{refused:?}"
        );
        sup.shutdown().await;
        Ok(())
    }
}
