//! `ivnet-udp-load`: UDP load for the guest benchmark (`scripts/bench-guest.sh`).
//!
//! ```text
//! ivnet-udp-load blast ADDR:PORT SIZE SECS   datagrams of SIZE bytes, 64 per sendmmsg(2), for SECS
//! ivnet-udp-load echo  ADDR:PORT SIZE SECS   one datagram at a time, each waiting for its echo
//! ```
//!
//! `blast` is a sender that is not the bottleneck (a python3 loop tops out
//! near 85k datagrams/s): one system call per 64 datagrams, blocking when
//! the socket buffer is full. `echo` measures round trips through the UDP
//! echo service; every datagram carries its sequence number, so a late
//! echo of an earlier one is not taken for the current one.
//!
//! Both print one JSON line: `blast` `{"sent","secs"}`, `echo`
//! `{"round_trips","lost","secs","avg_us","p99_us"}`.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

fn usage() -> ExitCode {
    eprintln!("usage: ivnet-udp-load blast|echo ADDR:PORT SIZE SECS");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, size, secs] = &args[..] else {
        return usage();
    };
    let (Ok(addr), Ok(size), Ok(secs)) = (
        addr.parse::<SocketAddr>(),
        size.parse::<usize>(),
        secs.parse::<f64>(),
    ) else {
        return usage();
    };
    if !((8..=65507).contains(&size) && secs > 0.0 && secs < 3600.0) {
        eprintln!("ivnet-udp-load: SIZE must be 8..=65507, SECS in (0, 3600)");
        return ExitCode::from(2);
    }
    let duration = Duration::from_secs_f64(secs);
    let sock = match UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ivnet-udp-load: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mode.as_str() {
        "blast" => blast(&sock, size, duration),
        "echo" => echo(&sock, size, duration),
        _ => usage(),
    }
}

fn blast(sock: &UdpSocket, size: usize, duration: Duration) -> ExitCode {
    let payload = vec![0x5au8; size];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: size,
        })
        .collect();
    // SAFETY: `mmsghdr` is plain data; all-zero is a valid value (no name,
    // no control data), the iovec pointers are filled in below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        // SAFETY: `msgs` holds BATCH headers, each pointing at one iovec of
        // `payload` (alive for the call); the socket is connected, so no
        // destination addresses are needed.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent += n as u64;
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // Transient: the TAP's queue is full or the peer is not
                // reachable for a moment (ICMP errors reported back).
                Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR) => {}
                _ => {
                    eprintln!("ivnet-udp-load: sendmmsg: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "{{\"sent\":{sent},\"secs\":{:.6}}}",
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn echo(sock: &UdpSocket, size: usize, duration: Duration) -> ExitCode {
    if let Err(e) = sock.set_read_timeout(Some(Duration::from_millis(200))) {
        eprintln!("ivnet-udp-load: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = vec![0x5au8; size];
    let mut buf = vec![0u8; 65536];
    let mut times_us: Vec<f64> = Vec::new();
    let mut lost = 0u64;
    let start = Instant::now();
    let mut seq: u64 = 0;
    while start.elapsed() < duration {
        seq += 1;
        out[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        if let Err(e) = sock.send(&out) {
            eprintln!("ivnet-udp-load: send: {e}");
            return ExitCode::FAILURE;
        }
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n == size && buf[..8] == out[..8] => {
                    times_us.push(t0.elapsed().as_secs_f64() * 1e6);
                    break;
                }
                // A late echo of an earlier datagram.
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = times_us.len();
    let avg = if n == 0 {
        0.0
    } else {
        times_us.iter().sum::<f64>() / n as f64
    };
    times_us.sort_by(f64::total_cmp);
    let p99 = times_us
        .get((n * 99 / 100).min(n.saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    println!(
        "{{\"round_trips\":{n},\"lost\":{lost},\"secs\":{secs:.6},\"avg_us\":{avg:.1},\"p99_us\":{p99:.1}}}"
    );
    ExitCode::SUCCESS
}
