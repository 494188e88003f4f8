//! The sequences of safe calls that used to kill a VMM (issue 18), each run in a child
//! process whose exit status and signal the parent checks: a SIGBUS, SIGSEGV or abort
//! fails the test instead of the run. Each child prints what it saw, and the parent
//! asserts those lines, so the child cannot pass by doing nothing.

use hostmem::vm_memory::bitmap::AtomicBitmap;
use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use hostmem::vmm::{guest_memory, guest_memory_tracked, RegionSpec, VmmError};
use hostmem::{Backend, Error, FileSizePromise, Kind};
use rustix::fs::{fcntl_get_seals, SealFlags};

use crate::common::{child_run, mount_hugetlbfs, PoolGuard, TempDir, MIB};

/// The memory a test shrinks the file of: shm, a shared file, a memfd with seal=off.
fn shrinkable(kind: &str, dir: &TempDir) -> Backend {
    let b = match kind {
        "shm" => Backend::builder(Kind::Shm, "s"),
        "file" => Backend::builder(Kind::File, "f")
            .mem_path(dir.path().join("guest"))
            .share(true),
        _ => Backend::builder(Kind::Memfd, "m").seal(false),
    };
    b.size(2 * MIB).create().unwrap()
}

#[test]
fn no_descriptor_hostmem_hands_out_can_shrink_the_file_under_guest_memory() {
    const NAME: &str =
        "sound::no_descriptor_hostmem_hands_out_can_shrink_the_file_under_guest_memory";
    if let Some(run) = child_run(NAME) {
        run.assert_survived();
        for kind in ["shm", "file"] {
            run.assert_printed(&format!(
                "CHILD {kind}: no FileOffset, dup_fd refused, InUse::fd None, write ok"
            ));
            run.assert_printed(&format!("CHILD {kind}: promised: fd handed out"));
        }
        run.assert_printed("CHILD memfd: FileOffset set_len(0) refused: EPERM, dup_fd set_len(0) refused: EPERM, InUse::fd set_len(0) refused: EPERM, grows, write ok");
        return;
    }
    let dir = TempDir::new("vmm-shrink");
    for kind in ["shm", "file", "memfd"] {
        let b = shrinkable(kind, &dir);
        let mem = guest_memory::<()>(&[RegionSpec::whole(&b, GuestAddress(0))]).unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        if kind == "memfd" {
            let fo = region.file_offset().expect("a shared memfd gives its fd");
            let e1 = fo.file().set_len(0).unwrap_err();
            let (fd, _) = b.dup_fd().unwrap();
            let e2 = std::fs::File::from(fd).set_len(0).unwrap_err();
            let hold = b.hold().unwrap();
            let (held, _) = hold.fd().unwrap();
            let e3 = std::fs::File::from(held.try_clone_to_owned().unwrap())
                .set_len(0)
                .unwrap_err();
            // seal=off: only shrinking is sealed, what the mapping needs; growing is the
            // caller's to do.
            let seals = fcntl_get_seals(held).unwrap();
            assert!(seals.contains(SealFlags::SHRINK), "{seals:?}");
            assert!(!seals.contains(SealFlags::GROW), "{seals:?}");
            fo.file().set_len(4 * MIB).unwrap();
            mem.write_slice(b"x", GuestAddress(2 * MIB - 1)).unwrap();
            let errno = |e: std::io::Error| rustix::io::Errno::from_io_error(&e).unwrap();
            assert_eq!(errno(e1), rustix::io::Errno::PERM);
            println!("CHILD memfd: FileOffset set_len(0) refused: EPERM, dup_fd set_len(0) refused: EPERM, InUse::fd set_len(0) refused: EPERM, grows, write ok");
            assert_eq!(errno(e2), rustix::io::Errno::PERM);
            assert_eq!(errno(e3), rustix::io::Errno::PERM);
            continue;
        }
        assert!(
            region.file_offset().is_none(),
            "{kind}: no fd in the region"
        );
        let e = b.dup_fd().unwrap_err();
        assert!(matches!(e, Error::FileCanShrink { .. }), "{kind}: {e}");
        assert!(b.hold().unwrap().fd().is_none(), "{kind}: InUse::fd");
        mem.write_slice(b"x", GuestAddress(2 * MIB - 1)).unwrap();
        println!("CHILD {kind}: no FileOffset, dup_fd refused, InUse::fd None, write ok");
        // SAFETY: nothing in this test shrinks the file.
        b.trust_file_size(unsafe { FileSizePromise::new() })
            .unwrap();
        let (fd, _) = b.dup_fd().unwrap();
        assert!(b.hold().unwrap().fd().is_some());
        drop((mem, fd));
        let mem = guest_memory::<()>(&[RegionSpec::whole(&b, GuestAddress(0))]).unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert!(
            region.file_offset().is_some(),
            "{kind}: promised, so shared"
        );
        println!("CHILD {kind}: promised: fd handed out");
    }
}

