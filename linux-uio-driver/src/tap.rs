//! The TAP interface: creation or attachment, MTU, MAC, carrier, frame I/O.
//!
//! Written by hand on `libc` ioctls (about the size of firecracker's
//! `tap.rs`) rather than with `tun-rs`, because the bridge needs three things
//! that crate does not offer:
//! - `TUNSETCARRIER`, so that the interface's carrier follows the link;
//! - frame I/O through raw pointers: frames are read straight into a TX slot
//!   of the own output section and written straight out of the peer's
//!   section, and a `&[u8]` over memory the peer can write must never exist
//!   (`tun-rs` takes `&[u8]`/`&mut [u8]`);
//! - knowing whether the bridge created the interface, so that only then it
//!   disappears on exit.
//!
//! A TAP created here is not persistent: the kernel removes it when the last
//! file descriptor closes, which also covers `kill -9`. An interface that
//! already existed (for example from `ip tuntap add … mode tap`) is attached
//! to and left in place with its carrier off.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::cli::MacAddr;

// From <linux/if_tun.h>; `_IOW('T', nr, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `ARPHRD_ETHER` from <linux/if_arp.h>.
const ARPHRD_ETHER: libc::sa_family_t = 1;

/// Why the TAP interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` is missing or not accessible.
    #[error(
        "cannot open /dev/net/tun: {0} (is the tun module loaded, are we root or CAP_NET_ADMIN?)"
    )]
    OpenTun(#[source] io::Error),
    /// The kernel refused `TUNSETIFF`.
    #[error("cannot {verb} TAP interface '{name}': {hint}")]
    SetIff {
        /// Interface name.
        name: String,
        /// "create" or "attach to".
        verb: &'static str,
        /// What went wrong, in words.
        hint: String,
    },
    /// An interface configuration ioctl failed.
    #[error("cannot set {what} of '{name}': {source}")]
    Configure {
        /// Interface name.
        name: String,
        /// What was being set.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the union members the bridge uses.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    flags: libc::c_short,
    mtu: libc::c_int,
    ifindex: libc::c_int,
    hwaddr: libc::sockaddr,
    // The kernel's union is 24 bytes on 64-bit (struct ifmap).
    _size: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: IfReqData { _size: [0; 24] },
        };
        // Names were validated to be shorter than IFNAMSIZ (cli::parse_ifname).
        for (dst, src) in req
            .name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        req
    }
}

/// Issues `ioctl(fd, request, req)` for an `ifreq`-taking request.
fn ifreq_ioctl(fd: RawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: every request passed here (TUNSETIFF, SIOC[GS]IF*) reads and/or
    // writes at most one `struct ifreq`, and `req` is a valid, exclusive,
    // correctly sized `ifreq` for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, request as _, req as *mut IfReq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// Socket in the TAP's network namespace for the `SIOC*IF*` ioctls.
    ctl: OwnedFd,
    name: String,
    created: bool,
    /// Opened with `IFF_VNET_HDR`: every frame read or written starts with
    /// a 10-byte virtio-net header.
    vnet_hdr: bool,
}

