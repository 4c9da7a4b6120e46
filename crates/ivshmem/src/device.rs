//! One interface over both device profiles.
//!
//! A driver above this crate needs five things from the device: who it is
//! (own ID, peer count), where the shared memory is and how it is laid out,
//! how to ring a peer, how to publish its own state, and how to turn its
//! interrupts on. [`Ivshmem`] is that interface; [`JailhouseDevice`] and
//! [`QemuDevice`] implement it for the two profiles, and [`Device`] holds
//! either when the profile is only known at run time.
//!
//! | | Jailhouse ivshmem 2.0 | QEMU ivshmem-doorbell |
//! |---|---|---|
//! | own ID | ID register | IVPosition register |
//! | layout | vendor capability 09h + MAX_PEERS | layout page in BAR2 |
//! | shared memory | capability Base Address (or BAR2) | BAR2, layout after the 4 KiB page |
//! | ring | Doorbell `vector \| peer << 16` | same, vector bits 7:0 only |
//! | own state | STATE register; hypervisor updates the table and rings vector 0 of the others | store to the own state-table entry, then ring vector 0 of the others |
//! | interrupts on | INT_CONTROL = 1 (and MSI-X) | MSI-X only |
//! | one-shot re-arm | INT_CONTROL = 1 | nothing to do |

use crate::error::DeviceError;
use crate::jailhouse::JailhouseDevice;
use crate::layout::SharedMemoryLayout;
use crate::qemu::QemuDevice;

/// The two kinds of ivshmem device ivnet runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Jailhouse ivshmem 2.0, `110a:4106`.
    Jailhouse,
    /// QEMU `ivshmem-doorbell`, `1af4:1110` revision 1, with ivnet's layout
    /// page.
    QemuDoorbell,
}

impl Profile {
    /// The profile that drives `vendor_id:device_id`, if any.
    pub const fn from_ids(vendor_id: u16, device_id: u16) -> Option<Profile> {
        match (vendor_id, device_id) {
            (crate::jailhouse::VENDOR_ID, crate::jailhouse::DEVICE_ID) => Some(Profile::Jailhouse),
            (crate::qemu::VENDOR_ID, crate::qemu::DEVICE_ID) => Some(Profile::QemuDoorbell),
            _ => None,
        }
    }
}

/// Where the shared memory is, as the device tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedMemoryLocation {
    /// At a fixed guest-physical address (Jailhouse: the vendor capability's
    /// Base Address; the region is not relocatable).
    Physical(u64),
    /// In a BAR of the device (QEMU: BAR2; Jailhouse when the capability has
    /// no Base Address).
    Bar(u8),
}

/// The device layer as the ring driver sees it.
///
/// Layout offsets are relative to the start of the shared memory at
/// [`Ivshmem::location`]. Ringing and state changes are ordered after every
/// store the caller made before the call (each implementation issues a full
/// fence before the register write), so a peer woken by the doorbell sees
/// the data that the doorbell announces.
pub trait Ivshmem {
    /// Which profile this is.
    fn profile(&self) -> Profile;

    /// This peer's ID, below [`Ivshmem::max_peers`].
    fn id(&self) -> u16;

    /// Number of peers on the link, including this one. (How many a
    /// protocol allows is the protocol layer's rule: ivshmem-net's two-peer
    /// rule is `ivnet_driver::check_net_link`.)
    fn max_peers(&self) -> u16 {
        self.layout().max_peers
    }

    /// Protocol of the link (the class code on Jailhouse, the layout page on
    /// QEMU); `PROTOCOL_NET` for ivshmem-net.
    fn protocol(&self) -> u16;

    /// The validated shared-memory layout.
    fn layout(&self) -> SharedMemoryLayout;

    /// Where the shared memory is.
    fn location(&self) -> SharedMemoryLocation;

    /// Rings `vector` of `peer`. Fails, without touching the device, for a
    /// peer that cannot exist or a vector the device cannot carry.
    fn ring(&self, peer: u16, vector: u16) -> Result<(), DeviceError>;

    /// Publishes this peer's state and wakes the other peers on vector 0.
    fn set_own_state(&self, state: u32);

    /// Allows the device to raise interrupts (MSI-X itself is set up by the
    /// caller through [`crate::pci::MsixCapability`]).
    fn enable_interrupts(&self);

    /// Stops interrupt generation where the device can (Jailhouse only).
    fn disable_interrupts(&self);

    /// Re-arms interrupts after one was taken in one-shot mode. Call it
    /// before the final re-check of shared memory: events that arrive while
    /// disarmed are dropped, not latched.
    fn rearm(&self);
}

/// Checks the peer count and own ID every ivshmem device must satisfy,
/// whatever protocol it carries: 2..=65535 peers, own ID below the peer
/// count. Returns the peer count and ID as `u16`. Protocol rules (two peers
/// for ivshmem-net) belong to the protocol layer above.
pub fn check_link(max_peers: u32, id: u32) -> Result<(u16, u16), DeviceError> {
    if max_peers < 2 {
        return Err(crate::layout::LayoutError::TooFewPeers(max_peers as u16).into());
    }
    let limit = u32::from(u16::MAX);
    if max_peers > limit {
        return Err(DeviceError::TooManyPeers { max_peers, limit });
    }
    if id >= max_peers {
        return Err(DeviceError::IdOutOfRange { id, max_peers });
    }
    // Both fit: max_peers <= u16::MAX and id < max_peers.
    Ok((max_peers as u16, id as u16))
}

/// Either profile, chosen at run time.
#[derive(Debug)]
pub enum Device<'a> {
    /// Jailhouse ivshmem 2.0.
    Jailhouse(JailhouseDevice<'a>),
    /// QEMU ivshmem-doorbell.
    QemuDoorbell(QemuDevice<'a>),
}

impl<'a> From<JailhouseDevice<'a>> for Device<'a> {
    fn from(d: JailhouseDevice<'a>) -> Self {
        Device::Jailhouse(d)
    }
}

impl<'a> From<QemuDevice<'a>> for Device<'a> {
    fn from(d: QemuDevice<'a>) -> Self {
        Device::QemuDoorbell(d)
    }
}

macro_rules! delegate {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Device::Jailhouse($d) => $e,
            Device::QemuDoorbell($d) => $e,
        }
    };
}

impl Ivshmem for Device<'_> {
    fn profile(&self) -> Profile {
        delegate!(self, d => d.profile())
    }

    fn id(&self) -> u16 {
        delegate!(self, d => d.id())
    }

    fn protocol(&self) -> u16 {
        delegate!(self, d => d.protocol())
    }

    fn layout(&self) -> SharedMemoryLayout {
        delegate!(self, d => d.layout())
    }

    fn location(&self) -> SharedMemoryLocation {
        delegate!(self, d => d.location())
    }

    fn ring(&self, peer: u16, vector: u16) -> Result<(), DeviceError> {
        delegate!(self, d => d.ring(peer, vector))
    }

    fn set_own_state(&self, state: u32) {
        delegate!(self, d => d.set_own_state(state))
    }

    fn enable_interrupts(&self) {
        delegate!(self, d => d.enable_interrupts())
    }

    fn disable_interrupts(&self) {
        delegate!(self, d => d.disable_interrupts())
    }

    fn rearm(&self) {
        delegate!(self, d => d.rearm())
    }
}
