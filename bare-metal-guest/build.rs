//! Links the bare-metal images with their linker scripts (only for the
//! bare-metal target; host builds of the library are plain): `ivnet-guest`
//! for QEMU's PVH entry (link.ld, at 1 MiB) and `ivnet-guest-jailhouse`, the
//! same program linked at 0 for a Jailhouse cell (link-jailhouse.ld).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        println!("cargo:rustc-link-arg-bin=ivnet-guest=-T{dir}/link.ld");
        println!("cargo:rustc-link-arg-bin=ivnet-guest-jailhouse=-T{dir}/link-jailhouse.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=link-jailhouse.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
