//! Watches: [`Client::watch`] opens `POST /v3/watch` (a stream of newline-separated JSON
//! messages `{"result": {...}}`) and hands back a [`Watch`], a stream of [`WatchUpdate`]s fed by
//! a task. The task reconnects after a broken connection (to the next endpoint when there are
//! several) and resumes at the revision after the last one it delivered, so no event is lost or
//! repeated; when that revision has been compacted away it says so ([`WatchUpdate::Compacted`])
//! and ends, and the caller lists again. Every line is bounded in size and, once started, in
//! time.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{decode, too_large};
use crate::kv::{prefix_end, KeyValue, ResponseHeader};
use crate::wire::{de_i64, de_list, is_false, is_zero, ser_b64, ser_i64, StreamLine};
use crate::{Client, Error};
use cairn_formats::report::Chain;

const PATH: &str = "/v3/watch";
/// Reconnection back-off: from this, doubling...
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Updates buffered between the task and the caller (then the task waits, and so does etcd).
const CHANNEL: usize = 64;

/// What to watch and from when.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    prefix: bool,
    range_end: Option<Vec<u8>>,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
}

impl WatchOptions {
    /// One key, from now on.
    pub fn new() -> WatchOptions {
        WatchOptions::default()
    }

    /// Every key starting with the key given.
    pub fn prefix(mut self) -> WatchOptions {
        self.prefix = true;
        self
    }

    /// Keys from the key given up to `end` (exclusive).
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> WatchOptions {
        self.range_end = Some(end.into());
        self
    }

    /// Events from `revision` on (typically a list's header revision + 1); 0: from now.
    pub fn start_revision(mut self, revision: i64) -> WatchOptions {
        self.start_revision = revision;
        self
    }

    /// Events carry the key as it was before.
    pub fn prev_kv(mut self) -> WatchOptions {
        self.prev_kv = true;
        self
    }

    /// etcd sends [`WatchUpdate::Progress`] now and then on a quiet watch (every 10 minutes by
    /// default, etcd's `--experimental-watch-progress-notify-interval`).
    pub fn progress_notify(mut self) -> WatchOptions {
        self.progress_notify = true;
        self
    }
}

#[derive(Serialize)]
struct CreateRequest {
    #[serde(serialize_with = "ser_b64")]
    key: Vec<u8>,
    #[serde(serialize_with = "ser_b64", skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    start_revision: i64,
    #[serde(skip_serializing_if = "is_false")]
    prev_kv: bool,
    #[serde(skip_serializing_if = "is_false")]
    progress_notify: bool,
}

#[derive(Serialize)]
struct WatchRequest<'a> {
    create_request: &'a CreateRequest,
}

/// PUT or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum EventKind {
    /// A key written (created or changed).
    #[default]
    #[serde(rename = "PUT")]
    Put,
    /// A key deleted (by a delete, or when its lease went).
    #[serde(rename = "DELETE")]
    Delete,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// (The gateway leaves out `PUT`, the default.)
    #[serde(rename = "type", default)]
    pub kind: EventKind,
    /// The key after the change (for a DELETE: the key and the mod revision only).
    #[serde(default)]
    pub kv: KeyValue,
    /// The key before (with [`WatchOptions::prev_kv`], when it existed).
    #[serde(default)]
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn mod_revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

#[derive(Debug, Default, Deserialize)]
struct WatchResponse {
    #[serde(default)]
    header: ResponseHeader,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "de_i64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default, deserialize_with = "de_list")]
    events: Vec<Event>,
}

/// What a [`Watch`] yields.
#[derive(Debug)]
pub enum WatchUpdate {
    /// Changes, in revision order, each delivered once.
    Events {
        header: ResponseHeader,
        events: Vec<Event>,
    },
    /// Nothing changed up to `revision` (with [`WatchOptions::progress_notify`]).
    Progress { revision: i64 },
    /// The history from the resume revision on is compacted: events were lost. List again
    /// (the watch has ended) and watch from the list's revision + 1.
    Compacted { compact_revision: i64 },
    /// The connection broke; the task is reconnecting and resumes at `resume_revision`.
    Reconnecting { error: Error, resume_revision: i64 },
}

