//! cairn-cloudinit: the on-host agent that finds this machine's cloud-config (kernel command line URL, state partition, config drive with its OpenStack metadata, an EC2-compatible or DigitalOcean metadata service), validates it and applies it at every boot, like CoreOS's coreos-cloudinit. It owns what it writes under the target root; it never touches the image's /usr.

pub mod addrs;
pub mod apply;
pub mod banner;
pub mod cloud;
pub mod cmdline;
pub mod envfile;
pub mod fetch;
pub mod fsutil;
pub mod label;
pub mod metadata;
pub mod network;
pub mod safefs;
pub mod services;
pub mod source;
pub mod ssh;
pub mod storage;
#[cfg(test)]
pub(crate) mod testutil;
pub mod units;
pub mod users;
