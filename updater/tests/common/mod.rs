//! Test fixtures: a "machine" made of plain files (ESP folder, slot files,
//! /proc-like files) and an HTTP server on 127.0.0.1 that serves update
//! bundles with Range support and can cut a response mid-way, answer with
//! an error status or drop the connection without an answer.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_formats::channel::bundle::{write_bundle, BundleInput};
use cairn_formats::channel::keys::{public_key_text, SecretKey, TrustedKeys};
use cairn_updater::agent::{Agent, Paths, SlotDevices};
use cairn_updater::Config;
use sha2::{Digest, Sha256};

pub const RUNNING_OPTIONS: &str =
    "cairn.slot=a console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0";

/// The retry policy of the tests' agents.
pub const FAST_RETRY: cairn_updater::fetch::Retry = cairn_updater::fetch::Retry {
    tries: 5,
    first_delay: std::time::Duration::from_millis(10),
    max_delay: std::time::Duration::from_millis(80),
};

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn sha_prefix(path: &Path, n: usize) -> String {
    let d = fs::read(path).unwrap();
    sha(&d[..n])
}

/// A bundle on disk for version `v` of image `default`.
pub struct Built {
    pub root: PathBuf,
    pub rootfs: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
}

/// Writes a bundle into `dir/<v>/update` with `key`.
pub fn build(dir: &Path, name: &str, v: &str, key: &SecretKey, rootfs_len: usize) -> Built {
    build_with(dir, name, v, key, rootfs_len, false).0
}

/// [`build`], with `verity` a dm-verity tree appended to the root image
/// (as `cairn build` does) and its parameters in the signed manifest;
/// `Built::rootfs` is then the image with its tree.
pub fn build_with(
    dir: &Path,
    name: &str,
    v: &str,
    key: &SecretKey,
    rootfs_len: usize,
    verity: bool,
) -> (Built, Option<cairn_formats::verity::Verity>) {
    let out = dir.join(v);
    fs::create_dir_all(&out).unwrap();
    let seed = v.bytes().fold(7u64, |a, b| a * 31 + u64::from(b));
    let rootfs = bytes(seed, rootfs_len);
    let kernel = bytes(seed + 1, 300_000 + 17);
    let initrd = bytes(seed + 2, 700_000 + 3);
    fs::write(out.join("rootfs.squashfs"), &rootfs).unwrap();
    let tree = verity.then(|| {
        cairn_verity::append_tree(
            &out.join("rootfs.squashfs"),
            &cairn_verity::derive_salt(v.as_bytes()),
        )
        .unwrap()
    });
    let rootfs = if verity {
        fs::read(out.join("rootfs.squashfs")).unwrap()
    } else {
        rootfs
    };
    fs::write(out.join("vmlinuz"), &kernel).unwrap();
    fs::write(out.join("initrd.img"), &initrd).unwrap();
    write_bundle(
        &out,
        &BundleInput {
            name,
            version: v,
            channel: "stable",
            rootfs: &out.join("rootfs.squashfs"),
            kernel: &out.join("vmlinuz"),
            initrd: &out.join("initrd.img"),
            created: cairn_updater::fsutil::now() - 60,
            validity_secs: 7 * 86400,
            verity: tree,
        },
        key,
    )
    .unwrap();
    (
        Built {
            root: out.join("update"),
            rootfs,
            kernel,
            initrd,
        },
        tree,
    )
}

/// A request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub seed: Option<String>,
    /// `X-Cairn-Machine`.
    pub machine: Option<String>,
}

#[derive(Default)]
struct Shared {
    /// channel path -> bundle folder
    root: Option<PathBuf>,
    /// file name -> (requests left to cut, bytes to send before cutting)
    cuts: HashMap<String, (u32, u64)>,
    /// file name -> what the next requests get instead of the file
    fails: HashMap<String, VecDeque<Fail>>,
    log: Vec<Seen>,
}

/// A failed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// This HTTP status, empty body.
    Status(u16),
    /// The connection is closed without an answer.
    Drop,
}

