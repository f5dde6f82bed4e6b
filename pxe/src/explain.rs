//! Why a machine boots what it boots: `cairn serve --explain MAC` and the operators' `GET /explain`.
//! Owns the [`Explanation`] (every group's selectors held against the machine's facts, the winner
//! and why, the profile, the image folder and the files its boot needs, the cloud-config template
//! and whether it renders, the update channel, the rollout, the machine's lifecycle record and what
//! its next netboot gets) and its text form. It decides nothing itself: the winner is
//! [`Inventory::select`]'s, each selector is [`Group::check_selectors`]', the next install netboot
//! is `cairn_lifecycle`'s state machine run on a copy of the record; the records are only read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cairn_formats::image_dir;
use cairn_lifecycle::{InstallAction, Machine, Rollout};
use serde::Serialize;

use crate::facts::{Facts, Mac};
use crate::inventory::{BootMode, Group, Inventory, RenderContext, Transport};

/// A request for an explanation that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// No `mac` given.
    #[error("mac: missing (explain needs the machine's MAC address, e.g. mac=52:54:00:12:34:56)")]
    MissingMac,
    /// The `mac` given is not a MAC address.
    #[error("mac: {0:?} is not a MAC address: expected six hex pairs like 52:54:00:12:34:56")]
    BadMac(String),
    /// A fact that is not `key=value`.
    #[error("fact {0:?}: expected KEY=VALUE, e.g. rack=r1 or uuid=...")]
    BadFact(String),
}

/// The facts of a machine to explain: its MAC plus other facts (`uuid`, `hostname`, `serial`,
/// labels), normalised and checked as the server does a request's ([`Facts::from_pairs`]).
pub fn facts_for(
    mac: Option<&str>,
    others: impl IntoIterator<Item = (String, String)>,
) -> Result<Facts, ExplainError> {
    let mac = mac
        .filter(|m| !m.trim().is_empty())
        .ok_or(ExplainError::MissingMac)?;
    let mac = Mac::parse(mac).ok_or_else(|| ExplainError::BadMac(mac.to_string()))?;
    let mut pairs = vec![("mac".to_string(), mac.to_string())];
    pairs.extend(others.into_iter().filter(|(k, _)| k != "mac"));
    let raw_query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish();
    Ok(Facts::from_pairs(pairs, &raw_query))
}

/// `KEY=VALUE` arguments (`--fact`) as pairs.
pub fn parse_facts(args: &[String]) -> Result<Vec<(String, String)>, ExplainError> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(ExplainError::BadFact(a.clone())),
        })
        .collect()
}

/// What the lifecycle records say about one machine, read without changing them.
#[derive(Debug, Clone, Default)]
pub struct RecordsView {
    /// The machine's record, if it has one.
    pub machine: Option<Machine>,
    /// Every rollout recorded.
    pub rollouts: Vec<Rollout>,
    /// Records that could not be read (named, with the reason).
    pub unreadable: Vec<String>,
}

impl RecordsView {
    /// From `STATE_DIR/lifecycle/` on disk, read only ([`cairn_lifecycle::store::peek`]): no lock
    /// taken (a running server keeps it), nothing created, a record that does not read is
    /// reported, not set aside.
    pub fn read_state_dir(state_dir: &Path, mac: &Mac) -> anyhow::Result<RecordsView> {
        let p = cairn_lifecycle::store::peek(state_dir, mac.as_str()).with_context(|| {
            format!(
                "reading the machine records in {}",
                state_dir.join("lifecycle").display()
            )
        })?;
        Ok(RecordsView {
            machine: p.machine,
            rollouts: p.rollouts,
            unreadable: p.unreadable,
        })
    }
}

/// What a template would see besides the facts, and the clock.
#[derive(Debug, Clone)]
pub struct Context {
    /// Base URL machines reach the server at.
    pub public_url: String,
    /// The machine's address (the last one it netbooted from, when known).
    pub ip: String,
    /// Discovery URL of each group with `etcd_cluster`, by group name (placeholders when unknown).
    pub etcd_discovery: BTreeMap<String, String>,
    /// Now, seconds since the epoch.
    pub now: i64,
}

impl Context {
    /// For `cairn serve --explain`: no server running, so the public URL is `--public-url` or the
    /// HTTP listen address, the IP a placeholder, discovery URLs placeholders.
    pub fn offline(inv: &Inventory, public_url: &str) -> Context {
        let public_url = public_url.trim_end_matches('/').to_string();
        let etcd_discovery = inv
            .groups
            .iter()
            .filter(|g| g.etcd_cluster.is_some())
            .map(|g| {
                (
                    g.name.clone(),
                    format!("{public_url}/discovery/{}", "0".repeat(32)),
                )
            })
            .collect();
        Context {
            public_url,
            ip: "0.0.0.0".into(),
            etcd_discovery,
            now: crate::lifecycle::now(),
        }
    }
}

/// One group against the machine.
#[derive(Debug, Clone, Serialize)]
pub struct GroupCheck {
    /// Group name.
    pub name: String,
    /// Its line in the inventory.
    pub line: usize,
    /// Its profile.
    pub profile: String,
    /// Each selector: key, wanted value, the machine's value, matched.
    pub selectors: Vec<SelectorResult>,
    /// How many selectors matched.
    pub matched: usize,
    /// Whether every selector matched (the group is a candidate).
    pub matches: bool,
}

/// One selector against the machine (owned [`crate::inventory::SelectorCheck`]).
#[derive(Debug, Clone, Serialize)]
pub struct SelectorResult {
    /// Key.
    pub key: String,
    /// The value the group wants.
    pub want: String,
    /// The machine's value.
    pub seen: Option<String>,
    /// Equal.
    pub matched: bool,
}

/// Which group won.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Verdict {
    /// One group with the most selectors.
    Won {
        /// The group.
        group: String,
        /// Its selector count.
        selectors: usize,
        /// Why it won.
        why: String,
    },
    /// No group matches.
    NoMatch {
        /// Why.
        why: String,
    },
    /// Several groups match with the same, highest selector count (the inventory check refuses
    /// such groups at load, so this means the check missed a case).
    Ambiguous {
        /// The tied groups.
        groups: Vec<String>,
        /// Their selector count.
        selectors: usize,
        /// The one the server answers with.
        served: String,
    },
}

