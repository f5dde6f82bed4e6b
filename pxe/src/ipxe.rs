//! The text the server generates: the `/boot.ipxe` chain script, per-machine iPXE scripts (HTTP or TFTP
//! transport), the no-match retry script, and `/metadata` env files.

use std::collections::BTreeMap;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::facts::Facts;
use crate::inventory::{Group, Inventory, Transport};

/// Seconds the no-match script waits before asking again.
pub const RETRY_SECONDS: u32 = 30;

/// Characters kept as-is in query values: unreserved (RFC 3986).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The query iPXE fills in with what it knows about the machine (Matchbox's, plus `platform`).
pub const FACTS_QUERY: &str = "mac=${mac:hexhyp}&uuid=${uuid}&hostname=${hostname:uristring}&serial=${serial:uristring}&arch=${buildarch:uristring}&platform=${platform:uristring}";

/// `#!ipxe` script chaining to `BASE/ipxe?FACTS`. `base` is an absolute URL without a trailing `/`.
pub fn boot_script(base: &str) -> String {
    format!("#!ipxe\nchain {base}/ipxe?{FACTS_QUERY}\n")
}

/// Where iPXE fetches kernel and initrd from.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `http://host:port` as machines reach the HTTP server.
    pub public_url: String,
    /// `host:port` of the TFTP server as machines reach it, when TFTP runs.
    pub tftp: Option<String>,
}

/// The machine's boot script for its group.
pub fn machine_script(
    inv: &Inventory,
    group: &Group,
    facts: &Facts,
    ep: &Endpoints,
) -> Result<String, String> {
    machine_script_of(inv, group, facts, ep, &inv.profile_of(group).image)
}

/// [`machine_script`] with another image folder of the inventory (`image`: its `NAME-VERSION`
/// key) than the profile's: a diskless machine's last good image while the profile's failed there.
pub fn machine_script_of(
    inv: &Inventory,
    group: &Group,
    facts: &Facts,
    ep: &Endpoints,
    image: &str,
) -> Result<String, String> {
    let profile = inv.profile_of(group);
    let base = match profile.transport {
        Transport::Http => format!("{}/assets/{image}", ep.public_url),
        Transport::Tftp => match &ep.tftp {
            Some(t) => format!("tftp://{t}/assets/{image}"),
            None => {
                return Err(format!(
                    "profile {:?} uses transport: tftp but the TFTP server is off",
                    profile.name
                ))
            }
        },
    };
    let mut kernel = format!("kernel {base}/vmlinuz");
    for a in profile.cmdline_args() {
        kernel.push(' ');
        kernel.push_str(&escape_ipxe(&a));
    }
    // the root image in pxe-initrd.img carries its hash tree: /init opens
    // it through dm-verity with the parameters from this trusted script
    if let Some(v) = inv.images.get(image).and_then(|i| i.verity) {
        kernel.push(' ');
        kernel.push_str(&v.to_cmdline_word());
    }
    if profile.cloud_config.is_some() {
        kernel.push_str(&format!(
            " cloud-config-url={}/cloud-config?{}",
            ep.public_url,
            escape_ipxe(&facts_query(facts))
        ));
    }
    Ok(format!(
        "#!ipxe\necho cairn: {} (group {}, profile {}, image {})\n{kernel}\ninitrd --name {} {base}/{}\nboot\n",
        sanitize(&facts.describe()),
        group.name,
        profile.name,
        image,
        profile.initrd_file(),
        profile.initrd_file(),
    ))
}

