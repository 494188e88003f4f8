//! Plugging and unplugging blocks of live backends (`hostmem::plug`), checked against
//! the kernel after every step: page tables (/proc/self/pagemap, block by block), smaps
//! Rss, the allocated blocks of the fd behind the memory (SEEK_DATA/SEEK_HOLE block by
//! block, st_blocks in all) and the huge page pool's free counter in sysfs.

mod common;
mod plug_kernel;

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use common::*;
use hostmem::plug::{Blocks, Discard};
use hostmem::{Backend, Error, Kind};
use plug_kernel::*;

const BLOCK: u64 = 2 * MIB;
const SIZE: u64 = 16 * MIB;
const HUGE: u64 = 2 * MIB;

/// What the test watches of one backend.
struct Watch {
    start: usize,
    len: u64,
    block: u64,
    /// The memfd, shm object or file behind the memory.
    file: Option<File>,
    /// Free huge pages of the pool before any block was plugged.
    pool_free: Option<u64>,
}

impl Watch {
    fn new(b: &Backend, block: u64, fd: bool, hugetlb: bool) -> Watch {
        let (start, len) = (b.host_addr().unwrap(), b.mapped_len().unwrap() as u64);
        Watch {
            start,
            len,
            block,
            file: fd.then(|| mapped_file(start, len)),
            pool_free: hugetlb.then(free_huge_pages),
        }
    }

    /// Asserts the kernel holds exactly the blocks of `expect` (true: plugged), and
    /// that `blocks` says so too.
    fn check(&self, blocks: &Blocks, expect: &[bool], step: &str) {
        let want: Vec<u64> = expect.iter().map(|&p| p as u64 * self.block).collect();
        let total: u64 = want.iter().sum();
        let mapped = mapped_per_block(self.start, self.len, self.block);
        assert_eq!(mapped, want, "{step}: pagemap, bytes per block");
        let rss = smaps_resident(self.start, self.len);
        assert_eq!(
            rss, total,
            "{step}: smaps Rss (and hugetlb) over the memory"
        );
        if let Some(f) = &self.file {
            let allocated = f.metadata().unwrap().blocks() * 512;
            assert_eq!(allocated, total, "{step}: st_blocks of the fd");
            if self.pool_free.is_none() {
                // hugetlbfs has no SEEK_DATA of its own (all of it reads as data).
                let data = file_data_per_block(f, self.len, self.block);
                assert_eq!(data, want, "{step}: SEEK_DATA/SEEK_HOLE, bytes per block");
            }
        }
        if let Some(before) = self.pool_free {
            let pages = total / HUGE;
            assert_eq!(free_huge_pages(), before - pages, "{step}: free_hugepages");
        }
        let plugged: Vec<bool> = (0..expect.len()).map(|i| blocks.is_plugged(i)).collect();
        assert_eq!(plugged, expect, "{step}: Blocks' own set");
        let resident = blocks.resident_per_block(0..self.len).unwrap();
        assert_eq!(resident, want, "{step}: resident_per_block (mincore)");
    }
}

fn set(expect: &mut [bool], blocks: std::ops::Range<usize>, plugged: bool) {
    expect[blocks].fill(plugged);
}

