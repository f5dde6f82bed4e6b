//! The real `cairn-cloudinit` binary applied with `--root` to a seeded temporary root: the resulting tree, idempotence, a bad config applying nothing, and the time to apply a Deis-sized config.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cairn-cloudinit");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

use cairn_testkit::require as require_tool;

/// A minimal root: accounts (root, core, docker group), the units the image
/// ships that the fixture refers to.
fn seed(root: &Path) {
    let w = |p: &str, s: &str, mode: u32| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, s).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    w(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\ncore:x:500:500:Core:/home/core:/bin/bash\n",
        0o644,
    );
    w(
        "etc/group",
        "root:x:0:\ncore:x:500:\ndocker:x:999:core\n",
        0o644,
    );
    w(
        "etc/shadow",
        "root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n",
        0o640,
    );
    w("etc/gshadow", "root:*::\ncore:!::\ndocker:!::core\n", 0o640);
    w(
        "usr/lib/systemd/system/etcd.service",
        "[Unit]\nDescription=etcd\n[Service]\nEnvironment=ETCD_NAME=%H\nEnvironmentFile=-/etc/default/%p\nExecStart=/usr/bin/etcd\n[Install]\nWantedBy=multi-user.target\nAlias=etcd2.service\n",
        0o644,
    );
    w(
        "usr/lib/systemd/system/docker.service",
        "[Service]\nExecStart=/usr/bin/dockerd\n",
        0o644,
    );
    w(
        "usr/lib/systemd/system/multi-user.target",
        "[Unit]\nDescription=Multi-User\n",
        0o644,
    );
    fs::create_dir_all(root.join("home/core")).unwrap();
    std::os::unix::fs::chown(root.join("home/core"), Some(500), Some(500)).unwrap();
}

fn run(root: &Path, user_data: &Path) -> Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .arg("--from-file")
        .arg(user_data)
        .args(["--private-ipv4", "10.0.2.15"])
        .output()
        .expect("running cairn-cloudinit")
}

/// Every entry under `root` but the status file: path -> type, mode,
/// owner, content (or link target), mtime of files.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "run/cairn/cloudinit.status" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                format!(
                    "file {:?} mtime {}.{}",
                    fs::read(&p).unwrap(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.insert(
                rel,
                format!("{:o} {}:{} {what}", m.mode() & 0o7777, m.uid(), m.gid()),
            );
        }
    }
    out
}

fn status(root: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(root.join("run/cairn/cloudinit.status")).unwrap())
        .unwrap()
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"))
}

