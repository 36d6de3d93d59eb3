//! The relay end of a device's `tether-control` channel: the device's desired state goes
//! down (at once, and again whenever it changes), reported state comes up and is recorded,
//! recipes and artifacts stored on the relay are sent in chunks on request, and queued remote
//! actions go down (each once) with their results coming back.
//!
//! Strings a device reports are cut to their limits (see
//! [`tether_protocol::fleet::ReportedState::bound_strings`]) before they are stored, and what
//! was cut is logged.
//!
//! The channel reads the desired state and the pending actions when it opens and then only when
//! the store notifies it of a change for its device ([`crate::store::notify`]): an idle device
//! costs the relay nothing.
//!
//! A malformed frame closes this channel with a logged error; the link stays up and the
//! device opens a new control channel on its next link.
//!
//! A device is sent only artifacts of its own tenant: another tenant's digest gets the very
//! refusal a digest never stored gets, so knowing a digest is not enough to read the bytes,
//! nor to learn that some tenant has them.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tether_protocol::fleet::{
    CHUNK_BYTES, ControlFrame, MAX_REPORTED_TEXT, is_sha256, truncate_reported,
};
use tether_protocol::frame;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::store::blocking::with_store;
use crate::store::{DeviceChanges, Store};

/// How soon the channel reads the store again after a read failed (the store busy, say),
/// change or no change.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Waits for the device's next change; after a failed read, for a moment at most.
async fn next_check(changes: &mut DeviceChanges, retry: bool) {
    if retry {
        let _ = tokio::time::timeout(RETRY_AFTER_ERROR, changes.changed()).await;
    } else {
        changes.changed().await;
    }
}

/// What the agent at the other end understands beyond the first protocol version.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentFeatures {
    /// It reads [`tether_protocol::fleet::DesiredState::changes`]; agents before it refuse a
    /// document that has the field, and get each version as a whole desired state instead.
    pub desired_changes: bool,
}