/// Plug, unplug (one range protected), plug again, all out, plug again; after each
/// step the kernel is asked. Returns how unplug gave the memory back.
fn cycle(b: &Backend, fd: bool, hugetlb: bool) -> Discard {
    let w = Watch::new(b, BLOCK, fd, hugetlb);
    let mut blocks = Blocks::new(b, BLOCK).unwrap();
    let mut expect = vec![false; (SIZE / BLOCK) as usize];
    w.check(&blocks, &expect, "fresh");
    let r = blocks.plug(0..8 * MIB).unwrap();
    assert_eq!(r.newly_plugged, 4);
    set(&mut expect, 0..4, true);
    w.check(&blocks, &expect, "plug 0..8M");
    blocks.plug(12 * MIB..16 * MIB).unwrap();
    set(&mut expect, 6..8, true);
    w.check(&blocks, &expect, "plug 12..16M");
    let mem = blocks.memory().clone();
    mem.fill(2 * MIB as usize, BLOCK as usize, 0xa5).unwrap();
    let r = blocks.unplug(2 * MIB..6 * MIB, true).unwrap();
    assert_eq!((r.were_plugged, r.protected), (2, true));
    set(&mut expect, 1..3, false);
    w.check(&blocks, &expect, "unplug 2..6M protected");
    blocks.plug(2 * MIB..4 * MIB).unwrap();
    set(&mut expect, 1..2, true);
    w.check(&blocks, &expect, "plug 2..4M again");
    let mut back = vec![0xffu8; 4096];
    mem.read_at(2 * MIB as usize, &mut back).unwrap();
    assert!(
        back.iter().all(|&x| x == 0),
        "a replugged block reads zeros"
    );
    let r = blocks.unplug(0..SIZE, false).unwrap();
    expect.fill(false);
    w.check(&blocks, &expect, "unplug all");
    blocks.plug(4 * MIB..10 * MIB).unwrap();
    set(&mut expect, 2..5, true);
    w.check(&blocks, &expect, "plug 4..10M after all out");
    r.how
}

fn unreserved(kind: Kind, id: &str) -> hostmem::Builder {
    Backend::builder(kind, id).size(SIZE).reserve(false)
}

#[test]
fn ram_blocks_plugged_unplugged_and_replugged_match_page_tables_and_rss() {
    let b = unreserved(Kind::Ram, "ram").create().unwrap();
    assert_eq!(cycle(&b, false, false), Discard::DontNeed);
}

#[test]
fn shared_ram_blocks_are_removed_from_their_shm_object_on_unplug() {
    let b = unreserved(Kind::Ram, "sram").share(true).create().unwrap();
    assert_eq!(cycle(&b, true, false), Discard::Remove);
}

#[test]
fn memfd_blocks_plugged_and_unplugged_match_the_fd_block_for_block() {
    let b = unreserved(Kind::Memfd, "memfd").create().unwrap();
    assert_eq!(cycle(&b, true, false), Discard::PunchHole);
}

#[test]
fn shm_blocks_plugged_and_unplugged_match_the_fd_block_for_block() {
    let b = unreserved(Kind::Shm, "shm").create().unwrap();
    assert_eq!(cycle(&b, true, false), Discard::PunchHole);
}

#[test]
fn file_blocks_plugged_and_unplugged_match_the_file_block_for_block() {
    let dir = mount_tmpfs("64m");
    let b = unreserved(Kind::File, "file")
        .mem_path(dir.path().join("guest"))
        .share(true)
        .create()
        .unwrap();
    assert_eq!(cycle(&b, true, false), Discard::PunchHole);
}

#[test]
fn hugetlb_memfd_blocks_match_the_pool_and_the_fd_after_each_step() {
    // The children set the huge page pool: one at a time (the guard's lock is per process).
    let _one = serial();
    const NAME: &str = "hugetlb_memfd_blocks_match_the_pool_and_the_fd_after_each_step";
    if ran_in_child(NAME) {
        return;
    }
    let _pool = PoolGuard::set(HUGE, 10);
    let b = unreserved(Kind::Memfd, "huge")
        .hugetlb(true)
        .hugetlbsize(HUGE)
        .create()
        .unwrap();
    assert_eq!(cycle(&b, true, true), Discard::PunchHole);
}

