//! Client for the QEMU guest agent (`qemu-ga` inside the guest), reached
//! through QEMU's virtio-serial port `org.qemu.guest_agent.0`, exposed on
//! the host as a unix socket. It owns the protocol only: ping, `guest-exec`
//! with `guest-exec-status` polling and base64 decoding of the captured
//! output ([`ExecOutput`]), and file reads/writes.
//!
//! The agent may not be running yet, or may still hold the answer to a
//! request that timed out; so every (re)connection, and every request after
//! a failure, starts with `guest-sync-delimited` (send `0xFF` to reset the
//! agent's parser, then drop input up to the agent's `0xFF` and any answer
//! that is not our random sync id).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::qmp::{JsonStream, Message, QmpError};

/// How a guest command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Result of [`GuestAgent::exec`]: status and captured output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExecStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent cut the output at its limit (16 MiB per stream).
    pub truncated: bool,
}

impl ExecOutput {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        self.status == ExecStatus::Exited(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Decodes a `guest-exec-status` return value: `None` while the command
    /// runs, the output once `exited` is true.
    pub fn from_status(v: &Value) -> Result<Option<ExecOutput>, QmpError> {
        let exited = v
            .get("exited")
            .and_then(Value::as_bool)
            .ok_or_else(|| QmpError::Protocol(format!("guest-exec-status without exited: {v}")))?;
        if !exited {
            return Ok(None);
        }
        let int = |k: &str| v.get(k).and_then(Value::as_i64).map(|n| n as i32);
        let status = match (int("exitcode"), int("signal")) {
            (_, Some(sig)) => ExecStatus::Signaled(sig),
            (Some(code), None) => ExecStatus::Exited(code),
            (None, None) => {
                return Err(QmpError::Protocol(format!(
                    "guest-exec-status exited without exitcode or signal: {v}"
                )))
            }
        };
        let data = |k: &str| -> Result<Vec<u8>, QmpError> {
            match v.get(k).and_then(Value::as_str) {
                None => Ok(Vec::new()),
                Some(s) => decode_b64(s, k),
            }
        };
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        Ok(Some(ExecOutput {
            status,
            stdout: data("out-data")?,
            stderr: data("err-data")?,
            truncated: flag("out-truncated") || flag("err-truncated"),
        }))
    }
}

fn decode_b64(s: &str, what: &str) -> Result<Vec<u8>, QmpError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| QmpError::Protocol(format!("bad base64 in {what}: {e}")))
}

/// Bytes per `guest-file-read` call.
const READ_CHUNK: u64 = 1 << 20;

/// A guest-agent connection (lazily opened).
#[derive(Debug)]
pub struct GuestAgent {
    path: PathBuf,
    conn: Option<JsonStream>,
    synced: bool,
    sync_counter: u64,
}

