//! `ivnet-stream`: a byte-exact TCP bulk-transfer check for the bridge tests.
//!
//! ```text
//! ivnet-stream recv ADDR:PORT BYTES SEED [TIMEOUT_S]   listen, verify, acknowledge
//! ivnet-stream send ADDR:PORT BYTES SEED [TIMEOUT_S]   connect, stream, await the verdict
//! ```
//!
//! The sender streams BYTES bytes of a seeded pseudo-random sequence
//! (`StdRng::seed_from_u64(SEED)`); the receiver generates the same sequence
//! and compares every byte, requires end-of-stream exactly after BYTES, and
//! answers one byte: `K` (exact) or `X` (mismatch). Both print one JSON line
//! (`ok`, `bytes`, `secs`, `mbit_s`, first mismatch offset) and exit 0 only
//! for an exact transfer.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const CHUNK: usize = 256 * 1024;

fn usage() -> ExitCode {
    eprintln!("usage: ivnet-stream send|recv ADDR:PORT BYTES SEED [TIMEOUT_S]");
    ExitCode::from(2)
}

fn report(
    role: &str,
    ok: bool,
    bytes: u64,
    start: Instant,
    mismatch: Option<u64>,
    error: Option<String>,
) {
    let secs = start.elapsed().as_secs_f64();
    let mbit = if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    };
    let mismatch = mismatch.map_or("null".to_owned(), |m| m.to_string());
    let error = error.map_or("null".to_owned(), |e| format!("{e:?}"));
    println!(
        "{{\"role\":\"{role}\",\"ok\":{ok},\"bytes\":{bytes},\"secs\":{secs:.3},\"mbit_s\":{mbit:.1},\"mismatch_at\":{mismatch},\"error\":{error}}}"
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return usage();
    }
    let (Ok(addr), Ok(bytes), Ok(seed)) = (
        args[2].parse::<SocketAddr>(),
        args[3].parse::<u64>(),
        args[4].parse::<u64>(),
    ) else {
        return usage();
    };
    let timeout = Duration::from_secs(args.get(5).and_then(|t| t.parse().ok()).unwrap_or(300));
    let ok = match args[1].as_str() {
        "send" => send(addr, bytes, seed, timeout),
        "recv" => recv(addr, bytes, seed, timeout),
        _ => return usage(),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn send(addr: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> bool {
    let start = Instant::now();
    // The receiver may still be starting: retry the connection.
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                if e.kind() != ErrorKind::ConnectionRefused {
                    eprintln!("connect: {e}, retrying");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                report(
                    "send",
                    false,
                    0,
                    start,
                    None,
                    Some(format!("connect {addr}: {e}")),
                );
                return false;
            }
        }
    };
    let _ = stream.set_write_timeout(Some(timeout));
    let _ = stream.set_read_timeout(Some(timeout));
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = CHUNK.min((bytes - sent) as usize);
        rng.fill_bytes(&mut buf[..n]);
        if let Err(e) = stream.write_all(&buf[..n]) {
            report(
                "send",
                false,
                sent,
                start,
                None,
                Some(format!("write: {e}")),
            );
            return false;
        }
        sent += n as u64;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut verdict = [0u8; 1];
    match stream.read_exact(&mut verdict) {
        Ok(()) if verdict[0] == b'K' => {
            report("send", true, sent, start, None, None);
            true
        }
        Ok(()) => {
            report(
                "send",
                false,
                sent,
                start,
                None,
                Some("receiver reported a mismatch".into()),
            );
            false
        }
        Err(e) => {
            report(
                "send",
                false,
                sent,
                start,
                None,
                Some(format!("no verdict: {e}")),
            );
            false
        }
    }
}

fn recv(addr: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> bool {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            report(
                "recv",
                false,
                0,
                Instant::now(),
                None,
                Some(format!("bind {addr}: {e}")),
            );
            return false;
        }
    };
    // Tell a waiting parent that the listener is up.
    eprintln!("listening on {addr}");
    let (mut stream, _) = match listener.accept() {
        Ok(s) => s,
        Err(e) => {
            report(
                "recv",
                false,
                0,
                Instant::now(),
                None,
                Some(format!("accept: {e}")),
            );
            return false;
        }
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut expected = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut exp_len = 0usize; // valid bytes in `expected` not yet compared
    let mut exp_pos = 0usize;
    let mut received = 0u64;
    let mut mismatch = None;
    let mut error = None;
    loop {
        let n = match stream.read(&mut got) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                error = Some(format!("read: {e}"));
                break;
            }
        };
        let mut off = 0;
        while off < n {
            if received >= bytes {
                error = Some(format!("more than {bytes} bytes received"));
                break;
            }
            if exp_pos == exp_len {
                exp_len = CHUNK.min((bytes - received) as usize);
                rng.fill_bytes(&mut expected[..exp_len]);
                exp_pos = 0;
            }
            let take = (n - off).min(exp_len - exp_pos);
            if got[off..off + take] != expected[exp_pos..exp_pos + take] && mismatch.is_none() {
                let i = (0..take)
                    .find(|&i| got[off + i] != expected[exp_pos + i])
                    .unwrap_or(0);
                mismatch = Some(received + i as u64);
            }
            off += take;
            exp_pos += take;
            received += take as u64;
        }
        if error.is_some() {
            break;
        }
    }
    if error.is_none() && received != bytes {
        error = Some(format!("stream ended after {received} of {bytes} bytes"));
    }
    let ok = error.is_none() && mismatch.is_none();
    let _ = stream.write_all(if ok { b"K" } else { b"X" });
    report("recv", ok, received, start, mismatch, error);
    ok
}
