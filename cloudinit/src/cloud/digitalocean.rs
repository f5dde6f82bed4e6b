//! DigitalOcean's metadata API: `/metadata/v1.json` (`hostname`, `public_keys`, the first `interfaces.private` and `interfaces.public` entry's `ipv4`/`ipv6` `ip_address`) and `/metadata/v1/user-data`, as coreos-cloudinit read them. The JSON is DigitalOcean's and grows fields: what is not used is ignored, what is used is checked.

use serde_json::Value;

use super::http::{CallError, Client, Got, Method};
use super::{CloudData, CloudError, Probe, Service};
use crate::metadata::{check_hostname_field, check_key, Metadata, MetadataError};

/// The metadata document, relative to the base URL.
pub const METADATA_PATH: &str = "/metadata/v1.json";
/// The user-data, relative to the base URL.
pub const USER_DATA_PATH: &str = "/metadata/v1/user-data";
/// The most keys taken from `public_keys`.
pub const MAX_KEYS: usize = 64;

/// Reads the service at `base`: [`Probe::NotHere`] when something answers
/// `/metadata/v1.json` with a 4xx.
pub(crate) fn read(c: &mut Client, base: &str) -> Result<Probe, CloudError> {
    let url = format!("{base}{METADATA_PATH}");
    let max_json = c.limits().max_json;
    let json = match c.call(Method::Get, &url, &[], max_json, "metadata") {
        Ok(Got::Body(b)) => b,
        Ok(Got::Status(s)) => return Ok(Probe::NotHere(format!("{url}: HTTP {s}"))),
        Err(CallError::Unreachable(why)) => return Ok(Probe::Unreachable(why)),
        Err(CallError::Failed(e)) => return Err(e),
    };
    let ud_url = format!("{base}{USER_DATA_PATH}");
    let max_ud = c.limits().max_user_data;
    let user_data = match c.call(Method::Get, &ud_url, &[], max_ud, "user-data") {
        Ok(Got::Body(b)) => Some(b),
        Ok(Got::Status(404)) => None,
        Ok(Got::Status(s)) => {
            return Err(CloudError::Fetch {
                url: ud_url,
                field: "user-data".into(),
                reason: format!("HTTP {s}"),
            })
        }
        Err(CallError::Unreachable(why)) => {
            return Err(CloudError::Fetch {
                url: ud_url,
                field: "user-data".into(),
                reason: why,
            })
        }
        Err(CallError::Failed(e)) => return Err(e),
    };
    Ok(Probe::Found(CloudData {
        service: Service::DigitalOcean,
        source: format!("{} {base}", Service::DigitalOcean.name()),
        user_data,
        metadata: parse(&json, &url),
    }))
}

