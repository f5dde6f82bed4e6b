//! The update bundle `cairn build --sign` writes: `OUT/update/` with
//! `manifest.json`, its detached signature `manifest.sig` and the three
//! parts (hard-linked from the build output when possible, else copied).
//! The same inputs and timestamps give the same bytes.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{ChannelError, Result};
use super::files::write_atomic;
use super::keys::SecretKey;
use super::manifest::{self, Manifest, Part, PartKind, FORMAT};
use super::timestamp::rfc3339;

/// The bundle's folder under a build output (the image folder's
/// [`UPDATE_DIR`](crate::image_dir::UPDATE_DIR)).
pub const BUNDLE_DIR: &str = crate::image_dir::UPDATE_DIR;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// What goes into a bundle.
#[derive(Debug, Clone)]
pub struct BundleInput<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub channel: &'a str,
    pub rootfs: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// `created`, seconds since the epoch (the build's clock, or
    /// SOURCE_DATE_EPOCH for a reproducible bundle).
    pub created: i64,
    /// `expires` = `created` + this many seconds.
    pub validity_secs: i64,
    /// The dm-verity parameters of `rootfs`'s tree (`manifest.json`'s
    /// `verity`), when it has one.
    pub verity: Option<crate::verity::Verity>,
}

/// What `write_bundle` wrote.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub signature_path: PathBuf,
    pub key_id: String,
}

/// SHA-256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = fs::File::open(path).map_err(ChannelError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(ChannelError::io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Writes `out_dir/update/`: the parts, `manifest.json` and
/// `manifest.sig` (signed over the exact bytes written). The manifest is
/// written last but one and the signature last, so a reader that sees a
/// signature sees a complete bundle.
pub fn write_bundle(out_dir: &Path, input: &BundleInput<'_>, key: &SecretKey) -> Result<Bundle> {
    if input.validity_secs <= 0 {
        return Err(ChannelError::BadValidity(input.validity_secs));
    }
    let dir = out_dir.join(BUNDLE_DIR);
    fs::create_dir_all(&dir).map_err(ChannelError::io(&dir))?;
    // a stale signature must never sit beside new parts
    let sig_path = dir.join(SIGNATURE_FILE);
    match fs::remove_file(&sig_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ChannelError::Io {
                path: sig_path,
                source: e,
            })
        }
        _ => {}
    }
    let mut parts = Vec::new();
    for (kind, src) in [
        (PartKind::Rootfs, input.rootfs),
        (PartKind::Kernel, input.kernel),
        (PartKind::Initrd, input.initrd),
    ] {
        let dest = dir.join(kind.file_name());
        let same = fs::canonicalize(src).ok() == fs::canonicalize(&dest).ok();
        if !same {
            let _ = fs::remove_file(&dest);
            if fs::hard_link(src, &dest).is_err() {
                fs::copy(src, &dest).map_err(ChannelError::io(&dest))?;
            }
        }
        let (sha256, size) = hash_file(&dest)?;
        parts.push(Part {
            kind,
            path: kind.file_name().to_string(),
            size,
            sha256,
        });
    }
    let m = Manifest {
        format: FORMAT,
        name: input.name.to_string(),
        version: input.version.to_string(),
        channel: input.channel.to_string(),
        created: rfc3339(input.created),
        expires: rfc3339(input.created + input.validity_secs),
        parts,
        verity: input.verity.as_ref().map(crate::verity::VerityRecord::from),
    };
    m.check()?;
    let bytes = m.to_bytes();
    let manifest_path = dir.join(MANIFEST_FILE);
    write_atomic(&manifest_path, &bytes)?;
    write_atomic(&sig_path, manifest::sign(&bytes, key).as_bytes())?;
    Ok(Bundle {
        dir,
        manifest: m,
        manifest_path,
        signature_path: sig_path,
        key_id: key.id(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::keys::TrustedKeys;
    use crate::channel::manifest::{verify, Expect};

    #[test]
    fn bundle_is_signed_complete_and_deterministic() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("build");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("rootfs.squashfs"), vec![7u8; 100_000]).unwrap();
        fs::write(src.join("vmlinuz"), b"kernel").unwrap();
        fs::write(src.join("initrd.img"), b"initrd").unwrap();
        let key = SecretKey::from_seed([5; 32]);
        let input = BundleInput {
            name: "default",
            version: "2",
            channel: "stable",
            rootfs: &src.join("rootfs.squashfs"),
            kernel: &src.join("vmlinuz"),
            initrd: &src.join("initrd.img"),
            created: 1_700_000_000,
            validity_secs: 86400,
            verity: None,
        };
        let b = write_bundle(&src, &input, &key).unwrap();
        let bytes = fs::read(&b.manifest_path).unwrap();
        let sig = fs::read(&b.signature_path).unwrap();
        let trusted = TrustedKeys::new(vec![key.public()]);
        let m = verify(
            &bytes,
            &sig,
            &trusted,
            &Expect {
                name: "default",
                running_version: "1",
                channel: Some("stable"),
                now: 1_700_000_100,
            },
        )
        .unwrap();
        assert_eq!(m, b.manifest);
        assert_eq!(m.expires, "2023-11-15T22:13:20Z");
        let root = m.part(PartKind::Rootfs);
        assert_eq!(root.size, 100_000);
        assert_eq!(root.sha256, hex::encode(Sha256::digest(vec![7u8; 100_000])));
        for p in &m.parts {
            assert_eq!(hash_file(&b.dir.join(&p.path)).unwrap().0, p.sha256);
        }
        // again, into another folder: same bytes
        let b2 = write_bundle(&t.path().join("other"), &input, &key).unwrap();
        assert_eq!(fs::read(&b2.manifest_path).unwrap(), bytes);
        assert_eq!(fs::read(&b2.signature_path).unwrap(), sig);
        // and over itself (parts already in place)
        let b3 = write_bundle(&src, &input, &key).unwrap();
        assert_eq!(fs::read(&b3.manifest_path).unwrap(), bytes);
        let e = write_bundle(
            &src,
            &BundleInput {
                validity_secs: 0,
                ..input.clone()
            },
            &key,
        )
        .unwrap_err();
        assert!(e.to_string().contains("validity"), "{e}");
    }
}
