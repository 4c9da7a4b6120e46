//! Two OS processes sharing one memfd, as two partitions share an ivshmem
//! window: each maps its own output section read-write and the peer's
//! section and the state table read-only, and they ring each other through
//! eventfds (vector 0: state change, vector 1: data).
//!
//! They run the full state handshake, exchange more than 1,000,000 frames
//! of random sizes (60..=16384 bytes) both ways with content checks, and
//! peer 0 resets the link in the middle; the link must renegotiate and
//! traffic resume. Frames lost across the reset are bounded by the queue
//! length; no frame is duplicated, reordered or torn.
//!
//! The children are this test binary re-executed with `--ignored --exact
//! child_peer`; the shared fds are inherited.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{FromRawFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ivnet_ring::{Config, Endpoint, Notify, OwnSection, PeerSection};
use memmap2::{MmapOptions, MmapRaw};

const SECTION: usize = 0x7f000;
const STATE_TABLE: usize = 0x1000;
const WINDOW: usize = STATE_TABLE + 2 * SECTION;
/// Data frames per direction (plus a final FIN frame each way).
const FRAMES_PER_DIRECTION: u64 = 501_000;
const FIN: u64 = u64::MAX;

fn section_offset(id: usize) -> usize {
    STATE_TABLE + id * SECTION
}

/// xorshift64* stream seeded by the frame's sequence number.
fn stream(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Frame layout: seq u64 | len u64 | pattern words of `stream(seq)`.
fn fill(seq: u64, buf: &mut [u8]) {
    let len = buf.len() as u64;
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&len.to_le_bytes());
    let mut next = stream(seq);
    for chunk in buf[16..].chunks_mut(8) {
        let word = next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

fn check(buf: &[u8]) -> Result<u64, String> {
    if buf.len() < 16 {
        return Err(format!("frame of {} bytes", buf.len()));
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
    let len = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    if len != buf.len() as u64 {
        return Err(format!(
            "frame {seq}: length {} but header says {len}",
            buf.len()
        ));
    }
    let mut next = stream(seq);
    for (i, chunk) in buf[16..].chunks(8).enumerate() {
        let word = next().to_le_bytes();
        if chunk != &word[..chunk.len()] {
            return Err(format!("frame {seq}: torn at word {i}"));
        }
    }
    Ok(seq)
}

fn env_num(name: &str) -> u64 {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} not set"))
        .parse()
        .unwrap()
}

/// Maps `len` bytes at `offset` of the shared file.
fn map(file: &File, offset: usize, len: usize, writable: bool) -> MmapRaw {
    let mut opts = MmapOptions::new();
    opts.offset(offset as u64).len(len);
    if writable {
        opts.map_raw(file)
    } else {
        opts.map_raw_read_only(file)
    }
    .expect("mmap")
}

/// Permissions of the mapping that contains `addr`, from /proc/self/maps.
fn perms_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap();
        let perms = parts.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&addr) {
            return perms.to_string();
        }
    }
    panic!("{addr:#x} not mapped");
}

fn ring(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes from a local buffer to an eventfd we own.
    let n = unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    assert_eq!(n, 8, "eventfd write");
}

/// Waits up to `timeout_ms` on the eventfds and drains them; returns how
/// many signalled.
fn wait(fds: &[RawFd], timeout_ms: i32) -> usize {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    assert!(n >= 0, "poll");
    let mut woke = 0;
    for p in &pfds {
        if p.revents & libc::POLLIN != 0 {
            let mut value = [0u8; 8];
            // SAFETY: reading 8 bytes into a local buffer from our eventfd.
            unsafe { libc::read(p.fd, value.as_mut_ptr().cast(), 8) };
            woke += 1;
        }
    }
    woke
}

