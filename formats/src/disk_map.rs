//! The map of a disk image's data: which byte ranges of `disk.raw` hold
//! data (the rest are holes, zeros) with the SHA-256 of each, so that an
//! installer fetches and writes only the data and checks every piece.
//! `cairn serve` makes it from the file's holes (`SEEK_DATA`/`SEEK_HOLE`)
//! and offers it beside the image; `cairn-update install` reads it.

use serde::{Deserialize, Serialize};

/// The largest extent in a map (bytes): longer data runs are cut, so that
/// a piece is fetched, hashed and written with bounded memory.
pub const MAX_EXTENT: u64 = 16 << 20;
/// The most extents a map may list.
pub const MAX_EXTENTS: usize = 1 << 16;
/// The largest map document (bytes).
pub const MAX_MAP_BYTES: u64 = 16 << 20;

/// Where `cairn serve` offers the map of an image's `disk.raw` (`image`:
/// the image's `NAME-VERSION`).
pub fn map_path(image: &str) -> String {
    format!("/lifecycle/v1/map/{image}")
}

/// One run of data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    /// Lower-case hex SHA-256 of the run's bytes.
    pub sha256: String,
}

/// The map of one disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMap {
    /// The image's whole size (bytes).
    pub size: u64,
    /// In order, not overlapping, inside `size`, each at most
    /// [`MAX_EXTENT`].
    pub extents: Vec<Extent>,
}

/// Why a map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disk map: {0}")]
pub struct DiskMapError(pub String);

impl DiskMap {
    /// Reads and checks a map document.
    pub fn parse(body: &[u8]) -> Result<DiskMap, DiskMapError> {
        if body.len() as u64 > MAX_MAP_BYTES {
            return Err(DiskMapError(format!(
                "{} bytes, more than {MAX_MAP_BYTES}",
                body.len()
            )));
        }
        let m: DiskMap = serde_json::from_slice(body).map_err(|e| DiskMapError(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// The map's rules.
    pub fn check(&self) -> Result<(), DiskMapError> {
        if self.extents.len() > MAX_EXTENTS {
            return Err(DiskMapError(format!(
                "{} extents, more than {MAX_EXTENTS}",
                self.extents.len()
            )));
        }
        let mut end = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            let bad = |m: &str| DiskMapError(format!("extents[{i}]: {m}"));
            if e.length == 0 || e.length > MAX_EXTENT {
                return Err(bad(&format!(
                    "length {} is not in 1..={MAX_EXTENT}",
                    e.length
                )));
            }
            if e.offset < end {
                return Err(bad("overlaps or is out of order"));
            }
            end = e
                .offset
                .checked_add(e.length)
                .filter(|x| *x <= self.size)
                .ok_or_else(|| bad("ends past the image's size"))?;
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("sha256: expected 64 hex digits"));
            }
        }
        Ok(())
    }

    /// Bytes of data (what an installer fetches and writes).
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.length).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, length: u64) -> Extent {
        Extent {
            offset,
            length,
            sha256: "0".repeat(64),
        }
    }

    #[test]
    fn maps_are_checked() {
        let ok = DiskMap {
            size: 100 << 20,
            extents: vec![ext(0, 4096), ext(1 << 20, MAX_EXTENT)],
        };
        ok.check().unwrap();
        assert_eq!(ok.data_bytes(), 4096 + MAX_EXTENT);
        let j = serde_json::to_vec(&ok).unwrap();
        assert_eq!(DiskMap::parse(&j).unwrap(), ok);
        for (m, what) in [
            (vec![ext(0, 0)], "length 0"),
            (vec![ext(0, MAX_EXTENT + 1)], "length"),
            (vec![ext(4096, 10), ext(0, 10)], "out of order"),
            (vec![ext(0, 10), ext(5, 10)], "overlaps"),
            (vec![ext(100 << 20, 1)], "past the image's size"),
            (vec![ext(u64::MAX, 1)], "past the image's size"),
        ] {
            let e = DiskMap {
                size: 100 << 20,
                extents: m,
            }
            .check()
            .unwrap_err()
            .to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut bad_hash = ok.clone();
        bad_hash.extents[0].sha256 = "xyz".into();
        assert!(bad_hash.check().unwrap_err().to_string().contains("sha256"));
        assert!(DiskMap::parse(br#"{"size":1,"extents":[],"x":1}"#).is_err());
        assert!(DiskMap::parse(&vec![b' '; MAX_MAP_BYTES as usize + 1]).is_err());
    }
}
