//! The kernel command line: the keys cairn puts there and reads back
//! (`/init`, `cairn-update`, `cairn-cloudinit`, the boot entries the disk
//! and the updater write, the iPXE scripts of `cairn serve`) and the
//! kernel's rule for splitting it into words.

use crate::partitions::Slot;

/// `cairn.slot=a|b`: the root slot to boot.
pub const SLOT: &str = "cairn.slot";
/// `cairn.root=ram|disk`: where the root image is (`ram`: network boot).
pub const ROOT: &str = "cairn.root";
/// `cairn.state=auto|tmpfs|label:NAME`: the writable state.
pub const STATE: &str = "cairn.state";
/// `cairn.timeout=SECONDS`: how long `/init` waits for each device.
pub const TIMEOUT: &str = "cairn.timeout";
/// `cairn.debug`: `/init` prints each step with its time.
pub const DEBUG: &str = "cairn.debug";
/// `cairn.cloudinit=0`: do not run `cairn-cloudinit` at boot.
pub const CLOUDINIT: &str = "cairn.cloudinit";
/// `cloud-config-url=URL` (also `cloud_config_url`), as on CoreOS.
pub const CLOUD_CONFIG_URL: &str = "cloud-config-url";
/// `cairn.metadata=off|ec2|digitalocean|ec2,digitalocean`: the cloud
/// metadata services `cairn-cloudinit` asks, in that order, when no other
/// data source has user-data (default `ec2,digitalocean`; `off`: none).
pub const METADATA: &str = "cairn.metadata";
/// `cairn.metadata.imdsv1=1`: an EC2-compatible metadata service that
/// refuses the IMDSv2 session token may be read without one (IMDSv1).
pub const METADATA_IMDSV1: &str = "cairn.metadata.imdsv1";
/// `cairn.verity=ROOTHASH:SALT:DATABLOCKS`: `/init` opens the root slot
/// (or the root image in RAM) through dm-verity with these parameters
/// (`crate::verity::Verity`); without it the root is mounted unverified.
pub const VERITY: &str = "cairn.verity";

/// `cairn.install=URL`: the `cairn serve` whose image `cairn-update install`
/// copies to this machine's disk and which it reports to (a netbooted
/// profile with `boot: install`).
pub const INSTALL: &str = "cairn.install";
/// `cairn.install.image=NAME-VERSION`: the image (its `disk.raw` at
/// `URL/assets/NAME-VERSION/disk.raw`, its map at
/// `crate::disk_map::map_path`).
pub const INSTALL_IMAGE: &str = "cairn.install.image";
/// `cairn.install.disk=RULE`: which disk (`first-empty`, `/dev/NAME`,
/// `by-id:ID`, `by-path:PATH`, `size:MIN[-MAX]`).
pub const INSTALL_DISK: &str = "cairn.install.disk";
/// `cairn.install.overwrite=1`: write over a disk that holds data.
pub const INSTALL_OVERWRITE: &str = "cairn.install.overwrite";
/// `cairn.install.mac=MAC`: the MAC address the machine netbooted with
/// (its key in the server's records).
pub const INSTALL_MAC: &str = "cairn.install.mac";
/// `cairn.report=URL`: the `cairn serve` that netbooted this diskless
/// machine and keeps its A/B record; `cairn-update health` reports the
/// boot and the health verdict there (`URL/lifecycle/v1/report`).
pub const REPORT: &str = "cairn.report";
/// `cairn.report.mac=MAC`: the MAC address the machine netbooted with
/// (its key in the server's records).
pub const REPORT_MAC: &str = "cairn.report.mac";
/// `cairn.report.trial=1`: this boot is a trial of a new image and the
/// server has an earlier one that was healthy here: a failed health gate
/// reboots the machine (the server then serves the earlier image).
/// Without it a failed gate only reports: rebooting would bring back the
/// same image.
pub const REPORT_TRIAL: &str = "cairn.report.trial";

