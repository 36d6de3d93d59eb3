//! Fleet desired state on the device: the agent end of the `tether-control` channel.
//!
//! The relay sends the device's desired state; the agent fetches the recipes and artifacts it
//! names (resuming partial downloads, checking every digest), carries out the round
//! ([`crate::fleet::deployment`]: changed components deployed through the [`Supervisor`],
//! unwanted ones removed, everything put back when one fails), installs the OS bundle last,
//! and reports the outcome, the components' states and the inventory.
//!
//! Each desired version is worked on once: `fleet.json` ([`crate::fleet::applied`]) records
//! the last version applied and the components it put there. Only a broken channel (link lost
//! mid-way) leaves a version unapplied, and it is applied when the link is back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use russh::Channel;
use russh::client::Msg;
use tether_protocol::fleet::{
    Action, ControlFrame, DeploymentStatus, DesiredComponent, DesiredState, FailedComponent,
    Inventory, ReportedComponent, ReportedState, is_sha256,
};
use tether_protocol::frame::{self, FrameError};
use tether_protocol::recipe::{self, ArtifactUri};
use thiserror::Error;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{Mutex, mpsc, watch};

use crate::apps::supervisor::Supervisor;
use crate::config::AgentConfig;
use crate::fleet::applied::{self, Applied};
use crate::fleet::deployment;

/// How often the progress of an OS install is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How long a download may go without a chunk before it counts as failed.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the inventory is collected again (disk space and addresses change; a minute is
/// fresh enough). Component states are reported when they change, not on a timer.
const INVENTORY_EVERY: Duration = Duration::from_secs(60);

/// Why the control channel stopped.
#[derive(Debug, Error)]
pub enum ReconcileError {
    /// The channel failed or carried garbage.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The channel closed.
    #[error("control channel closed")]
    Closed,
}

/// Where fetched recipes and artifacts are kept, by sha256.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet-cache")
}

type Writer = Arc<Mutex<WriteHalf<russh::ChannelStream<Msg>>>>;

struct Reconciler {
    supervisor: Supervisor,
    state_dir: PathBuf,
    writer: Writer,
    chunks: mpsc::Receiver<ControlFrame>,
    inventory: Option<Inventory>,
    config: AgentConfig,
}

async fn collect_inventory() -> Option<Inventory> {
    tokio::task::spawn_blocking(crate::fleet::inventory::collect)
        .await
        .ok()
}

