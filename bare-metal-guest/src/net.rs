//! The IP stack (smoltcp, no heap) on the NIC, its services, and the
//! guest's main loop.
//!
//! Services on the guest's address:
//!
//! | service | port | behaviour |
//! |---|---|---|
//! | ICMP echo | — | smoltcp answers echo requests itself (`auto-icmp-echo-reply`) |
//! | UDP echo | 7 | every datagram goes back to its sender, byte for byte |
//! | TCP echo | 7 | everything received is sent back; closes after the client's FIN once all is echoed |
//! | TCP discard | 9 | everything received is dropped (throughput sink) |
//! | UDP stats | 7777 | any datagram: the counters line goes back (and to the serial console, within the log budget) |
//!
//! And two clients, if the command line asks for them: `ping=` sends ICMP
//! echo requests (an ICMP socket bound to its identifier), `udpecho=`
//! datagrams to UDP port 7 (from port [`UDP_CLIENT_PORT`]), to another
//! host once the carrier is on, and check every reply byte for byte; the
//! pacing, payloads and counts are `ivnet_guest::echo_client`, the socket
//! I/O is [`ClientIo`]. Each one's summary line goes with every counters
//! line and once when its `count` is reached; a line per reply and per loss
//! goes through the log budget, at most [`CLIENT_LINE_BYTES_PER_SECOND`]
//! per client.
//!
//! The main loop is NAPI-style, on the driver core (`ivnet_driver::Driver`,
//! through [`Nic`]). An interrupt (doorbell or timer) wakes it; it then
//! steps the link (one load of the peer's state entry, every round: a
//! vector-0 interrupt — on a one-vector device, every interrupt — needs
//! nothing more), polls — TX completions, received frames through smoltcp,
//! the services, transmission — and publishes each batch with one index
//! store and at most one doorbell on the core's data vector. While frames
//! keep arriving it keeps polling without asking the peer for doorbells;
//! when the ring is empty it publishes its event index, re-arms the
//! interrupt, re-checks the ring and the peer's state (in that order, the
//! core's `prepare_sleep`), and only then sleeps with `sti; hlt` until the
//! next doorbell or the next smoltcp/link/backoff/statistics deadline. In
//! `mode=poll` it never sleeps and never asks for doorbells.
//!
//! Console output: boot messages and the `stats=N` counters line are
//! printed directly; everything a peer can trigger (the driver core's link,
//! carrier, fault and backoff records, the counters line a UDP request
//! asks for) goes through the `log` facade and its budget (`logger`).

use core::fmt::{self, Write};

use core::sync::atomic::{AtomicU64, Ordering};

use core::net::Ipv4Addr;

use ivnet_guest::cmdline::{EchoClientConfig, GuestConfig, Mode};
use ivnet_guest::console_budget::{Admit, ByteBudget};
use ivnet_guest::echo_client::{self, EchoClient, Reply, Request};
use ivnet_guest::fragment_guard::{GuardState, Verdict};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::{self, TxToken as _};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Message, Icmpv4Packet, IpAddress, IpCidr, IpEndpoint,
};
use static_cell::{ConstStaticCell, StaticCell};

use crate::idt::{self, IRQ_COUNTERS};
use crate::logger::LineBuf;
use crate::nic::MAX_FRAME;
use crate::{cpu, println, time};

/// Echo and discard port numbers (RFC 862, RFC 863).
const ECHO_PORT: u16 = 7;
const DISCARD_PORT: u16 = 9;
/// UDP port that answers with the counters line.
pub const STATS_PORT: u16 = 7777;

/// Received frames handled per poll round before completions are
/// published (so the peer gets its slots back early).
const RX_BUDGET: usize = 16;
/// Bound on transmit rounds per poll (each sends one packet per socket).
const EGRESS_ROUNDS: usize = 64;
/// How often the link state is re-read even without a vector-0 interrupt
/// (QEMU drops doorbells to peers that are not connected yet).
const LINK_TICK_US: u64 = 250_000;
/// Sleep bound while the TX ring is full and smoltcp has data queued: the
/// completion doorbell normally comes first.
const TX_FULL_SLEEP_US: u64 = 10_000;

const TCP_ECHO_RX: usize = 64 * 1024;
const TCP_ECHO_TX: usize = 64 * 1024;
const TCP_DISCARD_RX: usize = 64 * 1024;
const TCP_DISCARD_TX: usize = 64;
const UDP_PAYLOAD: usize = 32 * 1024;
const UDP_PACKETS: usize = 16;
const STATS_PAYLOAD: usize = 2048;
const STATS_PACKETS: usize = 2;
/// The echo clients' socket buffers: two large requests or replies each
/// (ICMP or client header included).
const CLIENT_BUFFER: usize = 2 * (echo_client::LARGE_PAYLOAD + 8) + 64;
const CLIENT_PACKETS: usize = 4;
/// Console bytes per second each echo client's per-reply and per-loss
/// lines may use (burst: twice that), before the log budget they also go
/// through.
pub const CLIENT_LINE_BYTES_PER_SECOND: u64 = 256;
/// The `udpecho=` client's own UDP port.
pub const UDP_CLIENT_PORT: u16 = 50007;

