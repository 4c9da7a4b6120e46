//! Two endpoints over one heap region: handshake, traffic, notification
//! suppression, zero-copy paths, and the hostile-peer cases.

use ivnet_ring::testing::{SharedRegion, check_frame, fill_frame, handshake, handshake_from};
use ivnet_ring::{
    Config, Endpoint, Geometry, GeometryError, LinkState, Notify, OwnSection, PeerSection,
    RingError, ShmError, TxError,
};

const NET: usize = 0x7f000;
const SMALL: usize = 0x4000; // qlen 64, data 0x3900

fn small_cfg() -> Config {
    Config::with_mtu(1500)
}

fn running_pair(region: &SharedRegion, cfg: Config) -> (Endpoint, Endpoint) {
    let (mut a, mut b) = region.pair(cfg);
    handshake(&mut a, &mut b);
    (a, b)
}

/// Moves every frame queued at `tx` to `rx`, checking contents; returns
/// the sequence numbers received.
fn drain(rx: &mut Endpoint, buf: &mut [u8]) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(n) = rx.recv(buf).expect("recv") {
        seqs.push(check_frame(&buf[..n]).expect("content"));
    }
    let _ = rx.flush_rx();
    seqs
}

#[test]
fn handshake_then_frames_both_ways() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    assert_eq!(
        (a.local_state(), b.local_state()),
        (LinkState::Run, LinkState::Run)
    );
    let mut frame = vec![0u8; 9000];
    let mut buf = vec![0u8; 16384 + 18];
    for seq in 0..100u64 {
        fill_frame(seq, &mut frame[..60 + seq as usize * 80]);
        a.send(&frame[..60 + seq as usize * 80]).unwrap();
        b.send(&frame[..60 + seq as usize * 80]).unwrap();
    }
    assert_eq!(
        a.flush_tx(),
        Notify::Doorbell,
        "first publish must wake a fresh peer"
    );
    let _ = b.flush_tx();
    assert_eq!(drain(&mut b, &mut buf), (0..100).collect::<Vec<_>>());
    assert_eq!(drain(&mut a, &mut buf), (0..100).collect::<Vec<_>>());
    assert_eq!(a.reclaim().unwrap(), 100);
    assert_eq!(b.reclaim().unwrap(), 100);
    assert_eq!(a.stats().tx_frames, 100);
    assert_eq!(b.stats().rx_frames, 100);
    assert_eq!(a.stats().total_errors() + b.stats().total_errors(), 0);
}

/// Wire format: what the sender writes is exactly what ivshmem-net expects.
#[test]
fn wire_format_matches_reference() {
    let region = SharedRegion::new(NET);
    let (mut a, _b) = running_pair(&region, Config::default());
    let frame = [0xabu8; 100];
    a.send(&frame).unwrap();
    a.send(&frame[..60]).unwrap();
    let _ = a.flush_tx();
    let mut raw = [0u8; 16];
    region.peek(0, 0, &mut raw);
    assert_eq!(
        u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        0xd080,
        "desc.addr = offset of data area"
    );
    assert_eq!(
        u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        100,
        "desc.len"
    );
    assert_eq!(
        u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        0,
        "desc.flags"
    );
    region.peek(0, 16, &mut raw);
    // Second slot: align64(18 + 100) = 128 bytes later.
    assert_eq!(
        u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        0xd080 + 128
    );
    let mut idx = [0u8; 2];
    region.peek(0, 0x8002, &mut idx);
    assert_eq!(u16::from_le_bytes(idx), 2, "avail.idx");
    region.peek(0, 0x8006, &mut idx);
    assert_eq!(u16::from_le_bytes(idx), 1, "avail.ring[1]");
    let mut data = [0u8; 100];
    region.peek(0, 0xd080, &mut data);
    assert_eq!(data, frame);
}

