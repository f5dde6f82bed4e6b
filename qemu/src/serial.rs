//! Serial console log watching: [`LogWatcher`] scans a log file that QEMU
//! appends to, from a remembered position, for a line containing a plain
//! substring; [`WaitError`] is what a wait returns when the text never came.
//!
//! Matching is by **substring, not regex**, on a cleaned copy of each line:
//! ANSI escape sequences (colours, cursor moves, which OVMF, SeaBIOS' serial
//! console and iPXE all emit) and other control characters are removed first,
//! so `"Press ESC in"` matches even where the firmware coloured `ESC`.
//! A line is the text between two `\n`; a trailing `\r` is dropped. The
//! unfinished last line of the log (a prompt such as `Shell> ` or `login: `)
//! is matched too, once the log has stopped growing for [`SETTLE`] (so a
//! line that is still being written is returned whole). After a match the position moves past the matched line, so
//! the next wait only sees newer output. This module owns no process: the
//! caller passes a closure that says whether the writer has exited.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

/// How many lines of the log a [`WaitError`] carries.
pub const TAIL_LINES: usize = 40;

const POLL: Duration = Duration::from_millis(50);

/// How long an unfinished last line must stay unchanged before it counts.
pub const SETTLE: Duration = Duration::from_millis(200);

/// A wait on the serial console that did not see its text.
///
/// `Display` (and `Debug`, so that `unwrap()` reads well) names the pattern,
/// the time waited, the log path, and prints the log's last
/// [`TAIL_LINES`] lines.
#[derive(thiserror::Error)]
pub enum WaitError {
    /// The pattern did not appear before the deadline.
    #[error("timed out after {:.1}s waiting for {pattern:?} on the serial console (log: {}); last lines:\n{tail}", waited.as_secs_f64(), log_path.display())]
    Timeout {
        pattern: String,
        waited: Duration,
        log_path: PathBuf,
        tail: String,
    },
    /// QEMU exited before the pattern appeared.
    #[error("QEMU exited ({status}) after {:.1}s while waiting for {pattern:?} on the serial console (log: {}); last lines:\n{tail}", waited.as_secs_f64(), log_path.display())]
    Exited {
        pattern: String,
        status: ExitStatus,
        waited: Duration,
        log_path: PathBuf,
        tail: String,
    },
    /// The log could not be read.
    #[error("reading serial log {}: {source}", log_path.display())]
    Io {
        log_path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl fmt::Debug for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl WaitError {
    /// The serial log's path, for every variant.
    pub fn log_path(&self) -> &Path {
        match self {
            WaitError::Timeout { log_path, .. }
            | WaitError::Exited { log_path, .. }
            | WaitError::Io { log_path, .. } => log_path,
        }
    }
}

/// Scans a growing log file from a remembered byte position.
#[derive(Debug, Clone)]
pub struct LogWatcher {
    path: PathBuf,
    /// Byte offset of the first line not yet consumed.
    pos: u64,
    /// An unfinished last line matched: the file length then, and since when.
    partial: Option<(u64, Instant)>,
}

impl LogWatcher {
    /// Watches `path` from its beginning. The file need not exist yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LogWatcher {
            path: path.into(),
            pos: 0,
            partial: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset from which the next wait scans.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Forgets everything written so far: the next wait only sees new output.
    pub fn skip_to_end(&mut self) -> io::Result<()> {
        self.pos = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        self.partial = None;
        Ok(())
    }

    /// Waits until a line containing `pattern` (substring, see the module
    /// doc) appears after the remembered position, and returns that line
    /// (cleaned of escape sequences).
    ///
    /// `exited` is polled between reads; when it returns a status the log
    /// is scanned one last time and the wait fails with
    /// [`WaitError::Exited`].
    pub fn wait_for(
        &mut self,
        pattern: &str,
        timeout: Duration,
        mut exited: impl FnMut() -> Option<ExitStatus>,
    ) -> Result<String, WaitError> {
        self.wait_for_any(&[pattern], timeout, &mut exited)
            .map(|(_, line)| line)
    }

    /// Like [`wait_for`](Self::wait_for) with several patterns: returns the
    /// index of the first pattern found (in log order) and its line.
    pub fn wait_for_any(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
        mut exited: impl FnMut() -> Option<ExitStatus>,
    ) -> Result<(usize, String), WaitError> {
        let start = Instant::now();
        loop {
            // Check for exit before scanning, so output written just before
            // the exit is still seen by this scan.
            let status = exited();
            if let Some(found) = self.scan(patterns, status.is_some())? {
                return Ok(found);
            }
            let waited = start.elapsed();
            let describe = || patterns.join("\" | \"");
            if let Some(status) = status {
                return Err(WaitError::Exited {
                    pattern: describe(),
                    status,
                    waited,
                    log_path: self.path.clone(),
                    tail: self.tail(TAIL_LINES),
                });
            }
            if waited >= timeout {
                return Err(WaitError::Timeout {
                    pattern: describe(),
                    waited,
                    log_path: self.path.clone(),
                    tail: self.tail(TAIL_LINES),
                });
            }
            thread::sleep(POLL.min(timeout.saturating_sub(waited)));
        }
    }

    /// One pass over the unread part of the log. `last` (the writer has
    /// exited): an unfinished line counts without settling.
    fn scan(
        &mut self,
        patterns: &[&str],
        last: bool,
    ) -> Result<Option<(usize, String)>, WaitError> {
        let io_err = |source| WaitError::Io {
            log_path: self.path.clone(),
            source,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len < self.pos {
            // Truncated or replaced: start over.
            self.pos = 0;
        }
        file.seek(SeekFrom::Start(self.pos)).map_err(io_err)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io_err)?;
        let end = self.pos + buf.len() as u64;

        let mut consumed = 0usize;
        while consumed < buf.len() {
            let rest = &buf[consumed..];
            let (raw, next, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], consumed + i + 1, true),
                None => (rest, buf.len(), false),
            };
            let line = clean_line(raw);
            if let Some(idx) = patterns.iter().position(|p| line.contains(p)) {
                if !complete && !last {
                    // Accept a prompt only once it stopped growing.
                    match self.partial {
                        Some((seen_len, since)) if seen_len == end && since.elapsed() >= SETTLE => {
                        }
                        Some((seen_len, _)) if seen_len == end => break,
                        _ => {
                            self.partial = Some((end, Instant::now()));
                            break;
                        }
                    }
                }
                self.partial = None;
                self.pos += next as u64;
                return Ok(Some((idx, line)));
            }
            if !complete {
                // Keep the unfinished line for the next pass: it may grow.
                break;
            }
            consumed = next;
        }
        self.pos += consumed as u64;
        if consumed == buf.len() {
            self.partial = None;
        }
        Ok(None)
    }