static RX_BUF: ConstStaticCell<[u8; MAX_FRAME]> = ConstStaticCell::new([0; MAX_FRAME]);
static TX_SCRATCH: ConstStaticCell<[u8; MAX_FRAME]> = ConstStaticCell::new([0; MAX_FRAME]);
static BOUNCE: ConstStaticCell<[u8; MAX_FRAME]> = ConstStaticCell::new([0; MAX_FRAME]);
static SOCKETS: ConstStaticCell<[SocketStorage<'static>; 6]> =
    ConstStaticCell::new([SocketStorage::EMPTY; 6]);
static ECHO_RX: ConstStaticCell<[u8; TCP_ECHO_RX]> = ConstStaticCell::new([0; TCP_ECHO_RX]);
static ECHO_TX: ConstStaticCell<[u8; TCP_ECHO_TX]> = ConstStaticCell::new([0; TCP_ECHO_TX]);
static DISCARD_RX: ConstStaticCell<[u8; TCP_DISCARD_RX]> =
    ConstStaticCell::new([0; TCP_DISCARD_RX]);
static DISCARD_TX: ConstStaticCell<[u8; TCP_DISCARD_TX]> =
    ConstStaticCell::new([0; TCP_DISCARD_TX]);
static UDP_RX: ConstStaticCell<[u8; UDP_PAYLOAD]> = ConstStaticCell::new([0; UDP_PAYLOAD]);
static UDP_TX: ConstStaticCell<[u8; UDP_PAYLOAD]> = ConstStaticCell::new([0; UDP_PAYLOAD]);
static UDP_RX_META: ConstStaticCell<[udp::PacketMetadata; UDP_PACKETS]> =
    ConstStaticCell::new([udp::PacketMetadata::EMPTY; UDP_PACKETS]);
static UDP_TX_META: ConstStaticCell<[udp::PacketMetadata; UDP_PACKETS]> =
    ConstStaticCell::new([udp::PacketMetadata::EMPTY; UDP_PACKETS]);
static STATS_RX: ConstStaticCell<[u8; STATS_PAYLOAD]> = ConstStaticCell::new([0; STATS_PAYLOAD]);
static STATS_TX: ConstStaticCell<[u8; STATS_PAYLOAD]> = ConstStaticCell::new([0; STATS_PAYLOAD]);
static STATS_RX_META: ConstStaticCell<[udp::PacketMetadata; STATS_PACKETS]> =
    ConstStaticCell::new([udp::PacketMetadata::EMPTY; STATS_PACKETS]);
static STATS_TX_META: ConstStaticCell<[udp::PacketMetadata; STATS_PACKETS]> =
    ConstStaticCell::new([udp::PacketMetadata::EMPTY; STATS_PACKETS]);
static PING_RX: ConstStaticCell<[u8; CLIENT_BUFFER]> = ConstStaticCell::new([0; CLIENT_BUFFER]);
static PING_TX: ConstStaticCell<[u8; CLIENT_BUFFER]> = ConstStaticCell::new([0; CLIENT_BUFFER]);
static PING_RX_META: ConstStaticCell<[icmp::PacketMetadata; CLIENT_PACKETS]> =
    ConstStaticCell::new([icmp::PacketMetadata::EMPTY; CLIENT_PACKETS]);
static PING_TX_META: ConstStaticCell<[icmp::PacketMetadata; CLIENT_PACKETS]> =
    ConstStaticCell::new([icmp::PacketMetadata::EMPTY; CLIENT_PACKETS]);
static UDPC_RX: ConstStaticCell<[u8; CLIENT_BUFFER]> = ConstStaticCell::new([0; CLIENT_BUFFER]);
static UDPC_TX: ConstStaticCell<[u8; CLIENT_BUFFER]> = ConstStaticCell::new([0; CLIENT_BUFFER]);
static UDPC_RX_META: ConstStaticCell<[udp::PacketMetadata; CLIENT_PACKETS]> =
    ConstStaticCell::new([udp::PacketMetadata::EMPTY; CLIENT_PACKETS]);
static UDPC_TX_META: ConstStaticCell<[udp::PacketMetadata; CLIENT_PACKETS]> =
    ConstStaticCell::new([udp::PacketMetadata::EMPTY; CLIENT_PACKETS]);

/// The NIC's frame buffers (taken once, by `main`).
pub fn frame_buffers() -> (&'static mut [u8; MAX_FRAME], &'static mut [u8; MAX_FRAME]) {
    (RX_BUF.take(), TX_SCRATCH.take())
}

/// What the main loop needs from a NIC besides smoltcp's `phy::Device`:
/// one implementation per NIC (`nic::Nic` for ivshmem-net,
/// `virtio_net::VirtioNic`), the services and the loop are shared.
pub trait NetDevice: phy::Device {
    /// The NIC's name on the counters line (`nic=`).
    const NAME: &'static str;
    /// `phy::TxToken::consume` with a say in it: `build` writes the frame
    /// and returns whether to send it (`false`: the token is spent, nothing
    /// goes out; the fragment guard holds such a frame back).
    fn build_frame<'a, R>(
        token: Self::TxToken<'a>,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> (R, bool),
    ) -> R
    where
        Self: 'a;
    /// Starts a main-loop round (the clock the NIC may read).
    fn set_now(&mut self, now_us: u64);
    /// Steps the link, if the NIC has link state of its own.
    fn poll_link(&mut self, now_us: u64);
    /// Takes the link down (cell shutdown).
    fn shutdown(&mut self);
    /// When a held-back link step must run (no interrupt announces it).
    fn link_held_until(&self) -> Option<u64>;
    /// Processes transmit completions.
    fn reclaim(&mut self);
    /// Publishes the round's receive completions and queued frames, with
    /// at most one notification per queue.
    fn flush(&mut self);
    /// Whether one more frame can be queued now.
    fn can_transmit(&mut self) -> bool;
    /// Whether received frames are waiting.
    fn rx_pending(&mut self) -> bool;
    /// Before sleeping (event mode): re-arm interrupts, then re-check;
    /// `true` = work arrived, poll again.
    fn prepare_sleep(&mut self) -> bool;
    /// The IP MTU.
    fn mtu(&self) -> usize;
    /// Whether frames can reach the other side (the echo clients wait for
    /// it); NICs without link state of their own always say yes.
    fn carrier(&self) -> bool {
        true
    }
    /// The NIC's part of the boot line (queues, buffers).
    fn write_link(&self, w: &mut dyn Write) -> fmt::Result;
    /// The NIC's `key=value` words of the counters line, each preceded by a
    /// space; must include `rx_frames`, `tx_frames` and `notifications`
    /// (doorbells or kicks sent to the other side).
    fn write_counters(&self, w: &mut dyn Write) -> fmt::Result;
}

