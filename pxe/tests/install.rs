//! Install once, through the real server and the real installer library:
//! a profile with `boot: install`; the machine's first netboot gets the
//! installer's script (`cairn.install*` words); the installer
//! (`cairn_install`, as `cairn-update install` runs it) fetches
//! `/lifecycle/v1/map/IMAGE` and the data of `disk.raw` with Range
//! requests, writes it to the disk the rule picks (a file behind a fake
//! sysfs), reads it back and reports; from then on every netboot of that
//! machine, also after a server restart, is answered with its local disk.
//! A disk that holds data is refused, the server says so at the next
//! netboot, and an operator's reinstall with overwrite lets it through.
//! Hostile reports (unknown machine, too large, install news from another
//! address, malformed) are refused.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_install::{HttpSource, Options, Reporter, Roots, Rule};
use cairn_pxe::{Server, ServerConfig};

mod common;
use common::{get, image, pattern};

const MAC: &str = "52:54:00:00:0a:01";
const MAC2: &str = "52:54:00:00:0a:02";

struct Serve {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Serve {
    fn start(config: &Path, state: &Path) -> Serve {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(Server::start(ServerConfig {
                config: config.to_path_buf(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                tftp_addr: None,
                ipxe_dir: state.to_path_buf(),
                public_url: None,
                reload_on_sighup: false,
                state_dir: state.to_path_buf(),
                proxy_dhcp: None,
                store: None,
                admin_addr: Some("127.0.0.1:0".parse().unwrap()),
            }))
            .unwrap();
        let a = server.local_addrs();
        Serve {
            rt,
            server: Some(server),
            http: a.http,
            admin: a.admin.unwrap(),
        }
    }

    fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.http)
    }

    fn ipxe(&self, mac: &str) -> String {
        let r = get(
            &self.url(&format!("/ipxe?mac={}&platform=efi", mac.replace(':', "-"))),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
    }
}

/// An image folder whose `disk.raw` is 64 MiB, mostly holes.
fn install_image(dir: &Path) -> PathBuf {
    let d = image(dir, "img", "1.0", 1000);
    let f = std::fs::File::create(d.join("disk.raw")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(b"EFI PART", 512).unwrap();
    f.write_all_at(&pattern(3 << 20, 1), 1 << 20).unwrap();
    f.write_all_at(&pattern(20 << 20, 2), 30 << 20).unwrap();
    d
}

/// A fake sysfs with one disk `vda` of `size` bytes, backed by a file.
fn machine(dir: &Path, size: u64) -> Roots {
    let roots = Roots {
        sys: dir.join("sys"),
        dev: dir.join("dev"),
    };
    let b = roots.sys.join("block/vda");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("size"), format!("{}\n", size / 512)).unwrap();
    std::fs::write(b.join("removable"), "0\n").unwrap();
    std::fs::write(b.join("ro"), "0\n").unwrap();
    std::fs::create_dir_all(&roots.dev).unwrap();
    std::fs::File::create(roots.dev.join("vda"))
        .unwrap()
        .set_len(size)
        .unwrap();
    roots
}

fn word<'a>(script: &'a str, key: &str) -> Option<&'a str> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// What the installer does with the words of its kernel command line.
fn run_installer(
    script: &str,
    roots: &Roots,
) -> Result<cairn_install::Installed, cairn_install::InstallError> {
    let server = word(script, "cairn.install").expect("cairn.install=");
    let image = word(script, "cairn.install.image").expect("cairn.install.image=");
    let opts = Options {
        rule: Rule::parse(word(script, "cairn.install.disk").unwrap()).unwrap(),
        allow_overwrite: word(script, "cairn.install.overwrite") == Some("1"),
        image: "img".into(),
        version: "1.0".into(),
        roots: roots.clone(),
    };
    let mut src = HttpSource::new(server, image);
    let map = src.map()?;
    let reporter = Reporter::new(
        Some(server),
        word(script, "cairn.install.mac").unwrap(),
        Some("0123456789abcdef0123456789abcdef".into()),
    );
    cairn_install::install(&opts, &map, &mut src, &reporter, &mut |_, _| {})
}

