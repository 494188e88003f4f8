//! File and memfd backends checked against the file system and the kernel: created,
//! kept, removed, unlinked, discarded, read-only, sealed, huge pages.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use hostmem::{Backend, Kind};
use rustix::fs::{fcntl_get_seals, SealFlags};

#[test]
fn file_backend_creates_a_missing_file_and_keeps_its_data() {
    let dir = TempDir::new("file");
    let path = dir.path().join("guest.ram");
    let mut b = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(&path)
        .share(true)
        .create()
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
    b.hold().unwrap().write_at(4096, b"hello guest").unwrap();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(
        &data[4096..4096 + 11],
        b"hello guest",
        "share=on writes reach the file"
    );
    b.delete().unwrap();
    assert!(
        path.exists(),
        "a named file outlives the backend, as in QEMU"
    );
}

#[test]
fn file_backend_removes_the_file_it_created_when_allocation_fails() {
    let dir = TempDir::new("file-fail");
    let path = dir.path().join("guest.ram");
    // Fails after the file is made: an address range this large cannot be mapped.
    let e = Backend::builder(Kind::File, "f")
        .size(1 << 56)
        .mem_path(&path)
        .reserve(false)
        .create()
        .unwrap_err();
    assert!(e.to_string().contains("memory-backend-file 'f'"), "{e}");
    assert!(!path.exists(), "created file removed again");
    assert_eq!(dir.entries(), 0);
}

#[test]
fn file_backend_in_a_directory_uses_an_unlinked_temp_file() {
    let dir = TempDir::new("dir");
    let b = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(dir.path())
        .create()
        .unwrap();
    assert_eq!(dir.entries(), 0, "no name left in the directory");
    let line = maps_line(b.host_addr().unwrap()).unwrap();
    assert!(
        line.contains(dir.path().to_str().unwrap()) && line.ends_with("(deleted)"),
        "{line}"
    );
}

#[test]
fn discard_data_drops_the_files_blocks_on_delete() {
    let dir = TempDir::new("discard");
    let path = dir.path().join("ram");
    let mut b = Backend::builder(Kind::File, "f")
        .size(8 * MIB)
        .mem_path(&path)
        .share(true)
        .prealloc(true)
        .discard_data(true)
        .create()
        .unwrap();
    b.hold().unwrap().write_at(0, b"data").unwrap();
    assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= 8 * MIB);
    b.delete().unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(m.blocks(), 0, "blocks punched out");
    assert_eq!(m.len(), 8 * MIB, "size kept");
    assert_eq!(&std::fs::read(&path).unwrap()[..4], &[0, 0, 0, 0]);
}

#[test]
fn file_backend_refuses_a_file_smaller_than_offset_plus_size() {
    let dir = TempDir::new("small");
    let path = dir.path().join("ram");
    std::fs::write(&path, vec![1u8; 4096]).unwrap();
    let e = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(&path)
        .create()
        .unwrap_err();
    assert!(e.to_string().contains("fewer than offset + size"), "{e}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        4096,
        "file untouched"
    );
}

#[test]
fn readonly_file_maps_read_only_and_prealloc_reads_it_in() {
    let dir = TempDir::new("ro");
    let path = dir.path().join("rom");
    std::fs::write(&path, vec![7u8; 2 * MIB as usize]).unwrap();
    let b = Backend::builder(Kind::File, "f")
        .size(2 * MIB)
        .mem_path(&path)
        .readonly(true)
        .prealloc(true)
        .create()
        .unwrap();
    let v = b.inspect().unwrap();
    assert!(v.has_flag("rd") && !v.has_flag("wr"), "{:?}", v.vmflags);
    assert_eq!(v.resident, 2 * MIB);
    let mut buf = [0u8; 4];
    b.hold().unwrap().read_at(100, &mut buf).unwrap();
    assert_eq!(buf, [7; 4]);
}

#[test]
fn memfd_is_sealed_by_default_and_shared() {
    let b = Backend::builder(Kind::Memfd, "d")
        .size(4 * MIB)
        .create()
        .unwrap();
    let hold = b.hold().unwrap();
    let (fd, off) = hold.fd().unwrap();
    assert_eq!(off, 0);
    let seals = fcntl_get_seals(fd).unwrap();
    let want = SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
    assert!(seals.contains(want), "F_GET_SEALS = {seals:?}");
    assert!(b.inspect().unwrap().has_flag("sh"), "MAP_SHARED");
    let unsealed = Backend::builder(Kind::Memfd, "u")
        .size(4 * MIB)
        .seal(false)
        .create()
        .unwrap();
    let h = unsealed.hold().unwrap();
    // seal=off: not sealed against growing (nor sealed for good), but sealed against
    // shrinking before its fd is handed out, so no holder can cut the mapped memory.
    assert_eq!(
        fcntl_get_seals(h.fd().unwrap().0).unwrap(),
        SealFlags::SHRINK
    );
}

#[test]
fn memfd_hugetlbsize_needs_hugetlb_and_a_size_the_host_offers() {
    let e = Backend::builder(Kind::Memfd, "d")
        .size(4 * MIB)
        .hugetlbsize(2 * MIB)
        .create()
        .unwrap_err();
    assert!(e.to_string().contains("needs hugetlb=on"), "{e}");
    let e = Backend::builder(Kind::Memfd, "d")
        .size(4 * MIB)
        .hugetlb(true)
        .hugetlbsize(4 * MIB)
        .create()
        .unwrap_err();
    assert!(
        e.to_string().contains("this host offers huge pages of"),
        "{e}"
    );
}
