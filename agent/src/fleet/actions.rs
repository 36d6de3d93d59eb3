//! Remote actions from the relay, carried out on the device: run a command, restart a
//! component, reboot.
//!
//! A result is written to `<state_dir>/action-results/<id>.json` before it is sent, and files
//! still there when a control channel opens are sent again, so a result survives a link that
//! drops at the wrong moment (the relay records a result idempotently). Actions are carried
//! out at most once: the relay sends each one once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tether_protocol::fleet::{Action, ActionKind, ActionResult, ActionStatus, MAX_ACTION_OUTPUT};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::account::{Account, prepare_child};
use crate::apps::supervisor::Supervisor;

/// Time limit of a `run` action without its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Directory of results not yet delivered.
pub fn results_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("action-results")
}

/// Carries out `action` and returns its result (already saved for delivery).
pub async fn perform(action: Action, supervisor: &Supervisor) -> ActionResult {
    tracing::info!("action {}: {:?}", action.id, action.action);
    let result = match &action.action {
        ActionKind::Run {
            command,
            timeout_secs,
        } => {
            let limit = timeout_secs.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
            run_command(&action.id, command, &supervisor.step_account(), limit).await
        }
        ActionKind::Restart { component } => match supervisor.restart(component).await {
            Ok(s) => done(
                &action.id,
                ActionStatus::Succeeded,
                None,
                format!("{} {}: {}\n", s.name, s.version, s.state),
                None,
            ),
            Err(e) => done(
                &action.id,
                ActionStatus::Failed,
                None,
                String::new(),
                Some(e.to_string()),
            ),
        },
        ActionKind::Reboot => {
            // Reported before the reboot: afterwards there is no one left to report.
            let command = supervisor.config().reboot_command.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tracing::warn!("rebooting: {command}");
                let status = Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&command)
                    .status()
                    .await;
                if let Err(e) = status {
                    tracing::error!("reboot command failed: {e}");
                }
            });
            done(
                &action.id,
                ActionStatus::Succeeded,
                None,
                "rebooting\n".into(),
                None,
            )
        }
    };
    save(supervisor.state_dir(), &result);
    result
}

fn done(
    id: &str,
    status: ActionStatus,
    exit_code: Option<i32>,
    output: String,
    error: Option<String>,
) -> ActionResult {
    ActionResult {
        id: id.to_string(),
        status,
        exit_code,
        output,
        truncated: false,
        error,
    }
}

/// Runs `command` in its own session as `account`, output (stdout and stderr) bounded.
async fn run_command(id: &str, command: &str, account: &Account, limit: Duration) -> ActionResult {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .current_dir(&account.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare_child(&mut cmd, account, false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return done(
                id,
                ActionStatus::Failed,
                None,
                String::new(),
                Some(format!("could not start /bin/sh: {e}")),
            );
        }
    };
    let pgid = child.id().map(|p| p as i32);
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let mut buf = Vec::new();
        let mut truncated = false;
        let (mut a, mut b) = (out, err);
        let (mut ca, mut cb) = ([0u8; 8192], [0u8; 8192]);
        loop {
            let n = tokio::select! {
                r = async { match a.as_mut() { Some(p) => p.read(&mut ca).await, None => std::future::pending().await } } => {
                    match r { Ok(0) | Err(_) => { a = None; 0 } Ok(n) => { keep(&mut buf, &ca[..n], &mut truncated); n } }
                }
                r = async { match b.as_mut() { Some(p) => p.read(&mut cb).await, None => std::future::pending().await } } => {
                    match r { Ok(0) | Err(_) => { b = None; 0 } Ok(n) => { keep(&mut buf, &cb[..n], &mut truncated); n } }
                }
            };
            let _ = n;
            if a.is_none() && b.is_none() {
                return (buf, truncated);
            }
        }
    };
    let finished = tokio::time::timeout(limit, async {
        let (buf, truncated) = collect.await;
        (child.wait().await, buf, truncated)
    })
    .await;
    match finished {
        Ok((Ok(status), buf, truncated)) => {
            let code = status.code();
            let mut r = done(
                id,
                if status.success() {
                    ActionStatus::Succeeded
                } else {
                    ActionStatus::Failed
                },
                code,
                String::from_utf8_lossy(&buf).into_owned(),
                code.is_none().then(|| "killed by a signal".to_string()),
            );
            r.truncated = truncated;
            r
        }
        Ok((Err(e), _, _)) => done(
            id,
            ActionStatus::Failed,
            None,
            String::new(),
            Some(e.to_string()),
        ),
        Err(_) => {
            if let Some(p) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            done(
                id,
                ActionStatus::Failed,
                None,
                String::new(),
                Some(format!(
                    "timed out after {}",
                    humantime::format_duration(limit)
                )),
            )
        }
    }
}

fn keep(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_ACTION_OUTPUT.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Whether an id from the relay is safe to use as a file name.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn save(state_dir: &Path, result: &ActionResult) {
    if !safe_id(&result.id) {
        tracing::warn!(
            "action id {:?} is not a safe file name; its result is not kept",
            result.id
        );
        return;
    }
    let dir = results_dir(state_dir);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{}.tmp", result.id));
        std::fs::write(
            &tmp,
            serde_json::to_vec(result).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, dir.join(format!("{}.json", result.id)))
    };
    if let Err(e) = write() {
        tracing::error!("saving the result of action {}: {e}", result.id);
    }
}

/// Results saved but not yet delivered.
pub fn undelivered(state_dir: &Path) -> Vec<ActionResult> {
    let Ok(entries) = std::fs::read_dir(results_dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// Forgets a delivered result.
pub fn delivered(state_dir: &Path, id: &str) {
    if !safe_id(id) {
        return;
    }
    let _ = std::fs::remove_file(results_dir(state_dir).join(format!("{id}.json")));
}
