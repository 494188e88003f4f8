//! Firecracker's layout from one hostmem memfd: guest RAM split around the 32-bit MMIO
//! gap, both parts at advancing offsets of the same fd, with dirty tracking for a
//! snapshot or migration (`Option<AtomicBitmap>`, as Firecracker uses: `None` would turn
//! tracking off for a region).
//! Run: cargo run -p hostmem --features vm-memory --example firecracker_style

use hostmem::vm_memory::bitmap::AtomicBitmap;
use hostmem::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use hostmem::vmm::{guest_memory_tracked, RegionSpec};
use hostmem::{Backend, Kind};

const MIB: u64 = 1 << 20;
/// Where Firecracker's x86-64 MMIO gap starts, and where RAM resumes after it.
const GAP_START: u64 = 3328 * MIB;
const HIGH_START: u64 = 4096 * MIB;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A small guest for the example: 64 MiB below the gap at the top, 64 MiB above.
    let size = 128 * MIB;
    let low_len = 64 * MIB;
    let mem_backend = Backend::builder(Kind::Memfd, "guest-mem")
        .size(size)
        .create()?;
    let mem = guest_memory_tracked::<AtomicBitmap>(
        &[
            RegionSpec {
                backend: &mem_backend,
                offset: 0,
                len: low_len,
                guest_addr: GuestAddress(GAP_START - low_len),
            },
            RegionSpec {
                backend: &mem_backend,
                offset: low_len,
                len: size - low_len,
                guest_addr: GuestAddress(HIGH_START),
            },
        ],
        |_| true,
    )?;
    mem.write_slice(b"below the gap", GuestAddress(GAP_START - 4096))?;
    mem.write_slice(b"above the gap", GuestAddress(HIGH_START + 8 * 4096))?;
    for r in mem.iter() {
        let bits = r.dirty_bitmap().as_ref().expect("tracked");
        let dirty: Vec<usize> = (0..bits.len()).filter(|&i| bits.is_bit_set(i)).collect();
        println!(
            "guest {:#011x}..{:#011x}  memfd offset {:#x}  dirty pages {:?}",
            r.start_addr().0,
            r.last_addr().0 + 1,
            r.file_offset().map_or(0, |f| f.start()),
            dirty
        );
        bits.reset();
    }
    Ok(())
}
