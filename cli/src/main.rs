//! The `cairn` command: parses arguments, dispatches to the libraries
//! (`cairn_builder` for build, inspect and validate, `cairn_pxe` for serve,
//! `cairn_qemu` for vm) and formats their results. Errors are printed
//! once, with their whole chain of causes.

mod vm_drive;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::MultiProgress;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Build, serve and boot minimal immutable Linux images"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a definition (images/*.yaml).
    Build {
        /// The image definition.
        definition: PathBuf,
        /// Output folder.
        #[arg(short, long)]
        out: PathBuf,
        /// Debian mirror base URL (else the definition's, else this machine's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// Package cache (default $XDG_CACHE_HOME/cairn).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Re-resolve packages and rewrite the lock file next to the definition.
        #[arg(long)]
        update_lock: bool,
        /// Parallel downloads.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// Retries of a download that failed for a reason that may pass
        /// (DNS, connection refused or reset, timeout, HTTP 5xx), waiting
        /// 1, 2, 4, 8, 16 s between tries; never for a 404 or a wrong hash.
        #[arg(long, value_name = "N", default_value_t = 4)]
        retries: u32,
        /// zstd level of the root image (1-22).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=22))]
        zstd_level: u32,
        /// Directory of Debian archive keys (*.asc); default: keys/ next to the definition.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Rebuild even when the output folder is already current.
        #[arg(long)]
        force: bool,
        /// Disk image formats, comma-separated: raw (disk.raw, always
        /// written), qcow2 (disk.qcow2: KVM, OpenStack), vmdk (disk.vmdk,
        /// streamOptimized: VMware, VirtualBox), ova (disk.ova: an OVF
        /// appliance holding the VMDK), vagrant-libvirt (disk.box: a Vagrant
        /// box for the libvirt provider). Formats no longer asked for are
        /// removed from OUT; a current OUT only gets the missing ones made.
        #[arg(
            long,
            value_name = "LIST",
            default_value = "raw",
            value_parser = cairn_builder::disk_formats::Formats::parse
        )]
        format: cairn_builder::disk_formats::Formats,
        /// Write a signed update bundle into OUT/update/ with this secret key
        /// (update.key from `cairn keygen`). Without it no bundle is written
        /// and a previous OUT/update/ is removed.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Channel of the update bundle (default: the definition's
        /// update.channel, else "stable").
        #[arg(long, value_name = "NAME", requires = "sign")]
        channel: Option<String>,
        /// How long the bundle's manifest stays valid, e.g. 30d, 12h, 2w.
        #[arg(long, value_name = "DURATION", default_value = "30d", requires = "sign", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
    },
    /// Make an ed25519 key pair for signing update bundles: DIR/update.key
    /// (secret, mode 0600) and DIR/update.pub (for an image's update.keys).
    /// Never overwrites a key.
    Keygen {
        /// Folder to write the keys into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Boot an image in QEMU with its serial console on this terminal
    /// (Ctrl-a x quits). The image is not changed unless --persist. A
    /// config drive gives `core` your SSH keys and, unless --cloud-config
    /// or --no-autologin, logs `core` in on the serial console for this
    /// boot; `ready: ssh -p PORT core@127.0.0.1` is printed to stderr once
    /// the guest's SSH answers.
    Vm {
        /// An output folder (boots its disk.raw) or a disk image.
        target: PathBuf,
        /// Memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Networking: `user` (QEMU user networking, SSH forwarded) or `none`.
        #[arg(long, default_value = "user", value_parser = ["user", "none"])]
        net: String,
        /// Host port on 127.0.0.1 forwarded to the guest's SSH port (default: a free one).
        #[arg(long)]
        ssh_port: Option<u16>,
        /// UEFI firmware (OVMF); the default. disk.raw boots only under UEFI.
        #[arg(long, conflicts_with = "bios")]
        uefi: bool,
        /// Legacy BIOS firmware (SeaBIOS).
        #[arg(long)]
        bios: bool,
        /// Write changes into the image instead of a throwaway overlay.
        #[arg(long)]
        persist: bool,
        /// Authorize this SSH public key for `core` (repeatable; sent as
        /// config-drive metadata, applied by cairn-cloudinit). Default:
        /// every ~/.ssh/id_*.pub there is.
        #[arg(long, value_name = "FILE", conflicts_with = "no_ssh_key")]
        ssh_key: Vec<PathBuf>,
        /// Send no SSH key.
        #[arg(long)]
        no_ssh_key: bool,
        /// Boot with this cloud-config as the config drive's user-data,
        /// validated first as `cairn validate` does (any error refuses
        /// it). It replaces cairn vm's own cloud-config, so there is no
        /// console autologin then: your config owns the console.
        #[arg(long, value_name = "FILE")]
        cloud_config: Option<PathBuf>,
        /// No autologin of `core` on the serial console (the login prompt
        /// then wants a password, which `core` has none of).
        #[arg(long)]
        no_autologin: bool,
        /// The guest's hostname (config-drive metadata; a hostname in
        /// --cloud-config wins).
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
    },
    /// Netboot machines: TFTP and HTTP (iPXE scripts, image assets,
    /// per-machine cloud-config) from an inventory of profiles and groups.
    Serve(ServeCmd),
    /// Check cloud-config files as `coreos-cloudinit -validate` does: one
    /// line per finding (`FILE:LINE: error|warning|info: MESSAGE`); exits
    /// non-zero when there is any finding.
    Validate {
        /// cloud-config files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the findings as JSON, `[{"kind", "message", "line"}]` (one file only).
        #[arg(long)]
        json: bool,
    },
    /// Show what a build produced: the manifest of an output folder, and the
    /// partition table, ESP contents and boot entries of a disk image.
    Inspect {
        /// An output folder (with manifest.json and disk.raw) or a disk image.
        path: PathBuf,
    },
}

