//! The update flow on a running machine: find out what runs (slot from the
//! command line, image name and version from os-release), notice a reboot
//! into (or a fall-back from) a staged slot, check the channel, verify the
//! manifest, download the parts with resume, then write the inactive slot
//! (its old entry removed first), the kernel and initrd on the ESP, and the
//! slot's counted boot entry last. Never touches the running slot or its
//! entry. All paths come from [`Paths`], so tests run it on plain files.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_formats::channel::manifest::{self, Expect, Manifest, PartKind};
use cairn_formats::channel::{rollout, version, ChannelError, TrustedKeys};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::entries::{self, EntryFile};
use crate::error::{Result, UpdateError};
use crate::fetch;
use crate::fsutil::{self, fsync_dir};
use crate::slot::{self, Slot};
use crate::state::{self, Event, Phase, State};

/// Boot tries of a new entry (`+3`).
pub const TRIES: u32 = 3;

/// Where the slots' block devices are.
#[derive(Debug, Clone)]
pub enum SlotDevices {
    /// Look up `cairn-a`/`cairn-b` in this `/sys/class/block`.
    ByLabel(PathBuf),
    /// Fixed paths (tests, or a system with its own naming).
    Fixed { a: PathBuf, b: PathBuf },
}

/// Every path the agent reads or writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The ESP's mount point (`/efi`).
    pub esp: PathBuf,
    /// The agent's folder on the state partition
    /// (`/run/cairn/state/update`): `state.json` and `download/`.
    pub state_dir: PathBuf,
    pub cmdline: PathBuf,
    pub os_release: PathBuf,
    pub boot_id: PathBuf,
    pub config: PathBuf,
    /// A public key file or a folder of `*.pub` files.
    pub trusted_keys: PathBuf,
    pub slots: SlotDevices,
    /// `/sys/firmware/efi/efivars`.
    pub efivars: PathBuf,
    /// `/etc/machine-id`: its rollout seed is sent with manifest requests.
    pub machine_id: PathBuf,
    /// `/proc/net/route`: the interface of the default route, whose MAC
    /// address names a machine `cairn serve` did not install.
    pub proc_net_route: PathBuf,
    /// `/sys/class/net`: the interfaces' MAC addresses.
    pub sys_class_net: PathBuf,
}

impl Paths {
    /// The paths of a cairn machine.
    pub fn system() -> Paths {
        Paths {
            esp: "/efi".into(),
            state_dir: "/run/cairn/state/update".into(),
            cmdline: "/proc/cmdline".into(),
            os_release: "/usr/lib/os-release".into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
            config: "/etc/cairn/update.conf".into(),
            trusted_keys: "/usr/lib/cairn/update-keys".into(),
            slots: SlotDevices::ByLabel("/sys/class/block".into()),
            efivars: "/sys/firmware/efi/efivars".into(),
            machine_id: "/etc/machine-id".into(),
            proc_net_route: "/proc/net/route".into(),
            sys_class_net: "/sys/class/net".into(),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn download_dir(&self) -> PathBuf {
        self.state_dir.join("download")
    }

    /// The block device (or file) of `slot`.
    pub fn slot_device(&self, s: Slot) -> Result<PathBuf> {
        match &self.slots {
            SlotDevices::ByLabel(sys) => {
                // the disk the running root came from (/init took it from
                // the disk the boot loader named)
                let disk = std::fs::read_to_string("/proc/self/mountinfo")
                    .ok()
                    .and_then(|m| slot::root_disk(&m, &sys.join("../../dev/block")));
                slot::find_partition(sys, s.label(), disk.as_deref())
            }
            SlotDevices::Fixed { a, b } => Ok(match s {
                Slot::A => a.clone(),
                Slot::B => b.clone(),
            }),
        }
    }
}

/// What runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub slot: Slot,
    pub name: String,
    pub version: String,
    pub boot_id: String,
}

/// Reads an os-release style `KEY=value` file.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim();
        Some(
            v.strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v)
                .replace("\\\"", "\"")
                .replace("\\\\", "\\"),
        )
    })
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing newer on the channel (the manifest's version is not newer).
    UpToDate { running: String, offered: String },
    /// A trial is in progress; nothing is written until it is decided.
    TrialInProgress { version: String, slot: Slot },
    /// This version is already staged in `slot`.
    AlreadyStaged { version: String, slot: Slot },
    /// Newly staged.
    Staged {
        version: String,
        slot: Slot,
        entry: String,
    },
}

