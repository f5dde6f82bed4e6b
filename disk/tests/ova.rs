//! `cairn_disk::ova::write` checked from outside: the archive lists the
//! OVF descriptor first, then the manifest, then the VMDK, as ustar
//! members (read by the `tar` crate and by GNU tar); the VMDK inside is
//! the one given, byte for byte, and qemu-img finds the raw disk in it;
//! the manifest's SHA-256 lines match; the descriptor is well-formed XML
//! (parsed by python3's ElementTree, Debian's `python3`) with the elements
//! an importer needs, tied together by their ids; the same inputs give
//! the same bytes.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_disk::ova::{self, Machine, OvaError};
use cairn_disk::{vmdk, write_disk, DiskSpec, EspSource, Layout};
use sha2::{Digest, Sha256};

mod common;
use common::{noise, qemu_img_ok, text, MIB};

/// A small GPT disk as a raw image and its VMDK.
fn disk(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let slot = dir.join("root.squashfs");
    let mut image = text(2 * MIB as usize);
    image.extend(noise(5, MIB as usize));
    fs::write(&slot, &image).unwrap();
    let spec = DiskSpec {
        layout: Layout {
            disk_size: 160 * MIB,
            esp_size: cairn_disk::MIN_ESP_SIZE,
            slot_size: 40 * MIB,
            state_size: 8 * MIB,
        },
        esp_files: vec![(
            "EFI/BOOT/BOOTX64.EFI".into(),
            EspSource::from(noise(1, 50_000)),
        )],
        slot_a: Some(&slot),
        mtime: 1_700_000_000,
        ..DiskSpec::new("cairn-test 1.0.0 ova")
    };
    let raw = dir.join("disk.raw");
    write_disk(&raw, &spec).unwrap();
    let vmdk_path = dir.join("disk.vmdk");
    vmdk::write(&raw, &vmdk_path).unwrap();
    (raw, vmdk_path)
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses the descriptor with python3's ElementTree and returns what an
/// importer looks at, as JSON.
fn parsed_ovf(ovf: &[u8]) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys
import xml.etree.ElementTree as ET
O = "{http://schemas.dmtf.org/ovf/envelope/1}"
R = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
V = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData}"
W = "{http://www.vmware.com/schema/ovf}"
root = ET.fromstring(sys.stdin.buffer.read())
f = root.find(O + "References/" + O + "File")
d = root.find(O + "DiskSection/" + O + "Disk")
vs = root.find(O + "VirtualSystem")
hw = vs.find(O + "VirtualHardwareSection")
items = []
for it in hw.findall(O + "Item"):
    items.append({c.tag[len(R):]: c.text for c in it})
