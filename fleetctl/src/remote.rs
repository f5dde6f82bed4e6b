//! `status` and `journal`: `systemctl status -l UNIT` and `journalctl
//! --unit UNIT` on the machine that runs the unit, as fleetctl ran them:
//! directly when that machine is this one (`/etc/machine-id`), else over
//! `ssh` to its public IP as `--ssh-username` (through `--tunnel` when
//! given). Commands are run from argument vectors, never through a local
//! shell; the remote shell gets every word single-quoted. The ssh argument
//! vector up to the host ([`ssh_to`]) is `fleetctl ssh`'s too.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use cairn_fleet::model::MachineRecord;

use crate::view::{self, check_machine};
use crate::{unit_name, Ctx};

/// This machine's ID, as systemd and fleet know it.
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";

/// `fleetctl journal`'s options.
#[derive(Debug, Clone)]
pub struct JournalOpts {
    pub lines: u32,
    pub follow: bool,
    pub sudo: bool,
    pub output: String,
    pub ssh_port: u16,
}

/// `fleetctl status UNIT...`: exits with the first failing command's
/// code.
pub async fn status(ctx: &Ctx, args: &[String], ssh_port: u16) -> Result<u8> {
    let reports = view::reports(&ctx.reg)
        .await
        .context("Error retrieving unit")?;
    let mut first = true;
    for arg in crate::expand_args(args).context("Error retrieving unit")? {
        let name = unit_name(&arg).context("Error retrieving unit")?;
        let Some(v) = ctx
            .reg
            .unit(name.as_str())
            .await
            .with_context(|| format!("Error retrieving unit {name}"))?
        else {
            eprintln!("Unit {name} does not exist.");
            return Ok(1);
        };
        let global = v.record.unit().is_ok_and(|u| u.is_global());
        let on: Vec<&str> = reports
            .iter()
            .filter(|r| r.unit == name.as_str())
            .map(|r| r.machine.as_str())
            .collect();
        if on.is_empty() {
            if global {
                eprintln!("Global unit {name} does not appear to be loaded on any machine.");
            } else {
                eprintln!("Unit {name} does not appear to be loaded.");
            }
            return Ok(1);
        }
        for machine in on {
            if !first {
                println!();
            }
            first = false;
            let argv = ["systemctl", "status", "-l", name.as_str()].map(String::from);
            let code = run_on(ctx, machine, &argv, ssh_port, false).await?;
            if code != 0 {
                return Ok(code);
            }
        }
    }
    Ok(0)
}

/// `fleetctl journal UNIT`: exits with journalctl's code.
pub async fn journal(ctx: &Ctx, args: &[String], o: &JournalOpts) -> Result<u8> {
    if args.len() != 1 {
        eprintln!("One unit file must be provided.");
        return Ok(1);
    }
    let name = unit_name(&args[0]).context("Error retrieving unit")?;
    if o.output.is_empty()
        || !o
            .output
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!(
            "Error: --output {:?} is no journalctl output mode",
            o.output
        );
    }
    let Some(v) = ctx
        .reg
        .unit(name.as_str())
        .await
        .with_context(|| format!("Error retrieving unit {name}"))?
    else {
        eprintln!("Unit {name} does not exist.");
        return Ok(1);
    };
    if v.record.unit().is_ok_and(|u| u.is_global()) {
        eprintln!("Unable to retrieve journal of global unit {name}.");
        return Ok(1);
    }
    let reports = view::reports(&ctx.reg)
        .await
        .with_context(|| format!("Error retrieving unit {name}"))?;
    let Some(r) = reports.iter().find(|r| r.unit == name.as_str()) else {
        eprintln!("Unit {name} does not appear to be running.");
        return Ok(1);
    };
    let mut argv: Vec<String> = Vec::new();
    if o.sudo {
        argv.push("sudo".into());
    }
    argv.extend(
        [
            "journalctl",
            "--unit",
            name.as_str(),
            "--no-pager",
            "-n",
            &o.lines.to_string(),
            "--output",
            &o.output,
        ]
        .map(String::from),
    );
    if o.follow {
        argv.push("-f".into());
    }
    run_on(ctx, &r.machine, &argv, o.ssh_port, o.follow).await
}

/// Whether `machine` is this machine.
pub fn is_local(machine: &str) -> bool {
    std::fs::read_to_string(MACHINE_ID_FILE).is_ok_and(|id| id.trim() == machine)
}

