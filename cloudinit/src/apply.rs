//! Validation and application of one user-data text (with a config drive's metadata merged in as coreos-cloudinit did), in coreos-cloudinit's order: hostname, users, SSH keys, write_files, /etc/environment, units; the outcome for the status file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use cairn_cloudconfig::{
    check_hostname as check_hostname_rules, parse_user_data, substitute, validate, Addresses,
    CloudConfig, Finding, Kind, UserData,
};
use serde::Serialize;

use crate::addrs::MachineAddresses;
use crate::envfile;
use crate::fsutil::{self, Accounts, Written};
use crate::metadata::{Metadata, MetadataError};
use crate::services;
use crate::ssh;
use crate::units::{Systemd, UnitSpec};
use crate::users;

/// The status file, under the target root.
pub const STATUS_FILE: &str = "/run/cairn/cloudinit.status";
/// Where `#!` user-data scripts are kept.
pub const SCRIPTS_DIR: &str = "/var/lib/cairn-cloudinit/scripts";

/// How to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// The target root ("/" on a machine).
    pub root: PathBuf,
    /// Act on the running system (sethostname, daemon-reload, unit
    /// commands, systemd-run). False under `--root`.
    pub live: bool,
    pub addresses: MachineAddresses,
}

/// The overall result, also the exit status of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Everything applied (or an empty user-data).
    Applied,
    /// No data source had user-data.
    NoConfig,
    /// Applied, but some steps failed (logged, listed in `failures`).
    Failed,
    /// The validator found errors: nothing was applied.
    Invalid,
    /// The data source could not be read (URL gave 4xx or kept failing).
    SourceFailed,
}

impl Status {
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Applied | Status::NoConfig => 0,
            Status::Failed => 1,
            Status::Invalid => 2,
            Status::SourceFailed => 3,
        }
    }
}

/// What happened; written as JSON to the status file.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub source: Option<String>,
    pub findings: Vec<Finding>,
    pub failures: Vec<String>,
    /// Files written or changed (paths as on the target).
    pub changed: Vec<String>,
    /// systemctl and other actions taken (or skipped under --root).
    pub actions: Vec<String>,
    /// Milliseconds from the start of application to the last unit written.
    pub apply_ms: u64,
}

