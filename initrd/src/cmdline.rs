//! The kernel command line as `/init` understands it: splitting
//! `/proc/cmdline` into words (with the kernel's double-quote rule) and
//! turning the `cairn.*` parameters, `init=` and `console=` into a
//! [`Cmdline`]. Pure: it reads no file.
//!
//! | parameter | meaning |
//! |---|---|
//! | `cairn.slot=a\|b` | root slot: the partition labelled `cairn-a` / `cairn-b` (required unless `cairn.root=ram`) |
//! | `cairn.root=ram` | the root squashfs is `/rootfs.squashfs` inside the initramfs (network boot); `disk` (default) means the slot partition |
//! | `cairn.state=auto\|tmpfs\|label:NAME` | writable state: `auto` (default) is the partition labelled `cairn-state` on the slot's disk, or tmpfs with `cairn.root=ram`; `tmpfs` is diskless; `label:NAME` a partition with that GPT label on any disk |
//! | `cairn.timeout=SECONDS` | how long to wait for each device (default 30) |
//! | `cairn.debug` | print every step with the time elapsed since `/init` started |
//! | `cairn.verity=ROOTHASH:SALT:BLOCKS` | open the root through dm-verity with these parameters (`cairn_formats::verity`); without it the root is mounted unverified; a malformed value stops the boot |
//! | `cairn.tries=N` | unfinished boots of one slot's entry (boots that never reached `boot-complete.target`) after which `/init` marks the entry bad, with `cairn.verity=` on a disk (default 3, 1 to 9) |
//! | `init=PATH` | program to run in the real root (default `/sbin/init`) |
//! | `console=...` | the kernel's; kept for information, `/init` writes to `/dev/console` |

use std::time::Duration;

use cairn_formats::cmdline as keys;
pub use cairn_formats::cmdline::split_words;
/// Which root slot to boot.
pub use cairn_formats::Slot;

/// Where the root squashfs comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootSource {
    /// The slot partition (its content is the squashfs image).
    #[default]
    Disk,
    /// `/rootfs.squashfs` in the initramfs, attached to a loop device.
    Ram,
}

/// Where the writable state lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateSource {
    /// `cairn-state` on the slot's disk; tmpfs when the root is in RAM.
    #[default]
    Auto,
    /// A tmpfs: nothing survives a reboot.
    Tmpfs,
    /// The partition with this GPT label, on any disk.
    Label(String),
}

/// Default for `cairn.timeout=`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `cairn.tries=`.
pub const DEFAULT_TRIES: u32 = 3;
/// `cairn.tries=`: see the module's table.
pub const TRIES: &str = "cairn.tries";
/// Default for `init=`.
pub const DEFAULT_INIT: &str = "/sbin/init";
/// Label of the state partition.
pub use cairn_formats::partitions::STATE_LABEL;

/// What `/init` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub slot: Option<Slot>,
    pub root: RootSource,
    pub state: StateSource,
    pub timeout: Duration,
    pub debug: bool,
    /// `cairn.verity=`: the root's dm-verity parameters.
    pub verity: Option<cairn_formats::verity::Verity>,
    /// `cairn.tries=`.
    pub tries: u32,
    pub init: String,
    /// Every `console=` value, in order (the last one is `/dev/console`).
    pub consoles: Vec<String>,
    /// `cairn.*` words that were not understood (reported as warnings).
    pub unknown: Vec<String>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            slot: None,
            root: RootSource::Disk,
            state: StateSource::Auto,
            timeout: DEFAULT_TIMEOUT,
            debug: false,
            verity: None,
            tries: DEFAULT_TRIES,
            init: DEFAULT_INIT.to_owned(),
            consoles: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

/// A parameter with a value `/init` cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel command line: {param}={value:?}: {why}")]
pub struct CmdlineError {
    pub param: String,
    pub value: String,
    pub why: &'static str,
}

