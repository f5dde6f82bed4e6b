//! cairn-update, the on-host A/B update agent ([`agent`]: check the
//! channel, download with resume, write the inactive slot, its kernel and
//! initrd and, last, its counted boot entry; [`state`]: the update state
//! machine; [`health`]: the gate before `boot-complete.target`; [`lock`]:
//! the etcd reboot semaphore; [`strategy`]: the reboot strategies, one
//! file each; [`gate`]: the health gate's run and verdict; [`config`]:
//! `update.conf`). It never touches
//! the running slot or its boot entry, and knows nothing about building
//! images or serving them. The channel's format (manifest, keys,
//! signatures, bundle, version order, rollouts) is
//! `cairn_formats::channel`, shared with the builder and `cairn serve`.

pub mod agent;
pub mod config;
pub mod entries;
pub mod error;
pub mod fetch;
pub mod fsutil;
pub mod gate;
pub mod health;
pub mod lock;
pub mod slot;
pub mod state;
pub mod strategy;

pub use agent::{Agent, Outcome, Paths, SlotDevices};
pub use config::{Config, Strategy, Window};
pub use error::UpdateError;
pub use slot::Slot;
pub use state::{Phase, State};
