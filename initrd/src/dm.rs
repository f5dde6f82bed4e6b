//! Device-mapper through its ioctls (`<linux/dm-ioctl.h>`), just what
//! `/init` needs to put the root behind dm-verity without `dmsetup` or
//! `veritysetup`: create a device, load its one-target table read-only,
//! resume it (which makes the table live), and remove it again when a
//! later step fails. The verity table line itself comes from
//! `cairn_formats::verity`; [`verity_table`] only picks the corruption
//! mode.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_formats::verity::{Corruption, Verity};

/// `/dev/mapper/control`, made by devtmpfs once `dm-mod` is loaded.
pub const CONTROL: &str = "/dev/mapper/control";

// linux/dm-ioctl.h
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
/// The interface version we speak (the kernel accepts an equal major and
/// a minor no newer than its own).
const DM_VERSION: [u32; 3] = [4, 0, 0];
const DM_READONLY_FLAG: u32 = 1 << 0;

const DM_IOCTL_TYPE: libc::c_ulong = 0xfd;
const DM_DEV_CREATE_CMD: libc::c_ulong = 3;
const DM_DEV_REMOVE_CMD: libc::c_ulong = 4;
const DM_DEV_SUSPEND_CMD: libc::c_ulong = 6;
const DM_TABLE_LOAD_CMD: libc::c_ulong = 9;

/// `_IOWR(DM_IOCTL, cmd, struct dm_ioctl)`.
const fn dm_iowr(cmd: libc::c_ulong) -> libc::c_ulong {
    const IOC_READ_WRITE: libc::c_ulong = 3;
    (IOC_READ_WRITE << 30)
        | ((std::mem::size_of::<DmIoctl>() as libc::c_ulong) << 16)
        | (DM_IOCTL_TYPE << 8)
        | cmd
}

const DM_DEV_CREATE: libc::c_ulong = dm_iowr(DM_DEV_CREATE_CMD);
const DM_DEV_REMOVE: libc::c_ulong = dm_iowr(DM_DEV_REMOVE_CMD);
const DM_DEV_SUSPEND: libc::c_ulong = dm_iowr(DM_DEV_SUSPEND_CMD);
const DM_TABLE_LOAD: libc::c_ulong = dm_iowr(DM_TABLE_LOAD_CMD);

/// `struct dm_ioctl`: the header of every request; a table load's target
/// specs and parameter strings follow it in the same buffer.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`; its parameter string (NUL-terminated) follows.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const HEADER: usize = std::mem::size_of::<DmIoctl>();
const SPEC: usize = std::mem::size_of::<DmTargetSpec>();

/// One request buffer: a header, then `extra` bytes, 8-byte aligned.
/// Backed by `u64`s so the header is aligned for the kernel's copy.
struct Request {
    buf: Vec<u64>,
}

impl Request {
    fn new(name: &str, extra: &[u8]) -> io::Result<Request> {
        if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad device-mapper name {name:?}"),
            ));
        }
        let size = (HEADER + extra.len()).next_multiple_of(8);
        let mut r = Request {
            buf: vec![0u64; size / 8],
        };
        let mut h = DmIoctl {
            version: DM_VERSION,
            data_size: size as u32,
            data_start: HEADER as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        h.name[..name.len()].copy_from_slice(name.as_bytes());
        r.set_header(&h);
        r.bytes_mut()[HEADER..HEADER + extra.len()].copy_from_slice(extra);
        Ok(r)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.buf.len() * 8;
        // SAFETY: the Vec<u64> owns `len` initialised bytes; u8 has no
        // alignment or validity requirements; the borrow ties the slice to
        // `self`.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), len) }
    }

    fn header(&self) -> DmIoctl {
        // SAFETY: the buffer is at least HEADER bytes and 8-byte aligned;
        // DmIoctl is plain old data (integers and byte arrays), valid for
        // any bit pattern.
        unsafe { std::ptr::read(self.buf.as_ptr().cast::<DmIoctl>()) }
    }

    fn set_header(&mut self, h: &DmIoctl) {
        // SAFETY: as in `header`; the write stays inside the buffer.
        unsafe { std::ptr::write(self.buf.as_mut_ptr().cast::<DmIoctl>(), *h) }
    }

    fn ioctl(&mut self, control: &File, request: libc::c_ulong) -> io::Result<DmIoctl> {
        // SAFETY: every DM ioctl reads and writes a `struct dm_ioctl` of
        // `data_size` bytes (header + payload), which is exactly this
        // buffer: it is that long, aligned, and lives across the call.
        let rc = unsafe { libc::ioctl(control.as_raw_fd(), request, self.buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.header())
    }
}

