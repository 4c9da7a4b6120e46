//! `ivnet-bridge`: a Linux user-space ivshmem-net peer bridged to a TAP
//! interface.
//!
//! Module map:
//! - [`cli`]: the command line;
//! - [`backend`]: where the link's memory is and how to ring the peer
//!   (ivshmem-server host peer, or a UIO device: Jailhouse `uio_ivshmem`,
//!   QEMU ivshmem-doorbell under a generic MSI-X UIO driver, or either
//!   device on vfio-pci);
//! - [`uio`]: UIO sysfs discovery and memory maps;
//! - [`tap`]: the TAP interface;
//! - [`bridge`]: the epoll loop and the data path between ring and TAP;
//! - [`stats`]: counters and reports.

mod backend;
mod bridge;
mod cli;
mod offload;
mod stats;
mod tap;
mod uio;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ivnet_ring::Geometry;
use tracing::info;

use crate::backend::Backend;
use crate::bridge::{Bridge, LoopConfig};
use crate::cli::{Args, MacAddr, Mode};
use crate::tap::Tap;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivnet-bridge: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    if let Some(ns) = &args.netns {
        tap::enter_netns(ns).map_err(|e| format!("cannot enter network namespace '{ns}': {e}"))?;
    }
    let backend: Box<dyn Backend> = if let Some(path) = &args.server {
        Box::new(
            backend::server::ServerBackend::connect(path, args.connect_timeout)
                .map_err(|e| e.to_string())?,
        )
    } else if let Some(dev) = &args.uio {
        backend::uio::open(dev).map_err(|e| e.to_string())?
    } else if let Some(bdf) = &args.vfio {
        backend::vfio::open(bdf).map_err(|e| e.to_string())?
    } else {
        unreachable!("clap requires --uio, --vfio or --server");
    };
    info!("{}", backend.describe());

    let geometry = Geometry::for_section(backend.section_len()).map_err(|e| {
        format!(
            "output section of {:#x} bytes cannot carry a ring: {e}",
            backend.section_len()
        )
    })?;
    // The reference rule when no MTU is given, so that a Linux ivshmem-net
    // peer on the same section size agrees; an explicit one must fit.
    let mtu = match args.mtu {
        None => geometry.default_mtu() as u32,
        Some(mtu) if mtu as usize > geometry.max_mtu() => {
            return Err(format!(
                "--mtu {mtu} is too large for this link: its ring ({:#x}-byte output sections, {} entries, \
                 {:#x}-byte data area) carries an MTU of at most {} (a quarter of the data area)",
                backend.section_len(),
                geometry.queue_len,
                geometry.data_size,
                geometry.max_mtu()
            ));
        }
        Some(mtu) => mtu,
    };
    let mac = args
        .mac
        .unwrap_or_else(|| MacAddr::for_peer(backend.own_id()));
    // A SIGTERM after the TAP exists is a clean shutdown, not a kill.
    bridge::block_handled_signals().map_err(|e| e.to_string())?;
    let tap = Tap::open(&args.tap, mtu, mac, args.offload == cli::OffloadMode::Auto)
        .map_err(|e| e.to_string())?;
    info!(
        "{}: {} TAP, MTU {}, MAC {mac}, mode {:?}, own peer ID {} (other peer {})",
        tap.name(),
        if tap.created() {
            "created"
        } else {
            "attached to existing"
        },
        mtu,
        args.mode,
        backend.own_id(),
        backend.peer_id()
    );
    let cfg = LoopConfig {
        mtu,
        budget: args.budget,
        mode: args.mode,
        busy_poll: match args.mode {
            Mode::Hybrid => std::time::Duration::from_micros(args.busy_poll_us),
            _ => std::time::Duration::ZERO,
        },
        stats_interval: args.stats_interval,
        stats_json: args.stats_json,
        offload: args.offload,
    };
    let mut bridge = Bridge::new(backend, tap, cfg).map_err(|e| e.to_string())?;
    // Under systemd (Type=notify): the TAP exists now, so ExecStartPost can
    // configure it. A no-op without $NOTIFY_SOCKET.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    bridge.run().map_err(|e| {
        bridge.shutdown();
        e.to_string()
    })
}

fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .map_err(|_| format!("--cpu {cpu}: CPU number out of range"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        format!(
            "--cpu {cpu}: cannot pin to this CPU: {e} (online CPUs: {})",
            online_cpus()
        )
    })
}

fn online_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
