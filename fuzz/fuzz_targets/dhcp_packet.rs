//! Fuzz target: one DHCP datagram as ProxyDHCP receives it on UDP 67 or 4011: `parse` (with the option
//! length checks in front of dhcproto), `decide` for both ports, where the reply goes, and the reply
//! encoded and parsed back, as the receive loop does.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use cairn_proxydhcp::{
    answer::format_mac, boot_file, decide, encode, parse, reply_destination, BootConfig, Port,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = parse(data) else {
        return;
    };
    let _ = boot_file(&msg);
    let _ = format_mac(msg.chaddr());
    let cfg = BootConfig {
        server_addr: Ipv4Addr::new(192, 0, 2, 1),
        tftp_addr: Ipv4Addr::new(192, 0, 2, 1),
        http_boot_url: "http://192.0.2.1:8080/boot.ipxe".into(),
        bios_file: "undionly.kpxe".into(),
        efi_file: "ipxe.efi".into(),
    };
    for port in [Port::Dhcp, Port::Pxe] {
        let answer = match decide(&msg, &cfg, port) {
            Ok(a) => a,
            Err(why) => {
                let _ = (why.to_string(), why.is_warning());
                continue;
            }
        };
        for sender in [
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 50), 4011),
        ] {
            let _ = reply_destination(&msg, port, sender);
        }
        let bytes = encode(&answer.reply);
        assert!(bytes.len() >= 300, "reply of {} bytes", bytes.len());
        let reply = parse(&bytes).expect("our reply parses");
        assert_eq!(reply.xid(), msg.xid());
        assert_eq!(
            reply.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "ProxyDHCP never hands out addresses"
        );
        assert_eq!(boot_file(&reply).as_deref(), Some(answer.file.as_str()));
    }
});
