//! The OTA engine's decisions, apart from the devices and the boot environment they act on:
//! which slots a bundle's images go to, how `BOOT_ORDER` changes, what a boot after an update
//! means (committed on trial, or fallen back), which slot a rollback boots, and the downgrade
//! rule. Pure functions, tested here without a slot or a bootloader
//! ([`crate::ota::update`] carries them out).

use std::collections::BTreeMap;
use std::path::Path;

use tether_protocol::bundle::ImageEntry;

use crate::config::SlotConfig;
use crate::ota::error::OtaError;
use crate::ota::state::{OtaState, Pending};

/// The slots that take a bundle's images: for each image, in order, the first configured slot
/// of its class that is not the running one, and that is large enough for it. An image of a
/// class without the running slot is refused: nothing tells which of its slots is in use. `capacity`
/// says how many bytes a slot's device holds (`None`: no limit, a new file).
pub fn target_slots<'a>(
    slots: &'a [SlotConfig],
    images: &[ImageEntry],
    booted: &str,
    mut capacity: impl FnMut(&Path) -> Result<Option<u64>, OtaError>,
) -> Result<Vec<&'a SlotConfig>, OtaError> {
    let mut targets = Vec::new();
    for image in images {
        // Which slot of the class runs must be known, or "not the running one" means nothing
        // and the running slot could be overwritten.
        if !slots
            .iter()
            .any(|s| s.class == image.class && s.name == booted)
        {
            return Err(OtaError::Slot(format!(
                "no slot of class {:?} is the running {booted}, so none of its slots can be told safe to write",
                image.class
            )));
        }
        let slot = slots
            .iter()
            .find(|s| s.class == image.class && s.name != booted)
            .ok_or_else(|| {
                OtaError::Slot(format!(
                    "no slot of class {:?} other than the running {booted}",
                    image.class
                ))
            })?;
        if let Some(capacity) = capacity(&slot.device)?
            && image.size > capacity
        {
            return Err(OtaError::Slot(format!(
                "image {} is {} bytes, slot {} ({}) holds {capacity}",
                image.class,
                image.size,
                slot.name,
                slot.device.display()
            )));
        }
        targets.push(slot);
    }
    Ok(targets)
}

/// `BOOT_ORDER` as the boot environment holds it, or the configured slots in order when it
/// holds none.
pub fn boot_order(env: &BTreeMap<String, String>, slots: &[SlotConfig]) -> Vec<String> {
    env.get("BOOT_ORDER")
        .map(|o| o.split_whitespace().map(String::from).collect())
        .unwrap_or_else(|| slots.iter().map(|s| s.name.clone()).collect())
}

/// `order` with `first` in front, in their order, and the other slots after them as they were:
/// the boot order that tries `first` next (an update on trial, a commit, a rollback).
pub fn order_first(order: &[String], first: &[String]) -> Vec<String> {
    let mut out = first.to_vec();
    out.extend(order.iter().filter(|n| !first.contains(n)).cloned());
    out
}

/// `order` with `slot` moved to the end: the boot order after `slot` was marked bad.
pub fn order_last(order: &[String], slot: &str) -> Vec<String> {
    let mut out: Vec<String> = order.iter().filter(|n| *n != slot).cloned().collect();
    out.push(slot.to_string());
    out
}

/// What a boot means for the update that was pending, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterBoot {
    /// Nothing was pending: the running slot is good (it gets its boot attempts back).
    NothingPending,
    /// The pending slot is not the one running: it never committed and the bootloader went
    /// back. `slot` is marked bad; `outcome` says what happened.
    FellBack {
        /// The slot the update went into.
        slot: String,
        /// How the update ended.
        outcome: String,
    },
    /// The pending update is running on trial: the health check decides between commit and
    /// rollback.
    OnTrial(Pending),
}

/// The meaning of booting `booted` with `pending` recorded.
pub fn after_boot(pending: Option<&Pending>, booted: &str) -> AfterBoot {
    match pending {
        None => AfterBoot::NothingPending,
        Some(p) if p.slot != booted => AfterBoot::FellBack {
            slot: p.slot.clone(),
            outcome: format!(
                "rolled back: slot {} ({}) did not commit, the bootloader went back to {booted}",
                p.slot, p.version
            ),
        },
        Some(p) => AfterBoot::OnTrial(p.clone()),
    }
}

/// How an update on trial ends whose health check failed with `why`.
pub fn failed_health_outcome(pending: &Pending, booted: &str, why: &str) -> String {
    format!(
        "rolled back: {} in slot {booted} failed its health check: {why}",
        pending.version
    )
}

/// What `agent ota rollback` does.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollback<'a> {
    /// An update is installed but not booted yet: cancel it (its slot is marked bad) and stay
    /// on the running slot.
    CancelPending {
        /// The slot the update went into.
        slot: String,
        /// How the update ended.
        outcome: String,
    },
    /// Boot this slot next: the other good slot of the running one's class.
    Boot(&'a SlotConfig),
}

