//! `/etc/cairn/update.conf`, as cloud-config's `coreos.update` (and
//! `coreos.locksmith`'s window) writes it through `cairn-cloudinit`:
//! `KEY=value` lines, `#` comments. Keys: `REBOOT_STRATEGY`
//! (`reboot`, `off`, `window`, `best-effort`, `etcd-lock`), `GROUP` (the
//! channel), `SERVER` (base URL of `cairn serve`), `REBOOT_WINDOW_START`
//! (`[Day ]HH:MM`, UTC) and `REBOOT_WINDOW_LENGTH` (`1h`, `1h30m`, `45m`),
//! as locksmith took them, and `LOCKSMITHD_ENDPOINT` (the etcd client URLs
//! of the cluster reboot lock, comma-separated, as locksmith's; the first
//! is used; default the local member). cairn's own, for `etcd-lock` on a
//! cluster that runs fleet: `DRAIN_TIMEOUT` (how long to wait, after
//! taking the lock, for fleet to move this machine's units off and stop
//! them; `5m` by default, `0` not at all) and `FLEET_ETCD_KEY_PREFIX`
//! (fleet's `etcd_key_prefix`, `/cairn/fleet/` by default). Also the
//! reboot decision (`may_reboot_now`).

use std::time::Duration;

use std::path::Path;

use crate::error::{Result, UpdateError};

/// The default channel when `GROUP` is not set (CoreOS's default group).
pub const DEFAULT_CHANNEL: &str = "stable";

/// When a staged update is rebooted into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Reboot as soon as the update is staged (inside the window, if one
    /// is set).
    Reboot,
    /// Stage only; an operator reboots.
    Off,
    /// Reboot only inside the window (which must be set).
    Window,
    /// CoreOS's `best-effort` (`etcd-lock` when etcd runs, else `reboot`):
    /// cairn does not take the cluster lock for it and behaves as `reboot`.
    BestEffort,
    /// Take a slot of the cluster reboot lock in the local etcd first
    /// (locksmith's semaphore, `crate::lock`), asking again while every
    /// slot is held, inside the window if one is set; the health gate of
    /// the new slot gives the slot back.
    EtcdLock,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Reboot => "reboot",
            Strategy::Off => "off",
            Strategy::Window => "window",
            Strategy::BestEffort => "best-effort",
            Strategy::EtcdLock => "etcd-lock",
        }
    }
}

/// A weekly or daily reboot window, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// 0 = Monday .. 6 = Sunday; `None` = every day.
    pub day: Option<u8>,
    /// Seconds after midnight.
    pub start: u32,
    /// Seconds.
    pub length: u32,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl Window {
    /// Parses `[Day ]HH:MM` and a length (`1h`, `30m`, `1h30m`, `90s`).
    pub fn parse(start: &str, length: &str) -> std::result::Result<Window, String> {
        let words: Vec<&str> = start.split_whitespace().collect();
        let (day, hm) = match words.as_slice() {
            [hm] => (None, *hm),
            [d, hm] => {
                let d = d.to_ascii_lowercase();
                let i = DAYS
                    .iter()
                    .position(|full| *full == d || (d.len() == 3 && full.starts_with(&d)))
                    .ok_or_else(|| {
                        format!("REBOOT_WINDOW_START: {start:?}: unknown day (expected Mon..Sun)")
                    })?;
                (Some(i as u8), *hm)
            }
            _ => {
                return Err(format!(
                    "REBOOT_WINDOW_START: {start:?}: expected \"[Day ]HH:MM\", e.g. \"Thu 04:00\""
                ))
            }
        };
        let (h, m) = hm
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .ok_or_else(|| {
                format!("REBOOT_WINDOW_START: {start:?}: expected HH:MM (00:00-23:59)")
            })?;
        let length = parse_duration(length).filter(|l| *l > 0).ok_or_else(|| {
            format!("REBOOT_WINDOW_LENGTH: {length:?}: expected a duration such as 1h, 30m, 1h30m")
        })?;
        let period = if day.is_some() { 7 * 86400 } else { 86400 };
        if length > period {
            return Err(format!(
                "REBOOT_WINDOW_LENGTH: {length} s is longer than the window's period ({period} s)"
            ));
        }
        Ok(Window {
            day,
            start: h * 3600 + m * 60,
            length,
        })
    }

    /// Whether `now` (seconds since the epoch) is inside the window.
    pub fn contains(&self, now: i64) -> bool {
        let (offset, period) = self.offset_period();
        (now - offset).rem_euclid(period) < i64::from(self.length)
    }

    /// Seconds from `now` until the window next opens (0 when open).
    pub fn wait(&self, now: i64) -> i64 {
        if self.contains(now) {
            return 0;
        }
        let (offset, period) = self.offset_period();
        period - (now - offset).rem_euclid(period)
    }

    fn offset_period(&self) -> (i64, i64) {
        // 1970-01-01 was a Thursday (index 3)
        match self.day {
            Some(d) => (
                (i64::from(d) - 3).rem_euclid(7) * 86400 + i64::from(self.start),
                7 * 86400,
            ),
            None => (i64::from(self.start), 86400),
        }
    }
}