/// One peer, run in a child process.
#[test]
#[ignore = "child process of two_processes_exchange_a_million_frames"]
fn child_peer() {
    let id = env_num("IVNET_ID") as usize;
    let peer = 1 - id;
    // SAFETY: the parent passed us this inherited memfd; we own it now.
    let file = unsafe { File::from_raw_fd(env_num("IVNET_MEMFD") as RawFd) };
    let efds: Vec<RawFd> = std::env::var("IVNET_EFDS")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let own_vectors = [efds[id * 2], efds[id * 2 + 1]];
    let peer_vectors = [efds[peer * 2], efds[peer * 2 + 1]];

    let state_table = map(&file, 0, STATE_TABLE, false);
    // The stand-in for Jailhouse's STATE register: a writable view of the
    // state table used for nothing but our own entry.
    let state_register = map(&file, 0, STATE_TABLE, true);
    let own_map = map(&file, section_offset(id), SECTION, true);
    let peer_map = map(&file, section_offset(peer), SECTION, false);
    assert_eq!(
        perms_of(peer_map.as_ptr() as usize),
        "r--s",
        "peer section must be read-only"
    );
    assert_eq!(
        perms_of(state_table.as_ptr() as usize),
        "r--s",
        "state table must be read-only"
    );
    assert_eq!(perms_of(own_map.as_ptr() as usize), "rw-s");

    let peer_entry = state_table.as_mut_ptr().cast::<u32>().wrapping_add(peer);
    let own_entry = state_register.as_mut_ptr().cast::<u32>().wrapping_add(id);
    let peer_state = |_: ()| {
        // SAFETY: entry `peer` lies in the mapped, 4-byte aligned table,
        // which is read-only: the ring's read-only load policy applies.
        unsafe { ivnet_ring::shm::load_acquire_u32(peer_entry) }
    };
    let publish_state = |value: u32| {
        // SAFETY: our own entry in the writable view; aligned, in bounds.
        unsafe { AtomicU32::from_ptr(own_entry) }.store(value, Ordering::Release);
        ring(peer_vectors[0]);
    };

    // SAFETY: the own section mapping is RW, SECTION bytes, page aligned,
    // and lives until the end of this function, beyond the endpoint.
    let own = unsafe { OwnSection::new(own_map.as_mut_ptr(), SECTION) }.unwrap();
    // SAFETY: as above, read-only.
    let peer_section = unsafe { PeerSection::new(peer_map.as_ptr(), SECTION) }.unwrap();
    let mut ep = Endpoint::new(own, peer_section, Config::default()).unwrap();

    let frames = env_num("IVNET_FRAMES");
    let mut sizes = stream(0x5eed + id as u64);
    let mut buf = vec![0u8; 16384 + 18];
    let mut scratch = vec![0u8; 16384 + 18];
    let (mut sent, mut received, mut lost) = (0u64, 0u64, 0u64);
    let mut last_seq: Option<u64> = None;
    let mut epoch = 0u64; // link resets seen
    let mut epoch_of_last_frame = 0u64;
    let (mut fin_sent, mut fin_received, mut reset_done) = (false, false, false);
    let (mut doorbells_rung, mut wakeups, mut idle_timeouts) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);

    loop {
        assert!(
            Instant::now() < deadline,
            "peer {id} timed out: sent {sent} received {received}"
        );
        let out = ep.on_peer_state(peer_state(()), true);
        if let Some(state) = out.write_state {
            publish_state(state.raw());
        }
        if out.link_reset {
            epoch += 1;
        }
        if id == 0 && !reset_done && sent >= frames / 2 {
            // Reset in the middle of the transfer.
            let out = ep.shutdown();
            publish_state(out.write_state.expect("RESET").raw());
            reset_done = true;
            epoch += 1;
            continue;
        }
        let mut busy = false;
        if ep.running() {
            ep.reclaim().expect("honest peer");
            for _ in 0..64 {
                let Some(n) = ep.recv(&mut buf).expect("honest peer") else {
                    break;
                };
                busy = true;
                let seq = check(&buf[..n]).unwrap_or_else(|e| panic!("peer {id}: {e}"));
                if seq == FIN {
                    fin_received = true;
                    continue;
                }
                if let Some(last) = last_seq {
                    assert!(
                        seq > last,
                        "peer {id}: frame {seq} after {last} (duplicate or reordered)"
                    );
                    if seq != last + 1 {
                        assert!(
                            epoch > epoch_of_last_frame,
                            "peer {id}: frames {}..{seq} lost without a reset",
                            last + 1
                        );
                        lost += seq - last - 1;
                    }
                } else if seq != 0 {
                    lost += seq;
                }
                last_seq = Some(seq);
                epoch_of_last_frame = epoch;
                received += 1;
            }
            if ep.flush_rx() == Notify::Doorbell {
                ring(peer_vectors[1]);
                doorbells_rung += 1;
            }
            for _ in 0..32 {
                if sent >= frames || !ep.tx_ready() {
                    break;
                }
                let len = 60 + (sizes() % (16384 - 60 + 1)) as usize;
                fill(sent, &mut scratch[..len]);
                let mut slot = ep.tx_reserve(len).unwrap();
                slot.write_at(0, &scratch[..len]).unwrap();
                slot.commit(len).unwrap();
                sent += 1;
                busy = true;
            }
            if sent >= frames && !fin_sent && ep.tx_ready() {
                let mut fin = [0u8; 64];
                fill(FIN, &mut fin);
                ep.send(&fin).unwrap();
                fin_sent = true;
            }
            if ep.flush_tx() == Notify::Doorbell {
                ring(peer_vectors[1]);
                doorbells_rung += 1;
            }
            if fin_sent && fin_received && ep.tx_in_flight() == 0 {
                break;
            }
            if !busy && ep.enable_rx_notify().expect("honest peer") {
                busy = true;
            }
        }
        if !busy {
            if wait(&own_vectors, 50) > 0 {
                wakeups += 1;
            } else {
                idle_timeouts += 1;
            }
        }
    }
    let stats = ep.stats();
    println!(
        "RESULT id={id} sent={sent} received={received} lost={lost} resets={} errors={} \
         doorbells={doorbells_rung} suppressed={} wakeups={wakeups} idle_timeouts={idle_timeouts}",
        stats.link_resets,
        stats.total_errors(),
        stats.notifications_suppressed,
    );
    std::io::stdout().flush().unwrap();
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} missing in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn two_processes_exchange_a_million_frames() {
    // SAFETY: plain system calls creating fds this test owns; no CLOEXEC so
    // the children inherit them.
    let memfd = unsafe { libc::memfd_create(c"ivnet-ring-test".as_ptr(), 0) };
    assert!(memfd >= 0);
    // SAFETY: sizing the memfd we just created.
    assert_eq!(unsafe { libc::ftruncate(memfd, WINDOW as libc::off_t) }, 0);
    let efds: Vec<RawFd> = (0..4)
        .map(|_| {
            // SAFETY: creates a fresh eventfd.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
            assert!(fd >= 0);
            fd
        })
        .collect();
    let efd_list = efds
        .iter()
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().unwrap();
    let frames = FRAMES_PER_DIRECTION;
    let mut children: Vec<_> = (0..2)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "child_peer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("IVNET_ID", id.to_string())
                .env("IVNET_MEMFD", memfd.to_string())
                .env("IVNET_EFDS", &efd_list)
                .env("IVNET_FRAMES", frames.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut results = Vec::new();
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "child failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("child timed out");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The harness prints "test child_peer ... " before our line.
        let line = text
            .lines()
            .find_map(|l| l.find("RESULT").map(|at| l[at..].to_string()))
            .unwrap_or_else(|| panic!("no RESULT line in child output:\n{text}"));
        eprintln!("{line}");
        results.push(line);
    }
    let (a, b) = (&results[0], &results[1]);
    for line in [a, b] {
        assert_eq!(field(line, "sent"), frames);
        assert_eq!(field(line, "errors"), 0);
    }
    // Each side saw the reset at least once (peer 0 caused it).
    assert!(
        field(a, "resets") + field(b, "resets") >= 1,
        "no reset happened"
    );
    // Losses only across the reset, bounded by what was in flight.
    for (rx, tx) in [(a, b), (b, a)] {
        let received = field(rx, "received");
        let lost = field(rx, "lost");
        assert!(lost <= 2048, "lost {lost} frames, more than a queue");
        assert_eq!(
            received + lost,
            field(tx, "sent"),
            "every frame received or lost at the reset"
        );
    }
    let total = field(a, "received") + field(b, "received");
    assert!(total >= 1_000_000, "only {total} frames exchanged");
    // Batching and suppression: far fewer doorbells than frames.
    let doorbells = field(a, "doorbells") + field(b, "doorbells");
    eprintln!(
        "{total} frames, {doorbells} data doorbells ({:.4} per frame)",
        doorbells as f64 / total as f64
    );
    assert!(
        doorbells < total / 4,
        "suppression ineffective: {doorbells} doorbells for {total} frames"
    );
}

/// A write into the peer's read-only section kills the writer: the mapping
/// really is read-only.
#[test]
#[ignore = "child process of peer_section_is_really_read_only"]
fn child_violator() {
    // SAFETY: inherited memfd handed to us by the parent.
    let file = unsafe { File::from_raw_fd(env_num("IVNET_MEMFD") as RawFd) };
    let peer_map = map(&file, section_offset(1), SECTION, false);
    // SAFETY: deliberately writing through a read-only mapping to prove the
    // kernel refuses it; the process dies with SIGSEGV before this returns.
    unsafe { peer_map.as_mut_ptr().write_volatile(1) };
    println!("WROTE");
}

#[test]
fn peer_section_is_really_read_only() {
    use std::os::unix::process::ExitStatusExt as _;
    // SAFETY: as in the main test.
    let memfd = unsafe { libc::memfd_create(c"ivnet-ro-test".as_ptr(), 0) };
    // SAFETY: sizing our own memfd.
    assert_eq!(unsafe { libc::ftruncate(memfd, WINDOW as libc::off_t) }, 0);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_violator", "--nocapture"])
        .env("IVNET_MEMFD", memfd.to_string())
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}",
        out.status
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("WROTE"));
}