fn post(url: &str, body: &[u8], interface: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--interface",
            interface,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            url,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body)?;
            c.wait_with_output()
        })
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn a_machine_is_installed_once_and_then_boots_its_disk() {
    let dir = tempfile::tempdir().unwrap();
    let img = install_image(dir.path());
    let config = dir.path().join("inv.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: inst\n    image: img\n    boot: install\n    install:\n      disk: first-empty\ngroups:\n  - name: g\n    profile: inst\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let serve = Serve::start(&config, &state);

    // first netboot: the installer
    let s = serve.ipxe(MAC);
    assert!(
        s.contains("installing img-1.0 to this machine's disk (attempt 1)"),
        "{s}"
    );
    assert_eq!(
        word(&s, "cairn.install"),
        Some(format!("http://{}", serve.http).as_str())
    );
    assert_eq!(word(&s, "cairn.install.image"), Some("img-1.0"));
    assert_eq!(word(&s, "cairn.install.disk"), Some("first-empty"));
    assert_eq!(word(&s, "cairn.install.mac"), Some(MAC));
    assert!(word(&s, "cairn.install.overwrite").is_none());
    assert!(s.contains("cairn.root=ram"), "{s}");

    // the map: only the data, with hashes
    let m = get(&serve.url("/lifecycle/v1/map/img-1.0"), &[]);
    assert_eq!(m.status, 200);
    let map = cairn_formats::disk_map::DiskMap::parse(&m.body).unwrap();
    assert_eq!(map.size, 64 << 20);
    assert!(map.data_bytes() <= 24 << 20, "{}", map.data_bytes());

    // the installer writes the disk
    let mdir = dir.path().join("m1");
    let roots = machine(&mdir, 128 << 20);
    let done = run_installer(&s, &roots).unwrap();
    assert_eq!(done.disk.name, "vda");
    let want = std::fs::read(img.join("disk.raw")).unwrap();
    let got = std::fs::read(roots.dev.join("vda")).unwrap();
    assert_eq!(&got[..want.len()], &want[..], "the disk holds disk.raw");

    // every later netboot: the local disk
    for _ in 0..2 {
        let s = serve.ipxe(MAC);
        assert!(
            s.contains("installed img 1.0 on")
                && s.contains("booting from the local disk")
                && s.ends_with("exit 1\n"),
            "{s}"
        );
    }
    // the operators' view
    let v = get(&format!("http://{}/lifecycle", serve.admin), &[]);
    let j: serde_json::Value = serde_json::from_slice(&v.body).unwrap();
    assert_eq!(j["machines"][0]["phase"]["phase"], "installed", "{j}");
    assert_eq!(
        j["machines"][0]["machine_id"],
        "0123456789abcdef0123456789abcdef"
    );

    // after a server restart, still installed
    drop(serve);
    let serve = Serve::start(&config, &state);
    assert!(serve.ipxe(MAC).contains("booting from the local disk"));

    // a machine whose disk holds data: refused, and the server says so
    let s = serve.ipxe(MAC2);
    let mdir2 = dir.path().join("m2");
    let roots2 = machine(&mdir2, 128 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(roots2.dev.join("vda"))
        .unwrap()
        .write_all_at(b"EFI PART", 512)
        .unwrap();
    let e = run_installer(&s, &roots2).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert_eq!(
        e.to_string(),
        "no disk fits the rule first-empty; disks: vda (128M, holds a GPT partition table)"
    );
    let before = std::fs::read(roots2.dev.join("vda")).unwrap();
    let s = serve.ipxe(MAC2);
    assert!(
        s.contains("install refused")
            && s.contains("holds a GPT partition table")
            && !s.contains("cairn.install="),
        "{s}"
    );
    // an operator allows overwriting it
    let (code, _) = post(
        &format!(
            "http://{}/lifecycle/reinstall?mac={MAC2}&overwrite=1",
            serve.admin
        ),
        b"",
        "127.0.0.1",
    );
    assert_eq!(code, 200);
    let s = serve.ipxe(MAC2);
    assert_eq!(word(&s, "cairn.install.overwrite"), Some("1"), "{s}");
    assert_eq!(std::fs::read(roots2.dev.join("vda")).unwrap(), before);
    run_installer(&s, &roots2).unwrap();
    assert!(serve.ipxe(MAC2).contains("booting from the local disk"));
}

#[test]
fn hostile_reports_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    install_image(dir.path());
    let config = dir.path().join("inv.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: inst\n    image: img\n    boot: install\ngroups:\n  - name: g\n    profile: inst\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let serve = Serve::start(&config, &state);
    let url = serve.url(cairn_formats::lifecycle::REPORT_PATH);
    let finished = |mac: &str| {
        format!(
            r#"{{"mac":"{mac}","event":"install-finished","disk":"/dev/vda","image":"img","version":"1.0"}}"#
        )
    };
    // a machine that never netbooted
    let (code, body) = post(&url, finished(MAC).as_bytes(), "127.0.0.1");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no such machine"), "{body}");
    serve.ipxe(MAC);
    // install news from another address than the one that netbooted it
    let (code, body) = post(&url, finished(MAC).as_bytes(), "127.0.0.2");
    assert_eq!(code, 403, "{body}");
    assert!(
        serve.ipxe(MAC).contains("attempt 2"),
        "the forged report changed nothing"
    );
    // too large, malformed, unknown event
    let big = format!(
        r#"{{"mac":"{MAC}","event":"install-failed","reason":"{}"}}"#,
        "x".repeat(10_000)
    );
    assert_eq!(post(&url, big.as_bytes(), "127.0.0.1").0, 413);
    let (code, body) = post(&url, b"{not json", "127.0.0.1");
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(
        &url,
        format!(r#"{{"mac":"{MAC}","event":"format-the-disk"}}"#).as_bytes(),
        "127.0.0.1",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown variant"), "{body}");
    // health news may come from anywhere the machine is (it booted from disk)
    let (code, body) = post(
        &url,
        format!(r#"{{"mac":"{MAC}","event":"healthy","version":"1.0"}}"#).as_bytes(),
        "127.0.0.2",
    );
    assert_eq!(code, 200, "{body}");
    // the map of an image that does not exist
    assert_eq!(get(&serve.url("/lifecycle/v1/map/nope-1"), &[]).status, 404);
}
