//! Which cloud this machine runs on, from the firmware's SMBIOS (DMI) strings the kernel shows in
//! `/sys/class/dmi/id`, and so which metadata services are worth asking when neither
//! `cairn.metadata=` nor `--metadata` says: as cloud-init's `ds-identify` and Ignition's platform
//! id do, a machine that is not on a known cloud (bare metal, QEMU, VMware, a netbooted node) asks
//! none, so it never waits for the network only to find nobody at 169.254.169.254.

use std::io::Read;
use std::path::Path;

use super::Service;

/// Where the kernel shows the SMBIOS strings.
pub const DMI_DIR: &str = "/sys/class/dmi/id";

/// Bytes read of one DMI file: SMBIOS strings are short; a longer file is cut, never read whole.
const MAX_FIELD: u64 = 256;

/// The DMI fields read, in the order they are reported.
const FIELDS: [&str; 5] = [
    "sys_vendor",
    "product_name",
    "bios_vendor",
    "bios_version",
    "chassis_asset_tag",
];

/// What the DMI strings say about the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platform {
    /// Amazon EC2 (Nitro: `sys_vendor` "Amazon EC2"; Xen: `bios_version` "*amazon").
    Ec2,
    /// DigitalOcean (`sys_vendor` "DigitalOcean").
    DigitalOcean,
    /// OpenStack Nova (`product_name` or `chassis_asset_tag` "OpenStack Nova"/"OpenStack
    /// Compute"), whose metadata service is EC2-compatible.
    OpenStack,
    /// Some other machine, named by its `sys_vendor` and `product_name`.
    Other(String),
    /// No DMI strings at all: cannot tell.
    Unknown,
}

impl Platform {
    /// Reads the DMI fields under `dir` (normally [`DMI_DIR`]).
    pub fn detect(dir: &Path) -> Platform {
        let fields: Vec<(&str, String)> = FIELDS
            .iter()
            .filter_map(|f| read_field(&dir.join(f)).map(|v| (*f, v)))
            .collect();
        Platform::from_fields(&fields)
    }

    /// The platform the `(field, value)` pairs describe.
    pub fn from_fields(fields: &[(&str, String)]) -> Platform {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(f, _)| *f == name)
                .map_or("", |(_, v)| v.as_str())
        };
        if fields.iter().all(|(_, v)| v.is_empty()) {
            return Platform::Unknown;
        }
        let vendor = get("sys_vendor");
        if vendor.eq_ignore_ascii_case("Amazon EC2")
            || get("bios_vendor").eq_ignore_ascii_case("Amazon EC2")
            || get("bios_version").to_ascii_lowercase().ends_with("amazon")
        {
            return Platform::Ec2;
        }
        if vendor.eq_ignore_ascii_case("DigitalOcean") {
            return Platform::DigitalOcean;
        }
        let openstack = |v: &str| v == "OpenStack Nova" || v == "OpenStack Compute";
        if openstack(get("product_name")) || openstack(get("chassis_asset_tag")) {
            return Platform::OpenStack;
        }
        let name = [vendor, get("product_name")]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        Platform::Other(if name.is_empty() {
            "unnamed".to_owned()
        } else {
            name
        })
    }

    /// The metadata services this platform has, in the order to ask them. A machine whose DMI
    /// strings cannot be read gets every service ([`super::DEFAULT_SERVICES`]); a machine known
    /// not to be on one of these clouds gets none.
    pub fn services(&self) -> Vec<Service> {
        match self {
            Platform::Ec2 | Platform::OpenStack => vec![Service::Ec2],
            Platform::DigitalOcean => vec![Service::DigitalOcean],
            Platform::Unknown => super::DEFAULT_SERVICES.to_vec(),
            Platform::Other(_) => Vec::new(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Platform::Ec2 => f.write_str("Amazon EC2"),
            Platform::DigitalOcean => f.write_str("DigitalOcean"),
            Platform::OpenStack => f.write_str("OpenStack"),
            Platform::Other(name) => write!(f, "{name} (not a cloud with a metadata service)"),
            Platform::Unknown => f.write_str("unknown (no SMBIOS strings)"),
        }
    }
}

