//! Where the user-data comes from, first found wins: `cloud-config-url=` on the kernel command line, the state partition's `user-data`, a `config-2` config drive (whose `meta_data.json` comes along), then the cloud metadata services of [`crate::cloud`] (EC2-compatible, DigitalOcean), whose instance facts come along.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cloud::platform::{self, Platform};
use crate::cloud::{self, CloudError, Limits, Service};
use crate::cmdline;
use crate::fetch::{self, FetchError, RetryPolicy};
use crate::metadata::{self, Metadata, MetadataError, CONFIG_DRIVE_META_DATA};
use crate::network::NetworkWait;

/// The state partition's user-data file (the image's /init mounts the state partition at /run/cairn/state).
pub const STATE_USER_DATA: &str = "/run/cairn/state/user-data";
/// The file system label of an OpenStack-style config drive, and its
/// user-data file.
pub use cairn_formats::config_drive::{
    LABEL as CONFIG_DRIVE_LABEL, USER_DATA as CONFIG_DRIVE_USER_DATA,
};
/// Where a config drive is mounted (read-only) while it is read.
pub const CONFIG_DRIVE_MOUNT: &str = "/run/cairn/configdrive";

/// Where to look.
#[derive(Debug, Clone)]
pub struct Sources {
    pub cmdline: PathBuf,
    pub state_user_data: PathBuf,
    /// An already mounted config drive directory; `None`: look for a block
    /// device labelled config-2 and mount it.
    pub config_drive_dir: Option<PathBuf>,
    pub config_drive: bool,
    /// Before looking for a config drive that udev has not linked yet,
    /// load the drivers of storage devices that have none (this machine's
    /// boot only: [`crate::storage`]).
    pub load_storage_drivers: bool,
    pub policy: RetryPolicy,
    pub metadata: MetadataSources,
    /// Asked before the sources that are on the network (a URL, the
    /// metadata services); the local ones never wait for it.
    pub network: NetworkWait,
}

/// Which cloud metadata services to ask, and where.
#[derive(Debug, Clone)]
pub struct MetadataSources {
    /// Their base URL ([`cloud::DEFAULT_URL`]).
    pub base: String,
    /// `None`: as the kernel command line says (`cairn.metadata=`), else
    /// those of the platform the DMI strings show ([`Platform`]);
    /// `Some(empty)`: none.
    pub services: Option<Vec<Service>>,
    /// Where the DMI strings are read ([`platform::DMI_DIR`]); `None`: not
    /// at all, every service is asked (a `--metadata-url` given explicitly).
    pub dmi: Option<PathBuf>,
    /// IMDSv1 allowed even without `cairn.metadata.imdsv1` on the command line.
    pub imdsv1: bool,
    pub limits: Limits,
}

impl Default for MetadataSources {
    fn default() -> Self {
        MetadataSources {
            base: cloud::DEFAULT_URL.into(),
            services: None,
            dmi: Some(platform::DMI_DIR.into()),
            imdsv1: false,
            limits: Limits::default(),
        }
    }
}

impl MetadataSources {
    /// No metadata service at all.
    pub fn off() -> Self {
        MetadataSources {
            services: Some(Vec::new()),
            ..Default::default()
        }
    }

    /// The configuration for a machine whose kernel command line is
    /// `cmdline`: the services and IMDSv1 as it says unless set here.
    pub fn resolve(&self, cmdline: &str) -> cloud::Config {
        let services = match &self.services {
            Some(s) => s.clone(),
            None => match cmdline::metadata_services(cmdline) {
                None => match &self.dmi {
                    None => cloud::DEFAULT_SERVICES.to_vec(),
                    Some(dmi) => {
                        let p = Platform::detect(dmi);
                        let services = p.services();
                        if services.is_empty() {
                            tracing::info!(
                            "platform {p}: no metadata service asked ({}=ec2 or =digitalocean on the kernel command line asks one)",
                            cmdline::METADATA
                        );
                        } else {
                            tracing::info!(
                                "platform {p}: asking {}",
                                services
                                    .iter()
                                    .map(|s| s.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            );
                        }
                        services
                    }
                },
                Some(v) => Service::parse_list(&v).unwrap_or_else(|e| {
                    tracing::warn!(
                        "{}={v} on the kernel command line: {e}; asking the default services",
                        cmdline::METADATA
                    );
                    cloud::DEFAULT_SERVICES.to_vec()
                }),
            },
        };
        cloud::Config {
            base: self.base.clone(),
            services,
            imdsv1: self.imdsv1 || cmdline::metadata_imdsv1(cmdline),
            limits: self.limits.clone(),
        }
    }
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            cmdline: "/proc/cmdline".into(),
            state_user_data: STATE_USER_DATA.into(),
            config_drive_dir: None,
            config_drive: true,
            load_storage_drivers: true,
            policy: RetryPolicy::default(),
            metadata: MetadataSources::default(),
            network: NetworkWait::Systemd {
                timeout: crate::network::ONLINE_TIMEOUT,
            },
        }
    }
}