/// Receiver completions land in its own section as {id, len = 1}.
#[test]
fn used_ring_format() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    a.send(&[1u8; 64]).unwrap();
    let _ = a.flush_tx();
    let mut buf = [0u8; 64];
    assert_eq!(b.recv(&mut buf).unwrap(), Some(64));
    let _ = b.flush_rx();
    let mut raw = [0u8; 10];
    region.peek(1, 0x9042, &mut raw);
    assert_eq!(
        u16::from_le_bytes(raw[0..2].try_into().unwrap()),
        1,
        "used.idx"
    );
    assert_eq!(
        u32::from_le_bytes(raw[2..6].try_into().unwrap()),
        0,
        "used.ring[0].id"
    );
    assert_eq!(
        u32::from_le_bytes(raw[6..10].try_into().unwrap()),
        1,
        "used.ring[0].len"
    );
}

#[test]
fn index_and_data_area_wrap_around() {
    let region = SharedRegion::new(SMALL);
    let (mut a, mut b) = running_pair(&region, small_cfg());
    let mut frame = vec![0u8; 1514];
    let mut buf = vec![0u8; 1518];
    let mut next_rx = 0u64;
    // > 65536 frames crosses the u16 index wrap; sizes vary so the data
    // area wraps at irregular points.
    for seq in 0..70_000u64 {
        let len = 60 + (seq as usize * 37) % 1455;
        fill_frame(seq, &mut frame[..len]);
        while !a.tx_ready() {
            for s in drain(&mut b, &mut buf) {
                assert_eq!(s, next_rx);
                next_rx += 1;
            }
        }
        a.send(&frame[..len]).unwrap();
        if seq % 7 == 0 {
            let _ = a.flush_tx();
        }
    }
    let _ = a.flush_tx();
    for s in drain(&mut b, &mut buf) {
        assert_eq!(s, next_rx);
        next_rx += 1;
    }
    assert_eq!(next_rx, 70_000);
    a.reclaim().unwrap();
    assert_eq!(a.tx_in_flight(), 0);
    assert_eq!(a.stats().total_errors() + b.stats().total_errors(), 0);
}

/// Event-index suppression: a polling receiver gets no doorbells; one that
/// leaves polling gets exactly one for the next batch.
#[test]
fn doorbells_are_suppressed_while_the_receiver_polls() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    let frame = [7u8; 60];
    a.send(&frame).unwrap();
    assert_eq!(a.flush_tx(), Notify::Doorbell);
    // Receiver is "polling" (has not re-enabled notifications).
    for _ in 0..50 {
        a.send(&frame).unwrap();
        assert_eq!(a.flush_tx(), Notify::Suppressed);
    }
    let mut buf = [0u8; 60];
    while b.recv(&mut buf).unwrap().is_some() {}
    let _ = b.flush_rx();
    assert!(
        !b.enable_rx_notify().unwrap(),
        "nothing pending after draining"
    );
    a.send(&frame).unwrap();
    a.send(&frame).unwrap();
    assert_eq!(a.flush_tx(), Notify::Doorbell, "receiver asked to be woken");
    a.send(&frame).unwrap();
    assert_eq!(
        a.flush_tx(),
        Notify::Suppressed,
        "only one doorbell per wakeup"
    );
    // Re-check after enabling: frames that raced in are reported.
    assert!(b.enable_rx_notify().unwrap());
    assert_eq!(a.stats().doorbells_requested, 2);
    assert_eq!(a.stats().notifications_suppressed, 51);
}

