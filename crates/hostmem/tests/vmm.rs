//! Backends as vm-memory guest memory: same pages as the backend's own mapping and, for
//! memfd, as its fd read with pread; and held in use while regions exist.

use std::os::unix::fs::FileExt;

use hostmem::vmm::guest_memory;
use hostmem::{Backend, Kind};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const MIB: u64 = 1 << 20;

#[test]
fn writes_through_vm_memory_land_in_the_backends_memory_and_its_fd() {
    let mut ram = Backend::builder(Kind::Ram, "ram")
        .size(16 * MIB)
        .create()
        .unwrap();
    let mut fd_mem = Backend::builder(Kind::Memfd, "fdmem")
        .size(16 * MIB)
        .create()
        .unwrap();
    let mem = guest_memory(&[(&ram, GuestAddress(0)), (&fd_mem, GuestAddress(1 << 30))]).unwrap();
    assert_eq!(mem.num_regions(), 2);

    mem.write_slice(b"low ram", GuestAddress(0x2000)).unwrap();
    mem.write_slice(b"memfd ram", GuestAddress((1 << 30) + 0x3000))
        .unwrap();

    // The region is the backend's own mapping, not a copy.
    let region = mem.find_region(GuestAddress(0)).unwrap();
    assert_eq!(region.as_ptr() as usize, ram.host_addr().unwrap());
    let mut buf = [0u8; 7];
    ram.hold().unwrap().read_at(0x2000, &mut buf).unwrap();
    assert_eq!(&buf, b"low ram");

    // The memfd region carries the fd; a second mmap of it sees the same bytes.
    let hold = fd_mem.hold().unwrap();
    let high = mem.find_region(GuestAddress(1 << 30)).unwrap();
    assert!(
        high.file_offset().is_some(),
        "memfd region has a FileOffset"
    );
    let (fd, off) = hold.fd().unwrap();
    let fd = fd.try_clone_to_owned().unwrap();
    let file = std::fs::File::from(fd);
    let mut buf = [0u8; 9];
    file.read_exact_at(&mut buf, off + 0x3000).unwrap();
    assert_eq!(&buf, b"memfd ram", "the fd holds what the guest wrote");
    drop(hold);

    // In use while guest memory refers to the backends.
    assert!(ram.is_in_use() && fd_mem.is_in_use());
    assert_eq!(
        ram.delete().unwrap_err().to_string(),
        "object 'ram' is in use, can not be deleted"
    );
    let addr = ram.host_addr().unwrap();
    drop(mem);
    assert!(!ram.is_in_use());
    ram.delete().unwrap();
    fd_mem.delete().unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains(&format!("{addr:x}-")),
        "unmapped once the regions are gone"
    );
}

#[test]
fn a_region_outlives_a_dropped_backend_object() {
    let b = Backend::builder(Kind::Ram, "r")
        .size(2 * MIB)
        .create()
        .unwrap();
    let region = b.guest_region(GuestAddress(0)).unwrap();
    drop(b);
    region
        .write_obj(7u64, vm_memory::MemoryRegionAddress(64))
        .unwrap();
    assert_eq!(
        region
            .read_obj::<u64>(vm_memory::MemoryRegionAddress(64))
            .unwrap(),
        7
    );
}

#[test]
fn an_unallocated_backend_is_refused() {
    let b = Backend::builder(Kind::Ram, "r")
        .size(2 * MIB)
        .build()
        .unwrap();
    let e = b.guest_region(GuestAddress(0)).unwrap_err();
    assert_eq!(e.to_string(), "memory-backend-ram 'r' is not allocated");
}

/// vm-memory writes do not check protection, so a region over read-only memory would
/// be one `write_slice` away from SIGSEGV: hostmem refuses to make it. Run in a child
/// so that the old behaviour (a region, then a crash) fails the test instead of the run.
#[test]
fn a_readonly_backend_never_becomes_a_writable_region() {
    if std::env::var_os("HOSTMEM_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "a_readonly_backend_never_becomes_a_writable_region",
                "--exact",
                "--nocapture",
            ])
            .env("HOSTMEM_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child died: {:?}\n{stdout}",
            out.status
        );
        assert!(
            stdout.contains("CHILD: refused: backend 'ro' is read-only"),
            "{stdout}"
        );
        return;
    }
    let path = std::env::temp_dir().join(format!("hostmem-vmm-ro-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 2 * MIB as usize]).unwrap();
    let b = Backend::builder(Kind::File, "ro")
        .size(2 * MIB)
        .mem_path(&path)
        .readonly(true)
        .create()
        .unwrap();
    let r = b.guest_region(GuestAddress(0));
    std::fs::remove_file(&path).unwrap();
    match r {
        Ok(region) => {
            // What the old code allowed: this write kills the process.
            let _ = region.write_obj(7u64, vm_memory::MemoryRegionAddress(0));
            println!("CHILD: wrote through a read-only region");
        }
        Err(e) => println!("CHILD: refused: {e}"),
    }
}
