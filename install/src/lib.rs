//! cairn-install: installing a cairn image to a machine's disk from
//! `cairn serve`, as `cairn-update install` does on a machine that
//! netbooted its profile's installer. The disk is chosen by a rule
//! ([`disks::Rule`]); a disk that holds data is refused unless the
//! profile (or an operator) allows overwriting it; only the image's data
//! is fetched and written (`disk.map`, made by [`map`]); every piece is
//! checked before it is written and read back after ([`write`]); the
//! server hears of each step (`cairn_formats::lifecycle` reports), so that
//! it answers the machine's next netboot with its local disk.
//!
//! The image is `disk.raw` as `cairn build` made it: on first boot `/init`
//! grows the state partition to the disk's end and moves the backup GPT
//! there, as for any disk the image was copied to.

pub mod disks;
pub mod handoff;
pub mod map;
pub mod write;

use std::path::PathBuf;
use std::time::Duration;

use cairn_formats::disk_map::{DiskMap, Extent, MAX_MAP_BYTES};
use cairn_formats::lifecycle::{Event, Report, REPORT_PATH};

pub use disks::{Disk, Roots, Rule};
pub use write::{Source, Written};

/// Why an install did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No disk fits, or the one chosen holds data and overwriting is not
    /// allowed: nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error("{what} {}: {source}", dev.display())]
    Disk {
        what: &'static str,
        dev: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {size} bytes, the image needs {needed}", dev.display())]
    TooSmall {
        dev: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("bytes {offset}+{length} {when}: {got}, not what the map says")]
    Mismatch {
        offset: u64,
        length: u64,
        when: &'static str,
        got: String,
    },
    #[error("{what}: {message}")]
    Source { what: String, message: String },
    #[error("listing disks: {0}")]
    ListDisks(std::io::Error),
}

impl InstallError {
    /// Whether nothing was written (the disk is as it was).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            InstallError::Refused(_) | InstallError::TooSmall { .. }
        )
    }
}

/// The image's bytes over HTTP: `SERVER/assets/IMAGE/disk.raw` with
/// `Range` requests, retried as cairn's other downloads are.
pub struct HttpSource {
    http: ureq::Agent,
    retry: cairn_fetch::Retry,
    server: String,
    image: String,
}

impl HttpSource {
    /// `server`: the server's base URL; `image`: the image's `NAME-VERSION`.
    pub fn new(server: &str, image: &str) -> HttpSource {
        HttpSource {
            http: cairn_fetch::agent(
                concat!("cairn-install/", env!("CARGO_PKG_VERSION")),
                cairn_fetch::Timeouts {
                    global: None,
                    connect: Some(Duration::from_secs(10)),
                    recv_response: Some(Duration::from_secs(30)),
                    recv_body: Some(Duration::from_secs(120)),
                },
            ),
            retry: cairn_fetch::Retry::with_retries(5),
            server: server.trim_end_matches('/').to_owned(),
            image: image.to_owned(),
        }
    }

    /// `disk.map`, checked.
    pub fn map(&self) -> Result<DiskMap, InstallError> {
        let url = format!(
            "{}{}",
            self.server,
            cairn_formats::disk_map::map_path(&self.image)
        );
        let body =
            cairn_fetch::get(&self.http, &self.retry, &url, &[], MAX_MAP_BYTES).map_err(|e| {
                InstallError::Source {
                    what: url.clone(),
                    message: e.to_string(),
                }
            })?;
        DiskMap::parse(&body).map_err(|e| InstallError::Source {
            what: url,
            message: e.to_string(),
        })
    }
}

impl Source for HttpSource {
    fn fetch(&mut self, e: &Extent) -> Result<Vec<u8>, InstallError> {
        let url = format!("{}/assets/{}/disk.raw", self.server, self.image);
        let range = format!("bytes={}-{}", e.offset, e.offset + e.length - 1);
        cairn_fetch::get(&self.http, &self.retry, &url, &[("Range", range)], e.length).map_err(
            |err| InstallError::Source {
                what: format!("{url} bytes {}+{}", e.offset, e.length),
                message: err.to_string(),
            },
        )
    }
}

/// Sends reports to the server; a report that cannot be sent is logged
/// and the install goes on (the server learns of the machine's state from
/// its next report or netboot).
pub struct Reporter {
    http: ureq::Agent,
    url: Option<String>,
    mac: String,
    machine_id: Option<String>,
    tries: u32,
}

impl Reporter {
    /// `server`: the server's base URL (`None`: report nothing).
    pub fn new(server: Option<&str>, mac: &str, machine_id: Option<String>) -> Reporter {
        Reporter {
            http: cairn_fetch::agent(
                concat!("cairn-install/", env!("CARGO_PKG_VERSION")),
                cairn_fetch::Timeouts {
                    global: Some(Duration::from_secs(10)),
                    ..Default::default()
                },
            ),
            url: server.map(|s| format!("{}{REPORT_PATH}", s.trim_end_matches('/'))),
            mac: mac.to_owned(),
            machine_id,
            tries: 3,
        }
    }

