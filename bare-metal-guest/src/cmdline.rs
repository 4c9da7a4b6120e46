//! The guest's kernel command line.
//!
//! Under QEMU it arrives through the PVH start info (`-append "…"`); it is a
//! list of `key=value` words separated by spaces:
//!
//! ```text
//! ip=10.77.0.2/24 gw=10.77.0.1 mac=02:00:0a:4d:00:02 mode=event mtu=16384 stats=5 nic=ivnet
//! ip=10.77.0.3/24 mtu=1500 ping=10.77.0.2,count=100,interval=200 udpecho=10.77.0.2
//! ```
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `ip` | own IPv4 address and prefix length (required) | — |
//! | `gw` | default gateway, inside the `ip` subnet | none |
//! | `mac` | own Ethernet address, unicast | `02:00:` followed by the four `ip` octets |
//! | `mode` | `event` (doorbell interrupts, `hlt` when idle) or `poll` (never sleeps, never asks for doorbells) | `event` |
//! | `mtu` | IP MTU in bytes (`68..=16384`); frames are `mtu + 14` bytes | the section's default (`min(16384, data area / 16)`, the reference rule) |
//! | `stats` | seconds between counter lines on the serial console (`0` = off) | 5 |
//! | `nic` | `ivnet` (the ivshmem-net link) or `virtio` (a virtio-net PCI device, MTU 1500, for comparisons; `mtu` does not apply) | `ivnet` |
//! | `selftest` | run a platform self-test instead of the network services and exit (see [`SelfTest`]) | none |
//! | `ping` | `A.B.C.D[,count=N][,interval=MS]`: send ICMP echo requests to that address once the link is up and check every reply (see [`EchoClientConfig`]; `count` `1..`, `interval` `1..=60000` ms) | none (`count`: no limit, `interval`: 1000) |
//! | `udpecho` | the same for UDP datagrams to that address's echo port 7 | none |
//!
//! Every malformed or unknown word is a typed [`CmdlineError`]: a typo must
//! not silently become a default.

use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

/// Largest IP MTU the guest supports (its frame buffers are sized for it).
pub const MAX_MTU: u16 = 16384;
/// Smallest IP MTU (the IPv4 minimum).
pub const MIN_MTU: u16 = 68;
/// Default interval of the counters line on the serial console, in seconds.
pub const DEFAULT_STATS_INTERVAL_S: u32 = 5;
/// Default interval of the echo clients (`ping=`, `udpecho=`), in
/// milliseconds.
pub const DEFAULT_CLIENT_INTERVAL_MS: u32 = 1000;
/// Longest interval of the echo clients, in milliseconds.
pub const MAX_CLIENT_INTERVAL_MS: u32 = 60_000;

/// How the NIC driver learns about new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Doorbell interrupts with event-index suppression; `hlt` when idle and
    /// NAPI-style polling while busy.
    Event,
    /// Busy polling: never sleeps and asks the peer not to ring.
    Poll,
}

/// Which NIC the services run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicKind {
    /// The ivshmem-net link (`ivshmem-doorbell` or Jailhouse ivshmem 2.0).
    Ivnet,
    /// A virtio-net PCI device (the comparison baseline).
    Virtio,
}

/// A platform self-test, run instead of the network services. Each one ends
/// the guest through `isa-debug-exit` with a documented exit code, so that
/// tests can check behaviour that is otherwise invisible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTest {
    /// Bring up the platform (and the ivshmem device when present), then
    /// exit with `Success`.
    Boot,
    /// Panic on purpose: checks the panic handler (exit `Panic`).
    Panic,
    /// Write into the peer's output section, which is mapped read-only: must
    /// end in a page fault (exit `PageFault`).
    WritePeerSection,
    /// Write into the state table, which is mapped read-only: must end in a
    /// page fault (exit `PageFault`).
    WriteStateTable,
    /// Ring the peer on vector 1 and wait until the peer rings back on
    /// vector 1, through MSI-X and the local APIC; exit `Success`.
    Doorbell,
    /// Recurse until the main stack overflows into its unmapped guard page:
    /// the page fault must be reported from the exception stack (exit
    /// `PageFault`), not turn into a triple fault.
    StackOverflow,
}

