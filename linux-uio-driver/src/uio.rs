//! A UIO device: its sysfs description, its memory maps and its event
//! counter.
//!
//! Written by hand on `memmap2` instead of with the `uio` crate (0.6), whose
//! mapping API does not fit this use:
//! - it maps every region `PROT_READ | PROT_WRITE`, but `uio_ivshmem` exports
//!   the state table and the peers' output sections read-only and refuses a
//!   writable mapping of them (`-EINVAL`);
//! - it returns bare pointers that are never unmapped (no RAII, no length);
//! - it ignores `maps/mapN/offset`, the position of a region that does not
//!   start on a page boundary inside its first page;
//! - its map listing stops at the first directory entry that is not `mapN`.
//!
//! UIO conventions (drivers/uio/uio.c): map N is selected with the mmap
//! offset `N * PAGE_SIZE`; a mapping may not be larger than the map (rounded
//! to pages); `read()` of 4 bytes blocks until the next interrupt and returns
//! the event count; `write()` of 4 bytes calls the driver's `irqcontrol`
//! (absent in Jailhouse's `uio_ivshmem`, which re-arms through its
//! INT_CONTROL register instead).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

/// The page size the UIO core uses to number maps (4 KiB on every platform
/// ivshmem runs on; `uio_ivshmem` does not work with larger pages).
pub const UIO_PAGE_SIZE: u64 = 4096;

