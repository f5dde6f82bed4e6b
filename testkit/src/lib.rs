//! cairn-testkit: what the workspace's integration tests share, so a new
//! test is short and every test fails the same clear way when the machine
//! lacks something: [`require`] a tool (naming its Debian package), a
//! [`free_port`] on loopback, a [`StaticHttp`] server of fixed files on
//! loopback, a real [`Etcd`] member (Debian's `etcd-server`), and (feature
//! `tls`) the certificates of an etcd on https ([`tls::pki`]). VM
//! helpers live in `cairn-qemu`, image helpers beside the builder's tests.
//!
//! A dev-dependency only: nothing in a shipped binary links it.

mod http;

pub mod etcd;
#[cfg(feature = "tls")]
pub mod tls;
pub use etcd::{Etcd, ServerTls};
pub use http::{Reply, Request, StaticHttp};

use std::path::Path;
use std::process::{Command, Stdio};

/// Fails the test, naming the Debian package, when `tool` is neither on
/// `PATH` nor in `/usr/sbin` or `/sbin` (or, for a path, does not exist).
pub fn require(tool: &str, package: &str) {
    let found = if tool.contains('/') {
        Path::new(tool).is_file()
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(tool).is_file())
    };
    assert!(
        found,
        "{tool} not found: install the Debian package `{package}` (apt-get install {package}; `bash .ci/run --install-only` installs every tool the tests use)"
    );
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a child process
/// to listen on: [`cairn_qemu::port::free_port`], below the kernel's
/// ephemeral range, where neither `bind(0)` nor an outgoing connection of
/// another test process takes it meanwhile.
pub fn free_port() -> u16 {
    cairn_qemu::port::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` as a daemon's log would see it (no terminal: stdin null,
/// stdout and stderr pipes, `NO_COLOR` unset so the program decides by
/// itself), asserts that neither stream carries an ANSI escape, and
/// returns whether it succeeded and its stderr.
pub fn run_piped_plain(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("\x1b["), "colour codes in a pipe: {err:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("\x1b["),
        "colour codes in a pipe: {stdout:?}"
    );
    (out.status.success(), err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_finds_sh_and_names_the_package_of_a_missing_tool() {
        require("sh", "dash");
        require("/bin/sh", "dash");
        let e =
            std::panic::catch_unwind(|| require("cairn-no-such-tool", "cairn-pkg")).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("cairn-no-such-tool") && msg.contains("`cairn-pkg`"),
            "{msg}"
        );
    }

    #[test]
    fn piped_output_is_checked_for_escapes() {
        let (ok, err) = run_piped_plain(Command::new("sh").args(["-c", "echo plain >&2"]));
        assert!(ok && err == "plain\n", "{err}");
        let r = std::panic::catch_unwind(|| {
            run_piped_plain(Command::new("sh").args(["-c", "printf '\\033[31mERROR\\033[0m' >&2"]))
        });
        assert!(r.is_err(), "an escape went unnoticed");
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        assert!(p > 0);
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
