//! The config drive `cairn vm` hands a VM and `cairn-cloudinit` reads: an
//! OpenStack `config-2` drive (a FAT or ISO file system with that label).

/// File system label.
pub const LABEL: &str = "config-2";
/// The user-data file, relative to the drive's root.
pub const USER_DATA: &str = "openstack/latest/user_data";
/// The metadata (JSON: `public_keys`, `hostname`), relative to the root.
pub const META_DATA: &str = "openstack/latest/meta_data.json";
