//! VFIO backend: the ivshmem PCI device bound to the stock `vfio-pci`
//! driver (DPDK's convention), driven from user space through the legacy
//! container API (`/dev/vfio/vfio` + `/dev/vfio/<group>`).
//!
//! Opening `--vfio 0000:00:05.0`:
//! 1. sysfs: the device exists, is bound to `vfio-pci`, and has an IOMMU
//!    group (`iommu_group` link). Without an IOMMU the group exists only in
//!    VFIO's no-IOMMU mode (`/dev/vfio/noiommu-N`,
//!    `vfio.enable_unsafe_noiommu_mode=1`, a kernel with
//!    `CONFIG_VFIO_NOIOMMU`): each failure is its own [`VfioError`].
//! 2. container: API version, then the group joins it and the container
//!    gets the type-1 IOMMU (v2 when offered), or the no-IOMMU "IOMMU".
//!    ivshmem devices do no DMA, so nothing is mapped into the IOMMU.
//! 3. device fd: regions through `VFIO_DEVICE_GET_REGION_INFO` + `mmap` of
//!    the device fd (BAR0 registers; BAR2 of QEMU's ivshmem-doorbell), the
//!    PCI configuration space through the config region (`pread`).
//! 4. interrupts: one eventfd per MSI-X vector (`VFIO_DEVICE_SET_IRQS`,
//!    `DATA_EVENTFD | ACTION_TRIGGER`): vector 0 state, vector 1 data, or
//!    one vector for both. Eventfds count, so no interrupt is lost and no
//!    re-arm is needed (the Jailhouse device's one-shot INT_CONTROL still is).
//!
//! Profiles, by PCI ID (the same rules as the UIO backends):
//! - **QEMU ivshmem-doorbell** (`1af4:1110`): the layout page in BAR2;
//!   the layout page, the state table and the peer's section are
//!   `mprotect`ed read-only, the own state goes into the own entry through a
//!   second view of BAR2 in which only that page is accessible
//!   ([`super::qemu_window::QemuWindow`], shared with the UIO backend).
//! - **Jailhouse ivshmem 2.0** (`110a:4106`): the vendor capability's base
//!   address says where the memory is: not a BAR, so it is mapped through
//!   `/dev/mem` — state table and input sections `PROT_READ`, the own output
//!   section read-write. The own state goes through the STATE register.
//!
//! The ioctl numbers and structures are those of `<linux/vfio.h>` (stable
//! UAPI), declared here over `libc` rather than through the `vfio-bindings`
//! crate: eight ioctls and three structures do not justify a generated
//! binding of the whole header.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use ivnet_driver::{LinkDevice, check_net_link, data_vector};
use ivnet_ring::LinkState;
use ivshmem::jailhouse::{self, VendorCapability};
use ivshmem::layout::SharedMemoryLayout;
use ivshmem::pci::ConfigImage;
use tracing::warn;

use super::jailhouse_link::JailhouseLink;
use super::qemu_window::QemuWindow;
use super::{Backend, BackendError, Wake, monotonic_us};

/// Why the VFIO device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// Not of the form `DDDD:BB:DD.F`.
    #[error("'{0}' is not a PCI address (domain:bus:device.function, e.g. 0000:00:05.0)")]
    BadAddress(String),
    /// No such PCI device.
    #[error("{0}: no such PCI device (see lspci -D)")]
    NoDevice(String),
    /// The device is bound to another driver, or to none.
    #[error(
        "{bdf}: bound to {driver}, not vfio-pci (echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; \
         echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe)"
    )]
    NotVfio {
        /// PCI address.
        bdf: String,
        /// The current driver ("no driver" if unbound).
        driver: String,
    },
    /// No IOMMU group: no IOMMU, and VFIO's no-IOMMU mode is off.
    #[error(
        "{bdf}: no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on) or VFIO's no-IOMMU mode \
         (vfio.enable_unsafe_noiommu_mode=1{})",
        if *.noiommu_available { "" } else { "; this kernel has no CONFIG_VFIO_NOIOMMU" }
    )]
    NoIommuGroup {
        /// PCI address.
        bdf: String,
        /// Whether the kernel offers no-IOMMU mode at all.
        noiommu_available: bool,
    },
    /// vfio_iommu_type1 refuses an IOMMU without interrupt remapping.
    #[error(
        "{0}: the IOMMU does no interrupt remapping, so vfio_iommu_type1 refuses it (dmesg: \"No interrupt \
         remapping support\"): enable it (QEMU: -device intel-iommu,intremap=on) or load vfio_iommu_type1 with \
         allow_unsafe_interrupts=1"
    )]
    NoInterruptRemapping(String),
    /// The group has devices bound to other drivers.
    #[error(
        "{0}: the IOMMU group is not viable: bind every device of the group to vfio-pci (or none)"
    )]
    NotViable(String),
    /// A VFIO or system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> VfioError {
    let what = what.into();
    move |source| VfioError::Sys { what, source }
}

