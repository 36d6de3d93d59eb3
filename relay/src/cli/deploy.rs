//! `relay deploy …`: deployments of recipes (and OS bundles) to a device or a tag, and where
//! each stands on its devices.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::change::Change;
use super::output::{dash, print_fields, print_json, table};
use crate::config::RelayConfig;
use crate::store::{NewDeployment, Store, Target};

/// `relay deploy …`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Deploy recipes to a device or to every accepted device with a tag; prints the
    /// deployment id.
    Create {
        /// Tenant of the devices.
        #[arg(long)]
        tenant: String,
        /// tag:TAG (every accepted device with the tag) or device:DEVICE (id or name).
        #[arg(long, value_name = "tag:TAG|device:DEVICE")]
        target: Target,
        /// Recipe files, one component each: `--recipe a.yaml b.yaml`, or the flag repeated.
        #[arg(
            long = "recipe",
            value_name = "FILE",
            num_args = 1..,
            required_unless_present_any = ["bundle", "remove"]
        )]
        recipes: Vec<PathBuf>,
        /// Directory holding the files the recipes name by bare file name (`uri: server.py`,
        /// as for `agent app deploy --artifacts`): each is checked against its sha256, stored
        /// as the tenant's artifact, and the recipe deployed names it on the relay, under the
        /// same file name on the device.
        #[arg(long, value_name = "DIR")]
        artifacts: Option<PathBuf>,
        /// Component to take off the devices (undeploy); repeatable. Only this deployment's
        /// outcome depends on it.
        #[arg(long = "remove", value_name = "COMPONENT")]
        remove: Vec<String>,
        /// Signed OS bundle (agent bundle create) the devices install (A/B update).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// Configuration override: COMPONENT:KEY=VALUE for one component, KEY=VALUE for all.
        #[arg(long = "set", value_name = "[COMPONENT:]KEY=VALUE")]
        set: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show where a deployment stands on each of its devices.
    Status {
        /// Deployment id (dep_…).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List deployments.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The audit record of `cmd`, before it runs.
pub(super) fn describe(cmd: &DeployCommand) -> Change {
    match cmd {
        DeployCommand::Create {
            tenant,
            target,
            recipes,
            bundle,
            set,
            ..
        } => {
            let target = match target {
                Target::Tag(t) => format!("tag:{t}"),
                Target::Device(d) => format!("device:{d}"),
            };
            let file = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
            Change::new("deploy.create", Some(tenant), Some(&target))
                .with("target", &target)
                .with("recipes", recipes.iter().map(file).collect::<Vec<_>>())
                .with("bundle", bundle.as_ref().and_then(file))
                .with("set", set)
        }
        DeployCommand::Status { .. } | DeployCommand::List { .. } => Change::read(),
    }
}

/// Runs a `relay deploy` command.
pub(super) fn run(
    out: &mut dyn Write,
    store: &Store,
    config: &RelayConfig,
    cmd: DeployCommand,
) -> Result<()> {
    match cmd {
        DeployCommand::Create {
            tenant,
            target,
            recipes,
            artifacts,
            remove,
            bundle,
            set,
            json,
        } => {
            let os = match &bundle {
                Some(path) => {
                    let data = std::fs::read(path)
                        .with_context(|| format!("reading the bundle {}", path.display()))?;
                    // Signatures are the devices' to check against their keyrings; here the
                    // manifest only names the version.
                    let (manifest, _) =
                        tether_protocol::bundle::read_header_unverified(&mut &data[..])
                            .with_context(|| format!("reading the bundle {}", path.display()))?;
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "bundle".into());
                    let stored =
                        store.put_artifact(&config.artifacts_dir(), &tenant, &name, &data)?;
                    Some(tether_protocol::fleet::DesiredOs {
                        version: manifest.version,
                        bundle_sha256: stored.sha256,
                    })
                }
                None => None,
            };
            let mut texts = Vec::with_capacity(recipes.len());
            for path in &recipes {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the recipe {}", path.display()))?;
                texts.push((path.display().to_string(), text));
            }
            let files = match &artifacts {
                Some(dir) => crate::store::read_local_artifacts(dir, &texts)
                    .with_context(|| format!("--artifacts {}", dir.display()))?,
                None => Vec::new(),
            };
            let view = store.create_deployment(
                &config.artifacts_dir(),
                NewDeployment {
                    tenant: &tenant,
                    target,
                    recipes: texts,
                    set,
                    os,
                    artifacts: files,
                    remove,
                },
            )?;
            if json {
                print_json(out, &view)?;
            } else {
                writeln!(out, "{}", view.id)?;
            }
        }
        DeployCommand::Status { id, json } => {
            let view = store
                .deployment(&id, None)?
                .with_context(|| format!("no deployment named {id:?}"))?;
            if json {
                print_json(out, &view)?;
            } else {
                let components: Vec<String> = view
                    .components
                    .iter()
                    .map(|(name, c)| format!("{name} {}", c.version))
                    .collect();
                let rows = [
                    ("deployment", view.id.clone()),
                    ("tenant", view.tenant.clone()),
                    ("target", view.target.clone()),
                    ("created", view.created_at.clone()),
                    ("components", components.join(", ")),
                    ("removes", view.removed.join(", ")),
                ];
                let rows: Vec<(&str, String)> = rows
                    .into_iter()
                    .filter(|(k, v)| *k != "removes" || !v.is_empty())
                    .collect();
                print_fields(out, 12, &rows)?;
                let devices: Vec<Vec<String>> = view
                    .devices
                    .iter()
                    .map(|d| {
                        vec![
                            d.device_id.clone(),
                            d.device_name.clone(),
                            d.status.to_string(),
                            dash(&d.message),
                            d.updated_at.clone(),
                        ]
                    })
                    .collect();
                writeln!(out)?;
                out.write_all(
                    table(
                        &["DEVICE", "NAME", "STATUS", "MESSAGE", "UPDATED"],
                        &devices,
                    )
                    .as_bytes(),
                )?;
            }
        }
        DeployCommand::List { tenant, json } => {
            let views = store.deployments(tenant.as_deref())?;
            if json {
                print_json(out, &views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.id.clone(),
                            v.tenant.clone(),
                            v.target.clone(),
                            v.components
                                .keys()
                                .cloned()
                                .chain(v.removed.iter().map(|r| format!("-{r}")))
                                .collect::<Vec<_>>()
                                .join(","),
                            status_summary(v),
                            v.created_at.clone(),
                        ]
                    })
                    .collect();
                out.write_all(
                    table(
                        &["ID", "TENANT", "TARGET", "COMPONENTS", "DEVICES", "CREATED"],
                        &rows,
                    )
                    .as_bytes(),
                )?;
            }
        }
    }
    Ok(())
}

