//! `status` and `journal`: run here when the unit's machine is this one
//! (`/etc/machine-id`), else through `ssh` with fleet's flags, each remote
//! word quoted; stand-ins for `ssh`, `systemctl` and `journalctl` on PATH
//! record their arguments. `ssh` to a machine (an ID prefix) or a unit's
//! machine, with fleet's flags, the exact argument vector checked. And the
//! refusals: unknown units, units running nowhere, global units in
//! `journal`, lookups that match nothing.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{path_with, Fleet, HELLO};

const M1: &str = "113f16a7b2c94ad3a4d4cd0bf7b5e3a1";

/// Stand-ins that print their name and arguments, one per line, and exit
/// 3.
fn fakes(f: &Fleet) -> std::path::PathBuf {
    let bin = f.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["ssh", "systemctl", "journalctl"] {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho {tool}\nprintf '%s\\n' \"$@\"\nexit 3\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn status_and_journal_over_ssh() {
    let f = Fleet::new();
    let bin = fakes(&f);
    f.machine(M1, "172.17.8.103", "");
    f.write_unit("hello.service", HELLO);
    assert_eq!(
        f.fleetctl(&["start", "--no-block", "hello.service"]).code,
        0
    );
    f.schedule("hello.service", M1);
    f.report("hello.service", M1, "loaded", "active", "running");
    let known = f.dir.path().join("known_hosts");
    let r: common::Run = f
        .command(&[
            "--known-hosts-file",
            known.to_str().unwrap(),
            "status",
            "hello.service",
        ])
        .env("PATH", path_with(&bin))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        r.stdout,
        format!(
            "ssh\n-o\nStrictHostKeyChecking=ask\n-o\nUserKnownHostsFile={}\n-o\nConnectTimeout=10\n-l\ncore\n-p\n22\n--\n172.17.8.103\nsystemctl\nstatus\n-l\nhello.service\n",
            known.display()
        )
    );
    let r: common::Run = f
        .command(&[
            "--ssh-username=elroy",
            "--strict-host-key-checking=false",
            "--tunnel",
            "bastion.example:2200",
            "journal",
            "-f",
            "--lines",
            "5",
            "--ssh-port=2222",
            "--sudo",
            "hello",
        ])
        .env("PATH", path_with(&bin))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        r.stdout,
        "ssh\n-o\nStrictHostKeyChecking=no\n-o\nUserKnownHostsFile=/dev/null\n-o\nConnectTimeout=10\n-l\nelroy\n-p\n2222\n-J\nelroy@bastion.example:2200\n-t\n--\n172.17.8.103\nsudo\njournalctl\n--unit\nhello.service\n--no-pager\n-n\n5\n--output\nshort\n-f\n"
    );
    // a remote word the remote shell would read is quoted
    let r = f.fleetctl(&["journal", "--output", "short;reboot", "hello.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is no journalctl output mode"), "{r:?}");
}

#[test]
fn status_and_journal_here_when_the_machine_is_this_one() {
    let Ok(id) = std::fs::read_to_string("/etc/machine-id") else {
        eprintln!("skipped: no /etc/machine-id");
        return;
    };
    let id = id.trim();
    let f = Fleet::new();
    let bin = fakes(&f);
    f.machine(id, "10.0.0.9", "");
    f.write_unit("hello.service", HELLO);
    assert_eq!(
        f.fleetctl(&["start", "--no-block", "hello.service"]).code,
        0
    );
    f.schedule("hello.service", id);
    f.report("hello.service", id, "loaded", "active", "running");
    let r: common::Run = f
        .command(&["status", "hello.service"])
        .env("PATH", path_with(&bin))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout, "systemctl\nstatus\n-l\nhello.service\n");
    let r: common::Run = f
        .command(&["journal", "hello.service"])
        .env("PATH", path_with(&bin))
        .output()
        .unwrap()
        .into();
    assert_eq!(
        r.stdout,
        "journalctl\n--unit\nhello.service\n--no-pager\n-n\n10\n--output\nshort\n"
    );
}

