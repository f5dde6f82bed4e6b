//! An EC2-compatible instance metadata service: IMDSv2 (`PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then every GET with `X-aws-ec2-metadata-token`), IMDSv1 (GETs without a token) only when allowed; user-data, `local-ipv4`, `public-ipv4`, `hostname` and the keys of `public-keys/`, as coreos-cloudinit read them.

use super::http::{CallError, Client, Got, Method};
use super::{CloudData, CloudError, Probe, Service};
use crate::metadata::{check_hostname_field, check_key, Metadata, MetadataError};

/// The token request's header: how long the token lives, in seconds.
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// The header that carries the token.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The lifetime asked for: the whole conversation takes far less.
pub const TOKEN_TTL_SECONDS: &str = "300";
/// The longest token taken (EC2's are about 56 bytes).
pub const MAX_TOKEN: u64 = 4096;
/// The most keys taken from `public-keys/`.
pub const MAX_KEYS: usize = 64;

/// Reads the service at `base`: [`Probe::NotHere`] when something answers
/// that hands out no IMDSv2 token (and IMDSv1 is not allowed or not there
/// either).
pub(crate) fn read(c: &mut Client, base: &str, imdsv1: bool) -> Result<Probe, CloudError> {
    let token_url = format!("{base}/latest/api/token");
    let got = match c.call(
        Method::Put,
        &token_url,
        &[(TTL_HEADER, TOKEN_TTL_SECONDS)],
        MAX_TOKEN,
        "IMDSv2 session token",
    ) {
        Ok(g) => g,
        Err(CallError::Unreachable(why)) => return Ok(Probe::Unreachable(why)),
        Err(CallError::Failed(e)) => return Err(e),
    };
    let token = match got {
        Got::Body(b) => Some(check_token(&token_url, &b)?),
        Got::Status(s) if !imdsv1 => {
            return Ok(Probe::NotHere(format!(
                "{token_url}: HTTP {s}, no IMDSv2 session token (IMDSv1 is tried only with {}=1)",
                crate::cmdline::METADATA_IMDSV1
            )))
        }
        Got::Status(s) => {
            // IMDSv1 allowed: the metadata directory must be there
            let url = format!("{base}/latest/meta-data/");
            match get(c, &url, &[], c.limits().max_attribute, "meta-data")? {
                Some(_) => {
                    tracing::warn!(
                        "{token_url}: HTTP {s}, no IMDSv2 session token: reading {base} with IMDSv1, as {}=1 allows",
                        crate::cmdline::METADATA_IMDSV1
                    );
                    None
                }
                None => {
                    return Ok(Probe::NotHere(format!(
                        "{token_url}: HTTP {s}, and no IMDSv1 {url} either"
                    )))
                }
            }
        }
    };
    let headers: Vec<(&str, &str)> = match &token {
        Some(t) => vec![(TOKEN_HEADER, t.as_str())],
        None => Vec::new(),
    };
    let user_data = get(
        c,
        &format!("{base}/latest/user-data"),
        &headers,
        c.limits().max_user_data,
        "user-data",
    )?;
    let metadata = read_metadata(c, base, &headers)?;
    Ok(Probe::Found(CloudData {
        service: Service::Ec2,
        source: format!(
            "{} {base} ({})",
            Service::Ec2.name(),
            if token.is_some() { "IMDSv2" } else { "IMDSv1" }
        ),
        user_data,
        metadata,
    }))
}

/// A token must be one printable ASCII word: it goes into a header.
fn check_token(url: &str, bytes: &[u8]) -> Result<String, CloudError> {
    let t = std::str::from_utf8(bytes).unwrap_or("").trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CloudError::Fetch {
            url: url.to_string(),
            field: "IMDSv2 session token".into(),
            reason: format!(
                "the token ({} bytes) is not one word of printable ASCII",
                bytes.len()
            ),
        });
    }
    Ok(t.to_string())
}

