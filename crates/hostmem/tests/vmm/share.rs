//! The fd goes to vm-memory (FileOffset) only for shared memory, where another
//! process mapping it sees what the guest wrote; dup_fd does not hold the backend.

use std::os::unix::fs::FileExt;

use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};
use hostmem::{Backend, Kind};

use crate::common::{maps_line, MIB};

fn memfd(id: &str, share: bool) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(4 * MIB)
        .share(share)
        .create()
        .unwrap()
}

#[test]
fn a_private_memfd_region_has_no_file_offset_because_the_fd_misses_its_writes() {
    let m = memfd("private", false);
    assert!(!m.is_shareable());
    let region = m.guest_region::<()>(0, 4 * MIB, GuestAddress(0)).unwrap();
    assert!(region.file_offset().is_none());
    region
        .write_slice(b"guest data", MemoryRegionAddress(0x1000))
        .unwrap();
    // Why: the mapping is MAP_PRIVATE, the fd still reads zeros there.
    let (fd, off) = m.dup_fd().unwrap();
    let mut buf = [0xffu8; 10];
    std::fs::File::from(fd)
        .read_exact_at(&mut buf, off + 0x1000)
        .unwrap();
    assert_eq!(buf, [0u8; 10], "the fd does not see private writes");
    let line = maps_line(m.host_addr().unwrap()).unwrap();
    assert!(line.contains(" rw-p "), "{line}");
}

#[test]
fn a_shared_memfd_region_offers_its_fd_and_the_fd_sees_the_guests_writes() {
    let m = memfd("shared", true);
    assert!(m.is_shareable());
    let region = m
        .guest_region::<()>(2 * MIB, 2 * MIB, GuestAddress(0))
        .unwrap();
    let fo = region
        .file_offset()
        .expect("shared memory has a FileOffset");
    assert_eq!(fo.start(), 2 * MIB);
    region
        .write_slice(b"guest data", MemoryRegionAddress(0x1000))
        .unwrap();
    let mut buf = [0u8; 10];
    fo.file()
        .read_exact_at(&mut buf, fo.start() + 0x1000)
        .unwrap();
    assert_eq!(&buf, b"guest data");
    let line = maps_line(m.host_addr().unwrap()).unwrap();
    assert!(
        line.contains(" rw-s ") && line.ends_with("/memfd:shared (deleted)"),
        "{line}"
    );
}

#[test]
fn dup_fd_does_not_hold_the_backend_and_ram_has_none() {
    let mut m = memfd("dup", true);
    let (fd, _) = m.dup_fd().unwrap();
    assert!(!m.is_in_use());
    m.hold().unwrap().write_at(0, b"kept").unwrap();
    m.delete().unwrap();
    // The memfd outlives the backend's mapping through the descriptor.
    let mut buf = [0u8; 4];
    std::fs::File::from(fd).read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"kept");

    let ram = Backend::builder(Kind::Ram, "anon")
        .size(2 * MIB)
        .create()
        .unwrap();
    assert!(!ram.is_shareable());
    assert_eq!(
        ram.dup_fd().unwrap_err().to_string(),
        "memory-backend-ram 'anon' has no fd: its memory is anonymous"
    );
}