/// Main-loop counters (rounds of polling, sleeps with `hlt`).
struct LoopCounters {
    rounds: AtomicU64,
    sleeps: AtomicU64,
}

static LOOP_COUNTERS: LoopCounters = LoopCounters {
    rounds: AtomicU64::new(0),
    sleeps: AtomicU64::new(0),
};

/// Service counters.
#[derive(Clone, Copy, Debug, Default)]
struct ServiceCounters {
    tcp_echo_connections: u64,
    tcp_echo_bytes: u64,
    tcp_discard_connections: u64,
    tcp_discard_bytes: u64,
    udp_echo_datagrams: u64,
    udp_echo_bytes: u64,
    udp_echo_dropped: u64,
    stats_requests: u64,
}

struct Services {
    tcp_echo: SocketHandle,
    tcp_discard: SocketHandle,
    udp_echo: SocketHandle,
    udp_stats: SocketHandle,
    echo_was_active: bool,
    discard_was_active: bool,
    counters: ServiceCounters,
    bounce: &'static mut [u8; MAX_FRAME],
    /// The echo clients (`ping=`, `udpecho=`), those asked for.
    clients: [Option<ClientIo>; 2],
}

fn new_tcp(rx: &'static mut [u8], tx: &'static mut [u8]) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    // Echo and discard are bulk services: no Nagle delays on the echo path.
    s.set_nagle_enabled(false);
    s
}

fn new_udp(
    rx_meta: &'static mut [udp::PacketMetadata],
    rx: &'static mut [u8],
    tx_meta: &'static mut [udp::PacketMetadata],
    tx: &'static mut [u8],
    port: u16,
) -> udp::Socket<'static> {
    let mut s = udp::Socket::new(
        udp::PacketBuffer::new(rx_meta, rx),
        udp::PacketBuffer::new(tx_meta, tx),
    );
    // Binding a fresh socket to a nonzero port cannot fail.
    let _ = s.bind(port);
    s
}

impl Services {
    fn new(sockets: &mut SocketSet<'static>, clients: [Option<ClientIo>; 2]) -> Services {
        let tcp_echo = sockets.add(new_tcp(ECHO_RX.take(), ECHO_TX.take()));
        let tcp_discard = sockets.add(new_tcp(DISCARD_RX.take(), DISCARD_TX.take()));
        let udp_echo = sockets.add(new_udp(
            UDP_RX_META.take(),
            UDP_RX.take(),
            UDP_TX_META.take(),
            UDP_TX.take(),
            ECHO_PORT,
        ));
        let udp_stats = sockets.add(new_udp(
            STATS_RX_META.take(),
            STATS_RX.take(),
            STATS_TX_META.take(),
            STATS_TX.take(),
            STATS_PORT,
        ));
        Services {
            tcp_echo,
            tcp_discard,
            udp_echo,
            udp_stats,
            echo_was_active: false,
            discard_was_active: false,
            counters: ServiceCounters::default(),
            bounce: BOUNCE.take(),
            clients,
        }
    }