impl Outcome {
    pub fn new(status: Status, source: Option<String>) -> Outcome {
        Outcome {
            status,
            source,
            findings: Vec::new(),
            failures: Vec::new(),
            changed: Vec::new(),
            actions: Vec::new(),
            apply_ms: 0,
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        let msg = format!("{e:#}");
        tracing::error!("{msg}");
        self.failures.push(msg);
    }

    fn changed(&mut self, w: Written, path: &str) {
        if w == Written::Changed {
            tracing::info!("wrote {path}");
            self.changed.push(path.to_string());
        }
    }
}

fn to_addresses(m: &MachineAddresses) -> Addresses {
    Addresses {
        public_ipv4: m.public_ipv4.map(Into::into),
        private_ipv4: m.private_ipv4.map(Into::into),
        public_ipv6: m.public_ipv6.map(Into::into),
        private_ipv6: m.private_ipv6.map(Into::into),
    }
}

/// Validates `text`; with no error finding, substitutes the addresses and
/// applies it. Every finding is logged with its line.
pub fn run(text: &str, source: &str, opts: &Options) -> Outcome {
    run_with_metadata(text, source, None, opts)
}

/// The cloud-config with a config drive's metadata merged in, as
/// coreos-cloudinit merged it: the metadata's SSH keys are added to
/// `core`'s, its hostname is used only when the cloud-config sets none.
pub fn merge_metadata(mut c: CloudConfig, md: &Metadata) -> CloudConfig {
    if let Some(h) = &md.hostname {
        match c.hostname.as_deref().filter(|h| !h.is_empty()) {
            Some(own) if own != h => tracing::info!(
                "the user-data's hostname {own} overrides the metadata's hostname {h}"
            ),
            Some(_) => {}
            None => c.hostname = Some(h.clone()),
        }
    }
    c.ssh_authorized_keys
        .extend(md.public_keys.iter().map(|(_, k)| k.clone()));
    c
}

/// [`run`] with a config drive's metadata: merged into a cloud-config
/// ([`merge_metadata`]), applied on its own before a `#!` script or for
/// empty user-data. Invalid user-data applies nothing, metadata neither;
/// refused metadata (`Err`) is a failure and nothing of it is applied,
/// while the user-data is. An Ignition config is ignored, metadata and
/// all, as coreos-cloudinit did.
pub fn run_with_metadata(
    text: &str,
    source: &str,
    metadata: Option<&Result<Metadata, MetadataError>>,
    opts: &Options,
) -> Outcome {
    let mut out = Outcome::new(Status::Applied, Some(source.to_string()));
    let report = validate(text);
    for f in &report.findings {
        match f.kind {
            Kind::Error => tracing::error!("{source}: {f}"),
            Kind::Warning => tracing::warn!("{source}: {f}"),
            Kind::Info => tracing::info!("{source}: {f}"),
        }
    }
    out.findings = report.findings.clone();
    if report.has_errors() {
        let n = report
            .findings
            .iter()
            .filter(|f| f.kind == Kind::Error)
            .count();
        let also = if metadata.is_some() {
            " (nor the metadata)"
        } else {
            ""
        };
        tracing::error!("{source}: {n} error(s) in the cloud-config: nothing applied{also}");
        out.status = Status::Invalid;
        return out;
    }
    let text = substitute(text, &to_addresses(&opts.addresses));
    let start = Instant::now();
    let parsed = match parse_user_data(&text) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(
                "{source}: line {}: error: {}: nothing applied",
                e.line,
                e.message
            );
            out.status = Status::Invalid;
            return out;
        }
    };
    let md = match metadata {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            out.fail(anyhow::anyhow!("{e}: nothing applied from the metadata"));
            None
        }
    };
    match parsed {
        UserData::Empty => match md {
            Some(m) => {
                tracing::info!("{source}: empty user-data, applying the metadata");
                apply_config(&merge_metadata(CloudConfig::default(), m), opts, &mut out);
            }
            None => tracing::info!("{source}: empty user-data, nothing to do"),
        },
        UserData::Ignition(_) => {
            tracing::warn!("{source}: an Ignition config: not for cairn-cloudinit, ignored")
        }
        UserData::Script(s) => {
            if let Some(m) = md {
                apply_config(&merge_metadata(CloudConfig::default(), m), opts, &mut out);
            }
            if let Err(e) = run_script(&s, opts, &mut out) {
                out.fail(e);
            }
        }
        UserData::CloudConfig(c) => match md {
            Some(m) => apply_config(&merge_metadata(c, m), opts, &mut out),
            None => apply_config(&c, opts, &mut out),
        },
    }
    out.apply_ms = start.elapsed().as_millis() as u64;
    if !out.failures.is_empty() {
        out.status = Status::Failed;
        tracing::error!("{source}: applied with {} failure(s)", out.failures.len());
    } else {
        tracing::info!(
            "{source}: applied ({} files changed) in {} ms",
            out.changed.len(),
            out.apply_ms
        );
    }
    out
}

