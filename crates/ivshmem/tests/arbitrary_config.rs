//! Arbitrary configuration spaces never make identification or parsing
//! panic, loop or read out of bounds, and whatever they accept satisfies the
//! documented invariants.

mod common;

use common::{jailhouse_net, qemu_doorbell};
use ivshmem::jailhouse::{self, VendorCapability};
use ivshmem::pci::{self, ConfigImage, ConfigSpace, MsixCapability};
use ivshmem::{Profile, qemu};
use proptest::prelude::*;

/// Exercises every parser on `img` and checks the invariants of what they
/// accept.
fn parse_everything(mut img: ConfigImage, max_peers: u32, id: u32, bar2_size: Option<u64>) {
    let header = pci::Header::read(&img);
    let _ = Profile::from_ids(header.vendor_id, header.device_id);

    let caps: Vec<_> = pci::capabilities(&img).collect();
    assert!(caps.len() <= 49, "walk is bounded: {}", caps.len());
    for (i, cap) in caps.iter().enumerate() {
        match cap {
            Ok(cap) => assert!(cap.offset >= 0x40 && cap.offset % 4 == 0),
            Err(_) => assert_eq!(i, caps.len() - 1, "an error ends the walk"),
        }
    }

    if let Ok(identity) = jailhouse::identify(&img) {
        assert_eq!(identity.header.class.base, 0xff);
    }
    let _ = qemu::identify(&img);

    if let Ok(cap) = VendorCapability::find(&img) {
        assert!(u16::from(cap.offset) + u16::from(cap.length) <= 0x100);
        assert!(cap.length >= 0x18);
        assert_eq!(cap.base_address.is_some(), cap.length >= 0x20);
        if let Ok(layout) = cap.validate(max_peers, id, bar2_size) {
            assert!(u32::from(layout.max_peers) == max_peers && id < max_peers);
            assert!(layout.state_table_size >= 4 * u64::from(layout.max_peers));
            assert!(layout.output_section_size > 0 && layout.output_section_size % 0x1000 == 0);
            match cap.base_address {
                Some(base) => assert!(base.checked_add(layout.end()).is_some()),
                None => assert!(layout.end() <= bar2_size.unwrap()),
            }
        }
        let before = cap.one_shot(&img);
        cap.set_one_shot(&mut img, !before);
        assert_eq!(cap.one_shot(&img), !before);
    }

    if let Ok(Some(mut msix)) = MsixCapability::find(&img) {
        assert!(msix.table_bar <= 5 && msix.pba_bar <= 5);
        assert!((1..=2048).contains(&msix.table_size));
        msix.set_control(&mut img, true, false);
    }

    for index in 0..=6 {
        let _ = pci::read_bar(&img, index);
        let _ = pci::size_bar(&mut img, index);
        let _ = pci::program_bar(&mut img, index, 0xfebf_0000);
    }
    for offset in 0..=0x100u16 {
        let _ = (img.read8(offset), img.read16(offset));
    }
}

/// A valid image with `flips` bytes overwritten: reaches the deep paths that
/// uniformly random bytes rarely do.
fn mutated(base: ConfigImage, flips: Vec<(u8, u8)>) -> ConfigImage {
    let mut img = base;
    for (offset, value) in flips {
        img.0[usize::from(offset)] = value;
    }
    img
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(
        bytes in prop::collection::vec(any::<u8>(), 256),
        max_peers in 0u32..16,
        id in 0u32..16,
        bar2_size in prop::option::of(any::<u64>()),
    ) {
        let mut img = ConfigImage::zeroed();
        img.0.copy_from_slice(&bytes);
        parse_everything(img, max_peers, id, bar2_size);
    }

    #[test]
    fn mutated_jailhouse_image(
        flips in prop::collection::vec((0x00u8..=0xff, any::<u8>()), 1..8),
        max_peers in prop_oneof![Just(2u32), any::<u32>()],
        id in prop_oneof![0u32..2, any::<u32>()],
        bar2_size in prop::option::of(prop_oneof![Just(0x10_0000u64), any::<u64>()]),
    ) {
        parse_everything(mutated(jailhouse_net(), flips), max_peers, id, bar2_size);
    }

    #[test]
    fn mutated_qemu_image(
        flips in prop::collection::vec((0x00u8..=0x4f, any::<u8>()), 1..6),
    ) {
        parse_everything(mutated(qemu_doorbell(2), flips), 2, 0, Some(0x10_0000));
    }
}