    /// A reporter for a booting system, which must not wait on the
    /// server: one try per report, at most `timeout` each.
    pub fn quick(
        server: &str,
        mac: &str,
        machine_id: Option<String>,
        timeout: Duration,
    ) -> Reporter {
        let mut r = Reporter::new(Some(server), mac, machine_id);
        r.http = cairn_fetch::agent(
            concat!("cairn-install/", env!("CARGO_PKG_VERSION")),
            cairn_fetch::Timeouts {
                global: Some(timeout),
                ..Default::default()
            },
        );
        r.tries = 1;
        r
    }

    /// Posts `event`; three tries (one for [`Reporter::quick`]), two seconds apart.
    /// Returns whether the server took it.
    pub fn send(&self, event: Event) -> bool {
        let Some(url) = &self.url else { return false };
        let body = Report {
            mac: self.mac.clone(),
            machine_id: self.machine_id.clone(),
            event,
        }
        .to_json();
        let tries = self.tries;
        for n in 1..=tries {
            match self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
            {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    tracing::warn!("report to {url}: HTTP {} (try {n} of {tries})", r.status())
                }
                Err(e) => tracing::warn!("report to {url}: {e} (try {n} of {tries})"),
            }
            if n < tries {
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        false
    }
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct Options {
    pub rule: Rule,
    /// Write over a disk that holds data.
    pub allow_overwrite: bool,
    /// The image's name and version (for the report).
    pub image: String,
    pub version: String,
    pub roots: Roots,
}

/// A finished install.
#[derive(Debug, Clone)]
pub struct Installed {
    pub disk: Disk,
    pub written: Written,
}

/// Picks the disk by the rule and refuses one that holds data unless
/// allowed. Nothing is written.
pub fn choose_disk(opts: &Options) -> Result<Disk, InstallError> {
    let disks = disks::list(&opts.roots).map_err(InstallError::ListDisks)?;
    let probe = |d: &Disk| match disks::holds_data(&d.dev) {
        Ok(x) => x,
        Err(e) => Some(format!("could not be read ({e})")),
    };
    let disk = opts
        .rule
        .pick(&disks, opts.allow_overwrite, probe)
        .map_err(InstallError::Refused)?
        .clone();
    if let Some(what) = probe(&disk) {
        if !opts.allow_overwrite {
            return Err(InstallError::Refused(format!(
                "{} ({}) holds {what}; not overwriting it (the profile's install.overwrite, or an operator's POST /lifecycle/reinstall?mac=MAC&overwrite=1 to cairn serve, allows it)",
                disk.dev.display(),
                disks::human(disk.size)
            )));
        }
        tracing::warn!(
            "{} holds {what}: overwriting it, as allowed",
            disk.dev.display()
        );
    }
    Ok(disk)
}

/// The whole install: choose the disk, write the image, read it back,
/// reporting each step. The caller reboots.
pub fn install(
    opts: &Options,
    map: &DiskMap,
    source: &mut dyn Source,
    reporter: &Reporter,
    progress: write::Progress<'_>,
) -> Result<Installed, InstallError> {
    install_with(opts, map, source, reporter, progress, None)
}

/// [`install`], leaving `handoff` on the installed disk's ESP
/// ([`handoff::write`]) before the install is reported finished.
pub fn install_with(
    opts: &Options,
    map: &DiskMap,
    source: &mut dyn Source,
    reporter: &Reporter,
    progress: write::Progress<'_>,
    handoff: Option<&handoff::Handoff>,
) -> Result<Installed, InstallError> {
    let disk = match choose_disk(opts) {
        Ok(d) => d,
        Err(e) => {
            reporter.send(Event::InstallRefused {
                disk: None,
                reason: e.to_string(),
            });
            return Err(e);
        }
    };
    if disk.size < map.size {
        let e = InstallError::TooSmall {
            dev: disk.dev.clone(),
            size: disk.size,
            needed: map.size,
        };
        reporter.send(Event::InstallRefused {
            disk: Some(disk.dev.display().to_string()),
            reason: e.to_string(),
        });
        return Err(e);
    }
    let dev = disk.dev.display().to_string();
    reporter.send(Event::InstallStarted { disk: dev.clone() });
    let written = write::write_image(&disk.dev, map, source, progress).and_then(|w| {
        if let Some(h) = handoff {
            handoff::write(&disk.dev, h)?;
        }
        Ok(w)
    });
    match written {
        Ok(written) => {
            reporter.send(Event::InstallFinished {
                disk: dev,
                image: opts.image.clone(),
                version: opts.version.clone(),
            });
            Ok(Installed { disk, written })
        }
        Err(e) => {
            reporter.send(Event::InstallFailed {
                reason: format!("{dev}: {e}"),
            });
            Err(e)
        }
    }
}