/// The installer's boot script: the profile's image booted diskless as
/// [`machine_script`] boots it, with the `cairn.install*` words that make
/// `cairn-update install` copy the image's `disk.raw` to the disk the
/// profile's rule picks, report to this server, and reboot.
pub fn install_script(
    inv: &Inventory,
    group: &Group,
    facts: &Facts,
    ep: &Endpoints,
    attempt: u32,
    allow_overwrite: bool,
) -> Result<String, String> {
    use cairn_formats::cmdline as k;
    let profile = inv.profile_of(group);
    let spec = profile.install.clone().unwrap_or_default();
    let mac = facts.labels.get("mac").cloned().unwrap_or_default();
    let mut words = vec![
        format!("{}={}", k::INSTALL, ep.public_url),
        format!("{}={}", k::INSTALL_IMAGE, profile.image),
        format!("{}={}", k::INSTALL_DISK, spec.disk),
        format!("{}={mac}", k::INSTALL_MAC),
    ];
    if spec.overwrite || allow_overwrite {
        words.push(format!("{}=1", k::INSTALL_OVERWRITE));
    }
    let script = machine_script(inv, group, facts, ep)?;
    let words: Vec<String> = words.iter().map(|w| escape_ipxe(w)).collect();
    Ok(script
        .replacen("\ninitrd ", &format!(" {}\ninitrd ", words.join(" ")), 1)
        .replacen(
            "#!ipxe\n",
            &format!(
                "#!ipxe\necho cairn: installing {} to this machine's disk (attempt {attempt})\n",
                profile.image
            ),
            1,
        ))
}

/// `script` (a [`machine_script`] of a diskless machine) with the
/// `cairn.report*` words on its kernel line: `cairn-update health` on the
/// machine reports its boot and health verdict to `server` under `mac`,
/// and with `trial` a failed gate reboots it (the server then serves the
/// last image that was healthy there).
pub fn with_report_words(script: &str, server: &str, mac: &str, trial: bool) -> String {
    use cairn_formats::cmdline as k;
    let mut words = vec![
        format!("{}={server}", k::REPORT),
        format!("{}={mac}", k::REPORT_MAC),
    ];
    if trial {
        words.push(format!("{}=1", k::REPORT_TRIAL));
    }
    let words: Vec<String> = words.iter().map(|w| escape_ipxe(w)).collect();
    script.replacen("\ninitrd ", &format!(" {}\ninitrd ", words.join(" ")), 1)
}

/// The script for a machine whose install is done: boot its local disk.
/// Under UEFI `exit` hands back to the firmware, which tries the next
/// boot option (the disk); under BIOS `sanboot` boots the first disk.
pub fn local_disk_script(facts: &Facts, why: &str) -> String {
    // UEFI: `exit 1`, not `exit`: iPXE turns status 0 into EFI_SUCCESS, and a
    // boot option that succeeds ends the firmware's boot loop (EDK2's BDS then
    // shows its boot menu); an error makes it try the next option, the disk
    let boot = if facts.labels.get("platform").map(String::as_str) == Some("pcbios") {
        "sanboot --no-describe --drive 0x80 || exit 1"
    } else {
        "exit 1"
    };
    format!(
        "#!ipxe\necho cairn: {} {}: booting from the local disk\n{boot}\n",
        sanitize(&facts.describe()),
        sanitize(why)
    )
}

/// The script for a machine the server will not install: says why on
/// the console and leaves the machine to its firmware's next boot option.
pub fn refused_script(facts: &Facts, why: &str) -> String {
    format!(
        "#!ipxe\necho cairn: {}: {}\nsleep 10\nexit 1\n",
        sanitize(&facts.describe()),
        sanitize(why)
    )
}

/// The script for a machine no group matches: says so, waits, and starts over at `/boot.ipxe`.
pub fn no_match_script(facts: &Facts, boot_url: &str) -> String {
    format!(
        "#!ipxe\necho cairn: no group matches {}\necho cairn: add a group to the inventory (or a default group); retrying in {RETRY_SECONDS} seconds\nsleep {RETRY_SECONDS}\nchain --replace --autofree {boot_url}\n",
        sanitize(&facts.describe())
    )
}

/// The facts a machine sent, as a query string for its cloud-config URL: all of them, so that the same
/// group is selected (a group may select on `platform` or any label).
pub fn facts_query(facts: &Facts) -> String {
    facts
        .labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, QUERY),
                utf8_percent_encode(v, QUERY)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Keeps only characters that cannot start iPXE expansions or break the line.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " :._-/()\"=,".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// iPXE expands `${...}` in command lines; a literal `$` is written `${}`-free by doubling nothing, so
