//! cairn-formats: the contracts between the programs that make, serve and
//! run a cairn image, in one place so that a producer and its consumers
//! cannot disagree: the GPT partition labels and the state partition's
//! never-formatted mark ([`partitions`]), the kernel command-line keys and
//! the kernel's word splitting ([`cmdline`]), the dm-verity layout of a
//! root slot and its command-line value ([`verity`]), the files of an
//! image folder that `cairn build` writes ([`image_dir`]), the config
//! drive's layout ([`config_drive`]), the signed update channel
//! (`channel`, behind the feature of that name), the data map of
//! `disk.raw` that the installer copies (`disk_map`, behind `channel`),
//! the reports machines send `cairn serve` about their install, boots and
//! updates (`lifecycle`, behind `channel`), and the cluster's reboot lock
//! that `cairn-update` takes and fleet's engine drains for
//! (`reboot_lock`, behind `serde`), and how every program prints an
//! error, each cause once ([`report`]). Dependency-free without features
//! (serde and the channel's crypto and JSON behind them), so that `/init`
//! can use it and stay small.
//!
//! Who uses what: `cairn-disk` writes the partitions, `/init` finds them,
//! `cairn-update` writes the slots; the builder writes the image folder,
//! `cairn serve` and `cairn vm` read it; `cairn vm` writes the config drive,
//! `cairn-cloudinit` reads it; the builder writes update bundles,
//! `cairn serve` offers them, `cairn-update` verifies and installs them;
//! `cairn-update` takes the reboot lock, fleet's engine reads it.

#[cfg(feature = "channel")]
pub mod channel;
pub mod cmdline;
pub mod config_drive;
#[cfg(feature = "channel")]
pub mod disk_map;
pub mod image_dir;
#[cfg(feature = "channel")]
pub mod lifecycle;
pub mod partitions;
#[cfg(feature = "serde")]
pub mod reboot_lock;
pub mod report;
pub mod verity;

pub use image_dir::ImageDir;
pub use partitions::Slot;