/// The profile of the winning group.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileInfo {
    /// Name.
    pub name: String,
    /// Boot mode.
    pub boot: BootMode,
    /// Kernel/initrd transport.
    pub transport: Transport,
    /// Kernel arguments (cairn's, then the profile's).
    pub kernel_args: Vec<String>,
    /// `boot: install`: the disk rule.
    pub install_disk: Option<String>,
    /// `boot: install`: overwrite a disk with data.
    pub install_overwrite: Option<bool>,
}

/// One file of the image folder the boot needs.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    /// File name.
    pub name: String,
    /// Its size, when it is a file now.
    pub bytes: Option<u64>,
}

/// The profile's image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// `NAME-VERSION`, as URLs name it.
    pub key: String,
    /// manifest.json's name (None when the key is not among the loaded images).
    pub name: Option<String>,
    /// manifest.json's version.
    pub version: Option<String>,
    /// The folder.
    pub dir: Option<PathBuf>,
    /// Whether the folder exists now.
    pub folder_exists: bool,
    /// The files this boot needs, each with its size or none when missing.
    pub files: Vec<FileCheck>,
}

impl ImageInfo {
    /// Names of needed files missing.
    pub fn missing(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter(|f| f.bytes.is_none())
            .map(|f| f.name.as_str())
            .collect()
    }
}

/// The profile's cloud-config.
#[derive(Debug, Clone, Serialize)]
pub struct CloudConfigInfo {
    /// The template as the inventory names it (None: the profile has no cloud_config).
    pub template: Option<String>,
    /// Its file (relative to the inventory's folder).
    pub source: Option<PathBuf>,
    /// Whether it renders for these facts.
    pub renders: bool,
    /// Bytes rendered.
    pub bytes: Option<usize>,
    /// Why it does not render.
    pub error: Option<String>,
    /// `cairn validate`'s errors in the rendered text.
    pub invalid: Vec<String>,
}

/// The update channel of the image.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateInfo {
    /// The channel the image's signed bundle is on (None: unsigned build, no channel).
    pub channel: Option<String>,
    /// What the server offers on that channel now: image and version.
    pub offered: Option<(String, String)>,
    /// Said in words.
    pub note: String,
}

/// The rollout of the channel.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutInfo {
    /// A rollout is recorded for the channel.
    pub recorded: bool,
    /// Version it rolls out.
    pub version: Option<String>,
    /// The machine's wave (index) and its name.
    pub wave: Option<(usize, String)>,
    /// Said in words ("no rollout" when there is none).
    pub note: String,
}

/// What the machine's next netboot gets.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum NextNetboot {
    /// No group: the no-match script, asking again later.
    NoMatch {
        /// Seconds iPXE waits.
        retry_seconds: u32,
    },
    /// The diskless image from the network (`boot: ram`).
    DisklessImage {
        /// Image key.
        image: String,
        /// A trial, or the last good image instead of the profile's, and why.
        note: Option<String>,
    },
    /// The image from the network, state on the local partition (`boot: disk-state`).
    NetworkImageDiskState {
        /// Image key.
        image: String,
        /// GPT label of the state partition.
        state_label: String,
        /// A trial, or the last good image instead of the profile's, and why.
        note: Option<String>,
    },
    /// The installer (`boot: install`).
    Installer {
        /// Image key.
        image: String,
        /// Attempt number.
        attempt: u32,
        /// May overwrite a disk with data.
        overwrite: bool,
    },
    /// Boot the local disk (install done).
    LocalDisk {
        /// The record's phase.
        why: String,
    },
    /// Nothing: the server refuses, and says why on the console.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Everything `--explain` says about one machine.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The inventory file.
    pub inventory: PathBuf,
    /// The facts matched (normalised).
    pub facts: BTreeMap<String, String>,
    /// Facts dropped as the server drops them (bad characters), with their values.
    pub rejected_facts: BTreeMap<String, String>,
    /// Every group in file order.
    pub groups: Vec<GroupCheck>,
    /// Which won.
    pub verdict: Verdict,
    /// The winner's profile.
    pub profile: Option<ProfileInfo>,
    /// Its image.
    pub image: Option<ImageInfo>,
    /// Its cloud-config.
    pub cloud_config: Option<CloudConfigInfo>,
    /// Its update channel.
    pub update: Option<UpdateInfo>,
    /// The rollout.
    pub rollout: RolloutInfo,
    /// The machine's lifecycle record.
    pub record: Option<Machine>,
    /// Records that did not read.
    pub unreadable_records: Vec<String>,
    /// The next netboot's answer.
    pub next_netboot: NextNetboot,
}

/// Explains what the server answers the machine with these facts.
pub fn explain(inv: &Inventory, records: &RecordsView, facts: &Facts, cx: &Context) -> Explanation {
    let groups: Vec<GroupCheck> = inv
        .groups
        .iter()
        .map(|g| {
            let selectors: Vec<SelectorResult> = g
                .check_selectors(facts)
                .map(|c| SelectorResult {
                    key: c.key.into(),
                    want: c.want.into(),
                    seen: c.seen.map(String::from),
                    matched: c.matched,
                })
                .collect();
            GroupCheck {
                name: g.name.clone(),
                line: g.line,
                profile: inv.profile_of(g).name.clone(),
                matched: selectors.iter().filter(|s| s.matched).count(),
                matches: g.matches(facts),
                selectors,
            }
        })
        .collect();
    let winner = inv.select(facts);
    let verdict = verdict(&groups, winner);
    let mut e = Explanation {
        inventory: inv.path.clone(),
        facts: facts.labels.clone(),
        rejected_facts: facts.rejected.clone(),
        groups,
        verdict,
        profile: None,
        image: None,
        cloud_config: None,
        update: None,
        rollout: RolloutInfo {
            recorded: false,
            version: None,
            wave: None,
            note: "no rollout (no group matches)".into(),
        },
        record: records.machine.clone(),
        unreadable_records: records.unreadable.clone(),
        next_netboot: NextNetboot::NoMatch {
            retry_seconds: crate::ipxe::RETRY_SECONDS,
        },
    };
    let Some(group) = winner else {
        return e;
    };
    let profile = inv.profile_of(group);
    e.profile = Some(ProfileInfo {
        name: profile.name.clone(),
        boot: profile.boot,
        transport: profile.transport,
        kernel_args: profile.cmdline_args(),
        install_disk: profile.install.as_ref().map(|i| i.disk.clone()),
        install_overwrite: profile.install.as_ref().map(|i| i.overwrite),
    });
    let image = image_info(inv, &profile.image, profile.boot);
    e.cloud_config = Some(cloud_config_info(inv, group, facts, cx));
    e.update = Some(update_info(inv, &profile.image));
    e.rollout = rollout_info(
        inv,
        records,
        e.update.as_ref().and_then(|u| u.channel.as_deref()),
        group,
        facts,
        cx.now,
    );
    e.next_netboot = next_netboot(inv, group, records, facts, cx.now);
    e.image = Some(image);
    e
}

