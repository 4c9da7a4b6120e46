//! What the ivshmem fuzz targets check, shared by the coverage-guided
//! targets (`fuzz_targets/*.rs`, `cargo +nightly fuzz run <target>` in
//! crates/ivshmem) and the corpus replay in the normal test run
//! (`crates/ivshmem/tests/fuzz_replay.rs`). Each function takes the raw
//! fuzzer input, feeds it to the parsers as something a peer, the server or
//! the platform wrote, and asserts the safety properties: no panic, every
//! configuration-space access aligned and inside the 256-byte legacy space,
//! every accepted layout inside its window, typed errors that render.

// Each includer uses only some of the entry points.
#![allow(dead_code)]

use core::ptr::NonNull;

use ivshmem::jailhouse::{self, JailhouseDevice, VendorCapability};
use ivshmem::layout::{LAYOUT_PAGE_SIZE, LayoutPage, PAGE_SIZE, PROTOCOL_NET, SharedMemoryLayout};
use ivshmem::pci::{
    self, Bar, ConfigSpace, LEGACY_CONFIG_SPACE_SIZE, MsixCapability, MsixEntryField,
};
use ivshmem::{Ivshmem, Profile, QemuDevice, qemu};

/// How far an input got: whether some device probe accepted it. The corpus
/// replay checks that its inputs reach both acceptance and refusal, so that
/// the checks on accepted results are exercised.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// A probe (QEMU or Jailhouse) accepted the input.
    pub probed: bool,
}

/// Little-endian reader of the fuzzer's parameter bytes; missing bytes are 0.
struct Params<'a>(&'a [u8]);

impl Params<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// 8-aligned heap memory standing in for a BAR, reached only through raw
/// pointers and volatile accesses (peers may write real shared memory at
/// any time, so no references to it are made).
struct FakeWindow {
    words: NonNull<u64>,
    len: usize,
}

impl FakeWindow {
    fn new(bytes: usize) -> Self {
        let len = bytes.div_ceil(8).max(1);
        let boxed: Box<[u64]> = vec![0u64; len].into_boxed_slice();
        let words = NonNull::new(Box::into_raw(boxed).cast::<u64>()).expect("Box is non-null");
        FakeWindow { words, len }
    }
    fn base(&self) -> NonNull<u8> {
        self.words.cast()
    }
    fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len * 8);
        let dst = self.base().as_ptr().wrapping_add(offset);
        // SAFETY: `dst..dst + bytes.len()` lies inside the allocation
        // (asserted); the source is a Rust slice, not this allocation, so the
        // ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }

    fn read32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.len * 8 && offset.is_multiple_of(4));
        let src = self.base().as_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: 4-aligned (the base is 8-aligned) and inside the allocation
        // (asserted).
        unsafe { src.read_volatile() }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.write_bytes(offset, &value.to_ne_bytes());
    }
}

