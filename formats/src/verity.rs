//! dm-verity of a root image: where the hash tree sits in the slot and the
//! `cairn.verity=` command-line value that tells `/init` how to open it.
//!
//! The layout is veritysetup's (format 1, SHA-256, 4096-byte data and hash
//! blocks, a 32-byte salt): the squashfs, zero-padded to a whole block, is
//! the data area (`data_blocks` blocks); a verity superblock follows at
//! `data_blocks * 4096` (so that `veritysetup verify FILE FILE ROOT
//! --hash-offset=N` and `veritysetup open` work on the file as it is), and
//! the hash tree starts one block later. The tree lives in the same file
//! (`rootfs.squashfs`) and the same slot as the filesystem it covers, so a
//! slot is still one blob to download, hash, write and read back.
//!
//! The command line carries everything the kernel's `verity` target needs:
//! `cairn.verity=<root hash>:<salt>:<data blocks>` (hex, hex, decimal).
//! `/init` never reads the on-disk superblock: its values come from the
//! trusted command line, and a tampered tree or superblock only changes
//! what the root hash fails to match.

/// Data and hash block size (bytes).
pub const BLOCK_SIZE: u64 = 4096;
/// Length of a SHA-256 digest and of the salt (bytes).
pub const DIGEST_LEN: usize = 32;
/// The hash algorithm, as the kernel's `verity` target names it.
pub const ALGORITHM: &str = "sha256";

/// What the kernel does when a block does not match the tree. cairn uses
/// [`Corruption::Restart`]: the machine reboots at once and `/init`'s boot
/// counting takes it to the other slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// `restart_on_corruption`
    Restart,
    /// `panic_on_corruption`
    Panic,
}

impl Corruption {
    /// The `verity` target's optional argument.
    pub fn table_arg(self) -> &'static str {
        match self {
            Corruption::Restart => "restart_on_corruption",
            Corruption::Panic => "panic_on_corruption",
        }
    }
}

/// The parameters of one root image's verity tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verity {
    pub root_hash: [u8; DIGEST_LEN],
    pub salt: [u8; DIGEST_LEN],
    /// Number of 4096-byte data blocks (the padded squashfs).
    pub data_blocks: u64,
}

/// Why a `cairn.verity=` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParseError(pub String);

impl std::fmt::Display for VerityParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}= {:?}: expected <root hash, 64 hex digits>:<salt, 64 hex digits>:<data blocks, a positive number>",
            crate::cmdline::VERITY,
            self.0
        )
    }
}

impl std::error::Error for VerityParseError {}

impl Verity {
    /// Byte offset of the verity superblock (and of the hash area) in the
    /// slot: right after the data area.
    pub fn hash_offset(&self) -> u64 {
        self.data_blocks * BLOCK_SIZE
    }

    /// First block of the hash tree, in 4096-byte blocks from the start of
    /// the device (the superblock takes one block).
    pub fn hash_start_block(&self) -> u64 {
        self.data_blocks + 1
    }

    /// Size of the data area in 512-byte sectors (the device-mapper
    /// table's length).
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / 512)
    }

    /// The root hash in lower-case hex.
    pub fn root_hash_hex(&self) -> String {
        to_hex(&self.root_hash)
    }

    /// The salt in lower-case hex.
    pub fn salt_hex(&self) -> String {
        to_hex(&self.salt)
    }

    /// The `cairn.verity=` value.
    pub fn to_cmdline_value(&self) -> String {
        format!(
            "{}:{}:{}",
            self.root_hash_hex(),
            self.salt_hex(),
            self.data_blocks
        )
    }

    /// The whole `cairn.verity=...` word.
    pub fn to_cmdline_word(&self) -> String {
        format!("{}={}", crate::cmdline::VERITY, self.to_cmdline_value())
    }

    /// Parses a `cairn.verity=` value.
    pub fn parse(value: &str) -> Result<Verity, VerityParseError> {
        let err = || VerityParseError(value.to_owned());
        let mut it = value.split(':');
        let (Some(root), Some(salt), Some(blocks), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(err());
        };
        let root_hash = from_hex32(root).ok_or_else(err)?;
        let salt = from_hex32(salt).ok_or_else(err)?;
        if blocks.is_empty() || !blocks.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let data_blocks: u64 = blocks.parse().map_err(|_| err())?;
        // the data area and its tree must fit a 64-bit byte offset
        if data_blocks == 0 || data_blocks > u64::MAX / BLOCK_SIZE / 2 {
            return Err(err());
        }
        Ok(Verity {
            root_hash,
            salt,
            data_blocks,
        })
    }

    /// The device-mapper table line of the kernel's `verity` target for a
    /// slot whose data and tree are both on `dev` (a `MAJOR:MINOR` or a
    /// device path): `START LENGTH verity ARGS`.
    pub fn dm_table(&self, dev: &str, on_corruption: Corruption) -> String {
        format!(
            "0 {} verity 1 {dev} {dev} {bs} {bs} {} {} {ALGORITHM} {} {} 1 {}",
            self.data_sectors(),
            self.data_blocks,
            self.hash_start_block(),
            self.root_hash_hex(),
            self.salt_hex(),
            on_corruption.table_arg(),
            bs = BLOCK_SIZE,
        )
    }
}

