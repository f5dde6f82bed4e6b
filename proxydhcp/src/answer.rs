//! The ProxyDHCP decision, without I/O: which packets get an answer, what the answer says and where it
//! goes. Unit tests drive it with crafted packets; the socket loop in `server.rs` only calls it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{
    self, DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Decoder, Encodable};

/// The DHCP server port: broadcast DHCPDISCOVERs arrive here.
pub const DHCP_PORT: u16 = 67;
/// The DHCP client port: ProxyDHCP offers go there.
pub const CLIENT_PORT: u16 = 68;
/// The PXE boot server port: clients send their ProxyDHCPREQUEST here (PXE 2.1, "BINL" in UEFI).
pub const PXE_PORT: u16 = 4011;

/// The DHCP magic cookie (RFC 2131 section 3): a BOOTP packet without it carries no options.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// BOOTP's minimum message size (RFC 1542 section 3.3); some PXE ROMs drop shorter replies.
const MIN_REPLY_LEN: usize = 300;
/// Option 43 as PXE 2.1 defines it for a proxy that names the boot file itself: sub-option 6
/// (PXE_DISCOVERY_CONTROL) = 8 ("download the boot file named in this offer, no boot server
/// discovery"), then the END sub-option.
const PXE_VENDOR_SKIP_DISCOVERY: [u8; 4] = [6, 1, 8, 255];
/// Option 175: iPXE's encapsulated options; only iPXE sends it.
const IPXE_ENCAP: u8 = 175;

/// Which of the two listening ports a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// UDP 67: broadcast DHCPDISCOVER → ProxyDHCP OFFER.
    Dhcp,
    /// UDP 4011: DHCPREQUEST sent to the proxy → ACK.
    Pxe,
}

impl Port {
    /// The UDP port number.
    pub fn number(self) -> u16 {
        match self {
            Port::Dhcp => DHCP_PORT,
            Port::Pxe => PXE_PORT,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UDP {}", self.number())
    }
}

/// What the answers say: every address resolved (see `ProxyConfig::resolve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Our address on the interface: option 54 (server identifier), where clients send to port 4011.
    pub server_addr: Ipv4Addr,
    /// The TFTP server: siaddr (next-server), option 66 and sname.
    pub tftp_addr: Ipv4Addr,
    /// The file iPXE gets: the HTTP URL of cairn serve's `/boot.ipxe`.
    pub http_boot_url: String,
    /// The file BIOS PXE (architecture 0) gets over TFTP, e.g. `undionly.kpxe`.
    pub bios_file: String,
    /// The file x86-64 UEFI (architectures 7 and 9) gets over TFTP, e.g. `ipxe.efi`.
    pub efi_file: String,
}

/// The kind of client an answer was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// A BIOS PXE ROM (architecture 0): gets the BIOS file over TFTP.
    Bios,
    /// x86-64 UEFI (architecture 7 or 9): gets the EFI file over TFTP.
    EfiX64,
    /// iPXE itself (user class `iPXE` or option 175), any architecture: gets the HTTP URL.
    Ipxe,
}

/// A packet that gets no answer, and why. `Display` is the log wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// A BOOTREPLY (another server's answer) seen on our port.
    NotARequest,
    /// Not a DHCP message (no option 53): plain BOOTP.
    NotDhcp,
    /// A message type this port does not answer (INFORM, RELEASE, a REQUEST on 67, ...).
    MessageType { port: Port, msg_type: MessageType },
    /// No option 60 starting with `PXEClient`: a plain DHCP client.
    NotPxeClient,
    /// A PXE client without option 93: we cannot tell which file it can run.
    NoArchitecture,
    /// A PXE client of an architecture we have no boot file for.
    UnsupportedArch(u16),
    /// No usable hardware address (hlen 0 or over 16).
    NoHardwareAddress,
    /// A REQUEST on 4011 naming another server in option 54.
    OtherServer(Ipv4Addr),
    /// The configured file does not fit the 128-byte `file` field (`ProxyConfig::resolve` refuses
    /// such a configuration; a hand-made [`BootConfig`] can still hold one).
    FileTooLong(usize),
}