// <linux/vfio.h>: _IO(';', 100 + n).
const fn vfio_io(nr: u64) -> u64 {
    (b';' as u64) << 8 | (100 + nr)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
const GROUP_FLAGS_VIABLE: u32 = 1;
const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const IRQ_SET_DATA_NONE: u32 = 1 << 0;
const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const PCI_BAR0_REGION: u32 = 0;
const PCI_BAR2_REGION: u32 = 2;
const PCI_CONFIG_REGION: u32 = 7;
const PCI_MSIX_IRQ: u32 = 2;
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

/// `struct vfio_irq_set` with room for two eventfds.
#[repr(C)]
struct IrqSet {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fds: [i32; 2],
}

/// An ioctl whose argument is a value (or nothing).
fn ioctl_val(fd: RawFd, req: u64, arg: libc::c_ulong, what: &str) -> Result<i32, VfioError> {
    // SAFETY: these VFIO ioctls take an integer argument (or none) and
    // touch no user memory.
    let rc = unsafe { libc::ioctl(fd, req as _, arg) };
    if rc < 0 {
        return Err(sys(what)(io::Error::last_os_error()));
    }
    Ok(rc)
}

/// An ioctl whose argument is a structure `T` starting with `argsz`.
fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: &mut T, what: &str) -> Result<i32, VfioError> {
    // SAFETY: `arg` is a live, exclusively borrowed `repr(C)` structure of
    // the layout the ioctl expects; its `argsz` tells the kernel its size.
    let rc = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if rc < 0 {
        return Err(sys(what)(io::Error::last_os_error()));
    }
    Ok(rc)
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

impl Mapping {
    fn new(
        fd: RawFd,
        offset: u64,
        len: usize,
        writable: bool,
        what: &str,
    ) -> Result<Self, VfioError> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping chosen by the kernel; nothing
        // else is at that address, and the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys(format!(
                "mapping {what} ({len:#x} bytes at {offset:#x})"
            ))(io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap never returns NULL on success"),
            len,
            writable,
        })
    }

    fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn as_mut_ptr(&self) -> *mut u8 {
        assert!(self.writable, "read-only mapping");
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nobody holds a
        // pointer into it past the owner's lifetime.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The VFIO handles of one device: container, group, device, eventfds.
struct VfioDevice {
    bdf: String,
    device: File,
    /// One eventfd per enabled MSI-X vector, by vector.
    vector_fds: Vec<OwnedFd>,
    noiommu: bool,
    _group: File,
    _container: File,
}

/// Checks a PCI address in DPDK's notation (`0000:00:05.0`).
fn check_bdf(bdf: &str) -> Result<(), VfioError> {
    let b = bdf.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let ok = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]);
    if ok {
        Ok(())
    } else {
        Err(VfioError::BadAddress(bdf.to_owned()))
    }
}