impl Outcome {
    /// Whether a staged update waits for a reboot.
    pub fn wants_reboot(&self) -> bool {
        matches!(self, Outcome::Staged { .. } | Outcome::AlreadyStaged { .. })
    }
}

/// The agent.
pub struct Agent {
    pub paths: Paths,
    pub config: Config,
    pub keys: TrustedKeys,
    pub http: ureq::Agent,
    /// How transient download failures are retried.
    pub retry: fetch::Retry,
    /// Test hook: abort the process (as a power cut would stop it) after
    /// this many bytes were written to the slot and the ESP.
    pub abort_after: Option<u64>,
    /// Test hook: called with the slot's device after the slot was written
    /// and read back, before its dm-verity check (a test changes the slot
    /// there, as a bad disk or a person with the disk could).
    pub after_slot_write: Option<fn(&Path)>,
    written: AtomicU64,
}

const CHUNK: usize = 1 << 20;

impl Agent {
    /// An agent with the configuration and keys read from `paths`.
    pub fn new(paths: Paths) -> Result<Agent> {
        let config = Config::load(&paths.config)?;
        let keys = TrustedKeys::load(&paths.trusted_keys)?;
        Ok(Agent::with(paths, config, keys))
    }

    pub fn with(paths: Paths, config: Config, keys: TrustedKeys) -> Agent {
        Agent {
            paths,
            config,
            keys,
            http: fetch::http_agent(),
            retry: fetch::Retry::default(),
            abort_after: None,
            after_slot_write: None,
            written: AtomicU64::new(0),
        }
    }

    /// Slot, image name, version and boot id of the running system.
    pub fn running(&self) -> Result<Running> {
        let slot = slot::running_slot(&self.paths.cmdline)?;
        let p = &self.paths.os_release;
        let text = fs::read_to_string(p).map_err(UpdateError::io(p))?;
        let get = |k: &str| {
            os_release_value(&text, k)
                .ok_or_else(|| UpdateError::Refused(format!("{}: no {k}= line", p.display())))
        };
        let boot_id = fs::read_to_string(&self.paths.boot_id)
            .map_err(UpdateError::io(&self.paths.boot_id))?
            .trim()
            .to_string();
        Ok(Running {
            slot,
            name: get("IMAGE_ID")?,
            version: get("IMAGE_VERSION")?,
            boot_id,
        })
    }

    pub fn state(&self) -> Result<State> {
        State::load(&self.paths.state_file())
    }

    fn event(&self, e: Event) -> Result<State> {
        state::transition(&self.paths.state_file(), e)
    }

    /// Records what this boot means for a staged or trial update
    /// (trial, or rolled back and why).
    pub fn observe_boot(&self) -> Result<(Running, State)> {
        let r = self.running()?;
        let entry_note = match self.state()?.phase {
            Phase::Staged { slot, .. } | Phase::Trial { slot, .. } if slot != r.slot => {
                Some(entry_note(&self.paths.esp, slot))
            }
            _ => None,
        };
        let s = self.event(Event::Booted {
            running: r.slot,
            boot_id: r.boot_id.clone(),
            entry_note,
        })?;
        if let Phase::RolledBack {
            version, reason, ..
        } = &s.phase
        {
            tracing::warn!("update to {version} rolled back: {reason}");
        }
        Ok((r, s))
    }