#[test]
fn huge_pages_without_a_reservation_become_guest_memory_only_once_preallocated() {
    const NAME: &str =
        "sound::huge_pages_without_a_reservation_become_guest_memory_only_once_preallocated";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD a: refused before prealloc")
            .assert_printed("CHILD a: preallocated, every page written")
            .assert_printed("CHILD b: prealloc refused, region refused")
            .assert_printed("CHILD c: guest address 0x1000 refused");
        return;
    }
    const HUGE: u64 = 2 * MIB;
    let pool = PoolGuard::set(HUGE, 8);
    let unreserved = |id: &str| {
        Backend::builder(Kind::Memfd, id)
            .size(16 * MIB)
            .hugetlb(true)
            .reserve(false)
            .create()
            .unwrap()
    };
    // Two 16 MiB backends on an 8-page pool: without a reservation both are made.
    let mut a = unreserved("a");
    let mut b = unreserved("b");
    let e = guest_memory::<()>(&[RegionSpec::whole(&a, GuestAddress(0))]).unwrap_err();
    assert!(matches!(e, VmmError::Unbacked { .. }), "{e}");
    println!("CHILD a: refused before prealloc");
    a.set("prealloc", hostmem::PropValue::Bool(true)).unwrap();
    let mem = guest_memory::<()>(&[RegionSpec::whole(&a, GuestAddress(0))]).unwrap();
    for page in 0..8 {
        mem.write_obj(page, GuestAddress(page * HUGE)).unwrap();
    }
    assert_eq!(pool.pool().free, 0, "a holds the whole pool");
    println!("CHILD a: preallocated, every page written");
    let e = b
        .set("prealloc", hostmem::PropValue::Bool(true))
        .unwrap_err();
    assert!(e.to_string().contains("huge pages"), "{e}");
    let e = guest_memory::<()>(&[RegionSpec::whole(&b, GuestAddress(0))]).unwrap_err();
    assert!(matches!(e, VmmError::Unbacked { .. }), "{e}");
    println!("CHILD b: prealloc refused, region refused");
    drop((mem, a, b));
    // Huge pages at a guest address that is not a huge page multiple: KVM could only
    // map them with small pages.
    let fs = mount_hugetlbfs(HUGE);
    let c = Backend::builder(Kind::File, "c")
        .mem_path(fs.path().join("c"))
        .size(2 * HUGE)
        .share(true)
        .create()
        .unwrap();
    let e = c
        .guest_region::<()>(0, 2 * HUGE, GuestAddress(0x1000))
        .unwrap_err();
    assert!(
        matches!(
            e,
            VmmError::NotAligned {
                what: "guest address",
                page: HUGE,
                ..
            }
        ),
        "{e}"
    );
    let r = c
        .guest_region::<()>(0, 2 * HUGE, GuestAddress(HUGE))
        .unwrap();
    assert_eq!(
        r.is_hugetlbfs(),
        Some(true),
        "vm-memory is told it is hugetlbfs"
    );
    println!("CHILD c: guest address 0x1000 refused");
}

#[test]
fn a_region_length_beyond_the_backend_is_refused_before_any_bitmap_is_allocated() {
    const NAME: &str =
        "sound::a_region_length_beyond_the_backend_is_refused_before_any_bitmap_is_allocated";
    if let Some(run) = child_run(NAME) {
        run.assert_survived()
            .assert_printed("CHILD guest_region: out of range")
            .assert_printed("CHILD guest_memory_tracked: out of range");
        return;
    }
    let b = Backend::builder(Kind::Ram, "r")
        .size(4 * MIB)
        .create()
        .unwrap();
    // A bitmap for 2^62 bytes would be 2^47 bytes: allocating it first aborts.
    let e = b
        .guest_region::<AtomicBitmap>(0, 1 << 62, GuestAddress(0))
        .unwrap_err();
    assert!(matches!(e, VmmError::OutOfRange { .. }), "{e}");
    println!("CHILD guest_region: out of range");
    let spec = RegionSpec {
        backend: &b,
        offset: 0,
        len: 1 << 62,
        guest_addr: GuestAddress(0),
    };
    let e = guest_memory_tracked::<AtomicBitmap>(&[spec], |_| true).unwrap_err();
    assert!(matches!(e, VmmError::OutOfRange { .. }), "{e}");
    println!("CHILD guest_memory_tracked: out of range");
    assert!(!b.is_in_use());
}

/// `Backend::guest_region` straight, not through `guest_memory`: its bitmap has a bit
/// for every base page of the region, and a write to the last page sets the last bit.
#[test]
fn a_single_region_tracks_its_last_page() {
    let b = Backend::builder(Kind::Memfd, "one")
        .size(8 * MIB)
        .create()
        .unwrap();
    let r = b
        .guest_region::<AtomicBitmap>(2 * MIB, 4 * MIB, GuestAddress(1 << 32))
        .unwrap();
    let pages = (4 * MIB / 4096) as usize;
    assert_eq!(r.is_hugetlbfs(), Some(false));
    assert_eq!(r.dirty_bitmap().len(), pages);
    r.write_slice(b"end", hostmem::vm_memory::MemoryRegionAddress(4 * MIB - 3))
        .unwrap();
    let bits = r.dirty_bitmap();
    let dirty: Vec<usize> = (0..pages).filter(|&i| bits.is_bit_set(i)).collect();
    assert_eq!(dirty, [pages - 1]);
    let tracked = b
        .guest_region_tracked::<AtomicBitmap>(0, 2 * MIB, GuestAddress(0), true)
        .unwrap();
    assert_eq!(tracked.dirty_bitmap().as_ref().unwrap().len(), 512);
}

#[test]
fn a_size_no_file_can_have_is_refused_naming_the_limit() {
    let e = Backend::builder(Kind::Memfd, "big")
        .size(1 << 63)
        .create()
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("property 'size' = '9223372036854775808'")
            && msg.contains("at most 9223372036854775807 bytes"),
        "{msg}"
    );
}
