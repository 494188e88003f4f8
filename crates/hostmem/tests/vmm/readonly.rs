//! vm-memory writes do not check protection, so a region over read-only memory would
//! be one `write_slice` away from SIGSEGV: hostmem refuses to make it. Run in a child
//! so that a region and then a crash fails the test instead of killing the run.

use std::os::unix::process::ExitStatusExt;

use hostmem::vm_memory::{Bytes, GuestAddress};
use hostmem::vmm::{guest_memory, RegionSpec};
use hostmem::{Backend, Kind};

use crate::common::{TempDir, MIB};

#[test]
fn a_readonly_backend_never_becomes_a_writable_region() {
    const NAME: &str = "readonly::a_readonly_backend_never_becomes_a_writable_region";
    if std::env::var_os("HOSTMEM_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture"])
            .env("HOSTMEM_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child died: {:?} signal {:?}\n{stdout}",
            out.status,
            out.status.signal()
        );
        for way in ["guest_region", "guest_memory"] {
            assert!(
                stdout.contains(&format!(
                    "CHILD {way}: refused: backend 'ro' is read-only, and vm-memory regions have no read-only mode"
                )),
                "{stdout}"
            );
        }
        return;
    }
    let dir = TempDir::new("vmm-ro");
    let path = dir.path().join("ro");
    std::fs::write(&path, vec![0u8; 2 * MIB as usize]).unwrap();
    let b = Backend::builder(Kind::File, "ro")
        .size(2 * MIB)
        .mem_path(&path)
        .readonly(true)
        .create()
        .unwrap();
    match b.guest_region::<()>(0, 2 * MIB, GuestAddress(0)) {
        // What the old code allowed: this write kills the process.
        Ok(region) => {
            let _ = region.write_obj(7u64, hostmem::vm_memory::MemoryRegionAddress(0));
            println!("CHILD guest_region: wrote through a read-only region");
        }
        Err(e) => println!("CHILD guest_region: refused: {e}"),
    }
    match guest_memory::<()>(&[RegionSpec {
        backend: &b,
        offset: 0,
        len: 2 * MIB,
        guest_addr: GuestAddress(0),
    }]) {
        Ok(mem) => {
            let _ = mem.write_obj(7u64, GuestAddress(0));
            println!("CHILD guest_memory: wrote through a read-only region");
        }
        Err(e) => println!("CHILD guest_memory: refused: {e}"),
    }
    assert!(!b.is_in_use());
}
