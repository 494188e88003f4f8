//! Load an ELF kernel (vmlinux) into hostmem guest memory with linux-loader, as a
//! rust-vmm VMM does before starting its vCPUs.
//! Run: cargo run -p hostmem --features vm-memory --example kernel_load -- /path/to/vmlinux

use std::fs::File;

use hostmem::vm_memory::GuestAddress;
use hostmem::vmm::{guest_memory, RegionSpec};
use hostmem::{Backend, Kind};
use linux_loader::loader::{elf::Elf, KernelLoader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: kernel_load VMLINUX");
        std::process::exit(2);
    };
    let ram = Backend::builder(Kind::Memfd, "guest-ram")
        .size(512 << 20)
        .prealloc(true)
        .create()?;
    let mem = guest_memory::<()>(&[RegionSpec {
        backend: &ram,
        offset: 0,
        len: 512 << 20,
        guest_addr: GuestAddress(0),
    }])?;
    let mut image = File::open(&path)?;
    let loaded = Elf::load(&mem, None, &mut image, Some(GuestAddress(1 << 20)))?;
    println!(
        "{}: entry {:#x}, ends at {:#x}, PVH {:?}",
        path.to_string_lossy(),
        loaded.kernel_load.0,
        loaded.kernel_end,
        loaded.pvh_boot_cap
    );
    Ok(())
}
