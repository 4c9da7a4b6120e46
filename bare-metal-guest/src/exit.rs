//! Leaving the guest through QEMU's `isa-debug-exit` device.

use ivnet_guest::exit_code::{ExitCode, ISA_DEBUG_EXIT_PORT};
use x86_64::instructions::port::Port;

/// Stops the guest with `code`. Under QEMU with `isa-debug-exit` the QEMU
/// process exits with status `code.qemu_status()`; elsewhere (no such device,
/// e.g. a Jailhouse cell) the CPU halts with interrupts off.
pub fn exit(code: ExitCode) -> ! {
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: writing the exit port either ends the VM or, with no device
    // behind the port, is ignored; it touches no memory.
    unsafe { port.write(code.port_value()) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
