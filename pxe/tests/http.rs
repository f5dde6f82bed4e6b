//! The server in-process on 127.0.0.1 port 0: iPXE scripts (both transports, no match, MAC forms),
//! cloud-config and metadata, assets (ranges, ETags, traversal), the machine table, reload, TFTP via curl.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{get, image, pattern, raw_get, TestServer};

const TEMPLATE: &str = "#cloud-config\nhostname: {{ metadata.hostname | default('node') }}\nwrite_files:\n  - path: /etc/facts\n    content: \"mac={{ mac }} uuid={{ uuid }} ip={{ ip }} url={{ public_url }} rack={{ request.query.rack | default('-') }}\"\n";

const INVENTORY: &str = "\
profiles:
  - name: ram
    image: images/lab
    kernel_args: console=ttyS0
    cloud_config: t.yaml.j2
  - name: state
    image: images/lab
    boot: disk-state
    transport: tftp
groups:
  - name: node1
    profile: ram
    selector: {mac: 52:54:00:12:34:56}
    metadata: {hostname: node1, role: etcd, nested: {a: 1, b: x}}
  - name: rack2
    profile: state
    selector: {rack: r2, row: 7}
";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    ipxe: PathBuf,
}

fn fixture(kernel_len: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    image(&root.join("images"), "lab", "1.0", kernel_len);
    std::fs::write(root.join("t.yaml.j2"), TEMPLATE).unwrap();
    let config = root.join("inventory.yaml");
    std::fs::write(&config, INVENTORY).unwrap();
    let ipxe = root.join("ipxe");
    std::fs::create_dir(&ipxe).unwrap();
    std::fs::write(ipxe.join("undionly.kpxe"), pattern(5000, 3)).unwrap();
    std::fs::write(ipxe.join("ipxe.efi"), pattern(9000, 5)).unwrap();
    Fixture {
        _dir: dir,
        root,
        config,
        ipxe,
    }
}

fn start(f: &Fixture) -> TestServer {
    TestServer::start(&f.config, true, &f.ipxe)
}