/// User-data and where it came from.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: String,
    /// Empty when a config drive has metadata but no user_data.
    pub bytes: Vec<u8>,
    /// A config drive's `meta_data.json` or a metadata service's instance
    /// facts: `None` when the source has none; `Some(Err)` when they are
    /// there but refused (nothing of them is then applied).
    pub metadata: Option<Result<Metadata, MetadataError>>,
}

/// The first source that holds user-data is the one used; a URL that
/// cannot be fetched is an error (not a fall-through to a stale file).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("fetching the cloud-config from the kernel command line: {0}")]
    Fetch(#[from] FetchError),
    #[error("reading the metadata service: {0}")]
    Metadata(#[from] CloudError),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// Gunzips user-data that starts with the gzip magic (coreos-cloudinit
/// accepted compressed user-data too).
/// At most `cairn_cloudconfig::MAX_DECOMPRESSED` bytes come out.
pub fn maybe_gunzip(bytes: Vec<u8>) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let out = cairn_cloudconfig::decompress_user_data(&bytes)
            .context("decompressing gzip user-data")?;
        Ok(out.into_owned())
    } else {
        Ok(bytes)
    }
}

fn read_if_exists(p: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Finds the user-data.
pub fn find(s: &Sources) -> Result<Option<Found>, SourceError> {
    let line = std::fs::read_to_string(&s.cmdline)
        .with_context(|| format!("reading {}", s.cmdline.display()))
        .map_err(SourceError::Other)?;
    if let Some(url) = cmdline::cloud_config_url(&line) {
        tracing::info!(
            "data source: {} on the kernel command line: {url}",
            cmdline::CLOUD_CONFIG_URL
        );
        s.network
            .wait("the cloud-config URL on the kernel command line");
        let bytes = fetch::fetch(&url, &s.policy)?;
        return Ok(Some(Found {
            source: format!("{}={url}", cmdline::CLOUD_CONFIG_URL),
            bytes,
            metadata: None,
        }));
    }
    if let Some(bytes) = read_if_exists(&s.state_user_data).map_err(SourceError::Other)? {
        tracing::info!("data source: {}", s.state_user_data.display());
        return Ok(Some(Found {
            source: s.state_user_data.display().to_string(),
            bytes,
            metadata: None,
        }));
    }
    if s.config_drive {
        tracing::debug!("looking for a config drive (label {CONFIG_DRIVE_LABEL})");
        let drive = match &s.config_drive_dir {
            Some(dir) => read_drive_dir(dir, &format!("config drive {}", dir.display())),
            None => match config_drive_device(s.load_storage_drivers) {
                None => Ok(None),
                Some((dev, fstype)) => read_config_drive(&dev, fstype),
            },
        };
        if let Some(found) = drive.map_err(SourceError::Other)? {
            return Ok(Some(found));
        }
    }
    tracing::debug!("no local user-data");
    let cfg = s.metadata.resolve(&line);
    if !cfg.services.is_empty() {
        s.network
            .wait("no local user-data: asking the metadata services");
    }
    let Some(data) = cloud::find(&cfg)? else {
        return Ok(None);
    };
    Ok(Some(Found {
        source: data.source,
        bytes: data.user_data.unwrap_or_default(),
        metadata: Some(data.metadata),
    }))
}

/// The user_data and meta_data.json of a config drive's directory tree;
/// `None` when it has neither.
fn read_drive_dir(dir: &Path, source: &str) -> Result<Option<Found>> {
    let user_data = read_if_exists(&dir.join(CONFIG_DRIVE_USER_DATA))?;
    let metadata = metadata::read(&dir.join(CONFIG_DRIVE_META_DATA)).transpose();
    if user_data.is_none() && metadata.is_none() {
        return Ok(None);
    }
    let what = match (&user_data, &metadata) {
        (Some(_), Some(_)) => "user_data and meta_data.json",
        (Some(_), None) => "user_data",
        _ => "meta_data.json, no user_data",
    };
    tracing::info!("data source: {source} ({what})");
    Ok(Some(Found {
        source: source.to_string(),
        bytes: user_data.unwrap_or_default(),
        metadata,
    }))
}

/// The labels a config drive may carry: OpenStack's, and the upper-case
/// one some tools write on a FAT file system (cloud-init accepts both).
pub const CONFIG_DRIVE_LABELS: [&str; 2] = [CONFIG_DRIVE_LABEL, "CONFIG-2"];

/// The block device labelled config-2 (or CONFIG-2), with its file
/// system type when this agent probed it: udev's by-label link, else the
/// labels read from every block device ([`crate::label`]). The agent runs
/// before udev has seen every device: with `load_drivers`, the storage
/// devices that have no driver yet get theirs first
/// ([`crate::storage::load_unbound`]), so that a config drive on a
/// SATA/IDE CD-ROM (`/dev/sr0`) is there to be read.
pub fn config_drive_device(load_drivers: bool) -> Option<(PathBuf, Option<&'static str>)> {
    for label in CONFIG_DRIVE_LABELS {
        let link = Path::new("/dev/disk/by-label").join(label);
        if link.exists() {
            return Some((link, None));
        }
    }
    if load_drivers {
        crate::storage::load_unbound(Path::new("/sys"));
    }
    let (dev, probed) = crate::label::find(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        &CONFIG_DRIVE_LABELS,
    )?;
    Some((dev, Some(probed.fstype)))
}

/// Mounts `dev` read-only (as `fstype` when it is known, else as the
/// first of the config drive file systems that mounts), reads
/// openstack/latest/user_data and meta_data.json, unmounts.
fn read_config_drive(dev: &Path, fstype: Option<&'static str>) -> Result<Option<Found>> {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let target = Path::new(CONFIG_DRIVE_MOUNT);
    std::fs::create_dir_all(target).with_context(|| format!("creating {CONFIG_DRIVE_MOUNT}"))?;
    let mut last = None;
    let mut mounted = false;
    let all = ["iso9660", "vfat", "udf", "ext4"];
    let known = fstype.map(|t| [t]);
    for fstype in known.as_ref().map_or(&all[..], |k| &k[..]) {
        match mount(
            dev,
            target,
            *fstype,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ) {
            Ok(()) => {
                mounted = true;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if !mounted {
        anyhow::bail!(
            "mounting config drive {} read-only on {CONFIG_DRIVE_MOUNT}: {}",
            dev.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        );
    }
    let data = read_drive_dir(target, &format!("config drive {}", dev.display()));
    if let Err(e) = unmount(target, UnmountFlags::DETACH) {
        tracing::warn!("unmounting {CONFIG_DRIVE_MOUNT}: {e}");
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sources(dir: &Path, cmdline: &str) -> Sources {
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        Sources {
            cmdline: dir.join("cmdline"),
            state_user_data: dir.join("state/user-data"),
            config_drive_dir: Some(dir.join("cd")),
            config_drive: true,
            load_storage_drivers: false,
            policy: RetryPolicy {
                max_tries: 2,
                initial_backoff: std::time::Duration::from_millis(1),
                ..Default::default()
            },
            // never the real link-local service from a test
            metadata: MetadataSources::off(),
            network: NetworkWait::Never,
        }
    }

    #[test]
    fn only_the_network_sources_wait_for_the_network() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let t = tempfile::tempdir().unwrap();
        let n = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = |mut s: Sources| {
            s.network = NetworkWait::Counted(n.clone());
            s
        };
        // nothing anywhere, metadata services off: no wait
        assert!(find(&counted(sources(t.path(), "quiet\n")))
            .unwrap()
            .is_none());
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // the state partition's user-data: no wait
        std::fs::create_dir_all(t.path().join("state")).unwrap();
        std::fs::write(t.path().join("state/user-data"), "#cloud-config\n").unwrap();
        assert!(find(&counted(sources(t.path(), "quiet\n")))
            .unwrap()
            .is_some());
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // a URL: waits first (here the fetch then fails: nothing listens)
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cc", closed.local_addr().unwrap());
        drop(closed);
        let s = counted(sources(t.path(), &format!("cloud-config-url={url}\n")));
        assert!(find(&s).is_err());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // no local user-data and metadata services to ask: waits first
        std::fs::remove_file(t.path().join("state/user-data")).unwrap();
        let mut s = counted(sources(t.path(), "quiet\n"));
        std::fs::create_dir_all(t.path().join("qemu-dmi")).unwrap();
        std::fs::write(t.path().join("qemu-dmi/sys_vendor"), "QEMU\n").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        s.metadata = MetadataSources {
            base: format!("http://{}", closed.local_addr().unwrap()),
            services: None,
            // a URL given explicitly: asked whatever the platform
            dmi: None,
            ..MetadataSources::off()
        };
        drop(closed);
        let _ = find(&s);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // a machine whose DMI strings say it is on no cloud: no service to
        // ask (nothing is sent), so no wait
        s.metadata.dmi = Some(t.path().join("qemu-dmi"));
        assert!(find(&s).unwrap().is_none());
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // no DMI strings at all: cannot tell, so every service would be asked
        s.metadata.dmi = Some(t.path().join("no-dmi"));
        assert_eq!(
            s.metadata.resolve("quiet").services,
            cloud::DEFAULT_SERVICES
        );
        s.metadata.dmi = Some(t.path().join("qemu-dmi"));
        assert_eq!(
            s.metadata
                .resolve("quiet cairn.metadata=digitalocean")
                .services,
            [Service::DigitalOcean],
            "the command line wins over the platform"
        );
    }

    #[test]
    fn first_found_wins() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path(), "console=ttyS0\n");
        assert!(find(&s).unwrap().is_none());
        std::fs::create_dir_all(t.path().join("cd/openstack/latest")).unwrap();
        std::fs::write(
            t.path().join("cd/openstack/latest/user_data"),
            "#cloud-config\n",
        )
        .unwrap();
        let f = find(&s).unwrap().unwrap();
        assert!(f.source.starts_with("config drive"), "{}", f.source);
        assert!(f.metadata.is_none());
        std::fs::create_dir_all(t.path().join("state")).unwrap();
        std::fs::write(t.path().join("state/user-data"), "#!/bin/sh\n").unwrap();
        let f = find(&s).unwrap().unwrap();
        assert!(f.source.ends_with("state/user-data"), "{}", f.source);
        assert_eq!(f.bytes, b"#!/bin/sh\n");
        // a URL on the command line comes first, and its failure is final
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = sources(
            t.path(),
            &format!("cloud-config-url=http://127.0.0.1:{port}/x"),
        );
        assert!(matches!(
            find(&s),
            Err(SourceError::Fetch(FetchError::GaveUp { tries: 2, .. }))
        ));
    }

    #[test]
    fn a_config_drive_brings_its_metadata_even_without_user_data() {
        let t = tempfile::tempdir().unwrap();
        let s = sources(t.path(), "console=ttyS0\n");
        let latest = t.path().join("cd/openstack/latest");
        std::fs::create_dir_all(&latest).unwrap();
        std::fs::write(
            latest.join("meta_data.json"),
            r#"{"hostname": "h1", "public_keys": {"k": "ssh-ed25519 AAAA k\n"}}"#,
        )
        .unwrap();
        let f = find(&s).unwrap().expect("metadata alone is a data source");
        assert_eq!(
            f.source,
            format!("config drive {}", t.path().join("cd").display())
        );
        assert!(f.bytes.is_empty());
        let md = f.metadata.unwrap().unwrap();
        assert_eq!(md.hostname.as_deref(), Some("h1"));
        assert_eq!(md.public_keys, [("k".into(), "ssh-ed25519 AAAA k".into())]);
        // with user_data too; a refused metadata file still comes with the user-data
        std::fs::write(latest.join("user_data"), "#cloud-config\n").unwrap();
        std::fs::write(latest.join("meta_data.json"), r#"{"public_keys": []}"#).unwrap();
        let f = find(&s).unwrap().unwrap();
        assert_eq!(f.bytes, b"#cloud-config\n");
        let e = f.metadata.unwrap().unwrap_err();
        assert!(e.path.ends_with("openstack/latest/meta_data.json"), "{e}");
        // the state partition's user-data wins, and brings no metadata
        std::fs::create_dir_all(t.path().join("state")).unwrap();
        std::fs::write(t.path().join("state/user-data"), "#cloud-config\n").unwrap();
        assert!(find(&s).unwrap().unwrap().metadata.is_none());
    }

    #[test]
    fn gzip_user_data_is_decompressed() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"#cloud-config\nhostname: z\n").unwrap();
        assert_eq!(
            maybe_gunzip(e.finish().unwrap()).unwrap(),
            b"#cloud-config\nhostname: z\n"
        );
        assert_eq!(maybe_gunzip(b"plain".to_vec()).unwrap(), b"plain");
        assert!(maybe_gunzip(vec![0x1f, 0x8b, 0, 1]).is_err());
    }
}
