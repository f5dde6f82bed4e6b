//! Option negotiation for read requests: blksize (RFC 2348), timeout and tsize (RFC 2349), windowsize (RFC 7440).

use std::time::Duration;

/// Block size without options (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows: 65464 data bytes + 4 TFTP + 8 UDP + 20 IPv4 header bytes
/// still fit a datagram. Larger requests are answered with this value.
pub const MAX_BLKSIZE: u16 = 65464;

/// Most bytes in flight per window: windowsize is capped at `MAX_WINDOW_BYTES / blksize` (at least 1).
/// A window arrives as one burst; in a Linux receiver's default socket buffer (208 KiB, where an 8 KiB
/// datagram occupies 16 KiB) a larger burst overflows, and RFC 7440 clients only ACK full windows,
/// so every window would end in a lost tail and a timeout. Measured with atftp: 8192 x 16 ran at
/// 0.2 MiB/s on loopback, 8192 x 8 at full speed.
pub const MAX_WINDOW_BYTES: u32 = 64 * 1024;

/// The outcome of negotiating one request's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Data bytes per DATA packet.
    pub blksize: u16,
    /// DATA packets sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout the client asked for (and that the OACK confirms).
    pub timeout: Option<Duration>,
    /// Options to acknowledge, in the client's order, lower-case names. Empty: send no OACK.
    pub oack: Vec<(String, String)>,
}

/// Decides which requested options are accepted and with which values.
///
/// * `blksize` 8..=65464 is accepted, capped at `max_blksize` and at [`MAX_BLKSIZE`]; other values are ignored.
/// * `timeout` 1..=255 seconds is accepted as sent; other values are ignored.
/// * `tsize` (any number; 0 in a read request) is answered with `size`, the real transfer size.
/// * `windowsize` 1..=65535 is accepted, capped at `max_windowsize` and at [`MAX_WINDOW_BYTES`] / blksize.
/// * Unknown options, non-numeric values and repeats of an option (the first one wins) are ignored
///   (RFC 2347: the server omits options it does not support from the OACK).
pub fn negotiate(
    requested: &[(String, String)],
    size: u64,
    max_blksize: u16,
    max_windowsize: u16,
) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: None,
        oack: Vec::new(),
    };
    let cap_blksize = max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let cap_window = max_windowsize.max(1);
    for (name, value) in requested {
        let name = name.to_ascii_lowercase();
        if n.oack.iter().any(|(k, _)| *k == name) {
            continue;
        }
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        let accepted = match name.as_str() {
            "blksize" if v >= u64::from(MIN_BLKSIZE) => {
                n.blksize = v.min(u64::from(cap_blksize)) as u16;
                Some(n.blksize.to_string())
            }
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Some(Duration::from_secs(v));
                Some(v.to_string())
            }
            "tsize" => Some(size.to_string()),
            "windowsize" if (1..=65535).contains(&v) => {
                n.windowsize = v.min(u64::from(cap_window)) as u16;
                Some(n.windowsize.to_string())
            }
            _ => None,
        };
        if let Some(value) = accepted {
            n.oack.push((name, value));
        }
    }
    // The window cap depends on the final blksize, whatever the option order was.
    let byte_cap = (MAX_WINDOW_BYTES / u32::from(n.blksize)).max(1);
    if u32::from(n.windowsize) > byte_cap {
        n.windowsize = byte_cap as u16;
        if let Some(entry) = n.oack.iter_mut().find(|(k, _)| k == "windowsize") {
            entry.1 = n.windowsize.to_string();
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn oack(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        opts(pairs)
    }

    #[test]
    fn no_options_means_no_oack_and_rfc1350_defaults() {
        let n = negotiate(&[], 100, 1468, 16);
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout, None);
        assert!(n.oack.is_empty());
    }

    #[test]
    fn ipxe_style_request_is_accepted_in_order() {
        let n = negotiate(
            &opts(&[("blksize", "1432"), ("tsize", "0")]),
            12_345,
            1468,
            16,
        );
        assert_eq!(n.blksize, 1432);
        assert_eq!(n.oack, oack(&[("blksize", "1432"), ("tsize", "12345")]));
    }

    #[test]
    fn blksize_is_capped_by_config_and_protocol_maximum() {
        let n = negotiate(&opts(&[("blksize", "8192")]), 0, 1468, 16);
        assert_eq!(
            (n.blksize, n.oack.clone()),
            (1468, oack(&[("blksize", "1468")]))
        );
        let n = negotiate(&opts(&[("blksize", "65535")]), 0, u16::MAX, 16);
        assert_eq!(n.blksize, MAX_BLKSIZE);
        let n = negotiate(&opts(&[("blksize", "99999999999")]), 0, 65464, 16);
        assert_eq!(n.blksize, MAX_BLKSIZE);
        // A configured maximum below the RFC minimum still yields a legal block size.
        let n = negotiate(&opts(&[("blksize", "1024")]), 0, 2, 16);
        assert_eq!(n.blksize, MIN_BLKSIZE);
        // The smallest legal value is accepted unchanged.
        let n = negotiate(&opts(&[("blksize", "8")]), 0, 1468, 16);
        assert_eq!(n.blksize, 8);
    }

    #[test]
    fn invalid_values_are_ignored() {
        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("windowsize", "0"),
                ("tsize", "lots"),
            ]),
            10,
            1468,
            16,
        );
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout, None);
        assert!(n.oack.is_empty());
        let n = negotiate(
            &opts(&[("timeout", "256"), ("windowsize", "65536")]),
            0,
            1468,
            16,
        );
        assert!(n.oack.is_empty());
    }

    #[test]
    fn timeout_windowsize_and_case_insensitive_names() {
        let n = negotiate(
            &opts(&[("TIMEOUT", "3"), ("WindowSize", "4"), ("TSize", "0")]),
            1 << 40,
            1468,
            16,
        );
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(n.windowsize, 4);
        assert_eq!(
            n.oack,
            oack(&[
                ("timeout", "3"),
                ("windowsize", "4"),
                ("tsize", "1099511627776")
            ])
        );
        let n = negotiate(&opts(&[("windowsize", "64")]), 0, 1468, 16);
        assert_eq!((n.windowsize, n.oack), (16, oack(&[("windowsize", "16")])));
    }

    #[test]
    fn window_is_capped_to_64_kib_in_flight() {
        let n = negotiate(
            &opts(&[("windowsize", "16"), ("blksize", "8192")]),
            0,
            65464,
            64,
        );
        assert_eq!((n.blksize, n.windowsize), (8192, 8));
        assert_eq!(n.oack, oack(&[("windowsize", "8"), ("blksize", "8192")]));
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("windowsize", "4")]),
            0,
            65464,
            64,
        );
        assert_eq!(n.windowsize, 1);
        let n = negotiate(
            &opts(&[("blksize", "1468"), ("windowsize", "64")]),
            0,
            65464,
            64,
        );
        assert_eq!(n.windowsize, 44);
        let n = negotiate(&opts(&[("windowsize", "64")]), 0, 65464, 64);
        assert_eq!(n.windowsize, 64, "64 x 512 bytes fit");
    }

    #[test]
    fn unknown_and_repeated_options_are_ignored() {
        let n = negotiate(
            &opts(&[
                ("multicast", ""),
                ("blksize", "1024"),
                ("rollover", "0"),
                ("BLKSIZE", "2048"),
            ]),
            0,
            1468,
            16,
        );
        assert_eq!(n.blksize, 1024);
        assert_eq!(n.oack, oack(&[("blksize", "1024")]));
    }
}