/// A minimal HTTP/1.1 file server on 127.0.0.1 for `/update/v1/stable/`.
#[derive(Clone)]
pub struct Server {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl Server {
    pub fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s2 = shared.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &s3);
                });
            }
        });
        Server { url, shared }
    }

    /// Serve this bundle folder as the `stable` channel.
    pub fn serve(&self, root: &Path) {
        self.shared.lock().unwrap().root = Some(root.to_path_buf());
    }

    /// Cut the next `times` responses for `file` after `after` body bytes.
    pub fn cut(&self, file: &str, times: u32, after: u64) {
        self.shared
            .lock()
            .unwrap()
            .cuts
            .insert(file.to_string(), (times, after));
    }

    /// The next requests for `file` get `fails`, in order, instead of
    /// the file.
    pub fn fail(&self, file: &str, fails: &[Fail]) {
        self.shared
            .lock()
            .unwrap()
            .fails
            .entry(file.to_string())
            .or_default()
            .extend(fails.iter().copied());
    }

    /// How many requests for `file` were seen.
    pub fn count(&self, file: &str) -> usize {
        self.log()
            .iter()
            .filter(|s| s.path.rsplit('/').next() == Some(file))
            .count()
    }

    pub fn log(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().log.clone()
    }
}

fn handle(conn: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    let mut seed = None;
    let mut machine = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case(cairn_formats::channel::rollout::SEED_HEADER) {
                seed = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case(cairn_formats::channel::rollout::MACHINE_HEADER) {
                machine = Some(v.trim().to_string());
            }
        }
    }
    let mut w = conn;
    let (root, cut, fail) = {
        let mut s = shared.lock().unwrap();
        s.log.push(Seen {
            path: path.clone(),
            range: range.clone(),
            seed,
            machine,
        });
        let file = path.rsplit('/').next().unwrap_or("").to_string();
        let fail = s.fails.get_mut(&file).and_then(|q| q.pop_front());
        let cut = match s.cuts.get_mut(&file) {
            Some((n, after)) if *n > 0 && fail.is_none() => {
                *n -= 1;
                Some(*after)
            }
            _ => None,
        };
        (s.root.clone(), cut, fail)
    };
    match fail {
        Some(Fail::Status(code)) => {
            w.write_all(
                format!(
                    "HTTP/1.1 {code} Failing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )?;
            return Ok(());
        }
        Some(Fail::Drop) => {
            w.shutdown(std::net::Shutdown::Both)?;
            return Ok(());
        }
        None => {}
    }
    let file = path.strip_prefix("/update/v1/stable/").map(|f| {
        if f == "manifest" {
            "manifest.json"
        } else {
            f
        }
    });
    let data = match (root, file) {
        (Some(root), Some(f)) if !f.contains('/') => fs::read(root.join(f)).ok(),
        _ => None,
    };
    let Some(data) = data else {
        w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let total = data.len() as u64;
    let (status, start) = match range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(s) if s < total => ("206 Partial Content", s),
        Some(_) => {
            w.write_all(
                format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            )?;
            return Ok(());
        }
        None => ("200 OK", 0),
    };
    let body = &data[start as usize..];
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        body.len()
    );
    if start > 0 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        ));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    match cut {
        Some(after) => {
            let n = (after as usize).min(body.len());
            w.write_all(&body[..n])?;
            w.flush()?;
            // an abrupt end: the client sees fewer bytes than announced
            w.shutdown(std::net::Shutdown::Both)?;
        }
        None => w.write_all(body)?,
    }
    Ok(())
}

/// A machine made of files, running `version` from slot a.
pub struct Machine {
    pub dir: PathBuf,
    pub paths: Paths,
    pub slot_size: u64,
}

