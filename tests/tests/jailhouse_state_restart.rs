//! A restart of one side of a Jailhouse ivshmem 2.0 link, with its stale
//! STATE register left behind, relinks.
//!
//! On Jailhouse the own state goes through the STATE register of the
//! ivshmem 2.0 device; the hypervisor copies it into the peer-visible state
//! table (and rings vector 0). The register and the table keep their value
//! when the process that drives the device dies: after `kill -9` of
//! `ivnet-bridge` in a root cell (or `systemctl restart ivnet-bridge@uio0`)
//! both still say RUN, the peer keeps RUN with its carrier on, and the
//! restarted driver must publish RESET itself before anything else, or the
//! link wedges (the restarted side waits in RESET for a peer that stays in
//! RUN).
//!
//! **What this covers.** The driver core (`ivnet_driver::Driver`) over the
//! `ivshmem` crate's Jailhouse profile (`DeviceLink` over a
//! `JailhouseDevice`, the code the bare-metal guest runs on Jailhouse), with
//! the device faked in memory: a register block per peer (ID, MAX_PEERS,
//! INT_CONTROL, DOORBELL, STATE), Jailhouse's default configuration space
//! for a net link, and one shared window (state table and both output
//! sections). The hypervisor's part is emulated at the `LinkDevice`
//! boundary: every STATE write is mirrored into the state table at once,
//! as the trapping hypervisor does. "The process dies" is the driver going
//! out of scope without a shutdown, leaving register and memory as they were;
//! "it restarts" is a new driver over the same device and memory.
//!
//! **What needs the real ivshmem 2.0 device** (issue 11): the STATE write
//! trap and vector-0 interrupt delivery by the hypervisor, `uio_ivshmem` and
//! the bridge's Jailhouse UIO backend in a root cell, and a real `kill -9`
//! of the bridge process. QEMU has no ivshmem 2.0 device, so the process
//! level of this scenario runs only in the QEMU profile
//! (`uio_two_vms::uio_bridge_killed_with_the_link_up_relinks_after_a_restart`,
//! `guest_bridge::guest_reset_with_a_stale_run_entry_relinks`).

#[path = "../../crates/ivshmem/tests/common/mod.rs"]
mod fake_device;

use std::sync::OnceLock;
use std::time::Instant;

use fake_device::{FakeBar, NET_LINK, jailhouse_net};
use ivnet_driver::{DeviceLink, Driver, DriverConfig, LinkDevice};
use ivnet_ring::{Config, Endpoint, LinkState, OwnSection, PeerSection};
use ivshmem::jailhouse::Registers;
use ivshmem::layout::PROTOCOL_NET;
use ivshmem::{Ivshmem, JailhouseDevice};

/// Register offsets of the Jailhouse ivshmem 2.0 register block.
const REG_ID: usize = 0x00;
const REG_MAX_PEERS: usize = 0x04;
const REG_STATE: usize = 0x10;

fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The shared memory window: page-aligned, zeroed heap memory, accessed
/// only through raw pointers (volatile here, atomics in the ring).
struct Window {
    base: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Window {
    fn new(bytes: usize) -> Window {
        let layout = std::alloc::Layout::from_size_align(bytes, 4096).unwrap();
        // SAFETY: the size is not zero.
        let base = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
        Window { base, layout }
    }
    fn base(&self) -> std::ptr::NonNull<u8> {
        self.base
    }
    fn word(&self, offset: usize) -> *mut u32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.layout.size());
        self.base.as_ptr().wrapping_add(offset).cast()
    }
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: in bounds and aligned (checked by `word`), alive as long
        // as `self`.
        unsafe { self.word(offset).read_volatile() }
    }
    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.word(offset).write_volatile(value) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// The shared memory and both peers' register blocks: what outlives any
/// process driving the device.
struct FakeLink {
    registers: [FakeBar; 2],
    window: Window,
}

impl FakeLink {
    fn new() -> FakeLink {
        let registers = [0u32, 1].map(|id| {
            let bar = FakeBar::new(0x1000);
            bar.write32(REG_ID, id);
            bar.write32(REG_MAX_PEERS, 2);
            bar
        });
        let size = NET_LINK.state_table_size as u64
            + NET_LINK.rw_section_size
            + 2 * NET_LINK.output_section_size;
        FakeLink {
            registers,
            window: Window::new(size as usize),
        }
    }

    /// Peer `id`'s STATE register.
    fn state_register(&self, id: usize) -> u32 {
        self.registers[id].read32(REG_STATE)
    }

    /// Peer `id`'s state-table entry.
    fn table_entry(&self, id: usize) -> u32 {
        self.window.read32(4 * id)
    }