/// Why a UIO device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UioError {
    /// The path does not name `/dev/uioN`.
    #[error("'{0}' is not a UIO device path (expected /dev/uioN)")]
    BadPath(PathBuf),
    /// Opening the device node failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Device node.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A sysfs attribute is missing or malformed.
    #[error("{path}: {reason}")]
    Sysfs {
        /// Attribute file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A map the profile needs does not exist.
    #[error("{device} has no memory map named '{name}' (maps: {available})")]
    MissingMap {
        /// Device name.
        device: String,
        /// Wanted map.
        name: &'static str,
        /// What the device has.
        available: String,
    },
    /// mmap failed.
    #[error("cannot map {what} of {device} ({len:#x} bytes): {source}")]
    Map {
        /// Device.
        device: String,
        /// Map name.
        what: String,
        /// Requested length.
        len: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One entry of `/sys/class/uio/uioN/maps/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// N of `mapN` (selects the map at mmap offset N * page size).
    pub index: u32,
    /// The driver's name for the map (may be empty).
    pub name: String,
    /// Physical (or IOVA) address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region inside its first page.
    pub offset: u64,
}

/// An open `/dev/uioN` with its sysfs description.
#[derive(Debug)]
pub struct UioDevice {
    file: File,
    node: PathBuf,
    sysfs: PathBuf,
    name: String,
    maps: Vec<MapInfo>,
}

/// Access a map is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `PROT_READ`.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// A mapped UIO region, unmapped on drop.
#[derive(Debug)]
pub struct UioMap {
    mmap: MmapRaw,
    offset: usize,
    size: usize,
    access: Access,
}

impl UioMap {
    /// First byte of the region (the mapping start plus the in-page offset).
    pub fn as_ptr(&self) -> *const u8 {
        // `offset < UIO_PAGE_SIZE` and `offset + size <= mmap.len()` (checked
        // in `UioDevice::map`), so this stays inside the mapping.
        self.mmap.as_ptr().wrapping_add(self.offset)
    }

    /// First byte of a writable region; `None` if mapped read-only.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        (self.access == Access::ReadWrite).then(|| self.mmap.as_mut_ptr().wrapping_add(self.offset))
    }

    /// Region size in bytes.
    pub fn len(&self) -> usize {
        self.size
    }
}

fn read_attr(path: &Path) -> Result<String, UioError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| UioError::Sysfs {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Parses a sysfs number: `0x…` hexadecimal (the kernel's `%pa`/`0x%lx`
/// formats) or decimal.
pub fn parse_sysfs_u64(path: &Path, text: &str) -> Result<u64, UioError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| UioError::Sysfs {
        path: path.to_owned(),
        reason: format!("'{t}' is not a number"),
    })
}

impl UioDevice {
    /// Opens `/dev/uioN` and reads its description from `/sys/class/uio`.
    pub fn open(node: &Path) -> Result<Self, UioError> {
        Self::open_with_sysfs(node, Path::new("/sys/class/uio"))
    }

    /// Like [`Self::open`] with another sysfs class directory (tests).
    pub fn open_with_sysfs(node: &Path, class_dir: &Path) -> Result<Self, UioError> {
        let dev_name = node
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| {
                n.strip_prefix("uio")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
            .ok_or_else(|| UioError::BadPath(node.to_owned()))?
            .to_owned();
        let sysfs = class_dir.join(&dev_name);
        if !sysfs.is_dir() {
            return Err(UioError::Sysfs {
                path: sysfs,
                reason: "no such UIO device in sysfs (is a UIO driver bound to the PCI device?)"
                    .into(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(node)
            .map_err(|source| UioError::Open {
                path: node.to_owned(),
                source,
            })?;
        let name = read_attr(&sysfs.join("name"))?;
        let maps = Self::read_maps(&sysfs)?;
        Ok(UioDevice {
            file,
            node: node.to_owned(),
            sysfs,
            name,
            maps,
        })
    }

    fn read_maps(sysfs: &Path) -> Result<Vec<MapInfo>, UioError> {
        let dir = sysfs.join("maps");
        let mut maps = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // A device without memory maps (e.g. uio_pci_generic).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(maps),
            Err(e) => {
                return Err(UioError::Sysfs {
                    path: dir,
                    reason: e.to_string(),
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| UioError::Sysfs {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
            let file_name = entry.file_name();
            // Skip anything that is not `mapN` (rather than stopping there).
            let Some(index) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix("map"))
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            let p = entry.path();
            let num = |attr: &str| -> Result<u64, UioError> {
                let path = p.join(attr);
                parse_sysfs_u64(&path, &read_attr(&path)?)
            };
            let name = match fs::read_to_string(p.join("name")) {
                Ok(n) => n.trim().to_owned(),
                Err(_) => String::new(),
            };
            // `offset` exists since Linux 3.x; treat a missing one as 0.
            let offset = if p.join("offset").exists() {
                num("offset")?
            } else {
                0
            };
            maps.push(MapInfo {
                index,
                name,
                addr: num("addr")?,
                size: num("size")?,
                offset,
            });
        }
        maps.sort_by_key(|m| m.index);
        Ok(maps)
    }

    /// Driver name (`/sys/class/uio/uioN/name`).
    pub fn driver_name(&self) -> &str {
        &self.name
    }

    /// The device node, for messages.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// The PCI device directory behind the UIO device
    /// (`/sys/class/uio/uioN/device`).
    pub fn pci_dir(&self) -> PathBuf {
        self.sysfs.join("device")
    }

    /// All maps, by index.
    pub fn maps(&self) -> &[MapInfo] {
        &self.maps
    }

    /// The map called `name`.
    pub fn find_map(&self, name: &'static str) -> Result<&MapInfo, UioError> {
        self.maps
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| UioError::MissingMap {
                device: self.node.display().to_string(),
                name,
                available: self.map_names(),
            })
    }

    fn map_names(&self) -> String {
        if self.maps.is_empty() {
            return "none".into();
        }
        self.maps
            .iter()
            .map(|m| format!("map{}={}", m.index, m.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Maps map `info` with `access`.
    pub fn map(&self, info: &MapInfo, access: Access) -> Result<UioMap, UioError> {
        let err = |source: io::Error, len: u64| UioError::Map {
            device: self.node.display().to_string(),
            what: format!("map{} '{}'", info.index, info.name),
            len,
            source,
        };
        if info.size == 0 {
            return Err(err(
                io::Error::new(io::ErrorKind::InvalidData, "map size is 0"),
                0,
            ));
        }
        if info.offset >= UIO_PAGE_SIZE {
            return Err(err(
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("in-page offset {:#x} >= page size", info.offset),
                ),
                info.size,
            ));
        }
        let len = info
            .offset
            .checked_add(info.size)
            .and_then(|l| l.checked_next_multiple_of(UIO_PAGE_SIZE))
            .filter(|l| usize::try_from(*l).is_ok())
            .ok_or_else(|| {
                err(
                    io::Error::new(io::ErrorKind::InvalidData, "map size overflows"),
                    info.size,
                )
            })?;
        let mut opts = MmapOptions::new();
        // `len` must be given: a character device has no file size.
        opts.offset(u64::from(info.index) * UIO_PAGE_SIZE)
            .len(len as usize);
        let mmap = match access {
            Access::ReadOnly => opts.map_raw_read_only(&self.file),
            Access::ReadWrite => opts.map_raw(&self.file),
        }
        .map_err(|e| err(e, len))?;
        Ok(UioMap {
            mmap,
            offset: info.offset as usize,
            size: info.size as usize,
            access,
        })
    }

    /// Maps PCI BAR `bar` of the device behind the UIO device through sysfs
    /// (`device/resourceN`, whose size is the BAR size), for UIO drivers
    /// that export no memory maps, such as `uio_pci_generic`.
    pub fn map_pci_resource(&self, bar: u8, access: Access) -> Result<UioMap, UioError> {
        let path = self.pci_dir().join(format!("resource{bar}"));
        let err = |source: io::Error, len: u64| UioError::Map {
            device: self.node.display().to_string(),
            what: path.display().to_string(),
            len,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| err(e, 0))?;
        let size = file.metadata().map_err(|e| err(e, 0))?.len();
        if size == 0 || usize::try_from(size).is_err() {
            return Err(err(
                io::Error::new(io::ErrorKind::InvalidData, "BAR size is 0"),
                size,
            ));
        }
        let mut opts = MmapOptions::new();
        opts.len(size as usize);
        let mmap = match access {
            Access::ReadOnly => opts.map_raw_read_only(&file),
            Access::ReadWrite => opts.map_raw(&file),
        }
        .map_err(|e| err(e, size))?;
        Ok(UioMap {
            mmap,
            offset: 0,
            size: size as usize,
            access,
        })
    }

    /// Reads the interrupt event counter if an event is pending (consumes
    /// the wakeup). `Ok(None)` if none is pending.
    pub fn take_event(&self) -> io::Result<Option<u32>> {
        let mut count = [0u8; 4];
        match nix::unistd::read(&self.file, &mut count) {
            Ok(4) => Ok(Some(u32::from_ne_bytes(count))),
            Ok(n) => Err(io::Error::other(format!(
                "short read of {n} bytes from UIO device"
            ))),
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `value` through the driver's `irqcontrol` (generic UIO drivers
    /// such as igb_uio: 1 = enable/unmask the interrupt).
    pub fn irqcontrol(&self, value: u32) -> io::Result<()> {
        match nix::unistd::write(&self.file, &value.to_ne_bytes()) {
            Ok(4) => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "short write of {n} bytes to UIO device"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsRawFd for UioDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Identity of the PCI function behind a UIO device, from sysfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits: base class, sub-class, programming interface).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
}

impl PciIdentity {
    /// Reads `vendor`, `device`, `class` and `revision` from a PCI device
    /// directory.
    pub fn read(pci_dir: &Path) -> Result<Self, UioError> {
        let num = |attr: &str| -> Result<u64, UioError> {
            let path = pci_dir.join(attr);
            parse_sysfs_u64(&path, &read_attr(&path)?)
        };
        let narrow = |attr: &str, v: u64, max: u64| -> Result<u64, UioError> {
            if v > max {
                Err(UioError::Sysfs {
                    path: pci_dir.join(attr),
                    reason: format!("{v:#x} out of range"),
                })
            } else {
                Ok(v)
            }
        };
        let vendor = narrow("vendor", num("vendor")?, 0xffff)? as u16;
        let device = narrow("device", num("device")?, 0xffff)? as u16;
        let class = narrow("class", num("class")?, 0xff_ffff)? as u32;
        let revision = if pci_dir.join("revision").exists() {
            narrow("revision", num("revision")?, 0xff)? as u8
        } else {
            0
        };
        Ok(PciIdentity {
            vendor,
            device,
            class,
            revision,
        })
    }
}

/// Number of MSI/MSI-X interrupts the kernel allocated for a PCI device
/// (entries of `msi_irqs/`); 0 means INTx (or none).
pub fn msi_irq_count(pci_dir: &Path) -> usize {
    fs::read_dir(pci_dir.join("msi_irqs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a fake `/sys/class/uio/uio7` plus a regular file standing in
    /// for `/dev/uio7` whose page N holds the byte N everywhere.
    fn fake_device(maps: &[(&str, u64, u64)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("class");
        let dev = class.join("uio7");
        fs::create_dir_all(dev.join("maps")).unwrap();
        fs::write(dev.join("name"), "uio_ivshmem\n").unwrap();
        for (i, (name, size, offset)) in maps.iter().enumerate() {
            let m = dev.join("maps").join(format!("map{i}"));
            fs::create_dir(&m).unwrap();
            fs::write(m.join("name"), format!("{name}\n")).unwrap();
            fs::write(
                m.join("addr"),
                format!("0x{:016x}\n", 0xfe00_0000u64 + i as u64 * 0x10_0000),
            )
            .unwrap();
            fs::write(m.join("size"), format!("0x{size:x}\n")).unwrap();
            fs::write(m.join("offset"), format!("0x{offset:x}\n")).unwrap();
        }
        // A stray entry that must be skipped, not end the listing.
        fs::create_dir(dev.join("maps").join("power")).unwrap();
        let node = dir.path().join("uio7");
        let mut f = File::create(&node).unwrap();
        for page in 0..8u8 {
            f.write_all(&[page; UIO_PAGE_SIZE as usize]).unwrap();
        }
        (dir, class, node)
    }

    #[test]
    fn discovers_and_maps_by_name_with_offsets() {
        let (_d, class, node) = fake_device(&[
            ("registers", 0x1000, 0),
            ("state_table", 0x1000, 0),
            ("input_sections", 0x2000, 0),
            ("output_section", 0x100, 0x80),
        ]);
        let uio = UioDevice::open_with_sysfs(&node, &class).unwrap();
        assert_eq!(uio.driver_name(), "uio_ivshmem");
        assert_eq!(uio.maps().len(), 4);
        let st = uio.find_map("state_table").unwrap();
        assert_eq!((st.index, st.size), (1, 0x1000));
        let m = uio.map(st, Access::ReadOnly).unwrap();
        assert!(m.as_mut_ptr().is_none());
        // SAFETY: the map is 0x1000 bytes of a private test file.
        assert_eq!(unsafe { m.as_ptr().read() }, 1);
        let out = uio.find_map("output_section").unwrap().clone();
        let m = uio.map(&out, Access::ReadWrite).unwrap();
        assert_eq!(m.len(), 0x100);
        // SAFETY: offset 0x80 + 0x100 lies inside the one mapped page.
        assert_eq!(unsafe { m.as_ptr().read() }, 3);
        assert_eq!(m.as_ptr() as usize % UIO_PAGE_SIZE as usize, 0x80);
        let err = uio.find_map("rw_section").unwrap_err().to_string();
        assert!(err.contains("map0=registers"), "{err}");
    }

    #[test]
    fn rejects_bad_nodes_and_attributes() {
        let (_d, class, node) = fake_device(&[("registers", 0x1000, 0x2000)]);
        assert!(matches!(
            UioDevice::open_with_sysfs(Path::new("/dev/sda"), &class),
            Err(UioError::BadPath(_))
        ));
        assert!(matches!(
            UioDevice::open_with_sysfs(Path::new("/dev/uio9"), &class),
            Err(UioError::Sysfs { .. })
        ));
        let uio = UioDevice::open_with_sysfs(&node, &class).unwrap();
        let m = uio.find_map("registers").unwrap();
        assert!(
            uio.map(m, Access::ReadWrite).is_err(),
            "offset beyond a page must be refused"
        );
        assert!(parse_sysfs_u64(Path::new("x"), "0xzz").is_err());
        assert_eq!(parse_sysfs_u64(Path::new("x"), "0x10\n").unwrap(), 16);
        assert_eq!(parse_sysfs_u64(Path::new("x"), "42").unwrap(), 42);
    }

    #[test]
    fn reads_pci_identity() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("vendor"), "0x110a\n").unwrap();
        fs::write(d.path().join("device"), "0x4106\n").unwrap();
        fs::write(d.path().join("class"), "0xff0001\n").unwrap();
        let id = PciIdentity::read(d.path()).unwrap();
        assert_eq!(
            id,
            PciIdentity {
                vendor: 0x110a,
                device: 0x4106,
                class: 0xff0001,
                revision: 0
            }
        );
        fs::write(d.path().join("vendor"), "0x1110a\n").unwrap();
        assert!(PciIdentity::read(d.path()).is_err());
        assert_eq!(msi_irq_count(d.path()), 0);
    }
}
