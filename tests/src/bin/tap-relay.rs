//! `tap-relay`: the limit for any TAP-based bridge on a machine (a baseline
//! for `scripts/bench-bridge.sh`, not part of ivnet).
//!
//! ```text
//! tap-relay NS_A NS_B TAP MTU [offload|plain]
//! ```
//!
//! Creates TAP `TAP` in network namespace `/run/netns/NS_A` and another in
//! `NS_B`, both with `IFF_VNET_HDR`, and with `offload` (the default)
//! `TUNSETOFFLOAD` checksum + TSO4/6 + ECN + USO, the same offloads a
//! negotiated ivnet link uses. One thread per direction does a blocking
//! `read` and a `write` per frame, virtio-net header included, with no
//! shared memory in between. Prints "ready" on stdout once both TAPs are
//! up; runs until killed.

use std::ffi::CString;
use std::io::Write;
use std::process::ExitCode;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const OFFLOADS: [libc::c_ulong; 2] = [0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40, 0x0f];

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

fn fail(what: &str) -> ! {
    eprintln!("tap-relay: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn enter(ns: &str) {
    let path = CString::new(format!("/run/netns/{ns}")).expect("no NUL");
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        fail(&format!("open /run/netns/{ns}"));
    }
    // SAFETY: setns(2) on a descriptor we own; the process is single-threaded here.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        fail("setns");
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
}

fn ifreq(name: &str, flags: libc::c_short) -> IfReq {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    req
}

fn ctl(fd: i32, req: libc::c_ulong, ifr: &mut IfReq, what: &str) {
    // SAFETY: each request used here reads/writes one `struct ifreq`.
    if unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) } < 0 {
        fail(what);
    }
}

/// Creates the TAP in the current namespace, sets MTU and up.
fn open_tap(name: &str, mtu: i32, offload: bool) -> i32 {
    let path = c"/dev/net/tun";
    // SAFETY: plain open(2).
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        fail("open /dev/net/tun");
    }
    let mut req = ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    ctl(fd, TUNSETIFF, &mut req, "TUNSETIFF");
    let flags = if offload { &OFFLOADS[..] } else { &[0][..] };
    let set = |f: libc::c_ulong| {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, f) == 0 }
    };
    if !flags.iter().any(|f| set(*f)) {
        fail("TUNSETOFFLOAD");
    }
    // SAFETY: socket(2) with constant arguments.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let mut req = ifreq(name, 0);
    req.data[..4].copy_from_slice(&mtu.to_ne_bytes());
    ctl(sock, libc::SIOCSIFMTU, &mut req, "SIOCSIFMTU");
    let mut req = ifreq(name, 0);
    ctl(sock, libc::SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS");
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as i16;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ctl(sock, libc::SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS");
    // SAFETY: closing our own socket.
    unsafe { libc::close(sock) };
    fd
}

fn relay(from: i32, to: i32) {
    let mut buf = vec![0u8; 1 << 17];
    loop {
        // SAFETY: `buf` is a private buffer of its length.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        // SAFETY: writes the `n` bytes just read.
        let _ = unsafe { libc::write(to, buf.as_ptr().cast(), n as usize) };
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: tap-relay NS_A NS_B TAP MTU [offload|plain]");
        return ExitCode::from(2);
    }
    let mtu: i32 = args[3].parse().unwrap_or(1500);
    let offload = args.get(4).is_none_or(|m| m != "plain");
    enter(&args[0]);
    let a = open_tap(&args[2], mtu, offload);
    enter(&args[1]);
    let b = open_tap(&args[2], mtu, offload);
    println!("ready");
    let _ = std::io::stdout().flush();
    let t = std::thread::spawn(move || relay(a, b));
    relay(b, a);
    let _ = t.join();
    ExitCode::SUCCESS
}