impl SelfTest {
    /// The command-line spelling.
    pub const fn name(self) -> &'static str {
        match self {
            SelfTest::Boot => "boot",
            SelfTest::Panic => "panic",
            SelfTest::WritePeerSection => "write-peer-section",
            SelfTest::WriteStateTable => "write-state-table",
            SelfTest::Doorbell => "doorbell",
            SelfTest::StackOverflow => "stack-overflow",
        }
    }

    /// Whether the test cannot run without the ivshmem device (`boot` uses
    /// it when present).
    pub const fn needs_device(self) -> bool {
        !matches!(
            self,
            SelfTest::Boot | SelfTest::Panic | SelfTest::StackOverflow
        )
    }

    const ALL: [SelfTest; 6] = [
        SelfTest::Boot,
        SelfTest::Panic,
        SelfTest::WritePeerSection,
        SelfTest::WriteStateTable,
        SelfTest::Doorbell,
        SelfTest::StackOverflow,
    ];
}

/// An echo client (`ping=`: ICMP echo requests; `udpecho=`: datagrams to
/// UDP port 7) towards another host, e.g. the guest at the other end of
/// the link; every reply checked byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoClientConfig {
    /// Where the requests go: a unicast address other than the guest's own.
    pub target: Ipv4Addr,
    /// How many requests in all; `None`: no limit.
    pub count: Option<u32>,
    /// Milliseconds between requests while no replies come (`1..=60000`);
    /// a reply sends the next request at once (bounded per interval).
    pub interval_ms: u32,
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The interface address.
    pub address: Ipv4Addr,
    /// The prefix length, `1..=32`.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Whether `other` is inside this subnet.
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        (u32::from(self.address) & mask) == (u32::from(other) & mask)
    }

    /// The subnet's directed broadcast address, if it has one (prefixes
    /// up to /30; /31 and /32 have none).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix_len <= 30)
            .then(|| Ipv4Addr::from(u32::from(self.address) | (u32::MAX >> self.prefix_len)))
    }
}

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// Own address and subnet.
    pub ip: Ipv4Cidr,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Own Ethernet address.
    pub mac: MacAddress,
    /// Event or poll mode.
    pub mode: Mode,
    /// IP MTU; `None`: the section's default (`Geometry::default_mtu`),
    /// known only once the device is up.
    pub mtu: Option<u16>,
    /// Seconds between counter lines (0 = never).
    pub stats_interval_s: u32,
    /// Self-test to run instead of the services.
    pub selftest: Option<SelfTest>,
    /// Which NIC the services run on.
    pub nic: NicKind,
    /// The ICMP echo client, if asked for.
    pub ping: Option<EchoClientConfig>,
    /// The UDP echo client, if asked for.
    pub udp_echo: Option<EchoClientConfig>,
}