impl Machine {
    pub fn new(
        dir: &Path,
        server: &Server,
        key: &SecretKey,
        version: &str,
        v1_rootfs: &[u8],
    ) -> Machine {
        let esp = dir.join("esp");
        fs::create_dir_all(esp.join("loader/entries")).unwrap();
        fs::create_dir_all(esp.join(format!("cairn/{version}"))).unwrap();
        fs::write(esp.join(format!("cairn/{version}/vmlinuz")), b"v1 kernel").unwrap();
        fs::write(
            esp.join(format!("cairn/{version}/initrd.img")),
            b"v1 initrd",
        )
        .unwrap();
        fs::write(
            esp.join(format!("loader/entries/cairn-{version}.conf")),
            format!(
                "title default {version} (slot a)\nversion {version}\nsort-key default\nlinux /cairn/{version}/vmlinuz\ninitrd /cairn/{version}/initrd.img\noptions {RUNNING_OPTIONS}\n"
            ),
        )
        .unwrap();
        let slot_size = 6 << 20;
        let mut a = v1_rootfs.to_vec();
        a.resize(slot_size as usize, 0);
        fs::write(dir.join("slot-a"), &a).unwrap();
        fs::write(dir.join("slot-b"), bytes(99, slot_size as usize)).unwrap();
        fs::write(dir.join("cmdline"), format!("{RUNNING_OPTIONS}\n")).unwrap();
        fs::write(
            dir.join("os-release"),
            format!("NAME=cairn\nID=cairn\nIMAGE_ID=default\nIMAGE_VERSION={version}\n"),
        )
        .unwrap();
        fs::write(dir.join("boot_id"), "boot-1\n").unwrap();
        fs::write(
            dir.join("update.conf"),
            format!(
                "# written by cairn-cloudinit\nREBOOT_STRATEGY=off\nGROUP=stable\nSERVER={}\n",
                server.url
            ),
        )
        .unwrap();
        fs::create_dir_all(dir.join("keys")).unwrap();
        fs::write(
            dir.join("keys/update.pub"),
            public_key_text(&key.public(), "test"),
        )
        .unwrap();
        fs::create_dir_all(dir.join("efivars")).unwrap();
        fs::write(dir.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        let paths = Paths {
            esp,
            state_dir: dir.join("state/update"),
            cmdline: dir.join("cmdline"),
            os_release: dir.join("os-release"),
            boot_id: dir.join("boot_id"),
            config: dir.join("update.conf"),
            trusted_keys: dir.join("keys"),
            slots: SlotDevices::Fixed {
                a: dir.join("slot-a"),
                b: dir.join("slot-b"),
            },
            efivars: dir.join("efivars"),
            machine_id: dir.join("machine-id"),
            proc_net_route: dir.join("proc-net-route"),
            sys_class_net: dir.join("sys-class-net"),
        };
        Machine {
            dir: dir.to_path_buf(),
            paths,
            slot_size,
        }
    }

    /// The agent, retrying transient failures quickly (5 tries, 10 ms
    /// apart at first).
    pub fn agent(&self) -> Agent {
        let mut a = Agent::new(self.paths.clone()).unwrap();
        a.retry = FAST_RETRY;
        a
    }

    pub fn agent_with_keys(&self, keys: TrustedKeys) -> Agent {
        let c = Config::load(&self.paths.config).unwrap();
        let mut a = Agent::with(self.paths.clone(), c, keys);
        a.retry = FAST_RETRY;
        a
    }

    /// Simulates the reboot into `slot` running `version`.
    pub fn reboot_into(&self, slot: &str, version: &str, boot: &str) {
        fs::write(
            &self.paths.cmdline,
            format!(
                "{}\n",
                RUNNING_OPTIONS.replace("cairn.slot=a", &format!("cairn.slot={slot}"))
            ),
        )
        .unwrap();
        fs::write(
            &self.paths.os_release,
            format!("NAME=cairn\nIMAGE_ID=default\nIMAGE_VERSION={version}\n"),
        )
        .unwrap();
        fs::write(&self.paths.boot_id, format!("{boot}\n")).unwrap();
    }

    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.paths.esp.join("loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn entry_text(&self, name: &str) -> String {
        fs::read_to_string(self.paths.esp.join("loader/entries").join(name)).unwrap()
    }

    pub fn slot(&self, s: &str) -> PathBuf {
        self.dir.join(format!("slot-{s}"))
    }

    /// Command-line arguments pointing `cairn-update` at this machine.
    pub fn cli_args(&self) -> Vec<String> {
        let p = &self.paths;
        let s = |x: &Path| x.display().to_string();
        vec![
            "--esp".into(),
            s(&p.esp),
            "--state-dir".into(),
            s(&p.state_dir),
            "--config".into(),
            s(&p.config),
            "--keys".into(),
            s(&p.trusted_keys),
            "--cmdline".into(),
            s(&p.cmdline),
            "--os-release".into(),
            s(&p.os_release),
            "--boot-id".into(),
            s(&p.boot_id),
            "--efivars".into(),
            s(&p.efivars),
            "--machine-id".into(),
            s(&p.machine_id),
            "--proc-net-route".into(),
            s(&p.proc_net_route),
            "--sys-class-net".into(),
            s(&p.sys_class_net),
            "--slot-a".into(),
            s(&self.slot("a")),
            "--slot-b".into(),
            s(&self.slot("b")),
        ]
    }
}

/// Reads a whole file.
pub fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

impl Machine {
    /// Points the agent at another update server and channel (`update.conf`
    /// as cairn-cloudinit writes it).
    pub fn point_at(&self, url: &str, channel: &str) {
        fs::write(
            &self.paths.config,
            format!("# written by cairn-cloudinit\nREBOOT_STRATEGY=off\nGROUP={channel}\nSERVER={url}\n"),
        )
        .unwrap();
    }

