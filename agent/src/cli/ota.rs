//! `agent keygen`, `agent bundle …` and `agent ota …`: signing keys, bundles, and A/B updates
//! on this board.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use tether_protocol::bundle::Keyring;

use crate::config::AgentConfig;
use crate::ota::update::{InstallOptions, Ota};

/// `agent bundle …`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build a signed bundle from images.
    #[command(
        disable_version_flag = true,
        after_help = "Example:\n  \
        agent bundle create --key release.key --version 1.2.0 --compatible acme-board-rev2 \\\n      \
        --image rootfs=rootfs.ext4 --compress zstd -o update-1.2.0.tbundle"
    )]
    Create {
        /// Secret signing key (agent keygen); repeat to sign with several (key rotation).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// OS version (semver).
        #[arg(long = "version", id = "bundle_version", value_name = "VERSION")]
        version: String,
        /// Board compatible string the bundle is for.
        #[arg(long)]
        compatible: String,
        /// An image, CLASS=FILE (the slot class it goes to). Repeatable.
        #[arg(long, required = true, value_name = "CLASS=FILE")]
        image: Vec<String>,
        /// Compress the images.
        #[arg(long, value_parser = ["zstd", "none"], default_value = "none")]
        compress: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check a bundle's signature against a keyring and every image's sha256.
    Verify {
        /// A .pub file or a directory of them.
        #[arg(long)]
        keyring: PathBuf,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Show a bundle's manifest and signatures (without verifying them).
    Inspect {
        /// The bundle.
        bundle: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agent ota …`
#[derive(Debug, Subcommand)]
pub enum OtaCommand {
    /// Install a bundle into the slot that is not running and reboot into it on trial.
    Install {
        /// Bundle file, - for stdin, or an https:// URL (downloaded first, resuming after
        /// interruptions, then checked like any bundle).
        source: PathBuf,
        /// Do not reboot afterwards.
        #[arg(long)]
        no_reboot: bool,
        /// Install even a version lower than the running one, or any version while the running
        /// one is unknown (no version recorded and no ota.factory_version).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Booted slot, each slot's version and state, the pending update, the last outcome.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// After a boot: commit a pending slot that passes the health check, or record the
    /// fallback (also done by `agent run` when it starts).
    Check,
    /// Mark the running slot good now.
    Commit,
    /// Boot the other good slot next (or cancel an update that was installed but not booted).
    Rollback {
        /// Do not reboot afterwards.
        #[arg(long)]
        no_reboot: bool,
    },
}

/// `agent keygen --out NAME`.
pub fn keygen(out: &std::path::Path) -> Result<ExitCode> {
    let (secret, public, id) = crate::ota::bundle_tool::keygen(out)?;
    outln!("secret key {} (keep it off the boards)", secret.display())?;
    outln!(
        "public key {} (key id {id}): copy it into ota.keyring on the boards",
        public.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `agent bundle …`.
pub fn bundle(cmd: &BundleCommand) -> Result<ExitCode> {
    match cmd {
        BundleCommand::Create {
            key,
            version,
            compatible,
            image,
            compress,
            output,
        } => {
            let mut images = Vec::new();
            for spec in image {
                let (class, file) = spec
                    .split_once('=')
                    .with_context(|| format!("--image {spec:?} is not CLASS=FILE"))?;
                images.push((class.to_string(), PathBuf::from(file)));
            }
            let manifest =
                crate::ota::bundle_tool::create(&crate::ota::bundle_tool::CreateOptions {
                    keys: key.clone(),
                    version: version.clone(),
                    compatible: compatible.clone(),
                    images,
                    compress: compress == "zstd",
                    output: output.clone(),
                })?;
            outln!(
                "{}: {} {} with {} image(s)",
                output.display(),
                manifest.compatible,
                manifest.version,
                manifest.images.len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Verify { keyring, bundle } => {
            let keyring = Keyring::load(keyring)?;
            let manifest = crate::ota::bundle_tool::verify(bundle, &keyring)?;
            outln!(
                "{}: valid: {} {}, signature and {} image hash(es) check out",
                bundle.display(),
                manifest.compatible,
                manifest.version,
                manifest.images.len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Inspect { bundle, json } => {
            let (manifest, signatures) = crate::ota::bundle_tool::inspect(bundle)?;
            if *json {
                let value = serde_json::json!({ "manifest": manifest, "signatures": signatures });
                outln!("{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                outln!("version:     {}", manifest.version)?;
                outln!("compatible:  {}", manifest.compatible)?;
                outln!("created:     {}", manifest.created)?;
                for i in &manifest.images {
                    outln!(
                        "image:       {} {} bytes sha256 {} ({:?}, {} stored)",
                        i.class,
                        i.size,
                        i.sha256,
                        i.compression,
                        i.stored_size
                    )?;
                }
                for s in &signatures {
                    outln!("signed by:   key {}", s.key_id)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `agent ota …`.
pub fn ota(config: &AgentConfig, cmd: &OtaCommand) -> Result<ExitCode> {
    let ota = Ota::open(config)?;
    match cmd {
        OtaCommand::Install {
            source,
            no_reboot,
            allow_downgrade,
        } => {
            let bar = std::io::stdout().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            let mut progress = |done: u64, total: u64| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            };
            let text = source.to_string_lossy().to_string();
            let downloaded = if text.starts_with("https://") || text.starts_with("http://") {
                let dir = config.state_dir.join("ota-download");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                // Named after the URL, so an interrupted download resumes on the next try.
                let name = {
                    use sha2::Digest;
                    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
                };
                let dest = dir.join(format!("{name}.tbundle"));
                let mut shown = |done: u64, total: Option<u64>| {
                    if let Some(b) = &bar {
                        if let Some(t) = total {
                            b.set_length(t);
                        }
                        b.set_position(done);
                    }
                };
                Some(crate::ota::download::fetch(&text, &dest, &mut shown)?)
            } else {
                None
            };
            let source = downloaded.as_deref().unwrap_or(source);
            let manifest = ota
                .install(
                    source,
                    &InstallOptions {
                        allow_downgrade: *allow_downgrade,
                    },
                    &mut progress,
                )
                .with_context(|| format!("installing {}", source.display()))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if let Some(file) = &downloaded {
                let _ = std::fs::remove_file(file);
            }
            let pending = ota.state().pending.map(|p| p.slot).unwrap_or_default();
            outln!(
                "installed {} {} into slot {pending}; it boots next, on trial",
                manifest.compatible,
                manifest.version
            )?;
            if !no_reboot {
                ota.reboot()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        OtaCommand::Status { json } => {
            let st = ota.status()?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&st)?)?;
            } else {
                let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                outln!("booted:      {}", dash(&st.booted))?;
                outln!("boot order:  {}", dash(&st.boot_order))?;
                for s in &st.slots {
                    outln!(
                        "slot {:<6} {:<8} {:<10} {:<12} attempts {} ({})",
                        s.name,
                        s.class,
                        s.state,
                        dash(&s.version),
                        s.attempts_left
                            .map_or_else(|| "-".into(), |a| a.to_string()),
                        s.device.display()
                    )?;
                }
                if let Some(p) = &st.pending {
                    outln!(
                        "pending:     {} in slot {} (from {})",
                        p.version,
                        p.slot,
                        p.from
                    )?;
                }
                outln!("last:        {}", dash(&st.last_outcome))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        OtaCommand::Check => {
            match ota.check_after_boot()? {
                Some(outcome) => outln!("{outcome}")?,
                None => outln!("no update pending")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        OtaCommand::Commit => {
            outln!("{}", ota.commit()?)?;
            Ok(ExitCode::SUCCESS)
        }
        OtaCommand::Rollback { no_reboot } => {
            let slot = ota.rollback()?;
            outln!("slot {slot} boots next")?;
            if !no_reboot {
                ota.reboot()?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