/// How many devices of a deployment are in each status, like `succeeded 2, pending 1`.
fn status_summary(view: &crate::store::DeploymentView) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for d in &view.devices {
        *counts.entry(d.status.to_string()).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TestResult, enrolled_board, relay};
    use super::super::{Cli, Command};
    use super::*;
    use clap::Parser;

    #[test]
    fn fleet_commands_tag_store_deploy_and_configure() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let (_store, device) = enrolled_board(d, &[])?;
        assert_eq!(
            relay(d, &["device", "tag", "board1", "eu", "edge"])?,
            "edge eu\n"
        );
        assert_eq!(
            relay(d, &["device", "tag", "board1", "eu", "--remove"])?,
            "edge\n"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "show", "board1", "--json"])?)?;
        assert_eq!(shown["tags"], serde_json::json!(["edge"]));
        assert_eq!(shown["name"], "board1");
        assert!(relay(d, &["device", "show", "board1"])?.contains("tags:              edge"));

        // An artifact, and a recipe that needs it.
        let file = d.join("tool.bin");
        std::fs::write(&file, b"tool")?;
        let file_arg = file.display().to_string();
        // Whose it is must be said: there is no default tenant for a file.
        let e = relay(d, &["artifact", "put", &file_arg])
            .err()
            .unwrap_or_default();
        assert!(e.contains("--tenant"), "{e}");
        let e = relay(d, &["artifact", "put", "--tenant", "nope", &file_arg])
            .err()
            .unwrap_or_default();
        assert!(e.contains("nope"), "{e}");
        let sha = relay(d, &["artifact", "put", "--tenant", "acme", &file_arg])?;
        let sha = sha.trim();
        assert!(tether_protocol::fleet::is_sha256(sha), "{sha}");
        assert_eq!(std::fs::read(d.join("artifacts").join(sha))?, b"tool");
        let listed = relay(d, &["artifact", "list", "--tenant", "acme"])?;
        assert!(
            listed.contains(sha) && listed.contains("tool.bin") && listed.contains("acme"),
            "{listed}"
        );
        let listed: serde_json::Value =
            serde_json::from_str(&relay(d, &["artifact", "list", "--json"])?)?;
        assert_eq!(listed[0]["tenant"], "acme");
        assert_eq!(listed[0]["sha256"], sha);
        let recipe = d.join("app.yaml");
        std::fs::write(
            &recipe,
            format!(
                "name: com.example.app\nversion: 1.0.0\nmanifests:\n  - platform: {{ os: linux }}\n    artifacts:\n      - uri: relay:sha256:{sha}\n        sha256: {sha}\n    lifecycle:\n      run:\n        script: sleep 1000\n"
            ),
        )?;
        let recipe_arg = recipe.display().to_string();
        let id = relay(
            d,
            &[
                "deploy",
                "create",
                "--tenant",
                "acme",
                "--target",
                "tag:edge",
                "--recipe",
                &recipe_arg,
                "--set",
                "com.example.app:port=9000",
            ],
        )?;
        let id = id.trim();
        assert!(id.starts_with("dep_"), "{id}");
        let status = relay(d, &["deploy", "status", id])?;
        assert!(
            status.contains("com.example.app 1.0.0") && status.contains("pending"),
            "{status}"
        );
        let view: serde_json::Value =
            serde_json::from_str(&relay(d, &["deploy", "status", id, "--json"])?)?;
        assert_eq!(view["devices"][0]["device_id"], device.id.as_str());
        let list = relay(d, &["deploy", "list", "--tenant", "acme"])?;
        assert!(list.contains(id) && list.contains("pending 1"), "{list}");
        let e = relay(d, &["deploy", "status", "dep_nope"])
            .err()
            .unwrap_or_default();
        assert!(e.contains("dep_nope"), "{e}");
        let e = relay(
            d,
            &[
                "deploy",
                "create",
                "--tenant",
                "acme",
                "--target",
                "tag:nobody",
                "--recipe",
                &recipe_arg,
            ],
        )
        .err()
        .unwrap_or_default();
        assert_eq!(e, "no device of tenant acme has tag nobody");

        // Desired and reported state side by side, then a configuration push.
        let state = relay(d, &["device", "state", "board1"])?;
        assert!(state.contains(&format!("1 (deployment {id})")), "{state}");
        assert!(
            state.contains("NAME             DESIRED VERSION  REPORTED VERSION  STATE"),
            "{state}"
        );
        assert!(
            state.contains("com.example.app  1.0.0            -"),
            "{state}"
        );
        assert_eq!(
            relay(
                d,
                &[
                    "device",
                    "config",
                    "board1",
                    "--set",
                    "com.example.app:port=9100"
                ]
            )?,
            "configuration version 2 pushed to board1\n"
        );
        let state: serde_json::Value =
            serde_json::from_str(&relay(d, &["device", "state", "board1", "--json"])?)?;
        assert_eq!(
            state["desired"]["components"]["com.example.app"]["configuration"],
            serde_json::json!({ "port": 9100 })
        );
        let e = relay(d, &["device", "config", "board1", "--set", "port=1"])
            .err()
            .unwrap_or_default();
        assert!(e.contains("port=1"), "{e}");
        // A malformed target is a usage error.
        let e = Cli::try_parse_from([
            "relay", "deploy", "create", "--tenant", "acme", "--target", "edge", "--recipe", "a",
        ])
        .err();
        assert_eq!(e.map(|e| e.exit_code()), Some(2));
        Ok(())
    }

    #[test]
    fn deploy_create_takes_several_recipes_after_one_flag_and_removals() -> TestResult {
        let recipes = |args: &[&str]| -> Result<(Vec<PathBuf>, Vec<String>), String> {
            let mut all = vec![
                "relay", "deploy", "create", "--tenant", "acme", "--target", "tag:edge",
            ];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
                Command::Deploy(DeployCommand::Create {
                    recipes, remove, ..
                }) => Ok((recipes, remove)),
                other => Err(format!("parsed as {other:?}")),
            }
        };
        let (r, _) = recipes(&["--recipe", "a.yaml", "b.yaml", "--set", "port=1"])?;
        assert_eq!(r, [PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]);
        let (r, _) = recipes(&["--recipe", "a.yaml", "--recipe", "b.yaml", "c.yaml"])?;
        assert_eq!(r.len(), 3);
        // Only removals: no recipe needed.
        let (r, remove) = recipes(&["--remove", "com.example.a", "--remove", "com.example.b"])?;
        assert!(r.is_empty());
        assert_eq!(remove, ["com.example.a", "com.example.b"]);
        assert!(recipes(&[]).is_err(), "nothing to deploy was accepted");
        Ok(())
    }
}
