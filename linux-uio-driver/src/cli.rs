//! Command line of `ivnet-bridge`.
//!
//! Parsing and the checks that need nothing but the arguments live here; the
//! checks that need the link (MTU against the ring geometry, peer ID for the
//! default MAC) happen once the backend is open.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

use ivnet_ring::geometry::{MAX_MTU, MIN_MTU};

/// Bridge one ivshmem-net link to a TAP interface.
///
/// ivnet-bridge is one peer of an ivshmem-net link (the "virtual peer-to-peer
/// Ethernet" protocol of Jailhouse, PCI protocol 0x0001). Frames the other
/// peer sends come out of the TAP interface; frames the kernel routes into
/// the TAP interface go to the other peer.
///
/// The link is reached through one of three backends:
///
///   --uio /dev/uioN   a UIO device: Jailhouse ivshmem 2.0 (110a:4106) bound to
///                     uio_ivshmem, or QEMU ivshmem-doorbell (1af4:1110) bound to
///                     a generic MSI-X UIO driver such as igb_uio;
///
///   --vfio BDF        the same devices bound to the stock vfio-pci driver,
///                     e.g. 0000:00:05.0 (needs an IOMMU or VFIO no-IOMMU mode);
///
///   --server PATH     a host peer of ivnet's ivshmem-server (UNIX socket).
///
/// The TAP interface is created (and removed again on exit) or, if it
/// already exists, attached to (and left in place). Its carrier is on only
/// while both peers are in the RUN state. Both ends of a link must use the
/// same MTU.
///
/// Signals: SIGUSR1 prints the counters, SIGINT/SIGTERM leave the link
/// (state RESET) and exit 0. Logs go to stderr; RUST_LOG sets the filter
/// (default "info"). Exit status: 0 after SIGINT/SIGTERM, 1 when the device,
/// server, link or TAP cannot be used (the message says why), 2 for a bad
/// command line.
#[derive(Debug, Parser)]
#[command(name = "ivnet-bridge", version, verbatim_doc_comment)]
#[command(group(ArgGroup::new("backend").required(true).args(["uio", "server", "vfio"])))]
pub struct Args {
    /// PCI address of the ivshmem device bound to vfio-pci, e.g. 0000:00:05.0.
    #[arg(long, value_name = "BDF")]
    pub vfio: Option<String>,

    /// UIO device of the ivshmem PCI device, e.g. /dev/uio0.
    #[arg(long, value_name = "DEVICE")]
    pub uio: Option<PathBuf>,

    /// UNIX socket of ivnet's ivshmem-server; the bridge joins as a host peer.
    #[arg(long, value_name = "PATH")]
    pub server: Option<PathBuf>,

    /// How long to wait for the server to accept and hand out the shared
    /// memory, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub connect_timeout: Duration,

    /// Name of the TAP interface (created if it does not exist).
    #[arg(long, value_name = "NAME", value_parser = parse_ifname)]
    pub tap: String,

    /// Network namespace (a name under /run/netns) to create or find the TAP
    /// interface in. The bridge enters it before touching the TAP.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,

    /// Link MTU in bytes, 68..=65535 and at most a quarter of the ring's data
    /// area. Both peers must use the same value. Default: what the reference
    /// driver picks for the link's output-section size, min(16384, data
    /// area / 16) (16384 from 0x7f000-byte sections on). Also read from
    /// IVNET_MTU (the systemd unit's setting); the option wins.
    #[arg(long, env = "IVNET_MTU", value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(MIN_MTU as i64..=MAX_MTU as i64))]
    pub mtu: Option<u32>,

    /// MAC address of the TAP interface. Default: 02:69:76:6e:HH:LL, where
    /// HHLL is this peer's 16-bit ID on the link (stable across restarts;
    /// locally administered, unicast; 69:76:6e is "ivn"). Set it explicitly
    /// when several links end on the same machine.
    #[arg(long, value_name = "XX:XX:XX:XX:XX:XX")]
    pub mac: Option<MacAddr>,

    /// How the bridge waits for work.
    #[arg(long, value_enum, default_value_t = Mode::Event)]
    pub mode: Mode,

    /// In hybrid mode: keep polling this many microseconds after the last
    /// frame before sleeping on doorbells.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll_us: u64,

    /// Pin the bridge to this CPU.
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<usize>,

    /// Frames handled per direction before the loop looks at the other
    /// direction and at its file descriptors again.
    #[arg(long, value_name = "FRAMES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub budget: u32,

    /// Print the counters every SECONDS (decimals allowed); 0 turns the
    /// periodic report off (SIGUSR1 and the final report on exit remain).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_seconds)]
    pub stats_interval: Duration,

    /// Write the counters as JSON lines to stdout instead of a log line.
    #[arg(long)]
    pub stats_json: bool,