/// A full TX ring asks for a completion doorbell (publishes `used_event`),
/// and the receiver's flush honours it — exactly once.
///
/// The used index is moved away from 0 first: right after the handshake
/// zeroed the sections, `used_event` is 0, so the first completion would
/// ring whether or not the sender armed it.
#[test]
fn full_ring_requests_completion_doorbell() {
    let region = SharedRegion::new(SMALL);
    let (mut a, mut b) = running_pair(&region, small_cfg());
    let used_event = Geometry::for_section(SMALL).unwrap().used_event_offset();
    let frame = [3u8; 1500];
    let mut buf = [0u8; 1518];
    for _ in 0..5 {
        a.send(&frame).unwrap();
    }
    let _ = a.flush_tx();
    for _ in 0..5 {
        assert!(b.recv(&mut buf).unwrap().is_some());
    }
    let _ = b.flush_rx();
    assert_eq!(a.reclaim().unwrap(), 5);
    // Not armed: a completion does not ring.
    a.send(&frame).unwrap();
    let _ = a.flush_tx();
    assert!(b.recv(&mut buf).unwrap().is_some());
    assert_eq!(b.flush_rx(), Notify::Suppressed, "the sender did not ask");
    assert_eq!(a.stats().tx_completion_irq_requests, 0);

    let mut sent = 0;
    while a.tx_ready() {
        a.send(&frame).unwrap();
        sent += 1;
    }
    let _ = a.flush_tx();
    assert!(sent >= 2);
    assert_eq!(a.send(&frame), Err(TxError::Full));
    assert_eq!(a.stats().tx_ring_full, 1);
    assert_eq!(
        a.stats().tx_completion_irq_requests,
        1,
        "armed once, not again for the same completion"
    );
    let mut raw = [0u8; 2];
    region.peek(0, used_event, &mut raw);
    assert_eq!(
        u16::from_le_bytes(raw),
        6,
        "used_event = completions so far"
    );
    assert!(b.recv(&mut buf).unwrap().is_some());
    assert_eq!(
        b.flush_rx(),
        Notify::Doorbell,
        "the sender is waiting for space"
    );
    assert!(b.recv(&mut buf).unwrap().is_some());
    assert_eq!(
        b.flush_rx(),
        Notify::Suppressed,
        "one completion doorbell is enough"
    );
    assert!(a.tx_ready());
    assert_eq!(a.stats().tx_completion_irq_requests, 1);
}

#[test]
fn zero_copy_paths() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    let mut slot = a.tx_reserve(2000).unwrap();
    assert_eq!(slot.capacity(), 2000);
    let mut local = vec![0u8; 1234];
    fill_frame(42, &mut local);
    // Bounds-checked copies into the slot: nothing outside it is touched.
    assert_eq!(
        slot.write_at(1999, &[0, 0]),
        Err(ShmError::OutOfBounds {
            offset: 1999,
            size: 2,
            len: 2000
        })
    );
    assert!(slot.write_at(usize::MAX, &[0]).is_err());
    slot.write_at(0, &local[..1000]).unwrap();
    slot.write_at(1000, &local[1000..]).unwrap();
    let mut back = [0u8; 8];
    slot.read_at(0, &mut back).unwrap();
    assert_eq!(back, local[..8]);
    assert_eq!(
        slot.commit(2001),
        Err(TxError::TooLong {
            len: 2001,
            max: 2000
        })
    );
    let slot = a.tx_reserve(2000).unwrap();
    slot.commit(1234).unwrap();
    // An abandoned reservation queues nothing.
    let _abandoned = a.tx_reserve(100).unwrap();
    let _ = a.flush_tx();
    let frame = b.rx_peek().unwrap().expect("frame");
    assert_eq!(frame.len(), 1234);
    let mut buf = vec![0u8; 1234];
    frame.copy_to(&mut buf);
    let mut tail = [0u8; 4];
    frame.read_at(1230, &mut tail).unwrap();
    assert_eq!(tail, buf[1230..]);
    assert!(frame.read_at(1231, &mut tail).is_err(), "beyond the frame");
    // Not released: peeking again sees the same frame.
    let again = b.rx_peek().unwrap().expect("same frame");
    assert_eq!(again.len(), 1234);
    again.release();
    assert!(b.rx_peek().unwrap().is_none());
    assert_eq!(check_frame(&buf).unwrap(), 42);
    assert_eq!(b.stats().rx_frames, 1);
}