/// refuse to pass it through: replace `$` with its percent form in URLs and drop it elsewhere.
fn escape_ipxe(s: &str) -> String {
    s.replace('$', "%24")
}

/// Flat `KEY=value` lines like Matchbox: facts then metadata (nested keys joined with `_`), upper case, sorted.
pub fn metadata_env(group: &Group, facts: &Facts) -> String {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &facts.labels {
        out.insert(k.to_ascii_uppercase(), v.clone());
    }
    for (k, v) in &group.metadata {
        flatten(&k.to_ascii_uppercase(), v, &mut out);
    }
    out.insert("GROUP".into(), group.name.clone());
    out.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let key: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{key}_{}", k.to_ascii_uppercase()), v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(key, s.replace('\n', "\\n"));
        }
        serde_json::Value::Null => {
            out.insert(key, String::new());
        }
        serde_json::Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(key, items.join(","));
        }
        other => {
            out.insert(key, other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_match_script_retries_and_is_inert() {
        let f = Facts::from_query("mac=52:54:00:00:00:09&hostname=a${b}");
        let s = no_match_script(&f, "http://h:1/boot.ipxe");
        assert!(
            s.starts_with(
                "#!ipxe\necho cairn: no group matches mac 52:54:00:00:00:09 invalid hostname \"a??b?\"\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("\nsleep 30\nchain --replace --autofree http://h:1/boot.ipxe\n"),
            "{s}"
        );
        assert!(!s.contains("kernel"));
    }

    #[test]
    fn machine_script_names_the_root_images_verity_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::create_dir_all(&img).unwrap();
        let v = cairn_formats::verity::Verity {
            root_hash: [0xab; 32],
            salt: [0x01; 32],
            data_blocks: 77,
        };
        let mut m = cairn_formats::image_dir::Manifest::named("img", "1.0");
        m.verity = Some((&v).into());
        std::fs::write(
            img.join("manifest.json"),
            serde_json::to_string(&m).unwrap(),
        )
        .unwrap();
        std::fs::write(img.join("vmlinuz"), b"k").unwrap();
        std::fs::write(img.join("pxe-initrd.img"), b"i").unwrap();
        let inv_path = dir.path().join("inv.yaml");
        let yaml = "profiles:\n  - name: p\n    image: img\n    kernel_args: [quiet]\ngroups:\n  - name: all\n    profile: p\n";
        std::fs::write(&inv_path, yaml).unwrap();
        let inv = Inventory::load(&inv_path).unwrap();
        let facts = Facts::from_query("mac=52:54:00:00:00:01");
        let group = inv.select(&facts).unwrap();
        let ep = Endpoints {
            public_url: "http://h:1".into(),
            tftp: None,
        };
        let s = machine_script(&inv, group, &facts, &ep).unwrap();
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.ends_with(&format!(
                "cairn.root=ram quiet cairn.verity={}:{}:77",
                "ab".repeat(32),
                "01".repeat(32)
            )),
            "{kernel}"
        );
        // an image without the field (verity: false, older builds): no word
        std::fs::write(
            img.join("manifest.json"),
            serde_json::to_string(&cairn_formats::image_dir::Manifest::named("img", "1.0"))
                .unwrap(),
        )
        .unwrap();
        let inv = Inventory::load(&inv_path).unwrap();
        let s = machine_script(&inv, inv.select(&facts).unwrap(), &facts, &ep).unwrap();
        assert!(!s.contains("cairn.verity"), "{s}");
    }

    #[test]
    fn facts_query_round_trips() {
        let f = Facts::from_query("mac=52-54-00-00-00-09&serial=a b&arch=x86_64&rack=r%261");
        let q = facts_query(&f);
        assert_eq!(
            q,
            "arch=x86_64&mac=52%3A54%3A00%3A00%3A00%3A09&rack=r%261&serial=a%20b"
        );
        assert_eq!(Facts::from_query(&q).labels, f.labels);
    }
}
