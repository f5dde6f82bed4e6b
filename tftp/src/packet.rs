//! The TFTP wire format: decoding and encoding RRQ/WRQ, DATA, ACK, ERROR and OACK packets (RFC 1350, RFC 2347).

use std::fmt;

/// Opcodes (RFC 1350 section 5, RFC 2347 for OACK).
pub mod opcode {
    /// Read request.
    pub const RRQ: u16 = 1;
    /// Write request.
    pub const WRQ: u16 = 2;
    /// Data block.
    pub const DATA: u16 = 3;
    /// Acknowledgement.
    pub const ACK: u16 = 4;
    /// Error.
    pub const ERROR: u16 = 5;
    /// Option acknowledgement (RFC 2347).
    pub const OACK: u16 = 6;
}

/// Error codes (RFC 1350 appendix, RFC 2347 for code 8).
pub mod error_code {
    /// Not defined, see error message.
    pub const NOT_DEFINED: u16 = 0;
    /// File not found.
    pub const FILE_NOT_FOUND: u16 = 1;
    /// Access violation.
    pub const ACCESS_VIOLATION: u16 = 2;
    /// Disk full or allocation exceeded.
    pub const DISK_FULL: u16 = 3;
    /// Illegal TFTP operation.
    pub const ILLEGAL_OPERATION: u16 = 4;
    /// Unknown transfer ID.
    pub const UNKNOWN_TID: u16 = 5;
    /// File already exists.
    pub const FILE_EXISTS: u16 = 6;
    /// No such user.
    pub const NO_SUCH_USER: u16 = 7;
    /// Option negotiation refused (RFC 2347).
    pub const OPTION_REFUSED: u16 = 8;
}

/// Transfer mode of a request. `mail` is obsolete and refused by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `netascii`: text with CR LF line ends.
    Netascii,
    /// `octet`: raw bytes.
    Octet,
    /// `mail` (obsolete, RFC 1350 says servers should not implement it).
    Mail,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        if s.eq_ignore_ascii_case("octet") {
            Some(Mode::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Some(Mode::Netascii)
        } else if s.eq_ignore_ascii_case("mail") {
            Some(Mode::Mail)
        } else {
            None
        }
    }

    /// The mode as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// A read or write request: file name, mode and the options in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// File name as sent (not interpreted here).
    pub filename: String,
    /// Transfer mode.
    pub mode: Mode,
    /// Options (RFC 2347) as (name, value) pairs, names as sent.
    pub options: Vec<(String, String)>,
}

/// One TFTP packet. DATA borrows its payload from the datagram buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request),
    /// Write request.
    Wrq(Request),
    /// Data block.
    Data {
        /// Block number (wraps to 0 after 65535).
        block: u16,
        /// Payload, at most blksize bytes.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack(u16),
    /// Error; ends the transfer.
    Error {
        /// Error code, see [`error_code`].
        code: u16,
        /// Human-readable message.
        message: String,
    },
    /// Option acknowledgement.
    Oack(Vec<(String, String)>),
}

/// Why a datagram is not a valid TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the smallest packet of this kind.
    #[error("packet of {len} bytes is too short for opcode {opcode}")]
    TooShort {
        /// Opcode (0 when even the opcode is missing).
        opcode: u16,
        /// Datagram length.
        len: usize,
    },
    /// Opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field lacks its terminating NUL byte.
    #[error("{0} is not terminated by a NUL byte")]
    Unterminated(&'static str),
    /// A string field is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The mode is not netascii, octet or mail.
    #[error("unknown transfer mode {0:?} (expected octet or netascii)")]
    UnknownMode(String),
}

/// Splits off one NUL-terminated string.
fn take_str<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a str, &'a [u8]), DecodeError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Unterminated(what))?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| DecodeError::NotUtf8(what))?;
    Ok((s, &buf[nul + 1..]))
}

