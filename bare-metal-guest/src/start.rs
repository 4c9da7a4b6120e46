//! What both guests do once their platform is up: bring up the NIC the
//! command line names (ivshmem-net, or virtio-net with `nic=virtio`) and run
//! the smoltcp services on it, or a self-test. Compiled into each guest,
//! which passes the interrupt target its MSI-X messages name (the local
//! APIC id on x86, 0 on aarch64 where the message comes from GICv2m).

use ivnet_guest::cmdline::{GuestConfig, Mode, NicKind};
use ivnet_guest::exit_code::ExitCode;

use crate::{device, fail, footprint, net, nic, paging, println, selftest, virtio_net};

/// Runs the guest's services (or its self-test) on the NIC `config` names;
/// never returns.
pub fn run(config: &GuestConfig, apic_id: u32) -> ! {
    if config.nic == NicKind::Virtio && config.selftest.is_none() {
        run_virtio(config, apic_id);
    }
    let nic = match device::bring_up(apic_id) {
        Ok(nic) => Some(nic),
        Err(device::BringUpError::NotFound)
            if config.selftest.is_some_and(|t| !t.needs_device()) =>
        {
            None
        }
        Err(e @ device::BringUpError::NotFound) => fail(ExitCode::NoDevice, format_args!("{e}")),
        Err(e) => fail(ExitCode::DeviceError, format_args!("ivshmem: {e}")),
    };
    let usage = paging::usage();
    println!(
        "platform up: page tables {}/{} used; {}; stack used {} bytes",
        usage.used,
        usage.total,
        footprint::Image,
        footprint::stack_used()
    );
    match (config.selftest, nic) {
        (Some(test), nic) => selftest::run(test, nic.as_ref()),
        (None, Some(device)) => {
            // The NIC (its ring endpoint keeps per-slot state) lives in a
            // static, not on the stack.
            static NIC: static_cell::StaticCell<nic::Nic> = static_cell::StaticCell::new();
            let (rx_buf, tx_scratch) = net::frame_buffers();
            let nic = nic::Nic::new(device, config.mode, config.mtu, rx_buf, tx_scratch)
                .unwrap_or_else(|e| fail(ExitCode::DeviceError, format_args!("nic: {e}")));
            net::run(NIC.init(nic), config)
        }
        (None, None) => unreachable!("bring_up failures without a self-test exit above"),
    }
}

/// `nic=virtio`: the same services on a virtio-net device (the baseline
/// ivnet is measured against).
fn run_virtio(config: &GuestConfig, apic_id: u32) -> ! {
    static NIC: static_cell::StaticCell<virtio_net::VirtioNic> = static_cell::StaticCell::new();
    let (rx_buf, tx_scratch) = net::frame_buffers();
    let event_mode = config.mode == Mode::Event;
    let nic = virtio_net::VirtioNic::bring_up(apic_id, event_mode, rx_buf, tx_scratch)
        .unwrap_or_else(|e| match e {
            virtio_net::VirtioError::NotFound => fail(ExitCode::NoDevice, format_args!("{e}")),
            e => fail(ExitCode::DeviceError, format_args!("virtio-net: {e}")),
        });
    println!(
        "platform up: {}; stack used {} bytes",
        footprint::Image,
        footprint::stack_used()
    );
    net::run(NIC.init(nic), config)
}