fn mode_owner(root: &Path, p: &str) -> (u32, u32, u32) {
    let m = fs::metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn deis_sized_config_applied_under_root_twice_gives_the_same_tree() {
    require_tool("useradd", "passwd");
    require_tool("usermod", "passwd");
    require_tool("systemctl", "systemd");
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    seed(root);
    let out = run(root, &fixture("deis.yaml"));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    // fleet.service is not in the image: reported, exit status 1, the rest applied
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("fleet.service: not in this image"), "{log}");
    let st = status(root);
    assert_eq!(st["status"], "failed", "{st}");
    let failures = st["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{st}");
    assert!(
        failures[0].as_str().unwrap().contains("fleet.service"),
        "{st}"
    );
    assert!(
        st["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["kind"] != "error"),
        "{st}"
    );

    // hostname, /etc/hosts, /etc/environment
    assert_eq!(read(root, "etc/hostname"), "deis-1\n");
    assert!(read(root, "etc/hosts").contains("127.0.0.1 deis-1\n"));
    assert_eq!(
        read(root, "etc/environment"),
        "COREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n"
    );

    // users: created by useradd --root, hash set, groups, home, keys
    let passwd = read(root, "etc/passwd");
    let deis = passwd
        .lines()
        .find(|l| l.starts_with("deis:"))
        .expect("deis created");
    assert!(
        deis.contains(":Deis Platform:/home/deis:/bin/bash"),
        "{deis}"
    );
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("builder:") && l.contains(":/var/lib/builder:")),
        "{passwd}"
    );
    assert!(read(root, "etc/shadow")
        .lines()
        .any(|l| l.starts_with("deis:$6$rounds=4096$saltsalt$")));
    assert!(read(root, "etc/group")
        .lines()
        .any(|l| l.starts_with("docker:") && l.contains("deis")));
    let deis_uid: u32 = deis.split(':').nth(2).unwrap().parse().unwrap();
    assert!(!root.join("var/lib/builder").exists(), "no_create_home");
    assert_eq!(
        read(root, "home/deis/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeisUserKey00000000000000000000000000000003 deis@cairn\n"
    );
    assert_eq!(mode_owner(root, "home/deis/.ssh").0, 0o700);
    assert_eq!(
        mode_owner(root, "home/deis/.ssh/authorized_keys").1,
        deis_uid
    );
    // core: the top-level keys
    let core_keys = read(root, "home/core/.ssh/authorized_keys");
    assert_eq!(core_keys.lines().count(), 2, "{core_keys}");
    assert_eq!(
        core_keys,
        read(root, "home/core/.ssh/authorized_keys.d/cairn-cloudinit")
    );
    assert_eq!(
        mode_owner(root, "home/core/.ssh/authorized_keys"),
        (0o600, 500, 500)
    );
    assert_eq!(
        mode_owner(root, "home/core/.ssh/authorized_keys.d"),
        (0o700, 500, 500)
    );

    // write_files: modes, owners, encodings
    assert_eq!(mode_owner(root, "etc/deis-release"), (0o644, 0, 0));
    assert_eq!(mode_owner(root, "opt/bin/preseed"), (0o755, deis_uid, 999));
    assert_eq!(mode_owner(root, "etc/environment_proxy"), (0o644, 500, 500));
    assert_eq!(
        mode_owner(root, "etc/deis/compressed.txt"),
        (0o600, 500, 500)
    );
    assert_eq!(read(root, "etc/deis/compressed.txt"), "hello world");
    assert_eq!(read(root, "etc/deis/encoded.txt"), "hello base64\n");
    assert!(read(root, "etc/motd").contains("\u{1b}[31m"));
    assert_eq!(mode_owner(root, "opt/bin").0, 0o755);

    // units: persistent, runtime, network, drop-ins, mask, enable
    assert!(read(root, "etc/systemd/system/install-deisctl.service")
        .contains("Install deisctl utility"));
    assert!(
        read(root, "run/systemd/system/load-overlay-module.service").contains("modprobe overlay")
    );
    assert!(read(root, "etc/systemd/network/10-static.network").contains("192.168.100.10/24"));
    assert!(read(root, "run/systemd/network/br0.netdev").contains("Kind=bridge"));
    assert!(read(
        root,
        "etc/systemd/system/docker.service.d/50-insecure-registry.conf"
    )
    .contains("DOCKER_OPTS"));
    assert!(root
        .join("etc/systemd/system/docker.service.d/10-require-flannel.conf")
        .is_file());
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/update-engine.service")).unwrap(),
        Path::new("/dev/null")
    );
    for (wants, unit) in [
        ("multi-user.target.wants", "install-deisctl.service"),
        ("sockets.target.wants", "docker-tcp.socket"),
        ("timers.target.wants", "logrotate.timer"),
        ("shutdown.target.wants", "graceful-deis-shutdown.service"),
    ] {
        let link = root.join("etc/systemd/system").join(wants).join(unit);
        assert!(
            fs::symlink_metadata(&link).is_ok(),
            "{} not enabled",
            link.display()
        );
    }
    // settings drop-ins with substituted addresses
    let etcd = read(root, "run/systemd/system/etcd.service.d/20-cloudinit.conf");
    assert!(
        etcd.contains("Environment=\"ETCD_NAME=deis-1\"\n"),
        "{etcd}"
    );
    assert!(
        etcd.contains("Environment=\"ETCD_INITIAL_CLUSTER=deis-1=http://10.0.2.15:2380\"\n"),
        "{etcd}"
    );
    assert!(etcd.contains("Environment=\"ETCD_ADVERTISE_CLIENT_URLS=http://10.0.2.15:2379,http://10.0.2.15:4001\"\n"), "{etcd}");
    let fleet = read(root, "run/systemd/system/fleet.service.d/20-cloudinit.conf");
    assert!(
        fleet.contains("Environment=\"FLEET_PUBLIC_IP=10.0.2.15\"\n"),
        "{fleet}"
    );
    assert!(root
        .join("run/systemd/system/locksmithd.service.d/20-cloudinit.conf")
        .is_file());
    assert_eq!(
        read(root, "etc/cairn/update.conf"),
        "REBOOT_STRATEGY=etcd-lock\nGROUP=stable\nREBOOT_WINDOW_START=Sun 04:00\nREBOOT_WINDOW_LENGTH=2h\n"
    );
    let actions: Vec<&str> = st["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"start etcd.service (skipped under --root)"),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"daemon-reload (skipped under --root)"),
        "{actions:?}"
    );
    eprintln!(
        "deis-sized config: {} files changed, applied in {} ms (start of application to the last unit written)",
        st["changed"].as_array().unwrap().len(),
        st["apply_ms"]
    );

    // the second run: the same tree, nothing changed
    let before = snapshot(root);
    let out2 = run(root, &fixture("deis.yaml"));
    assert_eq!(
        out2.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let after = snapshot(root);
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} changed on the second run");
    }
    for k in after.keys() {
        assert!(before.contains_key(k), "{k} appeared on the second run");
    }
    assert_eq!(
        status(root)["changed"].as_array().unwrap().len(),
        0,
        "{}",
        status(root)
    );
}

