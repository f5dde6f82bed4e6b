//! cairn-initrd: everything about the initramfs. The `/init` binary
//! (`src/bin/init.rs`, PID 1 of the initramfs: find the slot, mount the
//! root squashfs, set up the writable state, switch_root into systemd) and
//! the pieces the builder uses to pack it: the newc [`cpio`] writer, the
//! kernel [`modules`] closure and the initramfs [`layout`] contract. It
//! does not choose packages or build images.
//!
//! Modules used only by `/init` ([`cmdline`], [`blockdev`], [`bootdisk`],
//! [`partition_table`], [`ext4`], [`boot`], [`dm`], [`verity`]) are public so they can be tested
//! and documented; the builder has no need for them.

pub mod blockdev;
pub mod boot;
pub mod bootdisk;
pub mod cmdline;
pub mod cpio;
pub mod dm;
pub mod ext4;
pub mod layout;
pub mod modules;
pub mod partition_table;
pub mod verity;

pub use cpio::CpioWriter;
pub use modules::{
    closure, closure_with_builtin, ModulesError, DEFAULT_MODULES, MODULES_ORDER_FILE,
};

/// Where `/init` expects the root image when booted with `cairn.root=ram`.
pub use cairn_formats::image_dir::RAM_ROOT_IMAGE;