/// `1h30m`, `45m`, `90s`, `2h` (Go-style, as locksmith took them).
fn parse_duration(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            total += n * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
        }
    }
    if !num.is_empty() {
        return None;
    }
    u32::try_from(total).ok()
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub strategy: Strategy,
    pub channel: String,
    /// Base URL; manifests are at `SERVER/update/v1/<channel>/manifest`.
    pub server: Option<String>,
    pub window: Option<Window>,
    /// etcd client URLs for `etcd-lock` (`LOCKSMITHD_ENDPOINT`).
    pub etcd_endpoints: Vec<String>,
    /// `etcd-lock` on a fleet cluster: the longest wait for fleet's drain
    /// mark after taking the lock (`DRAIN_TIMEOUT`; zero: no wait).
    pub drain_timeout: Duration,
    /// fleet's key prefix (`FLEET_ETCD_KEY_PREFIX`).
    pub fleet_prefix: String,
}

/// How long `etcd-lock` waits for fleet's drain by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest `DRAIN_TIMEOUT` taken: an hour (the lock is held meanwhile,
/// and no other machine of the cluster updates).
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// The local etcd member, as locksmith used by default.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: Strategy::Reboot,
            channel: DEFAULT_CHANNEL.into(),
            server: None,
            window: None,
            etcd_endpoints: vec![DEFAULT_ETCD_ENDPOINT.to_string()],
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            fleet_prefix: cairn_formats::reboot_lock::fleet::DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Config {
    /// Parses update.conf text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut c = Config::default();
        let (mut start, mut length) = (None, None);
        let err = |line: usize, why: String| UpdateError::KeyFile {
            path: path.to_path_buf(),
            line,
            why,
        };
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| err(n, format!("expected KEY=value, found {line:?}")))?;
            let k = k.trim();
            let v = unquote(v.trim());
            match k {
                "REBOOT_STRATEGY" => {
                    c.strategy = match v.as_str() {
                        "reboot" => Strategy::Reboot,
                        "off" => Strategy::Off,
                        "window" => Strategy::Window,
                        "best-effort" => Strategy::BestEffort,
                        "etcd-lock" => Strategy::EtcdLock,
                        _ => {
                            return Err(err(
                                n,
                                format!(
                                "REBOOT_STRATEGY: {v:?}: expected reboot, off, window, best-effort or etcd-lock"
                            ),
                            ))
                        }
                    }
                }
                "GROUP" => {
                    if !cairn_formats::channel::manifest::safe_name(&v) {
                        return Err(err(
                            n,
                            format!("GROUP: {v:?}: expected letters, digits, '.', '_', '-'"),
                        ));
                    }
                    c.channel = v;
                }
                "SERVER" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(err(
                            n,
                            format!("SERVER: {v:?}: expected an http:// or https:// URL"),
                        ));
                    }
                    c.server = Some(v.trim_end_matches('/').to_string());
                }
                "LOCKSMITHD_ENDPOINT" => {
                    let urls: Vec<String> = v
                        .split(',')
                        .map(|u| u.trim().trim_end_matches('/').to_string())
                        .filter(|u| !u.is_empty())
                        .collect();
                    if urls.is_empty()
                        || urls
                            .iter()
                            .any(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                    {
                        return Err(err(
                            n,
                            format!("LOCKSMITHD_ENDPOINT: {v:?}: expected etcd client URLs (http:// or https://), comma-separated"),
                        ));
                    }
                    c.etcd_endpoints = urls;
                }
                "DRAIN_TIMEOUT" => {
                    let secs = if v == "0" { Some(0) } else { parse_duration(&v) };
                    c.drain_timeout = secs
                        .map(|s| Duration::from_secs(s.into()))
                        .filter(|d| *d <= MAX_DRAIN_TIMEOUT)
                        .ok_or_else(|| {
                            err(
                                n,
                                format!("DRAIN_TIMEOUT: {v:?}: expected 0 or a duration up to 1h, such as 5m, 90s"),
                            )
                        })?;
                }
                "FLEET_ETCD_KEY_PREFIX" => {
                    let ok = v.starts_with('/')
                        && v.ends_with('/')
                        && !v.contains("//")
                        && v.chars().all(|c| c.is_ascii_graphic());
                    if !ok {
                        return Err(err(
                            n,
                            format!("FLEET_ETCD_KEY_PREFIX: {v:?}: expected an absolute path that ends in '/', like /cairn/fleet/"),
                        ));
                    }
                    c.fleet_prefix = v;
                }
                "REBOOT_WINDOW_START" => start = Some((n, v)),
                "REBOOT_WINDOW_LENGTH" => length = Some((n, v)),
                _ => {
                    return Err(err(
                        n,
                        format!(
                        "unknown key {k:?} (expected REBOOT_STRATEGY, GROUP, SERVER, REBOOT_WINDOW_START, REBOOT_WINDOW_LENGTH, LOCKSMITHD_ENDPOINT, DRAIN_TIMEOUT, FLEET_ETCD_KEY_PREFIX)"
                    ),
                    ))
                }
            }
        }
        match (start, length) {
            (Some((n, s)), Some((_, l))) => {
                c.window = Some(Window::parse(&s, &l).map_err(|why| err(n, why))?)
            }
            (Some((n, _)), None) => {
                return Err(err(
                    n,
                    "REBOOT_WINDOW_START without REBOOT_WINDOW_LENGTH".into(),
                ))
            }
            (None, Some((n, _))) => {
                return Err(err(
                    n,
                    "REBOOT_WINDOW_LENGTH without REBOOT_WINDOW_START".into(),
                ))
            }
            (None, None) => {}
        }
        if c.strategy == Strategy::Window && c.window.is_none() {
            return Err(err(
                0,
                "REBOOT_STRATEGY=window needs REBOOT_WINDOW_START and REBOOT_WINDOW_LENGTH".into(),
            ));
        }
        Ok(c)
    }

    /// Reads the file; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => Config::parse(&t, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(UpdateError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// The manifest URL (and the base the parts are relative to).
    pub fn channel_url(&self) -> Option<String> {
        self.server
            .as_ref()
            .map(|s| format!("{s}/update/v1/{}/", self.channel))
    }

    /// Whether a staged update may be rebooted into at `now`, and why not.
    pub fn may_reboot_now(&self, now: i64) -> std::result::Result<(), String> {
        match self.strategy {
            Strategy::Off => return Err("REBOOT_STRATEGY=off: reboot by hand".into()),
            // etcd-lock: the window applies here; the lock itself is taken by the caller
            Strategy::Reboot | Strategy::BestEffort | Strategy::Window | Strategy::EtcdLock => {}
        }
        match &self.window {
            Some(w) if !w.contains(now) => Err(format!(
                "outside the reboot window (opens in {} min)",
                (w.wait(now) + 59) / 60
            )),
            _ => Ok(()),
        }
    }
}

fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-11-27T01:46:40Z, a Thursday.
    const THU: i64 = 1_764_208_000;

    #[test]
    fn cloudinit_output_parses() {
        // exactly what cairn-cloudinit writes (its services.rs test)
        let text = "# operator\nREBOOT_STRATEGY=etcd-lock\nGROUP=beta\nSERVER=http://u.example.invalid/v1\nREBOOT_WINDOW_START=Sun 1:00\nREBOOT_WINDOW_LENGTH=2h\n";
        let c = Config::parse(text, Path::new("update.conf")).unwrap();
        assert_eq!(c.strategy, Strategy::EtcdLock);
        assert_eq!(c.channel, "beta");
        assert_eq!(c.server.as_deref(), Some("http://u.example.invalid/v1"));
        assert_eq!(
            c.window,
            Some(Window {
                day: Some(6),
                start: 3600,
                length: 7200
            })
        );
        assert_eq!(
            c.channel_url().unwrap(),
            "http://u.example.invalid/v1/update/v1/beta/"
        );
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
        assert_eq!(c.etcd_endpoints, [DEFAULT_ETCD_ENDPOINT]);
    }

    #[test]
    fn the_lock_endpoint_is_locksmiths() {
        let c = Config::parse(
            "LOCKSMITHD_ENDPOINT=http://10.0.0.1:2379/, http://10.0.0.2:2379\n",
            Path::new("update.conf"),
        )
        .unwrap();
        assert_eq!(
            c.etcd_endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in ["LOCKSMITHD_ENDPOINT=", "LOCKSMITHD_ENDPOINT=10.0.0.1:2379"] {
            let e = Config::parse(bad, Path::new("update.conf"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("update.conf:1") && e.contains("LOCKSMITHD_ENDPOINT"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_drain_settings() {
        let d = Config::default();
        assert_eq!(d.drain_timeout, Duration::from_secs(300));
        assert_eq!(d.fleet_prefix, "/cairn/fleet/");
        let c = Config::parse(
            "DRAIN_TIMEOUT=90s\nFLEET_ETCD_KEY_PREFIX=/x/fleet/\n",
            Path::new("update.conf"),
        )
        .unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(90));
        assert_eq!(c.fleet_prefix, "/x/fleet/");
        let c = Config::parse("DRAIN_TIMEOUT=0\n", Path::new("update.conf")).unwrap();
        assert!(c.drain_timeout.is_zero());
        for (bad, key) in [
            ("DRAIN_TIMEOUT=5 minutes", "DRAIN_TIMEOUT"),
            ("DRAIN_TIMEOUT=2h", "DRAIN_TIMEOUT"),
            ("DRAIN_TIMEOUT=", "DRAIN_TIMEOUT"),
            ("FLEET_ETCD_KEY_PREFIX=cairn/fleet", "FLEET_ETCD_KEY_PREFIX"),
            ("FLEET_ETCD_KEY_PREFIX=/a//b/", "FLEET_ETCD_KEY_PREFIX"),
        ] {
            let e = Config::parse(bad, Path::new("update.conf"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("update.conf:1") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn errors_name_file_line_key() {
        let p = Path::new("/etc/cairn/update.conf");
        for (text, want) in [
            (
                "\nREBOOT_STRATEGY=sometimes\n",
                ":2: REBOOT_STRATEGY: \"sometimes\"",
            ),
            ("SERVER=ftp://x\n", ":1: SERVER"),
            ("GROUP=a/b\n", ":1: GROUP"),
            ("REBOOT_STRATGY=off\n", ":1: unknown key \"REBOOT_STRATGY\""),
            ("just words\n", ":1: expected KEY=value"),
            (
                "REBOOT_WINDOW_START=Thu 04:00\n",
                ":1: REBOOT_WINDOW_START without",
            ),
            (
                "REBOOT_WINDOW_START=Thu 25:00\nREBOOT_WINDOW_LENGTH=1h\n",
                ":1: REBOOT_WINDOW_START: \"Thu 25:00\"",
            ),
            (
                "REBOOT_WINDOW_START=Caturday 04:00\nREBOOT_WINDOW_LENGTH=1h\n",
                "unknown day",
            ),
            (
                "REBOOT_WINDOW_LENGTH=1 hour\nREBOOT_WINDOW_START=04:00\n",
                "REBOOT_WINDOW_LENGTH: \"1 hour\"",
            ),
            (
                "REBOOT_WINDOW_LENGTH=25h\nREBOOT_WINDOW_START=04:00\n",
                "longer than",
            ),
            (
                "REBOOT_STRATEGY=window\n",
                ":0: REBOOT_STRATEGY=window needs",
            ),
        ] {
            let e = Config::parse(text, p).unwrap_err().to_string();
            assert!(
                e.starts_with("/etc/cairn/update.conf:") && e.contains(want),
                "want {want:?}: {e}"
            );
        }
    }

    #[test]
    fn windows() {
        // Thu 04:00 for 1h
        let w = Window::parse("Thu 04:00", "1h").unwrap();
        let thu0400 = THU - (3600 + 46 * 60 + 40) + 4 * 3600;
        assert!(!w.contains(THU));
        assert!(w.contains(thu0400));
        assert!(w.contains(thu0400 + 3599));
        assert!(!w.contains(thu0400 + 3600));
        assert!(w.contains(thu0400 + 7 * 86400));
        assert!(!w.contains(thu0400 + 86400));
        assert_eq!(w.wait(thu0400 - 60), 60);
        assert_eq!(w.wait(thu0400 + 3600), 7 * 86400 - 3600);
        // daily, crossing midnight
        let d = Window::parse("23:30", "1h").unwrap();
        let midnight = THU - (3600 + 46 * 60 + 40);
        assert!(d.contains(midnight + 10 * 60));
        assert!(d.contains(midnight - 10 * 60));
        assert!(!d.contains(midnight + 31 * 60));
        assert_eq!(Window::parse("monday 0:05", "1h30m").unwrap().day, Some(0));
        assert_eq!(Window::parse("Sun 00:00", "45m").unwrap().length, 2700);
        assert!(Window::parse("Thu", "1h").is_err());
        assert!(Window::parse("Thu 04:00", "0m").is_err());
    }

    #[test]
    fn reboot_decisions() {
        let mut c = Config::default();
        assert!(c.may_reboot_now(THU).is_ok());
        c.strategy = Strategy::Off;
        assert!(c.may_reboot_now(THU).unwrap_err().contains("off"));
        c.strategy = Strategy::EtcdLock;
        assert!(c.may_reboot_now(THU).is_ok(), "the lock is the caller's");
        c.strategy = Strategy::Window;
        c.window = Some(Window::parse("Thu 01:00", "1h").unwrap());
        assert!(c.may_reboot_now(THU).is_ok());
        c.window = Some(Window::parse("Fri 01:00", "1h").unwrap());
        let e = c.may_reboot_now(THU).unwrap_err();
        assert!(e.contains("outside the reboot window"), "{e}");
        c.strategy = Strategy::Reboot;
        assert!(
            c.may_reboot_now(THU).is_err(),
            "the window applies to reboot too"
        );
    }
}
