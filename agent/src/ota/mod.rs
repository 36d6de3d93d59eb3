//! A/B OS updates with signed bundles.
//!
//! Start at [`update::Ota`]: install a bundle into the slot that is not running, boot it on
//! trial, commit it when healthy, notice a fallback, roll back. Its decisions (slot choice,
//! boot order, what a boot means, the downgrade rule) are pure functions in [`policy`]; what it
//! knows of the slots is [`state`] (`ota.json`); images are streamed out of a bundle by
//! [`image_copy`]; the bootloader's variables live in a [`bootenv`] (U-Boot, GRUB or a file).
//! [`download`] fetches bundles over HTTP(S) with resume; [`bundle_tool`] builds, signs and
//! verifies bundles (`agent bundle …`).

pub mod bootenv;
pub mod bundle_tool;
pub mod download;
pub mod error;
pub mod image_copy;
pub mod policy;
pub mod state;
pub mod update;
