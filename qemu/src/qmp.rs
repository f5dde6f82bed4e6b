//! The QEMU Machine Protocol over a unix socket: message framing (a stream
//! of JSON objects, which QEMU ends with `\r\n`), message classification
//! ([`Message`]: greeting, return, error, event), and [`Qmp`], a client that
//! negotiates capabilities, runs commands with a deadline and queues the
//! asynchronous events it reads on the way.
//!
//! The same framing carries the QEMU guest agent protocol (see
//! [`crate::agent`]), whose delimited resynchronisation (a `0xFF` byte before
//! a response) [`JsonStream`] can skip to. This module owns no process.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What a QMP or guest-agent exchange can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket I/O: {0}")]
    Io(#[from] io::Error),
    /// No answer before the deadline.
    #[error("no answer to {command:?} within {:.1}s", waited.as_secs_f64())]
    Timeout { command: String, waited: Duration },
    /// The peer closed the connection.
    #[error("connection closed while waiting for {command:?}")]
    Closed { command: String },
    /// Bytes that are not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The command ran and returned an error object.
    #[error("{command:?} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One message from QEMU (or the guest agent), classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {"version": ..., "capabilities": [...]}}`, first on connect.
    Greeting {
        version: Value,
        capabilities: Vec<String>,
    },
    /// `{"return": ..., "id": ...}`.
    Return { id: Option<Value>, value: Value },
    /// `{"error": {"class": ..., "desc": ...}, "id": ...}`.
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    /// `{"event": NAME, "data": ..., "timestamp": {"seconds", "microseconds"}}`.
    Event(Event),
}

/// An asynchronous QMP event (`SHUTDOWN`, `RESET`, `WATCHDOG`, `STOP`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// Host time of the event, seconds and microseconds since the epoch.
    pub timestamp: Option<(u64, u64)>,
}

impl Message {
    /// Classifies a decoded JSON value.
    pub fn from_value(v: Value) -> Result<Message, QmpError> {
        let Value::Object(mut map) = v else {
            return Err(QmpError::Protocol(format!("expected an object, got {v}")));
        };
        let id = map.remove("id");
        if let Some(greeting) = map.remove("QMP") {
            let version = greeting.get("version").cloned().unwrap_or(Value::Null);
            let capabilities = greeting
                .get("capabilities")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Message::Greeting {
                version,
                capabilities,
            });
        }
        if let Some(value) = map.remove("return") {
            return Ok(Message::Return { id, value });
        }
        if let Some(err) = map.remove("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            return Ok(Message::Error {
                id,
                class: field("class"),
                desc: field("desc"),
            });
        }
        if let Some(Value::String(name)) = map.remove("event") {
            let data = map.remove("data").unwrap_or(Value::Null);
            let timestamp = map.get("timestamp").and_then(|t| {
                Some((
                    t.get("seconds")?.as_u64()?,
                    t.get("microseconds")?.as_u64()?,
                ))
            });
            return Ok(Message::Event(Event {
                name,
                data,
                timestamp,
            }));
        }
        Err(QmpError::Protocol(format!(
            "unknown message {}",
            Value::Object(map)
        )))
    }
}