fn inspect(path: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    let mut manifest_verity = None;
    let disk = if path.is_dir() {
        let m = path.join(cairn_formats::image_dir::MANIFEST);
        let text =
            std::fs::read_to_string(&m).with_context(|| format!("reading {}", m.display()))?;
        let man: cairn_builder::pipeline::Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", m.display()))?;
        println!(
            "{} {} ({} packages from {}, kernel {}, SOURCE_DATE_EPOCH {})",
            man.name,
            man.version,
            man.packages.len(),
            man.suite,
            man.kernel_release,
            man.source_date_epoch
        );
        for a in &man.artifacts {
            println!("  {:<16} {:>12} bytes  sha256 {}", a.name, a.size, a.sha256);
        }
        match &man.verity {
            Some(r) => {
                println!(
                    "  dm-verity: root hash {}, salt {}, {} data blocks, tree at byte {} of rootfs.squashfs",
                    r.root_hash, r.salt, r.data_blocks, r.hash_offset
                );
                manifest_verity = Some((
                    man.version.clone(),
                    r.to_verity()
                        .with_context(|| format!("{}: verity", m.display()))?,
                ));
            }
            None => println!("  dm-verity: none (verity: false, or built before cairn had it)"),
        }
        println!();
        path.join(cairn_formats::image_dir::DISK)
    } else {
        path.to_path_buf()
    };
    let info =
        cairn_disk::inspect(&disk).with_context(|| format!("inspecting {}", disk.display()))?;
    print!("{info}");
    if let Some((version, v)) = manifest_verity {
        println!();
        println!("{}", manifest_agreement(&info, &version, &v));
    }
    Ok(())
}

/// Whether the disk's boot entries and slots agree with the root hash in
/// manifest.json: the entries of the manifest's version must name it and
/// their slot's tree must give it.
fn manifest_agreement(
    info: &cairn_disk::DiskInfo,
    version: &str,
    v: &cairn_formats::verity::Verity,
) -> String {
    let mut lines = vec![format!(
        "manifest.json's root hash ({version}): {}",
        v.root_hash_hex()
    )];
    let esp_version = |name: &str| {
        info.esp.as_ref().and_then(|e| {
            e.boot_entries
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, text)| {
                    text.lines()
                        .find_map(|l| l.trim_start().strip_prefix("version "))
                        .map(|s| s.trim().to_string())
                })
        })
    };
    let mut found = false;
    for e in info.entry_verity() {
        if esp_version(&e.name).as_deref() != Some(version) {
            continue;
        }
        found = true;
        let verdict = match (&e.verity, e.slot.and_then(|s| info.slot(s))) {
            (Some(Ok(ev)), Some(slot)) if ev == v && slot.verity == Some(Ok(*v)) => {
                format!("agrees (entry and slot {}'s tree)", slot.slot)
            }
            (Some(Ok(ev)), _) if ev != v => "DISAGREES: the entry names another root hash".into(),
            (Some(Ok(_)), Some(slot)) => format!(
                "DISAGREES: slot {}'s tree gives another root hash",
                slot.slot
            ),
            (Some(Ok(_)), None) => "DISAGREES: the entry boots no slot of this disk".into(),
            (Some(Err(err)), _) => format!("DISAGREES: {err}"),
            (None, _) => "DISAGREES: the entry has no cairn.verity=".into(),
        };
        lines.push(format!("  {}: {verdict}", e.name));
    }
    if !found {
        lines.push(format!(
            "  no boot entry of version {version} on the ESP (updated since?)"
        ));
    }
    lines.join("\n")
}