/// Serves the control channel until it closes.
pub async fn run(
    channel: Channel<Msg>,
    supervisor: Supervisor,
    config: AgentConfig,
) -> Result<(), ReconcileError> {
    let state_dir = config.state_dir.clone();
    let (mut rd, wr) = tokio::io::split(channel.into_stream());
    let (desired_tx, mut desired_rx) = watch::channel::<Option<DesiredState>>(None);
    let (chunk_tx, chunk_rx) = mpsc::channel(8);
    let (action_tx, mut action_rx) = mpsc::channel::<Action>(64);
    let reader = tokio::spawn(async move {
        loop {
            match frame::read::<_, ControlFrame>(&mut rd).await? {
                Some(ControlFrame::Desired { state }) => {
                    let _ = desired_tx.send(Some(state));
                }
                Some(ControlFrame::Action { action }) => {
                    if action_tx.send(action).await.is_err() {
                        return Ok(());
                    }
                }
                Some(f @ (ControlFrame::Chunk { .. } | ControlFrame::FetchError { .. })) => {
                    if chunk_tx.send(f).await.is_err() {
                        return Ok(());
                    }
                }
                Some(other) => {
                    tracing::warn!("control channel: unexpected {other:?} from the relay");
                    return Err(ReconcileError::Closed);
                }
                None => return Ok::<(), ReconcileError>(()),
            }
        }
    });
    let mut r = Reconciler {
        supervisor,
        state_dir,
        writer: Arc::new(Mutex::new(wr)),
        chunks: chunk_rx,
        inventory: collect_inventory().await,
        config,
    };
    // Results that did not make it over an earlier channel go first.
    for result in crate::fleet::actions::undelivered(&r.state_dir) {
        let id = result.id.clone();
        r.send(&ControlFrame::ActionResult { result }).await?;
        crate::fleet::actions::delivered(&r.state_dir, &id);
    }
    let mut last_report = None;
    let mut changes = r.supervisor.changes();
    // The first report goes out at once; later ones when a component changed, or with a new
    // inventory.
    changes.mark_changed();
    let mut inventory_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + INVENTORY_EVERY,
        INVENTORY_EVERY,
    );
    inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        if reader.is_finished() {
            break Err(ReconcileError::Closed);
        }
        // Set while the board runs a new OS on trial: whether it is committed (by the agent
        // at boot, or by `agent ota commit` from another process) is looked at again every
        // few seconds, as nothing else wakes the channel for it.
        let mut os_on_trial = false;
        let pending = desired_rx.borrow_and_update().clone();
        if let Some(desired) = pending {
            // An install a previous channel started may still be running: wait for it, then
            // look at what is applied.
            let guard = r.supervisor.reconcile_lock().lock_owned().await;
            let applied = applied::load(&r.state_dir);
            if desired.version == applied.version && applied.os_installing.is_some() {
                // Back from the reboot into a new OS: report once the slot was committed or
                // the board went back.
                if let Some(report) = r.finish_os(&desired, applied.clone()).await? {
                    last_report = Some(report);
                    continue;
                }
                os_on_trial = true;
            }
            if desired.version > applied.version {
                match r.apply(desired, applied, guard).await {
                    Ok(report) => last_report = Some(report),
                    Err(e) => break Err(e),
                }
                continue;
            }
        }
        tokio::select! {
            changed = desired_rx.changed() => if changed.is_err() { break Err(ReconcileError::Closed) },
            Some(action) = action_rx.recv() => {
                let (sup, writer, state_dir) = (r.supervisor.clone(), r.writer.clone(), r.state_dir.clone());
                // Actions run beside reconciliation: a long command does not hold up deployments.
                tokio::spawn(async move {
                    let result = crate::fleet::actions::perform(action, &sup).await;
                    let id = result.id.clone();
                    let mut w = writer.lock().await;
                    if frame::write(&mut *w, &ControlFrame::ActionResult { result }).await.is_ok() {
                        crate::fleet::actions::delivered(&state_dir, &id);
                    }
                });
            }
            () = tokio::time::sleep(PROGRESS_EVERY), if os_on_trial => {}
            Ok(()) = changes.changed() => {
                if let Err(e) = r.report_if_changed(&mut last_report).await {
                    break Err(e);
                }
            }
            _ = inventory_tick.tick() => {
                if let Some(fresh) = collect_inventory().await
                    && crate::fleet::inventory::is_news(r.inventory.as_ref(), &fresh)
                {
                    r.inventory = Some(fresh);
                    if let Err(e) = r.report_if_changed(&mut last_report).await {
                        break Err(e);
                    }
                }
            }
        }
    };
    reader.abort();
    let _ = r.writer.lock().await.shutdown().await;
    result
}

impl Reconciler {
    /// The OS version of the running slot, as the agent recorded it (or, for a slot it never
    /// installed, `ota.factory_version`).
    fn os_version(&self) -> Option<String> {
        let ota = crate::ota::update::Ota::open(&self.config).ok()?;
        let booted = ota.booted_slot().ok()?;
        ota.running_version(&ota.state(), &booted)
    }

    /// After the reboot into a new OS: once the slot is committed (or the board went back),
    /// records and reports how the deployment ended; `None` while that is still open.
    async fn finish_os(
        &mut self,
        desired: &DesiredState,
        mut applied: Applied,
    ) -> Result<Option<ReportedState>, ReconcileError> {
        let Some(version) = applied.os_installing.clone() else {
            return Ok(None);
        };
        let Ok(ota) = crate::ota::update::Ota::open(&self.config) else {
            return Ok(None);
        };
        let state = ota.state();
        if state.pending.is_some() {
            return Ok(None);
        }
        let (status, message) = if self.os_version().as_deref() == Some(version.as_str()) {
            (DeploymentStatus::Succeeded, None)
        } else {
            (
                DeploymentStatus::RolledBack,
                Some(
                    state
                        .last_outcome
                        .unwrap_or_else(|| format!("OS {version} is not running")),
                ),
            )
        };
        applied.status = Some(status);
        applied.message = message.clone();
        applied.os_installing = None;
        if let Err(e) = applied::save(&self.state_dir, &applied) {
            tracing::error!("saving fleet.json: {e}");
        }
        let mut report = self.report_now(Some((status, message))).await;
        report.version = desired.version;
        self.send(&ControlFrame::Reported {
            state: Box::new(report.clone()),
        })
        .await?;
        Ok(Some(report))
    }

