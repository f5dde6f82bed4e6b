//! systemd units from `coreos.units` and the settings drop-ins: where files go (persistent /etc or runtime /run, system or network), masking, enable, daemon-reload and unit commands via systemctl.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::fsutil::{self, Written};

/// The commands `command:` may ask for.
pub use cairn_cloudconfig::UNIT_COMMANDS as COMMANDS;

/// One unit to process: coreos.units entries and the units cairn-cloudinit
/// makes itself (settings drop-ins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: String,
    pub runtime: bool,
    pub enable: bool,
    pub content: Option<String>,
    pub command: Option<String>,
    pub mask: bool,
    /// (file name, content)
    pub drop_ins: Vec<(String, String)>,
}

/// `.network`, `.netdev` and `.link` units belong to systemd-networkd.
pub fn is_network_unit(name: &str) -> bool {
    matches!(
        Path::new(name).extension().and_then(|e| e.to_str()),
        Some("network" | "netdev" | "link")
    )
}

/// The directory a unit's file goes to on the target:
/// `/{etc,run}/systemd/{system,network}`.
pub fn unit_dir_on_target(name: &str, runtime: bool) -> String {
    format!(
        "/{}/systemd/{}",
        if runtime { "run" } else { "etc" },
        if is_network_unit(name) {
            "network"
        } else {
            "system"
        }
    )
}

/// The directory a unit's file goes to: `{etc,run}/systemd/{system,network}` under `root`.
pub fn unit_dir(root: &Path, name: &str, runtime: bool) -> PathBuf {
    crate::fsutil::under(root, &unit_dir_on_target(name, runtime))
        .expect("a fixed path under the root")
}

/// Where a unit's content (or mask symlink) goes.
pub fn destination(root: &Path, name: &str, runtime: bool) -> PathBuf {
    unit_dir(root, name, runtime).join(name)
}

/// Where a unit's drop-in goes: `NAME.d/DROPIN` beside the unit.
pub fn dropin_destination(root: &Path, name: &str, runtime: bool, dropin: &str) -> PathBuf {
    unit_dir(root, name, runtime)
        .join(format!("{name}.d"))
        .join(dropin)
}

/// A unit or drop-in file name must be one path component.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{what} name {name:?} is not a file name");
    }
    Ok(())
}

/// Whether `root` has a unit file for `name` (or its template, for
/// `foo@bar.service`) in the usual systemd search paths.
pub fn unit_exists(root: &Path, name: &str) -> bool {
    let mut names = vec![name.to_string()];
    if let (Some(at), Some(dot)) = (name.find('@'), name.rfind('.')) {
        if at < dot {
            names.push(format!("{}{}", &name[..=at], &name[dot..]));
        }
    }
    let dirs = [
        "etc/systemd/system",
        "run/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
        "usr/local/lib/systemd/system",
        "etc/systemd/network",
        "run/systemd/network",
        "usr/lib/systemd/network",
        "lib/systemd/network",
    ];
    dirs.iter().any(|d| {
        names.iter().any(|n| {
            let p = root.join(d).join(n);
            // a dangling alias symlink or a mask is no unit to start
            p.exists() && std::fs::read_link(&p).map_or(true, |t| t != Path::new("/dev/null"))
        })
    })
}

/// An empty file or a link to /dev/null: what a mask looks like.
fn null_or_empty(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            (m.is_file() && m.len() == 0) || m.file_type().is_char_device()
        }
        Err(_) => false,
    }
}

/// How systemctl is reached.
#[derive(Debug, Clone)]
pub struct Systemd {
    pub root: PathBuf,
    /// Talk to the running systemd (daemon-reload, commands). False under
    /// `--root`: files are written and `systemctl --root` enables, but
    /// nothing runs.
    pub live: bool,
}

