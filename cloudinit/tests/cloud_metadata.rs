//! The real `cairn-cloudinit` binary against metadata services of the test's own on 127.0.0.1 (`--metadata-url`): an EC2 instance (IMDSv2, IMDSv1 only with `cairn.metadata.imdsv1`), a DigitalOcean droplet, the source order, hostile answers, and the time a machine without a metadata service loses (also with nothing answering at the real default address, in a network namespace of the test's own, as root).

#[path = "support/fake_cloud.rs"]
mod fake_cloud;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fake_cloud::{FakeCloud, Reply, TOKEN_HEADER, TTL_HEADER};

const BIN: &str = env!("CARGO_BIN_EXE_cairn-cloudinit");
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICloudKey00000000000000000000000000000001 ec2-key";
const DO_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICloudKey00000000000000000000000000000002 do-key";
/// User-data that shows the substitutions.
const USER_DATA: &str = "#cloud-config\nwrite_files:\n  - path: /etc/cairn-test/addrs\n    content: |\n      private=$private_ipv4 public=$public_ipv4\n";

/// A root with the accounts the agent needs (core 500:500 with a home).
fn seed(root: &Path) {
    let w = |p: &str, s: &str| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, s).unwrap();
    };
    w(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\ncore:x:500:500:Core:/home/core:/bin/bash\n",
    );
    w("etc/group", "root:x:0:\ncore:x:500:\n");
    w(
        "etc/shadow",
        "root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n",
    );
    fs::create_dir_all(root.join("home/core")).unwrap();
    std::os::unix::fs::chown(root.join("home/core"), Some(500), Some(500)).unwrap();
}

/// A seeded root and a command line file with `cmdline`.
fn machine(cmdline: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    seed(&root);
    fs::write(t.path().join("cmdline"), cmdline).unwrap();
    (t, root)
}

/// The binary with no local source, the metadata services at `base`.
fn agent(t: &Path, root: &Path, base: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--root")
        .arg(root)
        .arg("--cmdline")
        .arg(t.join("cmdline"))
        .arg("--state-user-data")
        .arg(t.join("no-user-data"))
        .arg("--no-config-drive")
        .args(["--metadata-url", base])
        .args(extra)
        .env("RUST_LOG", "info");
    c
}

fn run(c: &mut Command) -> (Output, String) {
    let out = c.output().expect("running cairn-cloudinit");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, log)
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"))
}

fn status(root: &Path) -> serde_json::Value {
    serde_json::from_str(&read(root, "run/cairn/cloudinit.status")).unwrap()
}

#[test]
fn ec2_imdsv2_gives_user_data_hostname_addresses_and_keys() {
    let s = FakeCloud::start("127.0.0.1:0", Some("AQAEAtoken=="));
    s.ec2_instance(
        Some(USER_DATA),
        "ip-10-1-2-3.ec2.internal",
        Some("203.0.113.7"),
        &[KEY],
    );
    let (t, root) = machine("console=ttyS0 quiet\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(read(&root, "etc/hostname"), "ip-10-1-2-3\n");
    // $private_ipv4 is local-ipv4 (the server answers the client's own
    // address), $public_ipv4 is public-ipv4
    assert_eq!(
        read(&root, "etc/cairn-test/addrs"),
        "private=127.0.0.1 public=203.0.113.7\n"
    );
    assert_eq!(
        read(&root, "home/core/.ssh/authorized_keys"),
        format!("{KEY}\n")
    );
    let st = status(&root);
    assert_eq!(st["status"], "applied", "{st}");
    assert_eq!(
        st["source"],
        format!("EC2 metadata service {} (IMDSv2)", s.base())
    );
    // the token first, then every GET with it
    let reqs = s.requests();
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert!(reqs[0].header(TTL_HEADER).is_some());
    assert!(reqs[1..]
        .iter()
        .all(|r| r.method == "GET" && r.header(TOKEN_HEADER) == Some("AQAEAtoken==")));
    assert!(log.contains("data source: EC2 metadata service"), "{log}");
}

#[test]
fn digitalocean_droplet_after_ec2_said_no() {
    let s = FakeCloud::start("127.0.0.1:0", None);
    s.droplet(
        &format!(
            r#"{{"droplet_id": 42, "hostname": "web-1", "public_keys": ["{DO_KEY}"],
                "interfaces": {{"private": [{{"ipv4": {{"ip_address": "10.132.0.5"}}}}],
                                "public": [{{"ipv4": {{"ip_address": "104.131.20.105"}}}}]}},
                "region": "nyc3", "features": {{"dhcp_enabled": false}}}}"#
        ),
        Some(USER_DATA),
    );
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(read(&root, "etc/hostname"), "web-1\n");
    assert_eq!(
        read(&root, "etc/cairn-test/addrs"),
        "private=10.132.0.5 public=104.131.20.105\n"
    );
    assert_eq!(
        read(&root, "home/core/.ssh/authorized_keys"),
        format!("{DO_KEY}\n")
    );
    assert_eq!(
        status(&root)["source"],
        format!("DigitalOcean metadata service {}", s.base())
    );
    assert_eq!(
        s.lines(),
        [
            "PUT /latest/api/token",
            "GET /metadata/v1.json",
            "GET /metadata/v1/user-data"
        ]
    );
    // cairn.metadata=digitalocean asks only DigitalOcean
    let (t, root) = machine("cairn.metadata=digitalocean\n");
    let before = s.lines().len();
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        s.lines()[before..],
        ["GET /metadata/v1.json", "GET /metadata/v1/user-data"]
    );
}

