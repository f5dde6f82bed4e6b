//! The drivers a config drive may need before udev has loaded them: the agent runs early in the boot, when udev's coldplug may not yet have driven a SATA/IDE controller or the CD-ROM behind it (`sr_mod`), which is where VMware, OpenStack (its default `iso9660` config drive) and libvirt/Vagrant attach a `config-2` ISO.
//!
//! The devices are read from sysfs (their `modalias`, whether a `driver` is
//! bound) and their modules loaded with `modprobe -b` (the blacklist
//! honoured, as udev does), controllers first, then the SCSI disks and
//! CD-ROMs that appear behind them. Only storage devices: whatever else
//! udev loads later is none of this agent's business.

use std::path::Path;
use std::process::Command;

/// The buses looked at, in order: a SATA/IDE controller (PCI) brings up
/// the SCSI devices (disks, CD-ROMs) behind it; virtio block and SCSI
/// devices hang off virtio-pci.
const BUSES: &[&str] = &["pci", "virtio", "scsi"];

/// True for a device on `bus` that is storage, from its modalias (and for
/// PCI its class): PCI class 0x01 (mass storage: SCSI, IDE, SATA, SAS,
/// NVMe, RAID), virtio block (device 2) and SCSI (device 8), SCSI disks
/// (type 0) and CD-ROMs (type 5).
fn is_storage(bus: &str, modalias: &str, pci_class: Option<&str>) -> bool {
    match bus {
        "pci" => pci_class.is_some_and(|c| c.trim().starts_with("0x01")),
        "virtio" => {
            modalias.starts_with("virtio:d00000002v") || modalias.starts_with("virtio:d00000008v")
        }
        "scsi" => modalias == "scsi:t-0x00" || modalias == "scsi:t-0x05",
        _ => false,
    }
}

/// The modaliases of the storage devices on `bus` under `sys` (`/sys`)
/// that no driver is bound to, sorted.
pub fn unbound(sys: &Path, bus: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(sys.join("bus").join(bus).join("devices")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let dev = e.path();
            // symlink_metadata: `driver` is a link; its target is not needed
            if std::fs::symlink_metadata(dev.join("driver")).is_ok() {
                return None;
            }
            let alias = std::fs::read_to_string(dev.join("modalias")).ok()?;
            let alias = alias.trim().to_string();
            let class = std::fs::read_to_string(dev.join("class")).ok();
            is_storage(bus, &alias, class.as_deref()).then_some(alias)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Loads the drivers of the storage devices under `sys` that have none
/// yet, bus after bus (see [`BUSES`]). A module that does not load is left
/// to udev, which would have tried the same: only logged.
pub fn load_unbound(sys: &Path) {
    for bus in BUSES {
        let aliases = unbound(sys, bus);
        if aliases.is_empty() {
            continue;
        }
        tracing::debug!(
            "loading the drivers of storage devices on {bus} that have none yet: {}",
            aliases.join(" ")
        );
        match Command::new("modprobe")
            .args(["-q", "-b", "-a", "--"])
            .args(&aliases)
            .status()
        {
            Ok(st) if st.success() => {}
            Ok(st) => tracing::debug!("modprobe {}: {st}", aliases.join(" ")),
            Err(e) => tracing::warn!("running modprobe (Debian package kmod): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(sys: &Path, bus: &str, name: &str, alias: &str, class: Option<&str>, bound: bool) {
        let d = sys.join("bus").join(bus).join("devices").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("modalias"), format!("{alias}\n")).unwrap();
        if let Some(c) = class {
            std::fs::write(d.join("class"), format!("{c}\n")).unwrap();
        }
        if bound {
            std::os::unix::fs::symlink("/nonexistent/driver", d.join("driver")).unwrap();
        }
    }

    #[test]
    fn only_storage_devices_without_a_driver_are_named() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let ahci = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01";
        device(sys, "pci", "0000:00:1f.2", ahci, Some("0x010601"), false);
        // a NIC without a driver, a bound virtio-blk controller
        device(
            sys,
            "pci",
            "0000:00:02.0",
            "pci:v00008086d000010D3sv0sd0bc02sc00i00",
            Some("0x020000"),
            false,
        );
        device(
            sys,
            "pci",
            "0000:00:03.0",
            "pci:v00001AF4d00001001sv0sd0bc01sc00i00",
            Some("0x010000"),
            true,
        );
        // a CD-ROM and a disk behind it, an enclosure, a host (no modalias)
        device(sys, "scsi", "2:0:0:0", "scsi:t-0x05", None, false);
        device(sys, "scsi", "3:0:0:0", "scsi:t-0x00", None, true);
        device(sys, "scsi", "4:0:0:0", "scsi:t-0x0d", None, false);
        std::fs::create_dir_all(sys.join("bus/scsi/devices/host0")).unwrap();
        // virtio: a block device without its driver, a console
        device(
            sys,
            "virtio",
            "virtio4",
            "virtio:d00000002v00001AF4",
            None,
            false,
        );
        device(
            sys,
            "virtio",
            "virtio5",
            "virtio:d00000003v00001AF4",
            None,
            false,
        );

        assert_eq!(unbound(sys, "pci"), vec![ahci.to_string()]);
        assert_eq!(unbound(sys, "scsi"), vec!["scsi:t-0x05".to_string()]);
        assert_eq!(
            unbound(sys, "virtio"),
            vec!["virtio:d00000002v00001AF4".to_string()]
        );
        assert!(unbound(sys, "usb").is_empty(), "a bus that is not there");
    }
}
