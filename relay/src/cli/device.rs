//! `relay device …`: devices, their acceptance, tags, desired and reported state, and
//! configuration pushes.

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use tether_protocol::fleet::{Inventory, ReportedComponent};

use super::change::Change;
use super::output::{
    dash, escape_controls, human_bytes, print_fields, print_json, print_list, table, words,
};
use crate::store::{Device, DeviceStatus, Store};

/// `relay device …`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one device (id, or a name unique across tenants).
    Show {
        /// Device id or name.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Allow a pending or rejected device to connect.
    Accept {
        /// Device id or name.
        id: String,
    },
    /// Refuse a device; its live link is dropped within seconds.
    Reject {
        /// Device id or name.
        id: String,
    },
    /// Delete a device; its live link is dropped within seconds.
    Remove {
        /// Device id or name.
        id: String,
    },
    /// Add tags to a device (or remove them); prints its tags after.
    Tag {
        /// Device id or name.
        device: String,
        /// Tags: a-z, 0-9, '-', '_', '.', starting with a letter or digit.
        #[arg(required = true)]
        tags: Vec<String>,
        /// Remove the tags instead.
        #[arg(long)]
        remove: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a device's desired and reported state side by side.
    State {
        /// Device id or name.
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Push configuration to one device; prints the new desired-state version
    /// (`configuration version N pushed to DEVICE`).
    Config {
        /// Device id or name.
        device: String,
        /// Configuration override (`null` removes one): COMPONENT:KEY=VALUE.
        #[arg(long = "set", value_name = "COMPONENT:KEY=VALUE", required = true)]
        set: Vec<String>,
        /// Print the new desired state as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &DeviceCommand) -> Change {
    let device = |action, id: &String| Change::new(action, None, Some(id));
    match cmd {
        DeviceCommand::Accept { id } => device("device.accept", id),
        DeviceCommand::Reject { id } => device("device.reject", id),
        DeviceCommand::Remove { id } => device("device.remove", id),
        DeviceCommand::Tag {
            device: id,
            tags,
            remove,
            ..
        } => device("device.tag", id).with(if *remove { "removed" } else { "added" }, tags),
        DeviceCommand::Config {
            device: id, set, ..
        } => device("device.config", id).with("set", set),
        DeviceCommand::List { .. } | DeviceCommand::Show { .. } | DeviceCommand::State { .. } => {
            Change::read()
        }
    }
}

/// Runs a `relay device` command.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    cmd: DeviceCommand,
    change: &mut Change,
) -> Result<()> {
    match cmd {
        DeviceCommand::List { tenant, json } => {
            let devices = store.devices(tenant.as_deref())?;
            if json {
                print_json(out, &devices)?;
            } else {
                out.write_all(table(DEVICE_HEADER, &device_rows(&devices)).as_bytes())?;
            }
        }
        DeviceCommand::Show { id, json } => {
            let d = store.resolve_device(&id)?;
            let tags = store.device_tags(&d.id)?;
            let reported = store.device_state(&d.id)?.reported;
            let inventory = reported.as_ref().and_then(|r| r.inventory.as_ref());
            let components = reported.as_ref().map_or(&[][..], |r| &r.components[..]);
            if json {
                /// The device with its tags, and what it last reported about itself.
                #[derive(Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    device: &'a Device,
                    tags: &'a [String],
                    inventory: Option<&'a Inventory>,
                    components: &'a [ReportedComponent],
                }
                print_json(
                    out,
                    &Shown {
                        device: &d,
                        tags: &tags,
                        inventory,
                        components,
                    },
                )?;
            } else {
                let rows = [
                    ("id", d.id.clone()),
                    ("name", d.name.clone()),
                    ("tenant", d.tenant.clone()),
                    ("status", d.status.to_string()),
                    ("online", if d.online { "yes" } else { "no" }.into()),
                    ("last connected", dash(&d.last_connected)),
                    ("last disconnected", dash(&d.last_disconnected)),
                    ("remote address", dash(&d.remote_addr)),
                    ("agent version", dash(&d.agent_version)),
                    ("key", d.fingerprint.clone()),
                    ("enrolled", d.created_at.clone()),
                    ("tags", words(&tags)),
                ];
                print_fields(out, 18, &rows)?;
                if let Some(inventory) = inventory {
                    print_inventory(out, inventory)?;
                }
                if reported.is_some() {
                    print_components(out, components)?;
                }
            }
        }
        DeviceCommand::Accept { id } => {
            let d = store.resolve_device(&id)?;
            change.device(&d);
            store.set_device_status(&d.id, DeviceStatus::Accepted)?;
            writeln!(out, "device {} ({}) accepted", d.id, d.name)?;
        }
        DeviceCommand::Reject { id } => {
            let d = store.resolve_device(&id)?;
            change.device(&d);
            store.set_device_status(&d.id, DeviceStatus::Rejected)?;
            writeln!(out, "device {} ({}) rejected", d.id, d.name)?;
        }
        DeviceCommand::Remove { id } => {
            let d = store.resolve_device(&id)?;
            change.device(&d);
            store.remove_device(&d.id)?;
            writeln!(out, "device {} ({}) removed", d.id, d.name)?;
        }
        DeviceCommand::Tag {
            device,
            tags,
            remove,
            json,
        } => {
            let d = store.resolve_device(&device)?;
            change.device(&d);
            let after = if remove {
                store.set_tags(&d.id, &[], &tags)?
            } else {
                store.set_tags(&d.id, &tags, &[])?
            };
            if json {
                print_json(
                    out,
                    &serde_json::json!({ "device_id": d.id, "tags": after }),
                )?;
            } else {
                writeln!(out, "{}", words(&after))?;
            }
        }
        DeviceCommand::State { device, json } => {
            let d = store.resolve_device(&device)?;
            let state = store.device_state(&d.id)?;
            if json {
                print_json(out, &state)?;
            } else {
                print_device_state(out, &state)?;
            }
        }
        DeviceCommand::Config { device, set, json } => {
            let d = store.resolve_device(&device)?;
            change.device(&d);
            let overrides = crate::store::config_overrides(&set)?;
            let desired = store.push_config(&d.id, &overrides)?;
            change.set("version", desired.version);
            if json {
                print_json(out, &desired)?;
            } else {
                writeln!(
                    out,
                    "configuration version {} pushed to {}",
                    desired.version,
                    escape_controls(&d.name)
                )?;
            }
        }
    }
    Ok(())
}

/// When the relay last heard from the device: now if its link is up, else when it went down.
fn last_seen(d: &Device) -> String {
    if d.online {
        "now".into()
    } else {
        dash(&d.last_disconnected)
    }
}

fn device_rows(devices: &[Device]) -> Vec<Vec<String>> {
    devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.tenant.clone(),
                d.status.to_string(),
                if d.online { "yes" } else { "no" }.into(),
                last_seen(d),
                dash(&d.remote_addr),
                dash(&d.agent_version),
            ]
        })
        .collect()
}

