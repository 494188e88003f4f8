//! QEMU 10's rules for file backends (`rom`, `pmem`) and the `x-use-canonical-path-
//! for-ramblock-id` property, checked against what the kernel shows of the mapping
//! (VmFlags in /proc/self/smaps). Messages are QEMU 10.0's, word for word.

mod common;

use common::*;
use hostmem::{Backend, Kind, PropValue};

fn ro_file(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.path().join("firmware");
    std::fs::write(&p, vec![5u8; 4 * MIB as usize]).unwrap();
    p
}

#[test]
fn rom_on_needs_a_readonly_file() {
    let dir = TempDir::new("rom");
    let e = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(dir.path())
        .rom(hostmem::props::OnOffAuto::On)
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "property 'rom' = 'on' is not supported with 'readonly' = 'off'"
    );
}

#[test]
fn rom_off_on_a_shared_readonly_file_is_refused() {
    let dir = TempDir::new("rom");
    let e = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(ro_file(&dir))
        .readonly(true)
        .share(true)
        .rom(hostmem::props::OnOffAuto::Off)
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "property 'rom' = 'off' is incompatible with 'readonly' = 'on' and 'share' = 'on'"
    );
}

#[test]
fn a_readonly_file_with_rom_off_is_mapped_writable_and_private() {
    let dir = TempDir::new("rom");
    let path = ro_file(&dir);
    let b = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(&path)
        .readonly(true)
        .rom(hostmem::props::OnOffAuto::Off)
        .create()
        .unwrap();
    let v = b.inspect().unwrap();
    assert!(v.has_flag("wr") && !v.has_flag("sh"), "{:?}", v.vmflags);
    // Copy on write: the guest's write stays out of the read-only file.
    b.hold().unwrap().write_at(0, b"guest").unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[..5], &[5u8; 5]);
}

#[test]
fn rom_auto_reads_back_resolved_after_allocation() {
    let dir = TempDir::new("rom");
    let ro = Backend::builder(Kind::File, "a")
        .size(4 * MIB)
        .mem_path(ro_file(&dir))
        .readonly(true)
        .create()
        .unwrap();
    assert_eq!(ro.get("rom").unwrap().to_string(), "on");
    assert!(
        !ro.inspect().unwrap().has_flag("wr"),
        "ROM is mapped read-only"
    );
    let rw = Backend::builder(Kind::File, "b")
        .size(4 * MIB)
        .mem_path(dir.path())
        .create()
        .unwrap();
    assert_eq!(rw.get("rom").unwrap().to_string(), "off");
}

#[test]
fn pmem_without_share_is_plain_memory() {
    let dir = TempDir::new("pmem");
    let b = Backend::builder(Kind::File, "p")
        .size(4 * MIB)
        .mem_path(dir.path())
        .pmem(true)
        .create()
        .unwrap();
    assert!(b.notes().is_empty(), "{:?}", b.notes());
    assert!(!b.inspect().unwrap().has_flag("sh"));
}

#[test]
fn shared_pmem_off_dax_is_mapped_with_qemus_deprecation_warning() {
    let dir = TempDir::new("pmem");
    let b = Backend::builder(Kind::File, "p")
        .size(4 * MIB)
        .mem_path(dir.path())
        .pmem(true)
        .share(true)
        .create()
        .unwrap();
    assert!(b.inspect().unwrap().has_flag("sh"));
    assert!(
        b.notes()
            .iter()
            .any(|n| n == "Using non DAX backing file with 'pmem=on' option is deprecated"),
        "{:?}",
        b.notes()
    );
}

#[test]
fn canonical_path_flag_is_kept_and_reported() {
    let b = Backend::builder(Kind::Ram, "r")
        .size(2 * MIB)
        .x_use_canonical_path(true)
        .create()
        .unwrap();
    assert_eq!(
        b.get("x-use-canonical-path-for-ramblock-id").unwrap(),
        PropValue::Bool(true)
    );
}

#[test]
fn a_readonly_directory_is_qemus_open_error() {
    let dir = TempDir::new("rodir");
    let e = Backend::builder(Kind::File, "f")
        .size(MIB)
        .mem_path(dir.path())
        .readonly(true)
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "can't open backing store {} for guest RAM: Is a directory",
            dir.path().display()
        )
    );
}
