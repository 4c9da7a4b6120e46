//! `ivnet-echo-check`: byte-exact checks against an echo service (RFC 862),
//! run inside the Linux test VM against the bare-metal guest.
//!
//! ```text
//! ivnet-echo-check tcp ADDR:PORT BYTES SEED [TIMEOUT_S]
//! ivnet-echo-check udp ADDR:PORT COUNT MAX_SIZE SEED [TIMEOUT_S]
//! ivnet-echo-check uio-states /dev/uioN MAP_INDEX MAP_SIZE
//! ```
//!
//! - `tcp` connects, streams BYTES bytes of a seeded pseudo-random sequence
//!   (`StdRng::seed_from_u64(SEED)`) from one thread while the main thread
//!   reads the echo and compares every byte against the same sequence, then
//!   half-closes and requires the echo to end exactly after BYTES bytes.
//!   Writing and reading at once matters: an echo server stops reading when
//!   its replies are not consumed, so a send-all-then-read client deadlocks
//!   as soon as the data exceeds the socket buffers.
//! - `udp` sends COUNT datagrams with pseudo-random sizes (1..=MAX_SIZE) and
//!   contents, one at a time, and requires each reply to be identical (a
//!   lost datagram is retried up to 3 times, and counted).
//!
//! - `uio-states` maps the UIO map MAP_INDEX (QEMU ivshmem-doorbell's BAR2,
//!   MAP_SIZE bytes) read-only, parses ivnet's layout page at its start and
//!   prints the state-table entries: `states S0 S1 ...` (e.g. to show that a
//!   killed bridge left its entry in RUN).
//!
//! `tcp` and `udp` print one JSON line (`ok`, sizes, time, first mismatch) and exit 0
//! only for an exact echo. Busybox's `nc` cannot do this: it has no way to
//! compare what comes back with what was sent.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const CHUNK: usize = 64 * 1024;

fn usage() -> ExitCode {
    eprintln!(
        "usage: ivnet-echo-check tcp ADDR:PORT BYTES SEED [TIMEOUT_S]\n       \
         ivnet-echo-check udp ADDR:PORT COUNT MAX_SIZE SEED [TIMEOUT_S]\n       \
         ivnet-echo-check uio-states /dev/uioN MAP_INDEX MAP_SIZE"
    );
    ExitCode::from(2)
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// TCP: stream out and compare what comes back.
fn tcp(addr: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
            left -= n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let mut reader = stream;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut received = 0u64;
    let result = loop {
        let n = match reader.read(&mut got) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break Err(format!("read after {received} bytes: {e}")),
        };
        if received + n as u64 > bytes {
            break Err(format!(
                "the echo is longer than the {bytes} bytes sent (at least {})",
                received + n as u64
            ));
        }
        rng.fill_bytes(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            break Err(format!(
                "mismatch at byte {}: got {:#04x}, sent {:#04x}",
                received + i as u64,
                got[i],
                want[i]
            ));
        }
        received += n as u64;
    };
    let sent = sender
        .join()
        .map_err(|_| "sender thread panicked".to_owned())?;
    result?;
    sent?;
    if received != bytes {
        return Err(format!("the echo ended after {received} of {bytes} bytes"));
    }
    Ok((received, start.elapsed().as_secs_f64()))
}

/// UDP: one datagram at a time, each reply must be identical.
fn udp(
    addr: SocketAddr,
    count: u32,
    max_size: usize,
    seed: u64,
    timeout: Duration,
) -> Result<(u64, u32, f64), String> {
    const TRIES: u32 = 3;
    let start = Instant::now();
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    sock.connect(addr).map_err(|e| format!("connect: {e}"))?;
    // Per try; the total bound is TRIES times this per datagram.
    let per_try = (timeout / TRIES).max(Duration::from_millis(100));
    sock.set_read_timeout(Some(per_try))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reply = vec![0u8; max_size + 1];
    let mut bytes = 0u64;
    let mut retries = 0u32;
    for i in 0..count {
        let size = rng.random_range(1..=max_size);
        let mut msg = vec![0u8; size];
        rng.fill_bytes(&mut msg);
        let mut answered = false;
        for _ in 0..TRIES {
            sock.send(&msg)
                .map_err(|e| format!("send of datagram {i} ({size} bytes): {e}"))?;
            match sock.recv(&mut reply) {
                Ok(n) if reply[..n] == msg[..] => {
                    answered = true;
                    break;
                }
                Ok(n) => {
                    return Err(format!(
                        "datagram {i}: sent {size} bytes, the reply ({n} bytes) differs"
                    ));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    retries += 1;
                }
                Err(e) => return Err(format!("recv of datagram {i}: {e}")),
            }
        }
        if !answered {
            return Err(format!(
                "datagram {i} ({size} bytes): no reply after {TRIES} tries"
            ));
        }
        bytes += size as u64;
    }
    Ok((bytes, retries, start.elapsed().as_secs_f64()))
}