/// Parses the text of `/proc/cmdline`. Later words override earlier ones.
pub fn parse(cmdline: &str) -> Result<Cmdline, CmdlineError> {
    let mut c = Cmdline::default();
    let err = |param: &str, value: &str, why| CmdlineError {
        param: param.to_owned(),
        value: value.to_owned(),
        why,
    };
    for word in split_words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        match (key, value) {
            (keys::SLOT, Some(v)) => {
                c.slot = Some(
                    Slot::from_cmdline_value(v).ok_or_else(|| err(key, v, "expected a or b"))?,
                )
            }
            (keys::ROOT, Some(v)) => {
                c.root = match v {
                    "ram" => RootSource::Ram,
                    "disk" => RootSource::Disk,
                    _ => return Err(err(key, v, "expected ram or disk")),
                }
            }
            (keys::STATE, Some(v)) => c.state = match v {
                "auto" => StateSource::Auto,
                "tmpfs" => StateSource::Tmpfs,
                _ => match v.strip_prefix("label:") {
                    Some(l) if !l.is_empty() && l.encode_utf16().count() <= 36 => {
                        StateSource::Label(l.to_owned())
                    }
                    _ => return Err(err(
                        key,
                        v,
                        "expected auto, tmpfs or label:NAME (a GPT label of at most 36 characters)",
                    )),
                },
            },
            (keys::TIMEOUT, Some(v)) => {
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
                    .ok_or_else(|| err(key, v, "expected a number of seconds"))?;
                c.timeout = Duration::from_secs_f64(secs);
            }
            (keys::DEBUG, None | Some("1" | "yes" | "true")) => c.debug = true,
            (keys::DEBUG, Some("0" | "no" | "false")) => c.debug = false,
            (keys::VERITY, v) => {
                let v = v.unwrap_or("");
                c.verity = Some(cairn_formats::verity::Verity::parse(v).map_err(|_| {
                    err(
                        key,
                        v,
                        "expected <root hash, 64 hex digits>:<salt, 64 hex digits>:<data blocks, a positive number>; not booting an unverified root",
                    )
                })?)
            }
            (TRIES, Some(v)) => {
                c.tries = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| err(key, v, "expected a number from 1 to 9"))?
            }
            ("init", Some(v)) => {
                if !v.starts_with('/') {
                    return Err(err(key, v, "expected an absolute path"));
                }
                c.init = v.to_owned();
            }
            ("console", Some(v)) => c.consoles.push(v.to_owned()),
            (k, _) if keys::FOR_THE_SYSTEM.contains(&k) => {}
            (k, _) if k.starts_with("cairn.") => c.unknown.push(word.clone()),
            _ => {}
        }
    }
    if c.slot.is_none() && c.root == RootSource::Disk {
        return Err(err(
            keys::SLOT,
            "",
            "missing: expected cairn.slot=a or cairn.slot=b",
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_disk_boot() {
        let c = parse("BOOT_IMAGE=/vmlinuz console=tty0 console=ttyS0,115200n8 cairn.slot=b cairn.debug quiet\n")
            .unwrap();
        assert_eq!(c.slot, Some(Slot::B));
        assert_eq!(c.slot.unwrap().label(), "cairn-b");
        assert_eq!(c.root, RootSource::Disk);
        assert_eq!(c.state, StateSource::Auto);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(c.debug);
        assert_eq!(c.init, "/sbin/init");
        assert_eq!(c.consoles, ["tty0", "ttyS0,115200n8"]);
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn network_boot_and_overrides() {
        let c = parse("cairn.root=ram cairn.state=label:my-state cairn.timeout=2.5 init=/usr/lib/systemd/systemd cairn.frob=1 cairn.debug=0").unwrap();
        assert_eq!(c.slot, None);
        assert_eq!(c.root, RootSource::Ram);
        assert_eq!(c.state, StateSource::Label("my-state".into()));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.init, "/usr/lib/systemd/systemd");
        assert_eq!(c.unknown, ["cairn.frob=1"]);
        // the booted system's keys are not /init's, and not unknown either
        let c = parse("cairn.root=ram cairn.report=http://s cairn.report.mac=52:54:00:00:00:01 cairn.report.trial=1 cairn.install=http://s cairn.install.image=a-1 cairn.install.disk=first-empty cairn.install.overwrite=1 cairn.install.mac=52:54:00:00:00:01 cairn.cloudinit=0 cairn.metadata=ec2 cairn.metadata.imdsv1=1").unwrap();
        assert!(c.unknown.is_empty(), "{:?}", c.unknown);
        assert!(!c.debug);
        assert_eq!(
            parse("cairn.slot=a cairn.state=tmpfs").unwrap().state,
            StateSource::Tmpfs
        );
        // Later words win.
        assert_eq!(
            parse("cairn.slot=a cairn.slot=b").unwrap().slot,
            Some(Slot::B)
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = parse("cairn.slot=c").unwrap_err();
        assert_eq!(e.param, "cairn.slot");
        assert!(e.to_string().contains("cairn.slot=\"c\""), "{e}");
        assert!(parse("quiet").unwrap_err().to_string().contains("missing"));
        assert!(parse("cairn.slot=a cairn.state=label:").is_err());
        assert!(parse("cairn.slot=a cairn.state=disk").is_err());
        assert!(parse("cairn.slot=a cairn.timeout=-1").is_err());
        assert!(parse("cairn.slot=a cairn.timeout=soon").is_err());
        assert!(parse("cairn.slot=a cairn.root=nfs").is_err());
        assert!(parse("cairn.slot=a init=sbin/init").is_err());
    }

    #[test]
    fn verity_and_tries() {
        let v = format!("{}:{}:7", "ab".repeat(32), "cd".repeat(32));
        let c = parse(&format!("cairn.slot=a cairn.verity={v} cairn.tries=1")).unwrap();
        assert_eq!(c.verity.unwrap().data_blocks, 7);
        assert_eq!(c.tries, 1);
        assert!(c.unknown.is_empty());
        let c = parse("cairn.slot=a").unwrap();
        assert_eq!((c.verity, c.tries), (None, DEFAULT_TRIES));
        for bad in ["cairn.verity=", "cairn.verity=abc", "cairn.verity"] {
            let e = parse(&format!("cairn.slot=a {bad}")).unwrap_err();
            assert_eq!(e.param, "cairn.verity");
            assert!(
                e.to_string().contains("not booting an unverified root"),
                "{e}"
            );
        }
        assert!(parse("cairn.slot=a cairn.tries=0").is_err());
        assert!(parse("cairn.slot=a cairn.tries=10").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(
            split_words("a \"b c\" d=\"e f\"  \tg\n"),
            ["a", "b c", "d=e f", "g"]
        );
        assert_eq!(split_words(""), Vec::<String>::new());
        assert_eq!(split_words("x=\"\""), ["x="]);
        let c = parse("cairn.slot=a \"init=/bin/my init\"").unwrap();
        assert_eq!(c.init, "/bin/my init");
    }
}