/// The columns of `relay device list`.
pub(super) const DEVICE_HEADER: &[&str] = &[
    "ID",
    "NAME",
    "TENANT",
    "STATUS",
    "ONLINE",
    "LAST-SEEN",
    "ADDRESS",
    "VERSION",
];

/// What a device reported about itself, for `relay device show`.
fn print_inventory(out: &mut dyn Write, inventory: &Inventory) -> Result<()> {
    let rows = [
        ("hostname", inventory.hostname.clone()),
        ("machine-id", dash(&inventory.machine_id)),
        ("kernel", inventory.kernel.clone()),
        ("os", dash(&inventory.os)),
        ("arch", inventory.arch.clone()),
        (
            "memory",
            format!("{} MiB", inventory.memory_bytes / (1024 * 1024)),
        ),
        ("agent", inventory.agent_version.clone()),
    ];
    print_fields(out, 18, &rows)?;
    let disks: Vec<String> = inventory
        .disks
        .iter()
        .map(|d| {
            format!(
                "{} {} {} {} {}",
                d.mount,
                d.device,
                d.fs,
                human_bytes(d.total_bytes),
                human_bytes(d.available_bytes)
            )
        })
        .collect();
    print_list(out, "disks", &disks)?;
    let interfaces: Vec<String> = inventory
        .interfaces
        .iter()
        .map(|i| {
            let addresses = if i.addresses.is_empty() {
                "-".to_string()
            } else {
                i.addresses.join(",")
            };
            format!("{} {} {addresses}", i.name, dash(&i.mac))
        })
        .collect();
    print_list(out, "interfaces", &interfaces)
}