#[test]
fn boot_ipxe_chains_to_the_machine_script_with_facts() {
    let f = fixture(1000);
    let s = start(&f);
    let r = get(&s.url("/boot.ipxe"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        format!(
            "#!ipxe\nchain http://{}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&hostname=${{hostname:uristring}}&serial=${{serial:uristring}}&arch=${{buildarch:uristring}}&platform=${{platform:uristring}}\n",
            s.http
        )
    );
    assert_eq!(get(&s.url("/healthz"), &[]).text(), "ok\n");
}

#[test]
fn machine_script_http_transport_and_mac_forms() {
    let f = fixture(1000);
    let s = start(&f);
    let base = format!("http://{}", s.http);
    let want_kernel = format!(
        "kernel {base}/assets/lab-1.0/vmlinuz initrd=pxe-initrd.img cairn.root=ram console=ttyS0 cloud-config-url={base}/cloud-config?arch=x86_64&mac=52%3A54%3A00%3A12%3A34%3A56&platform=efi cairn.report={base} cairn.report.mac=52:54:00:12:34:56"
    );
    for mac in [
        "52:54:00:12:34:56",
        "52-54-00-12-34-56",
        "52%3A54%3A00%3A12%3A34%3A56",
        "52%3a54%3a00%3a12%3a34%3a56",
        "52-54-00-12-34-56".to_uppercase().as_str(),
    ] {
        let r = get(
            &s.url(&format!(
                "/ipxe?mac={mac}&uuid=&hostname=&serial=&arch=x86_64&platform=efi"
            )),
            &[],
        );
        assert_eq!(r.status, 200, "{mac}");
        let t = r.text();
        assert!(t.starts_with("#!ipxe\n"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[2], want_kernel, "{mac}\n{t}");
        assert_eq!(
            lines[3],
            format!("initrd --name pxe-initrd.img {base}/assets/lab-1.0/pxe-initrd.img")
        );
        assert_eq!(lines[4], "boot");
        assert_eq!(lines.len(), 5);
    }
    // The cloud-config URL in the script selects the same group and renders.
    let t = get(&s.url("/ipxe?mac=52-54-00-12-34-56"), &[]).text();
    let url = t
        .split("cloud-config-url=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let cc = get(url, &[]);
    assert_eq!(cc.status, 200);
    assert!(
        cc.text().starts_with("#cloud-config\nhostname: node1\n"),
        "{}",
        cc.text()
    );
}

#[test]
fn machine_script_tftp_transport_and_disk_state() {
    let f = fixture(1000);
    let s = start(&f);
    let t = get(&s.url("/ipxe?mac=52:54:00:00:00:77&rack=r2&row=7"), &[]).text();
    let tftp = format!("tftp://127.0.0.1:{}", s.tftp.unwrap().port());
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[2],
        format!("kernel {tftp}/assets/lab-1.0/vmlinuz initrd=pxe-initrd.img cairn.root=ram cairn.state=label:cairn-state cairn.report=http://{} cairn.report.mac=52:54:00:00:00:77", s.http),
        "{t}"
    );
    assert_eq!(
        lines[3],
        format!("initrd --name pxe-initrd.img {tftp}/assets/lab-1.0/pxe-initrd.img")
    );
    // --public-url decides the host of both HTTP and TFTP URLs.
    let s2 =
        TestServer::try_start(&f.config, true, &f.ipxe, Some("http://10.9.8.7:8080/")).unwrap();
    let t = get(&s2.url("/ipxe?rack=r2&row=7"), &[]).text();
    assert!(
        t.contains(&format!(
            "kernel tftp://10.9.8.7:{}/assets/lab-1.0/vmlinuz",
            s2.tftp.unwrap().port()
        )),
        "{t}"
    );
    let t = get(&s2.url("/ipxe?mac=52:54:00:12:34:56"), &[]).text();
    assert!(
        t.contains("kernel http://10.9.8.7:8080/assets/lab-1.0/vmlinuz "),
        "{t}"
    );
    assert!(
        t.contains(" cloud-config-url=http://10.9.8.7:8080/cloud-config?mac="),
        "{t}"
    );
}

#[test]
fn tftp_profiles_need_tftp() {
    let f = fixture(100);
    let e = TestServer::try_start(&f.config, false, &f.ipxe, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("profile \"state\" has transport: tftp but the TFTP server is off"),
        "{e}"
    );
}

#[test]
fn unknown_machines_get_a_retry_script_and_no_image() {
    let f = fixture(100);
    let s = start(&f);
    let r = get(
        &s.url("/ipxe?mac=52:54:00:99:99:99&uuid=1234-AB&hostname=&serial="),
        &[],
    );
    assert_eq!(r.status, 200, "iPXE runs only 2xx scripts");
    let t = r.text();
    assert_eq!(
        t,
        format!(
            "#!ipxe\necho cairn: no group matches mac 52:54:00:99:99:99 uuid 1234-ab\necho cairn: add a group to the inventory (or a default group); retrying in 30 seconds\nsleep 30\nchain --replace --autofree http://{}/boot.ipxe\n",
            s.http
        )
    );
    // No cloud-config or metadata either.
    let cc = get(&s.url("/cloud-config?mac=52:54:00:99:99:99"), &[]);
    assert_eq!(cc.status, 404);
    assert_eq!(cc.text(), "cairn: no group matches mac 52:54:00:99:99:99\n");
    assert_eq!(
        get(&s.url("/metadata?mac=52:54:00:99:99:99"), &[]).status,
        404
    );
    // A group whose profile has no template: 404 naming it.
    let r = get(&s.url("/cloud-config?rack=r2&row=7"), &[]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        "cairn: group \"rack2\" (profile \"state\") has no cloud_config\n"
    );
}

#[test]
fn cloud_config_renders_facts_and_cloud_alias() {
    let f = fixture(100);
    let s = start(&f);
    for path in ["/cloud-config", "/cloud"] {
        let r = get(
            &s.url(&format!("{path}?mac=52-54-00-12-34-56&uuid=ABCD&rack=r9")),
            &[("Host", "boot.example.test:8080")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            "#cloud-config\nhostname: node1\nwrite_files:\n  - path: /etc/facts\n    content: \"mac=52:54:00:12:34:56 uuid=abcd ip=127.0.0.1 url=http://boot.example.test:8080 rack=r9\"\n"
        );
        assert!(cairn_cloudconfig::validate(&r.text()).is_empty());
    }
}

#[test]
fn metadata_is_flat_upper_case_env() {
    let f = fixture(100);
    let s = start(&f);
    let r = get(&s.url("/metadata?mac=52:54:00:12:34:56&uuid=AB"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "GROUP=node1\nHOSTNAME=node1\nMAC=52:54:00:12:34:56\nNESTED_A=1\nNESTED_B=x\nROLE=etcd\nUUID=ab\n"
    );
}

#[test]
fn ranges_etags_and_conditionals() {
    let len = 3 * 1024 * 1024 + 17;
    let f = fixture(len);
    let s = start(&f);
    let data = pattern(len, 7);
    let url = s.url("/assets/lab-1.0/vmlinuz");
    let full = get(&url, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(
        full.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert!(full.body == data, "full body differs");
    let tag = full.header("etag").unwrap().to_string();
    assert!(
        tag.starts_with('"') && !tag.starts_with("W/"),
        "strong ETag: {tag}"
    );
    let l = len as u64;
    // (Range, expected start, expected end inclusive)
    let table: &[(String, u64, u64)] = &[
        ("bytes=0-99".into(), 0, 99),
        ("bytes=1000000-1000999".into(), 1_000_000, 1_000_999),
        ("bytes=-500".into(), l - 500, l - 1),
        (format!("bytes={}-", l - 10), l - 10, l - 1),
        (format!("bytes={}-{}", l - 5, l + 100), l - 5, l - 1),
        ("bytes=0-".into(), 0, l - 1),
    ];
    for (range, a, b) in table {
        let r = get(&url, &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{l}").as_str()),
            "{range}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((b - a + 1).to_string().as_str())
        );
        assert!(
            r.body == data[*a as usize..=*b as usize],
            "{range}: body differs"
        );
    }
    for range in [
        format!("bytes={l}-"),
        "bytes=-0".to_string(),
        format!("bytes={}-{}", l + 5, l + 9),
    ] {
        let r = get(&url, &[("Range", &range)]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{l}").as_str())
        );
    }
    // Conditional requests.
    let r = get(&url, &[("If-None-Match", &tag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(tag.as_str()));
    assert_eq!(get(&url, &[("If-None-Match", "\"other\", *")]).status, 304);
    assert_eq!(get(&url, &[("If-None-Match", "\"other\"")]).status, 200);
    let r = get(&url, &[("Range", "bytes=10-19"), ("If-Range", &tag)]);
    assert_eq!(r.status, 206);
    let r = get(&url, &[("Range", "bytes=10-19"), ("If-Range", "\"stale\"")]);
    assert_eq!(r.status, 200, "a stale If-Range gets the whole file");
    assert_eq!(r.body.len(), len);
    // Rewriting the file changes the ETag.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(f.root.join("images/lab/vmlinuz"), b"new kernel").unwrap();
    let r = get(&url, &[("If-None-Match", &tag)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"new kernel");
    // HEAD: headers, no body.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let h = agent.head(&url).call().unwrap();
    assert_eq!(h.headers().get("content-length").unwrap(), "10");
}

#[test]
fn traversal_is_refused_and_nothing_outside_is_served() {
    let f = fixture(100);
    std::fs::write(f.root.join("secret"), b"TOP SECRET").unwrap();
    std::fs::write(f.root.join("images/secret"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink("../../secret", f.root.join("images/lab/escape")).unwrap();
    std::os::unix::fs::symlink(f.root.join("secret"), f.root.join("images/lab/absolute")).unwrap();
    std::os::unix::fs::symlink("vmlinuz", f.root.join("images/lab/kernel-link")).unwrap();
    let s = start(&f);
    let targets = [
        "/assets/../secret",
        "/assets/lab-1.0/../../secret",
        "/assets/lab-1.0/..%2f..%2fsecret",
        "/assets/%2e%2e/secret",
        "/assets/lab-1.0/%2e%2e/%2e%2e/secret",
        "/assets/lab-1.0/%2E%2E%2F%2E%2E%2Fsecret",
        "/assets/lab-1.0/escape",
        "/assets/lab-1.0/absolute",
        "/assets/lab-1.0//etc/passwd",
        "/assets//etc/passwd",
        "/assets/lab-1.0/.",
        "/assets/lab-1.0/",
        "/assets/lab-1.0/manifest.json/..",
        "/assets/lab/vmlinuz",
        "/assets/lab-1.0/%00",
        "/../secret",
    ];
    for t in targets {
        let r = raw_get(s.http, t);
        assert!(
            r.status == 403 || r.status == 404 || r.status == 400,
            "{t}: status {}",
            r.status
        );
        assert!(!r.text().contains("TOP SECRET"), "{t} leaked the file");
    }
    assert_eq!(raw_get(s.http, "/assets/lab-1.0/escape").status, 403);
    assert_eq!(
        raw_get(s.http, "/assets/lab-1.0/%2e%2e/%2e%2e/secret").status,
        403
    );
    // A symlink inside the folder is fine.
    let r = raw_get(s.http, "/assets/lab-1.0/kernel-link");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, pattern(100, 7));
}

#[test]
fn machine_table_follows_the_boot() {
    let f = fixture(100);
    let s = start(&f);
    get(
        &s.url("/ipxe?mac=52:54:00:12:34:56&uuid=A1&hostname=&serial="),
        &[],
    );
    let m = s.server().machines();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].stage, cairn_pxe::Stage::Script);
    get(&s.url("/assets/lab-1.0/vmlinuz"), &[]);
    assert_eq!(s.server().machines()[0].stage, cairn_pxe::Stage::Kernel);
    get(&s.url("/assets/lab-1.0/pxe-initrd.img"), &[]);
    assert_eq!(s.server().machines()[0].stage, cairn_pxe::Stage::Initrd);
    get(&s.url("/cloud-config?mac=52:54:00:12:34:56"), &[]);
    get(&s.url("/ipxe?mac=52:54:00:00:00:01"), &[]);
    // the table is for operators: not on the machines' listener, on the admin one
    let r = get(&s.url("/machines"), &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("--admin-addr"), "{}", r.text());
    let admin = s
        .server()
        .local_addrs()
        .admin
        .expect("the operators' listener");
    assert!(admin.ip().is_loopback());
    let r = get(&format!("http://{admin}/machines"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let unknown = &rows[0];
    assert_eq!(unknown["key"], "52:54:00:00:00:01");
    assert_eq!(unknown["stage"], "seen");
    assert!(unknown["group"].is_null());
    let node = &rows[1];
    assert_eq!(node["key"], "52:54:00:12:34:56");
    assert_eq!(node["stage"], "cloud-config");
    assert_eq!(node["group"], "node1");
    assert_eq!(node["profile"], "ram");
    assert_eq!(node["uuid"], "a1");
    assert_eq!(node["ip"], "127.0.0.1");
}

#[test]
fn reload_swaps_valid_inventories_and_keeps_the_old_on_error() {
    let f = fixture(100);
    let s = start(&f);
    let g = |q: &str| get(&s.url(&format!("/metadata?{q}&row=7")), &[]);
    assert_eq!(g("rack=r3").status, 404);
    // A download in flight keeps going across a reload.
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let mut inflight = agent.get(&s.url("/assets/lab-1.0/vmlinuz")).call().unwrap();
    // Valid: rack r3 now has a group.
    std::fs::write(&f.config, INVENTORY.replace("rack: r2", "rack: r3")).unwrap();
    s.server().reload().unwrap();
    assert_eq!(g("rack=r3").status, 200);
    assert_eq!(g("rack=r2").status, 404);
    // Invalid (unknown key): refused, old inventory stays.
    std::fs::write(
        &f.config,
        INVENTORY.replace("rack: r2", "rack: r4").replace(
            "    boot: disk-state\n",
            "    boot: disk-state\n    colour: red\n",
        ),
    )
    .unwrap();
    let e = s.server().reload().unwrap_err().to_string();
    assert!(
        e.contains("inventory.yaml:9:5: profiles[1].colour: unknown field `colour`"),
        "{e}"
    );
    assert_eq!(g("rack=r3").status, 200);
    assert_eq!(g("rack=r4").status, 404);
    // Invalid template: refused too.
    std::fs::write(
        f.root.join("t.yaml.j2"),
        "#cloud-config\nhostname: {{ metadata.missing }}\n",
    )
    .unwrap();
    std::fs::write(&f.config, INVENTORY).unwrap();
    let e = s.server().reload().unwrap_err().to_string();
    assert!(e.contains("t.yaml.j2:2: groups[0] (node1)"), "{e}");
    assert_eq!(g("rack=r3").status, 200);
    let body = inflight.body_mut().read_to_vec().unwrap();
    assert_eq!(body, pattern(100, 7));
}

#[test]
fn invalid_templates_refuse_to_start() {
    let f = fixture(100);
    std::fs::write(
        f.root.join("t.yaml.j2"),
        "#cloud-config\nhostname: {{ metadata.hostname }}\ncoreos:\n  units:\n    - name: a.service\n      command: lol\n",
    )
    .unwrap();
    let e = TestServer::try_start(&f.config, true, &f.ipxe, None)
        .err()
        .unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("t.yaml.j2:"), "{e}");
    assert!(
        e.contains("groups[0] (node1): rendered cloud-config for group \"node1\" (line 11 of"),
        "{e}"
    );
}

fn curl() -> &'static str {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs curl with TFTP support (Debian package curl)"
    );
    "curl"
}

#[test]
fn tftp_serves_ipxe_binaries_assets_and_boot_script() {
    let f = fixture(200_000);
    let s = start(&f);
    let tftp = s.tftp.unwrap();
    let fetch = |path: &str| -> (bool, Vec<u8>, String) {
        let out = Command::new(curl())
            .args(["-sS", "--max-time", "20", "--tftp-blksize", "1428"])
            .arg(format!("tftp://{tftp}/{path}"))
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, body, err) = fetch("undionly.kpxe");
    assert!(ok, "{err}");
    assert_eq!(body, pattern(5000, 3));
    let (ok, body, err) = fetch("assets/lab-1.0/vmlinuz");
    assert!(ok, "{err}");
    assert!(body == pattern(200_000, 7));
    let (ok, body, _) = fetch("boot.ipxe");
    assert!(ok);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.starts_with(&format!(
            "#!ipxe\nchain http://${{next-server}}:{}/ipxe?mac=${{mac:hexhyp}}",
            s.http.port()
        )),
        "{text}"
    );
    for bad in [
        "assets/lab-1.0/../../secret",
        "assets/../inventory.yaml",
        "inventory.yaml",
        "ipxe/undionly.kpxe",
    ] {
        let (ok, body, _) = fetch(bad);
        assert!(!ok && body.is_empty(), "{bad} was served");
    }
    let _ = Path::new("");
}

#[test]
fn example_inventory_loads() {
    // The example refers to ../out/default (the README's `cairn build` output folder seen from examples/).
    let dir = tempfile::tempdir().unwrap();
    let ex = dir.path().join("examples");
    std::fs::create_dir_all(ex.join("cloud")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::copy(src.join("lab.yaml"), ex.join("lab.yaml")).unwrap();
    std::fs::copy(
        src.join("cloud/node.yaml.j2"),
        ex.join("cloud/node.yaml.j2"),
    )
    .unwrap();
    image(dir.path(), "out/default", "1.0", 10);
    std::fs::write(
        dir.path().join("out/default/manifest.json"),
        serde_json::to_string(&cairn_formats::image_dir::Manifest::named("cairn", "0.1.0"))
            .unwrap(),
    )
    .unwrap();
    let inv = cairn_pxe::Inventory::load(&ex.join("lab.yaml")).unwrap();
    assert_eq!(inv.profiles.len(), 2);
    assert_eq!(inv.groups.len(), 3);
    assert_eq!(
        inv.select(&cairn_pxe::Facts::from_query(
            "mac=52-54-00-12-34-56&platform=efi"
        ))
        .unwrap()
        .name,
        "node1"
    );
    let s = TestServer::start(&ex.join("lab.yaml"), true, dir.path());
    // node1 has cloud_config_access: booted-ip: its cloud-config goes to the address that netbooted
    // it (here 127.0.0.1), not to another host naming its MAC.
    let mac1 = "/cloud-config?mac=52:54:00:12:34:56";
    assert_eq!(get(&s.url(mac1), &[]).status, 403, "before its netboot");
    assert_eq!(get(&s.url("/ipxe?mac=52:54:00:12:34:56"), &[]).status, 200);
    assert_eq!(
        common::get_from(&s, "127.0.0.2".parse().unwrap(), mac1).status,
        403
    );
    let cc = get(&s.url(mac1), &[]).text();
    assert!(
        cc.starts_with("#cloud-config\nhostname: node1\nssh_authorized_keys:\n  - ssh-ed25519 "),
        "{cc}"
    );
    let report = cairn_cloudconfig::validate(&cc);
    assert!(!report.has_errors(), "{cc}\n{report:?}");
    let cc = get(&s.url("/cloud-config?mac=52:54:00:aa:bb:cc"), &[]).text();
    assert!(
        cc.starts_with("#cloud-config\nhostname: node-525400aabbcc\nssh_authorized_keys: []\n"),
        "{cc}"
    );
    assert!(!cairn_cloudconfig::validate(&cc).has_errors(), "{cc}");
    let t = get(
        &s.url("/ipxe?mac=52:54:00:aa:bb:cc&rack=r1&platform=efi"),
        &[],
    )
    .text();
    assert!(
        t.contains("cairn.state=label:cairn-state console=ttyS0,115200"),
        "{t}"
    );
}

#[test]
fn request_facts_cannot_inject_yaml_lines() {
    let f = fixture(100);
    let s = start(&f);
    for q in [
        "mac=52:54:00:12:34:56&rack=r1%0Ausers:%0A%20%20-%20name:%20evil",
        "mac=52:54:00:12:34:56&rack=r1%0D%0Assh_authorized_keys:%20[evil]",
        "mac=52:54:00:12:34:56&rack=r1%22%0Aevil:%20x",
        // no newline, and still: the end of the quoted string, a comment, a flow list
        "mac=52:54:00:12:34:56&rack=r1%22%20evil:%20x",
        "mac=52:54:00:12:34:56&rack=r1%20%23evil",
        "mac=52:54:00:12:34:56&rack=%5Bevil%5D",
        "mac=52:54:00:12:34:56&rack=r1%5C%22evil",
    ] {
        let r = raw_get(s.http, &format!("/cloud-config?{q}"));
        assert_eq!(r.status, 200, "{q}");
        let text = r.text();
        assert!(!text.contains("evil"), "{q} injected:\n{text}");
        assert!(text.contains("rack=-"), "{text}");
        assert!(
            !cairn_cloudconfig::validate(&text).has_errors(),
            "{q}: the rendered cloud-config is broken:\n{text}"
        );
    }
    let r = raw_get(s.http, "/cloud-config?mac=52:54:00:12:34:56&rack=r9");
    assert!(r.text().contains("rack=r9"), "{}", r.text());
}
