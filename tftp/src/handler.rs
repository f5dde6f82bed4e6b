//! What a read request resolves to: the `Handler` trait, transfer outcomes, and `DirHandler` serving files below a root.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use crate::packet::error_code;

/// What a read request resolves to.
#[derive(Debug)]
pub enum Content {
    /// A file on disk; `len` bytes are sent (the size reported for `tsize`).
    File {
        /// The open file, read with positional reads.
        file: File,
        /// Number of bytes to send.
        len: u64,
    },
    /// Generated content, e.g. a per-machine iPXE script.
    Bytes(Bytes),
}

impl Content {
    /// Size reported for `tsize` and sent.
    pub fn len(&self) -> u64 {
        match self {
            Content::File { len, .. } => *len,
            Content::Bytes(b) => b.len() as u64,
        }
    }

    /// True when there is nothing to send (one empty DATA block goes out).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A TFTP error sent to the client: code (see [`crate::error_code`]) and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TFTP error {code}: {message}")]
pub struct TftpError {
    /// Error code: 1 file not found, 2 access violation, 0 not defined, 4 illegal operation, 8 option refused...
    pub code: u16,
    /// Message for the client (keep it short; it goes on the wire).
    pub message: String,
}

impl TftpError {
    /// An error with any code.
    pub fn new(code: u16, message: impl Into<String>) -> TftpError {
        TftpError {
            code,
            message: message.into(),
        }
    }

    /// Code 1, file not found.
    pub fn not_found(message: impl Into<String>) -> TftpError {
        TftpError::new(error_code::FILE_NOT_FOUND, message)
    }

    /// Code 2, access violation.
    pub fn access_violation(message: impl Into<String>) -> TftpError {
        TftpError::new(error_code::ACCESS_VIOLATION, message)
    }
}

/// How a transfer (or a refused request) ended; passed to [`Handler::finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every block was acknowledged.
    Completed {
        /// Bytes sent (the content length).
        bytes: u64,
    },
    /// The request was refused with this error packet (by the handler or the server: WRQ, bad mode...).
    Refused(TftpError),
    /// The client sent an ERROR packet (for example code 8 after a tsize probe); nothing more was sent.
    ClientError {
        /// The client's error code.
        code: u16,
        /// The client's message.
        message: String,
    },
    /// The client stopped answering: the last packet was sent `1 + retries` times without an answer, or
    /// it acknowledged nothing new for `Config::max_idle`.
    TimedOut {
        /// Blocks acknowledged before the client went silent.
        acked_blocks: u64,
    },
    /// A local I/O error (reading the file, the socket); an error packet was sent when possible.
    Failed(String),
    /// The server stopped before the transfer ended (see `Config::shutdown_grace`); the client got
    /// error 0 "server shutting down".
    Stopped {
        /// Blocks acknowledged before the server stopped.
        acked_blocks: u64,
    },
    /// The server was full and took this transfer's place for a newer request because its client had
    /// acknowledged no data block yet (most likely a spoofed source address, see
    /// `Config::max_transfers`); nothing more was sent to it.
    Evicted,
}

/// Resolves read requests. The pxe crate implements this to serve files from image folders and generated
/// per-machine iPXE scripts. `open` runs on tokio's blocking thread pool, so it may do file I/O.
pub trait Handler: Send + Sync + 'static {
    /// Resolves `path` (exactly as the client sent it) for the client at `peer`.
    fn open(&self, path: &str, peer: SocketAddr) -> Result<Content, TftpError>;

    /// Called when a transfer ends (ok, refused, client error packet, timeout, evicted), for logging/status.
    fn finished(&self, _path: &str, _peer: SocketAddr, _outcome: &Outcome) {}
}

/// Serves regular files below a root directory.
///
/// One leading `/` is stripped (clients send `/pxelinux.0`). Refused with code 2 (access violation):
/// any `..` component, a name that is still absolute after that (`//etc/passwd`), a path whose canonical
/// form leaves the root (symlinks pointing out), and anything that is not a regular file. Missing files get
/// code 1. Nothing outside the root is ever opened for sending.
#[derive(Debug, Clone)]
pub struct DirHandler {
    root: PathBuf,
}