/// The `cairn.*` keys the booted system's agents read (cairn-cloudinit,
/// `cairn-update install` and `health`), not `/init`: it passes them on
/// without a word.
pub const FOR_THE_SYSTEM: &[&str] = &[
    CLOUDINIT,
    METADATA,
    METADATA_IMDSV1,
    INSTALL,
    INSTALL_IMAGE,
    INSTALL_DISK,
    INSTALL_OVERWRITE,
    INSTALL_MAC,
    REPORT,
    REPORT_MAC,
    REPORT_TRIAL,
];

/// The value of the last `KEY=value` word on a command line.
pub fn value(cmdline: &str, key: &str) -> Option<String> {
    split_words(cmdline)
        .into_iter()
        .filter_map(|w| Some(w.strip_prefix(key)?.strip_prefix('=')?.to_owned()))
        .next_back()
}

/// Splits a command line into words the way the kernel does: on whitespace,
/// except inside double quotes, which are removed.
pub fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// The slot a command line names (`cairn.slot=`; the last one wins, as
/// `/init` reads it). `None` without one or with an unknown value.
pub fn slot(cmdline: &str) -> Option<Slot> {
    split_words(cmdline)
        .iter()
        .filter_map(|w| w.strip_prefix(SLOT)?.strip_prefix('='))
        .next_back()
        .and_then(Slot::from_cmdline_value)
}

/// True when the root image comes from RAM (`cairn.root=ram`, the last
/// `cairn.root=` wins).
pub fn root_in_ram(cmdline: &str) -> bool {
    split_words(cmdline)
        .iter()
        .filter_map(|w| w.strip_prefix(ROOT)?.strip_prefix('='))
        .next_back()
        == Some("ram")
}

/// The verity parameters a command line carries (`cairn.verity=`, the last
/// one wins): `None` without one, an error for a malformed value.
pub fn verity(
    cmdline: &str,
) -> Option<Result<crate::verity::Verity, crate::verity::VerityParseError>> {
    split_words(cmdline)
        .iter()
        .filter_map(|w| w.strip_prefix(VERITY)?.strip_prefix('='))
        .next_back()
        .map(crate::verity::Verity::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_as_the_kernel_splits_them() {
        assert_eq!(
            split_words("  a b=\"c d\" \"e f\"=g  \"\" h\n"),
            ["a", "b=c d", "e f=g", "", "h"]
        );
        assert!(split_words(" \t\n").is_empty());
    }

    #[test]
    fn slot_and_root() {
        assert_eq!(
            slot("initrd=x cairn.slot=a cairn.slot=b quiet"),
            Some(Slot::B)
        );
        assert_eq!(slot("cairn.slot=c"), None);
        assert_eq!(slot("cairn.slot=A"), Some(Slot::A));
        assert_eq!(slot("cairn.slots=a"), None);
        assert_eq!(slot(""), None);
        assert!(root_in_ram("cairn.root=ram cairn.state=tmpfs"));
        assert!(!root_in_ram("cairn.root=ram cairn.root=disk"));
        assert!(!root_in_ram("cairn.slot=a"));
    }

    #[test]
    fn values() {
        let c = "cairn.install=http://s cairn.install.disk=by-path:pci-0000:00:04.0 cairn.install.disk=/dev/vdb";
        assert_eq!(value(c, INSTALL).as_deref(), Some("http://s"));
        assert_eq!(value(c, INSTALL_DISK).as_deref(), Some("/dev/vdb"));
        assert_eq!(value(c, INSTALL_OVERWRITE), None);
    }

    #[test]
    fn verity_word() {
        let v = format!("{}:{}:7", "ab".repeat(32), "cd".repeat(32));
        let got = verity(&format!("cairn.verity=x cairn.verity={v} quiet"));
        assert_eq!(got.unwrap().unwrap().data_blocks, 7);
        assert!(verity("cairn.verity=x").unwrap().is_err());
        assert!(verity("cairn.verityx=1 cairn.slot=a").is_none());
    }
}