/// Parses option pairs. Lenient like common servers: trailing NUL padding and an unterminated
/// last option (some firmware pads requests) end the list instead of rejecting the request.
fn parse_options(mut rest: &[u8]) -> Vec<(String, String)> {
    let mut options = Vec::new();
    while !rest.is_empty() {
        let Ok((name, after_name)) = take_str(rest, "option name") else {
            break;
        };
        if name.is_empty() {
            break;
        }
        let Ok((value, after_value)) = take_str(after_name, "option value") else {
            break;
        };
        options.push((name.to_string(), value.to_string()));
        rest = after_value;
    }
    options
}

fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let (filename, rest) = take_str(body, "file name")?;
    let (mode, rest) = take_str(rest, "mode")?;
    let mode = Mode::parse(mode).ok_or_else(|| DecodeError::UnknownMode(mode.to_string()))?;
    Ok(Request {
        filename: filename.to_string(),
        mode,
        options: parse_options(rest),
    })
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    pub fn decode(buf: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        if buf.len() < 2 {
            return Err(DecodeError::TooShort {
                opcode: 0,
                len: buf.len(),
            });
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        let too_short = || DecodeError::TooShort {
            opcode: op,
            len: buf.len(),
        };
        match op {
            opcode::RRQ => Ok(Packet::Rrq(decode_request(body)?)),
            opcode::WRQ => Ok(Packet::Wrq(decode_request(body)?)),
            opcode::DATA => {
                if body.len() < 2 {
                    return Err(too_short());
                }
                Ok(Packet::Data {
                    block: u16::from_be_bytes([body[0], body[1]]),
                    data: &body[2..],
                })
            }
            opcode::ACK => {
                if body.len() < 2 {
                    return Err(too_short());
                }
                // Trailing bytes are ignored, as tftp-hpa does: some firmware pads its ACKs.
                Ok(Packet::Ack(u16::from_be_bytes([body[0], body[1]])))
            }
            opcode::ERROR => {
                if body.len() < 2 {
                    return Err(too_short());
                }
                let code = u16::from_be_bytes([body[0], body[1]]);
                // The message should be NUL-terminated; accept a missing NUL (seen in the wild).
                let msg = &body[2..];
                let msg = msg.split(|&b| b == 0).next().unwrap_or_default();
                Ok(Packet::Error {
                    code,
                    message: String::from_utf8_lossy(msg).into_owned(),
                })
            }
            opcode::OACK => Ok(Packet::Oack(parse_options(body))),
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        fn put_request(out: &mut Vec<u8>, op: u16, r: &Request) {
            out.extend_from_slice(&op.to_be_bytes());
            put_str(out, &r.filename);
            put_str(out, r.mode.as_str());
            for (k, v) in &r.options {
                put_str(out, k);
                put_str(out, v);
            }
        }
        match self {
            Packet::Rrq(r) => put_request(out, opcode::RRQ, r),
            Packet::Wrq(r) => put_request(out, opcode::WRQ, r),
            Packet::Data { block, data } => encode_data(out, *block, data),
            Packet::Ack(block) => {
                out.extend_from_slice(&opcode::ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => encode_error(out, *code, message),
            Packet::Oack(options) => {
                out.extend_from_slice(&opcode::OACK.to_be_bytes());
                for (k, v) in options {
                    put_str(out, k);
                    put_str(out, v);
                }
            }
        }
    }

    /// The encoded packet as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Appends a DATA packet without building a [`Packet`] first (the hot path of a transfer).
pub fn encode_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.reserve(4 + data.len());
    out.extend_from_slice(&opcode::DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an ERROR packet. NUL bytes in `message` are dropped so the packet stays well-formed.
pub fn encode_error(out: &mut Vec<u8>, code: u16, message: &str) {
    out.extend_from_slice(&opcode::ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rrq_with_options_in_order() {
        let raw = b"\x00\x01/pxelinux.0\x00OCTET\x00blksize\x001432\x00tsize\x000\x00";
        let p = Packet::decode(raw).unwrap();
        assert_eq!(
            p,
            Packet::Rrq(Request {
                filename: "/pxelinux.0".into(),
                mode: Mode::Octet,
                options: vec![
                    ("blksize".into(), "1432".into()),
                    ("tsize".into(), "0".into())
                ],
            })
        );
        // Encoding writes the mode in lower case; everything else round-trips.
        assert_eq!(
            p.to_vec(),
            b"\x00\x01/pxelinux.0\x00octet\x00blksize\x001432\x00tsize\x000\x00"
        );
    }

    #[test]
    fn rrq_tolerates_padding_and_truncated_option() {
        let p = Packet::decode(b"\x00\x01f\x00netascii\x00\x00\x00").unwrap();
        assert!(matches!(p, Packet::Rrq(r) if r.options.is_empty() && r.mode == Mode::Netascii));
        let p = Packet::decode(b"\x00\x01f\x00octet\x00blksize\x001024").unwrap();
        assert!(matches!(p, Packet::Rrq(r) if r.options.is_empty()));
    }

    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(
            Packet::decode(b"\x00\x01file"),
            Err(DecodeError::Unterminated("file name"))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01file\x00octet"),
            Err(DecodeError::Unterminated("mode"))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01file\x00binary\x00"),
            Err(DecodeError::UnknownMode("binary".into()))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01\xff\xfe\x00octet\x00"),
            Err(DecodeError::NotUtf8("file name"))
        );
        assert_eq!(
            Packet::decode(b"\x00"),
            Err(DecodeError::TooShort { opcode: 0, len: 1 })
        );
        assert_eq!(
            Packet::decode(b"\x00\x09\x00\x00"),
            Err(DecodeError::UnknownOpcode(9))
        );
        assert_eq!(
            Packet::decode(b"\x00\x04\x00"),
            Err(DecodeError::TooShort { opcode: 4, len: 3 })
        );
        assert_eq!(
            Packet::decode(b"\x00\x04\x00\x01\x00\x00"),
            Ok(Packet::Ack(1)),
            "padded ACK"
        );
    }

    #[test]
    fn wrq_is_decoded_as_wrq() {
        assert!(matches!(
            Packet::decode(b"\x00\x02up\x00octet\x00"),
            Ok(Packet::Wrq(r)) if r.filename == "up"
        ));
    }

    #[test]
    fn data_ack_error_oack_round_trip() {
        let payload = [7u8; 600];
        let cases = [
            Packet::Data {
                block: 65535,
                data: &payload,
            },
            Packet::Data {
                block: 0,
                data: &[],
            },
            Packet::Ack(0),
            Packet::Ack(4242),
            Packet::Error {
                code: error_code::OPTION_REFUSED,
                message: "tsize probe".into(),
            },
            Packet::Oack(vec![
                ("blksize".into(), "1456".into()),
                ("tsize".into(), "12345".into()),
            ]),
        ];
        for p in cases {
            let bytes = p.to_vec();
            assert_eq!(Packet::decode(&bytes).unwrap(), p, "{bytes:?}");
        }
    }

    #[test]
    fn exact_wire_bytes() {
        let mut v = Vec::new();
        encode_data(&mut v, 0x0102, b"ab");
        assert_eq!(v, b"\x00\x03\x01\x02ab");
        let mut v = Vec::new();
        encode_error(&mut v, 2, "no\0pe");
        assert_eq!(v, b"\x00\x05\x00\x02nope\x00");
        assert_eq!(Packet::Ack(513).to_vec(), b"\x00\x04\x02\x01");
        assert_eq!(
            Packet::Oack(vec![("tsize".into(), "9".into())]).to_vec(),
            b"\x00\x06tsize\x009\x00"
        );
    }

    #[test]
    fn error_without_nul_is_accepted() {
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x08abort").unwrap(),
            Packet::Error {
                code: 8,
                message: "abort".into()
            }
        );
    }
}