    /// What every channel request says about this machine, so that `cairn serve` places it in a
    /// rollout's waves the same way for the manifest and for each part: its rollout seed (from
    /// the machine id) and the MAC address the server knows it by ([`Agent::server_identity`]).
    pub fn channel_headers(&self) -> Vec<(&'static str, String)> {
        let mut h: Vec<(&'static str, String)> = fs::read_to_string(&self.paths.machine_id)
            .ok()
            .filter(|id| !id.trim().is_empty())
            .map(|id| (rollout::SEED_HEADER, rollout::machine_seed(&id).to_string()))
            .into_iter()
            .collect();
        if let Some(id) = self.server_identity() {
            h.push((rollout::MACHINE_HEADER, id.mac));
        }
        h
    }

    /// The `cairn serve` this machine reports to and the MAC address it is known there by: on
    /// a machine the server installed, the installer's hand-off on the ESP; on any other (a
    /// disk written by other means, a cloud image) the update server (`SERVER=`, cloud-config
    /// `coreos.update.server`) and the MAC address of the interface with the IPv4 default
    /// route. `None` when neither is known; a server that is not a `cairn serve` refuses the
    /// reports, which costs one short request per boot.
    pub fn server_identity(&self) -> Option<ServerIdentity> {
        match cairn_install::handoff::Handoff::load(&self.paths.esp) {
            Ok(Some(hand)) => {
                return Some(ServerIdentity {
                    server: hand.server,
                    mac: hand.mac,
                })
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("the install hand-off on the ESP: {e}"),
        }
        let server = self.config.server.clone()?;
        match default_route_mac(&self.paths.proc_net_route, &self.paths.sys_class_net) {
            Ok(Some(mac)) => Some(ServerIdentity { server, mac }),
            Ok(None) => {
                tracing::info!("no IPv4 default route: not naming this machine to {server}");
                None
            }
            Err(e) => {
                tracing::warn!("not naming this machine to {server}: {e}");
                None
            }
        }
    }

    /// Fetches and verifies the channel's manifest.
    pub fn check(&self, running: &Running) -> Result<(Manifest, String)> {
        let base = self.config.channel_url().ok_or_else(|| {
            UpdateError::Refused(format!(
                "{}: no SERVER= (cloud-config coreos.update.server)",
                self.paths.config.display()
            ))
        })?;
        let headers = self.channel_headers();
        if self.keys.is_empty() {
            return Err(UpdateError::Refused(format!(
                "no trusted update keys in {}",
                self.paths.trusted_keys.display()
            )));
        }
        let bytes = fetch::get_small(
            &self.http,
            &self.retry,
            &format!("{base}manifest"),
            &headers,
        )?;
        let sig = fetch::get_small(
            &self.http,
            &self.retry,
            &format!("{base}manifest.sig"),
            &headers,
        )?;
        let m = manifest::verify(
            &bytes,
            &sig,
            &self.keys,
            &Expect {
                name: &running.name,
                running_version: &running.version,
                channel: Some(&self.config.channel),
                now: fsutil::now(),
            },
        )?;
        admit(&self.state()?, &m.version)?;
        Ok((m, base))
    }

    /// The whole flow: observe the boot, check, download, write, stage.
    /// A refusal or failure is recorded in the state file (and returned);
    /// the running slot and its entry are never touched.
    pub fn apply(&self) -> Result<Outcome> {
        let (running, st) = self.observe_boot()?;
        if let Phase::Trial { version, slot, .. } = &st.phase {
            return Ok(Outcome::TrialInProgress {
                version: version.clone(),
                slot: *slot,
            });
        }
        let checked = self.check(&running);
        let (m, base) = match checked {
            Ok(x) => x,
            Err(UpdateError::Channel(ChannelError::NotNewer { offered, running })) => {
                if version::compare(&offered, &running).is_lt() {
                    tracing::warn!(
                        "the channel offers {offered}, older than the running {running} (a replayed or rolled-back channel): ignored"
                    );
                }
                return Ok(Outcome::UpToDate { running, offered });
            }
            Err(e) => {
                let version = match &e {
                    UpdateError::Denied { version, .. } => Some(version.as_str()),
                    UpdateError::Replayed { offered, .. } => Some(offered.as_str()),
                    _ => None,
                };
                self.record(version, &e);
                return Err(e);
            }
        };
        if let Phase::Staged { version, slot, .. } = &st.phase {
            if *version == m.version {
                return Ok(Outcome::AlreadyStaged {
                    version: version.clone(),
                    slot: *slot,
                });
            }
        }
        match self.install(&running, &m, &base) {
            Ok(o) => Ok(o),
            Err(e) => {
                self.record(Some(&m.version), &e);
                Err(e)
            }
        }
    }

    fn record(&self, version: Option<&str>, e: &UpdateError) {
        tracing::error!("update refused: {e}");
        if let Err(e2) = self.event(Event::Refused {
            version: version.map(str::to_string),
            reason: e.to_string(),
        }) {
            tracing::error!("recording the refusal: {e2}");
        }
    }

    /// Downloads and writes `m` into the inactive slot.
    fn install(&self, running: &Running, m: &Manifest, base: &str) -> Result<Outcome> {
        let target = running.slot.other();
        let device = self.paths.slot_device(target)?;
        let root = m.part(PartKind::Rootfs);
        let slot_size = device_size(&device)?;
        if root.size > slot_size {
            return Err(UpdateError::NoSpace {
                where_: format!("slot {target} ({})", device.display()),
                need: root.size,
                have: slot_size,
            });
        }
        // the running entry gives the command line (and must exist before we
        // change anything)
        let running_entry = running_entry(&self.paths.esp, running.slot)?;
        self.event(Event::Download {
            version: m.version.clone(),
            slot: target,
        })?;
        // 1. downloads, verified before anything on the slot or ESP changes
        let dl = self.paths.download_dir();
        fs::create_dir_all(&dl).map_err(UpdateError::io(&dl))?;
        clean_downloads(&dl, m)?;
        let need: u64 = m.parts.iter().map(|p| fetch::remaining(&dl, p)).sum();
        let have = free_space(&dl)?;
        if need > have {
            return Err(UpdateError::NoSpace {
                where_: format!("the state partition ({})", dl.display()),
                need,
                have,
            });
        }
        let mut files = Vec::new();
        let headers = self.channel_headers();
        for p in &m.parts {
            let url = format!("{base}{}", p.path);
            tracing::info!("downloading {url} ({} bytes)", p.size);
            files.push((
                p,
                fetch::download_part(&self.http, &self.retry, &url, &dl, p, &headers)?,
            ));
        }
        // the signed root hash must be the one of the downloaded image's
        // tree: a manifest that disagrees is refused before the slot changes
        let verity = m.verity();
        let rootfs = &files
            .iter()
            .find(|(p, _)| p.kind == PartKind::Rootfs)
            .unwrap()
            .1;
        if let Some(v) = &verity {
            cairn_verity::verify(rootfs, v).map_err(|source| UpdateError::Verity {
                what: format!(
                    "the manifest's root hash {} does not match the hash tree of the downloaded {}",
                    v.root_hash_hex(),
                    root.path
                ),
                source,
            })?;
        }
        // 2. the inactive slot loses its entry (and its ESP files) first
        let removed = entries::remove_slot_entries(&self.paths.esp, target)?;
        for e in &removed {
            tracing::info!(
                "removed {} (slot {target} is about to be written)",
                e.file_name()
            );
        }
        remove_unreferenced_kernels(&self.paths.esp, &m.version)?;
        // 3. the slot, read back by hash and then through its tree, the way
        // the kernel will read it at boot
        tracing::info!(
            "writing {} into slot {target} ({})",
            root.path,
            device.display()
        );
        self.write_slot(rootfs, &device, root.size, &root.sha256)?;
        if let Some(hook) = self.after_slot_write {
            hook(&device);
        }
        if let Some(v) = &verity {
            let t = std::time::Instant::now();
            cairn_verity::verify(&device, v).map_err(|source| UpdateError::Verity {
                what: format!(
                    "slot {target} ({}) read back does not match root hash {}",
                    device.display(),
                    v.root_hash_hex()
                ),
                source,
            })?;
            tracing::info!(
                "slot {target}: dm-verity tree checked in {:.2} s (root hash {})",
                t.elapsed().as_secs_f64(),
                v.root_hash_hex()
            );
        }
        // 4. kernel and initrd
        let kdir = self.paths.esp.join("cairn").join(&m.version);
        let kernel_size: u64 = m
            .parts
            .iter()
            .filter(|p| p.kind != PartKind::Rootfs)
            .map(|p| p.size)
            .sum();
        let esp_free = free_space(&self.paths.esp)?;
        if kernel_size + 64 * 1024 > esp_free {
            return Err(UpdateError::NoSpace {
                where_: format!("the ESP ({})", self.paths.esp.display()),
                need: kernel_size,
                have: esp_free,
            });
        }
        fs::create_dir_all(&kdir).map_err(UpdateError::io(&kdir))?;
        fsync_dir(&self.paths.esp.join("cairn"))?;
        for (p, src) in files.iter().filter(|(p, _)| p.kind != PartKind::Rootfs) {
            let dest = kdir.join(p.kind.file_name());
            self.write_esp_file(src, &dest, p.size, &p.sha256)?;
        }
        // 5. the entry, last
        let name = entries::new_entry_name(&m.version, TRIES);
        let options = entries::options_for_image(
            &running_entry
                .get("options")
                .unwrap_or_else(|| format!("cairn.slot={}", running.slot)),
            target,
            verity.as_ref(),
        );
        let text = cairn_disk::bls_entry(&cairn_disk::BootEntry {
            title: format!("{} {} (slot {target})", m.name, m.version),
            version: m.version.clone(),
            machine_id: running_entry.get("machine-id"),
            linux: format!("/cairn/{}/{}", m.version, PartKind::Kernel.file_name()),
            initrd: format!("/cairn/{}/{}", m.version, PartKind::Initrd.file_name()),
            options,
            sort_key: running_entry.get("sort-key"),
        });
        entries::write_entry(&self.paths.esp, &name, &text)?;
        tracing::info!(
            "wrote loader/entries/{name}: version {} staged in slot {target}",
            m.version
        );
        self.event(Event::Staged {
            version: m.version.clone(),
            slot: target,
            boot_id: running.boot_id.clone(),
        })?;
        let _ = fs::remove_dir_all(&dl);
        Ok(Outcome::Staged {
            version: m.version.clone(),
            slot: target,
            entry: name,
        })
    }

    fn spend(&self, n: usize) -> usize {
        let Some(limit) = self.abort_after else {
            return n;
        };
        let before = self.written.fetch_add(n as u64, Ordering::SeqCst);
        if before >= limit {
            tracing::error!("test hook: aborting after {before} bytes written");
            std::process::abort();
        }
        n.min((limit - before) as usize)
    }

    fn check_abort(&self) {
        if let Some(limit) = self.abort_after {
            if self.written.load(Ordering::SeqCst) >= limit {
                tracing::error!("test hook: aborting after {limit} bytes written");
                std::process::abort();
            }
        }
    }

    /// Streams `src` into the slot device while hashing, fsyncs, drops
    /// the cached pages and reads the bytes back to compare.
    /// Returns the seconds spent writing (including fsync) and verifying.
    pub fn write_slot(
        &self,
        src: &Path,
        device: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(f64, f64)> {
        let t0 = std::time::Instant::now();
        let mut input = File::open(src).map_err(UpdateError::io(src))?;
        let mut out = OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(UpdateError::io(device))?;
        // No hash on the way in: the source was verified when downloaded,
        // and the read-back below checks what actually reached the device.
        self.copy(&mut input, &mut out, device)?;
        out.sync_all().map_err(UpdateError::io(device))?;
        drop_cache(&out);
        drop(out);
        let t1 = std::time::Instant::now();
        let back = read_back(device, size)?;
        let (w, v) = ((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());
        tracing::info!(
            "slot {}: {} MiB written in {w:.2} s, read back and hashed in {v:.2} s",
            device.display(),
            size >> 20,
        );
        if back != sha256 {
            return Err(UpdateError::HashMismatch {
                what: format!("rootfs read back from {}", device.display()),
                expected: sha256.into(),
                got: back,
            });
        }
        Ok((w, v))
    }

    /// A file on the ESP: temp file, hashing copy, fsync, rename, fsync of
    /// the folder, read back.
    fn write_esp_file(&self, src: &Path, dest: &Path, size: u64, sha256: &str) -> Result<()> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut input = File::open(src).map_err(UpdateError::io(src))?;
        let mut out = File::create(&tmp).map_err(UpdateError::io(&tmp))?;
        let hash = self.copy_hashing(&mut input, &mut out, &tmp)?;
        out.sync_all().map_err(UpdateError::io(&tmp))?;
        drop_cache(&out);
        drop(out);
        if hash != sha256 {
            let _ = fs::remove_file(&tmp);
            return Err(UpdateError::HashMismatch {
                what: format!("{} written", dest.display()),
                expected: sha256.into(),
                got: hash,
            });
        }
        fs::rename(&tmp, dest).map_err(UpdateError::io(dest))?;
        fsync_dir(dir)?;
        let back = read_back(dest, size)?;
        if back != sha256 {
            return Err(UpdateError::HashMismatch {
                what: format!("{} read back", dest.display()),
                expected: sha256.into(),
                got: back,
            });
        }
        Ok(())
    }

    fn copy_hashing(&self, input: &mut File, out: &mut File, what: &Path) -> Result<String> {
        let mut h = Sha256::new();
        self.copy_with(input, out, what, |b| h.update(b))?;
        Ok(hex::encode(h.finalize()))
    }

    fn copy(&self, input: &mut File, out: &mut File, what: &Path) -> Result<()> {
        self.copy_with(input, out, what, |_| {})
    }

    /// Copies in 1 MiB chunks, showing each chunk to `seen`; the test hook
    /// (`abort_after`) may stop the process mid-chunk.
    fn copy_with(
        &self,
        input: &mut File,
        out: &mut File,
        what: &Path,
        mut seen: impl FnMut(&[u8]),
    ) -> Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = input.read(&mut buf).map_err(UpdateError::io(what))?;
            if n == 0 {
                break;
            }
            seen(&buf[..n]);
            let allowed = self.spend(n);
            out.write_all(&buf[..allowed]).map_err(|e| {
                if e.raw_os_error() == Some(libc_enospc()) {
                    UpdateError::NoSpace {
                        where_: what.display().to_string(),
                        need: n as u64,
                        have: 0,
                    }
                } else {
                    UpdateError::Io {
                        path: what.to_path_buf(),
                        source: e,
                    }
                }
            })?;
            if allowed < n {
                let _ = out.sync_all();
                self.check_abort();
            }
        }
        Ok(())
    }

    /// What `status` prints.
    pub fn status(&self) -> Result<StatusReport> {
        let (running, state) = self.observe_boot()?;
        let entries = entries::list(&self.paths.esp)?;
        Ok(StatusReport {
            running,
            state,
            entries: entries.iter().map(|e| (e.file_name(), e.slot())).collect(),
            config: self.config.clone(),
        })
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// Whether a verified manifest for `version` may be installed given what
/// this machine went through: not a version that failed here, and not
/// older than the newest version ever accepted here (anti-replay: a
/// validly signed, unexpired older manifest replayed by the network or a
/// withdrawn channel). The same version as the newest accepted passes (an
/// interrupted download resumes), unless it failed.
pub fn admit(state: &State, version: &str) -> Result<()> {
    if let Some(d) = state.denied(version) {
        return Err(UpdateError::Denied {
            version: d.version,
            at: d.at,
            reason: d.reason,
        });
    }
    if let Some(a) = state.replayed(version) {
        return Err(UpdateError::Replayed {
            offered: version.to_string(),
            newest: a.version.clone(),
            at: a.at.clone(),
        });
    }
    Ok(())
}

/// What the ESP says about `slot`'s entry: its boot counter.
fn entry_note(esp: &Path, slot: Slot) -> String {
    match entries::for_slot(esp, slot) {
        Ok(es) if es.is_empty() => format!("slot {slot} has no boot entry"),
        Ok(es) => es
            .iter()
            .map(|e| {
                let n = &e.name;
                match (n.tries_left, n.tries_done) {
                    (None, _) => format!("entry {} is blessed", e.file_name()),
                    (Some(0), d) => format!(
                        "entry {}: no tries left{}",
                        e.file_name(),
                        d.map(|d| format!(" after {d} failed boots"))
                            .unwrap_or_default()
                    ),
                    (Some(l), d) => format!(
                        "entry {}: {l} tries left, {} used",
                        e.file_name(),
                        d.unwrap_or(0)
                    ),
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("reading the entries: {e}"),
    }
}

/// The running slot's entry (it supplies the command line of the new one).
pub fn running_entry(esp: &Path, running: Slot) -> Result<EntryFile> {
    let mut es = entries::for_slot(esp, running)?;
    // newest version first, the way systemd-boot would pick
    es.sort_by(|a, b| {
        version::compare(
            &b.get("version").unwrap_or_default(),
            &a.get("version").unwrap_or_default(),
        )
    });
    es.into_iter().next().ok_or_else(|| {
        UpdateError::Refused(format!(
            "no boot entry for the running slot {running} under {}",
            esp.join(entries::ENTRIES_DIR).display()
        ))
    })
}

/// Removes `ESP/cairn/<v>/` folders that no entry refers to any more (and
/// a leftover of `keep`, the version about to be written); other files under
/// `ESP/cairn/` are left alone.
fn remove_unreferenced_kernels(esp: &Path, keep: &str) -> Result<()> {
    let dir = esp.join("cairn");
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let used: Vec<String> = entries::list(esp)?
        .iter()
        .flat_map(|e| [e.get("linux"), e.get("initrd")])
        .flatten()
        .collect();
    let mut changed = false;
    for e in rd.flatten() {
        // only the kernel folders: files beside them (the installer's hand-off,
        // `cairn/install.json`) are not the agent's to remove
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let v = e.file_name().to_string_lossy().into_owned();
        let prefix = format!("/cairn/{v}/");
        if used.iter().any(|u| u.starts_with(&prefix)) {
            continue;
        }
        if v != keep {
            tracing::info!("removing ESP folder cairn/{v} (no entry uses it)");
        }
        fs::remove_dir_all(e.path()).map_err(UpdateError::io(e.path()))?;
        changed = true;
    }
    if changed {
        fsync_dir(&dir)?;
    }
    Ok(())
}

/// Deletes downloads that do not belong to `m`.
fn clean_downloads(dir: &Path, m: &Manifest) -> Result<()> {
    for e in fs::read_dir(dir).map_err(UpdateError::io(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let stem = n.strip_suffix(".part").unwrap_or(&n);
        if !m.parts.iter().any(|p| p.sha256 == stem) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Size of a block device or file.
pub fn device_size(p: &Path) -> Result<u64> {
    let mut f = File::open(p).map_err(UpdateError::io(p))?;
    f.seek(SeekFrom::End(0)).map_err(UpdateError::io(p))
}

/// Free bytes (as root sees them) on the filesystem of `p`.
fn free_space(p: &Path) -> Result<u64> {
    let s = rustix::fs::statvfs(p).map_err(|e| UpdateError::Io {
        path: p.to_path_buf(),
        source: e.into(),
    })?;
    Ok(s.f_bfree.saturating_mul(s.f_frsize))
}

fn drop_cache(f: &File) {
    // Best effort: the read-back should come from the disk, not the cache.
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
}

/// SHA-256 of the first `size` bytes of `p`, reading and hashing on two
/// threads so that the disk and the CPU work at the same time.
fn read_back(p: &Path, size: u64) -> Result<String> {
    let f = File::open(p).map_err(UpdateError::io(p))?;
    drop_cache(&f);
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Sequential);
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(3);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..4 {
        let _ = empty_tx.send(vec![0u8; 4 * CHUNK]);
    }
    let hasher = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut n = 0u64;
        for (buf, k) in full_rx {
            h.update(&buf[..k]);
            n += k as u64;
            if empty_tx.send(buf).is_err() {
                break;
            }
        }
        (hex::encode(h.finalize()), n)
    });
    let mut r = f.take(size);
    let read_result = (|| -> std::io::Result<()> {
        loop {
            let Ok(mut buf) = empty_rx.recv() else {
                return Ok(());
            };
            let mut k = 0;
            while k < buf.len() {
                let m = r.read(&mut buf[k..])?;
                if m == 0 {
                    break;
                }
                k += m;
            }
            if k == 0 || full_tx.send((buf, k)).is_err() {
                return Ok(());
            }
        }
    })();
    drop(full_tx);
    let (hash, n) = hasher.join().expect("the hashing thread does not panic");
    read_result.map_err(UpdateError::io(p))?;
    if n != size {
        return Err(UpdateError::SizeMismatch {
            what: format!("read back from {}", p.display()),
            expected: size,
            got: n,
        });
    }
    Ok(hash)
}

/// What `cairn-update status` shows.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub running: Running,
    pub state: State,
    pub entries: Vec<(String, Option<Slot>)>,
    pub config: Config,
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.running;
        writeln!(f, "running:  {} {} from slot {}", r.name, r.version, r.slot)?;
        let s = &self.state;
        let since = if s.since.is_empty() {
            String::new()
        } else {
            format!(" (since {})", s.since)
        };
        match &s.phase {
            Phase::Idle => writeln!(f, "update:   idle{since}")?,
            Phase::Downloading { version, slot } => writeln!(
                f,
                "update:   downloading {version} into slot {slot}{since} (interrupted or in progress; slot {slot} has no boot entry)"
            )?,
            Phase::Staged { version, slot, .. } => writeln!(
                f,
                "update:   {version} staged in slot {slot}{since}, waiting for a reboot"
            )?,
            Phase::Trial { version, slot, health } => {
                writeln!(f, "update:   trial of {version} in slot {slot}{since}")?;
                if let Some(h) = health {
                    writeln!(f, "          health gate failed: {h}")?;
                }
            }
            Phase::Committed { version, slot } => {
                writeln!(f, "update:   updated to {version} (slot {slot}){since}")?
            }
            Phase::RolledBack { version, slot, reason } => writeln!(
                f,
                "update:   rolled back from {version} (slot {slot}){since}: {reason}"
            )?,
        }
        if let Some(fl) = &s.last_failure {
            writeln!(
                f,
                "last failure: {}{}: {}",
                fl.at,
                fl.version
                    .as_deref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default(),
                fl.reason
            )?;
        }
        if let Some(a) = &s.newest_accepted {
            writeln!(
                f,
                "accepted: {} at {} (older versions are refused as replays)",
                a.version, a.at
            )?;
        }
        const SHOWN: usize = 5;
        let hidden = s.denied.len().saturating_sub(SHOWN);
        for d in s.denied.iter().rev().take(SHOWN) {
            writeln!(
                f,
                "denied:   {} (failed here at {}: {})",
                d.version, d.at, d.reason
            )?;
        }
        if hidden > 0 {
            writeln!(
                f,
                "          and {hidden} older failed versions (status --json lists them)"
            )?;
        }
        let c = &self.config;
        writeln!(
            f,
            "channel:  {} from {}",
            c.channel,
            c.server.as_deref().unwrap_or("(no SERVER set)")
        )?;
        write!(f, "strategy: {}", c.strategy.as_str())?;
        if let Some(w) = &c.window {
            let day = w
                .day
                .map(|d| {
                    format!(
                        "{} ",
                        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][d as usize]
                    )
                })
                .unwrap_or_default();
            write!(
                f,
                ", window {day}{:02}:{:02} UTC for {} min",
                w.start / 3600,
                w.start / 60 % 60,
                w.length / 60
            )?;
        }
        writeln!(f)?;
        for (name, slot) in &self.entries {
            writeln!(
                f,
                "entry:    {name}{}",
                slot.map(|s| format!(" (slot {s})")).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// Who this machine is to a `cairn serve` ([`Agent::server_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// The server's base URL.
    pub server: String,
    /// The MAC address the server knows this machine by (normalized).
    pub mac: String,
}

/// The MAC address of the interface with the IPv4 default route, from
/// `/proc/net/route` and `/sys/class/net/IFACE/address`; `None` without
/// such a route (or when its interface has no Ethernet address).
pub fn default_route_mac(route: &Path, net: &Path) -> Result<Option<String>> {
    const RTF_UP: u32 = 0x1;
    let text = fs::read_to_string(route)
        .map_err(|e| UpdateError::Refused(format!("reading {}: {e}", route.display())))?;
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ... (hex, host order)
    let iface = text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000") && flags & RTF_UP != 0)
            .then(|| f[0].to_owned())
    });
    let Some(iface) = iface else {
        return Ok(None);
    };
    // an interface name as the kernel allows it: never a path
    if iface.is_empty()
        || iface.len() > 15
        || iface == "."
        || iface == ".."
        || iface.contains(['/', '\0'])
    {
        return Err(UpdateError::Refused(format!(
            "{}: {iface:?} is not an interface name",
            route.display()
        )));
    }
    let p = net.join(&iface).join("address");
    let raw = match fs::read_to_string(&p) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(UpdateError::Refused(format!(
                "reading {}: {e}",
                p.display()
            )))
        }
    };
    match cairn_formats::lifecycle::normalize_mac(raw.trim()) {
        Some(mac) if mac != "00:00:00:00:00:00" => Ok(Some(mac)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_names_its_interface_mac() {
        let d = tempfile::tempdir().unwrap();
        let (route, net) = (d.path().join("route"), d.path().join("net"));
        std::fs::create_dir_all(net.join("eth1")).unwrap();
        std::fs::write(net.join("eth1/address"), "AA:BB:CC:00:11:22\n").unwrap();
        let head = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n";
        let w = |t: &str| std::fs::write(&route, format!("{head}{t}")).unwrap();
        w("eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\neth1\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n");
        assert_eq!(
            default_route_mac(&route, &net).unwrap().as_deref(),
            Some("aa:bb:cc:00:11:22")
        );
        // a route that is down, a host route, no address file: nothing
        w("eth1\t00000000\t0100A8C0\t0002\t0\t0\t0\t00000000\n");
        assert_eq!(default_route_mac(&route, &net).unwrap(), None);
        w("eth1\t00000000\t0100A8C0\t0003\t0\t0\t0\tFFFFFFFF\n");
        assert_eq!(default_route_mac(&route, &net).unwrap(), None);
        w("wg0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n");
        assert_eq!(default_route_mac(&route, &net).unwrap(), None);
        // a name that is a path is refused, not followed
        w("../x\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n");
        assert!(default_route_mac(&route, &net).is_err());
        // an all-zero or malformed address is no name
        std::fs::write(net.join("eth1/address"), "00:00:00:00:00:00\n").unwrap();
        w("eth1\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n");
        assert_eq!(default_route_mac(&route, &net).unwrap(), None);
        std::fs::write(net.join("eth1/address"), "garbage").unwrap();
        assert_eq!(default_route_mac(&route, &net).unwrap(), None);
    }

    #[test]
    fn os_release_values() {
        let t = "NAME=cairn\nIMAGE_ID=default\nIMAGE_VERSION=\"1.0 beta\"\nPRETTY_NAME=\"a \\\"q\\\"\"\n";
        assert_eq!(os_release_value(t, "IMAGE_ID").unwrap(), "default");
        assert_eq!(os_release_value(t, "IMAGE_VERSION").unwrap(), "1.0 beta");
        assert_eq!(os_release_value(t, "PRETTY_NAME").unwrap(), "a \"q\"");
        assert_eq!(os_release_value(t, "IMAGE"), None);
    }
}
