//! Leaving the guest: through QEMU's `isa-debug-exit` device, or in a
//! Jailhouse cell through the comm region's `cell_state` (port 0xf4 would be
//! a fatal access there).

use ivnet_guest::exit_code::{ExitCode, ISA_DEBUG_EXIT_PORT};
use x86_64::instructions::port::Port;

/// Stops the guest with `code`. Under QEMU with `isa-debug-exit` the QEMU
/// process exits with status `code.qemu_status()`; in a Jailhouse cell the
/// cell state becomes SHUT_DOWN (success) or FAILED and the CPU halts.
pub fn exit(code: ExitCode) -> ! {
    if crate::platform::is_jailhouse() {
        let mut w = crate::serial::emergency_writer();
        let _ = core::fmt::Write::write_fmt(
            &mut w,
            format_args!("exit: {code:?} (status {})\n", code.qemu_status()),
        );
        crate::platform::stop_cell(code);
    }
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: writing the exit port either ends the VM or, with no device
    // behind the port (not a Jailhouse cell: handled above), is ignored; it
    // touches no memory.
    unsafe { port.write(code.port_value()) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