#[test]
fn hugetlb_plug_one_block_short_is_an_error_naming_the_pool_and_keeps_earlier_blocks() {
    // The children set the huge page pool: one at a time (the guard's lock is per process).
    let _one = serial();
    const NAME: &str =
        "hugetlb_plug_one_block_short_is_an_error_naming_the_pool_and_keeps_earlier_blocks";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD short: refused naming the pool, 2 blocks kept");
        return;
    }
    // 4 MiB blocks (2 huge pages each) on a 5-page pool: the third block finds 1 free.
    let _pool = PoolGuard::set(HUGE, 5);
    let b = unreserved(Kind::Memfd, "short")
        .hugetlb(true)
        .hugetlbsize(HUGE)
        .create()
        .unwrap();
    let w = Watch::new(&b, 4 * MIB, true, true);
    let mut blocks = Blocks::new(&b, 4 * MIB).unwrap();
    blocks.plug(0..8 * MIB).unwrap();
    blocks.memory().fill(0, 4096, 0x5a).unwrap();
    let expect = [true, true, false, false];
    w.check(&blocks, &expect, "two blocks plugged");
    let e = blocks.plug(8 * MIB..12 * MIB).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::HugePagesShort { shortage, .. }
            if shortage.page_size == HUGE && shortage.needed == 2 && shortage.free == 1),
        "{text}"
    );
    assert!(
        text.contains("2 MiB huge pages: 2 needed, 1 free"),
        "{text}"
    );
    w.check(&blocks, &expect, "after the refused plug");
    let mut back = [0u8; 4096];
    blocks.memory().read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0x5a), "block 0 kept its contents");
    println!("CHILD short: refused naming the pool, 2 blocks kept");
}

#[test]
fn access_to_an_unplugged_protected_block_through_in_use_is_an_error() {
    // The children set the huge page pool: one at a time (the guard's lock is per process).
    let _one = serial();
    const NAME: &str = "access_to_an_unplugged_protected_block_through_in_use_is_an_error";
    if let Some(run) = child_run(NAME) {
        run.assert_survived();
        for kind in ["ram", "memfd", "hugetlb"] {
            run.assert_printed(&format!("CHILD {kind}: write and read refused, no refill"));
        }
        return;
    }
    let _pool = PoolGuard::set(HUGE, 8);
    for kind in ["ram", "memfd", "hugetlb"] {
        let b = match kind {
            "ram" => unreserved(Kind::Ram, kind),
            "memfd" => unreserved(Kind::Memfd, kind),
            _ => unreserved(Kind::Memfd, kind)
                .hugetlb(true)
                .hugetlbsize(HUGE),
        }
        .create()
        .unwrap();
        let mut blocks = Blocks::new(&b, BLOCK).unwrap();
        blocks.plug(0..SIZE).unwrap();
        blocks.unplug(BLOCK..2 * BLOCK, true).unwrap();
        let mem = blocks.memory();
        let at = BLOCK as usize + 100;
        assert!(mem.write_at(at, &[1, 2, 3]).is_err(), "{kind}: write_at");
        assert!(mem.read_at(at, &mut [0u8; 3]).is_err(), "{kind}: read_at");
        assert!(mem.fill(at, 10, 7).is_err(), "{kind}: fill");
        // A copy across the edge of a plugged and a protected block is refused whole.
        assert!(
            mem.write_at(BLOCK as usize - 2, &[9; 4]).is_err(),
            "{kind}: edge"
        );
        let mapped = mapped_per_block(b.host_addr().unwrap(), SIZE, BLOCK);
        assert_eq!(
            mapped[1], 0,
            "{kind}: the refused copies faulted nothing in"
        );
        // The plugged neighbours still work.
        mem.write_at(at - BLOCK as usize, &[1, 2, 3]).unwrap();
        println!("CHILD {kind}: write and read refused, no refill");
    }
}

