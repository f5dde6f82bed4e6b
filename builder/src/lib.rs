//! `cairn build` as a library: image definition -> resolved packages ->
//! fetched and verified `.deb` files -> an assembled root tree -> fixups ->
//! a reproducible squashfs, plus the lock and manifest that describe it.
//!
//! The `cairn` command (the `cairn-cli` crate, `cli/`) parses arguments and
//! calls in here.

pub mod artifacts;
pub mod blob;
pub mod blockcache;
pub mod containers;
pub mod debfile;
pub mod definition;
pub mod disk_formats;
pub mod fetch;
pub mod fixups;
pub mod lock;
pub mod pipeline;
pub mod progress;
pub mod repo;
pub mod squashfs;
pub mod tree;
