//! `agent enroll`, `agent status` and `agent keys …`: the device's identity and its link.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::config::AgentConfig;
use crate::identity::{device_key, enrollment_record};
use crate::link::enroll_exchange::{self, EnrollOptions};
use crate::link::status::{self, LinkState};

/// `agent keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Replace the device key with a new one: the relay learns the new key over the link,
    /// the agent switches to it, and the relay retires the old one. A rotation cut short
    /// leaves a key the relay accepts.
    Rotate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the device key's fingerprint.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agent enroll URL --token TOKEN`: registers this device with the relay.
pub async fn enroll(config: &AgentConfig, opts: &EnrollOptions) -> Result<ExitCode> {
    let (record, status) = enroll_exchange::enroll(config, opts)
        .await
        .with_context(|| format!("enrolling with {}", opts.url))?;
    outln!(
        "enrolled as {} ({}) in tenant {}; status {}",
        record.name,
        record.device_id,
        record.tenant,
        status
    )?;
    outln!("relay host key {} pinned", record.relay_fingerprint)?;
    Ok(ExitCode::SUCCESS)
}

/// `agent keys rotate` and `agent keys show`.
pub async fn keys(config: &AgentConfig, cmd: &KeysCommand) -> Result<ExitCode> {
    match cmd {
        KeysCommand::Rotate { json } => {
            let rotated = crate::link::key_rotation::rotate(config)
                .await
                .context("rotating the device key")?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&rotated)?)?;
            } else {
                outln!(
                    "device key rotated: {} retired, {} in use",
                    rotated.old,
                    rotated.new
                )?;
                if !rotated.confirmed {
                    outln!("the relay switches to the new key at the agent's next login")?;
                }
            }
        }
        KeysCommand::Show { json } => {
            let key = device_key::load(&config.state_dir).context("loading the device key")?;
            let fingerprint = device_key::fingerprint(&key);
            let path = device_key::key_path(&config.state_dir);
            if *json {
                outln!(
                    "{}",
                    serde_json::json!({ "fingerprint": fingerprint, "path": path })
                )?;
            } else {
                outln!("{fingerprint} {}", path.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `agent status --json` prints.
#[derive(Debug, Serialize)]
struct StatusReport {
    enrolled: bool,
    device_id: Option<String>,
    name: Option<String>,
    tenant: Option<String>,
    relay_url: Option<String>,
    relay_fingerprint: Option<String>,
    device_fingerprint: Option<String>,
    link: LinkState,
    since: Option<String>,
    last_error: Option<String>,
}

/// `agent status`: the enrollment record and the link state.
pub fn show_status(config: &AgentConfig, json: bool) -> Result<ExitCode> {
    let record = match enrollment_record::load(&config.state_dir) {
        Ok(r) => Some(r),
        Err(enrollment_record::EnrollmentError::NotEnrolled(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let link = status::read(&config.state_dir);
    let device_fingerprint = device_key::load(&config.state_dir)
        .ok()
        .map(|k| device_key::fingerprint(&k));
    let report = StatusReport {
        enrolled: record.is_some(),
        device_id: record.as_ref().map(|r| r.device_id.clone()),
        name: record.as_ref().map(|r| r.name.clone()),
        tenant: record.as_ref().map(|r| r.tenant.clone()),
        relay_url: record.as_ref().map(|r| r.relay_url.clone()),
        relay_fingerprint: record.as_ref().map(|r| r.relay_fingerprint.clone()),
        device_fingerprint,
        link: link.state,
        since: (!link.since.is_empty()).then_some(link.since),
        last_error: link.last_error,
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        outln!(
            "enrolled:           {}",
            if report.enrolled { "yes" } else { "no" }
        )?;
        outln!("device id:          {}", dash(&report.device_id))?;
        outln!("name:               {}", dash(&report.name))?;
        outln!("tenant:             {}", dash(&report.tenant))?;
        outln!("relay:              {}", dash(&report.relay_url))?;
        outln!("relay host key:     {}", dash(&report.relay_fingerprint))?;
        outln!("device key:         {}", dash(&report.device_fingerprint))?;
        outln!(
            "link:               {} since {}",
            report.link,
            dash(&report.since)
        )?;
        if let Some(e) = &report.last_error {
            outln!("last error:         {e}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
