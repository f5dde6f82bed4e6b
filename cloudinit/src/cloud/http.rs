//! The HTTP side of the metadata services: a ureq client that follows no redirect and uses no proxy, short probe limits until the service has answered once, bounded tries with cairn-fetch's doubling waits, one deadline for the whole conversation, and a size limit on every body.

use std::time::{Duration, Instant};

use super::{CloudError, Limits};

/// GET or PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Put,
}

/// A request's answer: a 2xx body, or another status (4xx; 3xx and 5xx
/// are errors).
#[derive(Debug)]
pub(crate) enum Got {
    Body(Vec<u8>),
    Status(u16),
}

/// Why a request gave no answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing ever answered at this address (only before the first
    /// answer): no service is there.
    Unreachable(String),
    /// The service answered before, or this answer is unusable: the source
    /// failed.
    Failed(CloudError),
}

/// One try's failure.
enum TryError {
    /// No complete answer (connect, timeout, reset, body cut): retried.
    Network(String),
    /// A 5xx, 408 or 429: retried.
    Busy(u16),
    /// Final.
    Final(String),
}

pub(crate) struct Client {
    agent: ureq::Agent,
    limits: Limits,
    deadline: Instant,
    /// Whether the service has answered once (then the probe limits no
    /// longer apply, and a network failure is an error, not absence).
    answered: bool,
}

