//! Update channels that `cairn serve` offers at `/update/v1/<channel>/`: the signed bundles
//! (`OUT/update/`, written by `cairn build --sign`) of the inventory's image folders and of its
//! `updates:` list, the newest version per channel. The server does not verify signatures (machines
//! do, against their own trust roots); it checks that each bundle is whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cairn_formats::channel::{version, Manifest, BUNDLE_DIR, MANIFEST_FILE, SIGNATURE_FILE};

/// One bundle on offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Channel name from the manifest.
    pub name: String,
    /// Image name.
    pub image: String,
    /// Image version.
    pub version: String,
    /// Canonical bundle folder (`IMAGE_FOLDER/update`).
    pub dir: PathBuf,
    /// The part file names the manifest lists.
    pub parts: BTreeSet<String>,
}

/// Reads the bundle of an image folder: `Ok(None)` when it has none (an unsigned build).
pub fn read_bundle(image_dir: &Path) -> Result<Option<Channel>, String> {
    let dir = image_dir.join(BUNDLE_DIR);
    if !dir.exists() {
        return Ok(None);
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes =
        std::fs::read(&manifest_path).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let manifest =
        Manifest::parse(&bytes).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let sig = dir.join(SIGNATURE_FILE);
    if !sig.is_file() {
        return Err(format!(
            "{}: missing (the bundle is unsigned or was cut short; rebuild with --sign)",
            sig.display()
        ));
    }
    let mut parts = BTreeSet::new();
    for p in &manifest.parts {
        let file = dir.join(&p.path);
        let len = std::fs::metadata(&file)
            .map_err(|e| {
                format!(
                    "{}: {e} (listed in {})",
                    file.display(),
                    manifest_path.display()
                )
            })?
            .len();
        if len != p.size {
            return Err(format!(
                "{}: {len} bytes, the manifest says {}",
                file.display(),
                p.size
            ));
        }
        parts.insert(p.path.clone());
    }
    Ok(Some(Channel {
        name: manifest.channel,
        image: manifest.name,
        version: manifest.version,
        dir,
        parts,
    }))
}

/// Every bundle per channel, newest first (a rollout offers one version to some machines and the one
/// before it to the rest). Two images on one channel, or two folders with one image version, are
/// refused (`Err` names both folders); one folder listed twice counts once.
pub fn by_channel(bundles: Vec<Channel>) -> Result<BTreeMap<String, Vec<Channel>>, String> {
    let mut out: BTreeMap<String, Vec<Channel>> = BTreeMap::new();
    for b in bundles {
        let list = out.entry(b.name.clone()).or_default();
        if let Some(have) = list.iter().find(|h| h.image != b.image) {
            return Err(format!(
                "channel {:?} offers two images, {:?} ({}) and {:?} ({}): one channel is one image",
                b.name,
                have.image,
                have.dir.display(),
                b.image,
                b.dir.display()
            ));
        }
        match list
            .iter()
            .find(|h| version::compare(&h.version, &b.version).is_eq())
        {
            Some(have) if have.dir == b.dir => {}
            Some(have) => {
                return Err(format!(
                    "{} and {} are both {} {} on channel {:?}",
                    have.dir.display(),
                    b.dir.display(),
                    b.image,
                    b.version,
                    b.name
                ))
            }
            None => list.push(b),
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| version::compare(&b.version, &a.version));
    }
    Ok(out)
}

/// Keeps the newest bundle per channel (see [`by_channel`] for what is refused).
pub fn newest(bundles: Vec<Channel>) -> Result<BTreeMap<String, Channel>, String> {
    Ok(by_channel(bundles)?
        .into_iter()
        .filter_map(|(name, list)| list.into_iter().next().map(|b| (name, b)))
        .collect())
}

/// The bundle a machine is offered on a channel whose bundles are `versions` (newest first):
/// with no rollout the newest; in a rollout of version V, V itself when the machine is offered
/// it, else the newest bundle older than V (`None`: there is none, nothing to offer).
pub fn offered<'a>(versions: &'a [Channel], rollout: Option<(&str, bool)>) -> Option<&'a Channel> {
    match rollout {
        None => versions.first(),
        Some((v, true)) => versions.iter().find(|b| b.version == v),
        Some((v, false)) => versions
            .iter()
            .find(|b| version::compare(&b.version, v).is_lt()),
    }
}

/// The file a request for `/update/v1/<channel>/<file>` names, if the channel offers it:
/// `manifest`, `manifest.sig`, or a part.
pub fn file_of<'a>(channel: &'a Channel, file: &'a str) -> Option<&'a str> {
    match file {
        "manifest" | "manifest.json" => Some(MANIFEST_FILE),
        "manifest.sig" => Some(SIGNATURE_FILE),
        f if channel.parts.contains(f) => Some(f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str, image: &str, version: &str, dir: &str) -> Channel {
        Channel {
            name: name.into(),
            image: image.into(),
            version: version.into(),
            dir: dir.into(),
            parts: BTreeSet::from(["vmlinuz".to_string()]),
        }
    }

    #[test]
    fn newest_per_channel() {
        let got = newest(vec![
            ch("stable", "cairn", "1.9", "/a"),
            ch("stable", "cairn", "1.10", "/b"),
            ch("stable", "cairn", "1.10~rc1", "/c"),
            ch("beta", "cairn", "2", "/d"),
            ch("stable", "cairn", "1.10", "/b"),
        ])
        .unwrap();
        assert_eq!(got["stable"].dir, PathBuf::from("/b"));
        assert_eq!(got["beta"].version, "2");
        let e = newest(vec![ch("s", "a", "1", "/a"), ch("s", "b", "2", "/b")]).unwrap_err();
        assert!(
            e.contains("two images") && e.contains("/a") && e.contains("/b"),
            "{e}"
        );
        let e = newest(vec![ch("s", "a", "1", "/a"), ch("s", "a", "1", "/b")]).unwrap_err();
        assert!(e.contains("are both a 1"), "{e}");
    }

    #[test]
    fn a_rollout_offers_its_version_or_the_one_before() {
        let all = by_channel(vec![
            ch("lab", "cairn", "1.0", "/1"),
            ch("lab", "cairn", "3.0", "/3"),
            ch("lab", "cairn", "2.0", "/2"),
        ])
        .unwrap();
        let lab = &all["lab"];
        let order: Vec<&str> = lab.iter().map(|b| b.version.as_str()).collect();
        assert_eq!(order, ["3.0", "2.0", "1.0"]);
        assert_eq!(offered(lab, None).unwrap().version, "3.0");
        assert_eq!(offered(lab, Some(("2.0", true))).unwrap().version, "2.0");
        assert_eq!(offered(lab, Some(("2.0", false))).unwrap().version, "1.0");
        assert_eq!(offered(lab, Some(("3.0", false))).unwrap().version, "2.0");
        assert!(offered(lab, Some(("1.0", false))).is_none());
        assert!(offered(lab, Some(("9.0", true))).is_none());
    }

    #[test]
    fn only_listed_files_are_served() {
        let c = ch("s", "a", "1", "/a");
        assert_eq!(file_of(&c, "manifest"), Some("manifest.json"));
        assert_eq!(file_of(&c, "manifest.sig"), Some("manifest.sig"));
        assert_eq!(file_of(&c, "vmlinuz"), Some("vmlinuz"));
        for bad in ["initrd.img", "../x", "", "manifest.json.tmp"] {
            assert_eq!(file_of(&c, bad), None, "{bad}");
        }
    }
}
