//! Host TCP ports on 127.0.0.1 for QEMU's port forwards (`cairn vm`'s SSH
//! line) and for the daemons tests start: picked where no other process is
//! handed one meanwhile.
//!
//! A port is chosen at random below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), from 10000 up, and checked
//! by binding it. A port the OS hands out for `bind(0)` or as the local end
//! of an outgoing connection comes from the ephemeral range, so between
//! this check and the child's own bind only another caller of this
//! function could take it, which picks at random among thousands. (With
//! `bind(0)` instead, a test's etcd once lost its port to another test
//! process in that moment: `bind: address already in use`.)

use std::io;
use std::net::TcpListener;

/// The lowest port [`free_port`] takes.
pub const PRIVATE_FROM: u16 = 10000;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a child process
/// (QEMU, etcd) to listen on.
pub fn free_port() -> io::Result<u16> {
    let (low, _) = ephemeral_range();
    let below = low.saturating_sub(PRIVATE_FROM);
    let mut last = None;
    for _ in 0..1000 {
        let port = match below {
            // no room below the ephemeral range: the OS picks
            0 => 0,
            n => PRIVATE_FROM + (random()? % u64::from(n)) as u16,
        };
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return Ok(l.local_addr()?.port()),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one try");
    Err(io::Error::new(
        e.kind(),
        format!("no free TCP port on 127.0.0.1 in {PRIVATE_FROM}..{low} after 1000 tries: {e}"),
    ))
}

/// The kernel's range of ephemeral ports (Linux's default when unreadable).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// 64 bits from the operating system's random source.
fn random() -> io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("random source: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bindable_spread_and_below_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        assert!(low <= high, "{low}..{high}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port().unwrap();
            assert!(
                (PRIVATE_FROM..low).contains(&p),
                "{p} not in {PRIVATE_FROM}..{low}"
            );
            seen.insert(p);
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        // picked at random, not one after another
        assert!(seen.len() > 40, "{seen:?}");
    }

    #[test]
    fn a_port_in_use_is_never_returned() {
        // ports this test holds are never handed out
        let held: Vec<TcpListener> = (0..200)
            .filter_map(|_| TcpListener::bind(("127.0.0.1", free_port().unwrap())).ok())
            .collect();
        let taken: std::collections::HashSet<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        for _ in 0..200 {
            let p = free_port().unwrap();
            assert!(!taken.contains(&p), "{p} is held by this test");
        }
    }
}