#[test]
fn send_rejects_bad_frames_without_touching_the_ring() {
    let region = SharedRegion::new(NET);
    let (mut a, _b) = region.pair(Config::default());
    assert_eq!(a.send(&[0u8; 60]), Err(TxError::LinkDown));
    let (mut a, _b) = running_pair(&region, Config::default());
    assert_eq!(a.send(&[]), Err(TxError::Empty));
    assert_eq!(
        a.send(&vec![0u8; 16384 + 19]),
        Err(TxError::TooLong {
            len: 16384 + 19,
            max: 16384 + 18
        })
    );
    assert_eq!(a.flush_tx(), Notify::Idle);
}

/// An oversize frame is dropped and counted, one per call: the caller's
/// budget bounds the work even if the peer sends nothing but oversize
/// frames.
#[test]
fn oversize_frames_are_dropped_and_counted_one_per_call() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    for _ in 0..10 {
        a.send(&[1u8; 3000]).unwrap();
    }
    a.send(&[2u8; 100]).unwrap();
    let _ = a.flush_tx();
    let mut small = [0u8; 1518];
    for dropped in 1..=10 {
        assert_eq!(b.recv(&mut small).unwrap(), None);
        assert_eq!(b.stats().rx_dropped_oversize, dropped);
        assert!(b.rx_pending().unwrap(), "more frames wait");
    }
    assert_eq!(b.recv(&mut small).unwrap(), Some(100));
    assert_eq!(b.stats().rx_frames, 11, "dropped frames are completed too");
    assert_eq!(b.recv(&mut small).unwrap(), None);
    assert!(!b.enable_rx_notify().unwrap());
}

// ----- hostile peer ------------------------------------------------------

/// Offsets inside a 0x7f000 section.
const AVAIL_IDX: usize = 0x8002;
const AVAIL_RING: usize = 0x8004;
const USED_IDX: usize = 0x9042;
const USED_RING: usize = 0x9044;
const DATA: usize = 0xd080;

/// B (the victim) receives from A's section, which the test corrupts after
/// A published a frame; checks the error, the fault, the reset and that the
/// link recovers.
fn corrupt_rx_and_recover(corrupt: impl Fn(&SharedRegion), expect: fn(&RingError) -> bool) {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    a.send(&[9u8; 200]).unwrap();
    let _ = a.flush_tx();
    corrupt(&region);
    let mut buf = [0u8; 16402];
    let err = b.recv(&mut buf).expect_err("corruption must be detected");
    assert!(expect(&err), "unexpected error {err:?}");
    assert_eq!(b.stats().total_errors(), 1);
    assert!(!b.running());
    assert_eq!(
        b.recv(&mut buf),
        Err(RingError::Faulted),
        "no further reads from a faulted ring"
    );
    assert_eq!(b.stats().total_errors(), 1, "Faulted is not counted again");
    recover(&mut a, &mut b);
}

fn recover(a: &mut Endpoint, b: &mut Endpoint) {
    // The victim goes to RESET; the peer follows; both renegotiate.
    let out = b.on_peer_state(a.local_state().raw(), true);
    assert_eq!(out.write_state, Some(LinkState::Reset));
    assert!(out.link_reset);
    assert_eq!(b.stats().link_resets, 1);
    handshake(a, b);
    a.send(&[5u8; 80]).unwrap();
    let _ = a.flush_tx();
    let mut buf = [0u8; 80];
    assert_eq!(
        b.recv(&mut buf).unwrap(),
        Some(80),
        "traffic flows after the reset"
    );
    assert_eq!(buf, [5u8; 80]);
}

#[test]
fn hostile_avail_index_jump() {
    corrupt_rx_and_recover(
        |r| r.poke(0, AVAIL_IDX, &5000u16.to_le_bytes()),
        |e| {
            matches!(
                e,
                RingError::AvailIndexOutOfRange {
                    published: 5000,
                    consumed: 0
                }
            )
        },
    );
}

