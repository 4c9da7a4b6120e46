//! The server's shared memory: creation, sizing, and the layout page.
//!
//! The memory is a memfd by default: anonymous, no file to clean up, sealed
//! against shrinking and growing so that no peer can truncate it under the
//! others' mappings (which would turn their accesses into `SIGBUS`). With
//! `--shm-path` it is a file on tmpfs or hugetlbfs instead.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::shared::shared_u32;

use ivshmem::layout::{LAYOUT_PAGE_SIZE, LayoutPage};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};

/// Where the shared memory comes from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ShmBacking {
    /// An anonymous, sealed memfd (the default).
    #[default]
    Memfd,
    /// A path: a directory (tmpfs such as `/dev/shm`, or a hugetlbfs mount)
    /// gets an anonymous file that is unlinked right after creation; any
    /// other path names a new file that is created (it must not exist) and
    /// removed when the server exits.
    Path(PathBuf),
}

/// Error while creating the shared memory.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The layout does not fit 64-bit arithmetic.
    #[error("shared memory size overflows")]
    Overflow,
    /// `--shm-path` names an existing file that is not a directory.
    #[error("{0}: exists and is not a directory (refusing to reuse or overwrite it)")]
    PathExists(PathBuf),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShmError {
    let what = what.into();
    move |source| ShmError::Io { what, source }
}

/// The shared memory as the server holds it: the fd it hands to every peer,
/// and a read-write mapping of the layout page and state table (the server
/// plays the hypervisor, the only party allowed to write other peers' state
/// entries).
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    window_size: u64,
    layout: LayoutPage,
    /// Layout page and state table, rounded up to the backing's page size.
    header: MmapRaw,
    /// A named file to remove on drop.
    remove_on_drop: Option<PathBuf>,
}

impl SharedMemory {
    /// Creates the memory, sizes it to the next power of two that holds the
    /// layout (and is a multiple of the backing's page size, for hugetlbfs),
    /// writes the layout page and zeroes the state table.
    ///
    /// On error nothing is left behind: a named file that was created is
    /// removed again.
    pub fn create(backing: &ShmBacking, layout: LayoutPage) -> Result<Self, ShmError> {
        let (file, remove_on_drop) = match backing {
            ShmBacking::Memfd => {
                let fd = rustix::fs::memfd_create(
                    "ivshmem-server",
                    MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
                )
                .map_err(|e| io_err("memfd_create")(e.into()))?;
                (File::from(fd), None)
            }
            ShmBacking::Path(path) => open_backing_file(path)?,
        };
        // From here on, `guard` removes a named file if anything fails.
        let guard = RemoveGuard(remove_on_drop);

        let layout_end = layout.layout.end();
        let pow2 = layout.window_size().ok_or(ShmError::Overflow)?;
        let stat = rustix::fs::fstat(&file).map_err(|e| io_err("fstat shared memory")(e.into()))?;
        // hugetlbfs reports its huge page size as the block size; sizes and
        // mapping offsets there must be multiples of it. Both are powers of
        // two, so the maximum is one too.
        let granule = u64::try_from(stat.st_blksize)
            .unwrap_or(0)
            .max(LAYOUT_PAGE_SIZE);
        let granule = if granule.is_power_of_two() {
            granule
        } else {
            LAYOUT_PAGE_SIZE
        };
        let window_size = pow2.max(granule);
        debug_assert!(window_size >= layout_end);

        rustix::fs::ftruncate(&file, window_size).map_err(|e| {
            io_err(format!("ftruncate shared memory to {window_size:#x}"))(e.into())
        })?;
        if matches!(backing, ShmBacking::Memfd) {
            rustix::fs::fcntl_add_seals(
                &file,
                SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
            )
            .map_err(|e| io_err("seal memfd")(e.into()))?;
        }

        let state_end = layout.layout.rw_section_offset();
        let header_len = state_end
            .div_ceil(granule)
            .checked_mul(granule)
            .ok_or(ShmError::Overflow)?;
        let header_len =
            usize::try_from(header_len.min(window_size)).map_err(|_| ShmError::Overflow)?;
        let header = MmapOptions::new()
            .len(header_len)
            .map_raw(&file)
            .map_err(io_err("map layout page and state table"))?;

        let shm = SharedMemory {
            fd: file.into(),
            window_size,
            layout,
            header,
            remove_on_drop: guard.disarm(),
        };
        shm.write_header();
        Ok(shm)
    }