impl DirHandler {
    /// A handler for the directory `root` (canonicalized now; it must exist and be a directory).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<DirHandler> {
        let root = root.into();
        let canonical = root
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("TFTP root {}: {e}", root.display())))?;
        if !canonical.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        Ok(DirHandler { root: canonical })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a requested name to a canonical path inside the root, or the error packet to send.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, TftpError> {
        let rel = path.strip_prefix('/').unwrap_or(path);
        if rel.is_empty() {
            return Err(TftpError::not_found("empty file name"));
        }
        if rel.contains('\0') {
            return Err(TftpError::access_violation("NUL byte in file name"));
        }
        let rel_path = Path::new(rel);
        for c in rel_path.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(TftpError::access_violation(
                        "'..' is not allowed in file names",
                    ))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(TftpError::access_violation(
                        "absolute file names are not allowed",
                    ))
                }
            }
        }
        let joined = self.root.join(rel_path);
        let canonical = joined.canonicalize().map_err(|e| io_to_tftp(&e))?;
        if !canonical.starts_with(&self.root) {
            return Err(TftpError::access_violation("file is outside the TFTP root"));
        }
        Ok(canonical)
    }
}

fn io_to_tftp(e: &io::Error) -> TftpError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            TftpError::not_found("file not found")
        }
        io::ErrorKind::PermissionDenied => TftpError::access_violation("permission denied"),
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            TftpError::access_violation("symbolic link loop or symlink swapped in")
        }
        _ => TftpError::new(error_code::NOT_DEFINED, format!("cannot open file: {e}")),
    }
}

impl Handler for DirHandler {
    fn open(&self, path: &str, _peer: SocketAddr) -> Result<Content, TftpError> {
        let canonical = self.resolve(path)?;
        // O_NOFOLLOW: the canonical path has no symlinks; one swapped in since is refused.
        // O_NONBLOCK: opening a FIFO must not hang; it is refused below as a non-regular file.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&canonical)
            .map_err(|e| io_to_tftp(&e))?;
        let meta = file.metadata().map_err(|e| io_to_tftp(&e))?;
        if !meta.is_file() {
            return Err(TftpError::access_violation("not a regular file"));
        }
        Ok(Content::File {
            file,
            len: meta.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, DirHandler) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("pxelinux.0"), b"boot").unwrap();
        std::fs::write(root.join("sub/a..b"), b"dots").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/a..b", root.join("in")).unwrap();
        let h = DirHandler::new(&root).unwrap();
        (dir, h)
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn code(r: Result<Content, TftpError>) -> u16 {
        r.expect_err("must be refused").code
    }

    #[test]
    fn serves_files_with_and_without_leading_slash() {
        let (_d, h) = setup();
        for name in [
            "pxelinux.0",
            "/pxelinux.0",
            "./pxelinux.0",
            "sub//a..b",
            "in",
        ] {
            let c = h
                .open(name, peer())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.len() == 4, "{name}");
        }
    }

    #[test]
    fn refuses_traversal_and_outside_paths() {
        let (_d, h) = setup();
        for name in [
            "../secret",
            "/../secret",
            "sub/../../secret",
            "a/../../x",
            "//etc/passwd",
            "..",
        ] {
            assert_eq!(code(h.open(name, peer())), 2, "{name}");
        }
        assert_eq!(code(h.open("out", peer())), 2, "symlink out of root");
        assert_eq!(
            code(h.open("/etc/passwd", peer())),
            1,
            "root-relative /etc/passwd"
        );
        assert_eq!(code(h.open("missing", peer())), 1);
        assert_eq!(code(h.open("pxelinux.0/x", peer())), 1);
        assert_eq!(code(h.open("", peer())), 1);
        assert_eq!(code(h.open("/", peer())), 1);
    }

    #[test]
    fn refuses_directories_and_fifos() {
        let (_d, h) = setup();
        assert_eq!(code(h.open("sub", peer())), 2);
        let fifo = h.root().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert_eq!(code(h.open("fifo", peer())), 2);
    }

    #[test]
    fn root_must_be_a_directory() {
        let (d, _h) = setup();
        assert!(DirHandler::new(d.path().join("secret")).is_err());
        assert!(DirHandler::new(d.path().join("nope")).is_err());
    }
}
