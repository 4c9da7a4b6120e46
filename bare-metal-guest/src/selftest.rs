//! Platform self-tests, selected with `selftest=` on the command line. Each
//! ends the guest with an exit code the end-to-end tests check; together
//! they show that the properties the rest of the guest relies on hold on
//! the real (emulated) hardware: interrupts arrive, read-only mappings are
//! read-only, doorbells travel both ways.

use ivnet_guest::cmdline::SelfTest;
use ivnet_guest::exit_code::ExitCode;

use crate::device::NicDevice;
use crate::{exit, fail, idt, println, time};

/// How long the doorbell self-test waits for the peer.
const DOORBELL_TIMEOUT_US: u64 = 120_000_000;

fn need(nic: Option<&NicDevice>, test: SelfTest) -> &NicDevice {
    nic.unwrap_or_else(|| {
        fail(
            ExitCode::NoDevice,
            format_args!("selftest {} needs the ivshmem device", test.name()),
        )
    })
}

/// Runs `test` and exits.
pub fn run(test: SelfTest, nic: Option<&NicDevice>) -> ! {
    match test {
        SelfTest::Boot => {
            // Prove the timer interrupt path works before claiming success.
            time::arm_alarm_us(10_000);
            let events = idt::wait_for_events();
            if events & idt::EVENT_TIMER == 0 {
                fail(
                    ExitCode::SelfTestFailed,
                    format_args!("woke without the timer event"),
                );
            }
            println!(
                "selftest boot: ok (timer interrupt after {} us, ivshmem {}, speed {} ns per 1000 loads)",
                time::now_us(),
                if nic.is_some() { "up" } else { "absent" },
                time::memory_speed_ns_per_1000()
            );
            exit::exit(ExitCode::Success)
        }
        SelfTest::Panic => panic!("selftest panic requested on the command line"),
        SelfTest::WritePeerSection => {
            let (peer, _) = need(nic, test).peer_section();
            println!(
                "selftest: writing the peer's output section at {peer:p}; expecting a page fault"
            );
            // SAFETY: deliberately unsound-looking but harmless: the page is
            // mapped read-only, so the CPU refuses the store with a page
            // fault before anything is written; the fault handler exits.
            unsafe { peer.cast_mut().write_volatile(0xa5) };
            fail(
                ExitCode::SelfTestFailed,
                format_args!("the write to the peer's section did not fault"),
            )
        }
        SelfTest::WriteStateTable => {
            let table = need(nic, test).state_table();
            println!("selftest: writing the state table at {table:p}; expecting a page fault");
            // SAFETY: as above: the identity mapping of the state table is
            // read-only, so the store faults and nothing is written.
            unsafe { table.cast_mut().write_volatile(3) };
            fail(
                ExitCode::SelfTestFailed,
                format_args!("the write to the state table did not fault"),
            )
        }
        SelfTest::Doorbell => doorbell(need(nic, test)),
        SelfTest::StackOverflow => {
            println!("selftest: recursing until the stack overflows; expecting a page fault");
            let depth = recurse(0);
            fail(
                ExitCode::SelfTestFailed,
                format_args!("recursed {depth} levels without a fault"),
            )
        }
    }
}

/// Uses 4 KiB of stack per level until the guard page ends it (the bound
/// is far beyond the stack size; reaching it means there is no guard).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    core::hint::black_box(&mut frame);
    if depth > 1 << 20 {
        return depth;
    }
    recurse(depth + 1) + u64::from(frame[0])
}

/// Rings the peer on the data vector (the driver core's choice: 1 with two
/// or more vectors, 0 on a one-vector device such as an INTx-only ivshmem
/// 2.0 device), then waits for the peer to ring back on it, re-ringing
/// every second in case the peer was not listening yet.
fn doorbell(nic: &NicDevice) -> ! {
    let vector = ivnet_driver::data_vector(u32::from(nic.vectors));
    let data_event = idt::event_doorbell(vector as u8);
    let deadline = time::now_us() + DOORBELL_TIMEOUT_US;
    let mut rung = 0u32;
    loop {
        if !nic.ring(vector) {
            fail(
                ExitCode::SelfTestFailed,
                format_args!("ringing vector {vector} refused"),
            );
        }
        rung += 1;
        println!(
            "selftest doorbell: rang peer {} vector {vector} ({rung})",
            nic.peer
        );
        time::arm_alarm_us(1_000_000);
        loop {
            let events = idt::wait_for_events();
            if events & data_event != 0 {
                println!(
                    "selftest doorbell: ok (vector {vector} interrupt from peer {}, {} so far)",
                    nic.peer,
                    idt::IRQ_COUNTERS.doorbell[usize::from(vector)]
                        .load(core::sync::atomic::Ordering::Relaxed)
                );
                exit::exit(ExitCode::Success);
            }
            if events & idt::EVENT_TIMER != 0 {
                break;
            }
        }
        if time::now_us() > deadline {
            fail(
                ExitCode::SelfTestFailed,
                format_args!(
                    "no doorbell from the peer within {} s",
                    DOORBELL_TIMEOUT_US / 1_000_000
                ),
            );
        }
    }
}