impl Client {
    pub(crate) fn new(limits: &Limits, start: Instant) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // a redirect is answered as it is, never followed: the
            // metadata (and the IMDSv2 token in its header) stays with the
            // address that was asked
            .max_redirects(0)
            // the link-local service is never reached through a proxy
            .proxy(None)
            .user_agent(concat!("cairn-cloudinit/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            limits: limits.clone(),
            deadline: start + limits.total,
            answered: false,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `method url` with `headers`; a 2xx body holds at most `limit` bytes.
    /// `field` names what is asked for in errors. Retries per the limits.
    pub(crate) fn call(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
        field: &str,
    ) -> Result<Got, CallError> {
        let failed = |reason: String| {
            CallError::Failed(CloudError::Fetch {
                url: url.to_string(),
                field: field.to_string(),
                reason,
            })
        };
        let mut n = 1;
        loop {
            let probing = !self.answered;
            let (tries, connect, timeout) = if probing {
                (
                    self.limits.probe_tries.max(1),
                    self.limits.probe_connect,
                    self.limits.probe_timeout,
                )
            } else {
                (
                    self.limits.tries.max(1),
                    self.limits.connect,
                    self.limits.timeout,
                )
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed(format!(
                    "no time left: the metadata service may take {:?} in all",
                    self.limits.total
                )));
            }
            let err = match self.once(method, url, headers, limit, connect, timeout.min(left)) {
                Ok(got) => return Ok(got),
                Err(TryError::Final(why)) => return Err(failed(why)),
                Err(e) => e,
            };
            let why = match &err {
                TryError::Network(w) => w.clone(),
                TryError::Busy(s) => format!("HTTP {s}"),
                TryError::Final(_) => unreachable!("returned above"),
            };
            if n >= tries {
                return Err(match (probing && !self.answered, err) {
                    (true, TryError::Network(_)) => {
                        CallError::Unreachable(format!("{url}: {why} ({n} tries)"))
                    }
                    _ => failed(format!("{why} (gave up after {n} tries)")),
                });
            }
            let delay = retry(&self.limits).delay(n);
            tracing::warn!(
                "{url} ({field}): {why}; try {} of {tries} in {delay:.0?}",
                n + 1
            );
            std::thread::sleep(delay.min(self.deadline.saturating_duration_since(Instant::now())));
            n += 1;
        }
    }

    fn once(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
        connect: Duration,
        timeout: Duration,
    ) -> Result<Got, TryError> {
        let sent = match method {
            Method::Get => {
                let mut req = self.agent.get(url);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.config()
                    .timeout_connect(Some(connect))
                    .timeout_global(Some(timeout))
                    .build()
                    .call()
            }
            Method::Put => {
                let mut req = self.agent.put(url);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.config()
                    .timeout_connect(Some(connect))
                    .timeout_global(Some(timeout))
                    .build()
                    .send_empty()
            }
        };
        let resp = sent.map_err(classify)?;
        self.answered = true;
        let status = resp.status().as_u16();
        match status {
            200..=299 => resp
                .into_body()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map(Got::Body)
                .map_err(classify),
            300..=399 => {
                let to = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("nowhere")
                    .chars()
                    .take(200)
                    .collect::<String>();
                Err(TryError::Final(format!(
                    "HTTP {status} to {to:?}: redirects are not followed"
                )))
            }
            s if cairn_fetch::transient_status(s) => Err(TryError::Busy(s)),
            s => Ok(Got::Status(s)),
        }
    }
}

/// The waits between tries, as cairn-fetch doubles them.
fn retry(l: &Limits) -> cairn_fetch::Retry {
    cairn_fetch::Retry {
        tries: l.tries,
        first_delay: l.first_delay,
        max_delay: l.max_delay,
    }
}

fn classify(e: ureq::Error) -> TryError {
    use ureq::Error as E;
    match e {
        E::BodyExceedsLimit(n) => TryError::Final(format!("larger than {n} bytes")),
        E::BadUri(_)
        | E::Http(_)
        | E::InvalidProxyUrl
        | E::RequireHttpsOnly(_)
        | E::TooManyRedirects
        | E::RedirectFailed => TryError::Final(e.to_string()),
        e => TryError::Network(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fake_cloud::{FakeCloud, Reply};

    fn quick() -> Limits {
        Limits {
            probe_connect: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(1),
            probe_tries: 2,
            connect: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            tries: 3,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            total: Duration::from_secs(10),
            max_user_data: 1 << 20,
            max_attribute: 1024,
            max_json: 4096,
        }
    }

    fn get(c: &mut Client, url: &str, limit: u64) -> Result<Got, CallError> {
        c.call(Method::Get, url, &[], limit, "thing")
    }

    fn failed(r: Result<Got, CallError>) -> CloudError {
        match r {
            Err(CallError::Failed(e)) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn statuses_bodies_and_retries() {
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.get("/ok", "hello")
            .route(
                "GET",
                "/busy",
                vec![
                    Reply::Status(503),
                    Reply::Drop,
                    Reply::Body(b"late".to_vec()),
                ],
            )
            .route("GET", "/down", vec![Reply::Status(500)]);
        let mut c = Client::new(&quick(), Instant::now());
        assert!(
            matches!(get(&mut c, &format!("{}/ok", s.base()), 10), Ok(Got::Body(b)) if b == b"hello")
        );
        assert!(matches!(
            get(&mut c, &format!("{}/nope", s.base()), 10),
            Ok(Got::Status(404))
        ));
        assert!(
            matches!(get(&mut c, &format!("{}/busy", s.base()), 10), Ok(Got::Body(b)) if b == b"late")
        );
        let e = failed(get(&mut c, &format!("{}/down", s.base()), 10));
        assert_eq!(
            e.to_string(),
            format!(
                "{}/down (thing): HTTP 500 (gave up after 3 tries)",
                s.base()
            )
        );
        assert_eq!(s.lines().iter().filter(|l| *l == "GET /down").count(), 3);
    }

    #[test]
    fn nothing_listening_is_absence_until_something_answered() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/x");
        let t = Instant::now();
        let mut c = Client::new(&quick(), Instant::now());
        match get(&mut c, &url, 10) {
            Err(CallError::Unreachable(why)) => assert!(why.contains("2 tries"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // once a service answered, its silence is a failure
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.get("/ok", "x").route("GET", "/gone", vec![Reply::Drop]);
        let mut c = Client::new(&quick(), Instant::now());
        assert!(get(&mut c, &format!("{}/ok", s.base()), 10).is_ok());
        let e = failed(get(&mut c, &format!("{}/gone", s.base()), 10));
        assert!(e.to_string().contains("(gave up after 3 tries)"), "{e}");
    }

    #[test]
    fn hostile_bodies_are_cut_off() {
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.get("/big", vec![b'x'; 2000])
            .route("GET", "/endless", vec![Reply::Endless])
            .route(
                "GET",
                "/slow",
                vec![Reply::Slow {
                    len: 100,
                    every: Duration::from_millis(100),
                }],
            )
            .route(
                "GET",
                "/away",
                vec![Reply::Redirect("http://192.0.2.9/steal".into())],
            );
        let mut c = Client::new(&quick(), Instant::now());
        let base = s.base();
        let e = failed(get(&mut c, &format!("{base}/big"), 1999));
        assert_eq!(
            e.to_string(),
            format!("{base}/big (thing): larger than 1999 bytes")
        );
        let t = Instant::now();
        let e = failed(get(&mut c, &format!("{base}/endless"), 1 << 20));
        assert!(e.to_string().ends_with("larger than 1048576 bytes"), "{e}");
        assert_eq!(s.lines().iter().filter(|l| *l == "GET /endless").count(), 1);
        // one byte every 100 ms for 100 bytes: each try stops at 1 s
        let e = failed(get(&mut c, &format!("{base}/slow"), 1000));
        assert!(e.to_string().contains("gave up after 3 tries"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
        // a redirect is not followed, once
        let e = failed(get(&mut c, &format!("{base}/away"), 1000));
        assert_eq!(
            e.to_string(),
            format!("{base}/away (thing): HTTP 302 to \"http://192.0.2.9/steal\": redirects are not followed")
        );
        assert_eq!(s.lines().iter().filter(|l| *l == "GET /away").count(), 1);
    }

    #[test]
    fn the_deadline_covers_the_whole_conversation() {
        let s = FakeCloud::start("127.0.0.1:0", None);
        s.get("/ok", "x").route(
            "GET",
            "/slow",
            vec![Reply::Slow {
                len: 100,
                every: Duration::from_millis(100),
            }],
        );
        let l = Limits {
            total: Duration::from_millis(1500),
            ..quick()
        };
        let t = Instant::now();
        let mut c = Client::new(&l, Instant::now());
        assert!(get(&mut c, &format!("{}/ok", s.base()), 10).is_ok());
        let e = failed(get(&mut c, &format!("{}/slow", s.base()), 1000));
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        let e2 = failed(get(&mut c, &format!("{}/ok", s.base()), 10));
        assert!(e2.to_string().contains("no time left"), "{e} / {e2}");
    }
}
