//! `ova` owns the appliance output format: an `.ova` file (OVF 1.0's single
//! file package, a POSIX ustar archive) holding, in the order the OVF
//! specification asks,
//!
//! 1. `disk.ovf`, the OVF 1.0 descriptor: the VMDK as the one file and
//!    disk (capacity in bytes, format streamOptimized), one network, and a
//!    virtual system with CPUs, memory, a SATA (AHCI) controller with the
//!    disk on port 0, an E1000 NIC, and UEFI firmware (VMware's
//!    `firmware=efi` setting): cairn disks boot only under UEFI
//!    (systemd-boot), and `/init` carries the AHCI driver, not the LSI
//!    Logic or PVSCSI ones a VMware SCSI controller would need;
//! 2. `disk.mf`, the manifest: the SHA-256 of the descriptor and of the
//!    VMDK (`SHA256(disk.ovf)= ...`);
//! 3. `disk.vmdk`, a streamOptimized VMDK ([`crate::vmdk::write`]),
//!    streamed into the archive from its file.
//!
//! Every member has mode 0644, owner 0:0 and the given mtime
//! (SOURCE_DATE_EPOCH), so the same VMDK and machine give the same bytes.
//! The descriptor is written by hand: it is a fixed template with a few
//! escaped values, and no XML library is in the tree.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::vmdk::{self, VmdkError};

/// The descriptor's name inside the archive.
pub const OVF_NAME: &str = "disk.ovf";
/// The manifest's name inside the archive.
pub const MF_NAME: &str = "disk.mf";
/// The VMDK's name inside the archive (and in the descriptor).
pub const VMDK_NAME: &str = "disk.vmdk";
/// The VMDK format URI of OVF descriptors.
pub const STREAM_OPTIMIZED_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// The virtual machine the descriptor asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine<'a> {
    /// The appliance's name (the image's): the virtual system's id and name.
    pub name: &'a str,
    /// The image's version: the product version.
    pub version: &'a str,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl<'a> Machine<'a> {
    /// 2 CPUs and 2 GiB of memory, as `cairn vm` boots.
    pub fn new(name: &'a str, version: &'a str) -> Self {
        Machine {
            name,
            version,
            cpus: 2,
            memory_mib: 2048,
        }
    }
}

/// What [`write()`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Size of the `.ova` file in bytes.
    pub file_size: u64,
    /// Size of the VMDK inside.
    pub vmdk_size: u64,
    /// The guest disk's size (the VMDK's capacity).
    pub capacity: u64,
    /// SHA-256 of the descriptor and of the VMDK, as the manifest has them.
    pub ovf_sha256: String,
    /// See `ovf_sha256`.
    pub vmdk_sha256: String,
}

/// Why an appliance could not be written. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// An I/O error on the VMDK or the `.ova`.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "reading VMDK image".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The input is not a VMDK [`crate::vmdk::write`] made.
    #[error(transparent)]
    Vmdk(#[from] VmdkError),

    /// The output path is the VMDK.
    #[error("{path} is both the VMDK and the OVA being written")]
    InputIsOutput {
        /// The file.
        path: PathBuf,
    },
}