/// Writes a `#!` script to SCRIPTS_DIR and, on a live system, runs it as a
/// transient unit (each boot the agent runs, as coreos-cloudinit did).
fn run_script(script: &str, opts: &Options, out: &mut Outcome) -> Result<()> {
    use sha2::Digest;
    let id = &hex::encode(sha2::Sha256::digest(script.as_bytes()))[..12];
    let shown = format!("{SCRIPTS_DIR}/{id}");
    let w = fsutil::write_atomic(&opts.root, &shown, script.as_bytes(), 0o700, None)
        .with_context(|| format!("writing {shown}"))?;
    out.changed(w, &shown);
    let unit = format!("cairn-cloudinit-script-{id}");
    if !opts.live {
        tracing::info!("would run {shown} as {unit}.service (not under --root)");
        out.actions
            .push(format!("systemd-run {unit} (skipped under --root)"));
        return Ok(());
    }
    tracing::info!("running {shown} as transient unit {unit}.service");
    let o = std::process::Command::new("systemd-run")
        .arg(format!("--unit={unit}"))
        .arg("--description=user-data script run by cairn-cloudinit")
        .arg(&shown)
        .output()
        .context("running systemd-run (Debian package systemd)")?;
    if !o.status.success() {
        anyhow::bail!(
            "systemd-run {unit} {shown}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    out.actions.push(format!("systemd-run {unit}"));
    Ok(())
}

/// The environment variables coreos-cloudinit puts into /etc/environment.
pub fn environment_vars(a: &MachineAddresses) -> Vec<(String, String)> {
    let s = |v: Option<String>| v.unwrap_or_default();
    [
        (
            "COREOS_PRIVATE_IPV4",
            s(a.private_ipv4.map(|x| x.to_string())),
        ),
        (
            "COREOS_PRIVATE_IPV6",
            s(a.private_ipv6.map(|x| x.to_string())),
        ),
        (
            "COREOS_PUBLIC_IPV4",
            s(a.public_ipv4.map(|x| x.to_string())),
        ),
        (
            "COREOS_PUBLIC_IPV6",
            s(a.public_ipv6.map(|x| x.to_string())),
        ),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Refuses a hostname the validator would refuse (checked again here: the
/// validator saw the text before `$private_ipv4` and the like were
/// substituted, and [`apply_config`] may be called without it).
fn check_hostname(name: &str) -> Result<()> {
    check_hostname_rules(name).map_err(|why| anyhow::anyhow!("hostname {name:?} refused: {why}"))
}

fn set_hostname(name: &str, opts: &Options, out: &mut Outcome) -> Result<()> {
    check_hostname(name)?;
    let w = fsutil::write_atomic(
        &opts.root,
        "/etc/hostname",
        format!("{name}\n").as_bytes(),
        0o644,
        None,
    )
    .context("writing /etc/hostname")?;
    out.changed(w, "/etc/hostname");
    if opts.live {
        let current = rustix::system::uname();
        if current.nodename().to_bytes() != name.as_bytes() {
            rustix::system::sethostname(name.as_bytes())
                .with_context(|| format!("sethostname({name})"))?;
            out.actions.push(format!("sethostname {name}"));
        }
    }
    tracing::info!("hostname: {name}");
    Ok(())
}

fn write_file(
    f: &cairn_cloudconfig::WriteFile,
    accounts: &Accounts,
    opts: &Options,
    out: &mut Outcome,
) -> Result<()> {
    let content = f
        .decoded_content()
        .with_context(|| format!("write_files {}: decoding the content", f.path))?;
    let mode = f
        .mode()
        .with_context(|| format!("write_files {}", f.path))?
        .unwrap_or(0o644);
    let owner = match f.owner.as_deref().filter(|o| !o.is_empty()) {
        Some(o) => Some(
            accounts
                .resolve_owner(o)
                .with_context(|| format!("write_files {}", f.path))?,
        ),
        None => None,
    };
    let w = fsutil::write_atomic(&opts.root, &f.path, &content, mode, owner)
        .with_context(|| format!("writing {}", f.path))?;
    out.changed(w, &f.path);
    Ok(())
}

fn etc_hosts(hostname: &str) -> String {
    format!("127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {hostname}\n::1 {hostname}\n")
}

/// Applies a valid cloud-config. Failures are recorded and the rest goes on.
pub fn apply_config(c: &CloudConfig, opts: &Options, out: &mut Outcome) {
    let root = &opts.root;
    if let Some(h) = c.hostname.as_deref().filter(|h| !h.is_empty()) {
        if let Err(e) = set_hostname(h, opts, out) {
            out.fail(e.context("setting the hostname"));
        }
    }

    for u in &c.users {
        let accounts = match Accounts::load(root) {
            Ok(a) => a,
            Err(e) => {
                out.fail(e);
                break;
            }
        };
        match users::ensure_user(root, &accounts, u) {
            Ok(true) => out.actions.push(format!("user {}", u.name)),
            Ok(false) => {}
            Err(e) => {
                out.fail(e);
                continue;
            }
        }
        if !u.ssh_authorized_keys.is_empty() {
            let res = Accounts::load(root)
                .and_then(|a| ssh::authorize(root, &a, &u.name, &u.ssh_authorized_keys));
            match res {
                Ok(w) => out.changed(w, &format!("~{}/.ssh/authorized_keys", u.name)),
                Err(e) => out.fail(e.context(format!("SSH keys of {}", u.name))),
            }
        }
    }

    if !c.ssh_authorized_keys.is_empty() {
        let res = Accounts::load(root)
            .and_then(|a| ssh::authorize(root, &a, "core", &c.ssh_authorized_keys));
        match res {
            Ok(w) => {
                out.changed(w, "~core/.ssh/authorized_keys");
                tracing::info!(
                    "authorized {} SSH key(s) for core",
                    c.ssh_authorized_keys.len()
                );
            }
            Err(e) => out.fail(e.context("SSH keys of core")),
        }
    }

    let accounts = Accounts::load(root).unwrap_or_default();
    let mut wrote_environment = false;
    for f in &c.write_files {
        if let Err(e) = write_file(f, &accounts, opts, out) {
            out.fail(e);
        }
        wrote_environment |= fsutil::under(Path::new("/"), &f.path)
            .is_ok_and(|p| p == Path::new("/etc/environment"));
    }
    match services::write_update_conf(root, &c.coreos) {
        Ok(Some(w)) => out.changed(w, services::UPDATE_CONF),
        Ok(None) => {}
        Err(e) => out.fail(e),
    }
    if c.manage_etc_hosts.as_deref() == Some("localhost") {
        let host = c
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            });
        let res = check_hostname(&host).and_then(|()| {
            fsutil::write_atomic(root, "/etc/hosts", etc_hosts(&host).as_bytes(), 0o644, None)
        });
        match res {
            Ok(w) => out.changed(w, "/etc/hosts"),
            Err(e) => out.fail(e.context("writing /etc/hosts")),
        }
    }

    if !wrote_environment {
        let vars = environment_vars(&opts.addresses);
        if !vars.is_empty() {
            let res = fsutil::read_or_empty(root, "/etc/environment").and_then(|old| {
                fsutil::write_atomic(
                    root,
                    "/etc/environment",
                    envfile::merge(&old, &vars).as_bytes(),
                    0o644,
                    None,
                )
            });
            match res {
                Ok(w) => out.changed(w, "/etc/environment"),
                Err(e) => out.fail(e.context("updating /etc/environment")),
            }
        }
    }

    let mut specs: Vec<UnitSpec> = c
        .coreos
        .units
        .iter()
        .map(|u| UnitSpec {
            name: u.name.clone(),
            runtime: u.runtime,
            enable: u.enable,
            content: u.content.clone(),
            command: u.command.clone(),
            mask: u.mask,
            drop_ins: u
                .drop_ins
                .iter()
                .map(|d| (d.name.clone(), d.content.clone()))
                .collect(),
        })
        .filter(|u| {
            if u.name.is_empty() {
                tracing::warn!("skipping a unit without a name");
            }
            !u.name.is_empty()
        })
        .collect();
    specs.extend(services::settings_units(root, &c.coreos));
    let sd = Systemd {
        root: root.clone(),
        live: opts.live,
    };
    let u = sd.process(&specs);
    out.changed.extend(u.changed);
    out.actions.extend(u.actions);
    out.failures.extend(u.failures);
}

/// Writes the outcome as JSON to `path` under `root` (atomically).
pub fn write_status(root: &Path, path: &str, outcome: &Outcome) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(outcome).context("serialising the status")?;
    json.push(b'\n');
    fsutil::write_atomic(root, path, &json, 0o644, None)
        .with_context(|| format!("writing {path}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn opts(root: &Path) -> Options {
        Options {
            root: root.to_path_buf(),
            live: false,
            addresses: MachineAddresses {
                private_ipv4: Some("10.0.2.15".parse().unwrap()),
                public_ipv4: Some("10.0.2.15".parse().unwrap()),
                ..Default::default()
            },
        }
    }

    fn seed(root: &Path) {
        let me = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\ncore:x:{}:{}::/home/core:/bin/sh\n",
                me.0, me.1
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            format!("root:x:0:\ncore:x:{}:\nstaff:x:50:\n", me.1),
        )
        .unwrap();
    }

    #[test]
    fn an_error_finding_applies_nothing() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let text = "#cloud-config\nhostname: must-not-be-set\ncoreos:\n  update:\n    reboot-strategy: sometimes\n";
        let out = run(text, "test", &opts(t.path()));
        assert_eq!(out.status, Status::Invalid);
        assert_eq!(out.status.exit_code(), 2);
        assert!(
            out.findings
                .iter()
                .any(|f| f.line == 5 && f.kind == Kind::Error),
            "{:?}",
            out.findings
        );
        assert!(!t.path().join("etc/hostname").exists());
        assert!(!t.path().join("etc/cairn/update.conf").exists());
        assert!(out.changed.is_empty());
    }

    #[test]
    fn write_files_every_encoding_mode_and_owner() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let me = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        // "hello\n" as base64, and gzip(+base64) made here
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello\n").unwrap();
        let gz_b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
        };
        let mut text = String::from("#cloud-config\nwrite_files:\n");
        let encodings = [
            "b64",
            "base64",
            "gz+b64",
            "gzip+base64",
            "gz+base64",
            "gzip+b64",
        ];
        for (i, enc) in encodings.iter().enumerate() {
            let content = if enc.starts_with("gz") {
                gz_b64.clone()
            } else {
                "aGVsbG8K".to_string()
            };
            text.push_str(&format!(
                "  - path: /srv/enc{i}\n    encoding: {enc}\n    content: {content}\n"
            ));
        }
        text.push_str("  - path: /srv/plain\n    content: |\n      hello\n");
        text.push_str("  - path: /srv/deep/dir/mode\n    permissions: '0600'\n    owner: core:staff\n    content: x\n");
        text.push_str(
            "  - path: /srv/octal\n    permissions: 0755\n    owner: core\n    content: y\n",
        );
        let out = run(&text, "test", &opts(t.path()));
        assert_eq!(
            out.status,
            Status::Applied,
            "{:?} {:?}",
            out.failures,
            out.findings
        );
        for (i, enc) in encodings.iter().enumerate() {
            assert_eq!(
                std::fs::read(t.path().join(format!("srv/enc{i}"))).unwrap(),
                b"hello\n",
                "{enc}"
            );
        }
        let plain = std::fs::metadata(t.path().join("srv/plain")).unwrap();
        assert_eq!(plain.mode() & 0o7777, 0o644, "default mode");
        let m = std::fs::metadata(t.path().join("srv/deep/dir/mode")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, me.0, 50));
        assert_eq!(
            std::fs::metadata(t.path().join("srv/deep/dir"))
                .unwrap()
                .mode()
                & 0o7777,
            0o755
        );
        let m = std::fs::metadata(t.path().join("srv/octal")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, me.0, me.1));
        // /etc/environment got the addresses, since write_files did not write it
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/environment")).unwrap(),
            "COREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n"
        );
        // an unknown owner is a failure of that file only
        let out = run("#cloud-config\nwrite_files:\n  - path: /a\n    owner: ghost\n    content: x\n  - path: /b\n    content: y\n", "t", &opts(t.path()));
        assert_eq!(out.status, Status::Failed);
        assert!(out.failures[0].contains("ghost"), "{:?}", out.failures);
        assert!(!t.path().join("a").exists());
        assert!(t.path().join("b").exists());
    }

    #[test]
    fn write_files_through_a_users_symlinked_directory_is_refused() {
        if !crate::testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        let m = crate::testutil::Machine::new();
        // the user's link to a directory outside, a root-owned link in the
        // user's directory (a hard link of one, say), and the user's link to
        // a directory under the root
        m.user_symlink(&m.outside, "/home/core/conf");
        std::os::unix::fs::symlink(&m.outside, m.at("/home/core/rootlink")).unwrap();
        std::fs::create_dir_all(m.at("/etc/ssh")).unwrap();
        m.user_symlink(Path::new("/etc"), "/home/core/etc");
        let before = m.outside_snapshot();
        let etc_before = crate::testutil::snapshot(&m.at("/etc/ssh"));
        let text = "#cloud-config\nwrite_files:\n  - path: /home/core/conf/shadow\n    owner: core\n    content: x\n  - path: /home/core/conf/sub/new\n    content: x\n  - path: /home/core/rootlink/new\n    content: x\n  - path: /home/core/etc/ssh/sshd_config\n    content: x\n  - path: /home/core/fine/file\n    owner: core\n    content: ok\n";
        let out = run(text, "t", &opts(&m.root));
        assert_eq!(m.outside_snapshot(), before, "something outside changed");
        assert_eq!(crate::testutil::snapshot(&m.at("/etc/ssh")), etc_before);
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.failures.len(), 4, "{:?}", out.failures);
        for (f, shown) in out.failures.iter().zip([
            "/home/core/conf",
            "/home/core/conf",
            "/home/core/rootlink",
            "/home/core/etc",
        ]) {
            assert!(f.contains(&format!("refusing {shown}: ")), "{f}");
        }
        // the rest applied
        assert_eq!(out.changed, ["/home/core/fine/file", "/etc/environment"]);
        assert_eq!(
            std::fs::read_to_string(m.at("/home/core/fine/file")).unwrap(),
            "ok"
        );
    }

    #[test]
    fn write_files_follows_roots_links_and_replaces_a_final_link() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        seed(&root);
        std::fs::write(outside.join("target"), "keep").unwrap();
        // Debian's /var/run -> /run, made by root in root's directory
        std::os::unix::fs::symlink("../run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink(outside.join("target"), root.join("etc/link")).unwrap();
        let text = "#cloud-config\nwrite_files:\n  - path: /var/run/app/pid\n    content: '1'\n  - path: /etc/link\n    content: new\n";
        let out = run(text, "t", &opts(&root));
        assert_eq!(out.status, Status::Applied, "{:?}", out.failures);
        assert_eq!(
            std::fs::read_to_string(root.join("run/app/pid")).unwrap(),
            "1"
        );
        // the link itself was replaced by the file; its target is untouched
        assert!(std::fs::symlink_metadata(root.join("etc/link"))
            .unwrap()
            .is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/link")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("target")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn a_bad_hostname_writes_neither_hostname_nor_hosts() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        for bad in ["evil\n10.0.0.1 bank.example", "-h", "a b", "x..y"] {
            let c = CloudConfig {
                hostname: Some(bad.to_string()),
                manage_etc_hosts: Some("localhost".into()),
                ..Default::default()
            };
            let mut out = Outcome::new(Status::Applied, None);
            apply_config(&c, &opts(t.path()), &mut out);
            assert_eq!(out.failures.len(), 2, "{bad:?}: {:?}", out.failures);
            assert!(
                out.failures[0].contains(&format!("hostname {bad:?} refused")),
                "{:?}",
                out.failures
            );
            assert!(
                out.failures[1].contains("writing /etc/hosts"),
                "{:?}",
                out.failures
            );
            assert!(!t.path().join("etc/hostname").exists(), "{bad:?}");
            assert!(!t.path().join("etc/hosts").exists(), "{bad:?}");
        }
        // through run, the validator refuses it first
        let out = run("#cloud-config\nhostname: -h\n", "t", &opts(t.path()));
        assert_eq!(out.status, Status::Invalid);
        assert!(!t.path().join("etc/hostname").exists());
        // a substituted IPv6 address is no hostname: refused at apply
        let mut o = opts(t.path());
        o.addresses.private_ipv6 = Some("fd00::5".parse().unwrap());
        let out = run(
            "#cloud-config\nhostname: $private_ipv6\nmanage_etc_hosts: localhost\n",
            "t",
            &o,
        );
        assert_eq!(out.status, Status::Failed);
        assert!(
            out.failures[0].contains("hostname \"fd00::5\" refused"),
            "{:?}",
            out.failures
        );
        assert!(!t.path().join("etc/hostname").exists());
        assert!(!t.path().join("etc/hosts").exists());
        // a good one still goes through
        let out = run(
            "#cloud-config\nhostname: node-$private_ipv4\nmanage_etc_hosts: localhost\n",
            "t",
            &opts(t.path()),
        );
        assert_eq!(out.status, Status::Applied, "{:?}", out.failures);
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
            "node-10.0.2.15\n"
        );
        assert!(std::fs::read_to_string(t.path().join("etc/hosts"))
            .unwrap()
            .contains("127.0.0.1 node-10.0.2.15\n"));
    }

    #[test]
    fn environment_merges_and_write_files_wins() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        std::fs::write(
            t.path().join("etc/environment"),
            "PATH=/usr/bin\nCOREOS_PRIVATE_IPV4=1.1.1.1\n",
        )
        .unwrap();
        let out = run("#cloud-config\nhostname: h1\n", "t", &opts(t.path()));
        assert_eq!(out.status, Status::Applied);
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/environment")).unwrap(),
            "PATH=/usr/bin\nCOREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
            "h1\n"
        );
        run(
            "#cloud-config\nwrite_files:\n  - path: /etc/environment\n    content: MINE=1\n",
            "t",
            &opts(t.path()),
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/environment")).unwrap(),
            "MINE=1"
        );
    }

    #[test]
    fn substitution_reaches_the_etcd_dropin() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let text = "#cloud-config\ncoreos:\n  etcd2:\n    name: node1\n    advertise-client-urls: http://$private_ipv4:2379\n    initial-cluster: node1=http://$private_ipv4:2380\n";
        let out = run(text, "t", &opts(t.path()));
        assert_eq!(out.status, Status::Applied, "{:?}", out.failures);
        let d = std::fs::read_to_string(
            t.path()
                .join("run/systemd/system/etcd.service.d/20-cloudinit.conf"),
        )
        .unwrap();
        assert!(
            d.contains("Environment=\"ETCD_ADVERTISE_CLIENT_URLS=http://10.0.2.15:2379\"\n"),
            "{d}"
        );
        assert!(
            d.contains("Environment=\"ETCD_INITIAL_CLUSTER=node1=http://10.0.2.15:2380\"\n"),
            "{d}"
        );
        assert!(d.contains("Environment=\"ETCD_NAME=node1\"\n"), "{d}");
    }

    const MD_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetadataKey000000000000000000000000000001 md";
    const UD_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserDataKey000000000000000000000000000002 ud";

    fn md(hostname: Option<&str>) -> Result<Metadata, MetadataError> {
        Ok(Metadata {
            hostname: hostname.map(String::from),
            public_keys: vec![("vm".into(), MD_KEY.into())],
            ..Default::default()
        })
    }

    #[test]
    fn metadata_merges_as_coreos_cloudinit_did() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let keys = || std::fs::read_to_string(t.path().join("home/core/.ssh/authorized_keys"));
        let hostname = || std::fs::read_to_string(t.path().join("etc/hostname")).unwrap();
        // the user-data's hostname wins; keys from both
        let text = format!("#cloud-config\nhostname: own\nssh_authorized_keys:\n  - {UD_KEY}\n");
        let out = run_with_metadata(&text, "t", Some(&md(Some("md-host"))), &opts(t.path()));
        assert_eq!(out.status, Status::Applied, "{:?}", out.failures);
        assert_eq!(hostname(), "own\n");
        assert_eq!(keys().unwrap(), format!("{UD_KEY}\n{MD_KEY}\n"));
        // no hostname in the user-data: the metadata's
        let out = run_with_metadata(
            "#cloud-config\n",
            "t",
            Some(&md(Some("md-host"))),
            &opts(t.path()),
        );
        assert_eq!(out.status, Status::Applied, "{:?}", out.failures);
        assert_eq!(hostname(), "md-host\n");
        assert_eq!(keys().unwrap(), format!("{MD_KEY}\n"));
        // empty user-data and a script: the metadata still applies
        for text in ["", "#!/bin/sh\ntrue\n"] {
            let t = tempfile::tempdir().unwrap();
            seed(t.path());
            let out = run_with_metadata(text, "t", Some(&md(Some("m2"))), &opts(t.path()));
            assert_eq!(out.status, Status::Applied, "{text:?}: {:?}", out.failures);
            assert_eq!(
                std::fs::read_to_string(t.path().join("home/core/.ssh/authorized_keys")).unwrap(),
                format!("{MD_KEY}\n"),
                "{text:?}"
            );
            assert_eq!(
                std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
                "m2\n"
            );
        }
        // empty user-data and no metadata: nothing at all, as before
        let t2 = tempfile::tempdir().unwrap();
        seed(t2.path());
        let out = run_with_metadata("", "t", None, &opts(t2.path()));
        assert_eq!(out.status, Status::Applied);
        assert!(out.changed.is_empty(), "{:?}", out.changed);
    }

    #[test]
    fn refused_metadata_applies_nothing_of_it_and_invalid_user_data_nothing_at_all() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let bad: Result<Metadata, MetadataError> = Err(MetadataError {
            path: "/cd/openstack/latest/meta_data.json".into(),
            reason: "public_keys is not a JSON object (key name -> key)".into(),
        });
        let out = run_with_metadata(
            "#cloud-config\nhostname: own\n",
            "t",
            Some(&bad),
            &opts(t.path()),
        );
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
        assert!(
            out.failures[0].starts_with("/cd/openstack/latest/meta_data.json: public_keys is not")
                && out.failures[0].ends_with("nothing applied from the metadata"),
            "{:?}",
            out.failures
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
            "own\n"
        );
        assert!(!t.path().join("home/core/.ssh").exists());
        // a cloud-config with an error: the metadata is not applied either
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let text = "#cloud-config\ncoreos:\n  update:\n    reboot-strategy: sometimes\n";
        let out = run_with_metadata(text, "t", Some(&md(Some("md-host"))), &opts(t.path()));
        assert_eq!(out.status, Status::Invalid);
        assert!(!t.path().join("etc/hostname").exists());
        assert!(!t.path().join("home/core/.ssh").exists());
    }

    #[test]
    fn scripts_are_kept_not_run_under_root() {
        let t = tempfile::tempdir().unwrap();
        let out = run("#!/bin/sh\necho hi\n", "t", &opts(t.path()));
        assert_eq!(out.status, Status::Applied, "{:?}", out.failures);
        let dir = t.path().join("var/lib/cairn-cloudinit/scripts");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&files[0]).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::metadata(&files[0]).unwrap().mode() & 0o777, 0o700);
        assert!(
            out.actions[0].starts_with("systemd-run cairn-cloudinit-script-"),
            "{:?}",
            out.actions
        );
    }
}