impl Ignored {
    /// Whether this deserves more than a debug line: a PXE client we cannot serve.
    pub fn is_warning(&self) -> bool {
        matches!(self, Ignored::UnsupportedArch(_) | Ignored::FileTooLong(_))
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::NotARequest => write!(f, "a BOOTREPLY, not a request"),
            Ignored::NotDhcp => write!(f, "plain BOOTP (no DHCP message type)"),
            Ignored::MessageType { port, msg_type } => {
                write!(f, "{msg_type:?} is not answered on {port}")
            }
            Ignored::NotPxeClient => write!(f, "not a PXE client (no option 60 PXEClient)"),
            Ignored::NoArchitecture => {
                write!(f, "PXE client without option 93 (client architecture)")
            }
            Ignored::UnsupportedArch(a) => write!(
                f,
                "PXE client architecture {a} ({}) has no boot file here (only BIOS 0 and x86-64 UEFI 7/9 do)",
                arch_name(*a)
            ),
            Ignored::NoHardwareAddress => write!(f, "no usable client hardware address"),
            Ignored::OtherServer(s) => write!(f, "the request is for server {s}, not us"),
            Ignored::FileTooLong(n) => write!(
                f,
                "the boot file is {n} bytes; the DHCP file field holds at most 127"
            ),
        }
    }
}

/// A reply and what it was made for (the facts the info log line names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply to send.
    pub reply: Message,
    /// The client's hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Option 93 as sent (first entry).
    pub arch: u16,
    /// Which kind of client we decided it is.
    pub firmware: Firmware,
    /// The boot file or URL in the reply.
    pub file: String,
}

/// A packet that could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than a BOOTP header or cut inside a field.
    #[error("malformed DHCP packet ({len} bytes): {reason}")]
    Malformed { len: usize, reason: String },
    /// A BOOTP packet without the DHCP magic cookie.
    #[error("not a DHCP packet ({len} bytes): no DHCP magic cookie")]
    NoMagicCookie { len: usize },
}

/// Decodes a datagram. Never panics on any input; a packet too short or cut mid-field, or with a
/// hardware address length over 16 (on which `Message::chaddr` would panic), is an error.
pub fn parse(bytes: &[u8]) -> Result<Message, PacketError> {
    let len = bytes.len();
    if let Some(options) = bytes.get(240..) {
        check_option_lengths(options).map_err(|reason| PacketError::Malformed { len, reason })?;
    }
    let msg = Message::decode(&mut Decoder::new(bytes)).map_err(|e| PacketError::Malformed {
        len,
        reason: e.to_string(),
    })?;
    if bytes.get(236..240) != Some(&MAGIC[..]) {
        return Err(PacketError::NoMagicCookie { len });
    }
    if msg.hlen() > 16 {
        return Err(PacketError::Malformed {
            len,
            reason: format!("hardware address length {} over 16", msg.hlen()),
        });
    }
    Ok(msg)
}

/// Walks the options' type-length-value chain before dhcproto decodes it: dhcproto 0.15 asserts
/// (debug builds) or subtracts without checking on a few option lengths (80, 81, 94, 151-155), so a
/// packet with such an option of the wrong size would panic the receive loop instead of being ignored.
/// dhcproto joins adjacent options of one code into one (RFC 3396 long options) before it decodes
/// them, so the rules hold for the joined length: two adjacent 4-byte options 152 are one of 8 bytes.
fn check_option_lengths(mut opts: &[u8]) -> Result<(), String> {
    // The run of adjacent options of one code read so far: its code, its joined length, how many.
    let mut run: Option<(u8, usize, usize)> = None;
    while let Some((&code, rest)) = opts.split_first() {
        if code == 0 || code == 255 {
            // PAD and END end a run, as they do in dhcproto.
            check_joined_length(run.take())?;
            if code == 255 {
                return Ok(());
            }
            opts = rest;
            continue;
        }
        let Some((&len, rest)) = rest.split_first() else {
            return Err(format!("option {code} has no length byte"));
        };
        let len = usize::from(len);
        if rest.len() < len {
            return Err(format!(
                "option {code} claims {len} bytes, {} remain",
                rest.len()
            ));
        }
        run = match run {
            Some((c, joined, n)) if c == code => Some((c, joined + len, n + 1)),
            other => {
                check_joined_length(other)?;
                Some((code, len, 1))
            }
        };
        opts = &rest[len..];
    }
    check_joined_length(run)
}