/// The components a device reported, for `relay device show`.
fn print_components(out: &mut dyn Write, components: &[ReportedComponent]) -> Result<()> {
    let lines: Vec<String> = components
        .iter()
        .map(|c| format!("{} {} {}", c.name, c.version, c.state))
        .collect();
    print_list(out, "components", &lines)
}

/// `relay device state` in text: the versions and outcome, then the components side by side.
fn print_device_state(out: &mut dyn Write, state: &crate::store::DeviceState) -> Result<()> {
    let desired = state.desired.as_ref();
    let reported = state.reported.as_ref();
    let desired_version = match desired {
        Some(d) => match &d.deployment_id {
            Some(dep) => format!("{} (deployment {dep})", d.version),
            None => d.version.to_string(),
        },
        None => "-".into(),
    };
    let rows = [
        ("desired version", desired_version),
        (
            "reported version",
            reported.map_or_else(|| "-".into(), |r| r.version.to_string()),
        ),
        (
            "status",
            reported
                .and_then(|r| r.status)
                .map_or_else(|| "-".into(), |s| s.to_string()),
        ),
        ("message", dash(&reported.and_then(|r| r.message.clone()))),
        ("reported at", dash(&state.reported_at)),
    ];
    print_fields(out, 18, &rows)?;
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    if let Some(d) = desired {
        names.extend(d.components.keys().map(String::as_str));
    }
    if let Some(r) = reported {
        names.extend(r.components.iter().map(|c| c.name.as_str()));
    }
    let table_rows: Vec<Vec<String>> = names
        .into_iter()
        .map(|name| {
            let want = desired.and_then(|d| d.components.get(name));
            let have = reported.and_then(|r| r.components.iter().find(|c| c.name == name));
            let failed = reported.and_then(|r| {
                r.failed
                    .iter()
                    .find(|f| f.name == name && want.is_some_and(|w| w.version == f.version))
            });
            // Says how the two sides differ, so a component removed on the device by hand, or
            // one that failed, does not read as if it were running.
            let note = match (want, have, failed) {
                (_, _, Some(f)) => format!("failed: {}", f.error),
                (Some(_), None, None) if reported.is_some() => "not on the device".into(),
                (Some(w), Some(h), None) if w.version != h.version => {
                    "device runs another version".into()
                }
                (None, Some(_), None) => "not desired (deployed on the device)".into(),
                _ => "-".into(),
            };
            vec![
                name.to_string(),
                want.map_or_else(|| "-".into(), |c| c.version.clone()),
                have.map_or_else(|| "-".into(), |c| c.version.clone()),
                have.map_or_else(|| "-".into(), |c| c.state.clone()),
                note,
            ]
        })
        .collect();
    writeln!(out)?;
    out.write_all(
        table(
            &[
                "NAME",
                "DESIRED VERSION",
                "REPORTED VERSION",
                "STATE",
                "NOTE",
            ],
            &table_rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TestResult, enrolled_board, relay};
    use tether_protocol::fleet::{Inventory, ReportedComponent};

    #[test]
    fn device_commands_take_an_id_or_a_unique_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let (store, device) = enrolled_board(d, &["--require-accept"])?;
        store.mark_online(&device.id, "192.0.2.1:4000", None)?;
        let list = relay(d, &["device", "list"])?;
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 2, "{list}");
        // Columns line up: every header starts where its value starts.
        for (header, value) in [
            ("STATUS", "pending"),
            ("ONLINE", "yes"),
            ("LAST-SEEN", "now"),
        ] {
            assert_eq!(lines[0].find(header), lines[1].find(value), "{list}");
        }
        assert!(lines[1].contains("192.0.2.1:4000") && lines[1].contains("0.1.0"));
        assert_eq!(
            relay(d, &["device", "accept", "board1"])?,
            format!("device {} (board1) accepted\n", device.id)
        );
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", &device.id, "--json"])?)?;
        assert_eq!(shown["status"], "accepted");
        assert_eq!(shown["online"], true);
        let text = relay(d, &["device", "show", "board1"])?;
        assert!(text.contains("status:            accepted"), "{text}");
        relay(d, &["device", "reject", &device.id])?;
        assert_eq!(
            store.unwelcome_devices(std::slice::from_ref(&device.id))?,
            vec![device.id.clone()]
        );
        relay(d, &["device", "remove", "board1"])?;
        assert!(store.device(&device.id)?.is_none());
        Ok(())
    }

    #[test]
    fn device_show_includes_the_reported_inventory_and_components() -> TestResult {
        use tether_protocol::fleet::{Disk, Interface, ReportedState};
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let (store, device) = enrolled_board(d, &[])?;
        // Nothing reported yet: no inventory lines, and null / [] in JSON.
        let text = relay(d, &["device", "show", "board1"])?;
        assert!(
            !text.contains("hostname:") && !text.contains("components:"),
            "{text}"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", "board1", "--json"])?)?;
        assert!(shown["inventory"].is_null(), "{shown}");
        assert_eq!(shown["components"], serde_json::json!([]));

        let inventory = Inventory {
            hostname: "board1.local".into(),
            machine_id: Some("0123abcd".into()),
            kernel: "6.1.0-18-arm64".into(),
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            os_version: Some("12".into()),
            arch: "aarch64".into(),
            memory_bytes: 4 * 1024 * 1024 * 1024,
            disks: vec![Disk {
                mount: "/".into(),
                device: "/dev/mmcblk0p2".into(),
                fs: "ext4".into(),
                total_bytes: 32 * 1024 * 1024 * 1024,
                available_bytes: 3 * 1024 * 1024 * 1024 / 2,
            }],
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    mac: Some("dc:a6:32:01:02:03".into()),
                    addresses: vec!["192.168.1.20/24".into(), "fe80::1/64".into()],
                },
                Interface {
                    name: "wg0".into(),
                    mac: None,
                    addresses: vec![],
                },
            ],
            agent_version: "0.2.0".into(),
        };
        store.record_report(
            &device.id,
            &ReportedState {
                components: vec![ReportedComponent {
                    name: "com.example.app".into(),
                    version: "1.0.0".into(),
                    state: "running".into(),
                    errors: 0,
                    restarts: 0,
                    last_error: None,
                    configuration: serde_json::json!({}),
                }],
                inventory: Some(inventory.clone()),
                ..Default::default()
            },
        )?;
        let text = relay(d, &["device", "show", "board1"])?;
        for line in [
            "hostname:          board1.local\n",
            "machine-id:        0123abcd\n",
            "kernel:            6.1.0-18-arm64\n",
            "os:                Debian GNU/Linux 12 (bookworm)\n",
            "arch:              aarch64\n",
            "memory:            4096 MiB\n",
            "agent:             0.2.0\n",
            "disks:\n  / /dev/mmcblk0p2 ext4 32.0G 1.5G\n",
            "interfaces:\n  eth0 dc:a6:32:01:02:03 192.168.1.20/24,fe80::1/64\n  wg0 - -\n",
            "components:\n  com.example.app 1.0.0 running\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", &device.id, "--json"])?)?;
        assert_eq!(shown["inventory"], serde_json::to_value(&inventory)?);
        assert_eq!(shown["components"][0]["name"], "com.example.app");
        assert_eq!(shown["tags"], serde_json::json!([]));
        assert_eq!(shown["name"], "board1");
        Ok(())
    }
}
