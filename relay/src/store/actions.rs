//! Remote actions in the relay's store: commands to run, components to restart and reboots,
//! queued for one device each and carried out when its control channel is up.
//!
//! An action is `pending` until the control channel takes it ([`ActionStore::take_pending_actions`],
//! which marks it `running`), and `succeeded` or `failed` once the device reports how it went
//! ([`ActionStore::record_action_result`]). A pending action past its expiry becomes `expired`
//! instead of being sent. The agent keeps a result until it was delivered and sends it again
//! over the next channel, so recording a result is idempotent: a repeated result for an
//! action that already has one is ignored.

use std::time::Duration;

use serde::Serialize;
use tether_protocol::fleet::{Action, ActionKind, ActionResult, ActionStatus, MAX_ACTION_OUTPUT};

use super::{StoreError, unix_now};

/// Longest command of a `run` action, in bytes.
pub(crate) const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Longest time limit of a `run` action, in seconds (a day).
pub(crate) const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Most actions a listing returns.
pub(crate) const LIST_LIMIT: i64 = 1000;

/// A stored action with its state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionView {
    /// Id (`act_…`).
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// Device id.
    pub device_id: String,
    /// Device name.
    pub device_name: String,
    /// What to do.
    pub action: ActionKind,
    /// Where it stands.
    pub status: ActionStatus,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When it expires unless sent by then (RFC 3339); `None` never.
    pub expires_at: Option<String>,
    /// When it was sent to the device (RFC 3339).
    pub sent_at: Option<String>,
    /// When its result came, or when it expired (RFC 3339).
    pub finished_at: Option<String>,
    /// Exit code, for `run`.
    pub exit_code: Option<i32>,
    /// Output the device reported (stdout and stderr interleaved).
    pub output: Option<String>,
    /// Whether the output was cut at [`MAX_ACTION_OUTPUT`](tether_protocol::fleet::MAX_ACTION_OUTPUT) bytes.
    pub truncated: bool,
    /// What went wrong, if it did.
    pub error: Option<String>,
}

/// Checks what an action asks for; errors name the offending field.
pub(crate) fn validate(action: &ActionKind) -> Result<(), StoreError> {
    match action {
        ActionKind::Run {
            command,
            timeout_secs,
        } => {
            if command.trim().is_empty() {
                return Err(StoreError::Invalid(
                    "the command of a run action must not be empty".into(),
                ));
            }
            if command.len() > MAX_COMMAND_BYTES {
                return Err(StoreError::Invalid(format!(
                    "the command of a run action is {} bytes, more than {MAX_COMMAND_BYTES}",
                    command.len()
                )));
            }
            if let Some(t) = timeout_secs
                && !(1..=MAX_TIMEOUT_SECS).contains(t)
            {
                return Err(StoreError::Invalid(format!(
                    "timeout_secs {t} of a run action must be between 1 and {MAX_TIMEOUT_SECS}"
                )));
            }
        }
        ActionKind::Restart { component } => {
            if component.trim().is_empty() {
                return Err(StoreError::Invalid(
                    "the component of a restart action must not be empty".into(),
                ));
            }
        }
        ActionKind::Reboot => {}
    }
    Ok(())
}

/// `output` cut to at most `max` bytes at a character boundary; whether it was cut.
fn cap_output(output: &str, max: usize) -> (&str, bool) {
    if output.len() <= max {
        return (output, false);
    }
    let mut end = max;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    (&output[..end], true)
}

/// The name a status is stored as.
pub(crate) fn status_as_str(status: ActionStatus) -> &'static str {
    match status {
        ActionStatus::Pending => "pending",
        ActionStatus::Running => "running",
        ActionStatus::Succeeded => "succeeded",
        ActionStatus::Failed => "failed",
        ActionStatus::Expired => "expired",
    }
}

/// Reads a stored status; the relay writes only the names above, anything else is damaged
/// and reads as failed (never as pending, which would send it).
pub(crate) fn status_parse(s: &str) -> ActionStatus {
    match s {
        "pending" => ActionStatus::Pending,
        "running" => ActionStatus::Running,
        "succeeded" => ActionStatus::Succeeded,
        "expired" => ActionStatus::Expired,
        _ => ActionStatus::Failed,
    }
}

/// The status an action is shown with: a pending one past its expiry (Unix seconds) reads
/// as expired even before [`ActionStore::take_pending_actions`] records that (the device may
/// never connect again).
pub(crate) fn shown_status(stored: &str, expires_at: Option<i64>) -> ActionStatus {
    match status_parse(stored) {
        ActionStatus::Pending if expires_at.is_some_and(|e| e <= unix_now()) => {
            ActionStatus::Expired
        }
        status => status,
    }
}