/// The length rules of [`check_option_lengths`] for one run of `(code, joined length, options)`.
fn check_joined_length(run: Option<(u8, usize, usize)>) -> Result<(), String> {
    let Some((code, len, n)) = run else {
        return Ok(());
    };
    let ok = match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    match (ok, n) {
        (true, _) => Ok(()),
        (false, 1) => Err(format!("option {code} has the wrong length {len}")),
        (false, n) => Err(format!(
            "option {code} has the wrong length {len} (joined from {n} adjacent options {code})"
        )),
    }
}

/// The boot file name of a message, without the NUL padding dhcproto keeps.
pub fn boot_file(msg: &Message) -> Option<String> {
    let f = msg.fname()?;
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    Some(String::from_utf8_lossy(&f[..end]).into_owned())
}

/// Encodes a reply, padded to BOOTP's 300-byte minimum as real servers do.
pub fn encode(reply: &Message) -> Vec<u8> {
    // Encoding into a Vec only fails for values a Message cannot hold (option data over 255 bytes is
    // split by dhcproto); our replies carry short options only.
    let mut bytes = reply
        .to_vec()
        .expect("encoding a ProxyDHCP reply: options are short");
    if bytes.len() < MIN_REPLY_LEN {
        bytes.resize(MIN_REPLY_LEN, 0);
    }
    bytes
}

/// Human name of an RFC 4578 / IANA processor architecture type, for logs.
pub fn arch_name(arch: u16) -> &'static str {
    match arch {
        0 => "BIOS x86",
        1 => "NEC PC-98",
        2 => "EFI Itanium",
        6 => "EFI IA32",
        7 => "EFI x86-64",
        9 => "EFI BC (x86-64)",
        10 => "EFI ARM32",
        11 => "EFI ARM64",
        15 => "EFI IA32 HTTP",
        16 => "EFI x86-64 HTTP",
        18 => "EFI ARM32 HTTP",
        19 => "EFI ARM64 HTTP",
        25 => "EFI RISC-V 32",
        27 => "EFI RISC-V 64",
        _ => "unknown",
    }
}

/// The answer to `msg` received on `port`, or None. See [`decide`] for the reason when None.
pub fn answer(msg: &Message, cfg: &BootConfig, port: Port) -> Option<Message> {
    decide(msg, cfg, port).ok().map(|a| a.reply)
}