/// `MAJOR:MINOR` from the kernel's `huge_encode_dev` form in `dm_ioctl.dev`.
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// The bytes of one target spec with its parameter string, as
/// `DM_TABLE_LOAD` takes them after the header.
fn target_bytes(start: u64, length: u64, target: &str, params: &str) -> io::Result<Vec<u8>> {
    if target.len() >= DM_MAX_TYPE_NAME || params.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad target {target:?}"),
        ));
    }
    let len = (SPEC + params.len() + 1).next_multiple_of(8);
    let mut spec = DmTargetSpec {
        sector_start: start,
        length,
        status: 0,
        next: len as u32,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    spec.target_type[..target.len()].copy_from_slice(target.as_bytes());
    let mut out = vec![0u8; len];
    // SAFETY: `out` holds at least SPEC bytes; write_unaligned has no
    // alignment requirement; DmTargetSpec is plain old data.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast::<DmTargetSpec>(), spec) };
    out[SPEC..SPEC + params.len()].copy_from_slice(params.as_bytes());
    Ok(out)
}

/// Splits a table line `START LENGTH TARGET PARAMS...` into its parts.
pub fn parse_table_line(line: &str) -> Option<(u64, u64, &str, &str)> {
    let line = line.trim();
    let (start, rest) = line.split_once(' ')?;
    let (length, rest) = rest.split_once(' ')?;
    let (target, params) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((start.parse().ok()?, length.parse().ok()?, target, params))
}

/// What the `verity` target does on a block that does not match its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// `restart_on_corruption`: the kernel reboots at once.
    Restart,
    /// No option: the read fails with EIO (and the kernel logs the block).
    Eio,
}

/// The table line of the `verity` target over `dev` (`MAJOR:MINOR`).
pub fn verity_table(v: &Verity, dev: &str, mode: OnCorruption) -> String {
    let restart = v.dm_table(dev, Corruption::Restart);
    match mode {
        OnCorruption::Restart => restart,
        OnCorruption::Eio => {
            let suffix = format!(" 1 {}", Corruption::Restart.table_arg());
            restart
                .strip_suffix(&suffix)
                .map(str::to_owned)
                .unwrap_or(restart)
        }
    }
}

/// A live device-mapper device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// Its node under /dev (`/dev/dm-N`; devtmpfs makes it, udev's
    /// `/dev/mapper/NAME` link does not exist in the initramfs).
    pub node: PathBuf,
}

/// Opens the control node, waiting up to `timeout` for devtmpfs to make it.
fn open_control(timeout: Duration) -> io::Result<File> {
    let start = Instant::now();
    loop {
        match OpenOptions::new().read(true).write(true).open(CONTROL) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < timeout => {
                std::thread::sleep(crate::blockdev::POLL_INTERVAL)
            }
            other => return other,
        }
    }
}

/// Which step of [`create_read_only`] failed, and how.
#[derive(Debug)]
pub struct DmError {
    pub step: &'static str,
    pub err: io::Error,
}

impl std::fmt::Display for DmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, crate::boot::describe(&self.err))
    }
}

/// Creates device `name` with the one-line `table`, read-only, makes it
/// live, and waits up to `timeout` for its /dev node. On failure the
/// half-made device is removed again.
pub fn create_read_only(name: &str, table: &str, timeout: Duration) -> Result<Mapped, DmError> {
    let e = |step: &'static str| move |err: io::Error| DmError { step, err };
    let bad = |step| DmError {
        step,
        err: io::Error::new(io::ErrorKind::InvalidInput, "malformed table line"),
    };
    let (start, length, target, params) = parse_table_line(table).ok_or_else(|| bad("table"))?;
    let control = open_control(timeout).map_err(e("opening /dev/mapper/control"))?;
    let created = Request::new(name, &[])
        .and_then(|mut r| r.ioctl(&control, DM_DEV_CREATE))
        .map_err(e("DM_DEV_CREATE"))?;
    let (major, minor) = decode_dev(created.dev);
    let live = (|| {
        let spec = target_bytes(start, length, target, params).map_err(e("table"))?;
        let mut load = Request::new(name, &spec).map_err(e("DM_TABLE_LOAD"))?;
        let mut h = load.header();
        h.target_count = 1;
        h.flags = DM_READONLY_FLAG;
        load.set_header(&h);
        load.ioctl(&control, DM_TABLE_LOAD)
            .map_err(e("DM_TABLE_LOAD"))?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded
        // (inactive) table becomes the live one.
        Request::new(name, &[])
            .and_then(|mut r| r.ioctl(&control, DM_DEV_SUSPEND))
            .map_err(e("DM_DEV_SUSPEND (resume)"))?;
        wait_node(major, minor, timeout).map_err(e("waiting for the device node"))
    })();
    match live {
        Ok(node) => Ok(Mapped {
            name: name.to_owned(),
            major,
            minor,
            node,
        }),
        Err(err) => {
            let _ = remove(&control, name);
            Err(err)
        }
    }
}