    /// Serves every socket once. Returns whether any data moved (then the
    /// caller polls again to transmit it).
    fn process<N: NetDevice>(
        &mut self,
        sockets: &mut SocketSet<'static>,
        nic: &N,
        now_us: u64,
    ) -> bool {
        let mut moved = false;

        // TCP echo: move received bytes to the send buffer as room allows.
        let s = sockets.get_mut::<tcp::Socket>(self.tcp_echo);
        if !s.is_open() {
            let _ = s.listen(ECHO_PORT);
        }
        if s.is_active() && !self.echo_was_active {
            self.counters.tcp_echo_connections += 1;
        }
        self.echo_was_active = s.is_active();
        while s.can_recv() && s.can_send() {
            let room = s.send_capacity() - s.send_queue();
            let want = room.min(self.bounce.len());
            if want == 0 {
                break;
            }
            let n = s.recv_slice(&mut self.bounce[..want]).unwrap_or(0);
            if n == 0 {
                break;
            }
            // `n <= room`: all of it fits.
            let _ = s.send_slice(&self.bounce[..n]);
            self.counters.tcp_echo_bytes += n as u64;
            moved = true;
        }
        if !s.may_recv() && s.recv_queue() == 0 && s.may_send() {
            // The client sent FIN and everything is echoed: FIN back after
            // the queued data.
            s.close();
        }

        // TCP discard.
        let s = sockets.get_mut::<tcp::Socket>(self.tcp_discard);
        if !s.is_open() {
            let _ = s.listen(DISCARD_PORT);
        }
        if s.is_active() && !self.discard_was_active {
            self.counters.tcp_discard_connections += 1;
        }
        self.discard_was_active = s.is_active();
        while s.can_recv() {
            let n = s.recv(|b| (b.len(), b.len())).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.counters.tcp_discard_bytes += n as u64;
            moved = true;
        }
        if !s.may_recv() && s.may_send() {
            s.close();
        }

        // UDP echo.
        let s = sockets.get_mut::<udp::Socket>(self.udp_echo);
        while s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut self.bounce[..]) else {
                break;
            };
            match s.send_slice(&self.bounce[..n], meta.endpoint) {
                Ok(()) => {
                    self.counters.udp_echo_datagrams += 1;
                    self.counters.udp_echo_bytes += n as u64;
                }
                Err(_) => self.counters.udp_echo_dropped += 1,
            }
            moved = true;
        }

        // Counters on request.
        let s = sockets.get_mut::<udp::Socket>(self.udp_stats);
        while s.can_send() {
            let Ok((_, meta)) = s.recv_slice(&mut self.bounce[..]) else {
                break;
            };
            self.counters.stats_requests += 1;
            let mut line = LineBuf::new();
            let _ = write!(
                line,
                "{}",
                StatsLine {
                    nic,
                    services: &self.counters,
                    now_us
                }
            );
            // Asked for by whoever sends datagrams to the port: on the
            // console only within the log budget.
            log::info!(target: "stats", "{}", line.as_str());
            let _ = s.send_slice(line.as_bytes(), meta.endpoint);
            moved = true;
        }

        for client in self.clients.iter_mut().flatten() {
            moved |= client.process(sockets, nic.carrier(), now_us);
        }
        moved
    }
}

/// What an echo client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// ICMP echo requests (`ping=`).
    Icmp,
    /// Datagrams to UDP port 7 (`udpecho=`), identifier and sequence number
    /// in their first bytes.
    Udp,
}

/// An echo client's socket side: sends what its [`EchoClient`] asks for,
/// hands it every reply from the target, and reports.
struct ClientIo {
    /// The command-line key, which prefixes its console lines.
    name: &'static str,
    transport: Transport,
    client: EchoClient,
    socket: SocketHandle,
    /// The per-reply and per-loss lines' own share of the log budget.
    lines: ByteBudget,
    done_reported: bool,
    /// The last round's request found an earlier one still queued in the
    /// socket (smoltcp keeps a packet while the neighbour does not answer
    /// ARP, and sends it once it does): the new one waits, and the loop
    /// does not ask for an immediate wake-up until the queue drains.
    queue_full: bool,
}

impl ClientIo {
    /// The `ping=` client on an ICMP socket bound to its identifier.
    fn icmp(
        sockets: &mut SocketSet<'static>,
        config: EchoClientConfig,
        own: Ipv4Addr,
        mtu: usize,
    ) -> Self {
        let ident = EchoClient::ident_for(own);
        let mut s = icmp::Socket::new(
            icmp::PacketBuffer::new(&mut PING_RX_META.take()[..], &mut PING_RX.take()[..]),
            icmp::PacketBuffer::new(&mut PING_TX_META.take()[..], &mut PING_TX.take()[..]),
        );
        // Binding a fresh socket to an identifier cannot fail.
        let _ = s.bind(icmp::Endpoint::Ident(ident));
        let client = EchoClient::new(config, ident, mtu, 0);
        Self::new("ping", Transport::Icmp, client, sockets.add(s))
    }

