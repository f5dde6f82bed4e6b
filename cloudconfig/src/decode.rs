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

/// Decompress gzip data (several members allowed, as Go's gzip reader does).
pub(crate) fn decode_gzip(content: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(content)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
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