/// The verity parameters as `manifest.json` (the image folder's) and the
/// signed update manifest record them: hex root hash and salt, the data
/// area's size in blocks and the byte offset of the superblock (the hash
/// tree follows one block later). Behind the `serde` feature.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityRecord {
    /// 64 lower-case hex digits.
    pub root_hash: String,
    /// 64 lower-case hex digits.
    pub salt: String,
    pub data_blocks: u64,
    /// `data_blocks * 4096`: `veritysetup verify FILE FILE ROOT
    /// --hash-offset=` this.
    pub hash_offset: u64,
}

#[cfg(feature = "serde")]
impl From<&Verity> for VerityRecord {
    fn from(v: &Verity) -> VerityRecord {
        VerityRecord {
            root_hash: v.root_hash_hex(),
            salt: v.salt_hex(),
            data_blocks: v.data_blocks,
            hash_offset: v.hash_offset(),
        }
    }
}

#[cfg(feature = "serde")]
impl VerityRecord {
    /// The parameters, checked as a `cairn.verity=` value is (and the
    /// offset against the size).
    pub fn to_verity(&self) -> Result<Verity, VerityParseError> {
        let v = Verity::parse(&format!(
            "{}:{}:{}",
            self.root_hash, self.salt, self.data_blocks
        ))?;
        if v.hash_offset() != self.hash_offset {
            return Err(VerityParseError(format!(
                "{} (hash_offset {} is not data_blocks * 4096)",
                v.to_cmdline_value(),
                self.hash_offset
            )));
        }
        Ok(v)
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 32 bytes from exactly 64 hex digits (either case).
pub fn from_hex32(s: &str) -> Option<[u8; DIGEST_LEN]> {
    let b = s.as_bytes();
    if b.len() != DIGEST_LEN * 2 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; DIGEST_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Verity {
        Verity {
            root_hash: [0xab; 32],
            salt: [0x01; 32],
            data_blocks: 1000,
        }
    }

    #[test]
    fn cmdline_value_round_trips() {
        let v = sample();
        let s = v.to_cmdline_value();
        assert_eq!(s, format!("{}:{}:1000", "ab".repeat(32), "01".repeat(32)));
        assert_eq!(Verity::parse(&s), Ok(v));
        assert_eq!(
            Verity::parse(&s.to_uppercase()).map(|v| v.data_blocks),
            Ok(1000)
        );
        assert!(v.to_cmdline_word().starts_with("cairn.verity=abab"));
    }

    #[test]
    fn bad_values_are_refused() {
        let root = "ab".repeat(32);
        let salt = "01".repeat(32);
        for bad in [
            String::new(),
            root.clone(),
            format!("{root}:{salt}"),
            format!("{root}:{salt}:"),
            format!("{root}:{salt}:0"),
            format!("{root}:{salt}:-1"),
            format!("{root}:{salt}:+5"),
            format!("{root}:{salt}:12:3"),
            format!("{root}:{salt}:99999999999999999999999"),
            format!("{root}:{salt}:{}", u64::MAX),
            format!("{}:{salt}:8", &root[2..]),
            format!("{}zz:{salt}:8", &root[2..]),
            format!("{root}:{salt}0:8"),
        ] {
            let e = Verity::parse(&bad).unwrap_err();
            assert!(e.to_string().starts_with("cairn.verity= "), "{e}");
        }
    }

    #[test]
    fn table_and_offsets() {
        let v = sample();
        assert_eq!(v.hash_offset(), 4_096_000);
        assert_eq!(v.hash_start_block(), 1001);
        assert_eq!(
            v.dm_table("253:3", Corruption::Restart),
            format!(
                "0 8000 verity 1 253:3 253:3 4096 4096 1000 1001 sha256 {} {} 1 restart_on_corruption",
                "ab".repeat(32),
                "01".repeat(32)
            )
        );
        assert!(v
            .dm_table("/dev/vda3", Corruption::Panic)
            .ends_with(" 1 panic_on_corruption"));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn record_round_trips() {
        let v = sample();
        let r = VerityRecord::from(&v);
        assert_eq!(r.hash_offset, 4_096_000);
        assert_eq!(r.to_verity(), Ok(v));
        let mut bad = r.clone();
        bad.hash_offset += 1;
        assert!(bad.to_verity().is_err());
        let mut bad = r;
        bad.salt.pop();
        assert!(bad.to_verity().is_err());
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0, 0x0f, 0xf0, 0xff]), "000ff0ff");
        assert_eq!(from_hex32(&"0F".repeat(32)), Some([0x0f; 32]));
        assert_eq!(from_hex32("0"), None);
    }
}