    /// The `udpecho=` client on a UDP socket bound to [`UDP_CLIENT_PORT`].
    fn udp(
        sockets: &mut SocketSet<'static>,
        config: EchoClientConfig,
        own: Ipv4Addr,
        mtu: usize,
    ) -> Self {
        let s = new_udp(
            UDPC_RX_META.take(),
            UDPC_RX.take(),
            UDPC_TX_META.take(),
            UDPC_TX.take(),
            UDP_CLIENT_PORT,
        );
        let client = EchoClient::new(
            config,
            EchoClient::ident_for(own),
            mtu,
            echo_client::UDP_HEADER,
        );
        Self::new("udpecho", Transport::Udp, client, sockets.add(s))
    }

    fn new(
        name: &'static str,
        transport: Transport,
        client: EchoClient,
        socket: SocketHandle,
    ) -> Self {
        ClientIo {
            name,
            transport,
            client,
            socket,
            lines: ByteBudget::new(
                CLIENT_LINE_BYTES_PER_SECOND,
                2 * CLIENT_LINE_BYTES_PER_SECOND,
            ),
            done_reported: false,
            queue_full: false,
        }
    }

    /// When the client needs the main loop next (see `EchoClient::deadline`).
    fn deadline(&self, now_us: u64, link_up: bool) -> Option<u64> {
        self.client
            .deadline(now_us, link_up)
            .filter(|&at| !(self.queue_full && at <= now_us))
    }

    /// A peer-triggered line: within the client's share, then the log budget.
    fn line(&mut self, now_us: u64, args: fmt::Arguments<'_>) {
        let mut line = LineBuf::new();
        let _ = write!(line, "{}: {args}", self.name);
        if let Admit::Write { .. } = self.lines.admit(now_us, line.as_bytes().len() as u64 + 2) {
            log::info!(target: "echo_client", "{}", line.as_str());
        }
    }

    /// The next reply from the target, checked: `(seq, payload length,
    /// verdict)`; `None` when none is waiting. Packets that are not
    /// replies to this client are skipped.
    fn next_reply(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now_us: u64,
    ) -> Option<(u16, usize, Reply)> {
        let target = self.client.target();
        let ident = self.client.ident();
        loop {
            match self.transport {
                Transport::Icmp => {
                    let s = sockets.get_mut::<icmp::Socket>(self.socket);
                    let (data, from) = s.recv().ok()?;
                    // smoltcp checked the checksum on the way in; echo
                    // requests that happen to carry our identifier are not
                    // ours.
                    let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                        continue;
                    };
                    if from != IpAddress::Ipv4(target)
                        || packet.msg_type() != Icmpv4Message::EchoReply
                        || packet.echo_ident() != ident
                    {
                        continue;
                    }
                    let (seq, payload) = (packet.echo_seq_no(), packet.data());
                    return Some((seq, payload.len(), self.client.reply(seq, payload, now_us)));
                }
                Transport::Udp => {
                    let s = sockets.get_mut::<udp::Socket>(self.socket);
                    let (data, meta) = s.recv().ok()?;
                    if meta.endpoint != IpEndpoint::new(IpAddress::Ipv4(target), ECHO_PORT) {
                        continue;
                    }
                    // Whatever the echo port sends to this port must be
                    // one of our datagrams.
                    let Some(&[i0, i1, s0, s1]) = data.get(..echo_client::UDP_HEADER) else {
                        return Some((0, data.len(), self.client.stray()));
                    };
                    let seq = u16::from_be_bytes([s0, s1]);
                    if u16::from_be_bytes([i0, i1]) != ident {
                        return Some((seq, data.len(), self.client.stray()));
                    }
                    return Some((seq, data.len(), self.client.reply(seq, data, now_us)));
                }
            }
        }
    }

    /// Queues `request` on the socket, unless an earlier one still waits
    /// there; returns whether it was queued.
    fn queue(&mut self, sockets: &mut SocketSet<'static>, request: Request) -> bool {
        let target = IpAddress::Ipv4(self.client.target());
        let ident = self.client.ident();
        let seq = request.seq;
        match self.transport {
            Transport::Icmp => {
                let s = sockets.get_mut::<icmp::Socket>(self.socket);
                if s.send_queue() > 0 {
                    return false;
                }
                let Ok(buf) = s.send(8 + request.len, target) else {
                    return false;
                };
                let mut packet = Icmpv4Packet::new_unchecked(buf);
                packet.set_msg_type(Icmpv4Message::EchoRequest);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq);
                echo_client::fill_payload(ident, seq, packet.data_mut());
                packet.fill_checksum();
            }
            Transport::Udp => {
                let s = sockets.get_mut::<udp::Socket>(self.socket);
                if s.send_queue() > 0 {
                    return false;
                }
                let to = IpEndpoint::new(target, ECHO_PORT);
                let Ok(buf) = s.send(request.len, to) else {
                    return false;
                };
                echo_client::fill_payload(ident, seq, buf);
                let [i0, i1] = ident.to_be_bytes();
                let [s0, s1] = seq.to_be_bytes();
                if let Some(head) = buf.get_mut(..echo_client::UDP_HEADER) {
                    head.copy_from_slice(&[i0, i1, s0, s1]);
                }
            }
        }
        true
    }

    /// Takes the replies, expires a lost request, sends the next one.
    /// Returns whether a request was queued.
    fn process(&mut self, sockets: &mut SocketSet<'static>, link_up: bool, now_us: u64) -> bool {
        let target = self.client.target();
        while let Some((seq, len, verdict)) = self.next_reply(sockets, now_us) {
            match verdict {
                Reply::Answered { rtt_us, fragmented } => self.line(
                    now_us,
                    format_args!(
                        "reply from {target} seq={seq} bytes={len} rtt_us={rtt_us} fragmented={}",
                        u8::from(fragmented)
                    ),
                ),
                Reply::Late => {
                    self.line(now_us, format_args!("late reply from {target} seq={seq}"))
                }
                Reply::Bad => self.line(
                    now_us,
                    format_args!("BAD reply from {target} seq={seq} bytes={len}"),
                ),
            }
        }
        if let Some(seq) = self.client.expire(now_us) {
            self.line(now_us, format_args!("no reply from {target} seq={seq}"));
        }
        let mut queued = false;
        self.queue_full = false;
        if let Some(request) = self.client.next_request(now_us, link_up) {
            queued = self.queue(sockets, request);
            if queued {
                self.client.sent(request, now_us);
            } else {
                self.queue_full = true;
            }
        }
        if self.client.done() && !self.done_reported {
            self.done_reported = true;
            // Asked for by the operator (`count=`): printed directly, once.
            println!("{}", self.client.summary(self.name));
        }
        queued
    }
}