#[test]
fn hostile_descriptor_id() {
    corrupt_rx_and_recover(
        |r| r.poke(0, AVAIL_RING, &4000u16.to_le_bytes()),
        |e| matches!(e, RingError::DescriptorIdOutOfRange(4000)),
    );
}

#[test]
fn hostile_descriptor_flags() {
    corrupt_rx_and_recover(
        |r| r.poke(0, 12, &1u16.to_le_bytes()),
        |e| matches!(e, RingError::DescriptorFlags(1)),
    );
}

#[test]
fn hostile_descriptor_address_in_ring_header() {
    corrupt_rx_and_recover(
        |r| r.poke(0, 0, &0x100u64.to_le_bytes()),
        |e| matches!(e, RingError::DescriptorOutOfBounds { addr: 0x100, .. }),
    );
}

#[test]
fn hostile_descriptor_address_beyond_section() {
    corrupt_rx_and_recover(
        |r| r.poke(0, 0, &u64::MAX.to_le_bytes()),
        |e| matches!(e, RingError::DescriptorOutOfBounds { .. }),
    );
}

#[test]
fn hostile_descriptor_length_overflow() {
    corrupt_rx_and_recover(
        |r| {
            r.poke(0, 0, &((NET - 16) as u64).to_le_bytes());
            r.poke(0, 8, &17u32.to_le_bytes());
        },
        |e| matches!(e, RingError::DescriptorOutOfBounds { len: 17, .. }),
    );
}

#[test]
fn hostile_descriptor_length_max() {
    corrupt_rx_and_recover(
        |r| r.poke(0, 8, &u32::MAX.to_le_bytes()),
        |e| matches!(e, RingError::DescriptorOutOfBounds { len: u32::MAX, .. }),
    );
}

#[test]
fn hostile_empty_descriptor() {
    corrupt_rx_and_recover(
        |r| r.poke(0, 8, &0u32.to_le_bytes()),
        |e| matches!(e, RingError::EmptyFrame),
    );
}

/// A (the victim) sent frames; B's section (its used ring for A's queue)
/// is corrupted.
fn corrupt_completion_and_recover(corrupt: impl Fn(&SharedRegion), expect: fn(&RingError) -> bool) {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    for _ in 0..3 {
        a.send(&[1u8; 100]).unwrap();
    }
    let _ = a.flush_tx();
    let mut buf = [0u8; 100];
    while b.recv(&mut buf).unwrap().is_some() {}
    let _ = b.flush_rx();
    corrupt(&region);
    let err = a.reclaim().expect_err("corruption must be detected");
    assert!(expect(&err), "unexpected error {err:?}");
    assert_eq!(a.stats().total_errors(), 1);
    assert!(!a.tx_ready());
    assert_eq!(a.send(&[0u8; 60]), Err(TxError::LinkDown));
    // Recover with roles swapped: A is the victim.
    let out = a.on_peer_state(b.local_state().raw(), true);
    assert_eq!(out.write_state, Some(LinkState::Reset));
    handshake(&mut a, &mut b);
    a.send(&[5u8; 80]).unwrap();
    let _ = a.flush_tx();
    assert_eq!(b.recv(&mut buf).unwrap(), Some(80));
}

#[test]
fn hostile_used_index_beyond_in_flight() {
    corrupt_completion_and_recover(
        |r| r.poke(1, USED_IDX, &4u16.to_le_bytes()),
        |e| {
            matches!(
                e,
                RingError::UsedIndexOutOfRange {
                    published: 4,
                    in_flight: 3,
                    ..
                }
            )
        },
    );
}

#[test]
fn hostile_used_length() {
    corrupt_completion_and_recover(
        |r| r.poke(1, USED_RING + 4, &1500u32.to_le_bytes()),
        |e| matches!(e, RingError::UsedLength(1500)),
    );
}