/// Serves a device's control channel until it closes.
pub async fn serve<S>(
    stream: S,
    device_id: String,
    store: Arc<Store>,
    artifacts_dir: PathBuf,
    features: AgentFeatures,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Boxed: the channel allocates its slots up front, and every linked device holds one.
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Box<ControlFrame>>(16);
    // Reading in its own task: a frame is never half-read when a change arrives.
    let reader_id = device_id.clone();
    let reader = tokio::spawn(async move {
        loop {
            match frame::read::<_, ControlFrame>(&mut rd).await {
                Ok(Some(f)) => {
                    if frames_tx.send(Box::new(f)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("device {reader_id}: {e}; closing its control channel");
                    return;
                }
            }
        }
    });
    let mut sent_version = 0u64;
    // Subscribed before the first read, and its first wait returns at once: the state is sent
    // when the channel opens, and a change made meanwhile is not missed.
    let mut changes = store.notifier().subscribe(&device_id);
    let mut retry = false;
    loop {
        tokio::select! {
            _ = next_check(&mut changes, retry) => {
                retry = false;
                let id = device_id.clone();
                let desired = with_store(&store, move |s| s.desired_state(&id)).await;
                match desired {
                    Ok(Ok(Some(mut state))) if state.version > sent_version => {
                        sent_version = state.version;
                        if !features.desired_changes {
                            state.changes = None;
                        }
                        if let Err(e) = frame::write(&mut wr, &ControlFrame::Desired { state }).await {
                            tracing::info!("device {device_id}: control channel closed: {e}");
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!("device {device_id}: desired state: {e}");
                        retry = true;
                    }
                    Err(_) => retry = true,
                    _ => {}
                }
                let id = device_id.clone();
                match with_store(&store, move |s| s.take_pending_actions(&id)).await {
                    Ok(Ok(actions)) => {
                        let mut unsent: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
                        let mut failed = None;
                        for action in actions {
                            let id = action.id.clone();
                            if let Err(e) = frame::write(&mut wr, &ControlFrame::Action { action }).await {
                                failed = Some(e);
                                break;
                            }
                            unsent.retain(|u| *u != id);
                        }
                        if let Some(e) = failed {
                            // Never written, so never carried out: they may go next time.
                            let _ = with_store(&store, move |s| s.requeue_unsent_actions(&unsent)).await;
                            tracing::info!("device {device_id}: control channel closed: {e}");
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!("device {device_id}: pending actions: {e}");
                        retry = true;
                    }
                    Err(_) => retry = true,
                }
            }
            f = frames_rx.recv() => {
                let Some(f) = f else { break };
                match *f {
                    ControlFrame::Reported { mut state } => {
                        // Bounded before it is stored: operators' tables and the store must not
                        // take a device's word for how long a version or a host name may be.
                        let cut = state.bound_strings();
                        if !cut.is_empty() {
                            tracing::warn!(
                                "device {device_id}: report fields over their limits were cut: {}",
                                cut.join(", ")
                            );
                        }
                        let id = device_id.clone();
                        match with_store(&store, move |s| s.record_report(&id, &state)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::error!("device {device_id}: recording its report: {e}"),
                            Err(_) => {}
                        }
                    }
                    ControlFrame::ActionResult { mut result } => {
                        if let Some(error) = &mut result.error
                            && truncate_reported(error, MAX_REPORTED_TEXT)
                        {
                            tracing::warn!("device {device_id}: the error of action {:?} was cut to {MAX_REPORTED_TEXT} bytes", result.id);
                        }
                        let id = device_id.clone();
                        match with_store(&store, move |s| s.record_action_result(&id, &result)).await {
                            Ok(Ok(())) | Err(_) => {}
                            Ok(Err(e)) => tracing::warn!("device {device_id}: action result: {e}"),
                        }
                    }
                    ControlFrame::Fetch { sha256, offset } => {
                        let sent = send_artifact(&mut wr, &store, &device_id, &artifacts_dir, &sha256, offset).await;
                        if let Err(e) = sent {
                            tracing::info!("device {device_id}: control channel closed: {e}");
                            break;
                        }
                    }
                    other => {
                        tracing::error!("device {device_id}: sent {other:?}, which only the relay sends; closing its control channel");
                        break;
                    }
                }
            }
        }
    }
    reader.abort();
}

/// The refusal of an artifact the device's tenant did not store, whether another tenant did
/// or nobody: one text for both.
pub const NO_SUCH_ARTIFACT: &str = "no such artifact on the relay";

/// Sends `sha256` from `offset` as chunks if the tenant of `device_id` stored it, or a fetch
/// error naming what is wrong.
async fn send_artifact<W: AsyncWrite + Unpin>(
    wr: &mut W,
    store: &Arc<Store>,
    device_id: &str,
    artifacts_dir: &std::path::Path,
    sha256: &str,
    offset: u64,
) -> Result<(), frame::FrameError> {
    let refuse = |message: String| ControlFrame::FetchError {
        sha256: sha256.to_string(),
        message,
    };
    if !is_sha256(sha256) {
        return frame::write(wr, &refuse("not a sha256".into())).await;
    }
    let (id, digest) = (device_id.to_string(), sha256.to_string());
    match with_store(store, move |s| s.device_artifact(&id, &digest)).await {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => return frame::write(wr, &refuse(NO_SUCH_ARTIFACT.into())).await,
        Ok(Err(e)) => {
            tracing::error!("device {device_id}: looking up artifact {sha256}: {e}");
            return frame::write(wr, &refuse("the relay's store failed; try again".into())).await;
        }
        Err(_) => {
            return frame::write(wr, &refuse("the relay's store failed; try again".into())).await;
        }
    }
    // A relay of a cluster may hold the board while another relay stored the artifact.
    let (dir, digest) = (artifacts_dir.to_path_buf(), sha256.to_string());
    if let Ok(Err(e)) = with_store(store, move |s| s.ensure_artifact_file(&dir, &digest)).await {
        tracing::error!("device {device_id}: fetching artifact {sha256} from the store: {e}");
    }
    let path = artifacts_dir.join(sha256);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            // Recorded for the tenant but gone from disk: the owner may hear why.
            tracing::error!("device {device_id}: artifact {}: {e}", path.display());
            return frame::write(
                wr,
                &refuse(format!("the relay cannot read this artifact's file ({e})")),
            )
            .await;
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if offset > size || file.seek(SeekFrom::Start(offset)).is_err() {
        return frame::write(
            wr,
            &refuse(format!("offset {offset} is past the end ({size} bytes)")),
        )
        .await;
    }
    let mut at = offset;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        // Local file reads of at most 256 KiB: short enough to do inline.
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return frame::write(wr, &refuse(format!("reading: {e}"))).await,
        };
        let last = at + n as u64 >= size || n == 0;
        let chunk = ControlFrame::Chunk {
            sha256: sha256.to_string(),
            offset: at,
            data: base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
            last,
        };
        frame::write(wr, &chunk).await?;
        at += n as u64;
        if last {
            return Ok(());
        }
    }
}
