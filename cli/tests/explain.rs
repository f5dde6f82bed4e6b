//! `cairn serve --explain MAC` as an operator runs it: the real binary on an inventory and a
//! state directory with a machine's record; it prints why the machine boots what it boots and
//! exits without opening a socket (its listen addresses are taken by this test, so a bind would
//! fail), and exits 1 naming the file when the inventory does not load.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};

const MAC: &str = "52:54:00:00:0e:01";

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("running cairn")
}

fn lab(dir: &Path) {
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(
        img.join("manifest.json"),
        serde_json::to_string(&cairn_formats::image_dir::Manifest::named("lab", "2.1")).unwrap(),
    )
    .unwrap();
    for (f, data) in [
        ("vmlinuz", &b"kernel"[..]),
        ("pxe-initrd.img", b"initrd"),
        ("disk.raw", b"disk"),
    ] {
        std::fs::write(img.join(f), data).unwrap();
    }
    std::fs::write(
        dir.join("node.j2"),
        "#cloud-config\nhostname: {{ metadata.name }}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("lab.yaml"),
        "profiles:\n  - name: diskless\n    image: img\n  - name: installed\n    image: img\n    boot: install\n    cloud_config: node.j2\ngroups:\n  - name: default\n    profile: diskless\n  - name: rack1\n    profile: installed\n    selector: {rack: r1}\n    metadata: {name: r1-node}\n  - name: rack1-other\n    profile: installed\n    selector: {rack: r1, mac: \"52:54:00:00:0e:02\"}\n    metadata: {name: other}\n",
    )
    .unwrap();
    // the machine's record as the server keeps it: the installer served once, no report yet
    let machines = dir.join("state/lifecycle/machines");
    std::fs::create_dir_all(&machines).unwrap();
    std::fs::write(
        machines.join(format!("{}.json", MAC.replace(':', "-"))),
        r#"{"mac":"52:54:00:00:0e:01","phase":{"phase":"installing","attempt":1,"since":1764000000},"first_seen":1764000000,"last_seen":1764000000,"history":[{"at":1764000000,"what":"first seen"},{"at":1764000000,"what":"installing (attempt 1 of 3)"}]}"#,
    )
    .unwrap();
}

#[test]
fn explain_prints_and_opens_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path());
    // every address serving would bind is taken
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let tftp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (http_a, admin_a, tftp_a) = (
        http.local_addr().unwrap().to_string(),
        admin.local_addr().unwrap().to_string(),
        tftp.local_addr().unwrap().to_string(),
    );
    let config = dir.path().join("lab.yaml");
    let state = dir.path().join("state");
    let base = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--http-addr",
        &http_a,
        "--admin-addr",
        &admin_a,
        "--tftp-addr",
        &tftp_a,
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        cairn(&args)
    };
    let o = run(&["--explain", "52-54-00-00-0E-01", "--fact", "rack=r1"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "facts: mac=52:54:00:00:0e:01 rack=r1\n",
        "  default (line 9, profile diskless): MATCHES, 0 of 0 selector(s) match\n",
        "  rack1 (line 11, profile installed): MATCHES, 1 of 1 selector(s) match\n    rack=r1: yes (r1)\n",
        "  rack1-other (line 15, profile installed): no, 1 of 2 selector(s) match\n    mac=52:54:00:00:0e:02: no (the machine has 52:54:00:00:0e:01)\n",
        "winner: rack1 (1 selector(s)): all 1 of its selectors match, more than the other matching group(s): default (0)\n",
        "profile: installed (boot: install (to the local disk, once), transport: http)\n",
        "image: lab-2.1 (name lab, version 2.1)\n",
        "  disk.raw: 4 bytes\n",
        "update: no update channel",
        "record: installing (attempt 1 of 3) (first seen 2025-11-24T16:00:00Z",
        "installing (attempt 1 of 3)\n",
        "next netboot: the installer of lab-2.1 (attempt 2 of 3)\n",
    ] {
        assert!(out.contains(want), "wanted {want:?} in\n{out}");
    }
    assert!(
        out.contains(&format!(
            "cloud-config: template node.j2 ({})\n",
            dir.path().join("node.j2").display()
        )),
        "{out}"
    );
    // the template rendered with this group's metadata
    let rendered = "#cloud-config\nhostname: r1-node\n".len();
    assert!(
        out.contains(&format!(
            "  renders for these facts: {rendered} bytes, valid\n"
        )),
        "{out}"
    );
    // read only: the record is as it was
    let rec =
        std::fs::read_to_string(state.join("lifecycle/machines/52-54-00-00-0e-01.json")).unwrap();
    assert!(rec.contains(r#""attempt":1"#), "{rec}");
    assert!(!state.join("lifecycle/lock").exists());

    // another machine, no facts: the default group, no record, the diskless image
    let o = run(&["--explain", "52:54:00:00:0e:09"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("    rack=r1: no (the machine sent no rack)\n"),
        "{out}"
    );
    assert!(out.contains("winner: default (0 selector(s))"), "{out}");
    assert!(out.contains("record: none"), "{out}");
    assert!(
        out.contains("next netboot: the diskless image lab-2.1 from the network (a trial until the machine reports healthy)\n"),
        "{out}"
    );

    // a bad MAC, a fact that is not KEY=VALUE: exit 1 naming them
    let o = run(&["--explain", "52:54:00"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("mac: \"52:54:00\" is not a MAC address"),
        "{err}"
    );
    let o = run(&["--explain", MAC, "--fact", "rack"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fact \"rack\": expected KEY=VALUE"), "{err}");
    drop((http, admin, tftp));
}

#[test]
fn explain_exits_1_when_the_inventory_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path());
    let config = dir.path().join("lab.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: p\n    image: img\ngroups:\n  - name: g\n    profile: nope\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let o = cairn(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--explain",
        MAC,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "error: loading the inventory {}: {}:6: groups[0].profile: no profile named \"nope\"",
            config.display(),
            config.display()
        )),
        "{err}"
    );
    // a missing file too
    let missing = dir.path().join("nowhere.yaml");
    let o = cairn(&[
        "serve",
        "--config",
        missing.to_str().unwrap(),
        "--explain",
        MAC,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("loading the inventory") && err.contains("nowhere.yaml"),
        "{err}"
    );
    // --fact belongs to --explain
    let o = cairn(&["serve", "--config", "x.yaml", "--fact", "rack=r1"]);
    assert_eq!(o.status.code(), Some(2));
}

/// With `--store etcd://…` the records are not in the state dir: `--explain`
/// says so and where to ask, rather than explaining without them.
#[test]
fn explain_with_an_etcd_store_says_to_ask_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path());
    let o = cairn(&[
        "serve",
        "--config",
        dir.path().join("lab.yaml").to_str().unwrap(),
        "--store",
        "etcd://127.0.0.1:2379",
        "--explain",
        MAC,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--store etcd://127.0.0.1:2379") && err.contains("/explain?mac="),
        "{err}"
    );
}
