//! Guest memory for a VMM from two hostmem backends: low RAM as preallocated anonymous
//! memory, high RAM as a shared memfd that a vhost-user back end could map through its
//! fd. Run: cargo run -p hostmem --features vm-memory --example guest_memory

use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use hostmem::vmm::{guest_memory, RegionSpec};
use hostmem::{Backend, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let low = Backend::builder(Kind::Ram, "low")
        .size(256 << 20)
        .prealloc(true)
        .create()?;
    let high = Backend::builder(Kind::Memfd, "high")
        .size(512 << 20)
        .create()?;
    let mem = guest_memory::<()>(&[
        RegionSpec {
            backend: &low,
            offset: 0,
            len: 256 << 20,
            guest_addr: GuestAddress(0),
        },
        RegionSpec {
            backend: &high,
            offset: 0,
            len: 512 << 20,
            guest_addr: GuestAddress(1 << 32),
        },
    ])?;
    for r in mem.iter() {
        let fd = r
            .file_offset()
            .map(|f| format!("fd offset {}", f.start()))
            .unwrap_or_else(|| "anonymous".into());
        println!(
            "guest {:#012x}..{:#012x}  {}  {}",
            r.start_addr().0,
            r.last_addr().0,
            r.backend_id(),
            fd
        );
    }
    mem.write_obj(0x1234_5678u32, GuestAddress(0x1000))?;
    let v: u32 = mem.read_obj(GuestAddress(0x1000))?;
    println!(
        "read back {v:#x}; backends in use while guest memory lives: {}",
        low.is_in_use() && high.is_in_use()
    );
    Ok(())
}