#[test]
fn blocks_refuse_reserved_memory_bad_block_sizes_and_ranges_of_part_blocks() {
    let reserved = Backend::builder(Kind::Memfd, "r")
        .size(SIZE)
        .create()
        .unwrap();
    assert!(matches!(
        Blocks::new(&reserved, BLOCK),
        Err(Error::Refused(t)) if t.contains("reserve=off")
    ));
    let b = unreserved(Kind::Memfd, "u").create().unwrap();
    for bad in [0, 1000, 4096 + 512, 3 * MIB] {
        assert!(Blocks::new(&b, bad).is_err(), "block size {bad}");
    }
    let mut blocks = Blocks::new(&b, BLOCK).unwrap();
    for r in [0..MIB, MIB..3 * MIB, 0..0, 14 * MIB..18 * MIB] {
        assert!(blocks.plug(r.clone()).is_err(), "plug {r:?}");
        assert!(blocks.unplug(r.clone(), true).is_err(), "unplug {r:?}");
    }
    let start = b.host_addr().unwrap();
    assert_eq!(smaps_resident(start, SIZE), 0, "nothing was faulted in");
}

#[test]
fn a_plug_the_file_system_cannot_hold_gives_its_blocks_back_and_protects_them_again() {
    const NAME: &str =
        "a_plug_the_file_system_cannot_hold_gives_its_blocks_back_and_protects_them_again";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD full: refused, block 0 kept, the rest given back");
        return;
    }
    // No pool to ask first: the 8 MiB tmpfs runs out in the middle of the populate.
    let dir = mount_tmpfs("8m");
    let b = unreserved(Kind::File, "full")
        .mem_path(dir.path().join("guest"))
        .share(true)
        .create()
        .unwrap();
    let w = Watch::new(&b, BLOCK, true, false);
    let mut blocks = Blocks::new(&b, BLOCK).unwrap();
    blocks.plug(0..4 * MIB).unwrap();
    blocks.unplug(2 * MIB..4 * MIB, true).unwrap();
    blocks.memory().fill(0, 4096, 0x3c).unwrap();
    let mut expect = vec![false; (SIZE / BLOCK) as usize];
    expect[0] = true;
    w.check(&blocks, &expect, "block 0 plugged, block 1 protected");
    let e = blocks.plug(2 * MIB..SIZE).unwrap_err();
    assert!(
        matches!(e, Error::Alloc { .. }) && e.to_string().contains("no room"),
        "{e}"
    );
    w.check(&blocks, &expect, "after the failed plug");
    let mem = blocks.memory();
    assert!(
        mem.write_at(2 * MIB as usize, &[1]).is_err(),
        "block 1 protected again"
    );
    let mut back = [0u8; 4096];
    mem.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0x3c), "block 0 kept its contents");
    println!("CHILD full: refused, block 0 kept, the rest given back");
}

/// vm-memory's copies are not checked: a guest region over an unplugged, PROT_NONE
/// block would crash the VMM at its first access. So no region is made over such a
/// block (only once it is plugged again), and a block under a live region is not made
/// inaccessible. Run in a child so a SIGSEGV fails the test instead of the run.
#[cfg(feature = "vm-memory")]
#[test]
fn no_guest_region_is_made_over_an_unplugged_protected_block() {
    use hostmem::vm_memory::{Bytes, GuestAddress, MemoryRegionAddress};
    use hostmem::vmm::VmmError;
    const NAME: &str = "no_guest_region_is_made_over_an_unplugged_protected_block";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD region over protected block refused")
            .assert_printed("CHILD region after replug written")
            .assert_printed("CHILD protect under a region refused");
        return;
    }
    let b = unreserved(Kind::Ram, "vm").create().unwrap();
    let mut blocks = Blocks::new(&b, BLOCK).unwrap();
    blocks.plug(0..SIZE).unwrap();
    blocks.unplug(4 * MIB..6 * MIB, true).unwrap();
    let e = b
        .guest_region::<()>(0, 8 * MIB, GuestAddress(0))
        .unwrap_err();
    assert!(
        matches!(e, VmmError::Unplugged { block_offset, .. } if block_offset == 4 * MIB),
        "{e}"
    );
    println!("CHILD region over protected block refused");
    blocks.plug(4 * MIB..6 * MIB).unwrap();
    let r = b.guest_region::<()>(0, 8 * MIB, GuestAddress(0)).unwrap();
    r.write_slice(b"plugged", MemoryRegionAddress(5 * MIB))
        .unwrap();
    println!("CHILD region after replug written");
    let e = blocks.unplug(4 * MIB..6 * MIB, true).unwrap_err();
    assert!(e.to_string().contains("guest region"), "{e}");
    drop(r);
    println!("CHILD protect under a region refused");
}

