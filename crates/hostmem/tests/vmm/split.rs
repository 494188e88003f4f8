//! One memfd split in two regions around a hole, at advancing offsets (Firecracker's
//! layout around the 32-bit PCI hole), checked through the fd; and no aliases.

use std::os::unix::fs::FileExt;

use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use hostmem::vmm::{guest_memory, RegionSpec};
use hostmem::{Backend, Kind};

use crate::common::{maps_line, GIB, MIB};

#[test]
fn one_memfd_split_around_a_hole_lands_at_the_right_offsets_of_the_fd() {
    let m = Backend::builder(Kind::Memfd, "split")
        .size(32 * MIB)
        .create()
        .unwrap();
    let mem = guest_memory::<()>(&[
        RegionSpec {
            backend: &m,
            offset: 0,
            len: 16 * MIB,
            guest_addr: GuestAddress(0),
        },
        RegionSpec {
            backend: &m,
            offset: 16 * MIB,
            len: 16 * MIB,
            guest_addr: GuestAddress(4 * GIB),
        },
    ])
    .unwrap();
    assert_eq!(mem.num_regions(), 2);
    assert!(
        mem.find_region(GuestAddress(16 * MIB)).is_none(),
        "the hole is no memory"
    );
    mem.write_slice(b"below the hole", GuestAddress(0x1000))
        .unwrap();
    mem.write_slice(b"above the hole", GuestAddress(4 * GIB + 0x3000))
        .unwrap();

    // The kernel's view of the memfd: pread at the offsets the regions start at.
    let (fd, base) = m.dup_fd().unwrap();
    let file = std::fs::File::from(fd);
    let mut buf = [0u8; 14];
    file.read_exact_at(&mut buf, base + 16 * MIB + 0x3000)
        .unwrap();
    assert_eq!(&buf, b"above the hole");
    file.read_exact_at(&mut buf, base + 0x1000).unwrap();
    assert_eq!(&buf, b"below the hole");

    let high = mem.find_region(GuestAddress(4 * GIB)).unwrap();
    assert_eq!(high.backend_offset(), 16 * MIB);
    assert_eq!(high.file_offset().unwrap().start(), 16 * MIB);
    assert_eq!(high.host_addr(), m.host_addr().unwrap() + 16 * MIB as usize);
    // Both regions are ranges of the one mapping of the memfd named after the backend.
    let line = maps_line(m.host_addr().unwrap()).unwrap();
    assert!(line.ends_with("/memfd:split (deleted)"), "{line}");
}

#[test]
fn the_same_backend_range_twice_is_refused_as_an_alias() {
    let m = Backend::builder(Kind::Memfd, "alias")
        .size(8 * MIB)
        .create()
        .unwrap();
    let e = guest_memory::<()>(&[
        RegionSpec {
            backend: &m,
            offset: 0,
            len: 4 * MIB,
            guest_addr: GuestAddress(0),
        },
        RegionSpec {
            backend: &m,
            offset: 2 * MIB,
            len: 4 * MIB,
            guest_addr: GuestAddress(GIB),
        },
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "backend 'alias': region at offset 0x200000 of length 0x400000 overlaps its range \
         0x0+0x400000, already guest memory at 0x0"
    );
    assert!(!m.is_in_use(), "the first region was given back");

    // Across calls too, for as long as the first region lives.
    let first = m.guest_region::<()>(0, 4 * MIB, GuestAddress(0)).unwrap();
    let e = m
        .guest_region::<()>(0, 4 * MIB, GuestAddress(GIB))
        .unwrap_err();
    assert!(e.to_string().contains("already guest memory at 0x0"), "{e}");
    let second = m
        .guest_region::<()>(4 * MIB, 4 * MIB, GuestAddress(GIB))
        .unwrap();
    drop(first);
    let again = m.guest_region::<()>(0, 4 * MIB, GuestAddress(2 * GIB));
    assert!(again.is_ok(), "a dropped region's range is free again");
    drop((second, again));
}