/// What processing the units did and what went wrong (the rest goes on).
#[derive(Debug, Default, Clone)]
pub struct UnitsOutcome {
    pub changed: Vec<String>,
    pub actions: Vec<String>,
    pub failures: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Systemd {
    fn systemctl(&self) -> Command {
        let mut c = Command::new("systemctl");
        if !self.live {
            c.arg(format!("--root={}", self.root.display()));
        }
        c
    }

    /// `systemctl [--root=R] [--runtime] enable -- NAME` (after `--`, a
    /// name is never an option, `-.mount` say).
    pub fn enable_command(&self, name: &str, runtime: bool) -> Command {
        let mut c = self.systemctl();
        if runtime {
            c.arg("--runtime");
        }
        c.args(["enable", "--", name]);
        c
    }

    pub fn enable(&self, name: &str, runtime: bool) -> Result<()> {
        run(&mut self.enable_command(name, runtime)).map(|_| ())
    }

    pub fn daemon_reload(&self) -> Result<()> {
        run(self.systemctl().arg("daemon-reload")).map(|_| ())
    }

    /// `systemctl --no-block COMMAND NAME`: queued, not waited for, so that
    /// a unit ordered after cairn-cloudinit.service cannot deadlock it
    /// (coreos-cloudinit's D-Bus calls did not wait either).
    pub fn command(&self, command: &str, name: &str) -> Result<()> {
        run(&mut self.unit_command(command, name)?).map(|_| ())
    }

    /// `systemctl --no-block COMMAND -- NAME` for one of [`COMMANDS`].
    pub fn unit_command(&self, command: &str, name: &str) -> Result<Command> {
        if !COMMANDS.contains(&command) {
            bail!(
                "unit {name}: unsupported command {command:?} (expected one of {})",
                COMMANDS.join(", ")
            );
        }
        let mut c = self.systemctl();
        c.args(["--no-block", command, "--", name]);
        Ok(c)
    }

    /// Writes, masks, enables, reloads and runs commands for `units`, in
    /// coreos-cloudinit's order. A failing unit is recorded and the others
    /// go on.
    pub fn process(&self, units: &[UnitSpec]) -> UnitsOutcome {
        let mut out = UnitsOutcome::default();
        let mut reload = false;
        let mut restart_networkd = false;
        let mut commands: Vec<(&str, &str)> = Vec::new();
        for u in units {
            match self.place(u, &mut out) {
                Ok(changed) => reload |= changed,
                Err(e) => {
                    let msg = format!("unit {}: {e:#}", u.name);
                    tracing::error!("{msg}");
                    out.failures.push(msg);
                    continue;
                }
            }
            if is_network_unit(&u.name) {
                restart_networkd |= u.content.is_some() || !u.drop_ins.is_empty() || u.mask;
                if u.command.is_some() {
                    tracing::info!(
                        "unit {}: network unit, systemd-networkd is restarted instead of {:?}",
                        u.name,
                        u.command
                    );
                }
            } else if let Some(c) = u.command.as_deref() {
                commands.push((c, &u.name));
            }
        }
        if reload {
            if self.live {
                match self.daemon_reload() {
                    Ok(()) => out.actions.push("daemon-reload".into()),
                    Err(e) => out.failures.push(format!("systemctl daemon-reload: {e:#}")),
                }
            } else {
                out.actions
                    .push("daemon-reload (skipped under --root)".into());
            }
        }
        if restart_networkd {
            if self.live {
                match self.command("restart", "systemd-networkd.service") {
                    Ok(()) => out.actions.push("restart systemd-networkd.service".into()),
                    Err(e) => out
                        .failures
                        .push(format!("restarting systemd-networkd: {e:#}")),
                }
            } else {
                out.actions
                    .push("restart systemd-networkd.service (skipped under --root)".into());
            }
        }
        for (c, name) in commands {
            if self.live {
                tracing::info!("systemctl {c} {name}");
                match self.command(c, name) {
                    Ok(()) => out.actions.push(format!("{c} {name}")),
                    Err(e) => {
                        let msg = format!("unit {name}: {c}: {e:#}");
                        tracing::error!("{msg}");
                        out.failures.push(msg);
                    }
                }
            } else if !COMMANDS.contains(&c) {
                let msg = format!("unit {name}: unsupported command {c:?}");
                tracing::error!("{msg}");
                out.failures.push(msg);
            } else if !unit_exists(&self.root, name) {
                let msg = format!("unit {name}: {c}: no such unit in {}", self.root.display());
                tracing::error!("{msg}");
                out.failures.push(msg);
            } else {
                tracing::info!("would run systemctl {c} {name} (not under --root)");
                out.actions
                    .push(format!("{c} {name} (skipped under --root)"));
            }
        }
        out
    }

    /// Files, mask and enable of one unit; true when a file changed.
    fn place(&self, u: &UnitSpec, out: &mut UnitsOutcome) -> Result<bool> {
        check_name("unit", &u.name)?;
        let mut changed = false;
        let mut note = |w: Written, shown: &str, out: &mut UnitsOutcome| {
            if w == Written::Changed {
                changed = true;
                tracing::info!("wrote {shown}");
                out.changed.push(shown.to_string());
            }
        };
        let dir = unit_dir_on_target(&u.name, u.runtime);
        let dest = format!("{dir}/{}", u.name);
        if let Some(content) = u.content.as_deref().filter(|c| !c.is_empty()) {
            let w = fsutil::write_atomic(&self.root, &dest, content.as_bytes(), 0o644, None)
                .with_context(|| format!("writing {dest}"))?;
            note(w, &dest, out);
        }
        for (name, content) in &u.drop_ins {
            check_name("drop-in", name)?;
            if content.is_empty() {
                continue;
            }
            let dropin = format!("{dir}/{}.d/{name}", u.name);
            let w = fsutil::write_atomic(&self.root, &dropin, content.as_bytes(), 0o644, None)
                .with_context(|| format!("writing {dropin}"))?;
            note(w, &dropin, out);
        }
        if u.mask {
            let w = fsutil::symlink_force(&self.root, &dest, "/dev/null")?;
            note(w, &dest, out);
        } else if u.runtime && null_or_empty(&destination(&self.root, &u.name, u.runtime)) {
            fsutil::remove_file(&self.root, &dest).with_context(|| format!("unmasking {dest}"))?;
            note(Written::Changed, &dest, out);
        }
        if u.enable {
            if is_network_unit(&u.name) {
                tracing::info!("unit {}: network unit, nothing to enable", u.name);
            } else {
                self.enable(&u.name, u.runtime)
                    .with_context(|| format!("enabling {}", u.name))?;
                tracing::info!("enabled {}", u.name);
                out.actions.push(format!("enable {}", u.name));
                changed = true;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn unit_names_go_after_double_dash() {
        let args = |c: Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let live = Systemd {
            root: PathBuf::from("/"),
            live: true,
        };
        assert_eq!(
            args(live.enable_command("-.mount", false)),
            ["enable", "--", "-.mount"]
        );
        assert_eq!(
            args(live.unit_command("restart", "--force.service").unwrap()),
            ["--no-block", "restart", "--", "--force.service"]
        );
        let under = Systemd {
            root: PathBuf::from("/r"),
            live: false,
        };
        assert_eq!(
            args(under.enable_command("-x.service", true)),
            ["--root=/r", "--runtime", "enable", "--", "-x.service"]
        );
        assert!(live.unit_command("kill", "a.service").is_err());
    }

    #[test]
    fn placement_table() {
        let r = Path::new("/R");
        // (name, runtime, destination, drop-in foo.conf destination)
        let cases = [
            (
                "etcd.service",
                false,
                "/R/etc/systemd/system/etcd.service",
                "/R/etc/systemd/system/etcd.service.d/foo.conf",
            ),
            (
                "etcd.service",
                true,
                "/R/run/systemd/system/etcd.service",
                "/R/run/systemd/system/etcd.service.d/foo.conf",
            ),
            (
                "x.timer",
                false,
                "/R/etc/systemd/system/x.timer",
                "/R/etc/systemd/system/x.timer.d/foo.conf",
            ),
            (
                "static.network",
                false,
                "/R/etc/systemd/network/static.network",
                "/R/etc/systemd/network/static.network.d/foo.conf",
            ),
            (
                "br0.netdev",
                true,
                "/R/run/systemd/network/br0.netdev",
                "/R/run/systemd/network/br0.netdev.d/foo.conf",
            ),
            (
                "10-eth.link",
                false,
                "/R/etc/systemd/network/10-eth.link",
                "/R/etc/systemd/network/10-eth.link.d/foo.conf",
            ),
            (
                "net.target",
                false,
                "/R/etc/systemd/system/net.target",
                "/R/etc/systemd/system/net.target.d/foo.conf",
            ),
        ];
        for (name, runtime, dest, dropin) in cases {
            assert_eq!(
                destination(r, name, runtime),
                Path::new(dest),
                "{name} runtime={runtime}"
            );
            assert_eq!(
                dropin_destination(r, name, runtime, "foo.conf"),
                Path::new(dropin),
                "{name}"
            );
        }
        for bad in ["", "a/b.service", "..", "."] {
            assert!(check_name("unit", bad).is_err(), "{bad:?}");
        }
    }

    fn spec(name: &str) -> UnitSpec {
        UnitSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn process_writes_masks_and_reports_missing_units_under_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        fs::write(
            root.join("usr/lib/systemd/system/etcd.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        fs::write(
            root.join("usr/lib/systemd/system/getty@.service"),
            "[Service]\n",
        )
        .unwrap();
        let sd = Systemd {
            root: root.to_path_buf(),
            live: false,
        };
        let units = vec![
            UnitSpec {
                content: Some("[Service]\nExecStart=/bin/app\n".into()),
                command: Some("start".into()),
                ..spec("app.service")
            },
            UnitSpec {
                runtime: true,
                drop_ins: vec![("20-x.conf".into(), "[Service]\nEnvironment=A=1\n".into())],
                command: Some("restart".into()),
                ..spec("etcd.service")
            },
            UnitSpec {
                mask: true,
                ..spec("masked.service")
            },
            UnitSpec {
                content: Some("[Match]\nName=eth0\n".into()),
                command: Some("start".into()),
                ..spec("eth0.network")
            },
            UnitSpec {
                command: Some("start".into()),
                ..spec("fleet.service")
            },
            UnitSpec {
                command: Some("start".into()),
                ..spec("getty@tty2.service")
            },
            UnitSpec {
                command: Some("explode".into()),
                ..spec("etcd.service")
            },
            spec("bad/name.service"),
        ];
        let out = sd.process(&units);
        assert_eq!(
            fs::read_to_string(root.join("etc/systemd/system/app.service")).unwrap(),
            "[Service]\nExecStart=/bin/app\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("run/systemd/system/etcd.service.d/20-x.conf")).unwrap(),
            "[Service]\nEnvironment=A=1\n"
        );
        assert_eq!(
            fs::read_link(root.join("etc/systemd/system/masked.service")).unwrap(),
            Path::new("/dev/null")
        );
        assert!(root.join("etc/systemd/network/eth0.network").is_file());
        assert_eq!(
            out.actions,
            [
                "daemon-reload (skipped under --root)",
                "restart systemd-networkd.service (skipped under --root)",
                "start app.service (skipped under --root)",
                "restart etcd.service (skipped under --root)",
                "start getty@tty2.service (skipped under --root)",
            ]
        );
        let f = out.failures.join("\n");
        assert!(
            f.contains("fleet.service") && f.contains("no such unit"),
            "{f}"
        );
        assert!(f.contains("explode"), "{f}");
        assert!(f.contains("bad/name.service"), "{f}");
        assert_eq!(out.failures.len(), 3, "{f}");
        // a runtime unit without mask unmasks an earlier runtime mask
        sd.process(&[UnitSpec {
            runtime: true,
            mask: true,
            ..spec("m.service")
        }]);
        assert!(fs::symlink_metadata(root.join("run/systemd/system/m.service")).is_ok());
        sd.process(&[UnitSpec {
            runtime: true,
            ..spec("m.service")
        }]);
        assert!(fs::symlink_metadata(root.join("run/systemd/system/m.service")).is_err());
        // a second run changes no file
        let again = sd.process(&units[..4]);
        assert!(again.changed.is_empty(), "{:?}", again.changed);
    }
}