/// The counters line, one line of `key=value` words: the NIC's, the
/// services', the main loop's and the interrupts'.
struct StatsLine<'a, N> {
    nic: &'a N,
    services: &'a ServiceCounters,
    now_us: u64,
}

impl<N: NetDevice> fmt::Display for StatsLine<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.services;
        let irq = &IRQ_COUNTERS;
        let nic_irqs: u64 = irq.doorbell.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        write!(
            f,
            "stats: t={}.{:03}s nic={}",
            self.now_us / 1_000_000,
            self.now_us / 1000 % 1000,
            N::NAME
        )?;
        self.nic.write_counters(f)?;
        write!(
            f,
            " irq_state={} irq_data={} irq_timer={} interrupts={nic_irqs} \
             tcp_echo_conns={} tcp_echo_bytes={} tcp_discard_conns={} tcp_discard_bytes={} \
             udp_echo_dgrams={} udp_echo_bytes={} udp_echo_dropped={} loop_rounds={} loop_sleeps={} \
             stack_used={}",
            irq.doorbell[0].load(Ordering::Relaxed),
            irq.doorbell[1].load(Ordering::Relaxed),
            irq.timer.load(Ordering::Relaxed),
            c.tcp_echo_connections,
            c.tcp_echo_bytes,
            c.tcp_discard_connections,
            c.tcp_discard_bytes,
            c.udp_echo_datagrams,
            c.udp_echo_bytes,
            c.udp_echo_dropped,
            LOOP_COUNTERS.rounds.load(Ordering::Relaxed),
            LOOP_COUNTERS.sleeps.load(Ordering::Relaxed),
            crate::footprint::stack_used(),
        )
    }
}

/// The clients' part of the services line.
struct ClientWords<'a>(&'a GuestConfig);

impl fmt::Display for ClientWords<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, client) in [("ping", self.0.ping), ("udpecho", self.0.udp_echo)] {
            let Some(c) = client else { continue };
            write!(
                f,
                "; client: {name} {} every {} ms",
                c.target, c.interval_ms
            )?;
            if let Some(n) = c.count {
                write!(f, ", {n} requests")?;
            }
        }
        Ok(())
    }
}

/// Keeps smoltcp's IPv4 fragmentation correct (the decisions and the two
/// smoltcp 0.14 defects they work around are in
/// `ivnet_guest::fragment_guard`): while fragments are pending it gives
/// smoltcp no receive token and, within one `poll_egress`, only its first
/// transmit token, which `poll_egress` spends on the next pending fragment
/// before the sockets get their turn (medium Ethernet, no IPv6 or multicast
/// features); the first fragment of a fragmented ICMP packet is copied
/// aside instead of sent (`NetDevice::build_frame`), held, and sent last
/// with the checksum of the packet's own bytes. Every other frame is
/// written once, into the NIC's own buffer.
struct FragmentGuard {
    state: GuardState,
    /// Transmit tokens asked for since the current `poll_egress` began.
    tokens: u32,
    /// The held first fragment.
    held: &'static mut [u8; MAX_FRAME],
}