/// The state-table entries of the ivshmem window behind UIO map `index`
/// (`size` bytes) of `node`.
fn uio_states(node: &str, index: u64, size: u64) -> Result<Vec<u32>, String> {
    use ivshmem::layout::LayoutPage;
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(node).map_err(|e| format!("{node}: {e}"))?;
    let len = usize::try_from(size).map_err(|e| e.to_string())?;
    // SAFETY: a fresh read-only shared mapping of the UIO map (the kernel
    // selects map N by offset N pages); it is only read with volatile loads
    // below and unmapped before returning.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            (index * 4096) as libc::off_t,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!(
            "mmap {node} map{index}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let base = base.cast::<u8>();
    let read_u32 = |offset: u64| -> Option<u32> {
        (offset.is_multiple_of(4) && offset + 4 <= size).then(|| {
            // SAFETY: aligned and inside the mapping (checked above).
            unsafe {
                base.wrapping_add(offset as usize)
                    .cast::<u32>()
                    .read_volatile()
            }
        })
    };
    let mut page = [0u8; LayoutPage::ENCODED_LEN];
    for (i, b) in page.iter_mut().enumerate() {
        // SAFETY: the layout page is the first bytes of the mapping, which
        // is at least a page long (UIO maps are page-granular).
        *b = unsafe { base.wrapping_add(i).read_volatile() };
    }
    let result = LayoutPage::parse(&page, size)
        .map_err(|e| format!("layout page: {e}"))
        .and_then(|layout| {
            (0..layout.layout.max_peers)
                .map(|p| {
                    layout
                        .layout
                        .state_entry_offset(p)
                        .and_then(read_u32)
                        .ok_or_else(|| format!("state entry of peer {p} outside the map"))
                })
                .collect()
        });
    // SAFETY: unmaps exactly the mapping made above; nothing refers to it.
    unsafe { libc::munmap(base.cast(), len) };
    result
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(mode) = args.get(1).map(String::as_str) else {
        return usage();
    };
    if mode == "uio-states" {
        let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(node), Some(index), Some(size)) = (args.get(2), num(3), num(4)) else {
            return usage();
        };
        return match uio_states(node, index, size) {
            Ok(states) => {
                let list: Vec<String> = states.iter().map(u32::to_string).collect();
                println!("states {}", list.join(" "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ivnet-echo-check: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(addr) = args.get(2).and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return usage();
    };
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
    match mode {
        "tcp" => {
            let (Some(bytes), Some(seed)) = (num(3), num(4)) else {
                return usage();
            };
            let timeout = Duration::from_secs(num(5).unwrap_or(120));
            match tcp(addr, bytes, seed, timeout) {
                Ok((n, secs)) => {
                    println!(
                        "{{\"check\":\"tcp-echo\",\"ok\":true,\"bytes\":{n},\"secs\":{secs:.3},\"mbit_s\":{:.1}}}",
                        n as f64 * 8.0 / secs.max(1e-9) / 1e6
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!(
                        "{{\"check\":\"tcp-echo\",\"ok\":false,\"bytes\":{bytes},\"error\":{}}}",
                        json_str(&e)
                    );
                    ExitCode::FAILURE
                }
            }
        }
        "udp" => {
            let (Some(count), Some(max), Some(seed)) = (num(3), num(4), num(5)) else {
                return usage();
            };
            let (Ok(count), Ok(max @ 1..=65507)) = (u32::try_from(count), usize::try_from(max))
            else {
                return usage();
            };
            let timeout = Duration::from_secs(num(6).unwrap_or(30));
            match udp(addr, count, max, seed, timeout) {
                Ok((bytes, retries, secs)) => {
                    println!(
                        "{{\"check\":\"udp-echo\",\"ok\":true,\"datagrams\":{count},\"bytes\":{bytes},\"retries\":{retries},\"secs\":{secs:.3}}}"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!(
                        "{{\"check\":\"udp-echo\",\"ok\":false,\"datagrams\":{count},\"error\":{}}}",
                        json_str(&e)
                    );
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