    /// This machine's own `/etc/machine-id` (32 hex digits).
    pub fn set_machine_id(&self, id: &str) {
        fs::write(&self.paths.machine_id, format!("{id}\n")).unwrap();
    }

    /// The installer's hand-off on the ESP (`cairn/install.json`): the
    /// server that installed the machine and the MAC it knows it by.
    pub fn handoff(&self, server: &str, mac: &str) {
        fs::write(
            self.paths.esp.join("cairn/install.json"),
            serde_json::json!({ "server": server, "mac": mac }).to_string(),
        )
        .unwrap();
    }

    /// Runs `cairn-update ARGS` on this machine: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-update"))
            .args(self.cli_args())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A request that went through a [`Recorder`], and the answer it got.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub method: String,
    pub path: String,
    /// `X-Cairn-Machine`.
    pub machine: Option<String>,
    pub status: u16,
    /// The answer's body (empty when it could not be read).
    pub body: Vec<u8>,
}

/// An HTTP/1.1 relay on 127.0.0.1 in front of another server (which may
/// move to another port: [`Recorder::set_upstream`]) that keeps every
/// request and its answer: the server's request log, as the machines saw
/// it. One request per connection (it asks the server to close).
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    upstream: Arc<Mutex<std::net::SocketAddr>>,
    log: Arc<Mutex<Vec<Relayed>>>,
}

/// The largest request or answer a [`Recorder`] relays.
const RELAY_MAX: usize = 64 << 20;

impl Recorder {
    pub fn start(upstream: std::net::SocketAddr) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Recorder {
            url: format!("http://{}", l.local_addr().unwrap()),
            upstream: Arc::new(Mutex::new(upstream)),
            log: Arc::default(),
        };
        let r2 = r.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let r3 = r2.clone();
                std::thread::spawn(move || {
                    let _ = r3.relay(conn);
                });
            }
        });
        r
    }

    pub fn set_upstream(&self, upstream: std::net::SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    pub fn log(&self) -> Vec<Relayed> {
        self.log.lock().unwrap().clone()
    }

    fn relay(&self, mut client: TcpStream) -> std::io::Result<()> {
        client.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let mut r = BufReader::new(client.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let (mut len, mut machine) = (0usize, None);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
                break;
            }
            let Some((k, v)) = h.trim_end().split_once(':') else {
                continue;
            };
            if k.eq_ignore_ascii_case("connection") {
                continue;
            }
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0).min(RELAY_MAX);
            }
            if k.eq_ignore_ascii_case(cairn_formats::channel::rollout::MACHINE_HEADER) {
                machine = Some(v.trim().to_string());
            }
            head.push_str(&format!("{k}:{v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let upstream = *self.upstream.lock().unwrap();
        let mut up = TcpStream::connect(upstream)?;
        up.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        up.write_all(head.as_bytes())?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        (&mut up).take(RELAY_MAX as u64).read_to_end(&mut answer)?;
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n");
        let status = String::from_utf8_lossy(&answer[..split.unwrap_or(0)])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = split.is_some_and(|n| {
            String::from_utf8_lossy(&answer[..n])
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
        });
        let body = match split {
            Some(n) if !chunked => answer[n + 4..].to_vec(),
            _ => Vec::new(),
        };
        self.log.lock().unwrap().push(Relayed {
            method,
            path,
            machine,
            status,
            body,
        });
        client.write_all(&answer)?;
        client.shutdown(std::net::Shutdown::Both)
    }
}