static FRAGMENT_HELD: ConstStaticCell<[u8; MAX_FRAME]> = ConstStaticCell::new([0; MAX_FRAME]);

impl FragmentGuard {
    fn new() -> Self {
        FragmentGuard {
            state: GuardState::new(),
            tokens: 0,
            held: FRAGMENT_HELD.take(),
        }
    }

    /// Sends the held first fragment if its packet is complete and the NIC
    /// takes a frame.
    fn flush<N: NetDevice>(&mut self, nic: &mut N, now: Instant) {
        let Some(len) = self.state.release(&mut self.held[..]) else {
            return;
        };
        if let Some(token) = nic.transmit(now) {
            let held = &self.held[..len];
            token.consume(len, |buf| buf.copy_from_slice(held));
            self.state.released();
        }
    }
}

/// The NIC behind a [`FragmentGuard`], as smoltcp's device.
struct Guarded<'a, N> {
    nic: &'a mut N,
    guard: &'a mut FragmentGuard,
}

/// A transmit token that shows the guard what smoltcp wrote.
struct GuardedTx<'a, N: NetDevice + 'a> {
    token: N::TxToken<'a>,
    guard: &'a mut FragmentGuard,
}

impl<'a, N: NetDevice + 'a> phy::TxToken for GuardedTx<'a, N> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let GuardedTx { token, guard } = self;
        N::build_frame(token, len, |frame| {
            let r = f(frame);
            let can_hold = frame.len() <= guard.held.len();
            let send = match guard.state.track(frame, can_hold) {
                Verdict::Send => true,
                Verdict::Hold => {
                    guard.held[..frame.len()].copy_from_slice(frame);
                    false
                }
            };
            (r, send)
        })
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.token.set_meta(meta)
    }
}

impl<N: NetDevice> phy::Device for Guarded<'_, N> {
    type RxToken<'a>
        = N::RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = GuardedTx<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.guard.state.pending() {
            return None;
        }
        let (rx, token) = self.nic.receive(timestamp)?;
        Some((
            rx,
            GuardedTx {
                token,
                guard: &mut *self.guard,
            },
        ))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let first = self.guard.tokens == 0;
        self.guard.tokens += 1;
        if self.guard.state.held_complete() || (self.guard.state.pending() && !first) {
            return None;
        }
        let token = self.nic.transmit(timestamp)?;
        Some(GuardedTx {
            token,
            guard: &mut *self.guard,
        })
    }

    fn capabilities(&self) -> phy::DeviceCapabilities {
        self.nic.capabilities()
    }
}

/// Lets every socket transmit until none has anything more to send or the
/// ring is full (one `poll_egress` sends at most one packet per socket, and
/// at most one pending IPv4 fragment: while fragments remain, smoltcp's
/// poll delay is zero, so the loop goes on while the NIC takes frames),
/// sending a held first fragment as soon as its packet is complete.
fn egress<N: NetDevice>(
    iface: &mut Interface,
    nic: &mut N,
    guard: &mut FragmentGuard,
    sockets: &mut SocketSet<'static>,
    now: Instant,
) {
    for _ in 0..EGRESS_ROUNDS {
        guard.flush(nic, now);
        guard.tokens = 0;
        let mut device = Guarded {
            nic: &mut *nic,
            guard: &mut *guard,
        };
        let r = iface.poll_egress(now, &mut device, sockets);
        guard.flush(nic, now);
        if r == smoltcp::iface::PollResult::None
            && !(nic.can_transmit()
                && iface.poll_delay(now, sockets) == Some(smoltcp::time::Duration::ZERO))
        {
            break;
        }
    }
}

fn smol_now(us: u64) -> Instant {
    Instant::from_micros(us as i64)
}

/// The interface, in a static: with IPv4 fragmentation it carries a
/// 16 KiB reassembly buffer and a 16 KiB fragmentation buffer, which the
/// main stack should not hold. Not inlined, so the value built here leaves
/// no copy in `run`'s frame.
#[inline(never)]
fn new_interface(mac: [u8; 6], device: &mut impl phy::Device) -> &'static mut Interface {
    static IFACE: StaticCell<Interface> = StaticCell::new();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = cpu::rdtsc();
    IFACE.init(Interface::new(config, device, smol_now(time::now_us())))
}