impl OvaError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        OvaError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes the appliance `out` (replacing any file there; removed again on
/// failure) around the streamOptimized VMDK `vmdk`, with members dated
/// `mtime` (seconds since the epoch).
pub fn write(
    vmdk: &Path,
    out: &Path,
    machine: &Machine<'_>,
    mtime: u64,
) -> Result<Report, OvaError> {
    let capacity = vmdk::capacity(vmdk)?;
    let meta = std::fs::metadata(vmdk).map_err(|e| OvaError::io("reading VMDK image", vmdk, e))?;
    if let Ok(m) = std::fs::metadata(out) {
        if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
            return Err(OvaError::InputIsOutput {
                path: out.to_path_buf(),
            });
        }
    }
    match write_archive(vmdk, out, machine, mtime, capacity) {
        Ok(report) => {
            tracing::info!(
                path = %out.display(),
                file_size = report.file_size,
                capacity,
                "OVA written"
            );
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

fn write_archive(
    vmdk: &Path,
    out: &Path,
    machine: &Machine<'_>,
    mtime: u64,
    capacity: u64,
) -> Result<Report, OvaError> {
    // The manifest comes before the VMDK: hash it first (it is read a
    // second time below, from the page cache for a fresh one).
    let mut input = File::open(vmdk).map_err(|e| OvaError::io("opening VMDK image", vmdk, e))?;
    let (vmdk_sha256, vmdk_size) =
        sha256_of(&mut input).map_err(|e| OvaError::io("reading VMDK image", vmdk, e))?;
    let ovf = ovf_descriptor(machine, vmdk_size, capacity);
    let ovf_sha256 = hex(&Sha256::digest(ovf.as_bytes()));
    let mf = format!("SHA256({OVF_NAME})= {ovf_sha256}\nSHA256({VMDK_NAME})= {vmdk_sha256}\n");

    let file = File::create(out).map_err(|e| OvaError::io("creating OVA", out, e))?;
    let write_err = |e| OvaError::io("writing OVA", out, e);
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    tar.append(&member(OVF_NAME, ovf.len() as u64, mtime), ovf.as_bytes())
        .map_err(write_err)?;
    tar.append(&member(MF_NAME, mf.len() as u64, mtime), mf.as_bytes())
        .map_err(write_err)?;
    let mut input = File::open(vmdk).map_err(|e| OvaError::io("opening VMDK image", vmdk, e))?;
    if !append_sized(&mut tar, VMDK_NAME, vmdk_size, mtime, &mut input).map_err(write_err)? {
        return Err(OvaError::io("reading VMDK image", vmdk, shrank()));
    }
    let file = finish(tar).map_err(write_err)?;
    let file_size = file
        .metadata()
        .map_err(|e| OvaError::io("reading metadata of OVA", out, e))?
        .len();
    Ok(Report {
        file_size,
        vmdk_size,
        capacity,
        ovf_sha256,
        vmdk_sha256,
    })
}

/// A ustar header for a regular file.
pub(crate) fn member(name: &str, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    // Names here are short constants: set_path cannot fail on them.
    h.set_path(name).expect("a short relative member name");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

/// Appends `size` bytes of `input` as member `name`. `Ok(false)` when the
/// input had fewer bytes (it changed size since it was measured: the
/// archive is broken and must not be kept).
pub(crate) fn append_sized<W: io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    mtime: u64,
    input: &mut impl Read,
) -> io::Result<bool> {
    let mut limited = input.take(size);
    tar.append(&member(name, size, mtime), &mut limited)?;
    Ok(limited.limit() == 0)
}

/// The error of [`append_sized`]'s `false`, for the input's path.
pub(crate) fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "it shrank while it was packed",
    )
}

/// Ends the archive and flushes it to its file.
pub(crate) fn finish(tar: tar::Builder<BufWriter<File>>) -> io::Result<File> {
    tar.into_inner()?.into_inner().map_err(|e| e.into_error())
}

fn sha256_of(r: &mut impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&h.finalize()), total))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text for XML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The OVF 1.0 descriptor of a machine whose one disk is the
/// streamOptimized `disk.vmdk` of `vmdk_size` bytes holding a
/// `capacity`-byte disk. Items list their `rasd:` elements in the
/// alphabetical order the CIM schema's sequence has.
pub fn ovf_descriptor(machine: &Machine<'_>, vmdk_size: u64, capacity: u64) -> String {
    let name = escape(machine.name);
    let version = escape(machine.version);
    let (cpus, memory) = (machine.cpus, machine.memory_mib);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- written by cairn build -->
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{VMDK_NAME}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>The virtual disk</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM_OPTIMIZED_URI}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The network the machine is connected to</Info>
    <Network ovf:name="VM Network">
      <Description>The machine's network (DHCP)</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A cairn machine: boots the image from its disk under UEFI</Info>
    <Name>{name}</Name>
    <ProductSection>
      <Info>The image</Info>
      <Product>{name}</Product>
      <Version>{version}</Version>
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="otherLinux64Guest">
      <Info>The guest operating system</Info>
      <Description>Debian GNU/Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{memory} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SATA controller (AHCI)</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Description>The boot disk</rasd:Description>
        <rasd:ElementName>disk0</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>ethernet0</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_has_the_disk_the_machine_and_uefi() {
        let mut m = Machine::new("cairn", "1.2.3");
        m.cpus = 4;
        m.memory_mib = 4096;
        let ovf = ovf_descriptor(&m, 123_456, 4 << 30);
        assert!(ovf.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
        for want in [
            r#"<File ovf:href="disk.vmdk" ovf:id="file1" ovf:size="123456"/>"#,
            r#"ovf:capacity="4294967296" ovf:capacityAllocationUnits="byte""#,
            r#"vmdk.html#streamOptimized""#,
            r#"<VirtualSystem ovf:id="cairn">"#,
            "<Version>1.2.3</Version>",
            "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>",
            "<rasd:VirtualQuantity>4096</rasd:VirtualQuantity>",
            "<rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>",
            "<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>",
            r#"vmw:key="firmware" vmw:value="efi""#,
        ] {
            assert!(ovf.contains(want), "{want} missing:\n{ovf}");
        }
        // every element opened is closed
        let opened = ovf.matches("<Item>").count();
        assert_eq!(opened, 5);
        assert_eq!(ovf.matches("</Item>").count(), opened);
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        let ovf = ovf_descriptor(&Machine::new("x", "1<2"), 1, 512);
        assert!(ovf.contains("<Version>1&lt;2</Version>"));
    }

    #[test]
    fn members_are_ustar_files_owned_by_root_with_the_given_time() {
        let h = member("disk.ovf", 1000, 1_700_000_000);
        assert!(h.as_ustar().is_some());
        assert_eq!(h.path().unwrap().to_str(), Some("disk.ovf"));
        assert_eq!(h.size().unwrap(), 1000);
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
    }
}