out = {
    "root": root.tag,
    "version": root.get(O + "version"),
    "file": {k[len(O):]: v for k, v in f.attrib.items()},
    "disk": {k[len(O):]: v for k, v in d.attrib.items()},
    "network": root.find(O + "NetworkSection/" + O + "Network").get(O + "name"),
    "system_id": vs.get(O + "id"),
    "name": vs.find(O + "Name").text,
    "sections_have_info": all(s.find(O + "Info") is not None for s in
        [root.find(O + "DiskSection"), root.find(O + "NetworkSection"), vs, hw,
         vs.find(O + "OperatingSystemSection"), vs.find(O + "ProductSection")]),
    "os_id": vs.find(O + "OperatingSystemSection").get(O + "id"),
    "system_type": hw.find(O + "System/" + V + "VirtualSystemType").text,
    "items": items,
    "config": {c.get(W + "key"): c.get(W + "value") for c in hw.findall(W + "Config")},
}
json.dump(out, sys.stdout)
"#;
    let mut child = match Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 not found: install the Debian package `python3`")
        }
        Err(e) => panic!("running python3: {e}"),
    };
    child.stdin.take().unwrap().write_all(ovf).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the descriptor does not parse:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn ova_holds_descriptor_manifest_and_vmdk_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, vmdk_path) = disk(dir.path());
    let out = dir.path().join("disk.ova");
    let mut machine = Machine::new("cairn-test", "1.0.0");
    machine.cpus = 1;
    machine.memory_mib = 1024;
    let report = ova::write(&vmdk_path, &out, &machine, 1_700_000_000).unwrap();
    let vmdk_bytes = fs::read(&vmdk_path).unwrap();
    assert_eq!(report.vmdk_size, vmdk_bytes.len() as u64);
    assert_eq!(report.capacity, 160 * MIB);
    assert_eq!(report.file_size, fs::metadata(&out).unwrap().len());
    assert_eq!(report.file_size % 512, 0);

    // the members, in order, as the tar crate reads them
    let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
    let mut members = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let h = e.header().clone();
        assert!(h.as_ustar().is_some(), "ustar, not GNU or pax");
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        let name = e.path().unwrap().to_str().unwrap().to_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        members.push((name, data));
    }
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["disk.ovf", "disk.mf", "disk.vmdk"]);
    let (ovf, mf, inner) = (&members[0].1, &members[1].1, &members[2].1);
    assert!(*inner == vmdk_bytes, "the VMDK is packed as it is");

    // GNU tar agrees on the order
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&out)
        .output()
        .expect("running tar (Debian's tar)");
    assert!(listing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "disk.ovf\ndisk.mf\ndisk.vmdk\n"
    );

    // the manifest
    assert_eq!(
        String::from_utf8(mf.clone()).unwrap(),
        format!(
            "SHA256(disk.ovf)= {}\nSHA256(disk.vmdk)= {}\n",
            sha256_hex(ovf),
            sha256_hex(&vmdk_bytes)
        )
    );
    assert_eq!(report.ovf_sha256, sha256_hex(ovf));

    // the VMDK taken out of the archive is the disk
    let extracted = dir.path().join("extracted.vmdk");
    fs::write(&extracted, inner).unwrap();
    let cmp = qemu_img_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vmdk",
        raw.to_str().unwrap(),
        extracted.to_str().unwrap(),
    ]);
    assert!(cmp.contains("Images are identical."), "{cmp}");

    // the descriptor
    let x = parsed_ovf(ovf);
    assert_eq!(
        x["root"],
        "{http://schemas.dmtf.org/ovf/envelope/1}Envelope"
    );
    assert_eq!(x["version"], "1.0");
    assert_eq!(x["file"]["href"], "disk.vmdk");
    assert_eq!(x["file"]["size"], vmdk_bytes.len().to_string());
    assert_eq!(x["disk"]["fileRef"], x["file"]["id"]);
    assert_eq!(x["disk"]["capacity"], (160 * MIB).to_string());
    assert_eq!(x["disk"]["capacityAllocationUnits"], "byte");
    assert_eq!(
        x["disk"]["format"],
        "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
    );
    assert_eq!(x["system_id"], "cairn-test");
    assert_eq!(x["name"], "cairn-test");
    assert_eq!(x["sections_have_info"], true);
    assert_eq!(x["os_id"], "96");
    assert_eq!(x["system_type"], "vmx-13");
    assert_eq!(x["config"]["firmware"], "efi", "UEFI only: systemd-boot");
    let items = x["items"].as_array().unwrap();
    let of_type = |t: &str| -> Vec<&serde_json::Value> {
        items.iter().filter(|i| i["ResourceType"] == t).collect()
    };
    assert_eq!(of_type("3")[0]["VirtualQuantity"], "1");
    assert_eq!(of_type("4")[0]["VirtualQuantity"], "1024");
    assert_eq!(of_type("4")[0]["AllocationUnits"], "byte * 2^20");
    let sata = of_type("20");
    assert_eq!(sata.len(), 1);
    assert_eq!(sata[0]["ResourceSubType"], "vmware.sata.ahci");
    let disks = of_type("17");
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0]["Parent"], sata[0]["InstanceID"]);
    assert_eq!(
        disks[0]["HostResource"],
        format!("ovf:/disk/{}", x["disk"]["diskId"].as_str().unwrap())
    );
    let nic = of_type("10");
    assert_eq!(nic[0]["Connection"], x["network"]);
    // every item has a unique InstanceID and an ElementName
    let mut ids: Vec<&str> = items
        .iter()
        .map(|i| i["InstanceID"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), items.len());
    assert!(items.iter().all(|i| i["ElementName"].is_string()));
}

#[test]
fn same_vmdk_and_machine_give_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk_path) = disk(dir.path());
    let one = dir.path().join("one.ova");
    let two = dir.path().join("two.ova");
    let m = Machine::new("cairn", "0.1.0");
    ova::write(&vmdk_path, &one, &m, 1).unwrap();
    ova::write(&vmdk_path, &two, &m, 1).unwrap();
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap());
    ova::write(&vmdk_path, &two, &m, 2).unwrap();
    assert!(fs::read(&one).unwrap() != fs::read(&two).unwrap());
}

#[test]
fn refuses_what_is_not_a_vmdk_and_overwriting_it() {
    let dir = tempfile::tempdir().unwrap();
    let not = dir.path().join("disk.raw");
    fs::write(&not, vec![0u8; 4096]).unwrap();
    let out = dir.path().join("x.ova");
    let m = Machine::new("cairn", "0.1.0");
    let err = ova::write(&not, &out, &m, 0).unwrap_err();
    assert!(matches!(err, OvaError::Vmdk(_)), "{err:?}");
    assert!(err.to_string().contains("disk.raw"), "{err}");
    assert!(!out.exists());

    let (_, vmdk_path) = disk(dir.path());
    let before = fs::read(&vmdk_path).unwrap();
    let err = ova::write(&vmdk_path, &vmdk_path, &m, 0).unwrap_err();
    assert!(matches!(err, OvaError::InputIsOutput { .. }), "{err:?}");
    assert!(fs::read(&vmdk_path).unwrap() == before);
}
