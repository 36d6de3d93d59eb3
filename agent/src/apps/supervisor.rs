//! The application supervisor: installs, starts, supervises, stops and rolls back components
//! described by recipes.
//!
//! Each started component has one task that owns its processes. A `run` step is started in
//! its own session (process group) as the configured user, restarted with exponential backoff
//! when it fails (after the `recover` step), and marked `broken` after `apps.broken_after`
//! failures without a successful run; a broken component is left alone until someone starts
//! it again, so it never blocks other work. Stopping runs the `shutdown` step, then SIGTERM to
//! the process group, then SIGKILL after `apps.stop_timeout`.
//!
//! The record on disk ([`crate::apps::component`]) is updated at every transition, including the
//! process group id, so an agent that was killed ends the orphaned processes on its next start
//! and brings components back without running `install` again.
//!
//! Operations (deploy, start, stop, restart, remove) are serialised: one at a time, each one
//! either completes or is undone, so state never stays half-changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tether_protocol::clock::now_ms;
use tether_protocol::recipe::{self, Interpolation, Manifest, Recipe, SkipIf, Step};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::account::{Account, AccountError, prepare_child};
use crate::apps::artifacts::{self, ArtifactError, Sources};
use crate::apps::component::{self, Desired, Layout, Record, State};
use crate::config::AppsConfig;
use crate::telemetry::producer::Producer;

