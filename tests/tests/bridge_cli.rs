//! Bad arguments and missing or unusable devices give a clear message and a
//! non-zero exit status (2 for command-line errors, 1 for everything found
//! out at run time), and leave nothing behind.

use std::process::{Command, Output};
use std::time::Duration;

use ivnet_e2e::netns::{self, BridgeSpec, Netns, Server};

fn bridge(args: &[&str]) -> Output {
    Command::new(&netns::bins().bridge)
        .args(args)
        .output()
        .expect("ivnet-bridge runs")
}

#[track_caller]
fn expect_failure(args: &[&str], code: i32, needles: &[&str]) {
    let out = bridge(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: exit status {:?}, stderr:\n{stderr}",
        out.status
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "{args:?}: stderr lacks {n:?}:\n{stderr}"
        );
    }
}

#[test]
fn help_explains_itself() {
    let out = bridge(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for n in [
        "ivshmem-net",
        "--uio",
        "--server",
        "--tap",
        "--mtu",
        "--mac",
        "--mode",
        "--stats-json",
        "SIGUSR1",
    ] {
        assert!(text.contains(n), "--help lacks {n:?}:\n{text}");
    }
}

#[test]
fn command_line_errors() {
    let _serial = netns::serial();
    expect_failure(&["--tap", "t0"], 2, &["--uio", "--server"]);
    expect_failure(
        &["--server", "/s", "--uio", "/dev/uio0", "--tap", "t0"],
        2,
        &["cannot be used with"],
    );
    expect_failure(&["--server", "/s"], 2, &["--tap"]);
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--mtu", "67"],
        2,
        &["--mtu", "68"],
    );
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--mtu", "65536"],
        2,
        &["--mtu", "65535"],
    );
    expect_failure(
        &[
            "--server",
            "/s",
            "--tap",
            "t0",
            "--mac",
            "01:02:03:04:05:06",
        ],
        2,
        &["multicast"],
    );
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--mac", "02:02:03:04:05"],
        2,
        &["fewer than 6"],
    );
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--mode", "turbo"],
        2,
        &["--mode", "event", "poll", "hybrid"],
    );
    expect_failure(&["--server", "/s", "--tap", "a/b"], 2, &["--tap"]);
    expect_failure(
        &["--server", "/s", "--tap", "name-longer-than-15"],
        2,
        &["longer than 15"],
    );
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--budget", "0"],
        2,
        &["--budget"],
    );
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--stats-interval", "soon"],
        2,
        &["--stats-interval"],
    );
}

#[test]
fn runtime_errors() {
    let _serial = netns::serial();
    netns::require_root();
    netns::ensure_base_tools();
    expect_failure(
        &[
            "--server",
            "/nonexistent/ivnet.sock",
            "--tap",
            "t0",
            "--connect-timeout",
            "1",
        ],
        1,
        &["ivnet-bridge: error:", "/nonexistent/ivnet.sock"],
    );
    expect_failure(
        &["--uio", "/dev/sda", "--tap", "t0"],
        1,
        &["not a UIO device path"],
    );
    expect_failure(
        &["--uio", "/dev/uio987", "--tap", "t0"],
        1,
        &["/sys/class/uio/uio987", "UIO"],
    );
    expect_failure(
        &[
            "--server",
            "/s",
            "--tap",
            "t0",
            "--netns",
            "ivnet-no-such-ns",
        ],
        1,
        &["network namespace", "ivnet-no-such-ns"],
    );
    expect_failure(
        &["--server", "/s", "--tap", "t0", "--cpu", "4096"],
        1,
        &["--cpu 4096"],
    );

    // A link whose ring cannot carry the MTU: 0xf000-byte sections carry at
    // most 13664 bytes. Nothing may be left behind (no TAP).
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--output-section-size", "0xf000"]);
    let ns = Netns::new("cli");
    let sock = server.socket.to_str().unwrap();
    expect_failure(
        &[
            "--server",
            sock,
            "--netns",
            ns.name(),
            "--tap",
            "t0",
            "--mtu",
            "16384",
        ],
        1,
        &["--mtu 16384", "13664"],
    );
    assert!(!ns.has_link("t0"), "a TAP was left behind");

    // A name taken by an interface that is not a TAP.
    expect_failure(
        &[
            "--server",
            sock,
            "--netns",
            ns.name(),
            "--tap",
            "lo",
            "--mtu",
            "1500",
        ],
        1,
        &["'lo'", "not a TAP"],
    );

    // A TAP created with flags the bridge does not use (multi-queue).
    ns.run(&[
        "ip",
        "tuntap",
        "add",
        "dev",
        "mq0",
        "mode",
        "tap",
        "multi_queue",
    ]);
    expect_failure(
        &[
            "--server",
            sock,
            "--netns",
            ns.name(),
            "--tap",
            "mq0",
            "--mtu",
            "1500",
        ],
        1,
        &["'mq0'", "multi_queue"],
    );

    // A pre-existing persistent TAP is attached to and left in place.
    ns.run(&["ip", "tuntap", "add", "dev", "keep0", "mode", "tap"]);
    let spec = BridgeSpec {
        name: "attach".into(),
        socket: server.socket.clone(),
        netns: ns.name().into(),
        tap: "keep0".into(),
        mtu: 1500,
        extra: vec![],
    };
    let mut p = spec.spawn(dir.path());
    p.wait_stderr("attached to existing TAP", 1, Duration::from_secs(20))
        .unwrap();
    let st = p.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", p.stderr());
    assert!(
        ns.has_link("keep0"),
        "an attached TAP must survive the bridge"
    );
    assert_eq!(
        ns.carrier("keep0"),
        Some(false),
        "carrier must be off after the bridge left"
    );
}

/// Without `--mtu` the bridge takes the reference driver's default for the
/// link's section size (`Geometry::default_mtu`: min(16384, data area /
/// 16)), so it starts on a 0xf000-byte section and agrees with a Linux
/// ivshmem-net peer on 0x1f000 and 0x3f000.
#[test]
fn mtu_defaults_to_the_reference_rule() {
    let _serial = netns::serial();
    netns::require_root();
    netns::ensure_base_tools();
    let dir = tempfile::tempdir().unwrap();
    for size in [0xf000usize, 0x1f000, 0x3f000, 0x7f000] {
        let mtu = ivnet_ring::Geometry::for_section(size)
            .unwrap()
            .default_mtu();
        let sub = dir.path().join(format!("{size:x}"));
        std::fs::create_dir_all(&sub).unwrap();
        let server = Server::start(&sub, &["--output-section-size", &format!("{size:#x}")]);
        let ns = Netns::new("mtu");
        let mut cmd = Command::new(&netns::bins().bridge);
        cmd.arg("--server")
            .arg(&server.socket)
            .args(["--netns", ns.name(), "--tap", "t0"])
            .env("RUST_LOG", "info");
        let mut p = netns::Proc::spawn(cmd, &sub, "bridge");
        if let Err(e) = p.wait_stderr(&format!("TAP, MTU {mtu},"), 1, Duration::from_secs(20)) {
            panic!("section {size:#x}: {e}\n{}", p.stderr());
        }
        let st = p.stop(libc::SIGTERM, Duration::from_secs(10));
        assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", p.stderr());
        eprintln!("section {size:#x}: MTU {mtu}");
    }
}