#[test]
fn a_config_with_an_error_applies_nothing_and_says_where() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    seed(root);
    let before = snapshot(root);
    let bad = root.join("bad.yaml");
    fs::write(&bad, "#cloud-config\nhostname: must-not-be-set\ncoreos:\n  update:\n    reboot-strategy: sometimes\n").unwrap();
    let out = run(root, &bad);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("line 5: error: invalid value sometimes"),
        "{log}"
    );
    assert!(log.contains("nothing applied"), "{log}");
    let mut after = snapshot(root);
    after.retain(|k, _| !k.starts_with("run") && k != "bad.yaml");
    assert_eq!(after, before);
    assert_eq!(status(root)["status"], "invalid");
}

#[test]
fn no_data_source_is_not_a_failure() {
    let t = tempfile::tempdir().unwrap();
    let cmdline = t.path().join("cmdline");
    fs::write(&cmdline, "console=ttyS0 quiet\n").unwrap();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(t.path())
        .arg("--cmdline")
        .arg(&cmdline)
        .arg("--state-user-data")
        .arg(t.path().join("nothing"))
        .arg("--no-config-drive")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(t.path())["status"], "no-config");
}

#[test]
fn url_source_404_is_final_and_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = hits.clone();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for c in listener.incoming() {
            let Ok(mut c) = c else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut l = String::new();
            while r.read_line(&mut l).unwrap_or(0) > 0 && l != "\r\n" {
                l.clear();
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let t = tempfile::tempdir().unwrap();
    let cmdline = t.path().join("cmdline");
    fs::write(
        &cmdline,
        format!("ro cloud-config-url=http://127.0.0.1:{port}/missing\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(t.path())
        .arg("--cmdline")
        .arg(&cmdline)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains("HTTP status 404"), "{log}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(status(t.path())["status"], "source-failed");
}

/// The binary on a config drive directory (`--config-drive`) under `--root`.
fn run_drive(root: &Path, drive: &Path) -> Output {
    let cmdline = root.join("cmdline");
    fs::write(&cmdline, "console=ttyS0\n").unwrap();
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .arg("--cmdline")
        .arg(&cmdline)
        .arg("--state-user-data")
        .arg(root.join("no-user-data"))
        .arg("--config-drive")
        .arg(drive)
        .output()
        .expect("running cairn-cloudinit")
}

const MD_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetadataKey000000000000000000000000000001 vm@host";

#[test]
fn config_drive_metadata_gives_core_its_key_and_a_hostname_only_if_the_config_has_none() {
    let t = tempfile::tempdir().unwrap();
    let (root, drive) = (t.path().join("root"), t.path().join("drive"));
    seed(&root);
    let latest = drive.join("openstack/latest");
    fs::create_dir_all(&latest).unwrap();
    fs::write(
        latest.join("meta_data.json"),
        format!(
            r#"{{"uuid": "0b8f6c0e", "name": "vm", "hostname": "md-host",
                "public_keys": {{"cairn-vm": "{MD_KEY}\n"}}, "files": []}}"#
        ),
    )
    .unwrap();

    // metadata alone (no user_data): applied
    let out = run_drive(&root, &drive);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        read(&root, "home/core/.ssh/authorized_keys"),
        format!("{MD_KEY}\n")
    );
    assert_eq!(
        mode_owner(&root, "home/core/.ssh/authorized_keys"),
        (0o600, 500, 500)
    );
    assert_eq!(read(&root, "etc/hostname"), "md-host\n");
    let st = status(&root);
    assert_eq!(st["status"], "applied", "{st}");
    assert_eq!(
        st["source"],
        format!("config drive {}", drive.display()),
        "{st}"
    );

    // a cloud-config that sets a hostname keeps it; keys from both
    fs::write(
        latest.join("user_data"),
        "#cloud-config\nhostname: own-name\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserDataKey000000000000000000000000000002 ud\n",
    )
    .unwrap();
    let out = run_drive(&root, &drive);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&root, "etc/hostname"), "own-name\n");
    let keys = read(&root, "home/core/.ssh/authorized_keys");
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(keys.contains(MD_KEY) && keys.contains("ud\n"), "{keys}");

    // a user-data script: the metadata still applies
    let t2 = tempfile::tempdir().unwrap();
    let root2 = t2.path().join("root");
    seed(&root2);
    fs::write(latest.join("user_data"), "#!/bin/sh\necho hi\n").unwrap();
    let out = run_drive(&root2, &drive);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read(&root2, "home/core/.ssh/authorized_keys"),
        format!("{MD_KEY}\n")
    );
    assert_eq!(read(&root2, "etc/hostname"), "md-host\n");
}