    /// Sends the report as of now unless it is the one sent last.
    async fn report_if_changed(
        &self,
        last_report: &mut Option<ReportedState>,
    ) -> Result<(), ReconcileError> {
        let report = self.report_now(None).await;
        if last_report.as_ref() != Some(&report) {
            self.send(&ControlFrame::Reported {
                state: Box::new(report.clone()),
            })
            .await?;
            *last_report = Some(report);
        }
        Ok(())
    }

    async fn send(&self, f: &ControlFrame) -> Result<(), ReconcileError> {
        let mut w = self.writer.lock().await;
        frame::write(&mut *w, f).await?;
        Ok(())
    }

    /// The report as of now: the last applied version and outcome, plus every component.
    async fn report_now(
        &self,
        status: Option<(DeploymentStatus, Option<String>)>,
    ) -> ReportedState {
        let applied = applied::load(&self.state_dir);
        let (status, message) = match status {
            Some((s, m)) => (Some(s), m),
            None => (applied.status, applied.message.clone()),
        };
        let components = self
            .supervisor
            .list()
            .await
            .into_iter()
            .map(|c| ReportedComponent {
                name: c.name,
                version: c.version,
                state: c.state.to_string(),
                errors: c.errors,
                restarts: c.restarts,
                last_error: c.last_error,
                configuration: c.configuration,
            })
            .collect();
        let failed = applied
            .failed
            .iter()
            .map(|(name, f)| FailedComponent {
                name: name.clone(),
                version: f.component.version.clone(),
                error: f.error.clone(),
            })
            .collect();
        ReportedState {
            version: applied.version,
            deployment_id: applied.deployment_id,
            status,
            message,
            components,
            inventory: self.inventory.clone(),
            os_version: self.os_version(),
            failed,
        }
    }

    async fn progress(
        &self,
        desired: &DesiredState,
        status: DeploymentStatus,
    ) -> Result<(), ReconcileError> {
        let mut report = self.report_now(Some((status, None))).await;
        report.version = desired.version;
        report.deployment_id = desired.deployment_id.clone();
        self.send(&ControlFrame::Reported {
            state: Box::new(report),
        })
        .await
    }