#[test]
fn hostile_out_of_order_completion() {
    corrupt_completion_and_recover(
        |r| r.poke(1, USED_RING, &2u32.to_le_bytes()),
        |e| {
            matches!(
                e,
                RingError::OutOfOrderCompletion {
                    expected: 0,
                    got: 2
                }
            )
        },
    );
}

#[test]
fn hostile_peer_state_values() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    let out = b.on_peer_state(77, true);
    assert_eq!(out.error, Some(RingError::InvalidPeerState(77)));
    assert_eq!(out.write_state, Some(LinkState::Reset));
    assert_eq!(out.carrier, Some(false));
    for _ in 0..10 {
        let _ = b.on_peer_state(77, true);
    }
    assert_eq!(b.stats().errors.get(&RingError::InvalidPeerState(0)), 1);
    // The peer behaves again: the link comes back.
    let _ = a.on_peer_state(b.local_state().raw(), true);
    handshake(&mut a, &mut b);
    assert!(a.carrier() && b.carrier());
}

/// Garbage in the data area is just payload: delivered as bytes, never an
/// out-of-bounds access.
#[test]
fn data_area_garbage_is_only_payload() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    a.send(&[1u8; 64]).unwrap();
    let _ = a.flush_tx();
    region.poke(0, DATA, &[0xee; 64]);
    let mut buf = [0u8; 64];
    assert_eq!(b.recv(&mut buf).unwrap(), Some(64));
    assert_eq!(buf, [0xee; 64]);
}

/// A peer that restarts behind our back (RUN → INIT without RESET: not
/// an ivnet peer, which publishes RESET first) makes us start over instead
/// of running on stale indices.
#[test]
fn silent_peer_restart_renegotiates() {
    let region = SharedRegion::new(NET);
    let (mut a, b) = running_pair(&region, Config::default());
    for _ in 0..10 {
        a.send(&[1u8; 100]).unwrap();
    }
    let _ = a.flush_tx();
    // B restarts (new endpoint) and shows INIT only.
    let _ = b;
    let mut b = region.endpoint(1, Config::default());
    let out_a = a.on_peer_state(LinkState::Init.raw(), true);
    assert!(matches!(
        out_a.error,
        Some(RingError::PeerRestarted { from: 3, to: 1 })
    ));
    let entry_a = a.local_state().raw();
    handshake_from(&mut a, &mut b, entry_a, LinkState::Init.raw());
    a.send(&[2u8; 100]).unwrap();
    let _ = a.flush_tx();
    let mut buf = [0u8; 100];
    assert_eq!(b.recv(&mut buf).unwrap(), Some(100));
    assert_eq!(buf, [2u8; 100], "old frames are gone with the reset");
}

/// The stale-RUN wedge: a side restarts while its state entry still says
/// RUN and the survivor keeps RUN with a ring full of frames. The fresh
/// side's first step publishes RESET (and goes no further, because the
/// survivor still reads its section); the survivor stops, publishing RESET
/// itself (RUN → RESET, not straight to INIT); then both link.
#[test]
fn restart_with_stale_run_entry_relinks() {
    let region = SharedRegion::new(SMALL);
    let (mut a, b) = running_pair(&region, small_cfg());
    while a.tx_ready() {
        a.send(&[1u8; 1500]).unwrap();
    }
    let _ = a.flush_tx();
    let _ = b; // B is killed: its endpoint goes away, its entry stays.
    let mut entry_a = LinkState::Run.raw();
    let mut entry_b = LinkState::Run.raw(); // stale
    let mut b = region.endpoint(1, small_cfg());
    let out = b.on_peer_state(entry_a, true);
    assert_eq!(
        out.write_state,
        Some(LinkState::Reset),
        "first step publishes RESET"
    );
    assert!(!out.link_reset && out.carrier.is_none());
    entry_b = out.write_state.map_or(entry_b, LinkState::raw);
    // Without a new peer state nothing more happens on B.
    assert_eq!(b.on_peer_state(entry_a, true).write_state, None);
    let out = a.on_peer_state(entry_b, true);
    assert_eq!(
        out.write_state,
        Some(LinkState::Reset),
        "RUN → RESET, not INIT"
    );
    assert_eq!(out.carrier, Some(false));
    assert!(out.link_reset);
    entry_a = LinkState::Reset.raw();
    let rounds = handshake_from(&mut a, &mut b, entry_a, entry_b);
    assert!(rounds <= 4, "{rounds} rounds");
    assert_eq!(a.stats().link_resets, 1);
    assert_eq!(a.stats().total_errors() + b.stats().total_errors(), 0);
    a.send(&[2u8; 100]).unwrap();
    let _ = a.flush_tx();
    let mut buf = [0u8; 1518];
    assert_eq!(b.recv(&mut buf).unwrap(), Some(100));
}

