//! write_files content decoding (base64, gzip and their combinations) and octal mode parsing, as coreos-cloudinit's config/decode.go and system/file.go.

use std::io::Read;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use crate::model::{DecodeError, ModeError};

/// Go's `base64.StdEncoding`: standard alphabet, padding required, `\r` and `\n` ignored, non-zero trailing bits accepted.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Every value coreos-cloudinit accepts for `encoding`.
pub const ENCODINGS: &[&str] = &[
    "base64",
    "b64",
    "gz",
    "gzip",
    "gz+base64",
    "gzip+base64",
    "gz+b64",
    "gzip+b64",
];

/// Decode base64 text the way Go's `base64.StdEncoding.DecodeString` does.
pub(crate) fn decode_base64(content: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let cleaned: Vec<u8> = content
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    GO_STD
        .decode(cleaned)
        .map_err(|e| DecodeError::Base64(e.to_string()))
}

/// The most gzip user-data or `write_files` content may decompress to
/// (the size of the largest config drive): a few KiB of gzip can expand to
/// gigabytes, at boot as in `cairn validate` and the server's inventory.
pub const MAX_DECOMPRESSED: u64 = 64 << 20;

/// Decompress gzip data (several members allowed, as Go's gzip reader
/// does), at most [`MAX_DECOMPRESSED`] bytes.
pub(crate) fn decode_gzip(content: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(content)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DecodeError::TooLarge {
            limit: MAX_DECOMPRESSED,
        });
    }
    Ok(out)
}

/// Decode `content` according to `encoding` ("" means plain text).
pub(crate) fn decode_bytes(content: &[u8], encoding: &str) -> Result<Vec<u8>, DecodeError> {
    match encoding {
        "" => Ok(content.to_vec()),
        "base64" | "b64" => decode_base64(content),
        "gz" | "gzip" => decode_gzip(content),
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => {
            decode_gzip(&decode_base64(content)?)
        }
        other => Err(DecodeError::UnsupportedEncoding(other.to_string())),
    }
}

/// Decode a `write_files` entry's content according to its `encoding` ("" means plain text).
pub fn decode_content(content: &str, encoding: &str) -> Result<Vec<u8>, DecodeError> {
    decode_bytes(content.as_bytes(), encoding)
}

/// User-data as fetched may be gzip-compressed (coreos-cloudinit checks the magic bytes `1f 8b`): decompress it then,
/// otherwise return it as it is.
pub fn decompress_user_data(data: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    if data.starts_with(&[0x1f, 0x8b]) {
        decode_gzip(data).map(std::borrow::Cow::Owned)
    } else {
        Ok(std::borrow::Cow::Borrowed(data))
    }
}

/// Parse `permissions` as octal like Go's `strconv.ParseInt(s, 8, 32)`.
pub fn parse_mode(text: &str) -> Result<u32, ModeError> {
    let err = || ModeError {
        text: text.to_string(),
    };
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(err());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| err())?;
    if mode > 0o7777 {
        return Err(err());
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn every_encoding_round_trips() {
        let plain = b"[Unit]\nDescription=hello \xe2\x9c\x93\n\x00\xff binary tail";
        let gz = gzip(plain);
        for enc in ["base64", "b64"] {
            assert_eq!(
                decode_bytes(b64(plain).as_bytes(), enc).unwrap(),
                plain,
                "{enc}"
            );
        }
        for enc in ["gz", "gzip"] {
            assert_eq!(decode_bytes(&gz, enc).unwrap(), plain, "{enc}");
        }
        for enc in ["gz+base64", "gzip+base64", "gz+b64", "gzip+b64"] {
            assert_eq!(decode_content(&b64(&gz), enc).unwrap(), plain, "{enc}");
        }
        assert_eq!(decode_content("as is", "").unwrap(), b"as is");
        assert_eq!(ENCODINGS.len(), 8);
        for enc in ENCODINGS {
            let input = match *enc {
                "gz" | "gzip" => gz.clone(),
                "base64" | "b64" => b64(plain).into_bytes(),
                _ => b64(&gz).into_bytes(),
            };
            assert_eq!(decode_bytes(&input, enc).unwrap(), plain, "{enc}");
        }
    }

    #[test]
    fn base64_like_go() {
        // Newlines (block scalars) are ignored, padding is required, trailing bits are tolerated.
        assert_eq!(
            decode_content("aGVs\nbG8K\r\n", "base64").unwrap(),
            b"hello\n"
        );
        assert!(matches!(
            decode_content("aGVsbG8", "base64"),
            Err(DecodeError::Base64(_))
        ));
        assert_eq!(decode_content("aGVsbG9=", "b64").unwrap(), b"hello");
        assert!(matches!(
            decode_content("not base64!", "b64"),
            Err(DecodeError::Base64(_))
        ));
        assert_eq!(decode_content("", "base64").unwrap(), b"");
    }

    #[test]
    fn gzip_errors_and_multiple_members() {
        assert!(matches!(
            decode_content("plain", "gzip"),
            Err(DecodeError::Gzip(_))
        ));
        assert!(matches!(
            decode_content("", "gz"),
            Err(DecodeError::Gzip(_))
        ));
        let mut two = gzip(b"one ");
        two.extend(gzip(b"two"));
        assert_eq!(decode_bytes(&two, "gzip").unwrap(), b"one two");
        let gz = gzip(b"truncated member body");
        assert!(decode_bytes(&gz[..gz.len() - 6], "gzip").is_err());
    }

    #[test]
    fn gzip_user_data() {
        let text = b"#cloud-config\nhostname: a\n";
        assert_eq!(&*decompress_user_data(&gzip(text)).unwrap(), text);
        assert!(matches!(
            decompress_user_data(text).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(decompress_user_data(&[0x1f, 0x8b, 0, 0]).is_err());
        // a gzip bomb: 65 MiB of zeros in about 65 KiB is refused, not expanded
        let bomb = gzip(&vec![0u8; (MAX_DECOMPRESSED + (1 << 20)) as usize]);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        assert!(matches!(
            decompress_user_data(&bomb),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_bytes(&bomb, "gzip"),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn unsupported_encoding() {
        assert_eq!(
            decode_content("x", "custom"),
            Err(DecodeError::UnsupportedEncoding("custom".into()))
        );
        assert!(decode_content("x", "BASE64").is_err());
    }

    #[test]
    fn modes_are_octal() {
        for (text, mode) in [
            ("0644", 0o644),
            ("644", 0o644),
            ("0755", 0o755),
            ("420", 0o420),
            ("1777", 0o1777),
            ("0", 0),
            ("+600", 0o600),
        ] {
            assert_eq!(parse_mode(text), Ok(mode), "{text}");
        }
        for bad in ["", "0x1ff", "rw-r--r--", "0644 ", "888", "-644", "77777"] {
            assert_eq!(
                parse_mode(bad),
                Err(ModeError { text: bad.into() }),
                "{bad:?}"
            );
        }
        let f = |p: Option<&str>| crate::WriteFile {
            permissions: p.map(Into::into),
            ..Default::default()
        };
        assert_eq!(f(None).mode(), Ok(None));
        assert_eq!(f(Some("")).mode(), Ok(None));
        assert_eq!(f(Some("0600")).mode(), Ok(Some(0o600)));
        assert!(f(Some("abc")).mode().is_err());
    }
}
