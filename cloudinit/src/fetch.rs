//! HTTP(S) fetch of user-data with coreos-cloudinit's retry policy: exponential backoff on network errors and 5xx, 4xx final; the client, the GET and the retry loop are cairn-fetch's.

use std::time::Duration;

use cairn_fetch::{Retry, Transient};

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
    /// The tries and waits, as cairn-fetch runs them.
    pub fn retry(&self) -> Retry {
        Retry {
            tries: self.max_tries,
            first_delay: self.initial_backoff,
            max_delay: self.max_backoff,
        }
    }

    /// The sleep after failed try number `try_no` (1-based).
    pub fn backoff(&self, try_no: u32) -> Duration {
        self.retry().delay(try_no)
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

/// One try's failure under coreos-cloudinit's rule, which retries network
/// errors and 5xx only: a 408 or 429 is final here, as every 4xx.
struct Try(cairn_fetch::Error);

impl std::fmt::Display for Try {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Transient for Try {
    fn is_transient(&self) -> bool {
        match &self.0 {
            cairn_fetch::Error::Status { status, .. } => (500..=599).contains(status),
            e => e.is_transient(),
        }
    }

    fn gave_up(self, tries: u32, secs: u64) -> Self {
        Try(self.0.gave_up(tries, secs))
    }
}

/// `e`'s message without the URL in front.
fn reason(url: &str, e: &cairn_fetch::Error) -> String {
    let s = e.to_string();
    match s.strip_prefix(url).and_then(|r| r.strip_prefix(": ")) {
        Some(r) => r.to_string(),
        None => s,
    }
}

/// GET `url` with retries per `policy`. Each try and each failure is logged.
pub fn fetch(url: &str, policy: &RetryPolicy) -> Result<Vec<u8>, FetchError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::InvalidUrl {
            url: url.to_string(),
        });
    }
    let agent = cairn_fetch::agent(
        concat!("cairn-cloudinit/", env!("CARGO_PKG_VERSION")),
        cairn_fetch::Timeouts {
            global: Some(policy.timeout),
            ..Default::default()
        },
    );
    let tries = policy.max_tries.max(1);
    let mut try_no = 0;
    let got = policy.retry().run(|| {
        try_no += 1;
        tracing::info!("fetching {url} (try {try_no} of {tries})");
        cairn_fetch::get_once(&agent, url, &[], policy.max_bytes).map_err(Try)
    });
    let e = match got {
        Ok(body) => {
            tracing::info!("fetched {url}: {} bytes", body.len());
            return Ok(body);
        }
        Err(e) => e,
    };
    let e = match e {
        Try(cairn_fetch::Error::GaveUp { tries, last, .. }) => FetchError::GaveUp {
            url: url.to_string(),
            tries,
            last: reason(url, &last),
        },
        // a single try (`max_tries` 1) that failed for a passing reason
        e if e.is_transient() => FetchError::GaveUp {
            url: url.to_string(),
            tries: try_no,
            last: reason(url, &e.0),
        },
        Try(cairn_fetch::Error::Status { status, .. }) => FetchError::Status {
            url: url.to_string(),
            status,
        },
        Try(e) => FetchError::Final {
            url: url.to_string(),
            message: reason(url, &e),
        },
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