impl VfioDevice {
    fn open(bdf: &str, sysfs: &Path) -> Result<Self, VfioError> {
        check_bdf(bdf)?;
        let dir = sysfs.join("bus/pci/devices").join(bdf);
        if !dir.exists() {
            return Err(VfioError::NoDevice(bdf.to_owned()));
        }
        let driver = fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(VfioError::NotVfio {
                bdf: bdf.to_owned(),
                driver: driver.unwrap_or_else(|| "no driver".into()),
            });
        }
        let group = fs::read_link(dir.join("iommu_group"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| VfioError::NoIommuGroup {
                bdf: bdf.to_owned(),
                noiommu_available: sysfs
                    .join("module/vfio/parameters/enable_unsafe_noiommu_mode")
                    .exists(),
            })?;
        // In no-IOMMU mode the group's node carries a prefix.
        let (group_node, noiommu) = {
            let plain = PathBuf::from(format!("/dev/vfio/{group}"));
            let unsafe_node = PathBuf::from(format!("/dev/vfio/noiommu-{group}"));
            if !plain.exists() && unsafe_node.exists() {
                (unsafe_node, true)
            } else {
                (plain, false)
            }
        };
        let rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
        let container = rw(Path::new("/dev/vfio/vfio")).map_err(sys("/dev/vfio/vfio"))?;
        let version = ioctl_val(
            container.as_raw_fd(),
            VFIO_GET_API_VERSION,
            0,
            "VFIO_GET_API_VERSION",
        )?;
        if version != VFIO_API_VERSION {
            return Err(sys("VFIO API version")(io::Error::other(format!(
                "{version}, expected {VFIO_API_VERSION}"
            ))));
        }
        let group_file = rw(&group_node).map_err(sys(group_node.display().to_string()))?;
        let mut status = GroupStatus {
            argsz: size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        ioctl_ptr(
            group_file.as_raw_fd(),
            VFIO_GROUP_GET_STATUS,
            &mut status,
            "VFIO_GROUP_GET_STATUS",
        )?;
        if status.flags & GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable(bdf.to_owned()));
        }
        let mut cfd = container.as_raw_fd();
        ioctl_ptr(
            group_file.as_raw_fd(),
            VFIO_GROUP_SET_CONTAINER,
            &mut cfd,
            "VFIO_GROUP_SET_CONTAINER",
        )?;
        let iommu = if noiommu {
            VFIO_NOIOMMU_IOMMU
        } else if ioctl_val(
            cfd,
            VFIO_CHECK_EXTENSION,
            VFIO_TYPE1V2_IOMMU,
            "VFIO_CHECK_EXTENSION",
        )? == 1
        {
            VFIO_TYPE1V2_IOMMU
        } else {
            VFIO_TYPE1_IOMMU
        };
        ioctl_val(cfd, VFIO_SET_IOMMU, iommu, "VFIO_SET_IOMMU").map_err(|e| match e {
            VfioError::Sys { source, .. } if source.raw_os_error() == Some(libc::EPERM) => {
                VfioError::NoInterruptRemapping(bdf.to_owned())
            }
            e => e,
        })?;
        let name = std::ffi::CString::new(bdf).expect("checked: no NUL");
        // SAFETY: the argument is a NUL-terminated string that outlives the
        // call; the kernel only reads it.
        let fd = unsafe {
            libc::ioctl(
                group_file.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD as _,
                name.as_ptr(),
            )
        };
        if fd < 0 {
            return Err(sys("VFIO_GROUP_GET_DEVICE_FD")(io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor the kernel just returned to us.
        let device = unsafe { File::from_raw_fd(fd) };
        Ok(VfioDevice {
            bdf: bdf.to_owned(),
            device,
            vector_fds: Vec::new(),
            noiommu,
            _group: group_file,
            _container: container,
        })
    }

    fn region(&self, index: u32) -> Result<RegionInfo, VfioError> {
        let mut info = RegionInfo {
            argsz: size_of::<RegionInfo>() as u32,
            index,
            ..RegionInfo::default()
        };
        ioctl_ptr(
            self.device.as_raw_fd(),
            VFIO_DEVICE_GET_REGION_INFO,
            &mut info,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        Ok(info)
    }

    /// Maps `len` bytes of BAR `index` (0 = the whole BAR).
    fn map_bar(&self, index: u32, writable: bool) -> Result<Mapping, BackendError> {
        let info = self.region(index)?;
        if info.flags & REGION_INFO_FLAG_MMAP == 0 || info.size == 0 {
            return Err(BackendError::Unsupported(format!(
                "{}: BAR{index} ({:#x} bytes) cannot be mapped through VFIO (a BAR smaller than a page needs \
                 pci=resource_alignment=12@pci:VVVV:DDDD on the kernel command line)",
                self.bdf, info.size
            )));
        }
        let len = (info.size as usize).next_multiple_of(page_size());
        Ok(Mapping::new(
            self.device.as_raw_fd(),
            info.offset,
            len,
            writable,
            &format!("{} BAR{index}", self.bdf),
        )?)
    }

    /// The first 256 bytes of the PCI configuration space.
    fn config(&self) -> Result<ConfigImage, VfioError> {
        let info = self.region(PCI_CONFIG_REGION)?;
        let mut bytes = [0u8; 256];
        self.device
            .read_exact_at(&mut bytes, info.offset)
            .map_err(sys("reading the PCI configuration space"))?;
        Ok(ConfigImage::from_prefix(&bytes))
    }

    /// Writes `bytes` to the configuration space at `offset` (vfio-pci
    /// virtualizes it and may drop writes to fields it does not pass on).
    fn write_config(&self, offset: u64, bytes: &[u8]) -> Result<(), VfioError> {
        let info = self.region(PCI_CONFIG_REGION)?;
        self.device
            .write_all_at(bytes, info.offset + offset)
            .map_err(sys("writing the PCI configuration space"))
    }

    /// One eventfd per MSI-X vector, up to `wanted` vectors; returns how
    /// many are enabled. Also turns on bus mastering: an MSI-X message is
    /// a memory write of the device, which PCI drops without it (vfio-pci
    /// leaves the bit to its user; UIO drivers set it in the kernel).
    fn enable_msix(&mut self, wanted: u32) -> Result<usize, VfioError> {
        let info = self.region(PCI_CONFIG_REGION)?;
        let mut command = [0u8; 2];
        self.device
            .read_exact_at(&mut command, info.offset + PCI_COMMAND)
            .map_err(sys("reading the PCI command register"))?;
        let command = u16::from_le_bytes(command) | PCI_COMMAND_MASTER;
        self.write_config(PCI_COMMAND, &command.to_le_bytes())?;
        let mut info = IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            index: PCI_MSIX_IRQ,
            ..IrqInfo::default()
        };
        ioctl_ptr(
            self.device.as_raw_fd(),
            VFIO_DEVICE_GET_IRQ_INFO,
            &mut info,
            "VFIO_DEVICE_GET_IRQ_INFO",
        )?;
        let n = info.count.min(wanted).min(2);
        if n == 0 {
            return Ok(0);
        }
        let mut fds = [-1i32; 2];
        for slot in fds.iter_mut().take(n as usize) {
            // SAFETY: eventfd creates a new descriptor; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(sys("eventfd")(io::Error::last_os_error()));
            }
            // SAFETY: a new descriptor owned from here on.
            self.vector_fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            *slot = fd;
        }
        let mut set = IrqSet {
            argsz: (size_of::<IrqSet>() - 4 * (2 - n as usize)) as u32,
            flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            index: PCI_MSIX_IRQ,
            start: 0,
            count: n,
            fds,
        };
        ioctl_ptr(
            self.device.as_raw_fd(),
            VFIO_DEVICE_SET_IRQS,
            &mut set,
            "VFIO_DEVICE_SET_IRQS (MSI-X eventfds)",
        )?;
        Ok(n as usize)
    }

    /// Drains the eventfd `fd`; returns the interrupts it counted.
    fn drain(&self, fd: RawFd) -> Result<u64, BackendError> {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a local buffer of 8 bytes.
        let rc = unsafe { libc::read(fd, count.as_mut_ptr().cast(), 8) };
        if rc == 8 {
            return Ok(u64::from_ne_bytes(count));
        }
        let e = io::Error::last_os_error();
        if rc < 0 && e.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        Err(BackendError::Io {
            what: "reading an MSI-X eventfd",
            source: e,
        })
    }

    fn wakeup_fds(&self) -> Vec<RawFd> {
        self.vector_fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn mode(&self) -> &'static str {
        if self.noiommu {
            "vfio-pci, no-IOMMU mode"
        } else {
            "vfio-pci"
        }
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        if self.vector_fds.is_empty() {
            return;
        }
        let mut set = IrqSet {
            argsz: (size_of::<IrqSet>() - 8) as u32,
            flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            index: PCI_MSIX_IRQ,
            start: 0,
            count: 0,
            fds: [-1; 2],
        };
        let _ = ioctl_ptr(
            self.device.as_raw_fd(),
            VFIO_DEVICE_SET_IRQS,
            &mut set,
            "disabling MSI-X",
        );
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// Opens `bdf` (bound to vfio-pci) and picks the profile from its PCI IDs.
pub fn open(bdf: &str) -> Result<Box<dyn Backend>, BackendError> {
    open_with_sysfs(bdf, Path::new("/sys"))
}

fn open_with_sysfs(bdf: &str, sysfs: &Path) -> Result<Box<dyn Backend>, BackendError> {
    let dev = VfioDevice::open(bdf, sysfs)?;
    let config = dev.config()?;
    let id = |o: usize| u16::from_le_bytes([config.0[o], config.0[o + 1]]);
    match (id(0), id(2)) {
        (jailhouse::VENDOR_ID, jailhouse::DEVICE_ID) => {
            Ok(Box::new(JailhouseVfio::new(dev, &config)?))
        }
        (0x1af4, 0x1110) => Ok(Box::new(QemuVfio::new(dev, &config)?)),
        (v, d) => Err(BackendError::Unsupported(format!(
            "{bdf}: PCI device {v:04x}:{d:04x} is neither Jailhouse ivshmem 2.0 (110a:4106) nor QEMU ivshmem (1af4:1110)"
        ))),
    }
}

fn unsupported(bdf: &str, what: impl std::fmt::Display) -> BackendError {
    BackendError::Unsupported(format!("{bdf}: {what}"))
}

/// QEMU ivshmem-doorbell on vfio-pci.
pub struct QemuVfio {
    _regs: Mapping,
    _window: Mapping,
    /// Second view of BAR2: only the page of the own state entry stays
    /// accessible (read-write), as in the UIO backend.
    _state_view: Mapping,
    /// The link over the three mappings.
    link: QemuWindow,
    irqs: usize,
    dev: VfioDevice,
}

impl QemuVfio {
    fn new(mut dev: VfioDevice, config: &ConfigImage) -> Result<Self, BackendError> {
        let bdf = dev.bdf.clone();
        if config.0[8] != 1 {
            return Err(unsupported(
                &bdf,
                format_args!(
                    "QEMU ivshmem revision {} (need 1: ivshmem-doorbell)",
                    config.0[8]
                ),
            ));
        }
        let regs = dev.map_bar(PCI_BAR0_REGION, true)?;
        let window = dev.map_bar(PCI_BAR2_REGION, true)?;
        let state_view = dev.map_bar(PCI_BAR2_REGION, true)?;
        // SAFETY: `regs` is BAR0 (at least a page), `window` and
        // `state_view` two writable mappings of all of BAR2; all three live
        // in the same `QemuVfio` as the link, and nothing references them.
        let link =
            unsafe { QemuWindow::new(&bdf, regs.ptr, window.ptr, state_view.ptr, window.len) }?;
        let irqs = dev.enable_msix(link.vectors())?;
        if irqs == 0 {
            return Err(unsupported(
                &bdf,
                "no MSI-X vectors (ivshmem-doorbell needs vectors >= 1)",
            ));
        }
        Ok(QemuVfio {
            _regs: regs,
            _window: window,
            _state_view: state_view,
            link,
            irqs,
            dev,
        })
    }
}

impl Backend for QemuVfio {
    fn describe(&self) -> String {
        format!(
            "{}: QEMU ivshmem-doorbell on {}, {}, {} MSI-X eventfds",
            self.dev.bdf,
            self.dev.mode(),
            self.link.summary(),
            self.irqs
        )
    }
    fn own_id(&self) -> u16 {
        self.link.id()
    }
    fn peer_id(&self) -> u16 {
        self.link.peer()
    }
    fn section_len(&self) -> usize {
        self.link.section_len()
    }
    fn own_section(&self) -> *mut u8 {
        self.link.own_section()
    }
    fn peer_section(&self) -> *const u8 {
        self.link.peer_section()
    }
    fn wakeup_fds(&self) -> Vec<RawFd> {
        self.dev.wakeup_fds()
    }
    fn on_wakeup(&mut self, fd: RawFd) -> Result<Wake, BackendError> {
        Ok(Wake {
            doorbells: self.dev.drain(fd)?,
            membership: false,
        })
    }
}

impl LinkDevice for QemuVfio {
    type Error = BackendError;

    fn peer_state(&self) -> u32 {
        self.link.peer_state()
    }
    fn publish_state(&mut self, state: LinkState) -> Result<(), BackendError> {
        self.link.publish_state(state)
    }
    fn vectors(&self) -> u32 {
        self.link.vectors()
    }
    fn ring(&mut self, vector: u16) -> Result<(), BackendError> {
        self.link.ring(vector)
    }
    /// MSI-X eventfds count every interrupt: nothing to re-arm.
    fn rearm(&mut self) {}
    fn now_us(&self) -> u64 {
        monotonic_us()
    }
}

/// Jailhouse ivshmem 2.0 on vfio-pci, the shared memory through `/dev/mem`.
pub struct JailhouseVfio {
    /// Registers and state table; first, so that it is dropped (interrupts
    /// off) before the mappings it points into.
    link: JailhouseLink,
    _regs: Mapping,
    /// State table (read-only).
    _state_table: Mapping,
    /// All output sections (read-only): the peer's is read through it.
    inputs: Mapping,
    /// The own output section (read-write).
    output: Mapping,
    layout: SharedMemoryLayout,
    id: u16,
    peer: u16,
    vectors: usize,
    dev: VfioDevice,
}

impl JailhouseVfio {
    fn new(mut dev: VfioDevice, config: &ConfigImage) -> Result<Self, BackendError> {
        let bdf = dev.bdf.clone();
        let regs = dev.map_bar(PCI_BAR0_REGION, true)?;
        if (regs.len as u64) < jailhouse::Registers::REGION_SIZE {
            return Err(unsupported(&bdf, "BAR0 is smaller than the register block"));
        }
        let r = jailhouse_registers(&regs);
        let (max_peers, raw_id) = (r.max_peers(), r.id());
        // The protocol is the class code's lower 16 bits (programming
        // interface at 0x09, subclass at 0x0a).
        let class_protocol = u16::from(config.0[0x09]) | u16::from(config.0[0x0a]) << 8;
        let (id, peer) =
            check_net_link(class_protocol, max_peers, raw_id).map_err(|e| unsupported(&bdf, e))?;
        let cap = VendorCapability::find(config)
            .map_err(|e| unsupported(&bdf, format_args!("vendor capability: {e}")))?;
        let layout = cap
            .validate(max_peers, raw_id, None)
            .map_err(|e| unsupported(&bdf, format_args!("vendor capability: {e}")))?;
        let base = cap.base_address.ok_or_else(|| {
            unsupported(&bdf, "the vendor capability has no base address (shared memory in BAR2 is not supported)")
        })?;
        // One-shot mode (Privileged Control bit 0); vfio-pci may not pass
        // the write on, which is harmless: the re-arm is written either way.
        if let Err(e) = dev.write_config(
            u64::from(cap.offset) + u64::from(jailhouse::cap::PRIV_CONTROL),
            &[jailhouse::cap::PRIV_CONTROL_ONE_SHOT],
        ) {
            warn!("{bdf}: setting one-shot mode: {e}");
        }
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mem")
            .map_err(|e| {
                unsupported(
                    &bdf,
                    format_args!(
                        "/dev/mem: {e} (needs CAP_SYS_RAWIO and memory outside the kernel's)"
                    ),
                )
            })?;
        let map = |off: u64, len: u64, writable: bool, what: &str| {
            Mapping::new(mem.as_raw_fd(), base + off, len as usize, writable, what).map_err(|e| {
                unsupported(
                    &bdf,
                    format_args!(
                        "{e}: with CONFIG_STRICT_DEVMEM /dev/mem maps only memory the kernel does not use \
                         (reserve it: memmap=SIZE$ADDR or the root cell's reserved region)"
                    ),
                )
            })
        };
        let state_table = map(
            layout.state_table_offset,
            layout.state_table_size,
            false,
            "the state table",
        )?;
        let first = layout.output_section_offset(0).expect("2 peers");
        let inputs = map(
            first,
            2 * layout.output_section_size,
            false,
            "the output sections",
        )?;
        let own = layout.output_section_offset(id).expect("id < 2");
        let output = map(
            own,
            layout.output_section_size,
            true,
            "the own output section",
        )?;
        let vectors = dev.enable_msix(2)?;
        // SAFETY: BAR0 mapped writable, at least REGION_SIZE (checked); the
        // state table mapped readable, page-aligned, validated to hold every
        // peer; both live in the same `JailhouseVfio`, dropped after `link`.
        let link = unsafe { JailhouseLink::new(regs.ptr, state_table.ptr, peer) };
        Ok(JailhouseVfio {
            link,
            _regs: regs,
            _state_table: state_table,
            inputs,
            output,
            layout,
            id,
            peer,
            vectors,
            dev,
        })
    }
}

fn jailhouse_registers(map: &Mapping) -> jailhouse::Registers<'_> {
    // SAFETY: BAR0 mapped uncached by vfio-pci, writable, at least
    // REGION_SIZE bytes (checked at open), alive for the borrow of `map`.
    unsafe { jailhouse::Registers::new(map.ptr) }
}

impl Backend for JailhouseVfio {
    fn describe(&self) -> String {
        format!(
            "{}: Jailhouse ivshmem 2.0 on {}, peer {} of 2 (other peer {}), output sections {:#x} bytes, {} MSI-X \
             eventfds (data on vector {})",
            self.dev.bdf,
            self.dev.mode(),
            self.id,
            self.peer,
            self.layout.output_section_size,
            self.vectors,
            data_vector(self.vectors as u32)
        )
    }
    fn own_id(&self) -> u16 {
        self.id
    }
    fn peer_id(&self) -> u16 {
        self.peer
    }
    fn section_len(&self) -> usize {
        self.layout.output_section_size as usize
    }
    fn own_section(&self) -> *mut u8 {
        self.output.as_mut_ptr()
    }
    fn peer_section(&self) -> *const u8 {
        self.inputs
            .as_ptr()
            .wrapping_add(usize::from(self.peer) * self.section_len())
    }
    fn wakeup_fds(&self) -> Vec<RawFd> {
        self.dev.wakeup_fds()
    }
    fn on_wakeup(&mut self, fd: RawFd) -> Result<Wake, BackendError> {
        Ok(Wake {
            doorbells: self.dev.drain(fd)?,
            membership: false,
        })
    }
}

jailhouse_link_device!(JailhouseVfio);

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(driver: Option<&str>, group: bool, noiommu_param: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("bus/pci/devices/0000:00:05.0");
        fs::create_dir_all(&dev).unwrap();
        if let Some(drv) = driver {
            let drv_dir = d.path().join("bus/pci/drivers").join(drv);
            fs::create_dir_all(&drv_dir).unwrap();
            std::os::unix::fs::symlink(&drv_dir, dev.join("driver")).unwrap();
        }
        if group {
            let g = d.path().join("kernel/iommu_groups/7");
            fs::create_dir_all(&g).unwrap();
            std::os::unix::fs::symlink(&g, dev.join("iommu_group")).unwrap();
        }
        if noiommu_param {
            let p = d.path().join("module/vfio/parameters");
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("enable_unsafe_noiommu_mode"), "N\n").unwrap();
        }
        d
    }