/// Why a command line was rejected. Borrowed strings point into the command
/// line, so the message can quote what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A word that is not `key=value`.
    NotKeyValue(&'a str),
    /// A key the guest does not know.
    UnknownKey(&'a str),
    /// The same key twice.
    DuplicateKey(&'a str),
    /// `ip=` is required.
    MissingIp,
    /// `ip=` is not `a.b.c.d/len`.
    BadIp(&'a str),
    /// The prefix length is not `1..=32`.
    BadPrefixLen(&'a str),
    /// `gw=` is not an IPv4 address.
    BadGateway(&'a str),
    /// The gateway is not inside the `ip=` subnet.
    GatewayOutsideSubnet(Ipv4Addr),
    /// `mac=` is not six hex bytes separated by `:`.
    BadMac(&'a str),
    /// `mac=` is a multicast (or broadcast) address.
    MulticastMac(MacAddress),
    /// `mode=` is neither `event` nor `poll`.
    BadMode(&'a str),
    /// `mtu=` is not a number in range.
    BadMtu(&'a str),
    /// `stats=` is not a number of seconds.
    BadStatsInterval(&'a str),
    /// `selftest=` names no self-test.
    BadSelfTest(&'a str),
    /// `nic=` is neither `ivnet` nor `virtio`.
    BadNic(&'a str),
    /// A piece of an echo client's value (`ping=`, `udpecho=`: the key
    /// first) that is neither the address (first) nor `count=N` or
    /// `interval=MS` once each.
    BadClient(&'a str, &'a str),
    /// An echo client's `count=` is not a number `1..`.
    BadClientCount(&'a str, &'a str),
    /// An echo client's `interval=` is not a number of milliseconds
    /// `1..=60000`.
    BadClientInterval(&'a str, &'a str),
    /// An echo client's address is not a unicast address other than the
    /// guest's own and its subnet's broadcast address.
    ClientTarget(&'a str, Ipv4Addr),
    /// The command line is not valid UTF-8 (reported by the loader glue).
    NotUtf8,
    /// The command line is longer than the guest's buffer.
    TooLong(usize),
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::NotKeyValue(w) => write!(f, "`{w}` is not key=value"),
            CmdlineError::UnknownKey(k) => write!(
                f,
                "unknown key `{k}` (known: ip gw mac mode mtu stats selftest nic ping udpecho)"
            ),
            CmdlineError::DuplicateKey(k) => write!(f, "key `{k}` given twice"),
            CmdlineError::MissingIp => write!(f, "missing ip=a.b.c.d/len"),
            CmdlineError::BadIp(v) => write!(f, "ip=`{v}` is not a.b.c.d/len"),
            CmdlineError::BadPrefixLen(v) => write!(f, "prefix length `{v}` is not 1..=32"),
            CmdlineError::BadGateway(v) => write!(f, "gw=`{v}` is not an IPv4 address"),
            CmdlineError::GatewayOutsideSubnet(g) => {
                write!(f, "gateway {g} is outside the ip= subnet")
            }
            CmdlineError::BadMac(v) => write!(f, "mac=`{v}` is not xx:xx:xx:xx:xx:xx"),
            CmdlineError::MulticastMac(m) => write!(f, "mac={m} is a multicast address"),
            CmdlineError::BadMode(v) => write!(f, "mode=`{v}` is neither `event` nor `poll`"),
            CmdlineError::BadNic(v) => write!(f, "nic=`{v}` is neither `ivnet` nor `virtio`"),
            CmdlineError::BadClient(k, v) => write!(
                f,
                "{k}=: `{v}` is not where a.b.c.d[,count=N][,interval=MS] has it"
            ),
            CmdlineError::BadClientCount(k, v) => {
                write!(f, "{k}=: count=`{v}` is not a number of requests (1..)")
            }
            CmdlineError::BadClientInterval(k, v) => write!(
                f,
                "{k}=: interval=`{v}` is not a number of milliseconds in 1..={MAX_CLIENT_INTERVAL_MS}"
            ),
            CmdlineError::ClientTarget(k, a) => write!(
                f,
                "{k}={a}: not a unicast address other than the guest's own"
            ),
            CmdlineError::BadMtu(v) => {
                write!(f, "mtu=`{v}` is not a number in {MIN_MTU}..={MAX_MTU}")
            }
            CmdlineError::BadStatsInterval(v) => {
                write!(f, "stats=`{v}` is not a number of seconds")
            }
            CmdlineError::BadSelfTest(v) => {
                write!(f, "selftest=`{v}` is unknown (known:")?;
                for t in SelfTest::ALL {
                    write!(f, " {}", t.name())?;
                }
                write!(f, ")")
            }
            CmdlineError::NotUtf8 => write!(f, "the command line is not UTF-8"),
            CmdlineError::TooLong(n) => write!(f, "the command line is too long ({n} bytes)"),
        }
    }
}

fn parse_cidr(v: &str) -> Result<Ipv4Cidr, CmdlineError<'_>> {
    let (addr, len) = v.split_once('/').ok_or(CmdlineError::BadIp(v))?;
    let address = Ipv4Addr::from_str(addr).map_err(|_| CmdlineError::BadIp(v))?;
    let prefix_len = match u8::from_str(len) {
        Ok(n @ 1..=32) => n,
        _ => return Err(CmdlineError::BadPrefixLen(len)),
    };
    Ok(Ipv4Cidr {
        address,
        prefix_len,
    })
}

fn parse_mac(v: &str) -> Result<MacAddress, CmdlineError<'_>> {
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for byte in &mut mac {
        let p = parts.next().ok_or(CmdlineError::BadMac(v))?;
        if p.len() != 2 {
            return Err(CmdlineError::BadMac(v));
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| CmdlineError::BadMac(v))?;
    }
    if parts.next().is_some() {
        return Err(CmdlineError::BadMac(v));
    }
    let mac = MacAddress(mac);
    if mac.0[0] & 1 != 0 {
        return Err(CmdlineError::MulticastMac(mac));
    }
    Ok(mac)
}

/// An echo client's value, `A.B.C.D[,count=N][,interval=MS]`, for `key`
/// (the target is checked against the own address once the whole line is
/// read).
fn parse_client<'a>(key: &'a str, v: &'a str) -> Result<EchoClientConfig, CmdlineError<'a>> {
    let mut parts = v.split(',');
    // `split` yields at least one piece.
    let addr = parts.next().unwrap_or(v);
    let target = Ipv4Addr::from_str(addr).map_err(|_| CmdlineError::BadClient(key, addr))?;
    let (mut count, mut interval_ms) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("count", n)) if count.is_none() => {
                count = Some(match u32::from_str(n) {
                    Ok(n @ 1..) => n,
                    _ => return Err(CmdlineError::BadClientCount(key, n)),
                });
            }
            Some(("interval", ms)) if interval_ms.is_none() => {
                interval_ms = Some(match u32::from_str(ms) {
                    Ok(ms @ 1..=MAX_CLIENT_INTERVAL_MS) => ms,
                    _ => return Err(CmdlineError::BadClientInterval(key, ms)),
                });
            }
            _ => return Err(CmdlineError::BadClient(key, part)),
        }
    }
    Ok(EchoClientConfig {
        target,
        count,
        interval_ms: interval_ms.unwrap_or(DEFAULT_CLIENT_INTERVAL_MS),
    })
}

/// Parses a command line (see the [module docs](self) for the keys).
pub fn parse(line: &str) -> Result<GuestConfig, CmdlineError<'_>> {
    let mut ip = None;
    let mut gateway = None;
    let mut mac = None;
    let mut mode = None;
    let mut mtu = None;
    let mut stats = None;
    let mut selftest = None;
    let mut nic = None;
    let mut ping = None;
    let mut udp_echo = None;

    fn set<'a, T>(slot: &mut Option<T>, key: &'a str, v: T) -> Result<(), CmdlineError<'a>> {
        if slot.replace(v).is_some() {
            return Err(CmdlineError::DuplicateKey(key));
        }
        Ok(())
    }

    for word in line.split_ascii_whitespace() {
        let (key, value) = word
            .split_once('=')
            .ok_or(CmdlineError::NotKeyValue(word))?;
        match key {
            "ip" => set(&mut ip, key, parse_cidr(value)?)?,
            "gw" => set(
                &mut gateway,
                key,
                Ipv4Addr::from_str(value).map_err(|_| CmdlineError::BadGateway(value))?,
            )?,
            "mac" => set(&mut mac, key, parse_mac(value)?)?,
            "mode" => {
                let m = match value {
                    "event" => Mode::Event,
                    "poll" => Mode::Poll,
                    _ => return Err(CmdlineError::BadMode(value)),
                };
                set(&mut mode, key, m)?
            }
            "mtu" => {
                let m = match u16::from_str(value) {
                    Ok(m @ MIN_MTU..=MAX_MTU) => m,
                    _ => return Err(CmdlineError::BadMtu(value)),
                };
                set(&mut mtu, key, m)?
            }
            "stats" => set(
                &mut stats,
                key,
                u32::from_str(value).map_err(|_| CmdlineError::BadStatsInterval(value))?,
            )?,
            "selftest" => {
                let t = SelfTest::ALL
                    .into_iter()
                    .find(|t| t.name() == value)
                    .ok_or(CmdlineError::BadSelfTest(value))?;
                set(&mut selftest, key, t)?
            }
            "nic" => {
                let n = match value {
                    "ivnet" => NicKind::Ivnet,
                    "virtio" => NicKind::Virtio,
                    _ => return Err(CmdlineError::BadNic(value)),
                };
                set(&mut nic, key, n)?
            }
            "ping" => set(&mut ping, key, parse_client(key, value)?)?,
            "udpecho" => set(&mut udp_echo, key, parse_client(key, value)?)?,
            _ => return Err(CmdlineError::UnknownKey(key)),
        }
    }

    let ip: Ipv4Cidr = ip.ok_or(CmdlineError::MissingIp)?;
    if let Some(g) = gateway
        && !ip.contains(g)
    {
        return Err(CmdlineError::GatewayOutsideSubnet(g));
    }
    for (key, client) in [("ping", ping), ("udpecho", udp_echo)] {
        let Some(t) = client.map(|c| c.target) else {
            continue;
        };
        if t == ip.address
            || t.is_unspecified()
            || t.is_broadcast()
            || t.is_multicast()
            || ip.broadcast() == Some(t)
        {
            return Err(CmdlineError::ClientTarget(key, t));
        }
    }
    let o = ip.address.octets();
    Ok(GuestConfig {
        ip,
        gateway,
        mac: mac.unwrap_or(MacAddress([0x02, 0x00, o[0], o[1], o[2], o[3]])),
        mode: mode.unwrap_or(Mode::Event),
        mtu,
        stats_interval_s: stats.unwrap_or(DEFAULT_STATS_INTERVAL_S),
        selftest,
        nic: nic.unwrap_or(NicKind::Ivnet),
        ping,
        udp_echo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let c = parse("ip=10.77.0.2/24 gw=10.77.0.1 mac=02:aa:bb:cc:dd:ee mode=poll mtu=1500 stats=0 selftest=boot nic=virtio ping=10.77.0.3,interval=250,count=7 udpecho=10.77.0.4")
            .unwrap();
        assert_eq!(c.ip.address, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(c.ip.prefix_len, 24);
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(c.mac, MacAddress([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!(c.mode, Mode::Poll);
        assert_eq!(c.mtu, Some(1500));
        assert_eq!(c.stats_interval_s, 0);
        assert_eq!(c.selftest, Some(SelfTest::Boot));
        assert_eq!(c.nic, NicKind::Virtio);
        assert_eq!(
            c.ping,
            Some(EchoClientConfig {
                target: Ipv4Addr::new(10, 77, 0, 3),
                count: Some(7),
                interval_ms: 250
            })
        );
        assert_eq!(
            c.udp_echo,
            Some(EchoClientConfig {
                target: Ipv4Addr::new(10, 77, 0, 4),
                count: None,
                interval_ms: DEFAULT_CLIENT_INTERVAL_MS
            })
        );
    }

    #[test]
    fn ping_defaults() {
        let c = parse("ip=10.77.0.2/24 ping=10.77.1.9").unwrap();
        assert_eq!(
            c.ping,
            Some(EchoClientConfig {
                target: Ipv4Addr::new(10, 77, 1, 9),
                count: None,
                interval_ms: DEFAULT_CLIENT_INTERVAL_MS
            })
        );
        // A /31 has no broadcast address: the other end is a host.
        let c = parse("ip=10.77.0.2/31 ping=10.77.0.3,interval=60000").unwrap();
        assert_eq!(c.ping.unwrap().interval_ms, MAX_CLIENT_INTERVAL_MS);
    }

    #[test]
    fn defaults() {
        let c = parse("  ip=10.77.0.2/24  ").unwrap();
        assert_eq!(c.gateway, None);
        assert_eq!(c.mac, MacAddress([2, 0, 10, 77, 0, 2]));
        assert_eq!(c.mode, Mode::Event);
        assert_eq!(c.mtu, None);
        assert_eq!(c.nic, NicKind::Ivnet);
        assert_eq!(c.stats_interval_s, DEFAULT_STATS_INTERVAL_S);
        assert_eq!(c.selftest, None);
    }

    #[test]
    fn errors() {
        use CmdlineError::*;
        let cases: &[(&str, CmdlineError<'_>)] = &[
            ("", MissingIp),
            ("gw=10.0.0.1", MissingIp),
            ("ip", NotKeyValue("ip")),
            ("ip=10.77.0.2", BadIp("10.77.0.2")),
            ("ip=10.77.0.256/24", BadIp("10.77.0.256/24")),
            ("ip=10.77.0.2/33", BadPrefixLen("33")),
            ("ip=10.77.0.2/0", BadPrefixLen("0")),
            ("ip=10.77.0.2/x", BadPrefixLen("x")),
            ("ip=10.77.0.2/24 ip=10.77.0.3/24", DuplicateKey("ip")),
            ("ip=10.77.0.2/24 gw=10.77.1", BadGateway("10.77.1")),
            (
                "ip=10.77.0.2/24 gw=10.78.0.1",
                GatewayOutsideSubnet(Ipv4Addr::new(10, 78, 0, 1)),
            ),
            (
                "ip=10.77.0.2/24 mac=02:00:00:00:00",
                BadMac("02:00:00:00:00"),
            ),
            (
                "ip=10.77.0.2/24 mac=02:00:00:00:00:00:00",
                BadMac("02:00:00:00:00:00:00"),
            ),
            (
                "ip=10.77.0.2/24 mac=02:00:00:00:00:0g",
                BadMac("02:00:00:00:00:0g"),
            ),
            (
                "ip=10.77.0.2/24 mac=2:00:00:00:00:00",
                BadMac("2:00:00:00:00:00"),
            ),
            (
                "ip=10.77.0.2/24 mac=ff:ff:ff:ff:ff:ff",
                MulticastMac(MacAddress([0xff; 6])),
            ),
            ("ip=10.77.0.2/24 mode=fast", BadMode("fast")),
            ("ip=10.77.0.2/24 nic=e1000", BadNic("e1000")),
            ("ip=10.77.0.2/24 nic=virtio nic=virtio", DuplicateKey("nic")),
            ("ip=10.77.0.2/24 mtu=67", BadMtu("67")),
            ("ip=10.77.0.2/24 mtu=16385", BadMtu("16385")),
            ("ip=10.77.0.2/24 stats=-1", BadStatsInterval("-1")),
            ("ip=10.77.0.2/24 selftest=nope", BadSelfTest("nope")),
            ("ip=10.77.0.2/24 console=ttyS0", UnknownKey("console")),
            ("ip=10.77.0.2/24 ping=", BadClient("ping", "")),
            (
                "ip=10.77.0.2/24 udpecho=10.77.0.3,count=2,interval=x",
                BadClientInterval("udpecho", "x"),
            ),
            (
                "ip=10.77.0.2/24 udpecho=10.77.0.3 udpecho=10.77.0.3",
                DuplicateKey("udpecho"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3 udpecho=10.77.0.2",
                ClientTarget("udpecho", Ipv4Addr::new(10, 77, 0, 2)),
            ),
            ("ip=10.77.0.2/24 ping=10.77.0", BadClient("ping", "10.77.0")),
            ("ip=10.77.0.2/24 ping=10.77.0.3,", BadClient("ping", "")),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,count",
                BadClient("ping", "count"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,size=9",
                BadClient("ping", "size=9"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,count=1,count=2",
                BadClient("ping", "count=2"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,count=0",
                BadClientCount("ping", "0"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,count=-1",
                BadClientCount("ping", "-1"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,count=4294967296",
                BadClientCount("ping", "4294967296"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,interval=0",
                BadClientInterval("ping", "0"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3,interval=60001",
                BadClientInterval("ping", "60001"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.3 ping=10.77.0.4",
                DuplicateKey("ping"),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.2",
                ClientTarget("ping", Ipv4Addr::new(10, 77, 0, 2)),
            ),
            (
                "ip=10.77.0.2/24 ping=10.77.0.255",
                ClientTarget("ping", Ipv4Addr::new(10, 77, 0, 255)),
            ),
            (
                "ip=10.77.0.2/24 ping=255.255.255.255",
                ClientTarget("ping", Ipv4Addr::BROADCAST),
            ),
            (
                "ip=10.77.0.2/24 ping=224.0.0.1",
                ClientTarget("ping", Ipv4Addr::new(224, 0, 0, 1)),
            ),
            (
                "ip=10.77.0.2/24 ping=0.0.0.0",
                ClientTarget("ping", Ipv4Addr::UNSPECIFIED),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Err(*want), "{line}");
            // Every error renders to a message that names the problem.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn subnet_contains() {
        let c = parse_cidr("10.77.0.2/32").unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 77, 0, 2)));
        assert!(!c.contains(Ipv4Addr::new(10, 77, 0, 1)));
        let c = parse_cidr("10.77.0.2/1").unwrap();
        assert!(c.contains(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(128, 0, 0, 1)));
    }
}