/// Takes one complete JSON value off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only whitespace or an unfinished
/// value (read more and call again). With `skip_to_delimiter`, bytes up to
/// and including the first `0xFF` are dropped first (the guest agent's
/// `guest-sync-delimited` answer starts with one); the flag is cleared once
/// the delimiter was found.
pub fn take_value(
    buf: &mut Vec<u8>,
    skip_to_delimiter: &mut bool,
) -> Result<Option<Value>, QmpError> {
    if *skip_to_delimiter {
        match buf.iter().position(|&b| b == 0xff) {
            Some(i) => {
                buf.drain(..=i);
                *skip_to_delimiter = false;
            }
            None => {
                buf.clear();
                return Ok(None);
            }
        }
    }
    // A stray delimiter outside a resync is noise between values.
    buf.retain(|&b| b != 0xff);
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match stream.next() {
        None => {
            buf.clear();
            Ok(None)
        }
        Some(Ok(v)) => {
            let used = stream.byte_offset();
            buf.drain(..used);
            Ok(Some(v))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => {
            let shown = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
            buf.clear();
            Err(QmpError::Protocol(format!("bad JSON ({e}): {shown}")))
        }
    }
}

/// A unix stream carrying JSON values, read with deadlines.
#[derive(Debug)]
pub struct JsonStream {
    sock: UnixStream,
    buf: Vec<u8>,
    /// Drop input up to the next `0xFF` before parsing (guest agent resync).
    pub skip_to_delimiter: bool,
}

impl JsonStream {
    pub fn new(sock: UnixStream) -> Self {
        JsonStream {
            sock,
            buf: Vec::new(),
            skip_to_delimiter: false,
        }
    }

    /// Writes one value followed by `\n`.
    pub fn send(&mut self, v: &Value) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(v).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.send_raw(&bytes)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.set_write_timeout(Some(Duration::from_secs(10)))?;
        self.sock.write_all(bytes)?;
        self.sock.flush()
    }

    /// The next value, or `Ok(None)` when `deadline` passed first.
    /// `command` names what is awaited, for errors.
    pub fn recv(&mut self, deadline: Instant, command: &str) -> Result<Option<Value>, QmpError> {
        loop {
            if let Some(v) = take_value(&mut self.buf, &mut self.skip_to_delimiter)? {
                return Ok(Some(v));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A zero timeout means "block forever" to the OS: never pass it.
            let left = (deadline - now).max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 64 * 1024];
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        command: command.to_owned(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(QmpError::Closed {
                        command: command.to_owned(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A connected, capability-negotiated QMP client.
#[derive(Debug)]
pub struct Qmp {
    stream: JsonStream,
    next_id: u64,
    events: VecDeque<Event>,
    version: Value,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and leaves
    /// capability-negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let sock = UnixStream::connect(path)?;
        Qmp::from_stream(sock, timeout)
    }

    /// Same as [`connect`](Self::connect) over an already connected socket.
    pub fn from_stream(sock: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut stream = JsonStream::new(sock);
        let deadline = Instant::now() + timeout;
        let greeting = stream
            .recv(deadline, "greeting")?
            .ok_or_else(|| QmpError::Timeout {
                command: "greeting".into(),
                waited: timeout,
            })?;
        let version = match Message::from_value(greeting)? {
            Message::Greeting { version, .. } => version,
            other => {
                return Err(QmpError::Protocol(format!(
                    "expected the QMP greeting, got {other:?}"
                )))
            }
        };
        let mut qmp = Qmp {
            stream,
            next_id: 1,
            events: VecDeque::new(),
            version,
        };
        qmp.execute("qmp_capabilities", None, timeout)?;
        Ok(qmp)
    }

    /// QEMU's version object from the greeting.
    pub fn version(&self) -> &Value {
        &self.version
    }

    /// Runs `command` with optional `arguments` and returns its `return`
    /// value. Events read meanwhile are queued for [`take_events`](Self::take_events).
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        self.stream.send(&msg)?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(v) = self.stream.recv(deadline, command)? else {
                return Err(QmpError::Timeout {
                    command: command.to_owned(),
                    waited: timeout,
                });
            };
            match Message::from_value(v)? {
                Message::Event(e) => self.events.push_back(e),
                Message::Return { id: rid, value } if matches_id(&rid, id) => return Ok(value),
                Message::Error {
                    id: rid,
                    class,
                    desc,
                } if matches_id(&rid, id) => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    })
                }
                // An answer to an earlier command that timed out.
                Message::Return { .. } | Message::Error { .. } => {}
                Message::Greeting { .. } => {
                    return Err(QmpError::Protocol("second greeting".into()))
                }
            }
        }
    }

    /// Reads whatever events are waiting (without blocking long) and returns
    /// all queued events.
    pub fn take_events(&mut self) -> Result<Vec<Event>, QmpError> {
        self.pump(Instant::now() + Duration::from_millis(1))?;
        Ok(self.events.drain(..).collect())
    }

    /// Waits for the event `name`; events before it are dropped from the
    /// queue, events after it stay queued.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e.name == name) {
                self.events.drain(..i);
                return Ok(self.events.pop_front().expect("found above"));
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    command: format!("event {name}"),
                    waited: timeout,
                });
            }
            self.pump(deadline)?;
        }
    }

    /// Reads messages until `deadline` or the first event.
    fn pump(&mut self, deadline: Instant) -> Result<(), QmpError> {
        while let Some(v) = self.stream.recv(deadline, "events")? {
            if let Message::Event(e) = Message::from_value(v)? {
                self.events.push_back(e);
                return Ok(());
            }
        }
        Ok(())
    }
}

