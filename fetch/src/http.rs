//! The HTTP client ([`agent`]) and GETs of small documents into memory
//! ([`get`], [`get_once`]).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry::Retry;

/// The timeouts of an [`agent`]; `None`: no limit on that phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole of one request, body included.
    pub global: Option<Duration>,
    /// Resolving and connecting.
    pub connect: Option<Duration>,
    /// Waiting for the status line and headers.
    pub recv_response: Option<Duration>,
    /// Reading the body.
    pub recv_body: Option<Duration>,
}

/// An HTTP client that sends `user_agent` and returns every status as an
/// answer (this crate decides which are errors), with `timeouts`.
pub fn agent(user_agent: &str, timeouts: Timeouts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeouts.global)
        .timeout_connect(timeouts.connect)
        .timeout_recv_response(timeouts.recv_response)
        .timeout_recv_body(timeouts.recv_body)
        .user_agent(user_agent)
        .build()
        .new_agent()
}

/// GET `url` (with extra `headers`) into memory, retrying transient
/// failures per `retry`. A 2xx gives its body, which may hold at most
/// `limit` bytes ([`Error::TooLarge`] beyond, final); any other status is
/// [`Error::Status`]. `http` must come from [`agent`].
pub fn get(
    http: &ureq::Agent,
    retry: &Retry,
    url: &str,
    headers: &[(&str, String)],
    limit: u64,
) -> Result<Vec<u8>> {
    retry.run(|| get_once(http, url, headers, limit))
}

/// One try of [`get`], for a caller that runs its own loop.
pub fn get_once(
    http: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
    limit: u64,
) -> Result<Vec<u8>> {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.call().map_err(|e| Error::from_ureq(url, e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(Error::Status {
            url: url.into(),
            status,
        });
    }
    resp.into_body()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| Error::from_ureq(url, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quick;
    use cairn_testkit::{Reply, StaticHttp as Server};

    fn client() -> ureq::Agent {
        agent(
            "cairn-fetch-test",
            Timeouts {
                global: Some(Duration::from_secs(10)),
                ..Timeouts::default()
            },
        )
    }

    #[test]
    fn transient_failures_are_retried_final_ones_are_not() {
        let s = Server::with_faults(vec![
            (
                "/doc",
                b"hello".to_vec(),
                vec![Reply::Status(503), Reply::Drop, Reply::Status(429)],
            ),
            ("/gone", b"x".to_vec(), vec![Reply::Status(404)]),
            ("/busy", b"x".to_vec(), vec![Reply::Status(502); 9]),
        ]);
        let hdr = [("X-Test", "1".to_string())];
        let got = get(&client(), &quick(5), &s.at("/doc"), &hdr, 100).unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(s.ranges("/doc").len(), 4);
        assert_eq!(s.header("/doc", "x-test").as_deref(), Some("1"));

        let e = get(&client(), &quick(5), &s.at("/gone"), &[], 100).unwrap_err();
        assert!(matches!(e, Error::Status { status: 404, .. }), "{e:?}");
        assert_eq!(s.ranges("/gone").len(), 1);

        let e = get(&client(), &quick(3), &s.at("/busy"), &[], 100).unwrap_err();
        assert!(matches!(e, Error::GaveUp { tries: 3, .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("/busy: HTTP 502 (gave up after 3 tries in"),
            "{e}"
        );
        assert_eq!(s.ranges("/busy").len(), 3);
    }

    #[test]
    fn a_body_over_the_limit_is_final() {
        let s = Server::with_faults(vec![("/big", vec![7; 1000], vec![])]);
        let e = get(&client(), &quick(5), &s.at("/big"), &[], 999).unwrap_err();
        assert!(matches!(e, Error::TooLarge { limit: 999, .. }), "{e:?}");
        assert!(
            e.to_string().ends_with("/big: larger than 999 bytes"),
            "{e}"
        );
        assert_eq!(s.ranges("/big").len(), 1);
        assert_eq!(
            get(&client(), &quick(5), &s.at("/big"), &[], 1000).unwrap(),
            vec![7; 1000]
        );
    }

    #[test]
    fn a_malformed_url_is_final_and_a_closed_port_is_not() {
        let e = get(&client(), &quick(5), "http://[::1/x", &[], 10).unwrap_err();
        assert!(matches!(e, Error::Request { .. }), "{e:?}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/x");
        let e = get(&client(), &quick(2), &url, &[], 10).unwrap_err();
        assert!(matches!(e, Error::GaveUp { tries: 2, .. }), "{e:?}");
    }
}