/// Runs the network services forever.
pub fn run<N: NetDevice>(nic: &'static mut N, config: &GuestConfig) -> ! {
    let mac = config.mac.0;
    let iface = new_interface(mac, nic);
    let ip = config.ip;
    iface.update_ip_addrs(|addrs| {
        // The address list has room for this one address.
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip.address), ip.prefix_len));
    });
    if let Some(gw) = config.gateway {
        // The route table has room for the default route.
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    let mut sockets = SocketSet::new(&mut SOCKETS.take()[..]);
    let clients = [
        config
            .ping
            .map(|c| ClientIo::icmp(&mut sockets, c, ip.address, nic.mtu())),
        config
            .udp_echo
            .map(|c| ClientIo::udp(&mut sockets, c, ip.address, nic.mtu())),
    ];
    let mut services = Services::new(&mut sockets, clients);

    let mut link = LineBuf::new();
    let _ = nic.write_link(&mut link);
    println!(
        "net: {}/{} mac {} mtu {} mode {:?}; {}; \
         services: icmp echo, udp echo {ECHO_PORT}, tcp echo {ECHO_PORT}, tcp discard {DISCARD_PORT}, udp stats {STATS_PORT}{}",
        ip.address,
        ip.prefix_len,
        config.mac,
        nic.mtu(),
        config.mode,
        link.as_str(),
        ClientWords(config),
    );

    let stats_interval_us = u64::from(config.stats_interval_s) * 1_000_000;
    let mut next_stats = time::now_us() + stats_interval_us;
    let mut next_link_tick = 0;
    let mut guard = FragmentGuard::new();
    loop {
        // Interrupts only wake the loop: every round re-reads the peer's
        // state entry (one load), so a vector-0 interrupt — on a one-vector
        // device every interrupt, "state may have changed and data may be
        // waiting" — and a data doorbell are handled alike.
        let _ = idt::take_events();
        crate::platform::poll_messages(|| nic.shutdown());
        // One clock read per round: under nested KVM every RDTSC is a VM
        // exit, so smoltcp and the driver core get this value for the round.
        let now = time::now_us();
        let smol = smol_now(now);
        nic.set_now(now);
        LOOP_COUNTERS.rounds.fetch_add(1, Ordering::Relaxed);

        // Link state: every round (the first publishes RESET). The tick
        // bounds the sleep so that a lost vector-0 interrupt (QEMU drops
        // doorbells to peers that are not connected yet) cannot stall it.
        if now >= next_link_tick {
            next_link_tick = now + LINK_TICK_US;
        }
        nic.poll_link(now);

        // Data path, batched.
        nic.reclaim();
        let mut budget = RX_BUDGET;
        let mut device = Guarded {
            nic: &mut *nic,
            guard: &mut guard,
        };
        while budget > 0
            && iface.poll_ingress_single(smol, &mut device, &mut sockets)
                != smoltcp::iface::PollIngressSingleResult::None
        {
            budget -= 1;
        }
        egress(iface, nic, &mut guard, &mut sockets, smol);
        if services.process(&mut sockets, nic, now) {
            egress(iface, nic, &mut guard, &mut sockets, smol);
        }
        nic.flush();

        if stats_interval_us > 0 && now >= next_stats {
            next_stats = now + stats_interval_us;
            // Operator-requested (`stats=N`): printed directly, not subject
            // to the log budget.
            println!(
                "{}",
                StatsLine {
                    nic,
                    services: &services.counters,
                    now_us: now
                }
            );
            for c in services.clients.iter().flatten() {
                println!("{}", c.client.summary(c.name));
            }
        }

        if config.mode == Mode::Poll || budget == 0 || nic.rx_pending() {
            // More work waiting (or poll mode): poll again, no doorbells.
            continue;
        }
        // RX notify on, interrupt re-armed, then the final re-check.
        if nic.prepare_sleep() {
            continue;
        }

        // Sleep until a doorbell or the next deadline.
        let mut delay_us = iface
            .poll_delay(smol, &sockets)
            .map_or(u64::MAX, |d| d.total_micros());
        if delay_us == 0 {
            // smoltcp has something to send but could not: the ring is full
            // (the completion doorbell wakes us; the bound covers a lost
            // one) or the link is down.
            delay_us = if nic.can_transmit() {
                1_000
            } else {
                TX_FULL_SLEEP_US
            };
        }
        delay_us = delay_us.min(next_link_tick.saturating_sub(now));
        if guard.state.held_complete() {
            // A held first fragment waits for room in the ring, like a
            // frame smoltcp could not send.
            delay_us = delay_us.min(TX_FULL_SLEEP_US);
        }
        if let Some(until) = nic.link_held_until() {
            // The renegotiation backoff holds the handshake: no doorbell
            // announces its end.
            delay_us = delay_us.min(until.saturating_sub(now).max(1));
        }
        if stats_interval_us > 0 {
            delay_us = delay_us.min(next_stats.saturating_sub(now));
        }
        for at in services
            .clients
            .iter()
            .flatten()
            .filter_map(|c| c.deadline(now, nic.carrier()))
        {
            delay_us = delay_us.min(at.saturating_sub(now));
        }
        if delay_us == 0 {
            continue;
        }
        time::alarm_at(now, now.saturating_add(delay_us));
        LOOP_COUNTERS.sleeps.fetch_add(1, Ordering::Relaxed);
        let _ = idt::wait_for_events();
    }
}
