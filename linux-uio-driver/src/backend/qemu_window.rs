//! The QEMU ivshmem-doorbell profile over mapped memory, whoever mapped it
//! (a UIO driver or vfio-pci): the layout page, the peer IDs, the
//! write-protection of what this peer must never write, the own state entry
//! and the doorbell. The UIO and VFIO backends own the mappings and the
//! interrupts; this is the part they share.

use std::ptr::NonNull;

use ivnet_driver::{STATE_VECTOR, check_net_link, data_vector};
use ivnet_ring::LinkState;
use ivnet_ring::shm::load_acquire_u32;
use ivshmem::OwnStateEntry;
use ivshmem::layout::{LAYOUT_PAGE_SIZE, LayoutPage};
use ivshmem::qemu;

use super::BackendError;

/// One peer's view of an ivshmem-doorbell link: BAR0 registers, BAR2
/// window, and the own state entry in a second view of BAR2.
pub struct QemuWindow {
    regs: NonNull<u8>,
    window: NonNull<u8>,
    own_state: OwnStateEntry,
    layout: LayoutPage,
    id: u16,
    peer: u16,
}

impl QemuWindow {
    /// Reads the layout page and the own ID, checks the link's shape,
    /// write-protects the layout page, the state table and the peer's
    /// section in `window` and everything but the own entry's page in
    /// `view`. `name` prefixes error messages.
    ///
    /// # Safety
    /// `regs` maps BAR0 (at least 0x10 bytes, uncached, writable); `window`
    /// and `view` are two shared, writable mappings of all of BAR2
    /// (`window_len` bytes each). All three stay mapped while the result
    /// lives, and nothing holds references into them.
    pub unsafe fn new(
        name: &str,
        regs: NonNull<u8>,
        window: NonNull<u8>,
        view: NonNull<u8>,
        window_len: usize,
    ) -> Result<Self, BackendError> {
        let unsupported = |what: String| BackendError::Unsupported(format!("{name}: {what}"));
        // SAFETY: BAR2 is mapped readable for `window_len` bytes (caller);
        // the page is copied out once and only the copy is parsed.
        let layout = unsafe { qemu::read_layout_page(window, window_len as u64) }
            .map_err(|e| unsupported(format!("layout page: {e}")))?;
        // SAFETY: BAR0 as the caller promises.
        let raw_id = unsafe { qemu::Registers::new(regs) }.iv_position();
        let (id, peer) =
            check_net_link(layout.protocol, u32::from(layout.layout.max_peers), raw_id)
                .map_err(|e| unsupported(e.to_string()))?;
        let own_off = layout
            .layout
            .state_entry_offset(id)
            .expect("id < max_peers") as usize;
        let own_entry = NonNull::new(view.as_ptr().wrapping_add(own_off).cast::<u32>())
            .expect("inside a mapping");
        // SAFETY: the own entry lies in the page of `view` that stays
        // read-write (`protect`), 4-aligned in the validated layout; `view`
        // outlives the result (caller); state words are accessed atomically.
        let own_state = unsafe { OwnStateEntry::new(own_entry) }.map_err(BackendError::Doorbell)?;
        let me = QemuWindow {
            regs,
            window,
            own_state,
            layout,
            id,
            peer,
        };
        // SAFETY: both views map all of BAR2, which the layout was
        // validated against (caller); no references into them.
        unsafe { me.protect(view.as_ptr(), window_len) }?;
        Ok(me)
    }

