//! Regions over the backend's own mapping, held in use while they live, and the
//! checks on offset, length and guest address.

use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use hostmem::vmm::{guest_memory, Region, RegionSpec};
use hostmem::{Backend, Kind};

use crate::common::MIB;

#[test]
fn a_region_is_the_backends_own_mapping_and_holds_it_in_use() {
    // Alone in a process: no other test maps memory at the freed address meanwhile.
    if crate::common::ran_in_child(
        "regions::a_region_is_the_backends_own_mapping_and_holds_it_in_use",
    ) {
        return;
    }
    let mut ram = Backend::builder(Kind::Ram, "ram")
        .size(16 * MIB)
        .create()
        .unwrap();
    let mem = guest_memory::<()>(&[RegionSpec {
        backend: &ram,
        offset: 0,
        len: 16 * MIB,
        guest_addr: GuestAddress(0),
    }])
    .unwrap();
    mem.write_slice(b"low ram", GuestAddress(0x2000)).unwrap();
    let region = mem.find_region(GuestAddress(0)).unwrap();
    assert_eq!(region.host_addr(), ram.host_addr().unwrap());
    let mut buf = [0u8; 7];
    ram.hold().unwrap().read_at(0x2000, &mut buf).unwrap();
    assert_eq!(&buf, b"low ram");

    assert_eq!(
        ram.delete().unwrap_err().to_string(),
        "object 'ram' is in use, can not be deleted"
    );
    let addr = ram.host_addr().unwrap();
    drop(mem);
    assert!(!ram.is_in_use());
    ram.delete().unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains(&format!("{addr:x}-")),
        "unmapped once the regions are gone"
    );
}

#[test]
fn a_region_outlives_a_dropped_backend_object() {
    if crate::common::ran_in_child("regions::a_region_outlives_a_dropped_backend_object") {
        return;
    }
    let b = Backend::builder(Kind::Ram, "r")
        .size(2 * MIB)
        .create()
        .unwrap();
    let region: Region = b.guest_region(0, 2 * MIB, GuestAddress(0)).unwrap();
    let addr = region.host_addr();
    drop(b);
    assert!(crate::common::maps_line(addr).is_some(), "still mapped");
    region
        .write_obj(7u64, hostmem::vm_memory::MemoryRegionAddress(64))
        .unwrap();
    let v: u64 = region
        .read_obj(hostmem::vm_memory::MemoryRegionAddress(64))
        .unwrap();
    assert_eq!(v, 7);
    drop(region);
    assert!(crate::common::maps_line(addr).is_none(), "unmapped with it");
}

#[test]
fn an_unallocated_backend_is_refused() {
    let b = Backend::builder(Kind::Ram, "r")
        .size(2 * MIB)
        .build()
        .unwrap();
    let e = b
        .guest_region::<()>(0, 2 * MIB, GuestAddress(0))
        .unwrap_err();
    assert_eq!(e.to_string(), "memory-backend-ram 'r' is not allocated");
}

#[test]
fn ranges_outside_the_backend_or_not_whole_pages_are_refused_naming_the_value() {
    let b = Backend::builder(Kind::Memfd, "m")
        .size(4 * MIB)
        .create()
        .unwrap();
    let err = |off, len, base| {
        b.guest_region::<()>(off, len, GuestAddress(base))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(2 * MIB, 4 * MIB, 0),
        "backend 'm': region at offset 0x200000 of length 0x400000 is not inside its 0x400000 bytes"
    );
    assert_eq!(
        err(0, 0, 0),
        "backend 'm': region at offset 0x0 of length 0x0 is not inside its 0x400000 bytes"
    );
    assert_eq!(
        err(0x800, MIB, 0),
        "backend 'm': region offset 0x800 is not a multiple of the page size 0x1000"
    );
    assert_eq!(
        err(0, MIB + 1, 0),
        "backend 'm': region length 0x100001 is not a multiple of the page size 0x1000"
    );
    assert_eq!(
        err(0, MIB, 0x10),
        "backend 'm': guest address 0x10 is not a multiple of the page size 0x1000"
    );
    assert_eq!(
        err(0, MIB, u64::MAX - 0xfff),
        "backend 'm': region of length 0x100000 at guest address 0xfffffffffffff000 ends beyond the guest address space"
    );
    assert!(!b.is_in_use(), "a refused region leaves no hold");
}

#[test]
fn overlapping_guest_ranges_are_refused_naming_both_backends() {
    let a = Backend::builder(Kind::Ram, "a")
        .size(4 * MIB)
        .create()
        .unwrap();
    let b = Backend::builder(Kind::Ram, "b")
        .size(4 * MIB)
        .create()
        .unwrap();
    let e = guest_memory::<()>(&[
        RegionSpec {
            backend: &b,
            offset: 0,
            len: 4 * MIB,
            guest_addr: GuestAddress(2 * MIB),
        },
        RegionSpec {
            backend: &a,
            offset: 0,
            len: 4 * MIB,
            guest_addr: GuestAddress(0),
        },
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "guest range 0x0..0x400000 of backend 'a' overlaps 0x200000..0x600000 of backend 'b'"
    );
    assert!(!a.is_in_use() && !b.is_in_use(), "nothing half-made");
    // Given out of order, the regions are sorted by guest address.
    let mem = guest_memory::<()>(&[
        RegionSpec {
            backend: &b,
            offset: 0,
            len: 4 * MIB,
            guest_addr: GuestAddress(4 * MIB),
        },
        RegionSpec {
            backend: &a,
            offset: 0,
            len: 4 * MIB,
            guest_addr: GuestAddress(0),
        },
    ])
    .unwrap();
    let ids: Vec<&str> = mem.iter().map(|r| r.backend_id()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 8 * MIB);
}
