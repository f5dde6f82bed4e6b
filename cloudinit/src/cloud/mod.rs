//! Cloud metadata services, asked when the local data sources have no user-data: an EC2-compatible instance metadata service ([`ec2`]: IMDSv2, IMDSv1 only when allowed) and DigitalOcean's metadata API ([`digitalocean`]), both at `http://169.254.169.254` by default. What they answer is network input: time and size are bounded, redirects are not followed, and every field is checked before use.
//!
//! Whether to ask at all: the services are probed, in the configured
//! order, with a short request (1 s to connect, 2 s in all, 2 tries). When
//! nothing answers at the address (no route, a dropped or refused
//! connection), the services after it, which share the address, are not
//! tried: a machine without a metadata service loses about 2 s at most
//! (none when there is no route). DMI hints (`/sys/class/dmi/id`) are not
//! used: EC2-compatible services run on many clouds that do not say so.
//! Once something answered, requests get longer limits ([`Limits`]), and
//! the whole conversation has a deadline.

pub mod digitalocean;
pub mod ec2;
mod http;
pub mod platform;

use std::time::{Duration, Instant};

use crate::metadata::{Metadata, MetadataError};

/// Where the metadata services answer, unless told otherwise
/// (`--metadata-url`).
pub const DEFAULT_URL: &str = "http://169.254.169.254";

/// A metadata service cairn-cloudinit can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// EC2's instance metadata service, or one compatible with it.
    Ec2,
    /// DigitalOcean's metadata API.
    DigitalOcean,
}

/// The services asked when neither `--metadata` nor `cairn.metadata=`
/// says otherwise, in this order.
pub const DEFAULT_SERVICES: [Service; 2] = [Service::Ec2, Service::DigitalOcean];

impl Service {
    /// The name in logs and in the `source` of the status file.
    pub fn name(self) -> &'static str {
        match self {
            Service::Ec2 => "EC2 metadata service",
            Service::DigitalOcean => "DigitalOcean metadata service",
        }
    }

    /// Parses `off` (also `none`, `0`: no service) or a comma-separated
    /// list of `ec2` and `digitalocean`, the order in which they are asked.
    pub fn parse_list(text: &str) -> Result<Vec<Service>, String> {
        let text = text.trim();
        if matches!(text, "off" | "none" | "0") {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for word in text.split(',') {
            let s = match word.trim() {
                "ec2" => Service::Ec2,
                "digitalocean" => Service::DigitalOcean,
                other => {
                    return Err(format!(
                        "unknown metadata service {other:?} (known: ec2, digitalocean; or off)"
                    ))
                }
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// The time and size bounds of the conversation with a metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connect timeout of a request before the service has answered once.
    pub probe_connect: Duration,
    /// Whole-request timeout before the service has answered once.
    pub probe_timeout: Duration,
    /// Tries of a request before the service has answered once; when all
    /// fail without an answer, no service is there.
    pub probe_tries: u32,
    /// Connect timeout once the service has answered.
    pub connect: Duration,
    /// Whole-request timeout (connect, head, body) once it has answered.
    pub timeout: Duration,
    /// Tries of a request once it has answered (network errors and 5xx,
    /// 408, 429 are retried).
    pub tries: u32,
    /// The wait after the first failed try, doubled after each one, at
    /// most `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// All requests of one run together, waits included.
    pub total: Duration,
    /// The largest user-data taken.
    pub max_user_data: u64,
    /// The largest single attribute (an address, a hostname, a key).
    pub max_attribute: u64,
    /// The largest JSON document (DigitalOcean's `/metadata/v1.json`).
    pub max_json: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            probe_connect: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            probe_tries: 2,
            connect: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            tries: 3,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
            total: Duration::from_secs(30),
            max_user_data: crate::fetch::RetryPolicy::default().max_bytes,
            max_attribute: 64 * 1024,
            max_json: 256 * 1024,
        }
    }
}

/// Which services to ask, where, how.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://169.254.169.254` ([`DEFAULT_URL`]) unless overridden; no
    /// trailing slash needed.
    pub base: String,
    /// Asked in this order; the first one that is there is the source.
    pub services: Vec<Service>,
    /// An EC2 service that refuses the IMDSv2 token may be read without.
    pub imdsv1: bool,
    pub limits: Limits,
}

/// What a metadata service gave.
#[derive(Debug, Clone)]
pub struct CloudData {
    pub service: Service,
    /// `EC2 metadata service http://169.254.169.254 (IMDSv2)` and the like.
    pub source: String,
    /// `None`: the service has no user-data for this machine (a 404).
    pub user_data: Option<Vec<u8>>,
    /// The instance facts, or why they were refused (naming the URL and
    /// the field); refused facts are not applied, the user-data is.
    pub metadata: Result<Metadata, MetadataError>,
}

/// A metadata service that answered but could not be read: a request that
/// failed for good. Nothing of the service is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// `field` (user-data, session token, hostname, ...) could not be
    /// fetched from `url`: a status, a redirect, a body over its limit, a
    /// timeout or a network error after every try.
    #[error("{url} ({field}): {reason}")]
    Fetch {
        url: String,
        field: String,
        reason: String,
    },
    /// The base URL is not `http://` or `https://`.
    #[error("{url}: not an http:// or https:// URL")]
    InvalidUrl { url: String },
}