fn verdict(groups: &[GroupCheck], winner: Option<&Group>) -> Verdict {
    let matching: Vec<&GroupCheck> = groups.iter().filter(|g| g.matches).collect();
    let Some(w) = winner else {
        return Verdict::NoMatch {
            why: if groups.is_empty() {
                "the inventory has no groups".into()
            } else if groups.iter().any(|g| g.selectors.is_empty()) {
                "no group matches, not even the default group".into()
            } else {
                "no group matches these facts, and the inventory has no default group (a group without selector)".into()
            },
        };
    };
    let top = w.selector.len();
    let tied: Vec<String> = matching
        .iter()
        .filter(|g| g.selectors.len() == top)
        .map(|g| g.name.clone())
        .collect();
    if tied.len() > 1 {
        return Verdict::Ambiguous {
            groups: tied,
            selectors: top,
            served: w.name.clone(),
        };
    }
    let others: Vec<String> = matching
        .iter()
        .filter(|g| g.name != w.name)
        .map(|g| format!("{} ({})", g.name, g.selectors.len()))
        .collect();
    let why = if top == 0 {
        "the default group (no selector): no other group matches".to_string()
    } else if others.is_empty() {
        format!("the only group whose {top} selector(s) all match")
    } else {
        format!(
            "all {top} of its selectors match, more than the other matching group(s): {}",
            others.join(", ")
        )
    };
    Verdict::Won {
        group: w.name.clone(),
        selectors: top,
        why,
    }
}

fn image_info(inv: &Inventory, key: &str, boot: BootMode) -> ImageInfo {
    let mut needed = vec![image_dir::KERNEL, image_dir::PXE_INITRD];
    if boot == BootMode::Install {
        needed.push(image_dir::DISK);
    }
    let img = inv.images.get(key);
    let dir = img.map(|i| i.dir.clone());
    let files = needed
        .into_iter()
        .map(|f| FileCheck {
            name: f.to_string(),
            bytes: dir
                .as_ref()
                .and_then(|d| std::fs::metadata(d.join(f)).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len()),
        })
        .collect();
    ImageInfo {
        key: key.to_string(),
        name: img.map(|i| i.name.clone()),
        version: img.map(|i| i.version.clone()),
        folder_exists: dir.as_ref().is_some_and(|d| d.is_dir()),
        dir,
        files,
    }
}

fn cloud_config_info(
    inv: &Inventory,
    group: &Group,
    facts: &Facts,
    cx: &Context,
) -> CloudConfigInfo {
    let profile = inv.profile_of(group);
    let Some(template) = &profile.cloud_config else {
        return CloudConfigInfo {
            template: None,
            source: None,
            renders: false,
            bytes: None,
            error: None,
            invalid: Vec::new(),
        };
    };
    let base = inv.path.parent().unwrap_or(Path::new("."));
    let ctx = RenderContext {
        facts: facts.clone(),
        ip: cx.ip.clone(),
        public_url: cx.public_url.clone(),
        etcd_discovery: cx.etcd_discovery.get(&group.name).cloned(),
    };
    let (renders, bytes, error, invalid) = match inv.render_cloud_config(group, &ctx) {
        Ok(text) => {
            let invalid = cairn_cloudconfig::validate(&text)
                .findings
                .iter()
                .filter(|f| f.kind == cairn_cloudconfig::Kind::Error)
                .map(|f| format!("line {}: {}", f.line, f.message))
                .collect();
            (true, Some(text.len()), None, invalid)
        }
        Err(e) => {
            let mut m = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                m.push_str(&format!(": {s}"));
                source = s.source();
            }
            (false, None, Some(m), Vec::new())
        }
    };
    CloudConfigInfo {
        template: Some(template.clone()),
        source: Some(base.join(template)),
        renders,
        bytes,
        error,
        invalid,
    }
}

fn update_info(inv: &Inventory, image_key: &str) -> UpdateInfo {
    let Some(img) = inv.images.get(image_key) else {
        return UpdateInfo {
            channel: None,
            offered: None,
            note: format!("no image {image_key} loaded"),
        };
    };
    match crate::updates::read_bundle(&img.dir) {
        Ok(None) => UpdateInfo {
            channel: None,
            offered: None,
            note: "no update channel: the image folder has no signed bundle (built without --sign)"
                .into(),
        },
        Err(m) => UpdateInfo {
            channel: None,
            offered: None,
            note: format!("the image's update bundle does not read: {m}"),
        },
        Ok(Some(b)) => {
            let offered = inv
                .channels
                .get(&b.name)
                .map(|c| (c.image.clone(), c.version.clone()));
            let note = match &offered {
                Some((i, v)) if *v == img.version => format!(
                    "channel {:?} offers {i} {v}, the version this profile boots",
                    b.name
                ),
                Some((i, v)) => format!(
                    "channel {:?} offers {i} {v} at /update/v1/{}/ (this profile boots {})",
                    b.name, b.name, img.version
                ),
                None => format!("channel {:?}: nothing on offer", b.name),
            };
            UpdateInfo {
                channel: Some(b.name),
                offered,
                note,
            }
        }
    }
}

