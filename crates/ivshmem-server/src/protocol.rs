//! The ivshmem-server wire format: 8-byte little-endian signed messages, each
//! optionally carrying one file descriptor in an `SCM_RIGHTS` control message.
//!
//! Both directions of this module are used: the server sends, the host peer
//! receives. QEMU reads the setup one 8-byte message at a time and takes "the"
//! fd that came with it, so the sender must never coalesce: one `sendmsg` per
//! message, at most one fd per message.
//!
//! rustix provides the system calls; the framing (partial reads, one fd per
//! message, typed violations) is written here because no crate speaks this
//! protocol.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Protocol version, the first message a client receives
/// (`IVSHMEM_PROTOCOL_VERSION` in QEMU).
pub const PROTOCOL_VERSION: i64 = 0;
/// The message value that carries the shared-memory fd.
pub const SHM_MESSAGE: i64 = -1;
/// Highest peer ID QEMU accepts (`IVSHMEM_MAX_PEERS`).
pub const MAX_PEER_ID: i64 = u16::MAX as i64;
/// Size of every message on the wire.
pub const MESSAGE_LEN: usize = 8;

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The little-endian signed 64-bit value.
    pub value: i64,
    /// The fd that came with the message, if any.
    pub fd: Option<OwnedFd>,
}

/// A violation of the framing rules by the sending side.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// More than one fd arrived for one 8-byte message, or the control data
    /// did not fit the one-fd buffer (the kernel closes what did not fit).
    #[error("more than one file descriptor arrived with one message")]
    TooManyFds,
    /// Control data the protocol never uses (e.g. credentials).
    #[error("unexpected ancillary data (not SCM_RIGHTS)")]
    UnexpectedAncillary,
    /// The connection closed in the middle of a message.
    #[error("connection closed after {0} of 8 bytes of a message")]
    TruncatedMessage(usize),
}

/// Error of a receive step.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection cleanly, between messages.
    #[error("connection closed")]
    Closed,
    /// The framing rules were broken.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The system call failed.
    #[error("recvmsg: {0}")]
    Io(#[from] std::io::Error),
}

/// Reassembles 8-byte messages from a non-blocking stream socket.
///
/// A message may in principle arrive in pieces; the fd, if any, arrives with
/// the first piece. The reader keeps the partial state between calls so that
/// it can be driven from a poll loop.
#[derive(Debug, Default)]
pub struct MessageReader {
    buf: [u8; MESSAGE_LEN],
    filled: usize,
    fd: Option<OwnedFd>,
}

impl MessageReader {
    /// A reader with no partial message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads as far as one complete message. Returns `Ok(None)` if the socket
    /// has no more data right now (`EAGAIN`).
    pub fn read(&mut self, socket: BorrowedFd<'_>) -> Result<Option<Message>, RecvError> {
        loop {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = {
                let mut iov = [IoSliceMut::new(&mut self.buf[self.filled..])];
                match rustix::net::recvmsg(
                    socket,
                    &mut iov,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
                ) {
                    Ok(r) => r,
                    Err(Errno::AGAIN) => return Ok(None),
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(RecvError::Io(e.into())),
                }
            };
            // Take ownership of every fd first, so that all of them are closed
            // whatever happens next.
            let mut fds: Vec<OwnedFd> = Vec::new();
            let mut foreign = false;
            for msg in control.drain() {
                match msg {
                    RecvAncillaryMessage::ScmRights(iter) => fds.extend(iter),
                    _ => foreign = true,
                }
            }
            if received.flags.contains(ReturnFlags::CTRUNC) {
                return Err(FramingError::TooManyFds.into());
            }
            if foreign {
                return Err(FramingError::UnexpectedAncillary.into());
            }
            if received.bytes == 0 {
                if self.filled == 0 && fds.is_empty() {
                    return Err(RecvError::Closed);
                }
                return Err(FramingError::TruncatedMessage(self.filled).into());
            }
            match (fds.len(), &self.fd) {
                (0, _) => {}
                (1, None) => self.fd = fds.pop(),
                _ => return Err(FramingError::TooManyFds.into()),
            }
            self.filled += received.bytes;
            if self.filled == MESSAGE_LEN {
                self.filled = 0;
                return Ok(Some(Message {
                    value: i64::from_le_bytes(self.buf),
                    fd: self.fd.take(),
                }));
            }
        }
    }
}

/// Error of a send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The receiver did not drain its socket within the send timeout.
    #[error("receiver not reading (socket buffer full for {0:?})")]
    Stalled(Duration),
    /// The system call failed (`EPIPE`/`ECONNRESET`: the receiver is gone).
    #[error("sendmsg: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends one message with `sendmsg`, attaching `fd` if given.
///
/// The socket may be non-blocking; a full socket buffer is waited out for at
/// most `timeout` (a receiver that stops reading must not stall the server
/// forever). `MSG_NOSIGNAL` turns a vanished receiver into `EPIPE` rather
/// than `SIGPIPE`.
pub fn send_message(
    socket: BorrowedFd<'_>,
    value: i64,
    fd: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<(), SendError> {
    let bytes = value.to_le_bytes();
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    while sent < MESSAGE_LEN {
        let fds;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        // The fd travels with the first byte; a partial send (not expected
        // for 8 bytes on a UNIX socket) continues without it.
        if sent == 0
            && let Some(fd) = fd
        {
            fds = [fd];
            let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
            debug_assert!(pushed, "cmsg_space!(ScmRights(1)) holds one fd");
        }
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&bytes[sent..])],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(SendError::Stalled(timeout));
                }
                wait_fd(socket, PollFlags::OUT, Some(deadline - now))?;
            }
            Err(e) => return Err(SendError::Io(e.into())),
        }
    }
    Ok(())
}

/// Waits until `fd` reports one of `events` (or an error/hangup), or until
/// `timeout` passes. Returns whether the fd became ready.
pub fn wait_fd(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Option<Duration>,
) -> std::io::Result<bool> {
    let mut fds = [PollFd::from_borrowed_fd(fd.as_fd(), events)];
    let n = poll(&mut fds, timeout)?;
    Ok(n > 0)
}

/// `poll(2)` with a `Duration` timeout (`None` waits forever), retried on
/// `EINTR` with the remaining time.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> std::io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = remaining.map(|r| rustix::time::Timespec {
            tv_sec: r.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(r.subsec_nanos()),
        });
        match rustix::event::poll(fds, ts.as_ref()) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Rings an eventfd: adds 1 to its counter (the "client–client protocol").
///
/// `EAGAIN` means the counter is at its maximum, i.e. the receiver already
/// has a pending notification; that counts as delivered.
pub fn ring_eventfd(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads and clears an eventfd's counter without blocking. Returns the
/// number of notifications since the last read (0 if none).
pub fn drain_eventfd(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => return Ok(u64::from_ne_bytes(buf)),
            Ok(n) => {
                return Err(std::io::Error::other(format!(
                    "eventfd read returned {n} bytes"
                )));
            }
            Err(Errno::AGAIN) => return Ok(0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
