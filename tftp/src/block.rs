//! Block-number arithmetic: 64-bit block indices inside the server, 16-bit numbers on the wire with rollover to 0.
//!
//! Block 1 is the first DATA block, block 0 stands for the OACK. After block 65535 the wire number wraps
//! to 0 (not 1), as tftp-hpa, atftp, curl and iPXE expect; a file of N bytes always has `N / blksize + 1` blocks
//! (the last one shorter than blksize, possibly empty).

/// Wire number of the block with index `index`.
pub fn wire(index: u64) -> u16 {
    (index & 0xffff) as u16
}

/// Number of DATA blocks for `len` bytes at `blksize`: the last block is always shorter than blksize.
pub fn count(len: u64, blksize: u16) -> u64 {
    len / u64::from(blksize) + 1
}

/// Interprets an ACK. `acked` is the index of the last block the client acknowledged, `in_flight` the number of
/// blocks sent after it. Returns how many of those the ACK acknowledges (0 = a duplicate of the previous ACK),
/// or `None` for an ACK outside that range (an old or bogus ACK, to be ignored).
pub fn ack_advance(acked: u64, in_flight: u64, ack: u16) -> Option<u64> {
    let delta = u64::from(ack.wrapping_sub(wire(acked)));
    (delta <= in_flight).then_some(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_roll_over_to_zero() {
        assert_eq!(wire(1), 1);
        assert_eq!(wire(65535), 65535);
        assert_eq!(wire(65536), 0);
        assert_eq!(wire(65537), 1);
        assert_eq!(wire(3 * 65536 + 7), 7);
    }

    #[test]
    fn block_counts() {
        assert_eq!(count(0, 512), 1);
        assert_eq!(count(511, 512), 1);
        assert_eq!(count(512, 512), 2);
        assert_eq!(count(65535 * 512, 512), 65536);
        assert_eq!(count(65535 * 512 + 1, 512), 65536);
        assert_eq!(count(64 << 20, 1468), (64 << 20) / 1468 + 1);
    }

    #[test]
    fn acks_across_the_rollover() {
        // Last acked block 65534, blocks 65535, 65536 (wire 0) and 65537 (wire 1) in flight.
        assert_eq!(ack_advance(65534, 3, 65534), Some(0));
        assert_eq!(ack_advance(65534, 3, 65535), Some(1));
        assert_eq!(ack_advance(65534, 3, 0), Some(2));
        assert_eq!(ack_advance(65534, 3, 1), Some(3));
        assert_eq!(ack_advance(65534, 3, 2), None);
        // An old ACK from before the window is ignored, even across the wrap.
        assert_eq!(ack_advance(65537, 1, 65535), None);
        assert_eq!(ack_advance(65537, 1, 1), Some(0));
        assert_eq!(ack_advance(65537, 1, 2), Some(1));
        // ACK 0 of the OACK when nothing is in flight.
        assert_eq!(ack_advance(0, 0, 0), Some(0));
        assert_eq!(ack_advance(0, 0, 1), None);
    }
}
