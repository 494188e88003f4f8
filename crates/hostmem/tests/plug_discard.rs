//! `Backend::discard`, what a balloon or free page reporting asks of a VMM's memory,
//! checked against the kernel: page tables and smaps Rss over the range, the fd's
//! data (SEEK_DATA/SEEK_HOLE, st_blocks), the huge page pool's free counter; the bytes
//! outside the range kept, the range reading zeros; refusals that leave all of it as
//! it was.

mod common;
mod plug_kernel;

use std::os::unix::fs::MetadataExt;

use common::*;
use hostmem::plug::{Blocks, Discard};
use hostmem::{Backend, Error};
use hostmem_testkit::pool::{Pool, PoolGuard as Pools};
use plug_kernel::*;

const SIZE: u64 = 16 * MIB;
const BLOCK: u64 = 2 * MIB;
const HUGE: u64 = 2 * MIB;

/// Fills a preallocated backend with 0xaa, discards 4..8 MiB and checks the kernel:
/// blocks 2 and 3 hold nothing (pagemap, Rss, the fd's data and blocks, the pool),
/// the rest is untouched and keeps its bytes, the range reads zeros. Returns how.
fn discard_middle(b: &Backend, fd: bool, hugetlb: bool) -> Discard {
    let (start, len) = (b.host_addr().unwrap(), b.mapped_len().unwrap() as u64);
    let file = fd.then(|| mapped_file(start, len));
    let mem = b.hold().unwrap();
    mem.fill(0, SIZE as usize, 0xaa).unwrap();
    let free0 = hugetlb.then(free_huge_pages);
    let how = b.discard(4 * MIB..8 * MIB).unwrap();
    let mut want = vec![BLOCK; (SIZE / BLOCK) as usize];
    want[2] = 0;
    want[3] = 0;
    let kept = SIZE - 4 * MIB;
    assert_eq!(
        mapped_per_block(start, len, BLOCK),
        want,
        "pagemap per block"
    );
    assert_eq!(smaps_resident(start, len), kept, "smaps Rss (and hugetlb)");
    if let Some(f) = &file {
        assert_eq!(f.metadata().unwrap().blocks() * 512, kept, "st_blocks");
        if !hugetlb {
            assert_eq!(
                file_data_per_block(f, len, BLOCK),
                want,
                "SEEK_DATA per block"
            );
        }
    }
    if let Some(before) = free0 {
        assert_eq!(free_huge_pages(), before + 2, "free_hugepages");
    }
    let mut page = vec![0u8; 4096];
    mem.read_at(5 * MIB as usize, &mut page).unwrap();
    let zeros = page.iter().all(|&x| x == 0);
    mem.read_at(9 * MIB as usize, &mut page).unwrap();
    assert!(
        page.iter().all(|&x| x == 0xaa),
        "bytes after the range kept"
    );
    assert!(zeros, "the discarded range reads zeros");
    how
}

/// Huge pages without a reservation, none faulted in yet.
fn unreserved_huge(id: &str) -> Backend {
    Backend::builder(hostmem::Kind::Memfd, id)
        .size(SIZE)
        .hugetlb(true)
        .hugetlbsize(HUGE)
        .reserve(false)
        .create()
        .unwrap()
}

fn preallocated(kind: hostmem::Kind, id: &str) -> hostmem::Builder {
    Backend::builder(kind, id).size(SIZE).prealloc(true)
}

#[test]
fn private_ram_is_discarded_with_dontneed_and_its_pages_leave_the_page_tables() {
    let b = preallocated(hostmem::Kind::Ram, "ram").create().unwrap();
    assert_eq!(discard_middle(&b, false, false), Discard::DontNeed);
}

#[test]
fn shared_ram_is_discarded_with_remove_and_its_shm_object_loses_the_pages() {
    let b = preallocated(hostmem::Kind::Ram, "sram")
        .share(true)
        .create()
        .unwrap();
    assert_eq!(discard_middle(&b, true, false), Discard::Remove);
}

#[test]
fn memfd_shm_and_file_memory_get_a_hole_punched_block_for_block() {
    let memfd = preallocated(hostmem::Kind::Memfd, "memfd")
        .create()
        .unwrap();
    assert_eq!(discard_middle(&memfd, true, false), Discard::PunchHole);
    let shm = preallocated(hostmem::Kind::Shm, "shm").create().unwrap();
    assert_eq!(discard_middle(&shm, true, false), Discard::PunchHole);
    let dir = mount_tmpfs("32m");
    let file = preallocated(hostmem::Kind::File, "file")
        .mem_path(dir.path().join("guest"))
        .share(true)
        .create()
        .unwrap();
    assert_eq!(discard_middle(&file, true, false), Discard::PunchHole);
}