/// `cairn validate`: true when no file has any finding.
fn validate(files: &[PathBuf], json: bool) -> Result<bool> {
    use anyhow::Context;
    use std::io::Read;
    if json && files.len() != 1 {
        anyhow::bail!("--json takes exactly one file ({} given)", files.len());
    }
    let mut clean = true;
    for f in files {
        let (name, data) = if f.as_os_str() == "-" {
            let mut t = Vec::new();
            std::io::stdin()
                .read_to_end(&mut t)
                .context("reading standard input")?;
            ("-".to_string(), t)
        } else {
            let t = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            (f.display().to_string(), t)
        };
        // gzip-compressed user-data is accepted, as coreos-cloudinit does
        let data = cairn_cloudconfig::decompress_user_data(&data)
            .with_context(|| format!("{name}: decompressing gzip user-data"))?;
        let text = std::str::from_utf8(&data)
            .with_context(|| format!("{name}: user-data is not UTF-8 text"))?;
        let report = cairn_cloudconfig::validate(text);
        clean &= report.is_empty();
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", cairn_cloudconfig::format_findings(&name, &report));
        }
    }
    Ok(clean)
}

/// `cairn serve`: the server's arguments, and `--explain`, which answers one question and exits.
#[derive(Debug, clap::Args)]
struct ServeCmd {
    #[command(flatten)]
    serve: cairn_pxe::ServeArgs,
    /// Do not serve: say why the machine with this MAC boots what it boots (every group's
    /// selectors, the winner, profile, image, cloud-config, update channel, rollout, its
    /// lifecycle record in --state-dir, its next netboot), then exit. Opens no socket.
    #[arg(long, value_name = "MAC")]
    explain: Option<String>,
    /// With --explain: another fact the machine would send (uuid, hostname, serial or a label
    /// its groups select on), as KEY=VALUE; repeatable.
    #[arg(long = "fact", value_name = "KEY=VALUE", requires = "explain")]
    facts: Vec<String>,
}