fn rollout_info(
    inv: &Inventory,
    records: &RecordsView,
    channel: Option<&str>,
    group: &Group,
    facts: &Facts,
    now: i64,
) -> RolloutInfo {
    let none = |note: String| RolloutInfo {
        recorded: false,
        version: None,
        wave: None,
        note,
    };
    let Some(channel) = channel else {
        return none("no rollout (the image is on no update channel)".into());
    };
    // the server offers by a rollout only when the inventory has one for the channel
    let Some(plan) = inv.rollouts.iter().find(|p| p.channel == channel) else {
        return none(format!(
            "no rollout of channel {channel:?} in the inventory: every machine is offered the newest bundle"
        ));
    };
    let (r, unrecorded) = match records
        .rollouts
        .iter()
        .find(|r| r.plan.channel == channel && r.plan.version == plan.version)
    {
        Some(r) => (r.clone(), ""),
        None => match Rollout::start(plan.clone(), now) {
            Ok(r) => (
                r,
                " (not recorded yet: it starts when a server loads this inventory)",
            ),
            Err(e) => return none(format!("rollout on {channel:?}: plan {e}")),
        },
    };
    let r = &r;
    let mac = facts.get("mac");
    let machine_id = records
        .machine
        .as_ref()
        .and_then(|m| m.machine_id.as_deref());
    // as the server asks: no machine id yet, in no percent wave (group waves still apply)
    let seed = machine_id.map_or(
        cairn_formats::channel::rollout::SEEDS,
        cairn_formats::channel::rollout::machine_seed,
    );
    let c = cairn_lifecycle::Candidate {
        mac,
        seed,
        group: Some(&group.name),
    };
    let wave = r.wave_of(&c);
    // the rollout's decision, on copies: nothing recorded
    let mut member = records
        .machine
        .as_ref()
        .and_then(|m| m.member_of(r))
        .cloned();
    let decision = r.clone().decide(&c, &mut member, now);
    let in_wave = match wave {
        Some(w) => format!("the machine is in wave {} ({:?})", w + 1, r.plan.waves[w].name),
        None if machine_id.is_none() => {
            "the machine is in none of its group waves, and in no percent wave until it reports its machine id".to_string()
        }
        None => "the machine is in none of its waves".to_string(),
    };
    let now_what = match decision {
        cairn_lifecycle::Decision::Offer { .. } => format!("offered {} now", r.plan.version),
        cairn_lifecycle::Decision::Hold { reason } => format!("held back: {reason}"),
    };
    let note = format!(
        "rollout of {} on {channel:?}{unrecorded}: {in_wave}; {now_what}",
        r.plan.version
    );
    RolloutInfo {
        recorded: true,
        version: Some(r.plan.version.clone()),
        wave: wave.map(|w| (w, r.plan.waves[w].name.clone())),
        note,
    }
}

/// The install-once state machine (`cairn_lifecycle::Machine::on_install_boot`) run on a copy of
/// the record: what `Lifecycle::install_boot` would answer, nothing saved.
fn next_netboot(
    inv: &Inventory,
    group: &Group,
    records: &RecordsView,
    facts: &Facts,
    now: i64,
) -> NextNetboot {
    let profile = inv.profile_of(group);
    match profile.boot {
        BootMode::Ram | BootMode::DiskState => {
            // the server's A/B of diskless machines (`Records::diskless_answer`), on a copy
            let served = |image: String, note: Option<String>| match profile.boot {
                BootMode::DiskState => NextNetboot::NetworkImageDiskState {
                    image,
                    state_label: profile.state_label.clone(),
                    note,
                },
                _ => NextNetboot::DisklessImage { image, note },
            };
            let Some(wanted) = inv.images.get(&profile.image) else {
                return served(profile.image.clone(), None);
            };
            let mut diskless = records
                .machine
                .as_ref()
                .map(|m| m.diskless.clone())
                .unwrap_or_default();
            let bound = cairn_lifecycle::Limits::default().health_bound_secs;
            match diskless.choose(&wanted.version, now, bound) {
                cairn_lifecycle::Choice::Wanted { trial: true, .. } => served(
                    profile.image.clone(),
                    Some("a trial until the machine reports healthy".into()),
                ),
                cairn_lifecycle::Choice::Wanted { .. } => served(profile.image.clone(), None),
                cairn_lifecycle::Choice::Previous { version, reason } => {
                    let key = format!("{}-{version}", wanted.name);
                    if inv.images.contains_key(&key) {
                        served(
                            key,
                            Some(format!(
                                "its last good image, not {}: {reason}",
                                profile.image
                            )),
                        )
                    } else {
                        served(
                            profile.image.clone(),
                            Some(format!("{reason}; its last good image {key} is in no image folder of the inventory")),
                        )
                    }
                }
            }
        }
        BootMode::Install => {
            let mac = facts.get("mac");
            let mut m = records
                .machine
                .clone()
                .unwrap_or_else(|| Machine::new(mac, now));
            match m.on_install_boot(now) {
                InstallAction::Install {
                    attempt,
                    allow_overwrite,
                } => NextNetboot::Installer {
                    image: profile.image.clone(),
                    attempt,
                    overwrite: allow_overwrite
                        || profile.install.as_ref().is_some_and(|i| i.overwrite),
                },
                InstallAction::LocalDisk => NextNetboot::LocalDisk {
                    why: m.phase.describe(),
                },
                InstallAction::Refuse { reason } => NextNetboot::Refused { reason },
            }
        }
    }
}

