//! One started component's task: runs its `startup` or `run` step under supervision until told
//! to stop, restarting a failed step (after `recover`) as [`crate::apps::policy::Restarts`]
//! paces it, and the steps themselves: spawned in their own process group as the configured
//! account, with placeholders filled in, a time limit, and their output captured.
//!
//! The task owns the component's processes; the record it shares with the supervisor is saved
//! at every change, process group included, so an agent that was killed can end what it left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tether_protocol::recipe::{self, Interpolation, Manifest, SkipIf, Step};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::account::{Account, prepare_child};
use crate::apps::component::{self, Layout, Record, State};
use crate::apps::error::SupervisorError;
use crate::apps::output::{Sink, capture};
use crate::apps::policy::{AfterFailure, Restarts};
use crate::apps::process_group::{describe_exit, end_group};
use crate::config::AppsConfig;
use crate::telemetry::producer::Producer;

/// PATH of lifecycle steps.
const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything a component's task needs.
pub struct Shared {
    /// The agent's state directory (components live in `apps/` below it).
    pub state_dir: PathBuf,
    /// `apps.*` settings.
    pub config: AppsConfig,
    /// The device's id, for `{device:id}` and `TETHER_DEVICE_ID`.
    pub device_id: String,
    /// Where output goes as log records; `None` keeps it in the output logs only.
    pub producer: Option<Producer>,
    /// The account steps run as (`apps.user`).
    pub account: Account,
    /// Root, for steps with `requires_privilege` when `apps.allow_privileged` allows them.
    pub root: Option<Account>,
    /// Counts changes of any component's record, so the control channel reports a change
    /// when it happens instead of looking for one on a timer.
    pub changes: watch::Sender<u64>,
}

/// Locks a record shared between the supervisor and a component's task; a panic elsewhere
/// while holding it leaves a record that is still the best one there is.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One component's running context.
pub struct ComponentCtx {
    /// What all components share.
    pub shared: Arc<Shared>,
    /// The component's record, shared with the supervisor, saved at every change.
    pub record: Arc<std::sync::Mutex<Record>>,
    /// The recipe's manifest for this board.
    pub manifest: Manifest,
    /// The component's files.
    pub layout: Layout,
    /// Effective configurations of its dependencies, for `{dep:configuration:/…}`.
    pub dependencies: BTreeMap<String, serde_json::Value>,
}

impl ComponentCtx {
    /// The component's name.
    pub fn name(&self) -> String {
        lock(&self.record).name.clone()
    }

    /// Changes the record and writes it to disk.
    pub fn update(&self, f: impl FnOnce(&mut Record)) {
        let snapshot = {
            let mut r = lock(&self.record);
            f(&mut r);
            r.clone()
        };
        if let Err(e) = component::save(&self.layout, &snapshot) {
            tracing::error!("component {}: saving its record: {e}", snapshot.name);
        }
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records a new state (and logs it).
    pub fn set_state(&self, state: State) {
        self.update(|r| r.state = state);
        tracing::info!("component {}: {state}", self.name());
    }

    /// Records a failure: the state, one more error, and the message as the last error.
    pub fn fail(&self, message: &str, state: State) {
        tracing::warn!("component {}: {message}", self.name());
        self.update(|r| {
            r.state = state;
            r.errors += 1;
            r.last_error = Some(message.to_string());
        });
    }

    /// The error of `step` failing with `message`, naming the component and its version.
    pub fn step_error(&self, step: &'static str, message: String) -> SupervisorError {
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
        let sink = Arc::new(Sink {
            layout: self.layout.clone(),
            log_bytes: self.shared.config.log_bytes,
            producer: self.shared.producer.clone(),
        });
        if let Some(pipe) = child.stdout.take() {
            tokio::spawn(capture(
                pipe,
                sink.clone(),
                name.clone(),
                step_name,
                "stdout",
            ));
        }
        if let Some(pipe) = child.stderr.take() {
            tokio::spawn(capture(pipe, sink, name.clone(), step_name, "stderr"));
        }
        Ok(child)
    }

    /// Runs a finite step to completion within its timeout; the error says what happened.
    pub async fn run_step(&self, step_name: &'static str, step: &Step) -> Result<(), String> {
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

/// The component's task: startup or run (supervised), until told to stop.
pub async fn supervise(ctx: Arc<ComponentCtx>, mut stop: watch::Receiver<bool>) {
    let cfg = ctx.shared.config.clone();
    let mut restarts = Restarts::new(&cfg);
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
                        restarts.stable();
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
        let delay = match restarts.after_failure(errors) {
            AfterFailure::RestartIn(delay) => delay,
            AfterFailure::Broken => {
                ctx.set_state(State::Broken);
                tracing::error!(
                    "component {}: broken after {errors} failures without a successful run",
                    ctx.name()
                );
                return;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => {
                ctx.set_state(State::Stopped);
                return;
            }
        }
        ctx.update(|r| r.restarts += 1);
    }
}
