//! Debian archive formats, as cairn needs them to build images without dpkg
//! or apt: deb822 syntax, version ordering, relationship fields, `Packages`
//! indices, `InRelease` trust, apt source lists and dependency resolution.
//!
//! This crate does no network I/O and touches no files: callers hand it
//! bytes and get typed data and typed errors back.

pub mod deb822;
pub mod index;
pub mod relation;
pub mod release;
pub mod resolve;
pub mod sources;
pub mod version;