/// A fresh side against a peer in RESET or INIT links at once: its first
/// step already goes to INIT (or READY), no tick needed.
#[test]
fn fresh_start_against_reset_or_init_peer_links_in_the_first_step() {
    let region = SharedRegion::new(SMALL);
    let (mut a, mut b) = region.pair(small_cfg());
    let out = a.on_peer_state(LinkState::Reset.raw(), true);
    assert_eq!(out.write_state, Some(LinkState::Init));
    let out = b.on_peer_state(LinkState::Init.raw(), true);
    assert_eq!(
        out.write_state,
        Some(LinkState::Ready),
        "RESET → INIT → READY"
    );
}

/// A clean shutdown publishes RESET but is not a link reset.
#[test]
fn shutdown_is_not_counted_as_a_link_reset() {
    let region = SharedRegion::new(SMALL);
    let (mut a, mut b) = running_pair(&region, small_cfg());
    let out = a.shutdown();
    assert_eq!(out.write_state, Some(LinkState::Reset));
    assert_eq!(out.carrier, Some(false));
    assert!(!out.link_reset);
    assert_eq!(a.stats().link_resets, 0);
    // The peer, though, sees its link reset.
    assert!(b.on_peer_state(LinkState::Reset.raw(), true).link_reset);
    assert_eq!(b.stats().link_resets, 1);
    // Even a fresh endpoint publishes RESET on shutdown (stale entry).
    let mut fresh = region.endpoint(0, small_cfg());
    assert_eq!(fresh.shutdown().write_state, Some(LinkState::Reset));
}

/// MTU defaults to the reference rule for the section; a fixed MTU is
/// checked against it; unequal sections get their own error.
#[test]
fn mtu_default_follows_the_section_and_sections_must_match() {
    for (section, mtu) in [(0x7f000, 16384), (0x3f000, 14456), (0xf000, 3416)] {
        let region = SharedRegion::new(section);
        let ep = region.endpoint(0, Config::default());
        assert_eq!(ep.mtu(), mtu, "{section:#x}");
        assert_eq!(ep.max_frame_len(), mtu + 18);
    }
    let region = SharedRegion::new(0xf000);
    // SAFETY: both views lie inside the region, which outlives them.
    let own = unsafe { OwnSection::new(region.section_ptr(0), 0xf000) }.unwrap();
    // SAFETY: as above.
    let peer = unsafe { PeerSection::new(region.section_ptr(1), 0xf000) }.unwrap();
    assert_eq!(
        Endpoint::new(own, peer, Config::with_mtu(16384)).unwrap_err(),
        GeometryError::MtuOutOfRange {
            mtu: 16384,
            max: 13664
        }
    );
    // SAFETY: as above.
    let own = unsafe { OwnSection::new(region.section_ptr(0), 0xf000) }.unwrap();
    // SAFETY: as above (shorter view).
    let peer = unsafe { PeerSection::new(region.section_ptr(1), 0xe000) }.unwrap();
    assert_eq!(
        Endpoint::new(own, peer, Config::default()).unwrap_err(),
        GeometryError::UnequalSections {
            own: 0xf000,
            peer: 0xe000
        }
    );
}

