//! The conformance suite of the store interface: what every [`Backend`] must do, written
//! against `&dyn Backend` alone.
//!
//! Each case is a function taking a fresh, empty backend; [`suite!`] turns the whole list into
//! one `#[test]` per case for a backend's constructor, so a new backend runs exactly the same
//! cases (`crate::store::conformance::suite!(fresh)` in its test module). What only one
//! backend can show (SQLite's file modes, its triggers, its schema versions) is tested beside
//! that backend instead.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tether_protocol::fleet::{
    ActionKind, ActionResult, ActionStatus, DeploymentStatus, ReportedComponent, ReportedState,
};
use tether_protocol::telemetry::{Kind, Level, Record};

use super::*;

pub(crate) mod access;
pub(crate) mod actions;
pub(crate) mod audit;
pub(crate) mod devices;
pub(crate) mod fleet;
pub(crate) mod keys;
pub(crate) mod notify;
pub(crate) mod scoping;
pub(crate) mod sessions;
pub(crate) mod telemetry;
pub(crate) mod tenants;
pub(crate) mod tokens;
pub(crate) mod users;

/// What a case returns.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An engineer's public key.
pub(crate) const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ a";
/// Another engineer's public key.
pub(crate) const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuxHsuD3D1T6DwjHg8u6Pn/5O6IWxnpPmqPGrXEmXNV b";

/// A real OpenSSH public key made from `seed`.
pub(crate) fn key(seed: u8) -> Result<String, Box<dyn std::error::Error>> {
    let kp = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
    let k = russh::keys::PrivateKey::from(kp);
    Ok(k.public_key().to_openssh()?)
}

/// Enrolls a device `name` in `tenant` with a made-up key; returns its id.
pub(crate) fn enroll(store: &dyn Backend, tenant: &str, name: &str) -> Result<String, StoreError> {
    let t = store.create_token(NewToken {
        tenant,
        kind: TokenKind::Enroll,
        ttl: None,
        uses: None,
        require_accept: false,
        allow_replace: false,
        role: Role::Operator,
    })?;
    Ok(store
        .redeem_enroll_token(
            &t.secret,
            DeviceEnrollment {
                name: name.into(),
                public_key_openssh: format!("key-{tenant}-{name}"),
                fingerprint: format!("fp-{tenant}-{name}"),
                agent_version: "0.1.0".into(),
                force: false,
            },
        )?
        .device
        .id)
}

/// An enrollment of device `name` with key fingerprint `fp`.
pub(crate) fn enrollment(name: &str, fp: &str) -> DeviceEnrollment {
    DeviceEnrollment {
        name: name.into(),
        public_key_openssh: format!("key-{fp}"),
        fingerprint: fp.into(),
        agent_version: "0.1.0".into(),
        force: false,
    }
}

/// Mints an enrollment token of `tenant`; returns its secret.
pub(crate) fn token(
    store: &dyn Backend,
    tenant: &str,
    ttl: Option<Duration>,
    uses: Option<u32>,
) -> Result<String, StoreError> {
    Ok(store
        .create_token(NewToken {
            tenant,
            kind: TokenKind::Enroll,
            ttl,
            uses,
            require_accept: false,
            allow_replace: false,
            role: Role::Operator,
        })?
        .secret)
}

/// The error's text, or a text saying it was unexpectedly ok.
pub(crate) fn err_text<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Ok(v) => format!("unexpectedly ok: {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// A `run` action.
pub(crate) fn run(command: &str) -> ActionKind {
    ActionKind::Run {
        command: command.into(),
        timeout_secs: None,
    }
}

/// One `#[test]` per case, each on a fresh backend from `$fresh`, a function returning
/// `Result<(keep, Box<dyn Backend>), _>` where `keep` (a temporary directory, say) lives as
/// long as the case runs.
macro_rules! cases {
    ($fresh:ident; $($group:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        $(
            mod $group {
                $(
                    #[test]
                    fn $case() -> $crate::store::conformance::TestResult {
                        let (_keep, backend) = super::$fresh()?;
                        $crate::store::conformance::$group::$case(&*backend)
                    }
                )*
            }
        )*
    };
}
pub(crate) use cases;

/// Every case of the suite, for the backend constructor `$fresh` (see [`cases!`]).
macro_rules! suite {
    ($fresh:ident) => {
        $crate::store::conformance::cases!($fresh;
            tenants: [
                tenant_names_are_unique_and_checked,
                a_tenant_with_devices_is_removed_only_when_asked_and_takes_its_data,
            ],
            tokens: [
                token_secrets_have_the_documented_shape_and_bad_requests_are_refused,
                tokens_expire_run_out_and_are_revoked,
            ],
            devices: [
                re_enrollment_rules,
                device_lookup_is_tenant_scoped,
            ],
            users: [
                users_and_engineer_identities,
                engineers_are_disabled_re_keyed_and_removed_by_exact_name,
            ],
            keys: [
                the_next_key_replaces_the_old_at_its_first_login,
            ],
            fleet: [
                put_artifact_is_idempotent_and_stores_the_bytes,
                artifacts_belong_to_the_tenant_that_put_them,
                tags_are_added_removed_and_validated,
                deployment_by_tag_merges_components_and_bumps_versions,
                bad_targets_recipes_and_artifacts_are_refused_by_name,
                set_assignments_are_routed_to_their_components,
                reports_update_the_deployment_only_for_its_version,
                push_config_merges_and_refuses_unknown_components,
                bare_named_artifacts_are_stored_and_the_recipe_names_them_on_the_relay,
                removals_take_components_out_and_name_only_what_they_change,
                device_state_before_anything_happened,
            ],
            actions: [
                created_actions_are_taken_once_in_order_and_marked_running,
                expired_actions_are_marked_and_not_sent,
                results_are_recorded_capped_and_idempotent,
                a_result_for_another_devices_action_is_refused,
                invalid_actions_and_devices_are_refused_by_name,
                running_actions_are_requeued_and_sent_again,
            ],
            sessions: [
                sessions_open_close_list_and_expire,
            ],
            audit: [
                entries_are_appended_and_listed,
            ],
            telemetry: [
                dedup_filters_and_retention,
            ],
            scoping: [
                one_tenant_sees_nothing_of_another,
            ],
            notify: [
                a_write_notifies_its_device_only,
                reads_and_reports_notify_nobody,
            ],
        );
    };
}
pub(crate) use suite;