/// Whether an action with this stored status has its result already: a repeated result is
/// then ignored.
pub(crate) fn has_result(stored: &str) -> bool {
    matches!(
        status_parse(stored),
        ActionStatus::Succeeded | ActionStatus::Failed
    )
}

/// Checks a result a device reports and returns its output as stored (cut to
/// [`MAX_ACTION_OUTPUT`]) and whether the output is truncated.
pub(crate) fn result_output(result: &ActionResult) -> Result<(&str, bool), StoreError> {
    if !matches!(
        result.status,
        ActionStatus::Succeeded | ActionStatus::Failed
    ) {
        return Err(StoreError::Invalid(format!(
            "the result of action {} has status {}; expected succeeded or failed",
            result.id, result.status
        )));
    }
    let (output, cut) = cap_output(&result.output, MAX_ACTION_OUTPUT);
    Ok((output, result.truncated || cut))
}

/// Remote actions: queued once per device, handed out once, their results recorded once.
///
/// Every write that queues an action for a device notifies that device (see [`super::notify`]).
pub trait ActionStore {
    /// Queues an action for a device.
    ///
    /// With `tenant_id` the device (id or name) is looked up in that tenant only, and one of
    /// another tenant is not found; without it, the device is an id or a name unique across
    /// tenants (see [`DeviceStore::resolve_device`](super::DeviceStore::resolve_device)). A `run` command must not be empty and at most
    /// 64 KiB, its `timeout_secs` 1 to 86400 when given; a `restart` must name a component.
    /// `ttl` is how long the action may wait for the device; `None` waits forever, and an
    /// action past it becomes `expired` instead of being sent.
    fn create_action(
        &self,
        tenant_id: Option<i64>,
        device: &str,
        action: &ActionKind,
        ttl: Option<Duration>,
    ) -> Result<ActionView, StoreError>;

    /// The device's pending actions that have not expired, oldest first, to send now.
    ///
    /// In one transaction, pending actions past their expiry become `expired`, and the
    /// returned ones `running` with `sent_at` set: each action is handed out once. A stored
    /// action that no longer decodes is marked `failed` rather than blocking the others. An
    /// unknown device has no actions. The control channel calls this when a device connects
    /// and then whenever the device is notified of a change.
    fn take_pending_actions(&self, device_id: &str) -> Result<Vec<Action>, StoreError>;

    /// Records how one of the device's actions ended.
    ///
    /// The status must be `succeeded` or `failed`. An action of another device, or one that
    /// does not exist, is not found. Output is kept up to [`MAX_ACTION_OUTPUT`](tether_protocol::fleet::MAX_ACTION_OUTPUT) bytes (cut at
    /// a character boundary, and then marked truncated). A result for an action that already
    /// has one is ignored: the agent re-sends results it is not sure were delivered.
    fn record_action_result(
        &self,
        device_id: &str,
        result: &ActionResult,
    ) -> Result<(), StoreError>;

    /// Puts the device's `running` actions back to `pending` (clearing `sent_at`), so they are
    /// sent again; returns how many.
    ///
    /// Careful: the agent carries out each action it receives, it keeps no list of actions
    /// done. A requeued action that had already run runs again; a reboot that had rebooted
    /// the device (dropping the link before its result was delivered) reboots it again.
    fn requeue_running_actions(&self, device_id: &str) -> Result<u64, StoreError>;

    /// Puts the given `running` actions back to `pending`: the ones taken for a device but
    /// never written to its channel (it closed part-way through a batch), which the device
    /// cannot have carried out.
    fn requeue_unsent_actions(&self, ids: &[String]) -> Result<u64, StoreError>;

    /// The action `id`; with `tenant_id`, only if it belongs to that tenant.
    fn action(&self, id: &str, tenant_id: Option<i64>) -> Result<Option<ActionView>, StoreError>;

    /// Actions, newest first, at most 1000: optionally only of the tenant named `tenant`, and
    /// of one device (id or name; within `tenant` when given, else an id or a name unique
    /// across tenants). An unknown tenant or device is an error.
    fn actions(
        &self,
        tenant: Option<&str>,
        device: Option<&str>,
    ) -> Result<Vec<ActionView>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_at_a_character_boundary() {
        assert_eq!(cap_output("abc", 3), ("abc", false));
        assert_eq!(cap_output("abcd", 3), ("abc", true));
        assert_eq!(cap_output("aé", 2), ("a", true));
        assert_eq!(cap_output("", 0), ("", false));
    }
}
