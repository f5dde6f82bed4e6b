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

use std::net::TcpListener;
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
/// to listen on.
///
/// Taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, from 10000 up): a port the
/// OS hands out for `bind(0)` or as the local end of an outgoing connection
/// comes from that range, so with tests running side by side one of their
/// connections took a port this returned before the child bound it (CI:
/// etcd's `bind: address already in use`). Here only another caller of
/// this function can take it, which picks at random among thousands.
pub fn free_port() -> u16 {
    let (low, _) = ephemeral_range();
    let below = low.saturating_sub(PRIVATE_FROM);
    for _ in 0..1000 {
        let port = match below {
            0 => 0,
            n => PRIVATE_FROM + (random() % u64::from(n)) as u16,
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("a bound socket's address").port();
        }
    }
    panic!("no free TCP port on 127.0.0.1 in {PRIVATE_FROM}..{low} after 1000 tries");
}

/// The lowest port [`free_port`] takes.
const PRIVATE_FROM: u16 = 10000;

/// The kernel's range of ephemeral ports (Linux's default when unreadable).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// 64 random bits (std's per-process hash keys, mixed with a counter).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
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
    fn free_ports_are_bindable_and_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        assert!(low <= high, "{low}..{high}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port();
            assert!(
                (PRIVATE_FROM..low).contains(&p),
                "{p} not in {PRIVATE_FROM}..{low}"
            );
            seen.insert(p);
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        // picked at random, not one after another
        assert!(seen.len() > 40, "{seen:?}");
    }

    #[test]
    fn a_port_in_use_is_never_returned() {
        // ports this test holds are never handed out
        let held: Vec<TcpListener> = (0..200)
            .filter_map(|_| TcpListener::bind(("127.0.0.1", free_port())).ok())
            .collect();
        let taken: std::collections::HashSet<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        for _ in 0..200 {
            let p = free_port();
            assert!(!taken.contains(&p), "{p} is held by this test");
        }
    }
}