    /// Probes peer `id`'s device and starts a driver on it, as the
    /// bare-metal guest does on Jailhouse.
    fn driver(&self, id: usize) -> Driver<Hypervisor<'_>> {
        let cfg = jailhouse_net();
        // SAFETY: the fake register block is 4 KiB of aligned memory that
        // lives as long as `self`, accessed only through volatile pointers.
        let regs = unsafe { Registers::new(self.registers[id].base()) };
        let dev = JailhouseDevice::probe(&cfg, regs, PROTOCOL_NET, None).expect("probe");
        let layout = dev.layout();
        let base = self.window.base().as_ptr();
        let section =
            |peer: u16| base.wrapping_add(layout.output_section_offset(peer).unwrap() as usize);
        let len = layout.output_section_size as usize;
        let own_id = dev.id();
        // SAFETY: the window holds the state table at offset 0 (Jailhouse
        // maps it first), is 4-aligned, alive as long as `self`, and the
        // table holds two entries.
        let link = unsafe { DeviceLink::new(dev, self.window.base().cast(), 2, now_us) }
            .expect("an ivshmem-net link");
        // SAFETY: both sections lie inside the fake window, which outlives
        // the driver; only this driver writes its own section.
        let own = unsafe { OwnSection::new(section(own_id), len) }.unwrap();
        // SAFETY: as above, read-only use.
        let peer = unsafe { PeerSection::new(section(1 - own_id), len) }.unwrap();
        let endpoint = Endpoint::new(own, peer, Config::with_mtu(1500)).unwrap();
        Driver::new(
            Hypervisor {
                link,
                link_memory: self,
                id,
            },
            endpoint,
            DriverConfig::default(),
        )
    }
}

/// Peer `id`'s device as the hypervisor makes it behave: a STATE write
/// lands in the state table at once (the write traps).
struct Hypervisor<'a> {
    link: DeviceLink<'a>,
    link_memory: &'a FakeLink,
    id: usize,
}

impl LinkDevice for Hypervisor<'_> {
    type Error = <DeviceLink<'static> as LinkDevice>::Error;

    fn peer_state(&self) -> u32 {
        self.link.peer_state()
    }
    fn publish_state(&mut self, state: LinkState) -> Result<(), Self::Error> {
        self.link.publish_state(state)?;
        let m = self.link_memory;
        m.window.write32(4 * self.id, m.state_register(self.id));
        Ok(())
    }
    fn vectors(&self) -> u32 {
        self.link.vectors()
    }
    fn ring(&mut self, vector: u16) -> Result<(), Self::Error> {
        self.link.ring(vector)
    }
    fn rearm(&mut self) {
        self.link.rearm();
    }
    fn now_us(&self) -> u64 {
        self.link.now_us()
    }
}

/// Steps both drivers (each reads the other's entry once per step) until
/// both have the carrier; panics after a bounded number of rounds.
fn link_up(a: &mut Driver<Hypervisor<'_>>, b: &mut Driver<Hypervisor<'_>>) -> usize {
    for round in 1..=16 {
        let _ = a.poll_link(true);
        let _ = b.poll_link(true);
        if a.carrier() && b.carrier() {
            return round;
        }
    }
    panic!(
        "no link after 16 rounds: {:?}/{:?}, {:?}/{:?}",
        a.local_state(),
        a.peer_state_raw(),
        b.local_state(),
        b.peer_state_raw()
    );
}

/// Sends one frame from `from` to `to` and checks it arrives intact.
fn frame(from: &mut Driver<Hypervisor<'_>>, to: &mut Driver<Hypervisor<'_>>, seed: u8) {
    let data: Vec<u8> = (0..200)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    from.endpoint_mut().send(&data).expect("send");
    let _ = from.flush();
    let mut buf = vec![0u8; 2048];
    let n = to.recv(&mut buf).expect("the frame arrives");
    assert_eq!(&buf[..n], &data[..]);
    let _ = to.flush();
    from.reclaim();
}

#[test]
fn restart_with_a_stale_run_state_register_relinks() {
    let memory = FakeLink::new();
    let mut survivor = memory.driver(0);
    {
        let mut restarting = memory.driver(1);
        link_up(&mut survivor, &mut restarting);
        frame(&mut survivor, &mut restarting, 1);
        frame(&mut restarting, &mut survivor, 2);
        // The process behind peer 1 is killed here: its driver ends without
        // a shutdown (`Driver` has no destructor that could publish
        // anything).
    }
    let run = LinkState::Run.raw();
    assert_eq!(memory.state_register(1), run, "STATE keeps RUN");
    assert_eq!(memory.table_entry(1), run, "the table keeps RUN");
    let _ = survivor.poll_link(true);
    assert!(
        survivor.carrier(),
        "the survivor cannot tell: it keeps RUN and its carrier"
    );

    // A new process probes the same device. Its first step must publish
    // RESET, before anything else, even though the peer is in RUN.
    let mut restarted = memory.driver(1);
    let _ = restarted.poll_link(true);
    assert_eq!(
        memory.state_register(1),
        LinkState::Reset.raw(),
        "the restarted driver's first publication must be RESET"
    );
    assert_eq!(memory.table_entry(1), LinkState::Reset.raw());
    let rounds = link_up(&mut survivor, &mut restarted);
    let c = survivor.counters();
    assert_eq!(
        (c.carrier_downs, c.link_resets, c.protocol_faults),
        (1, 1, 0),
        "the survivor drops the link once, for the peer's RESET, which is no fault: {c:?}"
    );
    assert!(
        rounds <= 4,
        "relinking took {rounds} rounds of both sides' steps"
    );
    frame(&mut survivor, &mut restarted, 3);
    frame(&mut restarted, &mut survivor, 4);
}