    /// Write-protects the layout page, the state table and the peer's
    /// output section in the window (QEMU maps all of BAR2 read-write);
    /// in the state view, everything but the page of the own state entry
    /// becomes inaccessible.
    ///
    /// # Safety
    /// `view` maps all of BAR2 (`view_len` bytes), as does the window.
    unsafe fn protect(&self, view: *const u8, view_len: usize) -> Result<(), BackendError> {
        let l = &self.layout.layout;
        let peer_off = l
            .output_section_offset(self.peer)
            .expect("peer < max_peers") as usize;
        let page = LAYOUT_PAGE_SIZE as usize;
        let own_page =
            l.state_entry_offset(self.id).expect("id < max_peers") as usize & !(page - 1);
        let window = self.window.as_ptr().cast_const();
        for (base, off, len, prot) in [
            (window, 0, page, libc::PROT_READ),
            (
                window,
                l.state_table_offset as usize,
                l.state_table_size as usize,
                libc::PROT_READ,
            ),
            (
                window,
                peer_off,
                l.output_section_size as usize,
                libc::PROT_READ,
            ),
            (view, 0, own_page, libc::PROT_NONE),
            (
                view,
                own_page + page,
                view_len - own_page - page,
                libc::PROT_NONE,
            ),
        ] {
            if len == 0 {
                continue;
            }
            // SAFETY: [off, off + len) lies inside the mapping (the layout
            // was validated against the window size; both views map all of
            // BAR2) and is page-aligned (validated: the state table and the
            // sections are 4 KiB multiples); the bridge holds no reference
            // into it.
            let rc = unsafe {
                libc::mprotect(
                    base.wrapping_add(off) as *mut libc::c_void,
                    len.next_multiple_of(page),
                    prot,
                )
            };
            if rc != 0 {
                return Err(BackendError::Io {
                    what: "write-protecting the shared memory",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// This peer's ID.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The other peer's ID.
    pub fn peer(&self) -> u16 {
        self.peer
    }

    /// The link's MSI-X vectors (from the layout page).
    pub fn vectors(&self) -> u32 {
        self.layout.vectors
    }

    /// The vector data doorbells use.
    pub fn data_vector(&self) -> u16 {
        data_vector(self.layout.vectors)
    }

    /// Size of each output section.
    pub fn section_len(&self) -> usize {
        self.layout.layout.output_section_size as usize
    }

    /// "peer 1 of 2 (other peer 0), output sections …, N vectors (data on
    /// vector V)", for the backends' descriptions.
    pub fn summary(&self) -> String {
        format!(
            "peer {} of 2 (other peer {}), output sections {:#x} bytes, {} vectors (data on vector {})",
            self.id,
            self.peer,
            self.section_len(),
            self.vectors(),
            self.data_vector()
        )
    }

    fn section(&self, peer: u16) -> *mut u8 {
        let off = self
            .layout
            .layout
            .output_section_offset(peer)
            .expect("peer < max_peers") as usize;
        self.window.as_ptr().wrapping_add(off)
    }

    /// The own output section (read-write).
    pub fn own_section(&self) -> *mut u8 {
        self.section(self.id)
    }

    /// The peer's output section (read-only).
    pub fn peer_section(&self) -> *const u8 {
        self.section(self.peer)
    }

    /// The peer's state-table entry.
    pub fn peer_state(&self) -> u32 {
        let off = self
            .layout
            .layout
            .state_entry_offset(self.peer)
            .expect("peer < max_peers") as usize;
        // SAFETY: the entry lies inside the validated state table in the
        // mapped window (read-only), is 4-aligned, and written only
        // atomically by the peer or the server.
        unsafe { load_acquire_u32(self.window.as_ptr().wrapping_add(off).cast()) }
    }

    /// Stores the own state and rings the peer's vector 0.
    pub fn publish_state(&mut self, state: LinkState) -> Result<(), BackendError> {
        let (regs, vectors, peer) = (self.regs, self.layout.vectors, self.peer);
        self.own_state
            .publish(state.raw(), || doorbell(regs, vectors, peer, STATE_VECTOR))
    }

    /// Rings `vector` of the peer.
    pub fn ring(&self, vector: u16) -> Result<(), BackendError> {
        doorbell(self.regs, self.layout.vectors, self.peer, vector)
    }
}

fn doorbell(regs: NonNull<u8>, vectors: u32, peer: u16, vector: u16) -> Result<(), BackendError> {
    // Every peer of the link has the layout page's vectors; QEMU drops a
    // ring beyond them: refuse it here, so it is not counted as rung.
    if u32::from(vector) >= vectors {
        return Err(BackendError::Doorbell(
            ivshmem::DeviceError::VectorOutOfRange {
                vector,
                max: vectors.saturating_sub(1).min(u32::from(u16::MAX)) as u16,
            },
        ));
    }
    // SAFETY: BAR0 mapped (>= 0x10 bytes) while the window lives (`new`'s
    // contract). `ring` fences first: published indices are visible before
    // the interrupt arrives.
    unsafe { qemu::Registers::new(regs) }
        .ring(peer, vector)
        .map_err(BackendError::Doorbell)
}