/// A plug the host cannot give is refused before any page, naming the limit, as a
/// preallocation of that size would be (not left to the OOM killer): a 64 GiB
/// reserve=off backend on this 24 GiB host maps fine, plugging all of it does not.
#[test]
fn a_plug_larger_than_the_host_can_give_is_refused_before_any_page() {
    let size = 64 * GIB;
    let b = Backend::builder(Kind::Ram, "big")
        .size(size)
        .reserve(false)
        .create()
        .unwrap();
    let available = {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |k: &str| -> u64 {
            let l = text.lines().find(|l| l.starts_with(k)).unwrap();
            l.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        kib("MemTotal:") * 1024
    };
    assert!(
        size > available,
        "the test needs a host with less than 64 GiB"
    );
    let mut blocks = Blocks::new(&b, BLOCK).unwrap();
    let e = blocks.plug(0..size).unwrap_err();
    assert!(matches!(e, Error::HostMemoryShort { .. }), "{e}");
    assert!(e.to_string().contains("the host has"), "{e}");
    assert!(blocks.plugged().is_empty());
    let start = b.host_addr().unwrap();
    assert_eq!(smaps_resident(start, size), 0, "no page faulted in");
}

/// Huge pages without a reservation become guest memory block by block: a region over
/// plugged blocks is made (and written), one that reaches an unplugged block is
/// refused (a touch there could SIGBUS on an empty pool), a block under a live region
/// cannot be unplugged, and once unplugged it is refused again. In a child, so a
/// SIGBUS fails the test instead of the run.
#[cfg(feature = "vm-memory")]
#[test]
fn unreserved_huge_pages_become_guest_memory_only_over_plugged_blocks() {
    use hostmem::vm_memory::{Bytes, GuestAddress, MemoryRegionAddress};
    use hostmem::vmm::VmmError;
    let _one = serial();
    const NAME: &str = "unreserved_huge_pages_become_guest_memory_only_over_plugged_blocks";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD region over plugged blocks written")
            .assert_printed("CHILD region reaching an unplugged block refused")
            .assert_printed("CHILD unplug under a region refused, after it the region refused");
        return;
    }
    let _pool = PoolGuard::set(HUGE, 10);
    let b = unreserved(Kind::Memfd, "hvm")
        .hugetlb(true)
        .hugetlbsize(HUGE)
        .create()
        .unwrap();
    let mut blocks = Blocks::new(&b, BLOCK).unwrap();
    blocks.plug(0..4 * MIB).unwrap();
    let r = b.guest_region::<()>(0, 4 * MIB, GuestAddress(0)).unwrap();
    r.write_slice(b"plugged", MemoryRegionAddress(4 * MIB - 7))
        .unwrap();
    println!("CHILD region over plugged blocks written");
    let e = b
        .guest_region::<()>(4 * MIB, 4 * MIB, GuestAddress(1 << 30))
        .unwrap_err();
    assert!(matches!(e, VmmError::Unbacked { .. }), "{e}");
    println!("CHILD region reaching an unplugged block refused");
    let e = blocks.unplug(2 * MIB..4 * MIB, false).unwrap_err();
    assert!(e.to_string().contains("guest region"), "{e}");
    drop(r);
    blocks.unplug(2 * MIB..4 * MIB, false).unwrap();
    let e = b
        .guest_region::<()>(0, 4 * MIB, GuestAddress(0))
        .unwrap_err();
    assert!(matches!(e, VmmError::Unbacked { .. }), "{e}");
    b.guest_region::<()>(0, 2 * MIB, GuestAddress(0)).unwrap();
    println!("CHILD unplug under a region refused, after it the region refused");
}
