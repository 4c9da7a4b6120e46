//! Leaving the guest. On QEMU (`-semihosting`): the semihosting call
//! SYS_EXIT with ADP_Stopped_ApplicationExit and the exit status
//! `code.qemu_status()` — the same statuses as x86's `isa-debug-exit`,
//! which the tests read. Without semihosting QEMU ignores the call and the
//! CPU halts. In a Jailhouse cell (entered without a DTB): `cell_state` =
//! SHUT_DOWN or FAILED and a WFI loop, as on x86 — the semihosting trap
//! (HLT) would be an undefined instruction there, and PSCI SYSTEM_OFF is
//! refused to cells.

use ivnet_guest::exit_code::ExitCode;

/// SYS_EXIT.
const SYS_EXIT: u64 = 0x18;
/// ADP_Stopped_ApplicationExit: the second word is the exit status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Stops the guest with `code`.
pub fn exit(code: ExitCode) -> ! {
    crate::exceptions::disable();
    if crate::jailhouse::entered() {
        let mut w = crate::serial::emergency_writer();
        let _ = core::fmt::Write::write_fmt(
            &mut w,
            format_args!("exit: {code:?} (status {})\n", code.qemu_status()),
        );
        crate::jailhouse::stop_cell(code);
    }
    let block = [ADP_STOPPED_APPLICATION_EXIT, code.qemu_status() as u64];
    // SAFETY: the A64 semihosting trap (HLT #0xF000) with the operation in
    // w0 and the parameter block's address in x1; QEMU reads the block and
    // ends the process. The block outlives the call.
    unsafe {
        core::arch::asm!("hlt #0xf000", inout("x0") SYS_EXIT => _, in("x1") block.as_ptr(),
            options(nostack));
    }
    loop {
        // SAFETY: waits for an interrupt that never comes (IRQs masked).
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}
