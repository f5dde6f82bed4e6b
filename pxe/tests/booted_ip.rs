//! `cloud_config_access: booted-ip` (issue 15 item 9) on loopback, with real HTTP clients bound to
//! other loopback addresses (127.0.0.2 is another host as far as the server can tell): a group's
//! cloud-config and metadata go only to the address that fetched the machine's iPXE script from this
//! server; any other address naming the MAC gets 403 with the reason and none of the content; the
//! default (`any`) serves any host as before.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use common::{get_from, image, TestServer};

const TEMPLATE: &str = "#cloud-config\nhostname: {{ metadata.hostname }}\nwrite_files:\n  - path: /etc/secret-ish\n    content: \"group={{ group }} mac={{ mac }} ip={{ ip }}\"\n";

const MAC: &str = "52:54:00:00:0b:01";
const OPEN_MAC: &str = "52:54:00:00:0b:02";

const INVENTORY: &str = "\
profiles:
  - name: ram
    image: images/lab
    cloud_config: t.yaml.j2
groups:
  - name: closed
    profile: ram
    selector: {mac: 52:54:00:00:0b:01}
    cloud_config_access: booted-ip
    metadata: {hostname: closed-node}
  - name: open
    profile: ram
    selector: {mac: 52:54:00:00:0b:02}
    metadata: {hostname: open-node}
";

struct Fixture {
    _dir: tempfile::TempDir,
    config: PathBuf,
    ipxe: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    image(&root.join("images"), "lab", "1.0", 1000);
    std::fs::write(root.join("t.yaml.j2"), TEMPLATE).unwrap();
    let config = root.join("inventory.yaml");
    std::fs::write(&config, INVENTORY).unwrap();
    let ipxe = root.join("ipxe");
    std::fs::create_dir(&ipxe).unwrap();
    Fixture {
        _dir: dir,
        config,
        ipxe,
    }
}

fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The `cloud-config-url=` of an iPXE script, as a path on the server.
fn cloud_config_path(script: &str, server: &TestServer) -> String {
    let url = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cloud-config-url="))
        .unwrap_or_else(|| panic!("no cloud-config-url in {script}"));
    url.strip_prefix(&format!("http://{}", server.http))
        .unwrap_or_else(|| panic!("{url} is not on the server"))
        .to_string()
}

/// A 403 that says why and gives away nothing of the group's content.
fn assert_refused(r: &common::Reply, from: IpAddr) {
    let body = r.text();
    assert_eq!(r.status, 403, "{body}");
    assert!(
        body.contains("group \"closed\" has cloud_config_access: booted-ip")
            && body.contains(&format!("netbooted {MAC} from this server"))
            && body.contains(&format!("this request comes from {from}")),
        "{body}"
    );
    for secret in ["closed-node", "#cloud-config", "HOSTNAME", "secret-ish"] {
        assert!(
            !body.contains(secret),
            "the 403 gives away {secret:?}: {body}"
        );
    }
    // Nor where the machine booted: the only address in it is the requester's own.
    assert_eq!(
        body.matches("127.0.0.").count(),
        body.matches(&from.to_string()).count(),
        "the 403 names another address: {body}"
    );
}

#[test]
fn booted_ip_serves_the_cloud_config_only_to_the_address_that_netbooted_the_mac() {
    let f = fixture();
    let s = TestServer::start(&f.config, false, &f.ipxe);
    let (machine, attacker, other) = (host(1), host(2), host(3));

    // Nobody netbooted the MAC yet: not even the machine's future address gets it.
    let direct = format!("/cloud-config?mac={MAC}");
    assert_refused(&get_from(&s, machine, &direct), machine);

    // The machine netboots: iPXE fetches its script from 127.0.0.1.
    let script = get_from(&s, machine, &format!("/ipxe?mac={MAC}&arch=x86_64"));
    assert_eq!(script.status, 200, "{}", script.text());
    let path = cloud_config_path(&script.text(), &s);

    // Another host names the MAC: the very URL the machine got, the alias, other MAC forms,
    // metadata. All refused, and none of it moves the machine's row.
    for p in [
        path.clone(),
        direct.clone(),
        path.replace("/cloud-config?", "/cloud?"),
        "/cloud-config?mac=52-54-00-00-0B-01".to_string(),
        "/cloud-config?mac=525400000b01".to_string(),
        format!("/metadata?mac={MAC}"),
    ] {
        assert_refused(&get_from(&s, attacker, &p), attacker);
    }
    let row = s
        .server()
        .machines()
        .into_iter()
        .find(|m| m.key == MAC)
        .unwrap();
    assert_eq!(
        (row.ip.as_str(), row.stage),
        ("127.0.0.1", cairn_pxe::Stage::Script)
    );

    // The machine itself gets it.
    let got = get_from(&s, machine, &path);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.text(),
        format!("#cloud-config\nhostname: closed-node\nwrite_files:\n  - path: /etc/secret-ish\n    content: \"group=closed mac={MAC} ip=127.0.0.1\"\n")
    );
    let meta = get_from(&s, machine, &format!("/metadata?mac={MAC}"));
    assert_eq!(meta.status, 200);
    assert!(
        meta.text().contains("HOSTNAME=closed-node\n"),
        "{}",
        meta.text()
    );
    // ... again (cloud-init retries, a service restart within the hour).
    assert_eq!(get_from(&s, machine, &path).status, 200);
    assert_eq!(
        s.server()
            .machines()
            .into_iter()
            .find(|m| m.key == MAC)
            .unwrap()
            .stage,
        cairn_pxe::Stage::CloudConfig
    );

    // The latest netboot is the session: the MAC netboots from 127.0.0.3 (a new lease, or a
    // host that claims the MAC, which the server cannot tell apart); from then on only .3.
    assert_eq!(get_from(&s, other, &format!("/ipxe?mac={MAC}")).status, 200);
    assert_refused(&get_from(&s, machine, &path), machine);
    assert_eq!(get_from(&s, other, &path).status, 200);
}

#[test]
fn the_default_any_serves_any_host_as_before() {
    let f = fixture();
    let s = TestServer::start(&f.config, false, &f.ipxe);
    // No netboot at all, from another host: the open group answers as it always did.
    let r = get_from(&s, host(2), &format!("/cloud-config?mac={OPEN_MAC}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("hostname: open-node\n"), "{}", r.text());
    let m = get_from(&s, host(2), &format!("/metadata?mac={OPEN_MAC}"));
    assert_eq!(m.status, 200);
    // A machine that netbooted from .1 does not restrict an open group either.
    assert_eq!(
        get_from(&s, host(1), &format!("/ipxe?mac={OPEN_MAC}")).status,
        200
    );
    assert_eq!(
        get_from(&s, host(3), &format!("/cloud?mac={OPEN_MAC}")).status,
        200
    );
    // And the inventory says which is which.
    let inv = s.server().inventory();
    let access: Vec<_> = inv
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.cloud_config_access))
        .collect();
    assert_eq!(
        access,
        [
            ("closed", cairn_pxe::CloudConfigAccess::BootedIp),
            ("open", cairn_pxe::CloudConfigAccess::Any)
        ]
    );
}