fn matches_id(got: &Option<Value>, want: u64) -> bool {
    match got {
        Some(v) => v.as_u64() == Some(want),
        // QEMU always echoes an id we sent; accept none for robustness.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn parse_all(input: &[u8]) -> Vec<Message> {
        let mut buf = input.to_vec();
        let mut skip = false;
        let mut out = Vec::new();
        while let Some(v) = take_value(&mut buf, &mut skip).unwrap() {
            out.push(Message::from_value(v).unwrap());
        }
        out
    }

    #[test]
    fn classifies_greeting_return_event_error() {
        // Verbatim shapes from QEMU 7.2.
        let input = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}
{"return": {}, "id": 1}
{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}
{"id": 2, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}
{"return": {"status": "running", "singlestep": false, "running": true}, "id": 3}
"#;
        let msgs = parse_all(
            &input
                .iter()
                .flat_map(|&b| {
                    if b == b'\n' {
                        vec![b'\r', b'\n']
                    } else {
                        vec![b]
                    }
                })
                .collect::<Vec<u8>>(),
        );
        assert_eq!(msgs.len(), 5);
        match &msgs[0] {
            Message::Greeting {
                version,
                capabilities,
            } => {
                assert_eq!(version["qemu"]["major"], 7);
                assert_eq!(capabilities, &["oob".to_string()]);
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(
            msgs[1],
            Message::Return {
                id: Some(json!(1)),
                value: json!({})
            }
        );
        assert_eq!(
            msgs[2],
            Message::Event(Event {
                name: "SHUTDOWN".into(),
                data: json!({"guest": false, "reason": "host-qmp-quit"}),
                timestamp: Some((1_700_000_000, 123_456)),
            })
        );
        assert_eq!(
            msgs[3],
            Message::Error {
                id: Some(json!(2)),
                class: "CommandNotFound".into(),
                desc: "The command nope has not been found".into()
            }
        );
        assert!(matches!(&msgs[4], Message::Return { value, .. } if value["status"] == "running"));
    }

    #[test]
    fn partial_values_wait_for_more_bytes() {
        let mut buf = br#"{"return": {"a"#.to_vec();
        let mut skip = false;
        assert!(take_value(&mut buf, &mut skip).unwrap().is_none());
        buf.extend_from_slice(br#"": 1}}  {"ret"#);
        let v = take_value(&mut buf, &mut skip).unwrap().unwrap();
        assert_eq!(v, json!({"return": {"a": 1}}));
        assert!(take_value(&mut buf, &mut skip).unwrap().is_none());
        buf.extend_from_slice(br#"urn": 2}"#);
        assert_eq!(
            take_value(&mut buf, &mut skip).unwrap().unwrap(),
            json!({"return": 2})
        );
        // Whitespace only: nothing, and the buffer is emptied.
        let mut ws = b" \r\n\t".to_vec();
        assert!(take_value(&mut ws, &mut skip).unwrap().is_none());
        assert!(ws.is_empty());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut buf = b"}{ nonsense".to_vec();
        let err = take_value(&mut buf, &mut false).unwrap_err();
        assert!(matches!(err, QmpError::Protocol(_)), "{err}");
        assert!(Message::from_value(json!([1])).is_err());
        assert!(Message::from_value(json!({"what": 1})).is_err());
    }

    #[test]
    fn delimiter_skips_stale_bytes() {
        // A stale answer and half a value, then the agent's 0xFF, then the
        // answer we want.
        let mut buf = br#"{"return": 7}{"retu"#.to_vec();
        buf.push(0xff);
        buf.extend_from_slice(br#"{"return": 42}"#);
        let mut skip = true;
        let v = take_value(&mut buf, &mut skip).unwrap().unwrap();
        assert_eq!(v, json!({"return": 42}));
        assert!(!skip);
        // Without a delimiter yet, everything read so far is dropped.
        let mut buf = br#"{"return": 7}"#.to_vec();
        let mut skip = true;
        assert!(take_value(&mut buf, &mut skip).unwrap().is_none());
        assert!(buf.is_empty() && skip);
    }

    /// A fake QEMU on a socket pair: greeting, capabilities, an event
    /// interleaved before a return, and an error.
    #[test]
    fn client_against_fake_server() {
        let (client, server) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut w = server.try_clone().unwrap();
            let mut r = std::io::BufReader::new(server);
            w.write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n",
            )
            .unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                line.clear();
                let id = v["id"].clone();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                seen.push(v.clone());
                let reply = match cmd.as_str() {
                    "qmp_capabilities" => json!({"return": {}, "id": id}),
                    "query-status" => {
                        // An event first, then the answer split in two writes.
                        w.write_all(b"{\"event\": \"RESET\", \"data\": {\"guest\": true}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n").unwrap();
                        let s = serde_json::to_string(
                            &json!({"return": {"status": "running", "running": true}, "id": id}),
                        )
                        .unwrap();
                        let (a, b) = s.split_at(10);
                        w.write_all(a.as_bytes()).unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                        // the rest with its line end in one write: a client
                        // done with the value may close before a separate one
                        w.write_all(format!("{b}\r\n").as_bytes()).unwrap();
                        continue;
                    }
                    "slow" => continue, // never answers
                    _ => {
                        json!({"error": {"class": "CommandNotFound", "desc": format!("The command {cmd} has not been found")}, "id": id})
                    }
                };
                w.write_all(format!("{reply}\r\n").as_bytes()).unwrap();
            }
            seen
        });
        let t = Duration::from_secs(5);
        let mut qmp = Qmp::from_stream(client, t).unwrap();
        assert_eq!(qmp.version()["qemu"]["major"], 7);
        let status = qmp.execute("query-status", None, t).unwrap();
        assert_eq!(status["status"], "running");
        let err = qmp.execute("bogus", Some(json!({"x": 1})), t).unwrap_err();
        match err {
            QmpError::Command { command, class, .. } => {
                assert_eq!(command, "bogus");
                assert_eq!(class, "CommandNotFound");
            }
            e => panic!("{e}"),
        }
        let err = qmp
            .execute("slow", None, Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        let events = qmp.take_events().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "RESET");
        drop(qmp);
        let seen = fake.join().unwrap();
        assert_eq!(seen[0], json!({"execute": "qmp_capabilities", "id": 1}));
        assert_eq!(
            seen[2],
            json!({"execute": "bogus", "id": 3, "arguments": {"x": 1}})
        );
    }
}