#[test]
fn hostile_config_drive_metadata_applies_nothing_of_it() {
    let big = format!(r#"{{"meta": "{}"}}"#, "x".repeat(70 * 1024));
    let cases = [
        (
            r#"{"hostname": "md-host", "public_keys": ["ssh-ed25519 AAAA a"]}"#.to_string(),
            "public_keys is not a JSON object",
        ),
        (
            format!(
                r#"{{"hostname": "md-host", "public_keys": {{"a": "{MD_KEY}", "b": "ssh-ed25519 AAAA b\nssh-rsa BBBB evil"}}}}"#
            ),
            "public_keys.b has a line break or control character: a key must be one line",
        ),
        (big, "larger than 65536 bytes"),
    ];
    for (text, want) in cases {
        let t = tempfile::tempdir().unwrap();
        let (root, drive) = (t.path().join("root"), t.path().join("drive"));
        seed(&root);
        let latest = drive.join("openstack/latest");
        fs::create_dir_all(&latest).unwrap();
        let md_path = latest.join("meta_data.json");
        fs::write(&md_path, text).unwrap();
        fs::write(
            latest.join("user_data"),
            "#cloud-config\nwrite_files:\n  - path: /etc/applied\n    content: yes\n",
        )
        .unwrap();
        let out = run_drive(&root, &drive);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {log}");
        let named = format!("{}: ", md_path.display());
        assert!(log.contains(&named) && log.contains(want), "{want}: {log}");
        assert!(log.contains("nothing applied from the metadata"), "{log}");
        let st = status(&root);
        assert_eq!(st["status"], "failed", "{st}");
        let failures = st["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 1, "{st}");
        assert!(failures[0].as_str().unwrap().contains(want), "{st}");
        // nothing from the metadata; the user-data applied
        assert!(!root.join("home/core/.ssh").exists(), "{want}");
        assert!(!root.join("etc/hostname").exists(), "{want}");
        assert_eq!(read(&root, "etc/applied"), "yes");
    }
}