/// Decides whether and how to answer `msg`, received on `port`.
///
/// * Only BOOTREQUESTs with the DHCP cookie, option 60 starting with `PXEClient` and option 93.
/// * Port 67: DHCPDISCOVER → OFFER. Port 4011: DHCPREQUEST → ACK. Anything else: ignored.
/// * yiaddr is always 0: the site's DHCP server hands out addresses, never us.
pub fn decide(msg: &Message, cfg: &BootConfig, port: Port) -> Result<Answer, Ignored> {
    if msg.opcode() != Opcode::BootRequest {
        return Err(Ignored::NotARequest);
    }
    let msg_type = match msg.opts().msg_type() {
        Some(t) => t,
        _ => return Err(Ignored::NotDhcp),
    };
    let reply_type = match (port, msg_type) {
        (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
        (Port::Pxe, MessageType::Request) => MessageType::Ack,
        (port, msg_type) => return Err(Ignored::MessageType { port, msg_type }),
    };
    if !is_pxe_client(msg) {
        return Err(Ignored::NotPxeClient);
    }
    let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => a.0,
        _ => return Err(Ignored::NoArchitecture),
    };
    if port == Port::Pxe {
        if let Some(DhcpOption::ServerIdentifier(s)) = msg.opts().get(OptionCode::ServerIdentifier)
        {
            if *s != cfg.server_addr {
                return Err(Ignored::OtherServer(*s));
            }
        }
    }
    let hlen = usize::from(msg.hlen());
    if hlen == 0 || hlen > 16 {
        return Err(Ignored::NoHardwareAddress);
    }
    let (firmware, file) = if is_ipxe(msg) {
        (Firmware::Ipxe, cfg.http_boot_url.clone())
    } else {
        match arch {
            0 => (Firmware::Bios, cfg.bios_file.clone()),
            // 7 is x86-64 UEFI; 9 ("EFI BC") is what many x86-64 firmwares (and early EDK2) send for
            // the same machine. 6 (IA32 UEFI) cannot run an x86-64 ipxe.efi, and Debian ships no
            // 32-bit EFI iPXE: refused like ARM rather than sent a file it cannot run.
            7 | 9 => (Firmware::EfiX64, cfg.efi_file.clone()),
            other => return Err(Ignored::UnsupportedArch(other)),
        }
    };

    if file.len() > 127 {
        return Err(Ignored::FileTooLong(file.len()));
    }
    let chaddr = &msg.chaddr()[..hlen];
    let mut reply = Message::new_with_id(
        msg.xid(),
        if port == Port::Pxe {
            msg.ciaddr()
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        Ipv4Addr::UNSPECIFIED,
        cfg.tftp_addr,
        msg.giaddr(),
        chaddr,
    );
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(msg.htype())
        .set_flags(msg.flags())
        .set_sname_str(cfg.tftp_addr.to_string())
        .set_fname_str(&file);
    let mut opts = DhcpOptions::new();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_addr));
    opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    opts.insert(DhcpOption::TFTPServerName(
        cfg.tftp_addr.to_string().into_bytes(),
    ));
    if let Some(DhcpOption::ClientMachineIdentifier(guid)) =
        msg.opts().get(OptionCode::ClientMachineIdentifier)
    {
        opts.insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
    }
    // Option 43: BIOS PXE ROMs and iPXE take "skip discovery, boot the file in this packet". UEFI's
    // PXE (EDK2) treats an offer carrying PXE vendor options as a PXE 1.0 boot-server offer and
    // some firmwares then ignore it; an offer with option 60 PXEClient and no option 43 makes them
    // send a DHCPREQUEST to port 4011 instead, whose ACK names the file (what pixiecore does).
    if firmware != Firmware::EfiX64 {
        opts.insert(DhcpOption::VendorExtensions(
            PXE_VENDOR_SKIP_DISCOVERY.to_vec(),
        ));
    }
    reply.set_opts(opts);

    Ok(Answer {
        reply,
        mac: format_mac(chaddr),
        arch,
        firmware,
        file,
    })
}

/// Where the reply to a request received from `sender` on `port` goes.
///
/// Port 67 (RFC 2131 4.1): through the relay (giaddr:67) if relayed, else unicast to ciaddr:68 when the
/// client has an address, else broadcast to 255.255.255.255:68 (the client has no address yet and the
/// proxy cannot put one in ARP for it). Port 4011: back to the sender's address and port (broadcast
/// to that port if the sender had no address).
pub fn reply_destination(request: &Message, port: Port, sender: SocketAddrV4) -> SocketAddrV4 {
    match port {
        Port::Pxe if sender.ip().is_unspecified() => {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, sender.port())
        }
        Port::Pxe => sender,
        Port::Dhcp if !request.giaddr().is_unspecified() => {
            SocketAddrV4::new(request.giaddr(), DHCP_PORT)
        }
        Port::Dhcp if !request.ciaddr().is_unspecified() => {
            SocketAddrV4::new(request.ciaddr(), CLIENT_PORT)
        }
        Port::Dhcp => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Option 60 starts with `PXEClient` (PXE 2.1: `PXEClient:Arch:xxxxx:UNDI:yyyzzz`).
fn is_pxe_client(msg: &Message) -> bool {
    matches!(
        msg.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"PXEClient")
    )
}