impl GuestAgent {
    /// An agent behind the unix socket `path` (not connected yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        GuestAgent {
            path: path.into(),
            conn: None,
            synced: false,
            sync_counter: 0,
        }
    }

    /// The agent's unix socket.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Runs one agent command and returns its `return` value.
    pub fn call(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let result = self.call_inner(command, arguments, deadline, timeout);
        if let Err(e) = &result {
            if !matches!(e, QmpError::Command { .. }) {
                // Unknown state: resync (and maybe reconnect) next time.
                self.synced = false;
                if !matches!(e, QmpError::Timeout { .. }) {
                    self.conn = None;
                }
            }
        }
        result
    }

    fn call_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.conn.is_none() {
            self.conn = Some(JsonStream::new(UnixStream::connect(&self.path)?));
            self.synced = false;
        }
        if !self.synced {
            self.sync(deadline, timeout)?;
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        conn.send(&msg)?;
        loop {
            let Some(v) = conn.recv(deadline, command)? else {
                return Err(QmpError::Timeout {
                    command: command.to_owned(),
                    waited: timeout,
                });
            };
            match Message::from_value(v)? {
                Message::Return { value, .. } => return Ok(value),
                Message::Error { class, desc, .. } => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    })
                }
                Message::Event(_) | Message::Greeting { .. } => {}
            }
        }
    }

    fn sync(&mut self, deadline: Instant, timeout: Duration) -> Result<(), QmpError> {
        self.sync_counter += 1;
        // Unique per process and call; fits in the agent's int.
        let id =
            (u64::from(std::process::id()) << 20 | (self.sync_counter & 0xfffff)) & 0x7fff_ffff;
        let conn = self.conn.as_mut().expect("connected before sync");
        conn.send_raw(&[0xff])?;
        conn.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))?;
        conn.skip_to_delimiter = true;
        loop {
            let Some(v) = conn.recv(deadline, "guest-sync-delimited")? else {
                return Err(QmpError::Timeout {
                    command: "guest-sync-delimited".into(),
                    waited: timeout,
                });
            };
            if let Ok(Message::Return { value, .. }) = Message::from_value(v) {
                if value.as_u64() == Some(id) {
                    self.synced = true;
                    return Ok(());
                }
            }
            // Stale answer from before: keep reading.
        }
    }

    /// `guest-ping`: succeeds once the agent answers.
    pub fn ping(&mut self, timeout: Duration) -> Result<(), QmpError> {
        self.call("guest-ping", None, timeout).map(|_| ())
    }

    /// Pings until the agent answers or `timeout` passes (the agent starts
    /// late in boot; before that, pings time out or the socket refuses).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left
                .min(Duration::from_secs(2))
                .max(Duration::from_millis(10));
            match self.ping(attempt) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(match e {
                        QmpError::Timeout { .. } => QmpError::Timeout {
                            command: "guest-ping".into(),
                            waited: timeout,
                        },
                        other => other,
                    })
                }
                Err(QmpError::Timeout { .. }) => {}
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs `argv` in the guest (no shell), waits for it and returns its
    /// status and output. Fails with [`QmpError::Timeout`] if it is still
    /// running after `timeout` (it keeps running in the guest).
    pub fn exec<S: AsRef<str>>(
        &mut self,
        argv: &[S],
        timeout: Duration,
    ) -> Result<ExecOutput, QmpError> {
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| QmpError::Protocol("guest_exec needs a program".into()))?;
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let start = Instant::now();
        let ret = self.call(
            "guest-exec",
            Some(json!({"path": path.as_ref(), "arg": args, "capture-output": true})),
            timeout,
        )?;
        let pid = ret
            .get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| QmpError::Protocol(format!("guest-exec returned {ret}")))?;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(500));
            let status = self.call("guest-exec-status", Some(json!({"pid": pid})), left)?;
            if let Some(out) = ExecOutput::from_status(&status)? {
                return Ok(out);
            }
            if start.elapsed() >= timeout {
                return Err(QmpError::Timeout {
                    command: format!("guest-exec {} (guest pid {pid})", path.as_ref()),
                    waited: start.elapsed(),
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Reads a whole file from the guest.
    pub fn file_read(&mut self, path: &str, timeout: Duration) -> Result<Vec<u8>, QmpError> {
        let handle = self.call(
            "guest-file-open",
            Some(json!({"path": path, "mode": "r"})),
            timeout,
        )?;
        let result: Result<_, QmpError> = (|| {
            let mut data = Vec::new();
            loop {
                let chunk = self.call(
                    "guest-file-read",
                    Some(json!({"handle": handle, "count": READ_CHUNK})),
                    timeout,
                )?;
                if let Some(b64) = chunk.get("buf-b64").and_then(Value::as_str) {
                    data.extend(decode_b64(b64, "buf-b64")?);
                }
                let count = chunk.get("count").and_then(Value::as_u64).unwrap_or(0);
                let eof = chunk.get("eof").and_then(Value::as_bool).unwrap_or(true);
                if eof || count == 0 {
                    return Ok(data);
                }
            }
        })();
        let closed = self.call("guest-file-close", Some(json!({"handle": handle})), timeout);
        let data = result?;
        closed?;
        Ok(data)
    }

    /// Writes (creates or truncates) a file in the guest.
    pub fn file_write(
        &mut self,
        path: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), QmpError> {
        let handle = self.call(
            "guest-file-open",
            Some(json!({"path": path, "mode": "w"})),
            timeout,
        )?;
        let result: Result<_, QmpError> = (|| {
            for chunk in data.chunks(READ_CHUNK as usize) {
                let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
                self.call(
                    "guest-file-write",
                    Some(json!({"handle": handle, "buf-b64": b64})),
                    timeout,
                )?;
            }
            Ok(())
        })();
        let closed = self.call("guest-file-close", Some(json!({"handle": handle})), timeout);
        result?;
        closed.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn decodes_exec_status() {
        // Shapes as qemu-ga 7.2 sends them.
        let running = json!({"exited": false});
        assert_eq!(ExecOutput::from_status(&running).unwrap(), None);

        let done = json!({"exitcode": 0, "out-data": "aGVsbG8K", "exited": true});
        let out = ExecOutput::from_status(&done).unwrap().unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, b"hello\n");
        assert!(out.stderr.is_empty());
        assert!(!out.truncated);

        let failed = json!({"exitcode": 2, "err-data": "bHM6IG5vcGU=", "out-data": "", "exited": true, "err-truncated": true});
        let out = ExecOutput::from_status(&failed).unwrap().unwrap();
        assert_eq!(out.status, ExecStatus::Exited(2));
        assert_eq!(out.stderr_str(), "ls: nope");
        assert!(out.truncated && !out.success());

        let killed = json!({"signal": 9, "exited": true});
        let out = ExecOutput::from_status(&killed).unwrap().unwrap();
        assert_eq!(out.status, ExecStatus::Signaled(9));

        // Binary output survives.
        let bin = json!({"exitcode": 0, "out-data": "AP+A", "exited": true});
        assert_eq!(
            ExecOutput::from_status(&bin).unwrap().unwrap().stdout,
            vec![0x00, 0xff, 0x80]
        );

        assert!(
            ExecOutput::from_status(&json!({"exitcode": 0, "out-data": "!!", "exited": true}))
                .is_err()
        );
        assert!(ExecOutput::from_status(&json!({"exited": true})).is_err());
        assert!(ExecOutput::from_status(&json!({})).is_err());
    }

    /// A fake qemu-ga behind a unix socket, speaking the wire protocol:
    /// it answers a stale response first (to prove resync), handles
    /// guest-sync-delimited with the 0xFF prefix, guest-exec that needs two
    /// status polls, and a file read in two chunks.
    fn fake_agent(listener: UnixListener) -> thread::JoinHandle<Vec<Value>> {
        thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            // Left over from "an earlier session".
            sock.write_all(b"{\"return\": {\"pid\": 999}}\n").unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            let mut polls = 0;
            let mut reads = 0;
            let mut chunk = [0u8; 4096];
            'outer: loop {
                let n = sock.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let mut skip = false;
                    let Some(v) = crate::qmp::take_value(&mut buf, &mut skip).unwrap() else {
                        continue 'outer;
                    };
                    seen.push(v.clone());
                    let reply = match v["execute"].as_str().unwrap() {
                        "guest-sync-delimited" => {
                            sock.write_all(&[0xff]).unwrap();
                            json!({"return": v["arguments"]["id"]})
                        }
                        "guest-ping" => json!({"return": {}}),
                        "guest-exec" => json!({"return": {"pid": 4242}}),
                        "guest-exec-status" => {
                            polls += 1;
                            if polls < 2 {
                                json!({"return": {"exited": false}})
                            } else {
                                json!({"return": {"exited": true, "exitcode": 3, "out-data": "b3V0", "err-data": "ZXJy"}})
                            }
                        }
                        "guest-file-open" => json!({"return": 1000}),
                        "guest-file-read" => {
                            reads += 1;
                            if reads == 1 {
                                json!({"return": {"count": 3, "buf-b64": "Y2Fp", "eof": false}})
                            } else {
                                json!({"return": {"count": 2, "buf-b64": "cm4=", "eof": true}})
                            }
                        }
                        "guest-file-close" => json!({"return": {}}),
                        other => {
                            json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}})
                        }
                    };
                    // one write: a client that has read the value may close
                    // before a separate newline would be written (EPIPE)
                    sock.write_all(format!("{reply}\n").as_bytes()).unwrap();
                }
            }
            seen
        })
    }

    #[test]
    fn talks_to_a_fake_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let server = fake_agent(UnixListener::bind(&path).unwrap());
        let t = Duration::from_secs(5);
        let mut ga = GuestAgent::new(&path);
        ga.wait_ready(t).unwrap();
        let out = ga
            .exec(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], t)
            .unwrap();
        assert_eq!(out.status, ExecStatus::Exited(3));
        assert_eq!(out.stdout, b"out");
        assert_eq!(out.stderr, b"err");
        assert_eq!(ga.file_read("/etc/hostname", t).unwrap(), b"cairn");
        let err = ga.call("guest-nope", None, t).unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        drop(ga);
        let seen = server.join().unwrap();
        let names: Vec<&str> = seen
            .iter()
            .map(|v| v["execute"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "guest-sync-delimited",
                "guest-ping",
                "guest-exec",
                "guest-exec-status",
                "guest-exec-status",
                "guest-file-open",
                "guest-file-read",
                "guest-file-read",
                "guest-file-close",
                "guest-nope"
            ]
        );
        assert_eq!(
            seen[2]["arguments"],
            json!({"path": "/bin/sh", "arg": ["-c", "echo out; echo err >&2; exit 3"], "capture-output": true})
        );
        assert_eq!(seen[3]["arguments"], json!({"pid": 4242}));
        assert_eq!(
            seen[6]["arguments"],
            json!({"handle": 1000, "count": READ_CHUNK})
        );
    }

    #[test]
    fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        // Accepts, never answers (a guest without qemu-ga running).
        let listener = UnixListener::bind(&path).unwrap();
        let holder = thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            thread::sleep(Duration::from_millis(800));
            drop(sock);
        });
        let mut ga = GuestAgent::new(&path);
        let start = Instant::now();
        let err = ga.ping(Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
        holder.join().unwrap();
        // No socket at all: an I/O error, not a hang.
        let mut ga = GuestAgent::new(dir.path().join("absent.sock"));
        assert!(matches!(
            ga.ping(Duration::from_millis(300)),
            Err(QmpError::Io(_))
        ));
    }
}