    /// Works on one desired version; returns the final report (already sent).
    ///
    /// Downloads happen on this channel and may be cut off (partial files are kept). Once
    /// everything is here, installing runs in a task of its own holding `guard`: a link that
    /// drops mid-way does not cancel it, it records the outcome in `fleet.json`, and the next
    /// channel waits for it before looking at what is applied.
    async fn apply(
        &mut self,
        desired: DesiredState,
        previous: Applied,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<ReportedState, ReconcileError> {
        tracing::info!("desired state version {} received", desired.version);
        self.progress(&desired, DeploymentStatus::Downloading)
            .await?;
        let cache = cache_dir(&self.state_dir);
        let deployed: BTreeMap<String, String> = self
            .supervisor
            .list()
            .await
            .into_iter()
            .map(|c| (c.name, c.version))
            .collect();
        let plan = deployment::plan(&desired, &previous, &deployed);
        let mut recipes = BTreeMap::new();
        let mut failure = None;
        for name in &plan.work {
            let Some(want) = desired.components.get(name) else {
                continue;
            };
            match self.fetch_component(want, &cache).await? {
                Ok(text) => {
                    recipes.insert(name.clone(), text);
                }
                Err(message) => {
                    failure = Some((
                        Some(name.clone()),
                        format!("{name} {}: {message}", want.version),
                    ));
                    break;
                }
            }
        }
        let mut os_bundle = None;
        if failure.is_none()
            && let Some(os) = &desired.os
            && self.os_version().as_deref() != Some(os.version.as_str())
        {
            if self.config.ota.compatible.is_none() {
                failure = Some((
                    None,
                    format!(
                        "OS {}: OS updates are off on this device (ota.compatible is not set)",
                        os.version
                    ),
                ));
            } else if let Err(e) = crate::ota::update::Ota::open(&self.config)
                .and_then(|ota| ota.check_version(&os.version, false))
            {
                // Refused before the bundle is downloaded: install would refuse it anyway.
                failure = Some((None, format!("OS {}: {e}", os.version)));
            } else {
                match self.fetch(&os.bundle_sha256, &cache).await? {
                    Ok(path) => os_bundle = Some((os.version.clone(), path)),
                    Err(e) => failure = Some((None, format!("OS bundle {}: {e}", os.version))),
                }
            }
        }
        if failure.is_none() {
            self.progress(&desired, DeploymentStatus::Installing)
                .await?;
        }
        let config = self.config.clone();
        let (supervisor, state_dir) = (self.supervisor.clone(), self.state_dir.clone());
        let work = desired.clone();
        let (progress_tx, mut progress_rx) = mpsc::channel::<(u64, u64)>(4);
        let mut installing = tokio::spawn(async move {
            let _guard = guard;
            let outcome = match failure {
                Some((failing, message)) => {
                    deployment::refused(&previous, &work, &plan, failing.as_deref(), message)
                }
                None => {
                    deployment::install(&supervisor, &work, &previous, &plan, &recipes, &cache)
                        .await
                }
            };
            let deployment::Outcome {
                status,
                message,
                components,
                failed,
            } = outcome;
            // The OS goes last: its reboot ends this process.
            let mut reboot = None;
            let (status, message, os_installing) = match (status, os_bundle) {
                (DeploymentStatus::Succeeded, Some((version, path))) => {
                    match install_os(config.clone(), path, progress_tx).await {
                        Ok(()) => {
                            reboot = Some(config);
                            (
                                DeploymentStatus::Installing,
                                Some(format!("OS {version} installed; rebooting into it")),
                                Some(version),
                            )
                        }
                        Err(e) => (
                            DeploymentStatus::Failed,
                            Some(format!("OS {version}: {e}")),
                            None,
                        ),
                    }
                }
                (status, _) => (status, message, None),
            };
            let applied = Applied {
                version: work.version,
                deployment_id: work.deployment_id.clone(),
                status: Some(status),
                message: message.clone(),
                components,
                os_installing,
                failed,
            };
            if let Err(e) = applied::save(&state_dir, &applied) {
                tracing::error!("saving fleet.json: {e}");
            }
            match &status {
                DeploymentStatus::Succeeded => {
                    tracing::info!("desired state version {} applied", work.version)
                }
                s => tracing::warn!(
                    "desired state version {}: {s}: {}",
                    work.version,
                    message.as_deref().unwrap_or("")
                ),
            }
            if let Some(config) = reboot {
                let rebooting = tokio::task::spawn_blocking(move || {
                    crate::ota::update::Ota::open(&config).and_then(|o| o.reboot())
                })
                .await;
                if let Ok(Err(e)) = rebooting {
                    tracing::error!("rebooting into the new OS: {e}");
                }
            }
            (status, message)
        });
        // While the OS image is written, its progress goes to the relay every few seconds (a
        // closed channel only means the report is lost; the install goes on regardless).
        let os_version = desired
            .os
            .as_ref()
            .map(|o| o.version.clone())
            .unwrap_or_default();
        let mut last_progress = std::time::Instant::now();
        let (status, message) = loop {
            tokio::select! {
                done = &mut installing => break done.map_err(|_| ReconcileError::Closed)?,
                Some((written, total)) = progress_rx.recv() => {
                    if last_progress.elapsed() >= PROGRESS_EVERY && total > 0 {
                        last_progress = std::time::Instant::now();
                        let pct = written.saturating_mul(100) / total;
                        let mut report = self
                            .report_now(Some((
                                DeploymentStatus::Installing,
                                Some(format!("OS {os_version}: {pct}% written")),
                            )))
                            .await;
                        report.version = desired.version;
                        report.deployment_id = desired.deployment_id.clone();
                        let _ = self
                            .send(&ControlFrame::Reported { state: Box::new(report) })
                            .await;
                    }
                }
            }
        };
        let report = self.report_now(Some((status, message))).await;
        self.send(&ControlFrame::Reported {
            state: Box::new(report.clone()),
        })
        .await?;
        Ok(report)
    }

    /// Fetches a component's recipe and the relay artifacts it names; the inner error says
    /// what could not be had (the outer one is a broken channel).
    async fn fetch_component(
        &mut self,
        want: &DesiredComponent,
        cache: &Path,
    ) -> Result<Result<String, String>, ReconcileError> {
        let path = match self.fetch(&want.recipe_sha256, cache).await? {
            Ok(p) => p,
            Err(e) => return Ok(Err(format!("recipe: {e}"))),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Ok(Err(format!("recipe: {e}"))),
        };
        let parsed = match recipe::parse(&text, &path) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let manifest = match parsed.manifest_for(std::env::consts::OS, std::env::consts::ARCH) {
            Ok(m) => m.clone(),
            Err(e) => return Ok(Err(e.to_string())),
        };
        for a in &manifest.artifacts {
            if let ArtifactUri::Relay { sha256: digest, .. } = &a.uri
                && let Err(e) = self.fetch(digest, cache).await?
            {
                return Ok(Err(format!("artifact {digest}: {e}")));
            }
        }
        Ok(Ok(text))
    }

    /// Downloads `sha256` into the cache (resuming a partial file), checking the digest.
    async fn fetch(
        &mut self,
        sha256: &str,
        cache: &Path,
    ) -> Result<Result<PathBuf, String>, ReconcileError> {
        if !is_sha256(sha256) {
            return Ok(Err(format!("{sha256:?} is not a sha256")));
        }
        if let Err(e) = std::fs::create_dir_all(cache) {
            return Ok(Err(format!("creating {}: {e}", cache.display())));
        }
        let dest = cache.join(sha256);
        if crate::apps::artifacts::digest_of(&dest).is_ok_and(|d| d == sha256) {
            return Ok(Ok(dest));
        }
        let partial = cache.join(format!("{sha256}.partial"));
        let mut offset = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if offset > 0 {
            tracing::info!("resuming the download of {sha256} at byte {offset}");
        }
        self.send(&ControlFrame::Fetch {
            sha256: sha256.to_string(),
            offset,
        })
        .await?;
        let mut file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
        {
            Ok(f) => f,
            Err(e) => return Ok(Err(format!("{}: {e}", partial.display()))),
        };
        loop {
            let next = tokio::time::timeout(CHUNK_TIMEOUT, self.chunks.recv()).await;
            let f = match next {
                Ok(Some(f)) => f,
                Ok(None) => return Err(ReconcileError::Closed),
                Err(_) => return Err(ReconcileError::Closed),
            };
            match f {
                ControlFrame::Chunk {
                    sha256: s,
                    offset: at,
                    data,
                    last,
                } if s == sha256 && at == offset => {
                    let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
                        Ok(b) => b,
                        Err(e) => return Ok(Err(format!("bad chunk: {e}"))),
                    };
                    use std::io::Write;
                    if let Err(e) = file.write_all(&bytes) {
                        return Ok(Err(format!("{}: {e}", partial.display())));
                    }
                    offset += bytes.len() as u64;
                    if last {
                        break;
                    }
                }
                ControlFrame::FetchError { sha256: s, message } if s == sha256 => {
                    return Ok(Err(message));
                }
                other => {
                    tracing::warn!("control channel: unexpected {other:?} while fetching {sha256}");
                    return Err(ReconcileError::Closed);
                }
            }
        }
        if let Err(e) = file.sync_all() {
            return Ok(Err(format!("{}: {e}", partial.display())));
        }
        drop(file);
        match crate::apps::artifacts::digest_of(&partial) {
            Ok(d) if d == sha256 => {}
            Ok(d) => {
                let _ = std::fs::remove_file(&partial);
                return Ok(Err(format!("sha256 mismatch: received content has {d}")));
            }
            Err(e) => return Ok(Err(format!("{}: {e}", partial.display()))),
        }
        if let Err(e) = std::fs::rename(&partial, &dest) {
            return Ok(Err(format!("{}: {e}", dest.display())));
        }
        Ok(Ok(dest))
    }
}

/// Installs an OS bundle from the cache (blocking work, off the async threads).
async fn install_os(
    config: AgentConfig,
    bundle: PathBuf,
    progress: mpsc::Sender<(u64, u64)>,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let ota = crate::ota::update::Ota::open(&config).map_err(|e| e.to_string())?;
        ota.install(
            &bundle,
            &crate::ota::update::InstallOptions::default(),
            // Dropped when the reporter is behind: progress is advisory.
            &mut |written, total| {
                let _ = progress.try_send((written, total));
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
