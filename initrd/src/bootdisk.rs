//! Which disk the machine booted from: systemd-boot's
//! `LoaderDevicePartUUID` EFI variable (the unique GUID of the ESP partition
//! the loader was started from, as text in UTF-16), turned into the GPT's
//! on-disk byte order, and the disk whose partition table holds that
//! partition. `/init` takes the slot and the state only from that disk, so a
//! USB stick or a second disk that carries a partition labelled `cairn-a`
//! cannot put its own root under the machine. The sysfs and /dev roots are
//! parameters so the logic is tested on a fake tree with real GPT images.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use crate::blockdev;
use crate::partition_table::Gpt;

/// The file name of systemd-boot's variable under efivarfs (vendor GUID
/// `4a67b082-0a4c-41cf-b6c7-440b29bb8c4f`, the Boot Loader Interface).
pub const LOADER_DEVICE_PART_UUID: &str =
    "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Where the kernel offers the mount point for efivarfs on a UEFI boot.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// A GUID in text form (`8-4-4-4-12` hex digits, either case) as the GPT
/// stores it: the first three fields little-endian, the rest as written.
pub fn guid_to_gpt_bytes(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut t = [0u8; 16];
    for (i, b) in t.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut g = t;
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    Some(g)
}

/// The text form (upper case, as systemd-boot writes it) of a GUID in the
/// GPT's byte order; the inverse of [`guid_to_gpt_bytes`].
pub fn format_gpt_guid(g: &[u8; 16]) -> String {
    let mut t = *g;
    t[0..4].reverse();
    t[4..6].reverse();
    t[6..8].reverse();
    let h = hex_upper(&t);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// The GUID in a `LoaderDevicePartUUID` file as read from efivarfs: four
/// bytes of attributes, then a UTF-16LE string, possibly NUL-terminated.
/// `None` when it is not a GUID.
pub fn parse_loader_device_part_uuid(raw: &[u8]) -> Option<[u8; 16]> {
    let body = raw.get(4..)?;
    if body.len() % 2 != 0 || body.len() > 256 {
        return None;
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let text = String::from_utf16(&units).ok()?;
    guid_to_gpt_bytes(text.trim())
}

/// The disks (sysfs names) whose GPT has a partition with this unique GUID,
/// in name order. `sector_size` gives a disk's logical sector size (from
/// sysfs on a machine); `checked` remembers disks already read without a
/// match, so polling reads each disk once. A disk whose node is missing or
/// unreadable, or that has no valid GPT, is left for the next look.
pub fn disks_with_partition(
    class_block: &Path,
    dev_root: &Path,
    guid: &[u8; 16],
    sector_size: &dyn Fn(&str) -> Option<u64>,
    checked: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut found = Vec::new();
    for d in blockdev::scan(class_block) {
        if d.is_partition() || checked.contains(&d.name) {
            continue;
        }
        let Some(sector) = sector_size(&d.name) else {
            continue;
        };
        let Ok(mut f) = File::open(d.node(dev_root)) else {
            continue;
        };
        let Ok(gpt) = Gpt::read(&mut f, sector) else {
            continue;
        };
        if gpt.partitions().iter().any(|p| &p.unique_guid == guid) {
            found.push(d.name.clone());
        } else {
            checked.insert(d.name.clone());
        }
    }
    found
}

/// The disks (sysfs names) that have a partition labelled `label`, each
/// once, in name order.
pub fn disks_with_label(class_block: &Path, label: &str) -> Vec<String> {
    let disks: BTreeSet<String> = blockdev::scan(class_block)
        .into_iter()
        .filter(|d| d.is_partition() && d.uevent.partname.as_deref() == Some(label))
        .filter_map(|d| d.disk)
        .collect();
    disks.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::fake::Fake;
    use std::fs;

    const GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    #[test]
    fn guid_text_to_gpt_order() {
        // the Linux file system type GUID, whose on-disk bytes are well known
        assert_eq!(
            guid_to_gpt_bytes(GUID).unwrap(),
            [
                0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
                0x7D, 0xE4
            ]
        );
        assert_eq!(format_gpt_guid(&guid_to_gpt_bytes(GUID).unwrap()), GUID);
        assert_eq!(
            guid_to_gpt_bytes(&GUID.to_lowercase()),
            guid_to_gpt_bytes(GUID)
        );
        for bad in [
            "",
            "0FC63DAF84834772-8E79-3D69D8477DE4",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE",
            "0FC63DAF-8483-4772-8E79-3D69D8477DEG",
            "+FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4-",
        ] {
            assert_eq!(guid_to_gpt_bytes(bad), None, "{bad:?}");
        }
    }

    fn efivar(text: &str, nul: bool) -> Vec<u8> {
        let mut v = vec![6, 0, 0, 0]; // BOOTSERVICE_ACCESS | RUNTIME_ACCESS
        for u in text.encode_utf16() {
            v.extend_from_slice(&u.to_le_bytes());
        }
        if nul {
            v.extend_from_slice(&[0, 0]);
        }
        v
    }

    #[test]
    fn reads_the_efi_variable() {
        let want = guid_to_gpt_bytes(GUID);
        assert_eq!(parse_loader_device_part_uuid(&efivar(GUID, true)), want);
        assert_eq!(parse_loader_device_part_uuid(&efivar(GUID, false)), want);
        assert_eq!(
            parse_loader_device_part_uuid(&efivar(&GUID.to_lowercase(), true)),
            want
        );
        assert_eq!(
            parse_loader_device_part_uuid(&efivar("nonsense", true)),
            None
        );
        assert_eq!(parse_loader_device_part_uuid(&[6, 0, 0]), None);
        let mut odd = efivar(GUID, false);
        odd.push(0);
        assert_eq!(parse_loader_device_part_uuid(&odd), None);
        assert_eq!(parse_loader_device_part_uuid(&vec![0x41; 4096]), None);
    }

    /// The block devices' fake sysfs, with /dev nodes that are real GPT
    /// images written by hand.
    fn gpt_disk(f: &Fake, disk: &str, parts: &[(&str, &str)]) {
        let numbered: Vec<(u32, &str)> = parts
            .iter()
            .enumerate()
            .map(|(i, (label, _))| (i as u32 + 1, *label))
            .collect();
        f.disk(disk, "", &numbered, false);
        fs::write(f.dev().join(disk), gpt_image(parts)).unwrap();
    }

    /// 512-byte sectors: LBA 1 the header, LBA 2.. 128 entries of 128 bytes.
    fn gpt_image(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut img = vec![0u8; 512 * 64];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (label, guid)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&guid_to_gpt_bytes(GUID).unwrap());
            e[16..32].copy_from_slice(&guid_to_gpt_bytes(guid).unwrap());
            e[32..40].copy_from_slice(&(40 + i as u64).to_le_bytes());
            e[40..48].copy_from_slice(&(40 + i as u64).to_le_bytes());
            for (j, u) in label.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let h = &mut img[512..1024];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&63u64.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&62u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crate::partition_table::crc32(&entries).to_le_bytes());
        let crc = crate::partition_table::crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        img[1024..1024 + entries.len()].copy_from_slice(&entries);
        img
    }

    const ESP_A: &str = "11111111-2222-3333-4444-555555555555";
    const ESP_B: &str = "66666666-7777-8888-9999-AAAAAAAAAAAA";

    #[test]
    fn finds_the_disk_holding_the_loader_partition() {
        let f = Fake::new();
        // the decoy sorts first and carries the same labels
        gpt_disk(
            &f,
            "sda",
            &[
                ("ESP", ESP_B),
                ("cairn-a", "00000000-0000-0000-0000-00000000000A"),
            ],
        );
        gpt_disk(
            &f,
            "vda",
            &[
                ("ESP", ESP_A),
                ("cairn-a", "00000000-0000-0000-0000-00000000000B"),
            ],
        );
        let sector = |_: &str| Some(512);
        let mut checked = BTreeSet::new();
        let esp = guid_to_gpt_bytes(ESP_A).unwrap();
        assert_eq!(
            disks_with_partition(&f.class(), &f.dev(), &esp, &sector, &mut checked),
            ["vda"]
        );
        // the decoy was read once and is not read again
        assert!(checked.contains("sda"));
        fs::write(f.dev().join("sda"), b"").unwrap();
        assert_eq!(
            disks_with_partition(&f.class(), &f.dev(), &esp, &sector, &mut checked),
            ["vda"]
        );
        // a GUID nowhere: nothing, and a disk without a readable GPT is not
        // marked checked (its node may not be ready yet)
        let mut checked = BTreeSet::new();
        let none = guid_to_gpt_bytes("DEADBEEF-0000-0000-0000-000000000000").unwrap();
        assert!(
            disks_with_partition(&f.class(), &f.dev(), &none, &sector, &mut checked).is_empty()
        );
        assert_eq!(checked.iter().collect::<Vec<_>>(), ["vda"]);
        // no sector size known yet: skipped, not marked
        let mut checked = BTreeSet::new();
        assert!(
            disks_with_partition(&f.class(), &f.dev(), &esp, &|_| None, &mut checked).is_empty()
        );
        assert!(checked.is_empty());
    }

    #[test]
    fn lists_disks_by_label() {
        let f = Fake::new();
        gpt_disk(&f, "vda", &[("ESP", ESP_A), ("cairn-a", ESP_B)]);
        gpt_disk(&f, "vdb", &[("cairn-a", ESP_A)]);
        assert_eq!(disks_with_label(&f.class(), "cairn-a"), ["vda", "vdb"]);
        assert_eq!(disks_with_label(&f.class(), "ESP"), ["vda"]);
        assert!(disks_with_label(&f.class(), "cairn-b").is_empty());
    }
}