/// Runs `argv` on `machine` and returns its exit code.
async fn run_on(ctx: &Ctx, machine: &str, argv: &[String], ssh_port: u16, tty: bool) -> Result<u8> {
    if is_local(machine) {
        tracing::debug!("running {argv:?} here");
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .with_context(|| format!("Error running local command {}", argv[0]))?;
        return Ok(code(status));
    }
    let machines = view::machines(&ctx.reg)
        .await
        .context("Error getting machine IP")?;
    let Some(m) = machines.get(machine) else {
        bail!("Error getting machine IP: machine {machine} is not in the cluster");
    };
    let ssh = ssh_argv(ctx, m, argv, ssh_port, tty)?;
    run_ssh(&ssh, m)
}

fn code(status: std::process::ExitStatus) -> u8 {
    match status.code() {
        Some(c) => u8::try_from(c).unwrap_or(1),
        None => 1,
    }
}

/// ssh's arguments to run `argv` on `m`: options from fleetctl's flags,
/// `--` before the host, and each remote word single-quoted for the
/// remote shell.
pub fn ssh_argv(
    ctx: &Ctx,
    m: &MachineRecord,
    argv: &[String],
    port: u16,
    tty: bool,
) -> Result<Vec<OsString>> {
    let mut a = ssh_to(ctx, m, port, tty, false)?;
    for w in argv {
        let q = shlex::try_quote(w).with_context(|| format!("{w:?} cannot be quoted"))?;
        a.push(q.into_owned().into());
    }
    Ok(a)
}

/// ssh's arguments up to the host: options from fleetctl's flags (`-A`
/// with `forward_agent`), `--`, the machine's public IP.
pub fn ssh_to(
    ctx: &Ctx,
    m: &MachineRecord,
    port: u16,
    tty: bool,
    forward_agent: bool,
) -> Result<Vec<OsString>> {
    check_machine(m).map_err(anyhow::Error::msg)?;
    if m.public_ip.is_empty() {
        bail!(
            "Error getting machine IP: machine {} has no public IP",
            m.id
        );
    }
    let g = &ctx.global;
    let mut a: Vec<OsString> = Vec::new();
    let mut opt = |s: String| {
        a.push("-o".into());
        a.push(s.into());
    };
    if g.strict_host_key_checking {
        let file = match &g.known_hosts_file {
            Some(f) => f.clone(),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".fleetctl/known_hosts"),
        };
        opt("StrictHostKeyChecking=ask".into());
        opt(format!("UserKnownHostsFile={}", file.display()));
    } else {
        opt("StrictHostKeyChecking=no".into());
        opt("UserKnownHostsFile=/dev/null".into());
    }
    if !(g.ssh_timeout.is_finite() && g.ssh_timeout > 0.0) {
        bail!(
            "--ssh-timeout {}: expected a positive number of seconds",
            g.ssh_timeout
        );
    }
    opt(format!("ConnectTimeout={}", g.ssh_timeout.ceil() as u64));
    if g.ssh_username.is_empty() || g.ssh_username.starts_with('-') {
        bail!("--ssh-username {:?}: not a user name", g.ssh_username);
    }
    a.extend(["-l".into(), g.ssh_username.clone().into()]);
    a.extend(["-p".into(), port.to_string().into()]);
    if let Some(t) = g.tunnel.as_deref().filter(|t| !t.is_empty()) {
        if t.starts_with('-') || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--tunnel {t:?}: expected HOST[:PORT]");
        }
        a.extend(["-J".into(), format!("{}@{t}", g.ssh_username).into()]);
    }
    if forward_agent {
        a.push("-A".into());
    }
    if tty {
        a.push("-t".into());
    }
    a.push("--".into());
    a.push(m.public_ip.clone().into());
    Ok(a)
}

/// Runs `ssh` with `args` (stdio inherited) and returns its exit code,
/// saying so when ssh itself failed (255).
pub fn run_ssh(args: &[OsString], m: &MachineRecord) -> Result<u8> {
    tracing::debug!("running ssh {args:?}");
    let status = Command::new("ssh")
        .args(args)
        .status()
        .context("Unable to SSH to remote host: running ssh")?;
    if status.code() == Some(255) {
        eprintln!(
            "Unable to SSH to remote host {} (machine {}): ssh exited with 255",
            m.public_ip, m.id
        );
    }
    Ok(code(status))
}