fn remove(control: &File, name: &str) -> io::Result<()> {
    Request::new(name, &[])
        .and_then(|mut r| r.ioctl(control, DM_DEV_REMOVE))
        .map(|_| ())
}

/// Removes device `name` (used when the root on it cannot be mounted).
pub fn remove_device(name: &str) -> io::Result<()> {
    let control = open_control(Duration::ZERO)?;
    remove(&control, name)
}

/// The /dev node of block device `major:minor`: `DEVNAME` from its sysfs
/// uevent (`dm-N`), once devtmpfs has made it.
fn wait_node(major: u32, minor: u32, timeout: Duration) -> io::Result<PathBuf> {
    let start = Instant::now();
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    loop {
        let name = std::fs::read_to_string(&uevent)
            .ok()
            .and_then(|t| crate::blockdev::parse_uevent(&t).devname);
        if let Some(name) = name {
            let node = Path::new("/dev").join(name);
            if node.exists() {
                return Ok(node);
            }
        }
        if start.elapsed() >= timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no /dev node for {major}:{minor} within {}s",
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(crate::blockdev::POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel() {
        // linux/dm-ioctl.h on 64-bit Linux: sizeof(struct dm_ioctl) is
        // 312 and sizeof(struct dm_target_spec) 40.
        assert_eq!(HEADER, 312);
        assert_eq!(SPEC, 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, dev), 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, name), 48);
        assert_eq!(std::mem::offset_of!(DmIoctl, uuid), 176);
        assert_eq!(std::mem::offset_of!(DmTargetSpec, next), 20);
        assert_eq!(std::mem::offset_of!(DmTargetSpec, target_type), 24);
        // the ioctl numbers dmsetup uses (strace: DM_DEV_CREATE is
        // 0xc138fd03, DM_TABLE_LOAD 0xc138fd09)
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_REMOVE, 0xc138_fd04);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn dev_numbers_decode() {
        // huge_encode_dev(MKDEV(254, 0)) and of a minor above 255
        assert_eq!(decode_dev(254 << 8), (254, 0));
        assert_eq!(decode_dev((254 << 8) | 0x34 | (0x12 << 20)), (254, 0x1234));
    }

    #[test]
    fn request_and_target_bytes() {
        let r = Request::new("cairn-root", b"abc").unwrap();
        let h = r.header();
        assert_eq!(h.data_size as usize, 320);
        assert_eq!(h.data_start as usize, HEADER);
        assert_eq!(&h.name[..11], b"cairn-root\0");
        assert!(Request::new("", &[]).is_err());
        assert!(Request::new("a/b", &[]).is_err());
        assert!(Request::new(&"x".repeat(128), &[]).is_err());

        let t = target_bytes(0, 8000, "verity", "1 2 3").unwrap();
        assert_eq!(t.len(), 48);
        assert_eq!(&t[16..20], &[0, 0, 0, 0]);
        assert_eq!(u32::from_ne_bytes(t[20..24].try_into().unwrap()), 48);
        assert_eq!(&t[24..31], b"verity\0");
        assert_eq!(&t[40..46], b"1 2 3\0");
        assert_eq!(u64::from_ne_bytes(t[8..16].try_into().unwrap()), 8000);
    }

    #[test]
    fn table_lines() {
        let v = Verity {
            root_hash: [0xab; 32],
            salt: [0x01; 32],
            data_blocks: 1000,
        };
        let restart = verity_table(&v, "254:2", OnCorruption::Restart);
        let want = format!(
            " sha256 {} {} 1 restart_on_corruption",
            "ab".repeat(32),
            "01".repeat(32)
        );
        assert!(restart.ends_with(&want), "{restart}");
        let eio = verity_table(&v, "254:2", OnCorruption::Eio);
        assert!(eio.ends_with(&format!(" {}", "01".repeat(32))), "{eio}");
        let (start, len, target, params) = parse_table_line(&eio).unwrap();
        assert_eq!((start, len, target), (0, 8000, "verity"));
        assert!(params.starts_with("1 254:2 254:2 4096 4096 1000 1001 sha256 "));
        assert!(parse_table_line("x 1 verity").is_none());
    }
}