impl Tap {
    /// Creates the TAP interface `name` (or attaches to it if it exists) in
    /// the current network namespace, without packet-info header, sets its
    /// MTU and MAC, switches the carrier off and brings it up.
    /// With `vnet_hdr`, frames carry a virtio-net header (`IFF_VNET_HDR`)
    /// and offloads can be switched with [`set_offload`](Self::set_offload).
    pub fn open(name: &str, mtu: u32, mac: MacAddr, vnet_hdr: bool) -> Result<Tap, TapError> {
        let ctl = control_socket().map_err(|source| TapError::Configure {
            name: name.into(),
            what: "up",
            source,
        })?;
        let existed = ifindex(ctl.as_raw_fd(), name).is_ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let fd = OwnedFd::from(file);
        let mut req = IfReq::new(name);
        req.data.flags = IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
        if let Err(e) = ifreq_ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) {
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) if existed => {
                    "an interface of that name exists and is not a TAP interface (or a TAP created with \
                     other flags, e.g. multi_queue or vnet_hdr)"
                        .to_owned()
                }
                Some(libc::EBUSY) => {
                    "the interface is in use by another process (or is multi-queue)".to_owned()
                }
                Some(libc::EPERM) => {
                    "permission denied (needs CAP_NET_ADMIN, or the TAP is owned by another user)"
                        .to_owned()
                }
                _ => e.to_string(),
            };
            let verb = if existed { "attach to" } else { "create" };
            return Err(TapError::SetIff {
                name: name.into(),
                verb,
                hint,
            });
        }
        // The kernel may have completed a name ending in "%d".
        // SAFETY: TUNSETIFF wrote a NUL-terminated name into the buffer (the
        // kernel copies back the full IFNAMSIZ array, NUL-terminated).
        let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let tap = Tap {
            fd,
            ctl,
            name: actual,
            created: !existed,
            vnet_hdr,
        };
        // Carrier off first: the link is not up yet, and the kernel switches
        // it on when a queue attaches.
        tap.set_carrier(false).map_err(|source| {
            tap.configure_error("carrier (TUNSETCARRIER, Linux >= 5.0)", source)
        })?;
        tap.set_mtu(mtu)
            .map_err(|source| tap.configure_error("MTU", source))?;
        tap.set_mac(mac)
            .map_err(|source| tap.configure_error("MAC address", source))?;
        tap.set_up()
            .map_err(|source| tap.configure_error("up", source))?;
        Ok(tap)
    }

    fn configure_error(&self, what: &'static str, source: io::Error) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            what,
            source,
        }
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the bridge created the interface (and it disappears on exit).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether frames carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Sets the offloads the kernel may hand this TAP (`TUNSETOFFLOAD`
    /// flags: checksum, TSO4/6, ECN, USO4/6); 0: the kernel segments and
    /// checksums everything itself.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one frame as a header into `hdr` and the rest at `buf` (one
    /// `readv`); returns the bytes after the header.
    ///
    /// # Safety
    /// As [`read_raw`](Self::read_raw) for `buf` and `capacity`.
    pub unsafe fn read_split(
        &self,
        hdr: &mut [u8],
        buf: *mut u8,
        capacity: usize,
    ) -> io::Result<Option<usize>> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.cast(),
                iov_len: capacity,
            },
        ];
        // SAFETY: both iovecs name writable memory of their lengths (`hdr`
        // is an exclusive borrow; the caller vouches for `buf`).
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n >= 0 {
            return Ok(Some((n as usize).saturating_sub(hdr.len())));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
    }

    /// Writes one frame as the header `hdr` followed by `len` bytes at
    /// `frame` (one `writev`). The header is a private copy, so what the
    /// kernel parses is what the caller validated, whatever a peer writes
    /// into `frame` meanwhile.
    ///
    /// # Safety
    /// As [`write_raw`](Self::write_raw) for `frame` and `len`.
    pub unsafe fn write_split(&self, hdr: &[u8], frame: *const u8, len: usize) -> io::Result<()> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame as *mut libc::c_void,
                iov_len: len,
            },
        ];
        // SAFETY: both iovecs name readable memory of their lengths;
        // writev(2) only reads them.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else if n as usize != len + hdr.len() {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ))
        } else {
            Ok(())
        }
    }

    /// Switches the carrier on or off (`TUNSETCARRIER`).
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        let value: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one `int` through the pointer, which
        // points to a live local.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETCARRIER as _, &value) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let mut req = IfReq::new(&self.name);
        req.data.mtu = mtu as libc::c_int;
        ifreq_ioctl(self.ctl.as_raw_fd(), libc::SIOCSIFMTU, &mut req)
    }

    fn set_mac(&self, mac: MacAddr) -> io::Result<()> {
        let mut req = IfReq::new(&self.name);
        // SAFETY: all-zero is a valid `sockaddr`.
        let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
        sa.sa_family = ARPHRD_ETHER;
        for (dst, src) in sa.sa_data.iter_mut().zip(mac.0) {
            *dst = src as libc::c_char;
        }
        req.data.hwaddr = sa;
        ifreq_ioctl(self.ctl.as_raw_fd(), libc::SIOCSIFHWADDR, &mut req)
    }

    /// Whether the interface is administratively up (`IFF_UP`).
    pub fn is_up(&self) -> io::Result<bool> {
        let mut req = IfReq::new(&self.name);
        ifreq_ioctl(self.ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled in the `flags` member.
        let flags = unsafe { req.data.flags };
        Ok(flags & libc::IFF_UP as libc::c_short != 0)
    }

    fn set_up(&self) -> io::Result<()> {
        let mut req = IfReq::new(&self.name);
        ifreq_ioctl(self.ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled in the `flags` member.
        let flags = unsafe { req.data.flags };
        if flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        req.data.flags = flags | libc::IFF_UP as libc::c_short;
        ifreq_ioctl(self.ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
    }

    /// Reads one frame into `buf` (at most `capacity` bytes). `Ok(None)`
    /// when no frame is waiting.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `capacity` bytes, and no Rust
    /// reference may alias that memory during the call.
    pub unsafe fn read_raw(&self, buf: *mut u8, capacity: usize) -> io::Result<Option<usize>> {
        // SAFETY: the caller guarantees `buf` is writable for `capacity`
        // bytes; read(2) writes at most that many.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.cast(), capacity) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
    }

    /// Writes one frame of `len` bytes from `frame` into the interface.
    ///
    /// # Safety
    /// `frame` must be readable for `len` bytes for the duration of the call.
    /// It may point into memory another party writes concurrently (the
    /// kernel copies it like any user buffer), which is why this takes a raw
    /// pointer and not a slice.
    pub unsafe fn write_raw(&self, frame: *const u8, len: usize) -> io::Result<()> {
        // SAFETY: the caller guarantees `frame` is readable for `len` bytes;
        // write(2) only reads from it.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.cast(), len) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else if n as usize != len {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // A created TAP disappears when `fd` closes; an attached one stays,
        // without carrier.
        if !self.created {
            let _ = self.set_carrier(false);
        }
    }
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifindex(ctl: RawFd, name: &str) -> io::Result<i32> {
    let mut req = IfReq::new(name);
    ifreq_ioctl(ctl, libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled in the `ifindex` member.
    Ok(unsafe { req.data.ifindex })
}

/// Enters the network namespace `/run/netns/NAME` (as `ip netns exec` does
/// for the network part). Called before any thread is started, so the whole
/// process moves.
pub fn enter_netns(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a network namespace name"),
        ));
    }
    let path = format!("/run/netns/{name}");
    let file =
        std::fs::File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("setns({path}): {e}")))
}