/// PATH of lifecycle steps.
const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why an operation on components failed.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// The recipe is not acceptable (boxed: recipe errors carry paths and messages).
    #[error(transparent)]
    Recipe(Box<recipe::RecipeError>),
    /// An artifact could not be made ready.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// No such component is deployed.
    #[error("no component named {0:?} is deployed")]
    NotDeployed(String),
    /// A step failed.
    #[error("{component} {version}: {step} step {message}")]
    Step {
        /// Component name.
        component: String,
        /// Its version.
        version: String,
        /// Which step.
        step: &'static str,
        /// What happened.
        message: String,
    },
    /// A new component did not stay up.
    #[error("{component} {version}: {message}")]
    Unstable {
        /// Component name.
        component: String,
        /// Its version.
        version: String,
        /// What its last failure was.
        message: String,
    },
    /// The deployment failed and was undone.
    #[error("{message}; {undone}")]
    RolledBack {
        /// Why it failed.
        message: String,
        /// What was restored.
        undone: String,
    },
    /// Another component depends on this one.
    #[error("{0}")]
    InUse(String),
    /// The unix account for steps cannot be used.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The state directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<recipe::RecipeError> for SupervisorError {
    fn from(e: recipe::RecipeError) -> Self {
        SupervisorError::Recipe(Box::new(e))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

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

/// Everything a component's task needs.
struct Shared {
    state_dir: PathBuf,
    config: AppsConfig,
    device_id: String,
    producer: Option<Producer>,
    account: Account,
    root: Option<Account>,
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
                .and_then(|()| open_for_traversal(&state_dir))
                .and_then(|()| open_for_traversal(&apps))
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
            if matches!(
                record.state,
                State::Starting | State::Running | State::Stopping
            ) {
                record.state = if record.installed_version.as_deref() == Some(&record.version) {
                    State::Installed
                } else {
                    State::New
                };
            }
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
        let order = start_order(&slots)?;
        for name in order {
            let wanted = slots.get(&name).is_some_and(|s| {
                let r = lock(&s.record);
                r.desired == Desired::Running && r.state != State::Broken
            });
            if wanted && let Err(e) = self.start_slot(&mut slots, &name).await {
                tracing::error!("component {name}: {e}");
            }
        }
        Ok(())
    }

    /// The deployed components with a hard dependency on `name`, directly or through others.
    pub async fn hard_dependents(&self, name: &str) -> Vec<String> {
        let slots = self.slots.lock().await;
        dependents_of(&slots, name)
    }

    /// Deploys a recipe locally: validates, fetches and checks artifacts, stops the old
    /// version, installs and starts the new one, and rolls back to the old one if the new one
    /// fails to install, start or stay up for `apps.settle_time`.
    pub async fn deploy(&self, req: DeployRequest) -> Result<ComponentStatus, SupervisorError> {
        let this = self.clone();
        run_to_completion(async move { this.deploy_now(req).await }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn start(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.start_now(&name).await }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn stop(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.stop_now(&name).await }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn restart(&self, name: &str) -> Result<ComponentStatus, SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.restart_now(&name).await }).await
    }

    /// See the operation of the same name; runs to completion even if the caller goes away.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        let (this, name) = (self.clone(), name.to_string());
        run_to_completion(async move { this.remove_now(&name).await }).await
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
        if let Err(e) = stage(&layout, &version, &req, &manifest, &self.shared.account).await {
            if fresh_dir {
                let _ = std::fs::remove_dir_all(&version_dir);
            }
            return Err(e);
        }

        let dependents = dependents_of(&slots, &name);
        for d in dependents.iter().rev() {
            self.stop_slot(&mut slots, d, false).await;
        }
        if old.is_some() {
            self.stop_slot(&mut slots, &name, false).await;
        }
        let record = Record {
            name: name.clone(),
            version: version.clone(),
            previous_version: if replacing_same {
                old.as_ref().and_then(|o| o.previous_version.clone())
            } else {
                old.as_ref().map(|o| o.version.clone())
            },
            desired: Desired::Running,
            state: State::New,
            installed_version: old
                .as_ref()
                .and_then(|o| o.installed_version.clone())
                .filter(|v| *v == version && !replacing_same),
            configuration,
            overrides,
            errors: 0,
            restarts: 0,
            pgid: None,
            last_error: None,
        };
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
                prune_versions(&layout, &slots, &name);
                let status = slots
                    .get(&name)
                    .map(|s| ComponentStatus::from(&*lock(&s.record)));
                status.ok_or_else(|| SupervisorError::NotDeployed(name.clone()))
            }
            Err(failure) => {
                self.stop_slot(&mut slots, &name, false).await;
                let undone = match (old, previous_slot) {
                    (Some(mut old_record), Some(old_slot)) => {
                        old_record.state = if old_record.installed_version.as_deref()
                            == Some(old_record.version.as_str())
                        {
                            State::Installed
                        } else {
                            State::New
                        };
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
        for d in dependents_of(&slots, name).iter().rev() {
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
        let dependents = dependents_of(&slots, name);
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
        let users: Vec<String> = slots
            .iter()
            .filter(|(n, s)| {
                *n != name
                    && s.recipe.dependencies.get(name).is_some_and(|d| {
                        matches!(d.kind, tether_protocol::recipe::DependencyKind::Hard)
                    })
            })
            .map(|(n, _)| n.clone())
            .collect();
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
        let names: Vec<String> =
            start_order(&slots).unwrap_or_else(|_| slots.keys().cloned().collect());
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
                if matches!(state, State::Running | State::Finished) || desired == Desired::Stopped
                {
                    break;
                }
                if Instant::now() >= deadline || state == State::Broken {
                    tracing::warn!("component {name}: starting although {dep_name} is {state}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
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
            let state = lock(&slot.record).state;
            if !matches!(state, State::New | State::Installed | State::Starting) {
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
            if errors > 0 || matches!(state, State::Errored | State::Broken) {
                return Err(SupervisorError::Unstable {
                    component: name.to_string(),
                    version,
                    message: last_error.unwrap_or_else(|| "failed".into()),
                });
            }
            if Instant::now() >= deadline && matches!(state, State::Running | State::Finished) {
                return Ok(());
            }
            if Instant::now() >= deadline + self.shared.config.step_timeout {
                return Err(SupervisorError::Step {
                    component: name.to_string(),
                    version,
                    step: "startup",
                    message: format!("did not reach running (state {state})"),
                });
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

/// Adds search (x) permission for group and others to `dir`, never read: users who know a path
/// below it can reach it, nobody else can list it.
fn open_for_traversal(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))?;
    }
    Ok(())
}

/// Gives `root` and everything below it (not following symbolic links) to `account`.
fn chown_tree(root: &Path, account: &Account) -> std::io::Result<()> {
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        std::os::unix::fs::lchown(
            &path,
            Some(account.uid.as_raw()),
            Some(account.gid.as_raw()),
        )?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Lets a component that runs as another user than the agent use its version directory: the
/// directories on the way are opened for traversal only, and the artifacts and unpacked archives
/// are given to that user (keeping their modes), as is the work directory before each step. The
/// recipe, the component's record and its logs stay the agent's.
fn share_with(layout: &Layout, version: &str, account: &Account) -> std::io::Result<()> {
    open_for_traversal(&layout.root)?;
    open_for_traversal(&layout.version(version))?;
    for dir in [layout.artifacts(version), layout.unpacked(version)] {
        if dir.exists() {
            chown_tree(&dir, account)?;
        }
    }
    Ok(())
}

/// Prepares a version directory: recipe, artifacts (checked), unpacked archives; shared with
/// `account` when the component's steps run as someone else.
async fn stage(
    layout: &Layout,
    version: &str,
    req: &DeployRequest,
    manifest: &Manifest,
    account: &Account,
) -> Result<(), SupervisorError> {
    let dir = layout.version(version);
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::create_dir_all(layout.work()).map_err(io_err("creating the work directory"))?;
    let recipe_path = layout.recipe(version);
    std::fs::write(&recipe_path, &req.recipe)
        .map_err(io_err(format!("writing {}", recipe_path.display())))?;
    let sources = Sources {
        local_dir: req.artifacts_dir.clone(),
        relay_cache: req.relay_cache.clone(),
    };
    let artifacts_dir = layout.artifacts(version);
    let unpacked_dir = layout.unpacked(version);
    let artifacts = manifest.artifacts.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ArtifactError> {
        for a in &artifacts {
            let path = artifacts::fetch(a, &sources, &artifacts_dir)?;
            if let Some(kind) = a.unarchive {
                let stem = a
                    .file_name()
                    .trim_end_matches(".tar.gz")
                    .trim_end_matches(".tgz")
                    .trim_end_matches(".zip")
                    .to_string();
                artifacts::unpack(
                    &path,
                    kind,
                    &unpacked_dir.join(stem),
                    &artifacts::describe(&a.uri),
                )?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| SupervisorError::Io {
        what: "artifact task".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
    if account.switch {
        share_with(layout, version, account).map_err(io_err(format!(
            "sharing {} with {}",
            layout.version(version).display(),
            account.name
        )))?;
    }
    Ok(())
}

/// Deletes version directories other than the current and the previous one.
fn prune_versions(layout: &Layout, slots: &BTreeMap<String, Slot>, name: &str) {
    let Some(slot) = slots.get(name) else { return };
    let (current, previous) = {
        let r = lock(&slot.record);
        (r.version.clone(), r.previous_version.clone())
    };
    let Ok(entries) = std::fs::read_dir(&layout.root) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().to_string();
        let is_version = e.path().join("recipe.yaml").exists();
        if is_version && file_name != current && Some(&file_name) != previous.as_ref() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start_order(slots: &BTreeMap<String, Slot>) -> Result<Vec<String>, SupervisorError> {
    let all: Vec<&Recipe> = slots.values().map(|s| &s.recipe).collect();
    Ok(recipe::start_order(&all)?)
}

/// Components that (transitively) have a hard dependency on `name`, in start order.
fn dependents_of(slots: &BTreeMap<String, Slot>, name: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut frontier = vec![name.to_string()];
    while let Some(n) = frontier.pop() {
        for (other, s) in slots {
            let hard =
                s.recipe.dependencies.get(&n).is_some_and(|d| {
                    matches!(d.kind, tether_protocol::recipe::DependencyKind::Hard)
                });
            if hard && !found.contains(other) && other != name {
                found.push(other.clone());
                frontier.push(other.clone());
            }
        }
    }
    let order = start_order(slots).unwrap_or_default();
    order.into_iter().filter(|n| found.contains(n)).collect()
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends SIGTERM to a process group, then SIGKILL if it is still there after `grace`.
async fn end_group(pgid: i32, grace: Duration) {
    if pgid <= 1 {
        return;
    }
    let group = Pid::from_raw(pgid);
    if killpg(group, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// Whether a process group has a member that is not a zombie. Signal 0 alone would also
/// count zombies, which linger until their new parent (after an agent crash, init) reaps them.
pub fn group_alive(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // Fields after the command name (which may hold spaces and parentheses):
        // state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

/// One component's running context.
struct ComponentCtx {
    shared: Arc<Shared>,
    record: Arc<std::sync::Mutex<Record>>,
    manifest: Manifest,
    layout: Layout,
    dependencies: BTreeMap<String, serde_json::Value>,
}

impl ComponentCtx {
    fn name(&self) -> String {
        lock(&self.record).name.clone()
    }

    /// Changes the record and writes it to disk.
    fn update(&self, f: impl FnOnce(&mut Record)) {
        let snapshot = {
            let mut r = lock(&self.record);
            f(&mut r);
            r.clone()
        };
        if let Err(e) = component::save(&self.layout, &snapshot) {
            tracing::error!("component {}: saving its record: {e}", snapshot.name);
        }
    }

    fn set_state(&self, state: State) {
        self.update(|r| r.state = state);
        tracing::info!("component {}: {state}", self.name());
    }

    fn fail(&self, message: &str, state: State) {
        tracing::warn!("component {}: {message}", self.name());
        self.update(|r| {
            r.state = state;
            r.errors += 1;
            r.last_error = Some(message.to_string());
        });
    }

    fn step_error(&self, step: &'static str, message: String) -> SupervisorError {
        let r = lock(&self.record);
        SupervisorError::Step {
            component: r.name.clone(),
            version: r.version.clone(),
            step,
            message,
        }
    }

    /// The script with placeholders filled in.
    fn script(&self, step: &Step) -> Result<String, String> {
        self.interpolate(&step.script)
    }

    /// `text` with placeholders filled in.
    fn interpolate(&self, text: &str) -> Result<String, String> {
        let (version, configuration) = {
            let r = lock(&self.record);
            (r.version.clone(), r.configuration.clone())
        };
        let artifacts = self.layout.artifacts(&version);
        let unpacked = self.layout.unpacked(&version);
        let work = self.layout.work();
        let with = Interpolation {
            artifacts_path: &artifacts,
            unpacked_path: &unpacked,
            work_path: &work,
            configuration: &configuration,
            dependencies: &self.dependencies,
            device_id: &self.shared.device_id,
        };
        recipe::interpolate(text, &with).map_err(|e| e.to_string())
    }

    /// Whether `skip_if` says to skip the step.
    /// Placeholders in the condition are filled in; a relative path is taken from the work
    /// directory, where the steps run.
    fn skipped(&self, step: &Step) -> bool {
        match &step.skip_if {
            Some(SkipIf::Exists(path)) => {
                let text = path.to_string_lossy();
                let filled = self.interpolate(&text).unwrap_or_else(|_| text.to_string());
                self.layout.work().join(filled).exists()
            }
            Some(SkipIf::OnPath(cmd)) => {
                let filled = self.interpolate(cmd).unwrap_or_else(|_| cmd.clone());
                STEP_PATH
                    .split(':')
                    .any(|dir| Path::new(dir).join(&filled).is_file())
            }
            None => false,
        }
    }

    /// Starts a step's script in its own process group, output captured.
    fn spawn(&self, step_name: &'static str, step: &Step) -> Result<Child, String> {
        let script = self.script(step)?;
        let account = if step.requires_privilege {
            match &self.shared.root {
                Some(root) => root,
                None => {
                    return Err(
                        "requires privilege, but the agent does not run as root or apps.allow_privileged is false"
                            .into(),
                    );
                }
            }
        } else {
            &self.shared.account
        };
        let (name, version) = {
            let r = lock(&self.record);
            (r.name.clone(), r.version.clone())
        };
        let work = self.layout.work();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&script)
            .env_clear()
            .current_dir(&work)
            .env("PATH", STEP_PATH)
            .env("HOME", &account.home)
            .env("USER", &account.name)
            .env("LOGNAME", &account.name)
            .env("TETHER_COMPONENT_NAME", &name)
            .env("TETHER_COMPONENT_VERSION", &version)
            .env("TETHER_DEVICE_ID", &self.shared.device_id);
        for (k, v) in self.manifest.lifecycle.setenv.iter().chain(step.env.iter()) {
            let value = self.interpolate(v)?;
            cmd.env(k, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        prepare_child(&mut cmd, account, false);
        if account.switch {
            // The working directory belongs to the step's user so it can write there.
            let _ = nix::unistd::chown(&work, Some(account.uid), Some(account.gid));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("could not start /bin/sh: {e}"))?;
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn AsyncRead + Send + Unpin>),
            ),
        ] {
            if let Some(pipe) = pipe {
                tokio::spawn(capture(
                    pipe,
                    self.shared.clone(),
                    self.layout.clone(),
                    name.clone(),
                    step_name,
                    stream,
                ));
            }
        }
        Ok(child)
    }

    /// Runs a finite step to completion within its timeout; the error says what happened.
    async fn run_step(&self, step_name: &'static str, step: &Step) -> Result<(), String> {
        self.run_step_keeping(step_name, step, false).await
    }

    /// Like [`Self::run_step`]; with `keep_group` the step's process group stays recorded after
    /// it succeeds, so what a `startup` step left running in it is ended on stop.
    async fn run_step_keeping(
        &self,
        step_name: &'static str,
        step: &Step,
        keep_group: bool,
    ) -> Result<(), String> {
        if self.skipped(step) {
            tracing::info!("component {}: {step_name} skipped (skip_if)", self.name());
            return Ok(());
        }
        let timeout = step.timeout.unwrap_or(self.shared.config.step_timeout);
        let mut child = self.spawn(step_name, step)?;
        let pgid = child.id().map(|p| p as i32);
        self.update(|r| r.pgid = pgid);
        let result = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(describe_exit(status)),
            Ok(Err(e)) => Err(format!("could not be waited for: {e}")),
            Err(_) => {
                if let Some(p) = pgid {
                    let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
                }
                let _ = child.wait().await;
                Err(format!(
                    "timed out after {}",
                    humantime::format_duration(timeout)
                ))
            }
        };
        if !(keep_group && result.is_ok()) {
            if result.is_err()
                && let Some(p) = pgid
            {
                end_group(p, self.shared.config.stop_timeout).await;
            }
            self.update(|r| r.pgid = None);
        }
        result
    }

    /// Stops whatever runs for this component: shutdown step, then SIGTERM and SIGKILL.
    async fn shut_down(&self, pgid: Option<i32>, child: Option<&mut Child>) {
        self.set_state(State::Stopping);
        if let Some(step) = self.manifest.lifecycle.shutdown.clone() {
            let saved = lock(&self.record).pgid;
            if let Err(e) = self.run_step("shutdown", &step).await {
                tracing::warn!("component {}: shutdown step {e}", self.name());
            }
            self.update(|r| r.pgid = saved);
        }
        if let Some(pgid) = pgid {
            end_group(pgid, self.shared.config.stop_timeout).await;
        }
        if let Some(child) = child {
            let _ = child.wait().await;
        }
        self.update(|r| r.pgid = None);
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!(
            "was killed by {}",
            Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.to_string())
        ),
        _ => "ended".into(),
    }
}

/// The component's task: startup or run (supervised), until told to stop.
async fn supervise(ctx: Arc<ComponentCtx>, mut stop: watch::Receiver<bool>) {
    let cfg = ctx.shared.config.clone();
    let mut backoff = cfg.backoff_initial;
    loop {
        ctx.set_state(State::Starting);
        let lifecycle = ctx.manifest.lifecycle.clone();
        if let Some(step) = &lifecycle.startup {
            match ctx.run_step_keeping("startup", step, true).await {
                Ok(()) => {
                    ctx.update(|r| r.errors = 0);
                    ctx.set_state(State::Running);
                    let _ = stop.wait_for(|s| *s).await;
                    let pgid = lock(&ctx.record).pgid;
                    ctx.shut_down(pgid, None).await;
                    ctx.set_state(State::Stopped);
                    return;
                }
                Err(message) => {
                    ctx.fail(&format!("startup step {message}"), State::Errored);
                }
            }
        } else if let Some(step) = &lifecycle.run {
            if ctx.skipped(step) {
                ctx.set_state(State::Finished);
                return;
            }
            let mut child = match ctx.spawn("run", step) {
                Ok(c) => c,
                Err(message) => {
                    ctx.fail(&format!("run step {message}"), State::Errored);
                    ctx.set_state(State::Broken);
                    return;
                }
            };
            let pgid = child.id().map(|p| p as i32);
            ctx.update(|r| r.pgid = pgid);
            ctx.set_state(State::Running);
            let started = Instant::now();
            let stable = tokio::time::sleep(cfg.stable_after);
            tokio::pin!(stable);
            let mut was_stable = false;
            // A run step has no time limit unless the recipe gives one.
            let limit = tokio::time::sleep(
                step.timeout
                    .unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600)),
            );
            tokio::pin!(limit);
            let mut timed_out = false;
            let exit = loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = &mut limit, if !timed_out => {
                        timed_out = true;
                        if let Some(p) = pgid {
                            let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break None,
                    _ = &mut stable, if !was_stable => {
                        was_stable = true;
                        backoff = cfg.backoff_initial;
                        ctx.update(|r| r.errors = 0);
                    }
                }
            };
            match exit {
                None => {
                    ctx.shut_down(pgid, Some(&mut child)).await;
                    ctx.set_state(State::Stopped);
                    return;
                }
                Some(Ok(status)) if status.success() => {
                    // Whatever the step left in its group ends with it.
                    if let Some(p) = pgid {
                        end_group(p, cfg.stop_timeout).await;
                    }
                    ctx.update(|r| {
                        r.pgid = None;
                        r.errors = 0;
                    });
                    ctx.set_state(State::Finished);
                    return;
                }
                Some(status) => {
                    if let Some(p) = pgid {
                        end_group(p, cfg.stop_timeout).await;
                    }
                    ctx.update(|r| r.pgid = None);
                    let message = match status {
                        Ok(_) if timed_out => format!(
                            "timed out after {}",
                            humantime::format_duration(step.timeout.unwrap_or_default())
                        ),
                        Ok(s) => describe_exit(s),
                        Err(e) => format!("could not be waited for: {e}"),
                    };
                    let up = humantime::format_duration(Duration::from_millis(
                        started.elapsed().as_millis() as u64,
                    ));
                    ctx.fail(&format!("run step {message} after {up}"), State::Errored);
                }
            }
        } else {
            ctx.set_state(State::Finished);
            return;
        }

        // A failure: recover, then restart with backoff unless it failed too often.
        if let Some(step) = &lifecycle.recover
            && let Err(e) = ctx.run_step("recover", step).await
        {
            tracing::warn!("component {}: recover step {e}", ctx.name());
        }
        let errors = lock(&ctx.record).errors;
        if errors >= cfg.broken_after {
            ctx.set_state(State::Broken);
            tracing::error!(
                "component {}: broken after {errors} failures without a successful run",
                ctx.name()
            );
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => {
                ctx.set_state(State::Stopped);
                return;
            }
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
        ctx.update(|r| r.restarts += 1);
    }
}

/// Copies a step's output to the component's log file and, as log records, to the outbox.
async fn capture(
    pipe: Box<dyn AsyncRead + Send + Unpin>,
    shared: Arc<Shared>,
    layout: Layout,
    name: String,
    step: &'static str,
    stream: &'static str,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    let topic = format!("app/{name}");
    let mut fields = serde_json::Map::new();
    fields.insert("component".into(), name.clone().into());
    fields.insert("step".into(), step.into());
    fields.insert("stream".into(), stream.into());
    loop {
        let mut lines = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            lines.push(String::from_utf8_lossy(&buf).into_owned());
            if lines.len() >= 1024 || !reader.buffer().contains(&b'\n') {
                break;
            }
        }
        if lines.is_empty() {
            return;
        }
        let ts = now_ms();
        append_log(&layout, shared.config.log_bytes, step, stream, &lines);
        if let Some(producer) = &shared.producer {
            let records = lines
                .iter()
                .map(|l| producer.log_record(&topic, &fields, l, ts))
                .collect();
            if let Err(e) = producer.append(records).await {
                tracing::warn!("component {name}: queuing output: {e}");
            }
        }
    }
}

/// Appends lines to the component's log file, rotating it at `max` bytes.
fn append_log(layout: &Layout, max: u64, step: &str, stream: &str, lines: &[String]) {
    use std::io::Write;
    let path = layout.log();
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > max) {
        let _ = std::fs::rename(&path, layout.old_log());
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return;
    };
    let ts = tether_protocol::clock::now_rfc3339();
    let mut text = String::new();
    for l in lines {
        text.push_str(&format!("{ts} {step}/{stream}: {l}\n"));
    }
    let _ = f.write_all(text.as_bytes());
}