#[test]
fn units_that_run_nowhere_are_said_so() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "");
    f.write_unit("hello.service", HELLO);
    f.write_unit(
        "all.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n",
    );
    assert_eq!(
        f.fleetctl(&["submit", "hello.service", "all.service"]).code,
        0
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["status", "hello.service"],
            "Unit hello.service does not appear to be loaded.\n",
        ),
        (
            &["journal", "hello.service"],
            "Unit hello.service does not appear to be running.\n",
        ),
        (
            &["status", "nope.service"],
            "Unit nope.service does not exist.\n",
        ),
        (
            &["journal", "nope.service"],
            "Unit nope.service does not exist.\n",
        ),
        (
            &["journal", "all.service"],
            "Unable to retrieve journal of global unit all.service.\n",
        ),
        (
            &["status", "all.service"],
            "Global unit all.service does not appear to be loaded on any machine.\n",
        ),
    ];
    for (args, err) in cases {
        let r = f.fleetctl(args);
        assert_eq!(
            (r.code, r.stderr.as_str(), r.stdout.as_str()),
            (1, *err, ""),
            "{args:?}"
        );
    }
}

#[test]
fn ssh_to_a_machine_or_a_units_machine() {
    let f = Fleet::new();
    let bin = fakes(&f);
    const M2: &str = "2c1f0e5d9a8b4c7d8e9f0a1b2c3d4e5f";
    f.machine(M1, "172.17.8.101", "");
    f.machine(M2, "172.17.8.102", "");
    f.write_unit("hello.service", HELLO);
    assert_eq!(
        f.fleetctl(&["start", "--no-block", "hello.service"]).code,
        0
    );
    f.schedule("hello.service", M2);
    let ssh = |args: &[&str]| -> common::Run {
        f.command(args)
            .env("PATH", path_with(&bin))
            .output()
            .unwrap()
            .into()
    };
    let opts = "ssh\n-o\nStrictHostKeyChecking=no\n-o\nUserKnownHostsFile=/dev/null\n-o\nConnectTimeout=10\n";
    // a machine by a prefix of its ID: an interactive shell as core
    let r = ssh(&["--strict-host-key-checking=false", "ssh", "113f"]);
    assert_eq!(r.code, 3, "ssh's exit code: {r:?}");
    assert_eq!(
        r.stdout,
        format!("{opts}-l\ncore\n-p\n22\n--\n172.17.8.101\n")
    );
    // a unit's machine, a command (its words as given, for the remote
    // shell), agent forwarding, fleet's --ssh-port and --ssh-username
    let r = ssh(&[
        "--strict-host-key-checking=false",
        "--ssh-username",
        "elroy",
        "ssh",
        "-A",
        "--ssh-port",
        "2222",
        "hello",
        "ls",
        "-l",
        "$HOME",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("{opts}-l\nelroy\n-p\n2222\n-A\n--\n172.17.8.102\nls\n-l\n$HOME\n")
    );
    // --unit and --machine say which; `--` ends fleetctl's own arguments
    let r = ssh(&[
        "--strict-host-key-checking=false",
        "ssh",
        "--unit",
        "hello.service",
        "--",
        "uptime",
    ]);
    assert!(r.stdout.ends_with("--\n172.17.8.102\nuptime\n"), "{r:?}");
    let r = ssh(&["--strict-host-key-checking=false", "ssh", "--machine", M2]);
    assert!(r.stdout.ends_with("--\n172.17.8.102\n"), "{r:?}");
    // refusals, ssh never run
    for (args, err) in [
        (
            &["ssh", "nothing"][..],
            "Unable to proceed: could not find matching unit or machine\n",
        ),
        (
            &["ssh", "--machine", "zz"][..],
            "Unable to proceed: machine does not exist\n",
        ),
        (
            &["ssh", "--machine", M1, "--unit", "hello"][..],
            "Both machine and unit flags provided, please specify only one.\n",
        ),
        (
            &["ssh"][..],
            "Provide a machine or unit, and optionally a command.\n",
        ),
    ] {
        let r = ssh(args);
        assert_eq!(
            (r.code, r.stderr.as_str(), r.stdout.as_str()),
            (1, err, ""),
            "{args:?}"
        );
    }
}
