//! The bare-metal guest on virtio-net (`nic=virtio`) for `guest_virtio`
//! (x86_64) and `aarch64_virtio` (aarch64, `virt` with GICv2: MSI-X through
//! GICv2m): QEMU's `virtio-net-pci` on a TAP backend, the TAP moved into a
//! network namespace where the tests talk to the guest with the kernel's
//! stack.
//!
//! vhost-net is used where `/dev/vhost-net` exists (`vhost=on`), else QEMU's
//! own TAP backend (`vhost=off`; the development hosts have no vhost-net).
//!
//! Addresses: the namespace's TAP is [`HOST`]/24, the guest [`GUEST`]/24.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::{self, Netns};
use crate::qemu::{Arch, Guest, GuestConfig, in_netns};

/// The namespace's end of the TAP.
pub const HOST: &str = "10.78.0.1";
/// The guest.
pub const GUEST: &str = "10.78.0.2";
/// Timeout of the TCP connection and its reads and writes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A guest with `nic=virtio` and the namespace with its TAP.
pub struct VirtioRig {
    /// The guest.
    pub guest: Guest,
    /// The namespace the TAP is in.
    pub ns: Netns,
    /// The TAP's name.
    pub tap: String,
}

impl VirtioRig {
    /// Starts the `arch` guest with `nic=virtio mode=<mode>` and moves its
    /// TAP into a fresh namespace named after `tag`.
    pub fn start(tag: &str, mode: &str, arch: Arch) -> VirtioRig {
        netns::require_root();
        netns::ensure_base_tools();
        let ns = Netns::new(tag);
        // Created by QEMU in this namespace, then moved: a name unique to
        // this process and test.
        let tap = format!(
            "vt{}{}",
            std::process::id() % 100_000,
            &tag[..tag.len().min(4)]
        );
        let vhost = if std::path::Path::new("/dev/vhost-net").exists() {
            "on"
        } else {
            "off"
        };
        let config = GuestConfig {
            cmdline: format!("ip={GUEST}/24 gw={HOST} stats=5 nic=virtio mode={mode}"),
            name: tag.into(),
            arch,
            extra_args: vec![
                "-netdev".into(),
                format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost={vhost}"),
                "-device".into(),
                "virtio-net-pci,netdev=n0,mac=02:00:0a:4e:00:02".into(),
            ],
            ..GuestConfig::default()
        };
        let mut guest = Guest::start(&config).unwrap();
        // QEMU opens the TAP before the guest runs; the guest's services
        // line says it is up.
        if let Err(e) = guest.wait_for_serial("services:", Duration::from_secs(60)) {
            panic!("{e}\n{}", guest.diagnostics());
        }
        ns.adopt_link(&tap);
        ns.add_addr(&tap, &format!("{HOST}/24"));
        VirtioRig { guest, ns, tap }
    }

    /// Everything useful for a failure message.
    pub fn logs(&self) -> String {
        format!("TAP {}\n{}", self.tap, self.guest.diagnostics())
    }

    /// `count` pings of `size` bytes from the namespace, all answered;
    /// returns ping's summary.
    pub fn ping(&self, count: u32, size: u32) -> String {
        let (count, size) = (count.to_string(), size.to_string());
        let out = self.ns.try_run(&[
            "ping", "-n", "-q", "-c", &count, "-i", "0.02", "-s", &size, "-W", "5", GUEST,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ping failed:\n{text}\n{}",
            self.logs()
        );
        assert!(text.contains(&format!("{count} received")), "{text}");
        text
    }

    /// TCP echo of `data` on port 7, written by one thread and read back by
    /// another, compared byte for byte.
    pub fn tcp_echo(&self, data: &[u8]) {
        let mut s = in_netns(self.ns.name(), || {
            let addr = SocketAddr::from((GUEST.parse::<std::net::Ipv4Addr>().unwrap(), 7));
            TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.logs()));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut back = Vec::with_capacity(data.len());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                w.write_all(data).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
            });
            s.read_to_end(&mut back)
                .unwrap_or_else(|e| panic!("read: {e}\n{}", self.logs()));
        });
        assert_eq!(back.len(), data.len(), "echo length\n{}", self.logs());
        assert!(back == data, "TCP echo differs");
    }
}