fn time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Explanation {
    /// What the next netboot gets, in words.
    pub fn next_netboot_text(&self) -> String {
        match &self.next_netboot {
            NextNetboot::NoMatch { retry_seconds } => {
                format!("no boot: the no-match script, asking again in {retry_seconds} s")
            }
            NextNetboot::DisklessImage { image, note } => format!(
                "the diskless image {image} from the network{}",
                note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            NextNetboot::NetworkImageDiskState {
                image,
                state_label,
                note,
            } => format!(
                "the image {image} from the network, state on the partition labelled {state_label}{}",
                note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            NextNetboot::Installer {
                image,
                attempt,
                overwrite,
            } => format!(
                "the installer of {image} (attempt {attempt} of {}{})",
                cairn_lifecycle::machine::MAX_INSTALL_ATTEMPTS,
                if *overwrite {
                    ", may overwrite a disk with data"
                } else {
                    ""
                }
            ),
            NextNetboot::LocalDisk { why } => format!("its local disk ({why})"),
            NextNetboot::Refused { reason } => format!("refused: {reason}"),
        }
    }

    /// The text `cairn serve --explain` prints.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let facts: Vec<String> = self.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "inventory: {}", self.inventory.display());
        let _ = writeln!(o, "facts: {}", facts.join(" "));
        for (k, v) in &self.rejected_facts {
            let _ = writeln!(o, "  dropped: {k}={v:?} (characters the server refuses)");
        }
        let _ = writeln!(
            o,
            "\ngroups ({}; of the groups whose selectors all match, the one with the most wins):",
            self.groups.len()
        );
        for g in &self.groups {
            let _ = writeln!(
                o,
                "  {} (line {}, profile {}): {}, {} of {} selector(s) match",
                g.name,
                g.line,
                g.profile,
                if g.matches { "MATCHES" } else { "no" },
                g.matched,
                g.selectors.len()
            );
            for s in &g.selectors {
                let seen = match &s.seen {
                    Some(v) if s.matched => format!("yes ({v})"),
                    Some(v) => format!("no (the machine has {v})"),
                    None => format!("no (the machine sent no {})", s.key),
                };
                let _ = writeln!(o, "    {}={}: {seen}", s.key, s.want);
            }
        }
        let _ = match &self.verdict {
            Verdict::Won {
                group,
                selectors,
                why,
            } => writeln!(o, "winner: {group} ({selectors} selector(s)): {why}"),
            Verdict::NoMatch { why } => writeln!(o, "winner: none: {why}"),
            Verdict::Ambiguous {
                groups,
                selectors,
                served,
            } => writeln!(
                o,
                "winner: AMBIGUOUS: {} all match with {selectors} selector(s); the server answers with {served} (fix the inventory)",
                groups.join(", ")
            ),
        };
        if let Some(p) = &self.profile {
            let boot = match p.boot {
                BootMode::Ram => "ram (diskless)",
                BootMode::DiskState => "disk-state (network root, local state)",
                BootMode::Install => "install (to the local disk, once)",
            };
            let _ = writeln!(
                o,
                "profile: {} (boot: {boot}, transport: {})",
                p.name,
                match p.transport {
                    Transport::Http => "http",
                    Transport::Tftp => "tftp",
                }
            );
            let _ = writeln!(o, "  kernel args: {}", p.kernel_args.join(" "));
            if let (Some(d), Some(w)) = (&p.install_disk, p.install_overwrite) {
                let _ = writeln!(o, "  install: disk {d}, overwrite {w}");
            }
        }
        if let Some(i) = &self.image {
            let _ = writeln!(
                o,
                "image: {} (name {}, version {})",
                i.key,
                i.name.as_deref().unwrap_or("?"),
                i.version.as_deref().unwrap_or("?")
            );
            let folder = i
                .dir
                .as_ref()
                .map_or("(not loaded)".to_string(), |d| d.display().to_string());
            let _ = writeln!(
                o,
                "  folder: {folder}{}",
                if i.folder_exists { "" } else { " MISSING" }
            );
            for f in &i.files {
                let _ = match f.bytes {
                    Some(b) => writeln!(o, "  {}: {b} bytes", f.name),
                    None => writeln!(o, "  {}: MISSING (the boot needs it)", f.name),
                };
            }
        }
        if let Some(c) = &self.cloud_config {
            match (&c.template, &c.source) {
                (Some(t), Some(s)) => {
                    let _ = writeln!(o, "cloud-config: template {t} ({})", s.display());
                    let _ = match (&c.error, c.bytes) {
                        (Some(e), _) => writeln!(o, "  does NOT render for these facts: {e}"),
                        (None, Some(b)) if c.invalid.is_empty() => {
                            writeln!(o, "  renders for these facts: {b} bytes, valid")
                        }
                        (None, b) => writeln!(
                            o,
                            "  renders for these facts ({} bytes) but is INVALID: {}",
                            b.unwrap_or(0),
                            c.invalid.join("; ")
                        ),
                    };
                }
                _ => {
                    let _ = writeln!(o, "cloud-config: none (the profile has no cloud_config)");
                }
            }
        }
        if let Some(u) = &self.update {
            let _ = writeln!(o, "update: {}", u.note);
        }
        let _ = writeln!(o, "rollout: {}", self.rollout.note);
        match &self.record {
            None => {
                let _ = writeln!(
                    o,
                    "record: none (never netbooted from this server's state dir)"
                );
            }
            Some(m) => {
                let _ = writeln!(
                    o,
                    "record: {} (first seen {}, last seen {}{})",
                    m.phase.describe(),
                    time(m.first_seen),
                    time(m.last_seen),
                    m.machine_id
                        .as_deref()
                        .map(|i| format!(", machine id {i}"))
                        .unwrap_or_default()
                );
                if let Some(h) = &m.health {
                    let _ = writeln!(
                        o,
                        "  health: {} {}{}",
                        h.version,
                        if h.healthy { "healthy" } else { "unhealthy" },
                        if h.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", h.reason)
                        }
                    );
                }
                for h in &m.history {
                    let _ = writeln!(o, "  {} {}", time(h.at), h.what);
                }
            }
        }
        for u in &self.unreadable_records {
            let _ = writeln!(o, "  unreadable: {u}");
        }
        let next = self.next_netboot_text();
        let _ = writeln!(o, "next netboot: {next}");
        o
    }
}