    /// Offloads between two ivnet peers: "auto" advertises checksum and
    /// segmentation offload (TSO4/6, USO) in bytes of the own section that
    /// the reference protocol leaves unused, and uses them when the other
    /// peer advertises them too (frames then carry a virtio-net header and
    /// may be 64 KiB super-frames); any other peer sees the plain
    /// protocol. "off" advertises nothing and opens the TAP without a
    /// virtio-net header. Also read from IVNET_OFFLOAD.
    #[arg(long, env = "IVNET_OFFLOAD", value_enum, default_value_t = OffloadMode::Auto)]
    pub offload: OffloadMode,
}

/// Whether offloads are offered to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OffloadMode {
    /// Offer them; use them when the peer offers them too.
    Auto,
    /// Never: the plain reference protocol, the TAP without vnet header.
    Off,
}

/// How the bridge waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Sleep on doorbells and the TAP; ask the peer for a doorbell whenever
    /// the queues run empty (lowest CPU use).
    Event,
    /// Never sleep: poll the rings and the TAP continuously; the peer sends
    /// no data doorbells (one CPU at 100 %; lowest latency only when that
    /// CPU is otherwise idle).
    Poll,
    /// Poll for --busy-poll-us after the last frame, then sleep as in event
    /// mode.
    Hybrid,
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The default MAC of the peer with ID `peer_id`: `02:69:76:6e:HH:LL`.
    pub fn for_peer(peer_id: u16) -> Self {
        let [hi, lo] = peer_id.to_be_bytes();
        MacAddr([0x02, 0x69, 0x76, 0x6e, hi, lo])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or_else(|| format!("'{s}' has fewer than 6 octets"))?;
            if part.is_empty() || part.len() > 2 {
                return Err(format!("'{s}': octet '{part}' is not 1-2 hex digits"));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("'{s}': octet '{part}' is not hexadecimal"))?;
        }
        if parts.next().is_some() {
            return Err(format!("'{s}' has more than 6 octets"));
        }
        if out[0] & 1 != 0 {
            return Err(format!(
                "'{s}' is a multicast address; an interface needs a unicast one"
            ));
        }
        if out == [0; 6] {
            return Err(format!("'{s}' is the all-zero address"));
        }
        Ok(MacAddr(out))
    }
}

/// Parses a non-negative number of seconds (decimals allowed).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("'{s}' is out of range (0 to one year)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks an interface name the way the kernel will (`dev_valid_name`).
fn parse_ifname(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the interface name is empty".into());
    }
    if s.len() >= libc::IFNAMSIZ {
        return Err(format!("'{s}' is longer than {} bytes", libc::IFNAMSIZ - 1));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid interface name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{s}' contains {c:?}, which interface names may not contain"
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn parses_a_full_command_line() {
        let a = Args::try_parse_from([
            "ivnet-bridge",
            "--server",
            "/run/ivshmem.sock",
            "--tap",
            "ivn0",
            "--mtu",
            "1500",
            "--mac",
            "02:00:00:00:00:01",
            "--mode",
            "hybrid",
            "--busy-poll-us",
            "20",
            "--stats-interval",
            "0.5",
            "--stats-json",
        ])
        .unwrap();
        assert_eq!(a.mtu, Some(1500));
        assert_eq!(a.mode, Mode::Hybrid);
        assert_eq!(a.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(a.stats_interval, Duration::from_millis(500));
    }

    #[test]
    fn rejects_bad_values() {
        let base = ["ivnet-bridge", "--server", "/s", "--tap", "t0"];
        for extra in [
            &["--mtu", "67"][..],
            &["--mtu", "65536"],
            &["--mac", "01:00:00:00:00:01"],
            &["--mac", "02:00:00:00:00"],
            &["--mac", "zz:00:00:00:00:00"],
            &["--mode", "turbo"],
            &["--budget", "0"],
            &["--stats-interval", "-1"],
            &["--uio", "/dev/uio0"],
        ] {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            assert!(
                Args::try_parse_from(&argv).is_err(),
                "{argv:?} was accepted"
            );
        }
        assert!(Args::try_parse_from(["ivnet-bridge", "--tap", "t0"]).is_err());
        assert!(Args::try_parse_from(["ivnet-bridge", "--server", "/s", "--tap", "a/b"]).is_err());
        assert!(
            Args::try_parse_from([
                "ivnet-bridge",
                "--server",
                "/s",
                "--tap",
                "0123456789abcdef"
            ])
            .is_err()
        );
    }

    #[test]
    fn default_mac_is_stable_and_local() {
        let m = MacAddr::for_peer(0x0102);
        assert_eq!(m.to_string(), "02:69:76:6e:01:02");
        assert_eq!(m.0[0] & 0b11, 0b10, "locally administered unicast");
    }
}