/// A running watch: a stream of updates (also `next().await`). Ends after
/// [`WatchUpdate::Compacted`] or an error that retrying cannot cure (an `Err` item); dropping it
/// stops the task and closes the connection.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchUpdate, Error>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// The next update; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchUpdate, Error>> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Watch {
    type Item = Result<WatchUpdate, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Watches `key` (or the span `opts` gives). Returns once etcd confirmed the watch
    /// (`created`); fails when no endpoint could be reached or etcd refused it.
    pub async fn watch(&self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> Result<Watch, Error> {
        let key = key.into();
        let range_end = match (&opts.range_end, opts.prefix) {
            (Some(end), _) => end.clone(),
            (None, true) => prefix_end(&key),
            (None, false) => Vec::new(),
        };
        let mut state = Stream {
            client: self.clone(),
            req: CreateRequest {
                key,
                range_end,
                start_revision: opts.start_revision,
                prev_kv: opts.prev_kv,
                progress_notify: opts.progress_notify,
            },
            next_revision: opts.start_revision,
            delivered: false,
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let conn = state.connect().await?;
        let task = tokio::spawn(async move { state.run(conn, tx).await });
        Ok(Watch { rx, task })
    }
}

/// The task's state: what to ask for and where to resume.
struct Stream {
    client: Client,
    req: CreateRequest,
    /// The first revision not yet delivered (0: from whatever is current at the next connect).
    next_revision: i64,
    /// Something was delivered since the last reconnection.
    delivered: bool,
}

/// One open watch connection, past its `created` message.
struct Conn {
    lines: Lines,
}

/// What the task does after an event of the connection.
enum Step {
    Go,
    Stop,
}

type Tx = mpsc::Sender<Result<WatchUpdate, Error>>;

impl Stream {
    /// Opens the stream at `next_revision` and reads up to `created`, within the request
    /// timeout.
    async fn connect(&mut self) -> Result<Conn, Error> {
        self.req.start_revision = self.next_revision;
        let body = Bytes::from(
            serde_json::to_vec(&WatchRequest {
                create_request: &self.req,
            })
            .expect("serialises"),
        );
        let config = self.client.config();
        let timeout = config.request_timeout;
        let max_line = config.max_watch_line;
        let (endpoint, incoming) = self.client.open_stream(PATH, body).await?;
        let mut lines = Lines::new(endpoint.clone(), incoming, max_line, timeout);
        let first = tokio::time::timeout(timeout, lines.next_line()).await;
        let line = match first {
            Err(_) => {
                return Err(Error::Timeout {
                    endpoint,
                    path: PATH,
                    after: timeout,
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => {
                return Err(Error::Transport {
                    endpoint,
                    path: PATH,
                    reason: "the stream ended before the watch was created".into(),
                })
            }
            Ok(Ok(Some(line))) => line,
        };
        let r = parse(&endpoint, &line)?;
        if !r.created {
            return Err(Error::Decode {
                endpoint,
                path: PATH,
                reason: "the first message does not create the watch".into(),
            });
        }
        if self.next_revision == 0 {
            // from now: everything after the revision the watch was created at
            self.next_revision = r.header.revision + 1;
        }
        if r.canceled {
            // etcd creates and cancels at once for a bad request
            return Err(self.canceled(&endpoint, r));
        }
        Ok(Conn { lines })
    }

    fn canceled(&self, endpoint: &str, r: WatchResponse) -> Error {
        Error::WatchCanceled {
            endpoint: endpoint.to_string(),
            reason: if r.cancel_reason.is_empty() {
                "no reason given".into()
            } else {
                r.cancel_reason
            },
        }
    }

    async fn run(mut self, mut conn: Conn, tx: Tx) {
        let mut attempt = 0u32;
        loop {
            match self.pump(&mut conn, &tx).await {
                Ok(()) => return,
                Err(e) if !e.is_transient() => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let mut error = e;
                    if std::mem::take(&mut self.delivered) {
                        // a connection that delivered resets the back-off
                        attempt = 0;
                    }
                    // reconnect, with back-off, until it works or the caller is gone
                    loop {
                        let resume_revision = self.next_revision;
                        tracing::debug!("etcd watch: {error}; resuming at {resume_revision}");
                        let note = WatchUpdate::Reconnecting {
                            error,
                            resume_revision,
                        };
                        if tx.send(Ok(note)).await.is_err() {
                            return;
                        }
                        let wait = BACKOFF_MIN
                            .saturating_mul(1 << attempt.min(6))
                            .min(BACKOFF_MAX);
                        attempt += 1;
                        tokio::time::sleep(wait).await;
                        match self.connect().await {
                            Ok(c) => {
                                conn = c;
                                break;
                            }
                            Err(e) if e.is_transient() => error = e,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forwards the connection's messages until it breaks (`Err`) or the watch ends (`Ok`).
    async fn pump(&mut self, conn: &mut Conn, tx: &Tx) -> Result<(), Error> {
        loop {
            let endpoint = conn.lines.endpoint.clone();
            let Some(line) = conn.lines.next_line().await? else {
                return Err(Error::Transport {
                    endpoint,
                    path: PATH,
                    reason: "the watch stream ended".into(),
                });
            };
            let r = parse(&endpoint, &line)?;
            if let Step::Stop = self.deliver(&endpoint, r, tx).await? {
                return Ok(());
            }
        }
    }

    async fn deliver(&mut self, endpoint: &str, r: WatchResponse, tx: &Tx) -> Result<Step, Error> {
        if r.compact_revision > 0 {
            let update = WatchUpdate::Compacted {
                compact_revision: r.compact_revision,
            };
            let _ = tx.send(Ok(update)).await;
            return Ok(Step::Stop);
        }
        if r.canceled {
            return Err(self.canceled(endpoint, r));
        }
        if r.created {
            return Ok(Step::Go);
        }
        self.delivered = true;
        let update = if r.events.is_empty() {
            // a progress notification: everything up to this revision was delivered
            let revision = r.header.revision;
            self.next_revision = self.next_revision.max(revision + 1);
            WatchUpdate::Progress { revision }
        } else {
            let last = r.events.iter().map(Event::mod_revision).max().unwrap_or(0);
            self.next_revision = self.next_revision.max(last + 1);
            WatchUpdate::Events {
                header: r.header,
                events: r.events,
            }
        };
        Ok(if tx.send(Ok(update)).await.is_err() {
            Step::Stop
        } else {
            Step::Go
        })
    }
}

/// One message of the stream: a result, or the gateway's error object.
fn parse(endpoint: &str, line: &[u8]) -> Result<WatchResponse, Error> {
    let msg: StreamLine<WatchResponse> = decode(endpoint, PATH, line)?;
    match (msg.result, msg.error) {
        (_, Some(e)) => Err(Error::Etcd {
            endpoint: endpoint.to_string(),
            path: PATH,
            code: e.code(),
            message: e.text(),
        }),
        (Some(r), None) => Ok(r),
        (None, None) => Err(Error::Decode {
            endpoint: endpoint.to_string(),
            path: PATH,
            reason: format!("neither result nor error: {}", crate::client::excerpt(line)),
        }),
    }
}

/// Splits a response body into lines: each at most `max` bytes, each complete within `timeout`
/// of its first byte.
struct Lines {
    endpoint: String,
    body: Incoming,
    buf: BytesMut,
    /// The first `scanned` bytes of `buf` hold no newline.
    scanned: usize,
    max: usize,
    timeout: Duration,
    ended: bool,
}

impl Lines {
    fn new(endpoint: String, body: Incoming, max: usize, timeout: Duration) -> Lines {
        Lines {
            endpoint,
            body,
            buf: BytesMut::new(),
            scanned: 0,
            max,
            timeout,
            ended: false,
        }
    }

    /// The next non-blank line (without its newline); `None` at the end of the stream. Waits
    /// for the first byte as long as it takes (TCP keep-alive ends a stream whose peer is gone;
    /// callers bound the wait themselves where they must).
    async fn next_line(&mut self) -> Result<Option<Bytes>, Error> {
        let mut deadline = None;
        loop {
            // search only the bytes not searched yet: a long line in many small pieces costs
            // linear time
            let from = self.scanned;
            let found = self.buf[from..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|j| from + j);
            self.scanned = self.buf.len();
            if let Some(i) = found {
                if i > self.max {
                    return Err(too_large(&self.endpoint, PATH, self.max));
                }
                let line = self.buf.split_to(i + 1).freeze();
                self.scanned = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    deadline = None;
                    continue;
                }
                return Ok(Some(line.slice(..i)));
            }
            if self.buf.len() > self.max {
                return Err(too_large(&self.endpoint, PATH, self.max));
            }
            if self.ended {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                // a last line without its newline
                self.scanned = 0;
                return Ok(Some(std::mem::take(&mut self.buf).freeze()));
            }
            if deadline.is_none() && !self.buf.is_empty() {
                deadline = Some(tokio::time::Instant::now() + self.timeout);
            }
            let frame = match deadline {
                None => self.body.frame().await,
                Some(d) => tokio::time::timeout_at(d, self.body.frame())
                    .await
                    .map_err(|_| Error::Timeout {
                        endpoint: self.endpoint.clone(),
                        path: PATH,
                        after: self.timeout,
                    })?,
            };
            match frame {
                None => self.ended = true,
                Some(Err(e)) => {
                    return Err(Error::Transport {
                        endpoint: self.endpoint.clone(),
                        path: PATH,
                        reason: Chain(&e).to_string(),
                    })
                }
                // hyper hands data over in pieces of its read buffer (at most some hundred
                // KiB), so the buffer stays within the limit plus one piece
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