/// Parses and checks the text of `/metadata/v1.json`; `url` names it in
/// errors, with the field (`interfaces.public[0].ipv4.ip_address`).
pub fn parse(bytes: &[u8], url: &str) -> Result<Metadata, MetadataError> {
    let err = |reason: String| MetadataError {
        path: url.to_string(),
        reason,
    };
    let top: Value =
        serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let Value::Object(top) = top else {
        return Err(err("not a JSON object".into()));
    };
    let mut md = Metadata::default();
    match top.get("hostname") {
        None | Some(Value::Null) => {}
        Some(Value::String(h)) => md.hostname = check_hostname_field("hostname", h).map_err(err)?,
        Some(_) => return Err(err("hostname is not a string".into())),
    }
    match top.get("public_keys") {
        None | Some(Value::Null) => {}
        Some(Value::Array(keys)) => {
            if keys.len() > MAX_KEYS {
                return Err(err(format!(
                    "public_keys has {} keys, more than {MAX_KEYS}",
                    keys.len()
                )));
            }
            for (i, k) in keys.iter().enumerate() {
                let field = format!("public_keys[{i}]");
                let Value::String(k) = k else {
                    return Err(err(format!("{field} is not a string")));
                };
                md.public_keys
                    .push((i.to_string(), check_key(&field, k).map_err(err)?));
            }
        }
        Some(_) => return Err(err("public_keys is not a JSON array".into())),
    }
    let interfaces = match top.get("interfaces") {
        None | Some(Value::Null) => None,
        Some(Value::Object(i)) => Some(i),
        Some(_) => return Err(err("interfaces is not a JSON object".into())),
    };
    for kind in ["private", "public"] {
        let first = match interfaces.and_then(|i| i.get(kind)) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(list)) => match list.first() {
                None => continue,
                Some(Value::Object(o)) => o,
                Some(_) => return Err(err(format!("interfaces.{kind}[0] is not a JSON object"))),
            },
            Some(_) => return Err(err(format!("interfaces.{kind} is not a JSON array"))),
        };
        let address = |family: &str| -> Result<Option<String>, MetadataError> {
            let field = format!("interfaces.{kind}[0].{family}");
            match first.get(family) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(a)) => match a.get("ip_address") {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                    Some(_) => Err(err(format!("{field}.ip_address is not a string"))),
                },
                Some(_) => Err(err(format!("{field} is not a JSON object"))),
            }
        };
        let v4 = match address("ipv4")? {
            Some(a) => super::ipv4(url, &format!("interfaces.{kind}[0].ipv4.ip_address"), &a)?,
            None => None,
        };
        let v6 = match address("ipv6")? {
            Some(a) => super::ipv6(url, &format!("interfaces.{kind}[0].ipv6.ip_address"), &a)?,
            None => None,
        };
        if kind == "private" {
            md.addresses.private_ipv4 = v4;
            md.addresses.private_ipv6 = v6;
        } else {
            md.addresses.public_ipv4 = v4;
            md.addresses.public_ipv6 = v6;
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::tests_support::{cfg, KEY, KEY2};
    use crate::cloud::{find, DEFAULT_SERVICES};
    use crate::testutil::fake_cloud::{FakeCloud, Reply};

    /// A droplet's document as DigitalOcean documents it, with fields
    /// cairn does not use.
    fn droplet_json(hostname: &str) -> String {
        format!(
            r##"{{"droplet_id": 2756294, "hostname": "{hostname}", "vendor_data": "#cloud-config\n",
                "public_keys": ["{KEY}\n", "{KEY2}"], "auth_key": "x", "region": "nyc3",
                "interfaces": {{
                  "private": [{{"ipv4": {{"ip_address": "10.132.255.113", "netmask": "255.255.0.0", "gateway": "0.0.0.0"}},
                               "mac": "04:01:2a:0f:2a:02", "type": "private"}}],
                  "public": [{{"ipv4": {{"ip_address": "104.131.20.105", "netmask": "255.255.192.0", "gateway": "104.131.0.1"}},
                              "ipv6": {{"ip_address": "2604:A880:0800:0010:0000:0000:017D:2001", "cidr": 64}},
                              "anchor_ipv4": {{"ip_address": "10.17.0.5"}},
                              "mac": "04:01:2a:0f:2a:01", "type": "public"}}]}},
                "floating_ip": {{"ipv4": {{"active": false}}}},
                "dns": {{"nameservers": ["2001:4860:4860::8844", "8.8.8.8"]}},
                "features": {{"dhcp_enabled": false}}, "some_field_added_later": [1, 2]}}"##
        )
    }

    #[test]
    fn droplet_metadata_and_user_data() {
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.droplet(&droplet_json("web-1"), Some("#cloud-config\n"));
        // the default order: EC2 is asked first, answers 404, then DigitalOcean
        let d = find(&cfg(&s.base(), &DEFAULT_SERVICES)).unwrap().unwrap();
        assert_eq!(d.service, Service::DigitalOcean);
        assert_eq!(
            d.source,
            format!("DigitalOcean metadata service {}", s.base())
        );
        assert_eq!(d.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        let md = d.metadata.unwrap();
        assert_eq!(md.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            md.public_keys,
            [
                ("0".to_string(), KEY.to_string()),
                ("1".to_string(), KEY2.to_string())
            ]
        );
        let a = md.addresses;
        assert_eq!(a.private_ipv4, Some("10.132.255.113".parse().unwrap()));
        assert_eq!(a.public_ipv4, Some("104.131.20.105".parse().unwrap()));
        assert_eq!(
            a.public_ipv6,
            Some("2604:a880:800:10::17d:2001".parse().unwrap())
        );
        assert_eq!(a.private_ipv6, None);
        assert_eq!(
            s.lines(),
            [
                "PUT /latest/api/token",
                "GET /metadata/v1.json",
                "GET /metadata/v1/user-data"
            ]
        );
    }

    #[test]
    fn a_droplet_without_user_data_or_private_network() {
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.droplet(
            r#"{"droplet_id": 1, "hostname": "db", "interfaces": {"public": []}}"#,
            None,
        );
        let d = find(&cfg(&s.base(), &[Service::DigitalOcean]))
            .unwrap()
            .unwrap();
        assert_eq!(d.user_data, None);
        let md = d.metadata.unwrap();
        assert_eq!(md.hostname.as_deref(), Some("db"));
        assert_eq!(md.addresses, Default::default());
    }

    #[test]
    fn hostile_json_is_refused_naming_the_url_and_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"hostname": "#, "not valid JSON"),
            (r#"[1]"#, "not a JSON object"),
            (r#"{"hostname": "bad host!"}"#, "hostname \"bad host!\""),
            (r#"{"hostname": "a\nb"}"#, "hostname \"a\\nb\""),
            (r#"{"hostname": 5}"#, "hostname is not a string"),
            (
                r#"{"public_keys": "ssh-ed25519 AAAA"}"#,
                "public_keys is not a JSON array",
            ),
            (r#"{"public_keys": [7]}"#, "public_keys[0] is not a string"),
            (
                r#"{"public_keys": ["ssh-ed25519 AAAA a", "ssh-ed25519 AAAA b\ncommand=\"x\" ssh-rsa C"]}"#,
                "public_keys[1] has a line break",
            ),
            (r#"{"interfaces": []}"#, "interfaces is not a JSON object"),
            (
                r#"{"interfaces": {"private": {}}}"#,
                "interfaces.private is not a JSON array",
            ),
            (
                r#"{"interfaces": {"public": [5]}}"#,
                "interfaces.public[0] is not a JSON object",
            ),
            (
                r#"{"interfaces": {"public": [{"ipv4": "1.2.3.4"}]}}"#,
                "interfaces.public[0].ipv4 is not a JSON object",
            ),
            (
                r#"{"interfaces": {"private": [{"ipv4": {"ip_address": "10.0.0.1; rm"}}]}}"#,
                "interfaces.private[0].ipv4.ip_address \"10.0.0.1; rm\" is not an IPv4 address",
            ),
            (
                r#"{"interfaces": {"public": [{"ipv6": {"ip_address": 6}}]}}"#,
                "interfaces.public[0].ipv6.ip_address is not a string",
            ),
        ];
        for (json, want) in cases {
            let e = parse(json.as_bytes(), "http://169.254.169.254/metadata/v1.json").unwrap_err();
            assert_eq!(e.path, "http://169.254.169.254/metadata/v1.json");
            assert!(
                e.to_string()
                    .starts_with("http://169.254.169.254/metadata/v1.json: "),
                "{e}"
            );
            assert!(e.reason.contains(want), "{json}: {e}");
        }
        // through the service: the user-data stays, the facts are refused
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.droplet(r#"{"hostname": "x y"}"#, Some("#cloud-config\n"));
        let d = find(&cfg(&s.base(), &[Service::DigitalOcean]))
            .unwrap()
            .unwrap();
        assert!(d.user_data.is_some());
        assert!(d.metadata.unwrap_err().reason.contains("hostname \"x y\""));
    }

    #[test]
    fn an_oversized_document_or_user_data_fails_the_source() {
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.route("GET", METADATA_PATH, vec![Reply::Endless]);
        let e = find(&cfg(&s.base(), &[Service::DigitalOcean])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}/metadata/v1.json (metadata): larger than 262144 bytes",
                s.base()
            )
        );
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.droplet("{}", None)
            .route("GET", USER_DATA_PATH, vec![Reply::Endless]);
        let e = find(&cfg(&s.base(), &[Service::DigitalOcean])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}/metadata/v1/user-data (user-data): larger than 1048576 bytes",
                s.base()
            )
        );
    }
}