/// One DMI string, trimmed; `None` when the file is missing or unreadable (some are root-only).
/// At most [`MAX_FIELD`] bytes are read, and control characters are dropped: the strings come
/// from the firmware.
fn read_field(path: &Path) -> Option<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FIELD)
        .read_to_end(&mut buf)
        .ok()?;
    let text: String = String::from_utf8_lossy(&buf)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    Some(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(f, v)| (*f, (*v).to_owned())).collect()
    }

    #[test]
    fn known_clouds_by_their_smbios_strings() {
        // as the machines show them: EC2 Nitro, EC2 Xen (t2), DigitalOcean, OpenStack Nova
        let cases = [
            (
                fields(&[("sys_vendor", "Amazon EC2"), ("product_name", "t3.micro")]),
                Platform::Ec2,
            ),
            (
                fields(&[("sys_vendor", "Xen"), ("bios_version", "4.11.amazon")]),
                Platform::Ec2,
            ),
            (
                fields(&[("sys_vendor", "DigitalOcean"), ("product_name", "Droplet")]),
                Platform::DigitalOcean,
            ),
            (
                fields(&[
                    ("sys_vendor", "OpenStack Foundation"),
                    ("product_name", "OpenStack Nova"),
                ]),
                Platform::OpenStack,
            ),
            (
                fields(&[
                    ("sys_vendor", "QEMU"),
                    ("chassis_asset_tag", "OpenStack Compute"),
                ]),
                Platform::OpenStack,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(Platform::from_fields(&f), want, "{f:?}");
        }
        assert_eq!(Platform::Ec2.services(), [Service::Ec2]);
        assert_eq!(Platform::OpenStack.services(), [Service::Ec2]);
        assert_eq!(Platform::DigitalOcean.services(), [Service::DigitalOcean]);
    }

    #[test]
    fn other_machines_ask_no_metadata_service_and_unreadable_ones_ask_all() {
        let qemu = Platform::from_fields(&fields(&[
            ("sys_vendor", "QEMU"),
            ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
            ("bios_vendor", "EFI Development Kit II / OVMF"),
        ]));
        assert_eq!(
            qemu,
            Platform::Other("QEMU Standard PC (Q35 + ICH9, 2009)".into())
        );
        assert!(qemu.services().is_empty());
        let metal = Platform::from_fields(&fields(&[("sys_vendor", "Dell Inc.")]));
        assert!(metal.services().is_empty());
        assert_eq!(Platform::from_fields(&[]), Platform::Unknown);
        assert_eq!(
            Platform::from_fields(&fields(&[("sys_vendor", "")])),
            Platform::Unknown
        );
        assert_eq!(Platform::Unknown.services(), super::super::DEFAULT_SERVICES);
        // "amazon" elsewhere than the end of the BIOS version is not EC2
        assert!(matches!(
            Platform::from_fields(&fields(&[("bios_version", "amazonas 1.0")])),
            Platform::Other(_)
        ));
    }

    #[test]
    fn detect_reads_bounded_trimmed_fields_from_a_directory() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Platform::detect(d.path()), Platform::Unknown);
        assert_eq!(
            Platform::detect(&d.path().join("missing")),
            Platform::Unknown
        );
        std::fs::write(d.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert_eq!(Platform::detect(d.path()), Platform::Ec2);
        // a hostile or broken firmware string: long, with control characters
        let long = format!("Vendor\x1b[31m{}", "x".repeat(10_000));
        std::fs::write(d.path().join("sys_vendor"), long).unwrap();
        match Platform::detect(d.path()) {
            Platform::Other(name) => {
                assert!(
                    name.len() <= MAX_FIELD as usize && !name.contains('\x1b'),
                    "{name}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