impl Drop for FakeWindow {
    fn drop(&mut self) {
        let slice = core::ptr::slice_from_raw_parts_mut(self.words.as_ptr(), self.len);
        // SAFETY: from Box::into_raw of a Box<[u64]> of `len` elements,
        // released exactly once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Windows up to this size are allocated to run the device probes on them.
const MAX_PROBED_WINDOW: u64 = 0x4_0000;

/// Checks everything a caller may rely on in an accepted layout: every
/// region lies inside `window_size` bytes (computed without overflow), the
/// state table holds one entry per peer, the output sections follow each
/// other without overlap.
pub fn check_layout(layout: &SharedMemoryLayout, window_size: u64) {
    assert!(layout.max_peers >= 2);
    assert!(layout.state_table_size >= 4 * u64::from(layout.max_peers));
    for v in [
        layout.state_table_offset,
        layout.state_table_size,
        layout.rw_section_size,
        layout.output_section_size,
    ] {
        assert_eq!(v % PAGE_SIZE, 0, "unaligned region {v:#x} accepted");
    }
    let end = layout
        .state_table_offset
        .checked_add(layout.state_table_size)
        .and_then(|v| v.checked_add(layout.rw_section_size))
        .and_then(|v| v.checked_add(layout.output_section_size * u64::from(layout.max_peers)))
        .expect("an accepted layout does not overflow");
    assert_eq!(layout.end(), end);
    assert!(
        end <= window_size,
        "{layout:?} ends beyond {window_size:#x}"
    );
    for peer in 0..layout.max_peers {
        let entry = layout.state_entry_offset(peer).expect("entry of a peer");
        assert!(entry >= layout.state_table_offset);
        assert!(entry + 4 <= layout.state_table_offset + layout.state_table_size);
        let out = layout
            .output_section_offset(peer)
            .expect("section of a peer");
        assert!(out >= layout.rw_section_offset() + layout.rw_section_size);
        assert!(out + layout.output_section_size <= end);
    }
    assert_eq!(layout.state_entry_offset(layout.max_peers), None);
    assert_eq!(layout.output_section_offset(layout.max_peers), None);
}

/// Input: the 0x30-byte layout page the server wrote, then the window size
/// (u64) and IVPosition (u32). Checks `LayoutPage::parse`, the volatile
/// reader `qemu::read_layout_page` and `QemuDevice::probe`.
pub fn layout_page(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let mut page = [0u8; LayoutPage::ENCODED_LEN];
    let n = data.len().min(page.len());
    page[..n].copy_from_slice(&data[..n]);
    let mut params = Params(&data[n..]);
    let raw_window = params.u64();
    let iv_position = params.u32();

    // Two window sizes: the fuzzer's, and one small enough to allocate and
    // probe (the fuzzer's low bits, page-granular).
    let small_window = LAYOUT_PAGE_SIZE + (raw_window % MAX_PROBED_WINDOW) / PAGE_SIZE * PAGE_SIZE;
    for window_size in [raw_window, small_window] {
        let parsed = LayoutPage::parse(&page, window_size);
        match &parsed {
            Ok(p) => {
                assert!(p.vectors > 0);
                assert!(p.layout.state_table_offset >= LAYOUT_PAGE_SIZE);
                check_layout(&p.layout, window_size);
                // What was accepted is exactly what was written.
                assert_eq!(p.encode(), page, "encode(parse(page)) != page");
                let _ = p.window_size();
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }

        // The page as the driver reads it: volatile dwords from BAR2.
        let mapped = window_size.min(MAX_PROBED_WINDOW);
        if mapped < window_size {
            continue;
        }
        // At least the page, so that the page can be written even when the
        // window claims to be smaller (the reader must then refuse it).
        let bar2 = FakeWindow::new(mapped.max(LAYOUT_PAGE_SIZE) as usize);
        bar2.write_bytes(0, &page);
        // SAFETY: `bar2` is 8-aligned and valid for `window_size` bytes.
        let read = unsafe { qemu::read_layout_page(bar2.base(), window_size) };
        match (&read, &parsed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(ivshmem::DeviceError::Layout(a)), Err(b)) => assert_eq!(a, b),
            (Err(ivshmem::DeviceError::WindowTooSmall { .. }), _) => {
                assert!(window_size < LAYOUT_PAGE_SIZE)
            }
            other => panic!("read_layout_page and parse disagree: {other:?}"),
        }

        let bar0 = FakeWindow::new(qemu::Registers::REGION_SIZE as usize);
        bar0.write32(0x08, iv_position);
        // SAFETY: `bar0` is 8-aligned, valid for 0x100 bytes and only
        // accessed through raw pointers.
        let regs = unsafe { qemu::Registers::new(bar0.base()) };
        // SAFETY: `bar2` is valid for reads and writes of `window_size` bytes
        // and outlives the device.
        let probed = unsafe { QemuDevice::probe(regs, bar2.base(), window_size, PROTOCOL_NET) };
        match probed {
            Ok(dev) => {
                outcome.probed = true;
                let p = parsed.expect("probe accepted a page parse refused");
                assert_eq!(p.protocol, PROTOCOL_NET);
                assert_eq!(dev.layout(), p.layout);
                let id = dev.id();
                assert!(u32::from(id) == iv_position && id < dev.max_peers());
                // Publishing the own state writes exactly the own entry of
                // the state table, inside the window.
                let entry = p.layout.state_entry_offset(id).expect("own entry");
                dev.set_own_state(0x5eed_0003);
                assert_eq!(bar2.read32(entry as usize), 0x5eed_0003);
                assert!(dev.ring(dev.max_peers(), 0).is_err());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    outcome
}

/// A configuration space held in memory that enforces the contract of
/// [`ConfigSpace`] on its user: every access is an aligned dword inside the
/// legacy 256-byte space (a port-I/O access beyond it would address another
/// function). Models what software sees on a real bus: BAR bits outside
/// `bar_writable` and Status are read-only (Status is write-1-to-clear, and
/// the crate writes 0 there), everything else stores what is written.
pub struct StrictConfig {
    /// Up to 4 KiB (PCIe extended space); bytes not given read as 0xFF.
    bytes: Vec<u8>,
    /// Writable bits of each BAR dword (the sizing mask); the type bits
    /// (0 for I/O BARs, 3:0 for memory BARs) are read-only on top of it.
    bar_writable: [u32; 6],
    /// Whether `bar_writable` models a real decoder (address bits below the
    /// size read as 0), so that the size `size_bar` finds is known.
    bar_modelled: [bool; 6],
}

impl StrictConfig {
    fn check(&self, offset: u16) -> usize {
        assert_eq!(
            offset % 4,
            0,
            "unaligned configuration access at {offset:#x}"
        );
        assert!(
            offset < LEGACY_CONFIG_SPACE_SIZE,
            "configuration access at {offset:#x}, beyond the legacy space"
        );
        usize::from(offset)
    }
}

impl ConfigSpace for StrictConfig {
    fn read32(&self, offset: u16) -> u32 {
        let at = self.check(offset);
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap())
    }

    fn write32(&mut self, offset: u16, value: u32) {
        let at = self.check(offset);
        let old = u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap());
        let new = match offset {
            // Command RW, Status RW1C.
            pci::COMMAND => (value & 0xFFFF) | (old & !(value & 0xFFFF_0000) & 0xFFFF_0000),
            o if (pci::BAR0..pci::BAR0 + 24).contains(&o) => {
                let w = self.bar_writable[usize::from((o - pci::BAR0) / 4)];
                let w = w & if old & 1 == 1 { !0x3 } else { !0xF };
                (old & !w) | (value & w)
            }
            _ => value,
        };
        self.bytes[at..at + 4].copy_from_slice(&new.to_le_bytes());
    }
}

/// Input: 24 parameter bytes (MAX_PEERS u32, ID u32, BAR2 size u64, and 8
/// bytes choosing the writable BAR bits), then a configuration-space image
/// of any length up to 4096 bytes (a sysfs `config` file is 64, 256 or
/// 4096 bytes long). Runs identification, the capability walk, the vendor
/// capability and its validation, the MSI-X capability, BAR decoding,
/// sizing and programming, and the Jailhouse probe.
pub fn config_space(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let mut params = Params(data);
    let max_peers = params.u32();
    let id = params.u32();
    let bar2_size = params.u64();
    let bar_sizes: [u8; 8] = params.take();
    let image = params.0;
    let mut bytes = vec![0xFFu8; 4096];
    let n = image.len().min(4096);
    bytes[..n].copy_from_slice(&image[..n]);
    // Per BAR dword: 0 = unimplemented (reads 0, nothing writable); 4..=31
    // = a decoder of 2^k bytes (address bits k.. writable, bits below read
    // as 0); anything else = plain memory (every non-type bit writable).
    let mut bar_writable = [u32::MAX; 6];
    let mut bar_modelled = [false; 6];
    for i in 0..6 {
        let at = usize::from(pci::BAR0) + 4 * i;
        let old = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let new = match bar_sizes[i] % 40 {
            0 => {
                bar_writable[i] = 0;
                bar_modelled[i] = true;
                0
            }
            k @ 4..=31 => {
                bar_writable[i] = u32::MAX << k;
                bar_modelled[i] = true;
                old & (bar_writable[i] | 0xF)
            }
            _ => old,
        };
        bytes[at..at + 4].copy_from_slice(&new.to_le_bytes());
    }
    let mut cfg = StrictConfig {
        bytes,
        bar_writable,
        bar_modelled,
    };
    let bar2_size = (bar_sizes[6] & 1 == 1).then_some(bar2_size);

    let header = pci::Header::read(&cfg);
    let _ = Profile::from_ids(header.vendor_id, header.device_id);
    if let Ok(identity) = jailhouse::identify(&cfg) {
        assert_eq!(
            (identity.header.vendor_id, identity.header.device_id),
            (0x110a, 0x4106)
        );
        assert_eq!(identity.header.class.base, jailhouse::BASE_CLASS);
        assert_eq!(
            identity.protocol,
            jailhouse::protocol_of(identity.header.class)
        );
    }
    if let Ok(h) = qemu::identify(&cfg) {
        assert_eq!(
            (h.vendor_id, h.device_id),
            (qemu::VENDOR_ID, qemu::DEVICE_ID)
        );
    }

    // The capability walk: bounded, aligned, past the header, no repeats,
    // an error only as the last item.
    let caps: Vec<_> = pci::capabilities(&cfg).collect();
    assert!(caps.len() <= 49, "walk is bounded: {}", caps.len());
    let mut seen = [false; 256];
    for (i, cap) in caps.iter().enumerate() {
        match cap {
            Ok(cap) => {
                assert!(cap.offset >= 0x40 && cap.offset % 4 == 0);
                assert!(!seen[usize::from(cap.offset)], "capability visited twice");
                seen[usize::from(cap.offset)] = true;
            }
            Err(e) => {
                assert_eq!(i, caps.len() - 1, "an error ends the walk");
                assert!(!e.to_string().is_empty());
            }
        }
    }

    match VendorCapability::find(&cfg) {
        Ok(cap) => {
            assert!(u16::from(cap.offset) + u16::from(cap.length) <= 0x100);
            assert!(cap.length == 0x18 || cap.length >= 0x20);
            assert_eq!(cap.base_address.is_some(), cap.length >= 0x20);
            match cap.validate(max_peers, id, bar2_size) {
                Ok(layout) => {
                    assert!(u32::from(layout.max_peers) == max_peers && id < max_peers);
                    assert!(layout.output_section_size > 0);
                    match cap.base_address {
                        Some(base) => {
                            assert_eq!(base % PAGE_SIZE, 0);
                            check_layout(&layout, u64::MAX - base);
                        }
                        None => check_layout(&layout, bar2_size.expect("a window")),
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
            let before = cap.one_shot(&cfg);
            cap.set_one_shot(&mut cfg, !before);
            assert_eq!(cap.one_shot(&cfg), !before);
            cap.set_one_shot(&mut cfg, before);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // The Jailhouse probe with the fuzzer's ID and MAX_PEERS registers.
    let bar0 = FakeWindow::new(jailhouse::Registers::REGION_SIZE as usize);
    bar0.write32(0x00, id);
    bar0.write32(0x04, max_peers);
    // SAFETY: `bar0` is 8-aligned, valid for 0x1000 bytes and only accessed
    // through raw pointers.
    let regs = unsafe { jailhouse::Registers::new(bar0.base()) };
    match JailhouseDevice::probe(&cfg, regs, PROTOCOL_NET, bar2_size) {
        Ok(dev) => {
            outcome.probed = true;
            assert_eq!(dev.protocol(), PROTOCOL_NET);
            assert_eq!(u32::from(dev.max_peers()), max_peers);
            assert!(u32::from(dev.id()) == id && id < max_peers);
            assert!(
                dev.ring(dev.max_peers(), 0).is_err(),
                "ring beyond the peers accepted"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    match MsixCapability::find(&cfg) {
        Ok(Some(mut msix)) => {
            assert!(msix.table_bar <= 5 && msix.pba_bar <= 5);
            assert!((1..=2048).contains(&msix.table_size));
            assert_eq!(msix.table_offset % 8, 0);
            assert_eq!(msix.pba_offset % 8, 0);
            let last = msix.table_size - 1;
            let end = msix
                .entry_offset(last, MsixEntryField::VectorControl)
                .expect("last entry");
            assert_eq!(
                end,
                u64::from(msix.table_offset) + u64::from(last) * 16 + 0xC
            );
            assert_eq!(
                msix.entry_offset(msix.table_size, MsixEntryField::AddressLow),
                None
            );
            msix.set_control(&mut cfg, true, true);
            assert!(msix.enabled && msix.function_masked);
            let again = MsixCapability::find(&cfg)
                .expect("still parses")
                .expect("still there");
            assert!(again.enabled && again.function_masked);
            assert_eq!(again.table_size, msix.table_size);
        }
        Ok(None) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // BARs: decoding, sizing (which must leave the space as it found it),
    // programming.
    for index in 0..=6u8 {
        let decoded = pci::read_bar(&cfg, index);
        if index > 5 {
            assert!(decoded.is_err());
        }
        let before = cfg.bytes.clone();
        match pci::size_bar(&mut cfg, index) {
            Ok((bar, size)) => {
                assert_eq!(Ok(bar), decoded);
                assert!(
                    cfg.bytes == before,
                    "size_bar did not restore BAR{index}/Command"
                );
                if let Bar::Memory32 { .. } = bar
                    && cfg.bar_modelled[usize::from(index)]
                {
                    let w = cfg.bar_writable[usize::from(index)] & !0xF;
                    let expected = if w == 0 {
                        0
                    } else {
                        u64::from((!w).wrapping_add(1))
                    };
                    assert_eq!(size, expected, "BAR{index} sized wrong");
                }
            }
            Err(e) => {
                assert!(decoded.is_err());
                assert!(!e.to_string().is_empty());
            }
        }
        if let Ok(bar) = pci::program_bar(&mut cfg, index, 0xfebf_0000) {
            assert_eq!(
                bar.is_memory(),
                decoded
                    .expect("programmed a BAR that does not decode")
                    .is_memory()
            );
        }
    }
    outcome
}