    /// The last `n` lines of the whole log, cleaned, for error messages.
    pub fn tail(&self, n: usize) -> String {
        tail_of_file(&self.path, n)
    }
}

/// The last `n` lines of a file, each cleaned of escape sequences.
pub fn tail_of_file(path: &Path, n: usize) -> String {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return format!("    <cannot read {}: {e}>", path.display()),
    };
    if data.is_empty() {
        return "    <serial log is empty>".to_owned();
    }
    let lines: Vec<String> = data.split(|&b| b == b'\n').map(clean_line).collect();
    // A trailing newline leaves an empty last element: not a line.
    let lines = match lines.last() {
        Some(l) if l.is_empty() => &lines[..lines.len() - 1],
        _ => &lines[..],
    };
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL`,
/// two- and three-byte `ESC x` forms) and control characters other than tab,
/// and decodes the rest as lossy UTF-8.
pub fn clean_line(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            i += 1;
            match raw.get(i) {
                Some(b'[') => {
                    i += 1;
                    while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1; // the final byte
                }
                Some(b']') => {
                    i += 1;
                    while i < raw.len() && raw[i] != 0x07 && raw[i] != 0x1b {
                        i += 1;
                    }
                    if raw.get(i) == Some(&0x1b) {
                        i += 1; // ESC \ terminator
                    }
                    i += 1;
                }
                Some(b'(' | b')' | b'*' | b'+' | b'#' | b'%') => i += 2,
                Some(_) => i += 1,
                None => {}
            }
            continue;
        }
        if b >= 0x20 || b == b'\t' {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn never() -> Option<ExitStatus> {
        None
    }

    #[test]
    fn clean_line_strips_firmware_escapes() {
        // Bytes as OVMF writes them on serial.
        let raw =
            b"\x1b[07;01HPress \x1b[1m\x1b[37m\x1b[40mESC\x1b[0m\x1b[37m\x1b[40m in 5 seconds\r";
        assert_eq!(clean_line(raw), "Press ESC in 5 seconds");
        // SeaBIOS' serial console: reset, wrap off, clear.
        let raw = b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r";
        assert_eq!(clean_line(raw), "SeaBIOS (version 1.16.2)");
        // iPXE's countdown backspaces; OSC title; charset selection.
        assert_eq!(clean_line(b"line...\x08 \x08done"), "line... done");
        assert_eq!(clean_line(b"\x1b]0;title\x07x\x1b(By"), "xy");
        // A lone ESC at the end does not panic.
        assert_eq!(clean_line(b"abc\x1b"), "abc");
    }

    #[test]
    fn finds_line_and_advances_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "one\r\nboot: two\r\nthree\r\nboot: four\r\n").unwrap();
        let mut w = LogWatcher::new(&path);
        let t = Duration::from_millis(200);
        assert_eq!(w.wait_for("boot:", t, never).unwrap(), "boot: two");
        assert_eq!(w.wait_for("boot:", t, never).unwrap(), "boot: four");
        // Nothing newer: times out, and the error names pattern, time, path.
        let err = w.wait_for("boot:", t, never).unwrap_err();
        match &err {
            WaitError::Timeout {
                pattern,
                waited,
                log_path,
                tail,
            } => {
                assert_eq!(pattern, "boot:");
                assert!(*waited >= t);
                assert_eq!(log_path, &path);
                assert!(tail.contains("| boot: four"), "{tail}");
            }
            other => panic!("unexpected {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("\"boot:\""), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("| three"), "{msg}");
    }

    #[test]
    fn matches_unfinished_prompt_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "banner\r\n\x1b[1mShell> \x1b[0m").unwrap();
        let mut w = LogWatcher::new(&path);
        let start = Instant::now();
        let line = w.wait_for("Shell>", Duration::from_secs(2), never).unwrap();
        assert_eq!(line, "Shell> ");
        assert!(start.elapsed() >= SETTLE);
    }

    #[test]
    fn unfinished_line_still_growing_is_returned_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "<INITRD> : 43 bytes [s").unwrap();
        let writer_path = path.clone();
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&writer_path)
                .unwrap();
            f.write_all(b"cript]\r\n").unwrap();
        });
        let mut w = LogWatcher::new(&path);
        let line = w
            .wait_for("<INITRD>", Duration::from_secs(5), never)
            .unwrap();
        assert_eq!(line, "<INITRD> : 43 bytes [script]");
        writer.join().unwrap();
    }

    #[test]
    fn missing_file_counts_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWatcher::new(dir.path().join("not-yet"));
        let err = w
            .wait_for("x", Duration::from_millis(60), never)
            .unwrap_err();
        assert!(matches!(err, WaitError::Timeout { .. }), "{err}");
    }

    #[test]
    fn waits_while_another_thread_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "").unwrap();
        let writer_path = path.clone();
        let writer = thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&writer_path)
                .unwrap();
            for i in 0..10 {
                thread::sleep(Duration::from_millis(30));
                write!(f, "noise {i}\r\n").unwrap();
            }
            // The target line arrives in two pieces, split mid-word, to
            // prove a half-written line is not consumed early.
            write!(f, "Reached tar").unwrap();
            f.flush().unwrap();
            thread::sleep(Duration::from_millis(150));
            write!(f, "get multi-user.target\r\nafter\r\n").unwrap();
        });
        let mut w = LogWatcher::new(&path);
        let start = Instant::now();
        let line = w
            .wait_for("Reached target multi-user", Duration::from_secs(10), never)
            .unwrap();
        assert_eq!(line, "Reached target multi-user.target");
        assert!(start.elapsed() >= Duration::from_millis(300));
        writer.join().unwrap();
        // Only the text after the match is left.
        let (idx, line) = w
            .wait_for_any(&["noise", "after"], Duration::from_secs(1), never)
            .unwrap();
        assert_eq!((idx, line.as_str()), (1, "after"));
    }

    #[test]
    fn skip_to_end_ignores_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "BdsDxe: old boot\n").unwrap();
        let mut w = LogWatcher::new(&path);
        w.skip_to_end().unwrap();
        assert!(w
            .wait_for("BdsDxe", Duration::from_millis(60), never)
            .is_err());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"BdsDxe: new boot\n").unwrap();
        assert_eq!(
            w.wait_for("BdsDxe", Duration::from_millis(500), never)
                .unwrap(),
            "BdsDxe: new boot"
        );
    }

    #[test]
    fn exit_of_writer_ends_the_wait_early() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "panic\n").unwrap();
        let mut w = LogWatcher::new(&path);
        let start = Instant::now();
        let err = w
            .wait_for("login:", Duration::from_secs(30), || {
                Some(ExitStatus::from_raw(0))
            })
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, WaitError::Exited { .. }), "{err}");
        // But text written before the exit is still found.
        let mut w = LogWatcher::new(&path);
        assert_eq!(
            w.wait_for("panic", Duration::from_secs(1), || Some(
                ExitStatus::from_raw(0)
            ))
            .unwrap(),
            "panic"
        );
    }
}
