//! HTTP(S) fetch of user-data with coreos-cloudinit's retry policy: exponential backoff on network errors and 5xx, 4xx final.

use std::io::Read;
use std::time::Duration;

/// How hard to try. [`RetryPolicy::default`] is coreos-cloudinit's: 15 tries,
/// backoff 100 ms doubling up to 5 s, 10 s timeout per try (about 2.5 min at
/// worst when every try times out, about 50 s when the port is closed).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_tries: u32,
    /// The first sleep; doubled after each failed try.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one try (connect, send and receive the whole body).
    pub timeout: Duration,
    /// Largest accepted user-data.
    pub max_bytes: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_tries: 15,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_bytes: 16 << 20,
        }
    }
}

impl RetryPolicy {
    /// The sleep after failed try number `try_no` (1-based).
    pub fn backoff(&self, try_no: u32) -> Duration {
        let factor = 1u32
            .checked_shl(try_no.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Why a fetch gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not an http:// or https:// URL")]
    InvalidUrl { url: String },
    /// A 4xx (or other non-2xx, non-5xx) answer: final, not retried.
    #[error("{url}: HTTP status {status} (not retried)")]
    Status { url: String, status: u16 },
    /// An error that retrying cannot fix (bad URI, too many redirects, body too large).
    #[error("{url}: {message} (not retried)")]
    Final { url: String, message: String },
    #[error("{url}: gave up after {tries} tries, last error: {last}")]
    GaveUp {
        url: String,
        tries: u32,
        last: String,
    },
}

/// One try's result.
enum Attempt {
    Ok(Vec<u8>),
    Retry(String),
    Final(FetchError),
}

fn agent(policy: &RetryPolicy) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(policy.timeout))
        .http_status_as_error(false)
        .max_redirects(10)
        .user_agent(concat!("cairn-cloudinit/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn attempt(agent: &ureq::Agent, url: &str, policy: &RetryPolicy) -> Attempt {
    let mut resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(e) => return classify(url, e),
    };
    let status = resp.status().as_u16();
    match status {
        200..=299 => {
            let mut body = Vec::new();
            let reader = resp
                .body_mut()
                .with_config()
                .limit(policy.max_bytes)
                .reader();
            match reader.take(policy.max_bytes + 1).read_to_end(&mut body) {
                Ok(_) => Attempt::Ok(body),
                Err(e) => Attempt::Retry(format!("reading the body: {e}")),
            }
        }
        500..=599 => Attempt::Retry(format!("HTTP status {status}")),
        _ => Attempt::Final(FetchError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

fn classify(url: &str, e: ureq::Error) -> Attempt {
    use ureq::Error as E;
    match e {
        E::BadUri(_)
        | E::Http(_)
        | E::InvalidProxyUrl
        | E::RequireHttpsOnly(_)
        | E::TooManyRedirects
        | E::RedirectFailed
        | E::BodyExceedsLimit(_) => Attempt::Final(FetchError::Final {
            url: url.to_string(),
            message: e.to_string(),
        }),
        other => Attempt::Retry(other.to_string()),
    }
}

/// GET `url` with retries per `policy`. Each try and each failure is logged.
pub fn fetch(url: &str, policy: &RetryPolicy) -> Result<Vec<u8>, FetchError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::InvalidUrl {
            url: url.to_string(),
        });
    }
    let agent = agent(policy);
    let tries = policy.max_tries.max(1);
    let mut last = String::new();
    for try_no in 1..=tries {
        tracing::info!("fetching {url} (try {try_no} of {tries})");
        match attempt(&agent, url, policy) {
            Attempt::Ok(body) => {
                tracing::info!("fetched {url}: {} bytes", body.len());
                return Ok(body);
            }
            Attempt::Final(e) => {
                tracing::error!("{e}");
                return Err(e);
            }
            Attempt::Retry(msg) => {
                tracing::warn!("fetching {url}: {msg}");
                last = msg;
            }
        }
        if try_no < tries {
            let sleep = policy.backoff(try_no);
            tracing::info!("retrying {url} in {sleep:?}");
            std::thread::sleep(sleep);
        }
    }
    let e = FetchError::GaveUp {
        url: url.to_string(),
        tries,
        last,
    };
    tracing::error!("{e}");
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_tries: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            timeout: Duration::from_secs(5),
            max_bytes: 1 << 20,
        }
    }

    /// Serves each connection with the next status of `statuses` (the last
    /// one repeats); counts the requests.
    fn server(statuses: Vec<u16>, body: &'static str) -> (String, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/user-data", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let n = seen.fetch_add(1, Ordering::SeqCst) as usize;
                let status = statuses[n.min(statuses.len() - 1)];
                let text = if status == 200 { body } else { "" };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        (url, count)
    }

    #[test]
    fn server_errors_are_retried_until_success() {
        let (url, count) = server(vec![500, 503, 200], "#cloud-config\nhostname: a\n");
        let body = fetch(&url, &quick()).expect("fetched after two 5xx");
        assert_eq!(body, b"#cloud-config\nhostname: a\n");
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn not_found_is_final() {
        let (url, count) = server(vec![404, 200], "x");
        match fetch(&url, &quick()) {
            Err(FetchError::Status { status: 404, .. }) => {}
            other => panic!("expected a final 404, got {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "a 4xx is not retried");
    }

    #[test]
    fn closed_port_is_retried_then_given_up() {
        // bind then drop: nothing listens on that port any more
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/x");
        let start = std::time::Instant::now();
        match fetch(&url, &quick()) {
            Err(FetchError::GaveUp { tries: 4, .. }) => {}
            other => panic!("expected to give up after 4 tries, got {other:?}"),
        }
        // three sleeps of 10, 20 and 40 ms happened between the tries
        assert!(start.elapsed() >= Duration::from_millis(70));
    }

    #[test]
    fn non_http_urls_are_refused() {
        for url in ["ftp://h/x", "file:///etc/passwd", "", "h/x"] {
            assert!(
                matches!(fetch(url, &quick()), Err(FetchError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let got: Vec<u64> = (1..=8).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(p.backoff(100), Duration::from_secs(5));
    }
}