    fn write_header(&self) {
        let page = self.layout.encode();
        let state_end = self.layout.layout.rw_section_offset() as usize;
        let base = self.header.as_mut_ptr();
        // SAFETY: `header` maps at least `state_end` bytes (see `create`), so
        // the whole range [0, state_end) is valid for writes. No peer is
        // connected yet (this runs before the socket exists), so nothing else
        // accesses the memory concurrently; the page is published to peers
        // by the happens-before of handing out the fd.
        unsafe { std::ptr::write_bytes(base, 0, state_end) };
        // SAFETY: as above; `page` is 0x30 bytes, inside the first page.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), base, page.len()) };
    }

    /// The fd handed to peers with the `-1` message.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size of the window (a power of two).
    pub fn window_size(&self) -> u64 {
        self.window_size
    }

    /// The layout written into the first page.
    pub fn layout(&self) -> &LayoutPage {
        &self.layout
    }

    /// Writes `value` into `peer`'s state-table entry (Release), as the
    /// hypervisor's copy of a STATE register write would. Returns `false` if
    /// the layout has no such peer.
    pub fn set_state(&self, peer: u16, value: u32) -> bool {
        let Some(off) = self.layout.layout.state_entry_offset(peer) else {
            return false;
        };
        // SAFETY: `off` is inside the state table (checked by
        // `state_entry_offset`), which `header` maps; it is 4-byte aligned
        // because the table starts page-aligned. Peers access the entry only
        // through atomics (or 32-bit accesses on the guest side), so an
        // AtomicU32 view of the shared word is sound.
        let entry = unsafe { shared_u32(self.header.as_mut_ptr(), off as usize) };
        entry.store(value, Ordering::Release);
        true
    }

    /// Reads `peer`'s state-table entry (Acquire).
    pub fn state(&self, peer: u16) -> Option<u32> {
        let off = self.layout.layout.state_entry_offset(peer)?;
        // SAFETY: see `set_state`.
        let entry = unsafe { shared_u32(self.header.as_mut_ptr(), off as usize) };
        Some(entry.load(Ordering::Acquire))
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if let Some(path) = self.remove_on_drop.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a named file on drop unless disarmed.
struct RemoveGuard(Option<PathBuf>);

impl RemoveGuard {
    fn disarm(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for RemoveGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens the file behind `--shm-path`: an unlinked temporary file inside a
/// directory, or a new named file.
fn open_backing_file(path: &Path) -> Result<(File, Option<PathBuf>), ShmError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            // Like mkstemp: a fresh name, created exclusively, unlinked at
            // once so that nothing is left behind however the server ends.
            for attempt in 0u32..100 {
                let candidate =
                    path.join(format!("ivshmem-server.{}.{}", std::process::id(), attempt));
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&candidate)
                {
                    Ok(file) => {
                        std::fs::remove_file(&candidate)
                            .map_err(io_err(format!("unlink {}", candidate.display())))?;
                        return Ok((file, None));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err(format!("create {}", candidate.display()))(e)),
                }
            }
            Err(io_err(format!("create a file in {}", path.display()))(
                std::io::Error::other("all candidate names exist"),
            ))
        }
        Ok(_) => Err(ShmError::PathExists(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err(format!("create {}", path.display())))?;
            Ok((file, Some(path.to_path_buf())))
        }
        Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
    }
}