/// `cairn serve --explain MAC`: the inventory and the records of `state_dir` read (nothing
/// written, no socket opened), the explanation of the machine with these facts.
pub fn explain_offline(
    config: &Path,
    state_dir: &Path,
    public_url: &str,
    mac: &str,
    facts: &[String],
) -> anyhow::Result<Explanation> {
    let pairs = parse_facts(facts)?;
    let facts = facts_for(Some(mac), pairs)?;
    let inv = Inventory::load(config)
        .with_context(|| format!("loading the inventory {}", config.display()))?;
    let mac = Mac::parse(facts.get("mac")).expect("facts_for checked the MAC");
    let records = RecordsView::read_state_dir(state_dir, &mac)?;
    Ok(explain(
        &inv,
        &records,
        &facts,
        &Context::offline(&inv, public_url),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::lifecycle::BootSource;
    use cairn_lifecycle::Phase;

    const MAC: &str = "52:54:00:00:00:01";

    /// Facts besides the MAC.
    type Query = &'static [(&'static str, &'static str)];

    fn image(dir: &Path, name: &str) -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("manifest.json"),
            serde_json::to_string(&image_dir::Manifest::named(name, "1.0")).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(d.join("pxe-initrd.img"), b"initrd").unwrap();
        d
    }

    fn load(dir: &Path, yaml: &str) -> Inventory {
        let p = dir.join("inv.yaml");
        std::fs::write(&p, yaml).unwrap();
        Inventory::load(&p).unwrap()
    }

    fn cx(inv: &Inventory) -> Context {
        Context {
            now: 1_000_000,
            ..Context::offline(inv, "http://boot:8080")
        }
    }

    fn facts(q: &[(&str, &str)]) -> Facts {
        facts_for(
            Some(MAC),
            q.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    const GROUPS: &str = "profiles:\n  - name: p\n    image: img\ngroups:\n\
        \x20 - name: default\n    profile: p\n\
        \x20 - name: rack1\n    profile: p\n    selector: {rack: r1}\n\
        \x20 - name: rack1-node\n    profile: p\n    selector: {rack: r1, mac: \"52-54-00-00-00-01\"}\n\
        \x20 - name: other-node\n    profile: p\n    selector: {rack: r1, mac: \"52:54:00:00:00:02\"}\n";

    fn won(e: &Explanation) -> Option<&str> {
        match &e.verdict {
            Verdict::Won { group, .. } => Some(group),
            _ => None,
        }
    }

    #[test]
    fn matching_table() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let inv = load(dir.path(), GROUPS);
        // (facts besides the MAC, winner, matched count of each group in file order)
        let table: &[(Query, &str, [usize; 4])] = &[
            (&[], "default", [0, 0, 1, 0]),
            (&[("rack", "r1")], "rack1-node", [0, 1, 2, 1]),
            (&[("rack", "r2")], "default", [0, 0, 1, 0]),
            (
                &[("rack", "r1"), ("hostname", "n1")],
                "rack1-node",
                [0, 1, 2, 1],
            ),
        ];
        for (q, want, counts) in table {
            let f = facts(q);
            let e = explain(&inv, &RecordsView::default(), &f, &cx(&inv));
            assert_eq!(won(&e), Some(*want), "{q:?}");
            // the winner is the server's own choice
            assert_eq!(won(&e), inv.select(&f).map(|g| g.name.as_str()));
            let got: Vec<usize> = e.groups.iter().map(|g| g.matched).collect();
            assert_eq!(got, counts, "{q:?}");
            assert_eq!(
                e.next_netboot_text(),
                "the diskless image img-1.0 from the network (a trial until the machine reports healthy)"
            );
        }
        // the failed selector and the value seen are named
        let e = explain(
            &inv,
            &RecordsView::default(),
            &facts(&[("rack", "r2")]),
            &cx(&inv),
        );
        let t = e.to_text();
        assert!(t.contains("  rack1 (line 7, profile p): no, 0 of 1 selector(s) match\n    rack=r1: no (the machine has r2)\n"), "{t}");
        assert!(
            t.contains("    mac=52:54:00:00:00:02: no (the machine has 52:54:00:00:00:01)\n"),
            "{t}"
        );
        assert!(
            t.contains("winner: default (0 selector(s)): the default group"),
            "{t}"
        );
        let t = explain(
            &inv,
            &RecordsView::default(),
            &facts(&[("rack", "r1")]),
            &cx(&inv),
        )
        .to_text();
        assert!(t.contains("winner: rack1-node (2 selector(s)): all 2 of its selectors match, more than the other matching group(s): default (0), rack1 (1)"), "{t}");
        assert!(
            t.contains("  other-node (line 13, profile p): no, 1 of 2 selector(s) match\n"),
            "{t}"
        );
        // a fact the server would drop is shown as dropped, and matches nothing
        let e = explain(
            &inv,
            &RecordsView::default(),
            &facts(&[("rack", "r1\n#x")]),
            &cx(&inv),
        );
        assert_eq!(won(&e), Some("default"));
        assert!(
            e.to_text().contains("dropped: rack=\"r1\\n#x\""),
            "{}",
            e.to_text()
        );
    }

    #[test]
    fn no_match_and_ambiguity() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let mut inv = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\ngroups:\n  - name: a\n    profile: p\n    selector: {rack: r1}\n  - name: b\n    profile: p\n    selector: {rack: r3}\n",
        );
        let e = explain(
            &inv,
            &RecordsView::default(),
            &facts(&[("rack", "r2")]),
            &cx(&inv),
        );
        assert!(matches!(e.verdict, Verdict::NoMatch { .. }));
        assert!(e.profile.is_none() && e.image.is_none());
        let t = e.to_text();
        assert!(t.contains("winner: none: no group matches these facts, and the inventory has no default group"), "{t}");
        assert!(
            t.contains("rack=r1: no (the machine has r2)")
                && t.contains("rack=r3: no (the machine has r2)"),
            "{t}"
        );
        assert!(
            t.contains("next netboot: no boot: the no-match script, asking again in 30 s"),
            "{t}"
        );
        // the load check refuses ambiguous groups; were two to tie anyway, explain says so and
        // names the group the server answers with
        inv.groups[1].selector = inv.groups[0].selector.clone();
        let f = facts(&[("rack", "r1")]);
        let e = explain(&inv, &RecordsView::default(), &f, &cx(&inv));
        match &e.verdict {
            Verdict::Ambiguous {
                groups,
                selectors,
                served,
            } => {
                assert_eq!(groups, &["a", "b"]);
                assert_eq!(*selectors, 1);
                assert_eq!(
                    Some(served.as_str()),
                    inv.select(&f).map(|g| g.name.as_str())
                );
            }
            v => panic!("{v:?}"),
        }
        assert!(e
            .to_text()
            .contains("winner: AMBIGUOUS: a, b all match with 1 selector(s)"));
    }

    fn e_files(inv: &Inventory) -> Vec<Option<u64>> {
        let e = explain(inv, &RecordsView::default(), &facts(&[]), &cx(inv));
        e.image.unwrap().files.iter().map(|f| f.bytes).collect()
    }

    fn machine(phase: Phase, allow_overwrite: bool) -> Machine {
        let mut m = Machine::new(MAC, 100);
        m.phase = phase;
        m.allow_overwrite = allow_overwrite;
        m
    }

    #[test]
    fn install_phases_table() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "img");
        std::fs::write(img.join("disk.raw"), b"disk").unwrap();
        let inv = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n    boot: install\ngroups:\n  - name: g\n    profile: p\n",
        );
        let installed = Phase::Installed {
            disk: "/dev/sda".into(),
            image: "img".into(),
            version: "1.0".into(),
            at: 5,
        };
        let running = |source| Phase::Running {
            image: "img".into(),
            version: "1.0".into(),
            source,
            at: 6,
        };
        let installing = |attempt| Phase::Installing {
            attempt,
            disk: None,
            since: 7,
        };
        // (record, what the next netboot gets)
        let table: Vec<(Option<Machine>, &str)> = vec![
            (None, "the installer of img-1.0 (attempt 1 of 3)"),
            (Some(machine(Phase::Seen, false)), "the installer of img-1.0 (attempt 1 of 3)"),
            (Some(machine(Phase::Seen, true)), "the installer of img-1.0 (attempt 1 of 3, may overwrite a disk with data)"),
            (Some(machine(installing(1), false)), "the installer of img-1.0 (attempt 2 of 3)"),
            (Some(machine(installing(3), false)), "refused: install failed 3 times: the installer was started 3 times and never reported a finished install (an operator's POST /lifecycle/reinstall?mac=52:54:00:00:00:01 to cairn serve tries again)"),
            (Some(machine(Phase::InstallFailed { reason: "disk gone".into(), attempts: 1, at: 8 }, false)), "the installer of img-1.0 (attempt 2 of 3)"),
            (Some(machine(installed.clone(), false)), "its local disk (installed img 1.0 on /dev/sda)"),
            (Some(machine(running(BootSource::A), false)), "its local disk (running img 1.0 from slot a)"),
            (Some(machine(running(BootSource::Ram), false)), "the installer of img-1.0 (attempt 1 of 3)"),
            (Some(machine(Phase::InstallRefused { reason: "/dev/sda holds data".into(), at: 9 }, false)), "refused: install refused: /dev/sda holds data (an operator can allow it: POST /lifecycle/reinstall?mac=52:54:00:00:00:01&overwrite=1 to cairn serve)"),
        ];
        for (record, want) in table {
            let records = RecordsView {
                machine: record.clone(),
                ..RecordsView::default()
            };
            let e = explain(&inv, &records, &facts(&[]), &cx(&inv));
            assert_eq!(e.next_netboot_text(), want, "{record:?}");
            // read only: the record explained is the record given
            assert_eq!(e.record, record);
            assert_eq!(records.machine, record);
            let t = e.to_text();
            assert!(t.contains(&format!("next netboot: {want}\n")), "{t}");
            match &record {
                Some(m) => assert!(
                    t.contains(&format!(
                        "record: {} (first seen 1970-01-01T00:01:40Z",
                        m.phase.describe()
                    )),
                    "{t}"
                ),
                None => assert!(t.contains("record: none"), "{t}"),
            }
        }
        assert_eq!(
            e_files(&inv),
            [Some(6), Some(6), Some(4)],
            "install needs the kernel, the initrd and disk.raw"
        );
        // disk.raw gone after the inventory loaded
        std::fs::remove_file(img.join("disk.raw")).unwrap();
        let e = explain(&inv, &RecordsView::default(), &facts(&[]), &cx(&inv));
        assert_eq!(e.image.as_ref().unwrap().missing(), ["disk.raw"]);
        assert!(e
            .to_text()
            .contains("  disk.raw: MISSING (the boot needs it)\n"));
    }

    #[test]
    fn diskless_ab_table() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let old = dir.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(
            old.join("manifest.json"),
            serde_json::to_string(&image_dir::Manifest::named("img", "0.9")).unwrap(),
        )
        .unwrap();
        std::fs::write(old.join("vmlinuz"), b"k").unwrap();
        std::fs::write(old.join("pxe-initrd.img"), b"i").unwrap();
        let inv = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n  - name: o\n    image: old\ngroups:\n  - name: g\n    profile: p\n",
        );
        let now = cx(&inv).now;
        let with = |good: Option<&str>, bad: Option<&str>, trial: Option<i64>| {
            let mut m = Machine::new(MAC, 100);
            m.diskless.good = good.map(String::from);
            if let Some(v) = bad {
                m.diskless.bad.insert(
                    v.into(),
                    cairn_lifecycle::diskless::Bad {
                        reason: "health gate: fleet.service failed".into(),
                        at: 50,
                    },
                );
            }
            m.diskless.trial = trial.map(|since| cairn_lifecycle::diskless::Trial {
                version: "1.0".into(),
                since,
            });
            Some(m)
        };
        // (record, next netboot)
        let table: Vec<(Option<Machine>, &str)> = vec![
            (None, "the diskless image img-1.0 from the network (a trial until the machine reports healthy)"),
            (with(Some("1.0"), None, None), "the diskless image img-1.0 from the network"),
            (with(Some("0.9"), Some("1.0"), None), "the diskless image img-0.9 from the network (its last good image, not img-1.0: 1.0 failed here: health gate: fleet.service failed)"),
            (with(Some("0.8"), Some("1.0"), None), "the diskless image img-1.0 from the network (1.0 failed here: health gate: fleet.service failed; its last good image img-0.8 is in no image folder of the inventory)"),
            (with(Some("0.9"), None, Some(now - 700)), "the diskless image img-0.9 from the network (its last good image, not img-1.0: 1.0 failed here: no healthy report within 600 s of being served (netbooted again after 700 s))"),
        ];
        for (record, want) in table {
            let records = RecordsView {
                machine: record.clone(),
                ..RecordsView::default()
            };
            let e = explain(&inv, &records, &facts(&[]), &cx(&inv));
            assert_eq!(e.next_netboot_text(), want, "{record:?}");
            assert_eq!(records.machine, record, "read only");
        }
    }

    #[test]
    fn missing_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "img");
        let inv = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n    boot: disk-state\ngroups:\n  - name: g\n    profile: p\n",
        );
        let e = explain(&inv, &RecordsView::default(), &facts(&[]), &cx(&inv));
        let i = e.image.as_ref().unwrap();
        assert!(i.folder_exists && i.missing().is_empty());
        assert_eq!(
            (i.name.as_deref(), i.version.as_deref()),
            (Some("img"), Some("1.0"))
        );
        assert_eq!(
            i.files.iter().map(|f| f.bytes).collect::<Vec<_>>(),
            [Some(6), Some(6)]
        );
        assert_eq!(
            e.next_netboot_text(),
            "the image img-1.0 from the network, state on the partition labelled cairn-state (a trial until the machine reports healthy)"
        );
        // the files go away after the inventory loaded
        std::fs::remove_file(img.join("pxe-initrd.img")).unwrap();
        let e = explain(&inv, &RecordsView::default(), &facts(&[]), &cx(&inv));
        assert_eq!(e.image.as_ref().unwrap().missing(), ["pxe-initrd.img"]);
        std::fs::remove_dir_all(&img).unwrap();
        let e = explain(&inv, &RecordsView::default(), &facts(&[]), &cx(&inv));
        let t = e.to_text();
        assert!(
            t.contains(
                " MISSING\n  vmlinuz: MISSING (the boot needs it)\n  pxe-initrd.img: MISSING"
            ),
            "{t}"
        );
    }

    #[test]
    fn template_table() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        std::fs::write(
            dir.path().join("node.j2"),
            "#cloud-config\nhostname: {{ metadata.name }}\n{% if request.query.role is defined and request.query.role == \"etcd\" %}coreos:\n  etcd2:\n    name: {{ metadata.etcd_name }}\n{% endif %}",
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.j2"), "hostname: {{ mac }}\n").unwrap();
        let inv = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n    cloud_config: node.j2\n  - name: q\n    image: img\ngroups:\n  - name: g\n    profile: p\n    metadata: {name: n1}\n  - name: plain\n    profile: q\n    selector: {rack: plain}\n",
        );
        // (facts, renders, fragment of the text)
        let table: &[(Query, bool, &str)] = &[
            (&[], true, "  renders for these facts: 27 bytes, valid\n"),
            (&[("role", "worker")], true, "renders for these facts"),
            (
                &[("role", "etcd")],
                false,
                "  does NOT render for these facts: undefined value",
            ),
            (
                &[("rack", "plain")],
                false,
                "cloud-config: none (the profile has no cloud_config)\n",
            ),
        ];
        for (q, renders, frag) in table {
            let e = explain(&inv, &RecordsView::default(), &facts(q), &cx(&inv));
            let c = e.cloud_config.as_ref().unwrap();
            assert_eq!(c.renders, *renders, "{q:?}");
            let t = e.to_text();
            assert!(t.contains(frag), "{q:?}: {t}");
            if c.template.is_some() {
                assert_eq!(
                    c.source.as_deref(),
                    Some(dir.path().join("node.j2").as_path())
                );
                assert!(
                    t.contains(&format!(
                        "cloud-config: template node.j2 ({})\n",
                        dir.path().join("node.j2").display()
                    )),
                    "{t}"
                );
            }
        }
        let e = explain(&inv, &RecordsView::default(), &facts(&[]), &cx(&inv));
        assert_eq!(e.update.as_ref().unwrap().channel, None);
        let t = e.to_text();
        assert!(
            t.contains("update: no update channel: the image folder has no signed bundle"),
            "{t}"
        );
        assert!(
            t.contains("rollout: no rollout (the image is on no update channel)\n"),
            "{t}"
        );
    }

    #[test]
    fn facts_and_records_read_only() {
        assert!(matches!(facts_for(None, []), Err(ExplainError::MissingMac)));
        let e = facts_for(Some("52:54:00"), []).unwrap_err().to_string();
        assert!(
            e.starts_with("mac: \"52:54:00\" is not a MAC address"),
            "{e}"
        );
        let f = facts_for(Some("52-54-00-00-00-0A"), [("uuid".into(), "AB-CD".into())]).unwrap();
        assert_eq!(f.get("mac"), "52:54:00:00:00:0a");
        assert_eq!(f.get("uuid"), "ab-cd");
        assert_eq!(
            parse_facts(&["rack=r1".into(), "note=a=b".into()]).unwrap(),
            [("rack".into(), "r1".into()), ("note".into(), "a=b".into())]
        );
        assert!(parse_facts(&["rack".into()]).is_err());
        // the records on disk, as the server's file store keeps them, read without its lock
        let state = tempfile::tempdir().unwrap();
        let mac = Mac::parse(MAC).unwrap();
        let none = RecordsView::read_state_dir(state.path(), &mac).unwrap();
        assert!(none.machine.is_none() && none.rollouts.is_empty());
        assert!(!state.path().join("lifecycle").exists(), "nothing created");
        let store = cairn_lifecycle::FileStore::open(state.path()).unwrap();
        let (mut l, _) =
            cairn_lifecycle::Lifecycle::open(std::sync::Arc::new(store), Default::default())
                .unwrap();
        l.install_boot(MAC, 100).unwrap();
        // the server still runs (its lock is held): explain reads anyway
        let v = RecordsView::read_state_dir(state.path(), &mac).unwrap();
        assert_eq!(v.machine.as_ref(), l.machine(MAC));
        assert_eq!(v.machine.unwrap().phase.name(), "installing");
    }
}