    fn err(bdf: &str, sysfs: &Path) -> String {
        open_with_sysfs(bdf, sysfs)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn open_explains_what_is_wrong() {
        let s = fake_sysfs(Some("ivshmem-net"), false, false);
        assert!(err("00:05.0", s.path()).contains("is not a PCI address"));
        assert!(err("0000:00:05.8", s.path()).contains("is not a PCI address"));
        assert!(err("0000:00:06.0", s.path()).contains("no such PCI device"));
        assert!(err("0000:00:05.0", s.path()).contains("bound to ivshmem-net, not vfio-pci"));
        let s = fake_sysfs(None, false, false);
        assert!(err("0000:00:05.0", s.path()).contains("bound to no driver"));
        let s = fake_sysfs(Some("vfio-pci"), false, false);
        let e = err("0000:00:05.0", s.path());
        assert!(
            e.contains("no IOMMU group") && e.contains("no CONFIG_VFIO_NOIOMMU"),
            "{e}"
        );
        let s = fake_sysfs(Some("vfio-pci"), false, true);
        let e = err("0000:00:05.0", s.path());
        assert!(
            e.contains("enable_unsafe_noiommu_mode=1") && !e.contains("CONFIG_VFIO_NOIOMMU"),
            "{e}"
        );
    }

    #[test]
    fn ioctl_numbers_match_linux_vfio_h() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(size_of::<RegionInfo>(), 32);
        assert_eq!(size_of::<IrqSet>(), 28);
    }
}