/// Unreserved huge pages: the hole goes back to the pool, and the range, no longer
/// preallocated, cannot become a guest region (a touch could SIGBUS); reserved huge
/// pages are refused (the hole would drop the reservation that promised no SIGBUS).
#[test]
fn huge_pages_go_back_to_the_pool_and_reserved_ones_are_refused() {
    let _one = serial();
    const NAME: &str = "huge_pages_go_back_to_the_pool_and_reserved_ones_are_refused";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD unreserved: 2 pages back in the pool");
        return;
    }
    let mut pools = Pools::new();
    pools.reserve(Pool::host(HUGE), 16).unwrap();
    let reserved = preallocated(hostmem::Kind::Memfd, "hres")
        .hugetlb(true)
        .hugetlbsize(HUGE)
        .create()
        .unwrap();
    let free0 = free_huge_pages();
    let e = reserved.discard(4 * MIB..8 * MIB).unwrap_err();
    assert!(
        matches!(&e, Error::Refused(t) if t.contains("reservation")),
        "{e}"
    );
    assert_eq!(free_huge_pages(), free0, "a refused discard frees nothing");
    drop(reserved);
    let b = unreserved_huge("hunres");
    let mut blocks = Blocks::new(&b, BLOCK).unwrap();
    blocks.plug(0..SIZE).unwrap();
    assert_eq!(discard_middle(&b, true, true), Discard::PunchHole);
    assert_eq!(
        blocks.plugged(),
        [0..4 * MIB, 8 * MIB..SIZE],
        "plugged marks"
    );
    #[cfg(feature = "vm-memory")]
    {
        use hostmem::vm_memory::GuestAddress;
        let e = b.guest_region::<()>(0, SIZE, GuestAddress(0)).unwrap_err();
        assert!(matches!(e, hostmem::vmm::VmmError::Unbacked { .. }), "{e}");
        b.guest_region::<()>(8 * MIB, 8 * MIB, GuestAddress(0))
            .expect("the blocks still plugged");
    }
    drop(blocks);
    println!("CHILD unreserved: 2 pages back in the pool");
    drop(b);
    pools.restore().unwrap();
}

#[test]
fn discard_refuses_part_pages_empty_or_outside_ranges_and_read_only_memory() {
    let b = preallocated(hostmem::Kind::Ram, "r").create().unwrap();
    let (start, len) = (b.host_addr().unwrap(), SIZE);
    let reversed = std::ops::Range {
        start: 8192,
        end: 4096,
    };
    for bad in [0..0, 100..4096, 4096..4196, 8 * MIB..SIZE + 4096, reversed] {
        let e = b.discard(bad.clone()).unwrap_err();
        assert!(
            matches!(&e, Error::Refused(t) if t.contains("whole")),
            "{bad:?}: {e}"
        );
    }
    assert_eq!(smaps_resident(start, len), SIZE, "nothing was discarded");
    let dir = mount_tmpfs("32m");
    let path = dir.path().join("rom");
    std::fs::write(&path, vec![7u8; SIZE as usize]).unwrap();
    let rom = Backend::builder(hostmem::Kind::File, "rom")
        .size(SIZE)
        .mem_path(&path)
        .share(true)
        .readonly(true)
        .create()
        .unwrap();
    let e = rom.discard(0..2 * MIB).unwrap_err();
    assert!(
        matches!(&e, Error::Refused(t) if t.contains("read-only")),
        "{e}"
    );
    let f = std::fs::File::open(&path).unwrap();
    assert_eq!(
        f.metadata().unwrap().blocks() * 512,
        SIZE,
        "the file kept its data"
    );
}

/// A balloon discards under a running guest: allowed under a live vm-memory region,
/// whose next write refills the page (zeros first); refused under one over unreserved
/// huge pages, where that touch could find the pool empty.
#[cfg(feature = "vm-memory")]
#[test]
fn discard_under_a_live_region_refills_on_touch_except_over_unreserved_huge_pages() {
    use hostmem::vm_memory::{Bytes, GuestAddress, MemoryRegionAddress};
    let _one = serial();
    const NAME: &str =
        "discard_under_a_live_region_refills_on_touch_except_over_unreserved_huge_pages";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD ram region refilled")
            .assert_printed("CHILD unreserved huge pages under a region refused");
        return;
    }
    let b = preallocated(hostmem::Kind::Ram, "vm").create().unwrap();
    let start = b.host_addr().unwrap();
    let r = b
        .guest_region::<()>(0, SIZE, GuestAddress(1 << 32))
        .unwrap();
    r.write_slice(&[0x11; 4096], MemoryRegionAddress(5 * MIB))
        .unwrap();
    b.discard(4 * MIB..6 * MIB).unwrap();
    assert_eq!(smaps_resident(start, SIZE), SIZE - 2 * MIB, "smaps Rss");
    let mut page = [0xffu8; 4096];
    r.read_slice(&mut page, MemoryRegionAddress(5 * MIB))
        .unwrap();
    assert!(page.iter().all(|&x| x == 0), "a discarded page reads zeros");
    r.write_slice(&[0x22; 4096], MemoryRegionAddress(5 * MIB))
        .unwrap();
    assert!(
        smaps_resident(start, SIZE) > SIZE - 2 * MIB,
        "the write refilled a page"
    );
    println!("CHILD ram region refilled");
    let mut pools = Pools::new();
    pools.reserve(Pool::host(HUGE), 8).unwrap();
    let h = unreserved_huge("hvm");
    Blocks::new(&h, BLOCK).unwrap().plug(0..SIZE).unwrap();
    let hr = h.guest_region::<()>(0, SIZE, GuestAddress(0)).unwrap();
    let free0 = free_huge_pages();
    let e = h.discard(4 * MIB..6 * MIB).unwrap_err();
    assert!(
        matches!(&e, Error::Refused(t) if t.contains("SIGBUS")),
        "{e}"
    );
    assert_eq!(free_huge_pages(), free0, "nothing given back");
    hr.write_slice(b"still backed", MemoryRegionAddress(5 * MIB))
        .unwrap();
    println!("CHILD unreserved huge pages under a region refused");
    drop((hr, h));
    pools.restore().unwrap();
}
