//! [`Etcd`]: a real etcd member (Debian's `etcd-server`, 3.4) on
//! 127.0.0.1 for tests, alone or joining a cluster through a discovery URL,
//! serving clients over plain HTTP or over TLS ([`Etcd::single_tls`]);
//! killed when dropped, its log kept in the test's directory.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require};

/// Where Debian's etcd-server puts the daemon.
pub const ETCD: &str = "/usr/bin/etcd";

/// PEM files for an etcd that serves clients over TLS.
#[derive(Debug, Clone, Copy)]
pub struct ServerTls<'a> {
    /// The server's certificate (`--cert-file`). etcd 3.4's JSON gateway
    /// dials etcd's own gRPC with it, so it needs both the serverAuth and
    /// the clientAuth extended key usage, and an IP address SAN 127.0.0.1.
    pub cert_file: &'a Path,
    /// Its key (`--key-file`).
    pub key_file: &'a Path,
    /// With a CA, clients must present a certificate it signed
    /// (`--client-cert-auth --trusted-ca-file`); the server's own
    /// certificate must chain to it too (the gateway's own connection).
    pub client_ca_file: Option<&'a Path>,
}

/// One etcd process.
pub struct Etcd {
    pub name: String,
    /// `http://127.0.0.1:PORT` (or `https://` for [`Etcd::single_tls`])
    /// for clients.
    pub client_url: String,
    /// `http://127.0.0.1:PORT` for peers.
    pub peer_url: String,
    child: Child,
    log: PathBuf,
}

impl Etcd {
    /// A one-member cluster named `name`, data and log under `dir`;
    /// returns once it answers `/health`.
    pub fn single(dir: &Path, name: &str) -> Etcd {
        let (client_url, peer_url) = urls();
        let cluster = format!("{name}={peer_url}");
        let mut e = Etcd::start_at(
            dir,
            name,
            name,
            &client_url,
            &peer_url,
            &["--initial-cluster", &cluster],
        );
        e.wait_healthy(Duration::from_secs(30));
        e
    }

    /// A one-member cluster serving clients over TLS only, on
    /// `https://127.0.0.1:PORT` (peers stay on http); returns once it is
    /// ready ([`Etcd::healthy`]).
    pub fn single_tls(dir: &Path, name: &str, tls: ServerTls<'_>) -> Etcd {
        let (client_url, peer_url) = urls();
        let client_url = client_url.replacen("http://", "https://", 1);
        let cluster = format!("{name}={peer_url}");
        let utf8 = |p: &'_ Path| {
            p.to_str()
                .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
                .to_string()
        };
        let (cert, key) = (utf8(tls.cert_file), utf8(tls.key_file));
        let mut args = vec!["--initial-cluster", &cluster, "--cert-file", &cert];
        args.extend(["--key-file", &key]);
        let ca = tls.client_ca_file.map(utf8);
        if let Some(ca) = &ca {
            args.extend(["--client-cert-auth", "--trusted-ca-file", ca]);
        }
        let mut e = Etcd::start_at(dir, name, name, &client_url, &peer_url, &args);
        e.wait_healthy(Duration::from_secs(30));
        e
    }

    /// A member that bootstraps through `discovery` (an etcd discovery
    /// URL), with `extra` arguments; not waited for.
    pub fn with_discovery(dir: &Path, name: &str, discovery: &str, extra: &[&str]) -> Etcd {
        let (client_url, peer_url) = urls();
        let mut args = vec!["--discovery", discovery];
        args.extend_from_slice(extra);
        Etcd::start_at(dir, name, name, &client_url, &peer_url, &args)
    }

    /// Starts `etcd --name NAME` on the given URLs with `args` after them;
    /// `label` names its log (`LABEL.log`) and data directory
    /// (`LABEL.etcd`) under `dir`. Not waited for.
    pub fn start_at(
        dir: &Path,
        label: &str,
        name: &str,
        client_url: &str,
        peer_url: &str,
        args: &[&str],
    ) -> Etcd {
        require(ETCD, "etcd-server");
        let log = dir.join(format!("{label}.log"));
        let out =
            fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = Command::new(ETCD)
            .args(["--name", name])
            .arg("--data-dir")
            .arg(dir.join(format!("{label}.etcd")))
            .args(["--listen-client-urls", client_url])
            .args(["--advertise-client-urls", client_url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(args)
            .env_remove("ETCD_DISCOVERY")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD}: {e}"));
        Etcd {
            name: name.to_string(),
            client_url: client_url.to_string(),
            peer_url: peer_url.to_string(),
            child,
            log,
        }
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        port_of(&self.client_url)
    }

    /// Everything etcd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True when `GET /health` says `"health":"true"`; for an `https://`
    /// client URL (the kit speaks no TLS), when the client port accepts
    /// connections and etcd logged "ready to serve client requests" (it has
    /// a leader and joined the cluster).
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port())) else {
            return false;
        };
        if self.client_url.starts_with("https://") {
            return self.log().contains("ready to serve client requests");
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if write!(s, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Waits until [`Etcd::healthy`]; panics with the log after `limit`.
    pub fn wait_healthy(&mut self, limit: Duration) {
        let t = Instant::now();
        while !self.healthy() {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("etcd {} exited ({s}):\n{}", self.name, self.log());
            }
            assert!(
                t.elapsed() < limit,
                "etcd {} not healthy after {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Waits up to `limit` for `needle` in the log.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills a member made by [`Etcd::single`] (if it still runs) and
    /// starts it again on the same name, URLs and data directory under
    /// `dir`; returns once it is healthy.
    pub fn restart(&mut self, dir: &Path) {
        self.kill();
        let cluster = format!("{}={}", self.name, self.peer_url);
        let mut e = Etcd::start_at(
            dir,
            &self.name,
            &self.name,
            &self.client_url,
            &self.peer_url,
            &["--initial-cluster", &cluster],
        );
        e.wait_healthy(Duration::from_secs(30));
        *self = e;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn urls() -> (String, String) {
    (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_member_answers_and_dies_with_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let e = Etcd::single(dir.path(), "kit");
        assert!(e.healthy());
        let pid = e.pid();
        drop(e);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} outlived its handle"
        );
    }
}
