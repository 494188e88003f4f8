//! Dirty tracking: writes through vm-memory set exactly the bits of the pages written.

use hostmem::vm_memory::bitmap::AtomicBitmap;
use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use hostmem::vmm::{guest_memory, guest_memory_tracked, RegionSpec};
use hostmem::{Backend, Kind};

use crate::common::{GIB, MIB};

const PAGE: usize = 4096;

fn dirty_pages(b: &AtomicBitmap) -> Vec<usize> {
    (0..b.len()).filter(|&i| b.is_bit_set(i)).collect()
}

#[test]
fn writes_through_vm_memory_mark_exactly_their_pages_dirty_until_reset() {
    let low = Backend::builder(Kind::Ram, "low")
        .size(8 * MIB)
        .create()
        .unwrap();
    let high = Backend::builder(Kind::Memfd, "high")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mem = guest_memory::<AtomicBitmap>(&[
        RegionSpec {
            backend: &low,
            offset: 0,
            len: 8 * MIB,
            guest_addr: GuestAddress(0),
        },
        RegionSpec {
            backend: &high,
            offset: 0,
            len: 8 * MIB,
            guest_addr: GuestAddress(GIB),
        },
    ])
    .unwrap();
    mem.write_slice(b"x", GuestAddress(5 * PAGE as u64))
        .unwrap();
    // Straddles pages 9 and 10.
    mem.write_slice(&[1u8; 32], GuestAddress(10 * PAGE as u64 - 16))
        .unwrap();
    mem.write_obj(7u64, GuestAddress(GIB + 3 * PAGE as u64))
        .unwrap();
    let _: u64 = mem.read_obj(GuestAddress(100 * PAGE as u64)).unwrap();

    let regions: Vec<_> = mem.iter().collect();
    let (lo, hi) = (regions[0].dirty_bitmap(), regions[1].dirty_bitmap());
    assert_eq!(lo.len(), 8 * MIB as usize / PAGE, "one bit per page");
    assert_eq!(dirty_pages(lo), [5, 9, 10], "reads leave pages clean");
    assert_eq!(dirty_pages(hi), [3]);

    // What a migration loop does: take the bits and start again.
    let words = lo.get_and_reset();
    assert_eq!(words[0], (1 << 5) | (1 << 9) | (1 << 10));
    assert!(dirty_pages(lo).is_empty());
    hi.reset();
    assert!(dirty_pages(hi).is_empty());
    mem.write_slice(b"again", GuestAddress(6 * PAGE as u64))
        .unwrap();
    assert_eq!(dirty_pages(lo), [6]);
    // The bytes are in the backend's memory, read through its own hold.
    let mut buf = [0u8; 5];
    low.hold().unwrap().read_at(6 * PAGE, &mut buf).unwrap();
    assert_eq!(&buf, b"again");
}

/// Firecracker's bitmap: `Option<AtomicBitmap>`, tracking on for some regions only.
#[test]
fn option_bitmaps_track_only_the_regions_that_have_one() {
    let m = Backend::builder(Kind::Memfd, "fc")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mem = guest_memory_tracked::<AtomicBitmap>(
        &[
            RegionSpec {
                backend: &m,
                offset: 0,
                len: 4 * MIB,
                guest_addr: GuestAddress(0),
            },
            RegionSpec {
                backend: &m,
                offset: 4 * MIB,
                len: 4 * MIB,
                guest_addr: GuestAddress(GIB),
            },
        ],
        |spec| spec.offset == 4 * MIB,
    )
    .unwrap();
    mem.write_slice(b"a", GuestAddress(GIB + 2 * PAGE as u64))
        .unwrap();
    let high = mem.find_region(GuestAddress(GIB)).unwrap();
    let bits = high.dirty_bitmap().as_ref().unwrap();
    assert_eq!(dirty_pages(bits), [2]);
    mem.write_slice(b"b", GuestAddress(0)).unwrap();
    let low = mem.find_region(GuestAddress(0)).unwrap();
    assert!(
        low.dirty_bitmap().is_none(),
        "no tracking there, and no crash"
    );
}