/// A large batch is published while it is being written (so the peer can
/// start on it), but the caller still gets one doorbell decision, at
/// flush_tx.
#[test]
fn large_batches_are_published_early_with_one_doorbell_decision() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    let frame = vec![7u8; 9000];
    // 0x71f80 / 4 = 116,704 bytes: the 13th 9088-byte slot crosses it.
    for _ in 0..13 {
        a.send(&frame).unwrap();
    }
    assert_eq!(a.stats().tx_batches, 1, "published early, inside the batch");
    assert_eq!(
        a.stats().doorbells_requested,
        1,
        "decided, not yet handed out"
    );
    let mut buf = vec![0u8; 9000];
    for _ in 0..13 {
        assert_eq!(
            b.recv(&mut buf).unwrap(),
            Some(9000),
            "visible before flush_tx"
        );
    }
    a.send(&frame).unwrap();
    assert_eq!(
        a.flush_tx(),
        Notify::Doorbell,
        "the early publish's doorbell is handed out"
    );
    assert_eq!(a.flush_tx(), Notify::Idle);
    assert_eq!(b.recv(&mut buf).unwrap(), Some(9000));
}

/// The same through the zero-copy path (`tx_reserve` + `commit`), which is
/// what the bridge and the guest use.
#[test]
fn large_batches_committed_in_place_are_published_early_too() {
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = running_pair(&region, Config::default());
    let frame = vec![7u8; 9000];
    for _ in 0..13 {
        let mut slot = a.tx_reserve(9000).unwrap();
        slot.write_at(0, &frame).unwrap();
        slot.commit(9000).unwrap();
    }
    assert_eq!(a.stats().tx_batches, 1, "published early, inside the batch");
    let mut buf = vec![0u8; 9000];
    assert_eq!(
        b.recv(&mut buf).unwrap(),
        Some(9000),
        "visible before flush_tx"
    );
    assert_eq!(a.flush_tx(), Notify::Doorbell);
}

/// The extension block: written after the INIT→READY zeroing, read by the
/// peer; a side that sets none leaves the reference's zeroes; a raised
/// maximum frame carries a 64 KiB frame byte-exact.
#[test]
fn extension_block_and_large_frames() {
    use ivnet_ring::geometry::EXTENSION_LEN;
    let region = SharedRegion::new(NET);
    let (mut a, mut b) = region.pair(small_cfg());
    let block: [u8; EXTENSION_LEN] = core::array::from_fn(|i| i as u8 + 1);
    a.set_own_extension(block);
    // Garbage left in b's padding by an earlier user is wiped by b's zeroing.
    let off = Geometry::for_section(NET).unwrap().extension_offset();
    region.poke(1, off, &[0xff; EXTENSION_LEN]);
    handshake(&mut a, &mut b);
    assert_eq!(b.peer_extension(), block);
    assert_eq!(a.peer_extension(), [0; EXTENSION_LEN]);

    assert_eq!(a.max_frame_len(), 1518);
    assert!(matches!(
        a.send(&vec![0; 1519]),
        Err(TxError::TooLong { .. })
    ));
    let data = Geometry::for_section(NET).unwrap().data_size;
    assert!(a.set_max_frame_len(data / 4 + 1).is_err());
    assert!(a.set_max_frame_len(10).is_err());
    a.set_max_frame_len(65564).unwrap();
    let mut frame = vec![0u8; 65564];
    fill_frame(7, &mut frame);
    for _ in 0..3 {
        a.send(&frame).unwrap();
    }
    let _ = a.flush_tx();
    let mut buf = vec![0u8; 65564];
    assert_eq!(drain(&mut b, &mut buf), vec![7, 7, 7]);
    a.set_max_frame_len(1518).unwrap();
    assert!(a.send(&frame).is_err());
}