/// The rollback from the running slot `booted`, with `state` as the agent recorded it.
pub fn rollback<'a>(
    slots: &'a [SlotConfig],
    state: &OtaState,
    booted: &str,
) -> Result<Rollback<'a>, OtaError> {
    if let Some(pending) = &state.pending
        && pending.slot != booted
    {
        return Ok(Rollback::CancelPending {
            slot: pending.slot.clone(),
            outcome: format!(
                "cancelled: {} in slot {} was not booted",
                pending.version, pending.slot
            ),
        });
    }
    let class = slots
        .iter()
        .find(|s| s.name == booted)
        .map(|s| s.class.clone())
        .unwrap_or_default();
    slots
        .iter()
        .find(|s| {
            s.class == class
                && s.name != booted
                && state.slots.get(&s.name).is_none_or(|i| i.state == "good")
        })
        .map(Rollback::Boot)
        .ok_or_else(|| {
            OtaError::Slot(format!(
                "no other good slot of class {class:?} to go back to"
            ))
        })
}

/// The downgrade policy: a bundle older than the running version is refused, and so is any
/// bundle while the running version is unknown, since an unknown version could be newer than
/// the bundle: a board moves to an older, or possibly older, version only when told to.
/// `allow` (`--allow-downgrade`, `ota.allow_downgrade`) accepts both.
pub fn check_version(
    bundle: &str,
    running: Option<&str>,
    booted: &str,
    allow: bool,
) -> Result<(), OtaError> {
    if allow {
        return Ok(());
    }
    match running {
        None => Err(OtaError::UnknownVersion {
            bundle: bundle.to_string(),
            slot: booted.to_string(),
        }),
        Some(running) if older(bundle, running) => Err(OtaError::Downgrade {
            bundle: bundle.to_string(),
            running: running.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether semver `a` is lower than `b` (unparsable versions never count as lower).
fn older(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::state::SlotInfo;
    use std::path::PathBuf;
    use tether_protocol::bundle::Compression;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn slot(name: &str, class: &str) -> SlotConfig {
        SlotConfig {
            name: name.into(),
            class: class.into(),
            device: PathBuf::from(format!("/dev/{class}-{name}")),
        }
    }

    fn image(class: &str, size: u64) -> ImageEntry {
        ImageEntry {
            class: class.into(),
            size,
            sha256: "0".repeat(64),
            stored_size: size,
            compression: Compression::None,
        }
    }

    fn names(slots: &[&SlotConfig]) -> Vec<String> {
        slots.iter().map(|s| s.name.clone()).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Two rootfs slots, A and B, and two kernel slots, KA and KB, whose names say nothing of
    /// which rootfs they go with.
    fn board() -> Vec<SlotConfig> {
        vec![
            slot("A", "rootfs"),
            slot("B", "rootfs"),
            slot("KA", "kernel"),
            slot("KB", "kernel"),
        ]
    }

    #[test]
    fn images_go_to_a_slot_of_their_class_that_is_not_running() -> TestResult {
        let slots = board();
        let unlimited = |_: &Path| Ok(None);
        let t = target_slots(&slots, &[image("rootfs", 10)], "A", unlimited)?;
        assert_eq!(names(&t), ["B"]);
        let t = target_slots(&slots, &[image("rootfs", 10)], "B", unlimited)?;
        assert_eq!(names(&t), ["A"]);
        // A kernel slot is not the running A by name, yet KA may be the kernel A boots: the
        // image is refused rather than written to a slot that may be in use.
        let e = target_slots(
            &slots,
            &[image("rootfs", 1), image("kernel", 1)],
            "A",
            unlimited,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("no slot of class \"kernel\" is the running A"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn an_image_without_a_free_slot_or_room_is_refused() {
        let slots = board();
        let e = target_slots(&slots, &[image("bootloader", 1)], "A", |_| Ok(None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("no slot of class \"bootloader\" is the running A"),
            "{e}"
        );
        let single = [slot("A", "rootfs")];
        assert!(target_slots(&single, &[image("rootfs", 1)], "A", |_| Ok(None)).is_err());
        let e = target_slots(&slots, &[image("rootfs", 2000)], "A", |_| Ok(Some(1000)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("image rootfs is 2000 bytes, slot B"), "{e}");
        assert!(e.contains("holds 1000"), "{e}");
        // Exactly the slot's size fits.
        assert!(target_slots(&slots, &[image("rootfs", 1000)], "A", |_| Ok(Some(1000))).is_ok());
    }

    #[test]
    fn the_boot_order_puts_the_next_slot_first_and_a_bad_one_last() {
        let slots = board();
        let mut env = BTreeMap::new();
        assert_eq!(boot_order(&env, &slots), strings(&["A", "B", "KA", "KB"]));
        env.insert("BOOT_ORDER".to_string(), "B  A".to_string());
        let order = boot_order(&env, &slots);
        assert_eq!(order, strings(&["B", "A"]));
        assert_eq!(order_first(&order, &strings(&["A"])), strings(&["A", "B"]));
        assert_eq!(order_first(&order, &strings(&["B"])), strings(&["B", "A"]));
        // Slots not in the order yet (a kernel slot) go in front too.
        assert_eq!(
            order_first(&order, &strings(&["KA", "A"])),
            strings(&["KA", "A", "B"])
        );
        assert_eq!(order_last(&order, "B"), strings(&["A", "B"]));
        assert_eq!(order_last(&order, "A"), strings(&["B", "A"]));
        assert_eq!(order_last(&order, "KB"), strings(&["B", "A", "KB"]));
    }

    fn pending(slot: &str, from: &str) -> Pending {
        Pending {
            slot: slot.into(),
            version: "2.0.0".into(),
            from: from.into(),
        }
    }

    #[test]
    fn a_boot_commits_on_trial_or_notices_the_fallback() {
        assert_eq!(after_boot(None, "A"), AfterBoot::NothingPending);
        assert_eq!(
            after_boot(Some(&pending("B", "A")), "B"),
            AfterBoot::OnTrial(pending("B", "A"))
        );
        assert_eq!(
            after_boot(Some(&pending("B", "A")), "A"),
            AfterBoot::FellBack {
                slot: "B".into(),
                outcome:
                    "rolled back: slot B (2.0.0) did not commit, the bootloader went back to A"
                        .into()
            }
        );
        assert_eq!(
            failed_health_outcome(&pending("B", "A"), "B", "\"check\" exited with 1"),
            "rolled back: 2.0.0 in slot B failed its health check: \"check\" exited with 1"
        );
    }

    fn state(slots: &[(&str, &str)], pending: Option<Pending>) -> OtaState {
        OtaState {
            slots: slots
                .iter()
                .map(|(n, s)| {
                    let info = SlotInfo {
                        version: None,
                        state: s.to_string(),
                    };
                    (n.to_string(), info)
                })
                .collect(),
            pending,
            last_outcome: None,
        }
    }

    #[test]
    fn a_rollback_boots_the_other_good_slot_or_cancels_what_was_not_booted() -> TestResult {
        let slots = board();
        // Never recorded counts as good: a factory-flashed slot.
        assert_eq!(
            rollback(&slots, &state(&[], None), "A")?,
            Rollback::Boot(&slots[1])
        );
        assert_eq!(
            rollback(&slots, &state(&[("A", "good"), ("B", "good")], None), "B")?,
            Rollback::Boot(&slots[0])
        );
        // Installed, not booted yet: cancelled; the running slot stays.
        assert_eq!(
            rollback(
                &slots,
                &state(&[("B", "pending")], Some(pending("B", "A"))),
                "A"
            )?,
            Rollback::CancelPending {
                slot: "B".into(),
                outcome: "cancelled: 2.0.0 in slot B was not booted".into()
            }
        );
        // Running the update on trial: back to the slot it came from.
        assert_eq!(
            rollback(
                &slots,
                &state(&[("A", "good"), ("B", "pending")], Some(pending("B", "A"))),
                "B"
            )?,
            Rollback::Boot(&slots[0])
        );
        // Nothing good to go back to.
        let e = rollback(&slots, &state(&[("B", "bad")], None), "A")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("no other good slot of class \"rootfs\" to go back to"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn an_unknown_running_version_accepts_nothing_unless_allowed() -> TestResult {
        let e = check_version("1.1.0", None, "A", false)
            .err()
            .ok_or("accepted with an unknown running version")?
            .to_string();
        for part in [
            "running OS version is unknown",
            "slot A",
            "bundle version 1.1.0",
            "--allow-downgrade",
            "ota.factory_version",
            "ota.allow_downgrade: true",
        ] {
            assert!(e.contains(part), "{e} lacks {part}");
        }
        check_version("1.1.0", None, "A", true)?;
        Ok(())
    }

    #[test]
    fn a_known_running_version_refuses_only_older_bundles() -> TestResult {
        let e = check_version("1.0.0", Some("1.1.0"), "B", false)
            .err()
            .ok_or("downgrade accepted")?;
        assert!(matches!(e, OtaError::Downgrade { .. }), "{e}");
        assert!(
            e.to_string().contains("lower than the running 1.1.0"),
            "{e}"
        );
        check_version("1.0.0", Some("1.1.0"), "B", true)?;
        check_version("1.1.0", Some("1.1.0"), "B", false)?;
        check_version("1.2.0", Some("1.1.0"), "B", false)?;
        check_version("1.2.0-rc.1", Some("1.1.0"), "B", false)?;
        Ok(())
    }
}