#[test]
fn imdsv1_only_where_the_kernel_command_line_allows_it() {
    let s = FakeCloud::start("127.0.0.1:0", None);
    s.ec2_instance(Some(USER_DATA), "old-cloud", None, &[KEY])
        .route("PUT", "/latest/api/token", vec![Reply::Status(403)]);
    // not allowed: EC2 is not there, DigitalOcean neither: no user-data
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(status(&root)["status"], "no-config");
    assert!(
        log.contains("IMDSv1 is tried only with cairn.metadata.imdsv1=1"),
        "{log}"
    );
    assert!(!s.lines().iter().any(|l| l.contains("user-data")));
    // allowed on the kernel command line
    let (t, root) = machine("console=ttyS0 cairn.metadata.imdsv1=1\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        status(&root)["source"],
        format!("EC2 metadata service {} (IMDSv1)", s.base())
    );
    assert_eq!(read(&root, "etc/hostname"), "old-cloud\n");
    // local-ipv4, and public = private when the service has no public one
    assert_eq!(
        read(&root, "etc/cairn-test/addrs"),
        "private=127.0.0.1 public=127.0.0.1\n"
    );
}

#[test]
fn local_sources_come_first_and_off_asks_nothing() {
    let s = FakeCloud::start("127.0.0.1:0", Some("t"));
    s.ec2_instance(Some(USER_DATA), "from-ec2", None, &[KEY]);
    // a config drive has user_data: the service is not asked
    let (t, root) = machine("console=ttyS0\n");
    let drive = t.path().join("drive/openstack/latest");
    fs::create_dir_all(&drive).unwrap();
    fs::write(
        drive.join("user_data"),
        "#cloud-config\nhostname: from-drive\n",
    )
    .unwrap();
    let (out, log) = run(Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .arg("--cmdline")
        .arg(t.path().join("cmdline"))
        .arg("--state-user-data")
        .arg(t.path().join("none"))
        .arg("--config-drive")
        .arg(t.path().join("drive"))
        .args(["--metadata-url", &s.base()]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(read(&root, "etc/hostname"), "from-drive\n");
    // the state partition's user-data: not asked either
    fs::write(
        t.path().join("state-ud"),
        "#cloud-config\nhostname: from-state\n",
    )
    .unwrap();
    let (out, log) = run(Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .arg("--cmdline")
        .arg(t.path().join("cmdline"))
        .arg("--state-user-data")
        .arg(t.path().join("state-ud"))
        .arg("--no-config-drive")
        .args(["--metadata-url", &s.base()]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(read(&root, "etc/hostname"), "from-state\n");
    // cairn.metadata=off, and --metadata off
    let (t, root) = machine("cairn.metadata=off\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    let (t2, root2) = machine("console=ttyS0\n");
    let (out2, log2) = run(&mut agent(
        t2.path(),
        &root2,
        &s.base(),
        &["--metadata", "off"],
    ));
    assert_eq!(out2.status.code(), Some(0), "{log2}");
    assert_eq!(status(&root)["status"], "no-config");
    assert_eq!(status(&root2)["status"], "no-config");
    assert!(s.requests().is_empty(), "{:?}", s.lines());
    // a bad --metadata is an error naming the flag
    let (out, log) = run(&mut agent(
        t.path(),
        &root,
        &s.base(),
        &["--metadata", "gce"],
    ));
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("--metadata: unknown metadata service \"gce\""),
        "{log}"
    );
}

#[test]
fn hostile_answers_are_refused_with_the_url_and_field() {
    // a hostname with bad characters: the facts are refused, the user-data applies
    let s = FakeCloud::start("127.0.0.1:0", Some("t"));
    s.ec2_instance(Some(USER_DATA), "evil;reboot", Some("203.0.113.7"), &[KEY]);
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(1), "{log}");
    let url = format!("{}/latest/meta-data/hostname", s.base());
    assert!(
        log.contains(&format!("{url}: hostname \"evil;reboot\"")),
        "{log}"
    );
    assert!(!root.join("etc/hostname").exists());
    assert!(!root.join("home/core/.ssh/authorized_keys").exists());
    // the user-data did apply; its addresses are none of the refused facts'
    assert!(root.join("etc/cairn-test/addrs").exists());
    let st = status(&root);
    assert_eq!(st["status"], "failed", "{st}");
    assert!(st["failures"][0].as_str().unwrap().contains(&url), "{st}");

    // a key with a line break
    let s = FakeCloud::start("127.0.0.1:0", Some("t"));
    s.ec2_instance(None, "fine", None, &[KEY]).get(
        "/latest/meta-data/public-keys/0/openssh-key",
        format!("{KEY}\nssh-rsa AAAAB3Nza evil@x\n"),
    );
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "{}/latest/meta-data/public-keys/0/openssh-key: public-keys/0/openssh-key has a line break",
            s.base()
        )),
        "{log}"
    );
    assert!(!root.join("home/core/.ssh/authorized_keys").exists());

    // endless user-data: cut at 16 MiB, the source failed, nothing applied
    let s = FakeCloud::start("127.0.0.1:0", Some("t"));
    s.ec2_instance(None, "fine", None, &[])
        .route("GET", "/latest/user-data", vec![Reply::Endless]);
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains(&format!(
            "{}/latest/user-data (user-data): larger than 16777216 bytes",
            s.base()
        )),
        "{log}"
    );
    assert!(!root.join("etc/hostname").exists());
    assert_eq!(status(&root)["status"], "source-failed");

    // bad JSON from DigitalOcean
    let s = FakeCloud::start("127.0.0.1:0", None);
    s.droplet(r#"{"hostname": "x", "public_keys": ["#, Some(USER_DATA));
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("{}/metadata/v1.json: not valid JSON", s.base())),
        "{log}"
    );

    // a redirect elsewhere is not followed: the token stays here
    let s = FakeCloud::start("127.0.0.1:0", Some("t"));
    s.ec2_instance(None, "fine", None, &[]).route(
        "GET",
        "/latest/user-data",
        vec![Reply::Redirect("http://192.0.2.66/user-data".into())],
    );
    let (t, root) = machine("console=ttyS0\n");
    let (out, log) = run(&mut agent(t.path(), &root, &s.base(), &[]));
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains("redirects are not followed"), "{log}");
}