fn run(cli: Cli, progress: MultiProgress) -> Result<ExitCode> {
    use anyhow::Context;
    match cli.command {
        Command::Validate { files, json } => Ok(if validate(&files, json)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Serve(ServeCmd {
            serve,
            explain: Some(mac),
            facts,
        }) => {
            // no socket: the inventory and the records read, the explanation printed
            if let Some(store) = &serve.store {
                anyhow::bail!(
                    "--explain with --store {store}: the records are in etcd, which --explain does not read; ask the running server instead (GET /explain?mac={mac} on its --admin-addr listener)"
                );
            }
            let public_url = serve
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", serve.http_addr));
            let e = cairn_pxe::explain::explain_offline(
                &serve.config,
                &serve.state_dir,
                &public_url,
                &mac,
                &facts,
            )?;
            print!("{}", e.to_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(ServeCmd { serve, .. }) => cairn_pxe::run(serve).map(|()| ExitCode::SUCCESS),
        Command::Inspect { path } => inspect(&path).map(|()| ExitCode::SUCCESS),
        Command::Keygen { out } => {
            let k = cairn_formats::channel::keygen(&out)
                .with_context(|| format!("making an update key pair in {}", out.display()))?;
            println!(
                "wrote {} (secret, keep it safe) and {} (key id {}): list the .pub file under update.keys in an image definition, sign with `cairn build --sign {}`",
                k.secret.display(),
                k.public.display(),
                k.key_id,
                k.secret.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Vm {
            target,
            memory,
            cpus,
            net,
            ssh_port,
            uefi: _,
            bios,
            persist,
            ssh_key,
            no_ssh_key,
            cloud_config,
            no_autologin,
            hostname,
        } => {
            let mut o = cairn_qemu::InteractiveOptions::new(target);
            o.memory_mib = memory;
            o.cpus = cpus;
            o.net = net == "user";
            o.ssh_port = ssh_port;
            o.persist = persist;
            if bios {
                o.firmware = cairn_qemu::Firmware::Bios;
            }
            // a wrong folder is the first thing to hear about
            cairn_qemu::interactive::resolve_disk(&o.target)?;
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from);
            let key_files = if no_ssh_key {
                Vec::new()
            } else if ssh_key.is_empty() {
                home.as_deref()
                    .map(vm_drive::default_key_files)
                    .unwrap_or_default()
            } else {
                ssh_key
            };
            let keys = vm_drive::read_keys(&key_files)?;
            if let Some(h) = &hostname {
                vm_drive::check_hostname(h)?;
            }
            let user_config = match &cloud_config {
                Some(p) => {
                    let (bytes, findings) = vm_drive::read_cloud_config(p)?;
                    eprint!("{findings}");
                    Some(bytes)
                }
                None => None,
            };
            if keys.is_empty() && !no_ssh_key && cloud_config.is_none() && o.net {
                tracing::warn!(
                    "no SSH key (no ~/.ssh/id_*.pub; --ssh-key FILE): ssh as core will not get in"
                );
            }
            let autologin = cloud_config.is_none() && !no_autologin;
            let seed = vm_drive::Seed::new(&keys, hostname.as_deref(), user_config, autologin);
            tracing::info!(
                "config drive: {} SSH key(s) for core{}{}",
                keys.len(),
                if autologin {
                    ", autologin of core on the serial console"
                } else {
                    ""
                },
                cloud_config
                    .as_ref()
                    .map(|p| format!(", user-data {}", p.display()))
                    .unwrap_or_default()
            );
            // beside the VM directories, gone when cairn vm ends
            let parent = std::env::var_os(cairn_qemu::vm::VM_DIR_ENV)
                .map_or_else(std::env::temp_dir, PathBuf::from);
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let drive_dir = tempfile::Builder::new()
                .prefix("cairn-vm-drive-")
                .tempdir_in(&parent)
                .with_context(|| format!("creating a directory in {}", parent.display()))?;
            if !seed.is_empty() {
                let drive = drive_dir.path().join("config-2.img");
                seed.write(&drive)
                    .with_context(|| format!("writing the config drive {}", drive.display()))?;
                o.config_drive = Some(drive);
            }
            o.ssh_identity = vm_drive::identity_hint(&key_files, home.as_deref());
            let status = cairn_qemu::run_interactive(&o)?;
            if !status.success() {
                anyhow::bail!("QEMU exited with {status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            definition,
            out,
            mirror,
            cache,
            update_lock,
            jobs,
            retries,
            zstd_level,
            keys,
            force,
            format,
            sign,
            channel,
            valid_for,
        } => {
            let opts = cairn_builder::pipeline::BuildOptions {
                definition,
                out,
                mirror,
                cache,
                update_lock,
                jobs,
                zstd_level,
                sources_root: PathBuf::from("/"),
                keys,
                progress,
                force,
                retry: cairn_builder::fetch::Retry::with_retries(retries),
            };
            let sign = sign.map(|key| cairn_builder::pipeline::SignOptions {
                key,
                channel,
                valid_for,
            });
            let s = cairn_builder::pipeline::build_with(&opts, &format, sign.as_ref())?;
            let root = &s.manifest.artifacts[0];
            let formats_lines = |s: &cairn_builder::pipeline::BuildSummary| {
                for name in &s.formats_made {
                    if let Some(a) = s.manifest.artifacts.iter().find(|a| &a.name == name) {
                        println!(
                            "wrote {} ({:.1} MiB, sha256 {})",
                            s.out.join(name).display(),
                            a.size as f64 / 1048576.0,
                            a.sha256
                        );
                    }
                }
            };
            let bundle_line = |s: &cairn_builder::pipeline::BuildSummary| {
                if let Some(b) = &s.bundle {
                    println!(
                        "wrote update bundle {} ({} {}, channel {}, signed by key {}, expires {})",
                        b.dir.display(),
                        b.manifest.name,
                        b.manifest.version,
                        b.manifest.channel,
                        b.key_id,
                        b.manifest.expires
                    );
                }
            };
            if s.up_to_date {
                println!(
                    "{} is up to date ({} {}, sha256 {}); --force rebuilds",
                    s.out.display(),
                    s.manifest.name,
                    s.manifest.version,
                    root.sha256
                );
                formats_lines(&s);
                bundle_line(&s);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "built {} {}: {} packages, {} entries, {:.1} MiB of files -> {} ({:.1} MiB, sha256 {})",
                s.manifest.name,
                s.manifest.version,
                s.manifest.packages.len(),
                s.tree_entries,
                s.tree_bytes as f64 / 1048576.0,
                s.out.join(&root.name).display(),
                root.size as f64 / 1048576.0,
                root.sha256
            );
            formats_lines(&s);
            if s.lock_written {
                println!("wrote {}", s.lock_path.display());
            }
            bundle_line(&s);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // a server says where it listens and what it serves; a command that
    // ends speaks up only about trouble unless asked (-v)
    let server = matches!(&cli.command, Command::Serve(s) if s.explain.is_none());
    let level = match cli.verbose {
        0 if !server => "warn",
        0 | 1 => "info",
        _ => "debug",
    };
    let progress = MultiProgress::new();
    let writer = {
        let p = progress.clone();
        move || LogWriter(p.clone())
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(writer)
        // colour only for a person at a terminal (log lines go to stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(false)
        .init();
    match run(cli, progress) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cairn_formats::report::Chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Log lines go through the progress bars so they do not tear them.
struct LogWriter(MultiProgress);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        let s = s.trim_end_matches('\n');
        if self.0.is_hidden() {
            eprintln!("{s}");
        } else {
            self.0.println(s)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