/// iPXE says who it is with user class `iPXE` (raw, as iPXE sends it, or RFC 3004 length-prefixed)
/// and with its own option 175.
fn is_ipxe(msg: &Message) -> bool {
    let user_class = match msg.opts().get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => v.as_slice(),
        _ => &[],
    };
    user_class == b"iPXE"
        || user_class == b"\x04iPXE"
        || msg.opts().get(OptionCode::Unknown(IPXE_ENCAP)).is_some()
}

/// A DHCP message as a PXE client would send it; used by tests and the integration test's client.
pub fn pxe_discover(xid: u32, mac: [u8; 6], arch: Option<u16>, pxe_class: bool) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_htype(HType::Eth)
        .set_flags(Flags::default().set_broadcast());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    if let Some(a) = arch {
        opts.insert(DhcpOption::ClientSystemArchitecture(v4::Architecture(a)));
        opts.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    }
    if pxe_class {
        let class = format!("PXEClient:Arch:{:05}:UNDI:002001", arch.unwrap_or(0));
        opts.insert(DhcpOption::ClassIdentifier(class.into_bytes()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn cfg() -> BootConfig {
        BootConfig {
            server_addr: Ipv4Addr::new(192, 0, 2, 1),
            tftp_addr: Ipv4Addr::new(192, 0, 2, 1),
            http_boot_url: "http://192.0.2.1:8080/boot.ipxe".into(),
            bios_file: "undionly.kpxe".into(),
            efi_file: "ipxe.efi".into(),
        }
    }

    /// Encodes and decodes again, so every test also goes through the wire format.
    fn wire(m: &Message) -> Message {
        parse(&m.to_vec().unwrap()).unwrap()
    }

    fn vendor(reply: &Message) -> Option<Vec<u8>> {
        match reply.opts().get(OptionCode::VendorExtensions) {
            Some(DhcpOption::VendorExtensions(v)) => Some(v.clone()),
            _ => None,
        }
    }

    #[test]
    fn bios_pxe_discover_gets_undionly_and_our_siaddr() {
        let d = wire(&pxe_discover(0xdead_beef, MAC, Some(0), true));
        let a = decide(&d, &cfg(), Port::Dhcp).unwrap();
        let r = parse(&encode(&a.reply)).unwrap();
        assert_eq!(a.firmware, Firmware::Bios);
        assert_eq!(a.mac, "52:54:00:12:34:56");
        assert_eq!(r.opcode(), Opcode::BootReply);
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(r.xid(), 0xdead_beef);
        assert_eq!(r.chaddr(), &MAC);
        assert_eq!(boot_file(&r).unwrap(), "undionly.kpxe");
        assert_eq!(r.siaddr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            r.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "a proxy never hands out addresses"
        );
        assert_eq!(r.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(r.flags().broadcast(), "the client's broadcast flag is kept");
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(
            r.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            r.opts().get(OptionCode::TFTPServerName),
            Some(&DhcpOption::TFTPServerName(b"192.0.2.1".to_vec()))
        );
        assert_eq!(vendor(&r), Some(vec![6, 1, 8, 255]));
        assert!(r.opts().get(OptionCode::ClientMachineIdentifier).is_none());
        assert_eq!(encode(&a.reply).len(), MIN_REPLY_LEN);
    }

    #[test]
    fn tftp_server_may_differ_from_the_server_identifier() {
        let mut c = cfg();
        c.tftp_addr = Ipv4Addr::new(192, 0, 2, 9);
        let r = answer(&wire(&pxe_discover(1, MAC, Some(0), true)), &c, Port::Dhcp).unwrap();
        assert_eq!(r.siaddr(), Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(r.sname().unwrap(), b"192.0.2.9");
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }

    #[test]
    fn uefi_x64_gets_ipxe_efi_without_vendor_options() {
        for arch in [7, 9] {
            let a = decide(
                &wire(&pxe_discover(2, MAC, Some(arch), true)),
                &cfg(),
                Port::Dhcp,
            )
            .unwrap();
            assert_eq!(a.firmware, Firmware::EfiX64);
            assert_eq!(boot_file(&a.reply).unwrap(), "ipxe.efi");
            assert_eq!(
                vendor(&a.reply),
                None,
                "arch {arch}: EDK2 then asks on 4011"
            );
        }
    }

    #[test]
    fn ipxe_gets_the_http_url_whatever_its_arch() {
        for arch in [0u16, 7, 10, 11] {
            let mut d = pxe_discover(3, MAC, Some(arch), true);
            d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            let a = decide(&wire(&d), &cfg(), Port::Dhcp).unwrap();
            assert_eq!(a.firmware, Firmware::Ipxe);
            assert_eq!(
                boot_file(&a.reply).unwrap(),
                "http://192.0.2.1:8080/boot.ipxe"
            );
            assert_eq!(vendor(&a.reply), Some(vec![6, 1, 8, 255]));
        }
    }

    #[test]
    fn ipxe_is_recognised_by_option_175_and_rfc3004_user_class() {
        let mut d = pxe_discover(4, MAC, Some(0), true);
        d.opts_mut()
            .insert(DhcpOption::Unknown(v4::UnknownOption::new(
                OptionCode::Unknown(175),
                vec![177, 5, 1, 0x80, 0x86, 0x10, 0x0e],
            )));
        assert_eq!(
            decide(&wire(&d), &cfg(), Port::Dhcp).unwrap().firmware,
            Firmware::Ipxe
        );
        let mut d = pxe_discover(4, MAC, Some(0), true);
        d.opts_mut()
            .insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
        assert_eq!(
            decide(&wire(&d), &cfg(), Port::Dhcp).unwrap().firmware,
            Firmware::Ipxe
        );
        // Another user class is not iPXE.
        let mut d = pxe_discover(4, MAC, Some(0), true);
        d.opts_mut()
            .insert(DhcpOption::UserClass(b"pixiecore".to_vec()));
        assert_eq!(
            decide(&wire(&d), &cfg(), Port::Dhcp).unwrap().firmware,
            Firmware::Bios
        );
    }

    #[test]
    fn plain_dhcp_discover_gets_nothing() {
        let d = wire(&pxe_discover(5, MAC, None, false));
        assert_eq!(decide(&d, &cfg(), Port::Dhcp), Err(Ignored::NotPxeClient));
        assert_eq!(answer(&d, &cfg(), Port::Dhcp), None);
        // Option 93 alone (no PXEClient class) is not enough either.
        let d = wire(&pxe_discover(5, MAC, Some(0), false));
        assert_eq!(decide(&d, &cfg(), Port::Dhcp), Err(Ignored::NotPxeClient));
        // Another vendor class.
        let mut d = pxe_discover(5, MAC, Some(0), false);
        d.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"MSFT 5.0".to_vec()));
        assert_eq!(
            decide(&wire(&d), &cfg(), Port::Dhcp),
            Err(Ignored::NotPxeClient)
        );
    }

    #[test]
    fn pxe_client_without_arch_is_ignored() {
        let mut d = pxe_discover(6, MAC, None, false);
        d.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        assert_eq!(
            decide(&wire(&d), &cfg(), Port::Dhcp),
            Err(Ignored::NoArchitecture)
        );
    }

    #[test]
    fn arm_and_ia32_are_refused_with_a_warning_naming_the_arch() {
        for arch in [6u16, 10, 11, 0x29] {
            let e = decide(
                &wire(&pxe_discover(7, MAC, Some(arch), true)),
                &cfg(),
                Port::Dhcp,
            )
            .unwrap_err();
            assert_eq!(e, Ignored::UnsupportedArch(arch));
            assert!(e.is_warning());
            assert!(
                e.to_string().contains(&format!("architecture {arch} (")),
                "{e}"
            );
        }
        let e = Ignored::UnsupportedArch(11);
        assert!(e.to_string().contains("EFI ARM64"), "{e}");
        // A hand-made config with a URL too long for the file field: refused, not a panic.
        let mut c = cfg();
        c.bios_file = "x".repeat(128);
        assert_eq!(
            decide(&wire(&pxe_discover(7, MAC, Some(0), true)), &c, Port::Dhcp),
            Err(Ignored::FileTooLong(128))
        );
    }

    #[test]
    fn request_on_4011_gets_an_ack_sent_back_to_the_sender() {
        let mut r = pxe_discover(8, MAC, Some(7), true);
        r.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        r.set_ciaddr(Ipv4Addr::new(192, 0, 2, 123));
        let guid: Vec<u8> = std::iter::once(0).chain(1..=16).collect();
        r.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
        r.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)));
        let r = wire(&r);
        let a = decide(&r, &cfg(), Port::Pxe).unwrap();
        assert_eq!(a.reply.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(boot_file(&a.reply).unwrap(), "ipxe.efi");
        assert_eq!(a.reply.ciaddr(), Ipv4Addr::new(192, 0, 2, 123));
        assert_eq!(a.reply.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.reply.siaddr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            a.reply.opts().get(OptionCode::ClientMachineIdentifier),
            Some(&DhcpOption::ClientMachineIdentifier(guid)),
            "option 97 echoed"
        );
        let sender = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 123), 68);
        assert_eq!(reply_destination(&r, Port::Pxe, sender), sender);
        // A DISCOVER on 4011 or a REQUEST on 67 is not ours to answer.
        assert!(matches!(
            decide(&r, &cfg(), Port::Dhcp),
            Err(Ignored::MessageType { .. })
        ));
        let d = wire(&pxe_discover(8, MAC, Some(7), true));
        assert!(matches!(
            decide(&d, &cfg(), Port::Pxe),
            Err(Ignored::MessageType { .. })
        ));
    }

    #[test]
    fn request_on_4011_for_another_server_is_ignored() {
        let mut r = pxe_discover(9, MAC, Some(0), true);
        r.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        r.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 77)));
        assert_eq!(
            decide(&wire(&r), &cfg(), Port::Pxe),
            Err(Ignored::OtherServer(Ipv4Addr::new(192, 0, 2, 77)))
        );
    }

    #[test]
    fn other_message_types_get_nothing() {
        for t in [
            MessageType::Inform,
            MessageType::Release,
            MessageType::Decline,
            MessageType::Request,
            MessageType::Offer,
            MessageType::Ack,
            MessageType::Nak,
        ] {
            let mut m = pxe_discover(10, MAC, Some(0), true);
            m.opts_mut().insert(DhcpOption::MessageType(t));
            assert!(
                answer(&wire(&m), &cfg(), Port::Dhcp).is_none(),
                "{t:?} on 67"
            );
            if t != MessageType::Request {
                assert!(
                    answer(&wire(&m), &cfg(), Port::Pxe).is_none(),
                    "{t:?} on 4011"
                );
            }
        }
    }

    #[test]
    fn replies_bootp_and_missing_hardware_address_are_ignored() {
        let mut m = pxe_discover(11, MAC, Some(0), true);
        m.set_opcode(Opcode::BootReply);
        assert_eq!(
            decide(&wire(&m), &cfg(), Port::Dhcp),
            Err(Ignored::NotARequest)
        );
        let mut m = pxe_discover(11, MAC, Some(0), true);
        m.opts_mut().remove(OptionCode::MessageType);
        assert_eq!(decide(&wire(&m), &cfg(), Port::Dhcp), Err(Ignored::NotDhcp));
        // Right options but no magic cookie: not DHCP.
        let mut bytes = pxe_discover(11, MAC, Some(0), true).to_vec().unwrap();
        bytes[236..240].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse(&bytes),
            Err(PacketError::NoMagicCookie { len: bytes.len() })
        );
        let mut bytes = pxe_discover(11, MAC, Some(0), true).to_vec().unwrap();
        bytes[2] = 0; // hlen
        assert_eq!(
            decide(&parse(&bytes).unwrap(), &cfg(), Port::Dhcp),
            Err(Ignored::NoHardwareAddress)
        );
        bytes[2] = 200;
        let e = parse(&bytes).unwrap_err();
        assert!(e.to_string().contains("hardware address length 200"), "{e}");
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[1, 1, 6]).is_err());
        let e = parse(&[0u8; 100]).unwrap_err();
        assert!(
            e.to_string().contains("malformed DHCP packet (100 bytes)"),
            "{e}"
        );
        let good = pxe_discover(12, MAC, Some(0), true).to_vec().unwrap();
        // Option 94 (client network interface) with 2 bytes instead of 3: dhcproto would assert.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 94, 2, 1, 2, 255]);
        let e = parse(&b).unwrap_err();
        assert!(
            e.to_string().contains("option 94 has the wrong length 2"),
            "{e}"
        );
        // Found by fuzzing (fuzz/fuzz_targets/dhcp_packet.rs): adjacent options of one code are
        // joined (RFC 3396) before dhcproto decodes them, so two 4-byte options 152 are one of 8
        // bytes, on which dhcproto asserts; likewise two 3-byte options 94.
        for (code, len) in [(152u8, 4u8), (155, 4), (94, 3)] {
            let mut b = good[..240].to_vec();
            b.extend_from_slice(&[53, 1, 1]);
            for _ in 0..2 {
                b.extend_from_slice(&[code, len]);
                b.extend(std::iter::repeat_n(1, usize::from(len)));
            }
            b.push(255);
            let e = parse(&b).unwrap_err();
            let want = format!(
                "option {code} has the wrong length {} (joined from 2 adjacent options {code})",
                2 * len
            );
            assert!(e.to_string().contains(&want), "{e}");
            // Apart (PAD between them), each is an option of its own: the last one wins.
            let at = 243 + 2 + usize::from(len);
            b.insert(at, 0);
            let m = parse(&b).unwrap();
            assert!(m.opts().get(OptionCode::from(code)).is_some());
        }
        // Options 81 of 1 byte each join to 3 bytes: fine; a single one is refused.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 81, 1, 0, 81, 1, 0, 81, 1, 0, 255]);
        assert!(parse(&b).is_ok());
        b.truncate(243 + 3);
        b.push(255);
        let e = parse(&b).unwrap_err();
        assert!(
            e.to_string().contains("option 81 has the wrong length 1"),
            "{e}"
        );
        // An option running past the end of the packet.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 60, 40, b'P']);
        let e = parse(&b).unwrap_err();
        assert!(
            e.to_string()
                .contains("option 60 claims 40 bytes, 1 remain"),
            "{e}"
        );
        // Every truncation, and every option length byte set to every value, decodes or errors but
        // never panics; whatever decodes is then decided without panicking.
        for n in 0..good.len() {
            if let Ok(m) = parse(&good[..n]) {
                let _ = decide(&m, &cfg(), Port::Dhcp);
            }
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(m) = parse(&b) {
                    let _ = decide(&m, &cfg(), Port::Dhcp);
                    let _ = decide(&m, &cfg(), Port::Pxe);
                }
            }
        }
        // A pseudo-random corpus (xorshift) past the fixed header.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut b = good[..240].to_vec();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            if let Ok(m) = parse(&b) {
                let _ = decide(&m, &cfg(), Port::Dhcp);
            }
        }
    }

    #[test]
    fn offers_are_broadcast_unless_the_client_has_an_address_or_a_relay() {
        let sender = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        let mut d = pxe_discover(13, MAC, Some(0), true);
        assert_eq!(
            reply_destination(&d, Port::Dhcp, sender),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        d.set_ciaddr(Ipv4Addr::new(192, 0, 2, 50));
        assert_eq!(
            reply_destination(&d, Port::Dhcp, sender),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 50), 68)
        );
        d.set_giaddr(Ipv4Addr::new(192, 0, 2, 254));
        assert_eq!(
            reply_destination(&d, Port::Dhcp, sender),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 254), 67)
        );
        assert_eq!(
            reply_destination(&d, Port::Pxe, sender),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        let a = decide(&d, &cfg(), Port::Dhcp).unwrap();
        assert_eq!(a.reply.giaddr(), Ipv4Addr::new(192, 0, 2, 254));
        assert_eq!(a.reply.ciaddr(), Ipv4Addr::UNSPECIFIED);
    }
}
