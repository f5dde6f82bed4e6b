//! The update channel: what `cairn build --sign` writes, `cairn serve`
//! offers at `/update/v1/<channel>/` and `cairn-update` accepts. The
//! signed manifest and its detached signature ([`manifest`]: the JSON
//! model, `verify`, the one gate every downloaded manifest passes), the
//! ed25519 key files ([`keys`]), the bundle folder ([`bundle`]),
//! systemd-boot's version order ([`version`]), staged rollouts by machine
//! seed ([`rollout`]), the manifests' timestamps ([`timestamp`]) and the
//! reasons any of it is refused ([`error`]).
//!
//! Behind the `channel` feature: it needs ed25519, SHA-256, JSON and
//! chrono, which `/init` must not link. Like Bottlerocket's
//! `update_metadata`, it is shared by the producer (the builder), the
//! server and the agent, and knows nothing about any of them.

pub mod bundle;
pub mod error;
mod files;
pub use files::write_atomic;
pub mod keys;
pub mod manifest;
pub mod rollout;
pub mod timestamp;
pub mod version;

pub use bundle::{write_bundle, Bundle, BundleInput, BUNDLE_DIR, MANIFEST_FILE, SIGNATURE_FILE};
pub use error::ChannelError;
pub use keys::{keygen, KeyPairFiles, SecretKey, TrustedKeys};
pub use manifest::{verify, Expect, Manifest, Part, PartKind};
