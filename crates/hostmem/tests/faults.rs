//! File backends where the file system says no: full, read-only, missing. Each gives a
//! clear error and leaves no file behind. Mounts small tmpfs instances (root).

mod common;

use std::process::Command;

use common::*;
use hostmem::{Backend, Kind};

#[test]
fn a_full_file_system_is_named_and_gives_its_room_back() {
    let _serial = serial();
    let fs = mount_tmpfs("16M");
    let before = fs_avail(&fs);
    // Temp file in the directory: sparse until faulted, then the file system runs out.
    let e = Backend::builder(Kind::File, "f")
        .size(64 * MIB)
        .mem_path(fs.path())
        .share(true)
        .prealloc(true)
        .create()
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the file system holding {} has no room for it",
            fs.path().display()
        )),
        "{msg}"
    );
    assert!(
        msg.starts_with("memory-backend-file 'f': preallocating memory failed"),
        "{msg}"
    );
    assert_eq!(fs.entries(), 0);
    assert_eq!(fs_avail(&fs), before, "every block given back");
    // A named file it created is removed again.
    // It is named the same way (the file is gone by the time the error is made).
    let path = fs.path().join("guest.ram");
    let msg = Backend::builder(Kind::File, "g")
        .size(64 * MIB)
        .mem_path(&path)
        .share(true)
        .prealloc(true)
        .create()
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!(
            "the file system holding {} has no room for it",
            path.display()
        )),
        "{msg}"
    );
    assert!(!path.exists());
    assert_eq!(fs_avail(&fs), before);
}

#[test]
fn a_read_only_file_system_refuses_a_writable_backend_clearly() {
    let _serial = serial();
    let fs = mount_tmpfs("8M");
    let path = fs.path().join("rom");
    std::fs::write(&path, vec![0x5a_u8; 2 * MIB as usize]).unwrap();
    let st = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .status()
        .unwrap();
    assert!(st.success());
    let e = Backend::builder(Kind::File, "f")
        .size(2 * MIB)
        .mem_path(&path)
        .share(true)
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "can't open backing store {} for guest RAM: Read-only file system",
            path.display()
        )
    );
    // readonly=on is what works there, and the data is what the file holds.
    let b = Backend::builder(Kind::File, "f")
        .size(2 * MIB)
        .mem_path(&path)
        .readonly(true)
        .share(true)
        .prealloc(true)
        .create()
        .unwrap();
    let mut buf = [0u8; 2];
    b.hold().unwrap().read_at(4096, &mut buf).unwrap();
    assert_eq!(buf, [0x5a, 0x5a]);
    assert_eq!(b.inspect().unwrap().resident, 2 * MIB);
    drop(b);
    // A missing file on a read-only file system is not created.
    let e = Backend::builder(Kind::File, "f")
        .size(2 * MIB)
        .mem_path(fs.path().join("new"))
        .create()
        .unwrap_err();
    assert!(e.to_string().ends_with("Read-only file system"), "{e}");
}

#[test]
fn a_path_in_a_missing_directory_creates_nothing() {
    let _serial = serial();
    let d = TempDir::new("missing");
    let path = d.path().join("no/such/dir/ram");
    let e = Backend::builder(Kind::File, "f")
        .size(2 * MIB)
        .mem_path(&path)
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "can't open backing store {} for guest RAM: No such file or directory",
            path.display()
        )
    );
    assert_eq!(d.entries(), 0);
}