/// Runs the agent, returns the seconds it took and its log.
fn timed(c: &mut Command) -> (f64, Output, String) {
    let t = Instant::now();
    let (out, log) = run(c);
    (t.elapsed().as_secs_f64(), out, log)
}

#[test]
fn a_machine_without_a_metadata_service_loses_seconds_at_most() {
    // nothing listens: refused at once
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (t, root) = machine("console=ttyS0\n");
    let (secs, out, log) = timed(&mut agent(
        t.path(),
        &root,
        &format!("http://127.0.0.1:{port}"),
        &[],
    ));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(status(&root)["status"], "no-config");
    // DigitalOcean, at the same address, is not tried after EC2 found nothing
    assert!(log.contains("no metadata service at"), "{log}");
    eprintln!("no metadata service, port closed: {secs:.2} s");
    assert!(secs < 2.0, "{secs} s\n{log}");

    // something accepts the connection and never answers: the probe's
    // 2 s per try, 2 tries
    let silent = FakeCloud::start("127.0.0.1:0", None);
    silent.route(
        "PUT",
        "/latest/api/token",
        vec![Reply::Silent(Duration::from_secs(30))],
    );
    let (t, root) = machine("console=ttyS0\n");
    let (secs, out, log) = timed(&mut agent(t.path(), &root, &silent.base(), &[]));
    assert_eq!(out.status.code(), Some(0), "{log}");
    eprintln!("metadata address accepts and stays silent: {secs:.2} s");
    assert!(secs < 6.0, "{secs} s\n{log}");
    assert_eq!(
        silent.lines(),
        ["PUT /latest/api/token", "PUT /latest/api/token"]
    );

    // the real default address, in a network namespace of this test's own
    if !rustix::process::geteuid().is_root() || !tool("unshare") || !tool("ip") {
        eprintln!("skipping the network-namespace part: needs root, unshare (util-linux) and ip (iproute2)");
        return;
    }
    for (what, setup) in [
        // a default route into a link where nothing answers (ARP goes
        // unanswered): connects time out
        (
            "default route, nothing answers",
            "ip link add v0 type veth peer name v1 && ip link set v1 up && ip link set v0 up && ip addr add 10.99.0.2/24 dev v0 && ip route add default via 10.99.0.1 dev v0",
        ),
        // no route at all: unreachable at once
        ("no route", "true"),
    ] {
        let (t, root) = machine("console=ttyS0\n");
        let script = format!(
            "ip link set lo up && {setup} && exec \"$0\" \"$@\""
        );
        let mut c = Command::new("unshare");
        c.args(["--net", "sh", "-c", &script, BIN])
            .arg("--root")
            .arg(&root)
            .arg("--cmdline")
            .arg(t.path().join("cmdline"))
            .arg("--state-user-data")
            .arg(t.path().join("no-user-data"))
            .arg("--no-config-drive")
            .args(["--metadata-url", "http://169.254.169.254"])
            .env("RUST_LOG", "info");
        let (secs, out, log) = timed(&mut c);
        assert_eq!(out.status.code(), Some(0), "{what}: {log}");
        assert_eq!(status(&root)["status"], "no-config", "{what}");
        assert!(log.contains("no metadata service at http://169.254.169.254"), "{what}: {log}");
        eprintln!("no metadata service, {what}: {secs:.2} s");
        assert!(secs < 4.0, "{what}: {secs} s\n{log}");
    }
}

fn tool(name: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(name).is_file())
}
