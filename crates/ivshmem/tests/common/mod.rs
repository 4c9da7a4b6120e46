//! Configuration-space images built from the specification tables.
#![allow(dead_code)]

use ivshmem::pci::ConfigImage;

/// Parameters of a Jailhouse ivshmem 2.0 device, as a cell config sets them.
#[derive(Clone, Copy, Debug)]
pub struct JailhouseParams {
    pub protocol: u16,
    pub state_table_size: u32,
    pub rw_section_size: u64,
    pub output_section_size: u64,
    pub base: u64,
    pub msix_vectors: u16,
}

/// `JAILHOUSE_SHMEM_NET_REGIONS(0x3f100000, id)` with 2 MSI-X vectors, as in
/// `configs/x86/qemu-x86.c` and `linux-x86-demo.c`.
pub const NET_LINK: JailhouseParams = JailhouseParams {
    protocol: 0x0001,
    state_table_size: 0x1000,
    rw_section_size: 0,
    output_section_size: 0x7f000,
    base: 0x3f10_0000,
    msix_vectors: 2,
};

/// Jailhouse's `default_cspace[]` as `ivshmem_reset` leaves it
/// (hypervisor/ivshmem.c; reference §1.9), dword by dword. BARs read 0 until
/// the guest programs them.
pub fn jailhouse_cspace(p: JailhouseParams) -> ConfigImage {
    let mut img = ConfigImage::zeroed();
    img.put32(0x00, 0x4106_110a);
    img.put32(0x04, 0x0010_0000); // status = capabilities list, command 0
    img.put32(0x08, 0xff00_0000 | u32::from(p.protocol) << 8);
    img.put32(0x2c, 0x4106_110a);
    img.put32(0x34, 0x40);
    // 0x3c: INTx pin only for INTx devices; MSI-X devices leave it 0.
    img.put32(0x40, 0x20 << 16 | 0x60 << 8 | 0x09);
    img.put32(0x44, p.state_table_size);
    img.put64(0x48, p.rw_section_size);
    img.put64(0x50, p.output_section_size);
    img.put64(0x58, p.base);
    img.put32(0x60, 0x11 | u32::from(p.msix_vectors - 1) << 16);
    img.put32(0x64, 0x0000_0001); // table: BIR 1, offset 0
    img.put32(0x68, 0x0000_0101); // PBA: BIR 1, offset 0x100
    img
}

/// The default net link image.
pub fn jailhouse_net() -> ConfigImage {
    jailhouse_cspace(NET_LINK)
}

/// QEMU 7.2 `ivshmem-doorbell,vectors=2` at 00:04.0 on `-machine pc`, dumped
/// with qtest before firmware ran (BARs unassigned): status = capabilities,
/// class 05/00 revision 1, BAR2 64-bit prefetchable, MSI-X at 0x40 with the
/// table at BAR1+0 and the PBA at BAR1+0x800.
pub fn qemu_doorbell(vectors: u16) -> ConfigImage {
    let mut img = ConfigImage::zeroed();
    img.put32(0x00, 0x1110_1af4);
    img.put32(0x04, 0x0010_0000);
    img.put32(0x08, 0x0500_0001);
    img.put32(0x18, 0x0000_000c);
    img.put32(0x2c, 0x1100_1af4);
    img.put32(0x34, 0x40);
    img.put32(0x40, 0x11 | u32::from(vectors - 1) << 16);
    img.put32(0x44, 0x0000_0001);
    img.put32(0x48, 0x0000_0801);
    img
}

/// Heap memory standing in for a BAR: 4-byte aligned, accessed only through
/// raw pointers and volatile operations, like the device memory it replaces.
pub struct FakeBar {
    words: core::ptr::NonNull<u32>,
    len: usize,
}

impl FakeBar {
    /// A zeroed fake BAR of `bytes` bytes (a multiple of 8).
    pub fn new(bytes: usize) -> Self {
        assert!(bytes.is_multiple_of(8) && bytes > 0);
        // u64 elements make the allocation 8-aligned, like a real BAR.
        let boxed: Box<[u64]> = vec![0u64; bytes / 8].into_boxed_slice();
        let words = core::ptr::NonNull::new(Box::into_raw(boxed).cast::<u32>()).unwrap();
        FakeBar {
            words,
            len: bytes / 4,
        }
    }

    /// Base pointer to hand to `Registers::new` or `read_layout_page`.
    pub fn base(&self) -> core::ptr::NonNull<u8> {
        self.words.cast()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.len * 4) as u64
    }

    /// Pointer to the dword at byte `offset` (checked to be in bounds).
    fn word(&self, offset: usize) -> *mut u32 {
        assert!(offset.is_multiple_of(4) && offset / 4 < self.len);
        self.words.as_ptr().wrapping_add(offset / 4)
    }

    /// Reads the dword at byte `offset`.
    pub fn read32(&self, offset: usize) -> u32 {
        let word = self.word(offset);
        // SAFETY: `word` is in bounds and 4-aligned (checked by `word`); the
        // memory is owned by this FakeBar and only accessed through raw
        // pointers.
        unsafe { word.read_volatile() }
    }

    /// Writes the dword at byte `offset`.
    pub fn write32(&self, offset: usize, value: u32) {
        let word = self.word(offset);
        // SAFETY: as in read32.
        unsafe { word.write_volatile(value) }
    }

    /// Copies `bytes` to byte `offset` (for writing a layout page).
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len * 4);
        let dst = self.words.as_ptr().cast::<u8>().wrapping_add(offset);
        // SAFETY: the range is in bounds (asserted); source and destination
        // cannot overlap (the source is a Rust slice, not this allocation).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }
}

impl Drop for FakeBar {
    fn drop(&mut self) {
        let slice =
            core::ptr::slice_from_raw_parts_mut(self.words.as_ptr().cast::<u64>(), self.len / 2);
        // SAFETY: the pointer came from Box::into_raw of a Box<[u64]> of
        // len / 2 elements, and is released exactly once.
        drop(unsafe { Box::from_raw(slice) });
    }
}
