//! Hostile input: unit files with NUL bytes, over the size limit or with
//! bad names; records in etcd that do not read or do not hold together
//! (reported and skipped, never a panic, and a broken unit can still be
//! destroyed); an endpoint that does not answer (a clear error naming it,
//! in bounded time).

mod common;

use std::time::{Duration, Instant};

use common::{Fleet, HELLO};

const M1: &str = "113f16a7b2c94ad3a4d4cd0bf7b5e3a1";

#[test]
fn unit_files_with_nul_huge_or_bad_names_are_refused() {
    let f = Fleet::new();
    f.write_unit("nul.service", "[Service]\nExecStart=/bin/true\0\n");
    let r = f.fleetctl(&["submit", "nul.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error creating units: failed getting Unit(nul.service) from file: nul.service: a NUL byte at offset 29\n"
    );
    let huge = format!(
        "[Service]\nExecStart=/bin/true\n{}",
        "# pad\n".repeat(50_000)
    );
    f.write_unit("huge.service", &huge);
    let r = f.fleetctl(&["start", "huge.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error creating units: failed getting Unit(huge.service) from file: huge.service: 300030 bytes, more than the 262144 a unit may have\n"
    );
    f.write_unit("bad name!.service", HELLO);
    let r = f.fleetctl(&["submit", "bad name!.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with("Error creating units: \"bad name!.service\": unit name \"bad name!.service\": invalid character ' '"),
        "{r:?}"
    );
    let long = format!("{}.service", "x".repeat(300));
    let r = f.fleetctl(&["submit", &long]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("unit name exceeds maximum length (256)"),
        "{r:?}"
    );
    f.write_unit("binary.service", "");
    std::fs::write(f.units().join("binary.service"), b"[Service]\n\xff\xfe\n").unwrap();
    let r = f.fleetctl(&["submit", "binary.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("binary.service: not UTF-8 text (at byte 10)"),
        "{r:?}"
    );
    let r = f.fleetctl(&["start", "x@{1..20000}.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("expands to more than 10000 names"),
        "{r:?}"
    );
    let r = f.fleetctl(&["list-unit-files", "--no-legend"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
}

#[test]
fn bad_records_are_reported_and_skipped() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "");
    f.put_raw("/cairn/fleet/machines/evil", b"{not json");
    f.put_raw(
        "/cairn/fleet/machines/m2",
        br#"{"id":"m2","public_ip":"1.2.3.4 -oProxyCommand=x","metadata":{},"version":"1"}"#,
    );
    let r = f.fleetctl(&["list-machines", "--no-legend"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "113f16a7...\t172.17.8.103\t-\n");
    let warnings: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(warnings.len(), 2, "{r:?}");
    assert!(
        warnings[0].starts_with(
            "WARNING: skipping a bad record at /cairn/fleet/machines/evil: bad machine record"
        ),
        "{r:?}"
    );
    assert!(
        warnings[1].contains("public IP \"1.2.3.4 -oProxyCommand=x\" is not an IP address"),
        "{r:?}"
    );

    f.write_unit("hello.service", HELLO);
    assert_eq!(f.fleetctl(&["submit", "hello.service"]).code, 0);
    f.put_raw("/cairn/fleet/units/broken.service", b"\x00\x01garbage");
    f.put_raw(
        "/cairn/fleet/units/liar.service",
        br#"{"name":"liar.service","contents":"[Service]\nExecStart=/bin/true\n","hash":"0000000000000000000000000000000000000000","desired_state":"launched"}"#,
    );
    let r = f.fleetctl(&["list-unit-files", "--no-legend", "--fields=unit,dstate"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "hello.service\tinactive\n");
    assert!(
        r.stderr
            .contains("/cairn/fleet/units/broken.service: bad unit record"),
        "{r:?}"
    );
    assert!(r.stderr.contains("/cairn/fleet/units/liar.service: unit liar.service: stored hash 0000000000000000000000000000000000000000 does not match"), "{r:?}");
    // a report with a terminal escape in it
    f.put_raw(
        &format!("/cairn/fleet/states/{M1}/hello.service"),
        format!(r#"{{"unit":"hello.service","load":"loaded","active":"\u001b[31mactive","sub":"running","machine":"{M1}","hash":"0000000000000000000000000000000000000000"}}"#).as_bytes(),
    );
    let r = f.fleetctl(&["list-units", "--no-legend"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    assert!(
        r.stderr
            .contains("active state \"\\u{1b}[31mactive\" is not a systemd state"),
        "{r:?}"
    );
    assert!(!r.stderr.contains('\x1b'), "{r:?}");

    // the broken unit reads as an error where it is named...
    let r = f.fleetctl(&["cat", "broken.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.starts_with("Error retrieving Unit broken.service: /cairn/fleet/units/broken.service: bad unit record"), "{r:?}");
    let r = f.fleetctl(&["start", "liar.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    // ...and can be destroyed
    let r = f.fleetctl(&["destroy", "broken.service", "liar.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "Destroyed broken.service\nDestroyed liar.service\n"
    );
    assert_eq!(r.stderr.lines().count(), 2, "{r:?}");
    let r = f.fleetctl(&["list-unit-files", "--no-legend", "--fields=unit"]);
    assert_eq!(r.stdout, "hello.service\n");
    assert!(!r.stderr.contains("/units/"), "{r:?}");
}

#[test]
fn an_unreachable_endpoint_is_named_in_bounded_time() {
    let port = cairn_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        &["list-units"][..],
        &["list-machines"],
        &["list-unit-files"],
        &["start", "hello.service"],
        &["stop", "hello.service"],
        &["cat", "hello.service"],
        &["explain", "hello.service"],
    ] {
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(["--endpoint", &url, "--request-timeout", "1"])
            .args(args)
            .env_remove("FLEETCTL_ENDPOINT")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?}: {:?}",
            t.elapsed()
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("Error "), "{args:?}: {err}");
        assert!(
            err.contains(&format!("etcd at {url}")) && err.contains("cannot connect"),
            "{args:?}: {err}"
        );
    }
    // a bad endpoint or prefix is said plainly
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--endpoint", "ftp://x", "list-units"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("Unable to initialize client for ftp://x: etcd endpoint"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--etcd-key-prefix", "fleet", "list-units"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("etcd key prefix \"fleet\""));
}
