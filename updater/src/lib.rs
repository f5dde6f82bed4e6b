//! cairn's A/B updates: signed update manifests and their keys
//! ([`keys`], [`manifest`]), the bundle `cairn build --sign` writes
//! ([`bundle`]), systemd-boot's version order ([`version`]), and the
//! on-host agent `cairn-update` ([`agent`]: check, download with resume,
//! write the inactive slot, its kernel and initrd and, last, its counted
//! boot entry; [`state`]: the update state machine; [`health`]: the gate
//! before `boot-complete.target`). It never touches the running slot or
//! its boot entry, and knows nothing about building images or serving
//! them.

pub mod agent;
pub mod bundle;
pub mod config;
pub mod entries;
pub mod error;
pub mod fetch;
pub mod fsutil;
pub mod health;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod rollout;
pub mod slot;
pub mod state;
pub mod version;

pub use agent::{Agent, Outcome, Paths, SlotDevices};
pub use bundle::{write_bundle, Bundle, BundleInput, BUNDLE_DIR, MANIFEST_FILE, SIGNATURE_FILE};
pub use config::{Config, Strategy, Window};
pub use error::UpdateError;
pub use keys::{keygen, KeyPairFiles, SecretKey, TrustedKeys};
pub use manifest::{verify, Expect, Manifest, Part, PartKind};
pub use slot::Slot;
pub use state::{Phase, State};