/// How a service answered the question "are you there?".
pub(crate) enum Probe {
    Found(CloudData),
    /// Something answered, but not this service.
    NotHere(String),
    /// Nothing answered at all.
    Unreachable(String),
}

/// Asks the services of `cfg` in order; the first one that is there gives
/// the data. `Ok(None)`: none is (nothing answered, or what answered is
/// none of them).
pub fn find(cfg: &Config) -> Result<Option<CloudData>, CloudError> {
    if cfg.services.is_empty() {
        return Ok(None);
    }
    let base = cfg.base.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(CloudError::InvalidUrl {
            url: cfg.base.clone(),
        });
    }
    let start = Instant::now();
    let mut client = http::Client::new(&cfg.limits, start);
    for service in &cfg.services {
        let probe = match service {
            Service::Ec2 => ec2::read(&mut client, base, cfg.imdsv1)?,
            Service::DigitalOcean => digitalocean::read(&mut client, base)?,
        };
        match probe {
            Probe::Found(data) => {
                tracing::info!(
                    "data source: {} ({}) after {} ms",
                    data.source,
                    match (&data.user_data, &data.metadata) {
                        (Some(_), Ok(_)) => "user-data and metadata",
                        (Some(_), Err(_)) => "user-data, refused metadata",
                        (None, Ok(_)) => "metadata, no user-data",
                        (None, Err(_)) => "refused metadata, no user-data",
                    },
                    start.elapsed().as_millis()
                );
                return Ok(Some(data));
            }
            Probe::NotHere(why) => {
                tracing::info!("no {} at {base}: {why}", service.name());
            }
            Probe::Unreachable(why) => {
                tracing::info!(
                    "no metadata service at {base}: {why}; {} ms spent",
                    start.elapsed().as_millis()
                );
                return Ok(None);
            }
        }
    }
    tracing::info!(
        "no metadata service at {base} ({} ms spent)",
        start.elapsed().as_millis()
    );
    Ok(None)
}

/// The UTF-8 text of an attribute, trimmed; `field` and `url` name it in
/// the error.
pub(crate) fn text(url: &str, field: &str, bytes: &[u8]) -> Result<String, MetadataError> {
    std::str::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| MetadataError {
            path: url.to_string(),
            reason: format!("{field} is not UTF-8 text"),
        })
}

/// An IPv4 address attribute; `None` when empty.
pub(crate) fn ipv4(
    url: &str,
    field: &str,
    value: &str,
) -> Result<Option<std::net::Ipv4Addr>, MetadataError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| MetadataError {
        path: url.to_string(),
        reason: format!("{field} {value:?} is not an IPv4 address"),
    })
}

/// An IPv6 address attribute; `None` when empty.
pub(crate) fn ipv6(
    url: &str,
    field: &str,
    value: &str,
) -> Result<Option<std::net::Ipv6Addr>, MetadataError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| MetadataError {
        path: url.to_string(),
        reason: format!("{field} {value:?} is not an IPv6 address"),
    })
}

/// What the tests of the services share: a quick configuration and keys.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICloudKey00000000000000000000000000000001 a@b";
    pub const KEY2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICloudKey00000000000000000000000000000002 c@d";

    /// `services` at `base`, with short limits (1 s per request, 1 MiB of
    /// user-data).
    pub fn cfg(base: &str, services: &[Service]) -> Config {
        Config {
            base: base.to_string(),
            services: services.to_vec(),
            imdsv1: false,
            limits: Limits {
                probe_connect: Duration::from_millis(500),
                probe_timeout: Duration::from_secs(1),
                connect: Duration::from_millis(500),
                timeout: Duration::from_secs(1),
                first_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                total: Duration::from_secs(20),
                max_user_data: 1 << 20,
                ..Limits::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lists() {
        assert_eq!(
            Service::parse_list("ec2,digitalocean").unwrap(),
            DEFAULT_SERVICES
        );
        assert_eq!(
            Service::parse_list(" digitalocean , ec2 ").unwrap(),
            [Service::DigitalOcean, Service::Ec2]
        );
        assert_eq!(Service::parse_list("ec2,ec2").unwrap(), [Service::Ec2]);
        for off in ["off", "none", "0"] {
            assert!(Service::parse_list(off).unwrap().is_empty(), "{off}");
        }
        for bad in ["", "ec3", "ec2,", "gce"] {
            let e = Service::parse_list(bad).unwrap_err();
            assert!(e.contains("unknown metadata service"), "{bad}: {e}");
        }
    }

    #[test]
    fn no_service_or_a_bad_url_asks_nothing() {
        let cfg = Config {
            base: "http://127.0.0.1:9".into(),
            services: Vec::new(),
            imdsv1: false,
            limits: Limits::default(),
        };
        assert!(find(&cfg).unwrap().is_none());
        let cfg = Config {
            base: "ftp://h".into(),
            services: DEFAULT_SERVICES.to_vec(),
            ..cfg
        };
        assert!(matches!(find(&cfg), Err(CloudError::InvalidUrl { .. })));
    }

    #[test]
    fn the_default_limits_bound_a_missing_service_to_a_few_seconds() {
        let l = Limits::default();
        // every probe try times out, with the wait between them
        let worst = l.probe_timeout * l.probe_tries + l.first_delay;
        assert!(worst <= Duration::from_secs(5), "{worst:?}");
        assert!(l.probe_connect <= l.probe_timeout);
    }
}
