//! What the installer leaves on the installed disk for the installed
//! system: the server that installed it and the MAC address it knows the
//! machine by, as `cairn/install.json` on the disk's ESP (as
//! coreos-installer leaves the machine's Ignition config on the boot
//! partition). The state partition cannot hold it: `disk.raw` leaves that
//! unformatted for `/init` to grow and format on first boot. The installed
//! system (`cairn-update health`) reads it from `/efi` and reports its
//! boots and health there.
//!
//! The file is written with `fatfs` straight into the ESP the GPT names on
//! the device, so the installer needs no partition rescan, mount or vfat
//! module.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::InstallError;

/// The file under the ESP (`/efi/cairn/install.json` on the running system).
pub const HANDOFF_PATH: &str = "cairn/install.json";
/// The largest hand-off file read.
pub const MAX_HANDOFF_BYTES: u64 = 4096;

/// The ESP's partition type GUID as GPT stores it (mixed endian).
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// The installer's note to the installed system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// `cairn serve`'s base URL (`http://` or `https://`).
    pub server: String,
    /// The MAC address the server knows this machine by.
    pub mac: String,
}

impl Handoff {
    /// Reads and checks a hand-off document.
    pub fn parse(body: &[u8]) -> Result<Handoff, String> {
        if body.len() as u64 > MAX_HANDOFF_BYTES {
            return Err(format!(
                "{} bytes, more than {MAX_HANDOFF_BYTES}",
                body.len()
            ));
        }
        let mut h: Handoff = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if !(h.server.starts_with("http://") || h.server.starts_with("https://"))
            || h.server.len() > 512
            || h.server.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(format!("server {:?}: expected an http(s) URL", h.server));
        }
        h.mac = cairn_formats::lifecycle::normalize_mac(&h.mac)
            .ok_or_else(|| format!("mac {:?}: expected a MAC address", h.mac))?;
        Ok(h)
    }

    /// Reads the hand-off under the mounted ESP `esp`; `Ok(None)` when
    /// there is none (a machine not installed by `cairn serve`).
    pub fn load(esp: &Path) -> Result<Option<Handoff>, String> {
        let p = esp.join(HANDOFF_PATH);
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        let mut body = Vec::new();
        f.take(MAX_HANDOFF_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Handoff::parse(&body)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

/// The byte range of the ESP the primary GPT of `dev` names.
fn esp_range(f: &mut std::fs::File) -> std::io::Result<(u64, u64)> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut hdr = [0u8; 92];
    f.seek(SeekFrom::Start(512))?;
    f.read_exact(&mut hdr)?;
    if &hdr[..8] != b"EFI PART" {
        return Err(bad("no GPT header at LBA 1".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(hdr[o..o + 4].try_into().expect("4 bytes"));
    let entries_lba = u64::from_le_bytes(hdr[72..80].try_into().expect("8 bytes"));
    let (count, size) = (u32_at(80).min(128) as usize, u32_at(84) as usize);
    if !(128..=4096).contains(&size) {
        return Err(bad(format!("GPT entry size {size}")));
    }
    let mut table = vec![0u8; count * size];
    f.seek(SeekFrom::Start(entries_lba.saturating_mul(512)))?;
    f.read_exact(&mut table)?;
    for e in table.chunks_exact(size) {
        if e[..16] == ESP_TYPE {
            let first = u64::from_le_bytes(e[32..40].try_into().expect("8 bytes"));
            let last = u64::from_le_bytes(e[40..48].try_into().expect("8 bytes"));
            if last < first {
                return Err(bad(format!("ESP from LBA {first} to {last}")));
            }
            return Ok((first * 512, (last + 1) * 512));
        }
    }
    Err(bad("no EFI system partition in the GPT".into()))
}

/// Writes `h` as [`HANDOFF_PATH`] into the ESP of the disk (or image
/// file) `dev`, replacing any older one, and flushes it to the disk.
pub fn write(dev: &Path, h: &Handoff) -> Result<(), InstallError> {
    let err = |what: &'static str| {
        move |source: std::io::Error| InstallError::Disk {
            what,
            dev: dev.to_path_buf(),
            source,
        }
    };
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(err("opening the ESP of"))?;
    let (start, end) = esp_range(&mut f).map_err(err("finding the ESP of"))?;
    let body = serde_json::to_vec_pretty(h).expect("a hand-off serialises");
    {
        let slice = fscommon::StreamSlice::new(
            f.try_clone().map_err(err("opening the ESP of"))?,
            start,
            end,
        )
        .map_err(err("opening the ESP of"))?;
        let fs = fatfs::FileSystem::new(fscommon::BufStream::new(slice), fatfs::FsOptions::new())
            .map_err(err("reading the ESP's FAT of"))?;
        {
            let root = fs.root_dir();
            let (dir_name, file_name) = HANDOFF_PATH.split_once('/').expect("a folder");
            let dir = match root.open_dir(dir_name) {
                Ok(d) => d,
                Err(_) => root
                    .create_dir(dir_name)
                    .map_err(err("writing the ESP of"))?,
            };
            let mut file = dir
                .create_file(file_name)
                .map_err(err("writing the ESP of"))?;
            file.truncate().map_err(err("writing the ESP of"))?;
            file.write_all(&body).map_err(err("writing the ESP of"))?;
            file.flush().map_err(err("writing the ESP of"))?;
        }
        fs.unmount().map_err(err("writing the ESP of"))?;
    }
    f.sync_all().map_err(err("flushing"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A 16 MiB file with a GPT whose second entry is an 8 MiB FAT ESP at 1 MiB.
    fn disk(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("disk.img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(16 << 20).unwrap();
        let mut hdr = [0u8; 92];
        hdr[..8].copy_from_slice(b"EFI PART");
        hdr[72..80].copy_from_slice(&2u64.to_le_bytes());
        hdr[80..84].copy_from_slice(&4u32.to_le_bytes());
        hdr[84..88].copy_from_slice(&128u32.to_le_bytes());
        f.write_all_at(&hdr, 512).unwrap();
        let mut e = [0u8; 128];
        e[..16].copy_from_slice(&ESP_TYPE);
        e[32..40].copy_from_slice(&2048u64.to_le_bytes());
        e[40..48].copy_from_slice(&(2048u64 + 16384 - 1).to_le_bytes());
        f.write_all_at(&e, 1024 + 128).unwrap();
        let slice = fscommon::StreamSlice::new(f.try_clone().unwrap(), 1 << 20, 9 << 20).unwrap();
        fatfs::format_volume(slice, fatfs::FormatVolumeOptions::new()).unwrap();
        p
    }

    #[test]
    fn written_into_the_esp_and_read_back_as_the_installed_system_would() {
        let t = tempfile::tempdir().unwrap();
        let p = disk(t.path());
        let h = Handoff {
            server: "http://192.0.2.1:8080".into(),
            mac: "52:54:00:00:0d:01".into(),
        };
        write(&p, &h).unwrap();
        // again: replaced, not appended
        write(&p, &h).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let slice = fscommon::StreamSlice::new(f, 1 << 20, 9 << 20).unwrap();
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
        let mut body = Vec::new();
        fs.root_dir()
            .open_file(HANDOFF_PATH)
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(Handoff::parse(&body).unwrap(), h);
        // the data outside the ESP is untouched
        let all = std::fs::read(&p).unwrap();
        assert!(all[9 << 20..].iter().all(|b| *b == 0));
        // as the mounted ESP shows it
        let esp = t.path().join("efi");
        std::fs::create_dir_all(esp.join("cairn")).unwrap();
        assert_eq!(Handoff::load(&esp).unwrap(), None);
        std::fs::write(esp.join(HANDOFF_PATH), &body).unwrap();
        assert_eq!(Handoff::load(&esp).unwrap(), Some(h));
    }

    #[test]
    fn hostile_hand_offs_are_refused() {
        for (body, what) in [
            (
                r#"{"server":"file:///etc","mac":"52:54:00:00:0d:01"}"#,
                "server",
            ),
            (
                r#"{"server":"http://x y","mac":"52:54:00:00:0d:01"}"#,
                "server",
            ),
            (r#"{"server":"http://s","mac":"nope"}"#, "mac"),
            (
                r#"{"server":"http://s","mac":"52:54:00:00:0d:01","x":1}"#,
                "unknown field",
            ),
        ] {
            let e = Handoff::parse(body.as_bytes()).unwrap_err();
            assert!(e.contains(what), "{body}: {e}");
        }
        let big = vec![b' '; MAX_HANDOFF_BYTES as usize + 1];
        assert!(Handoff::parse(&big).unwrap_err().contains("more than"));
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("blank");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let e = write(
            &p,
            &Handoff {
                server: "http://s".into(),
                mac: "52:54:00:00:0d:01".into(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no GPT header"), "{e}");
    }
}
