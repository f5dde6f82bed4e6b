//! Fuzz target: one TFTP datagram as the server receives it (`Packet::decode`: RRQ/WRQ with options, DATA,
//! ACK, ERROR, OACK), re-encoded and decoded again, and a read request's options negotiated.
#![no_main]

use cairn_tftp::options::{negotiate, MAX_WINDOW_BYTES, MIN_BLKSIZE};
use cairn_tftp::packet::Packet;
use cairn_tftp::MAX_BLKSIZE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::decode(data) else {
        return;
    };
    // What decodes encodes to a packet that decodes to the same thing.
    let bytes = packet.to_vec();
    let again = Packet::decode(&bytes).expect("an encoded packet decodes");
    assert_eq!(again, packet, "re-encoded as {bytes:?}");

    if let Packet::Rrq(req) = &packet {
        for (size, max_blksize, max_window) in [
            (0u64, 1468u16, 16u16),
            (u64::MAX, MAX_BLKSIZE, u16::MAX),
            (12_345, 0, 0),
        ] {
            let n = negotiate(&req.options, size, max_blksize, max_window);
            assert!(
                n.blksize >= MIN_BLKSIZE && n.blksize <= MAX_BLKSIZE,
                "{n:?}"
            );
            assert!(
                n.blksize <= max_blksize.max(MIN_BLKSIZE) || n.blksize == 512,
                "{n:?}"
            );
            assert!(n.windowsize >= 1, "{n:?}");
            assert!(
                n.windowsize == 1
                    || u32::from(n.windowsize) * u32::from(n.blksize) <= MAX_WINDOW_BYTES,
                "{n:?}"
            );
            // The OACK names each option once, and only options the client asked for.
            for (i, (k, _)) in n.oack.iter().enumerate() {
                assert!(n.oack[..i].iter().all(|(o, _)| o != k), "{n:?}");
                assert!(
                    req.options.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)),
                    "{n:?}"
                );
            }
        }
    }
});