/// GET: a 2xx body, `None` for a 404; any other status fails the source.
fn get(
    c: &mut Client,
    url: &str,
    headers: &[(&str, &str)],
    limit: u64,
    field: &str,
) -> Result<Option<Vec<u8>>, CloudError> {
    let fail = |reason: String| CloudError::Fetch {
        url: url.to_string(),
        field: field.to_string(),
        reason,
    };
    match c.call(Method::Get, url, headers, limit, field) {
        Ok(Got::Body(b)) => Ok(Some(b)),
        Ok(Got::Status(404)) => Ok(None),
        Ok(Got::Status(401)) if !headers.is_empty() => {
            Err(fail("HTTP 401: the session token was refused".into()))
        }
        Ok(Got::Status(s)) => Err(fail(format!("HTTP {s}"))),
        Err(CallError::Unreachable(why)) => Err(fail(why)),
        Err(CallError::Failed(e)) => Err(e),
    }
}

/// The facts under `meta-data/`. A fetch that fails fails the source
/// (`Err`); an answer that is not usable refuses the facts (`Ok(Err)`).
fn read_metadata(
    c: &mut Client,
    base: &str,
    headers: &[(&str, &str)],
) -> Result<Result<Metadata, MetadataError>, CloudError> {
    let mut md = Metadata::default();
    let limit = c.limits().max_attribute;
    // (URL, trimmed UTF-8 text or why not); `None` for a 404
    type Attr = Option<(String, Result<String, MetadataError>)>;
    let attr = |c: &mut Client, name: &str| -> Result<Attr, CloudError> {
        let url = format!("{base}/latest/meta-data/{name}");
        let field = name.trim_end_matches('/');
        Ok(get(c, &url, headers, limit, field)?.map(|b| {
            let text = super::text(&url, field, &b);
            (url, text)
        }))
    };
    macro_rules! refuse {
        ($url:expr, $($why:tt)*) => {
            return Ok(Err(MetadataError { path: $url.to_string(), reason: format!($($why)*) }))
        };
    }
    macro_rules! check {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            }
        };
    }
    if let Some((url, v)) = attr(c, "local-ipv4")? {
        let v = check!(v);
        md.addresses.private_ipv4 = check!(super::ipv4(&url, "local-ipv4", &v));
    }
    if let Some((url, v)) = attr(c, "public-ipv4")? {
        let v = check!(v);
        md.addresses.public_ipv4 = check!(super::ipv4(&url, "public-ipv4", &v));
    }
    if let Some((url, v)) = attr(c, "hostname")? {
        let v = check!(v);
        if v.chars().any(char::is_control) {
            refuse!(url, "hostname {v:?} has a control character");
        }
        // coreos-cloudinit's rule: the first name, its first label
        // (`ip-10-0-0-5.ec2.internal` -> `ip-10-0-0-5`)
        let first = v.split_whitespace().next().unwrap_or("");
        let short = first.split('.').next().unwrap_or("");
        if !first.is_empty() && short.is_empty() {
            refuse!(url, "hostname {first:?} starts with a dot");
        }
        md.hostname = check!(check_hostname_field("hostname", short).map_err(|reason| {
            MetadataError {
                path: url.clone(),
                reason,
            }
        }));
    }
    if let Some((url, list)) = attr(c, "public-keys/")? {
        let list = check!(list);
        let mut keys = Vec::new();
        for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // `0=my-key`
            let Some((index, name)) = line.split_once('=') else {
                refuse!(url, "public-keys line {line:?} is not INDEX=NAME");
            };
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || index.len() > 4 {
                refuse!(url, "public-keys index {index:?} is not a number");
            }
            if name.chars().any(char::is_control) {
                refuse!(url, "public-keys name {name:?} has a control character");
            }
            keys.push((index.to_string(), name.to_string()));
        }
        if keys.len() > MAX_KEYS {
            refuse!(
                url,
                "public-keys lists {} keys, more than {MAX_KEYS}",
                keys.len()
            );
        }
        for (index, name) in keys {
            let field = format!("public-keys/{index}/openssh-key");
            let Some((key_url, key)) = attr(c, &field)? else {
                refuse!(
                    url,
                    "public-keys lists {index}={name}, but {field} is not there"
                );
            };
            let key = check!(key);
            let key = check!(check_key(&field, &key).map_err(|reason| MetadataError {
                path: key_url.clone(),
                reason,
            }));
            md.public_keys.push((name, key));
        }
        md.public_keys.sort();
    }
    Ok(Ok(md))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::tests_support::{cfg, KEY, KEY2};
    use crate::cloud::{find, Service};
    use crate::testutil::fake_cloud::{
        FakeCloud, Reply, TOKEN_HEADER as SEEN_TOKEN, TTL_HEADER as SEEN_TTL,
    };

    fn one(s: &FakeCloud) -> CloudData {
        find(&cfg(&s.base(), &[Service::Ec2]))
            .unwrap()
            .expect("an EC2 service")
    }

    #[test]
    fn imdsv2_token_then_user_data_and_facts() {
        let s = FakeCloud::start("127.0.0.1:0", Some("tok-123"));
        s.ec2_instance(
            Some("#cloud-config\nwrite_files: []\n"),
            "ip-10-0-0-5.ec2.internal other.name",
            Some("203.0.113.7"),
            &[KEY, KEY2],
        );
        let d = one(&s);
        assert_eq!(d.service, Service::Ec2);
        assert_eq!(
            d.source,
            format!("EC2 metadata service {} (IMDSv2)", s.base())
        );
        assert_eq!(
            d.user_data.as_deref(),
            Some(&b"#cloud-config\nwrite_files: []\n"[..])
        );
        let md = d.metadata.unwrap();
        assert_eq!(md.hostname.as_deref(), Some("ip-10-0-0-5"));
        assert_eq!(
            md.addresses.private_ipv4,
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            md.addresses.public_ipv4,
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            md.public_keys,
            [
                ("key0".to_string(), KEY.to_string()),
                ("key1".to_string(), KEY2.to_string())
            ]
        );
        // the token first, asked with a TTL; every GET carried it
        let reqs = s.requests();
        assert_eq!(reqs[0].method, "PUT");
        assert_eq!(reqs[0].path, "/latest/api/token");
        assert_eq!(reqs[0].header(SEEN_TTL), Some(TOKEN_TTL_SECONDS));
        for r in &reqs[1..] {
            assert_eq!(r.method, "GET", "{r:?}");
            assert_eq!(r.header(SEEN_TOKEN), Some("tok-123"), "{r:?}");
        }
        assert_eq!(
            s.lines()[1..],
            [
                "GET /latest/user-data",
                "GET /latest/meta-data/local-ipv4",
                "GET /latest/meta-data/public-ipv4",
                "GET /latest/meta-data/hostname",
                "GET /latest/meta-data/public-keys/",
                "GET /latest/meta-data/public-keys/0/openssh-key",
                "GET /latest/meta-data/public-keys/1/openssh-key",
            ]
        );
    }

    #[test]
    fn no_user_data_no_public_address_no_keys_are_no_errors() {
        let s = FakeCloud::start("127.0.0.1:0", Some("t"));
        s.ec2_instance(None, "h1", None, &[]);
        let d = one(&s);
        assert_eq!(d.user_data, None);
        let md = d.metadata.unwrap();
        assert_eq!(md.hostname.as_deref(), Some("h1"));
        assert_eq!(md.addresses.public_ipv4, None);
        assert!(md.public_keys.is_empty());
    }

    #[test]
    fn imdsv1_only_where_allowed() {
        // a service from before IMDSv2: the PUT is refused, GETs need no token
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.ec2_instance(Some("#cloud-config\n"), "old", None, &[])
            .route("PUT", "/latest/api/token", vec![Reply::Status(405)]);
        let mut c = cfg(&s.base(), &[Service::Ec2]);
        assert!(find(&c).unwrap().is_none());
        assert_eq!(s.lines(), ["PUT /latest/api/token"]);
        c.imdsv1 = true;
        let d = find(&c).unwrap().unwrap();
        assert_eq!(
            d.source,
            format!("EC2 metadata service {} (IMDSv1)", s.base())
        );
        assert_eq!(d.metadata.unwrap().hostname.as_deref(), Some("old"));
        assert!(s.requests().iter().all(|r| r.header(SEEN_TOKEN).is_none()));
        // IMDSv1 allowed, but nothing of EC2 there (a DigitalOcean droplet)
        let d = FakeCloud::start("127.0.0.1:0", None);
        d.droplet("{}", None);
        assert!(find(&cfg_v1(&d.base())).unwrap().is_none());
        assert_eq!(
            d.lines(),
            ["PUT /latest/api/token", "GET /latest/meta-data/"]
        );
    }

    fn cfg_v1(base: &str) -> crate::cloud::Config {
        let mut c = cfg(base, &[Service::Ec2]);
        c.imdsv1 = true;
        c
    }

    #[test]
    fn hostile_facts_are_refused_naming_the_url_and_field() {
        let cases: &[(&str, &[u8], &str)] = &[
            (
                "local-ipv4",
                b"10.0.0.300",
                "local-ipv4 \"10.0.0.300\" is not an IPv4 address",
            ),
            ("local-ipv4", b"\xff\xfe", "local-ipv4 is not UTF-8 text"),
            (
                "public-ipv4",
                b"<html>",
                "public-ipv4 \"<html>\" is not an IPv4 address",
            ),
            ("hostname", b"evil;rm -rf /", "hostname \"evil;rm\""),
            (
                "hostname",
                b"a\nb",
                "hostname \"a\\nb\" has a control character",
            ),
            ("hostname", b"-x.example", "hostname \"-x\""),
            ("hostname", b".example", "starts with a dot"),
            (
                "public-keys/",
                b"0=k\nnot a key line",
                "public-keys line \"not a key line\" is not INDEX=NAME",
            ),
            (
                "public-keys/",
                b"../../x=k",
                "public-keys index \"../../x\" is not a number",
            ),
            (
                "public-keys/",
                b"0=k\n1=gone",
                "public-keys lists 1=gone, but public-keys/1/openssh-key is not there",
            ),
            (
                "public-keys/0/openssh-key",
                b"ssh-ed25519 AAAA a\nssh-rsa BBBB evil\n",
                "public-keys/0/openssh-key has a line break",
            ),
            (
                "public-keys/0/openssh-key",
                b"  \n",
                "public-keys/0/openssh-key is empty",
            ),
        ];
        for (field, body, want) in cases {
            let s = FakeCloud::start("127.0.0.1:0", Some("t"));
            s.ec2_instance(Some("#cloud-config\n"), "fine", None, &[KEY]);
            s.get(&format!("/latest/meta-data/{field}"), body.to_vec());
            let d = one(&s);
            assert!(d.user_data.is_some(), "the user-data stays");
            let e = d.metadata.unwrap_err();
            assert!(
                e.path
                    .starts_with(&format!("{}/latest/meta-data/", s.base())),
                "{field}: {e}"
            );
            assert!(e.to_string().starts_with(&format!("{}: ", e.path)), "{e}");
            assert!(e.reason.contains(want), "{field}: {e}");
        }
    }

    #[test]
    fn broken_answers_fail_the_source_naming_the_url_and_field() {
        let big = "#cloud-config\n".to_string() + &"#".repeat(2 << 20);
        let cases: Vec<(&str, Reply, &str)> = vec![
            (
                "/latest/user-data",
                Reply::Body(big.into_bytes()),
                "(user-data): larger than 1048576 bytes",
            ),
            (
                "/latest/user-data",
                Reply::Endless,
                "(user-data): larger than 1048576 bytes",
            ),
            (
                "/latest/user-data",
                Reply::Status(403),
                "(user-data): HTTP 403",
            ),
            (
                "/latest/user-data",
                Reply::Redirect("http://192.0.2.66/ud".into()),
                "redirects are not followed",
            ),
            (
                "/latest/meta-data/hostname",
                Reply::Status(500),
                "(hostname): HTTP 500 (gave up after 3 tries)",
            ),
            (
                "/latest/meta-data/local-ipv4",
                Reply::Slow {
                    len: 50,
                    every: std::time::Duration::from_millis(100),
                },
                "(local-ipv4): ",
            ),
            (
                "/latest/meta-data/public-keys/0/openssh-key",
                Reply::Status(401),
                "the session token was refused",
            ),
        ];
        for (path, reply, want) in cases {
            let s = FakeCloud::start("127.0.0.1:0", Some("t"));
            s.ec2_instance(Some("#cloud-config\n"), "fine", None, &[KEY]);
            s.route("GET", path, vec![reply]);
            let e = find(&cfg(&s.base(), &[Service::Ec2])).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{}{path} (", s.base())),
                "{path}: {msg}"
            );
            assert!(msg.contains(want), "{path}: {msg}");
        }
        // a token that is no word
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.route(
            "PUT",
            "/latest/api/token",
            vec![Reply::Body(b"a\r\nX-Evil: 1".to_vec())],
        );
        let e = find(&cfg(&s.base(), &[Service::Ec2])).unwrap_err();
        assert!(
            e.to_string().contains("(IMDSv2 session token): the token"),
            "{e}"
        );
    }
}
