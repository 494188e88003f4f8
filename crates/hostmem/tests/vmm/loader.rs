//! linux-loader puts a kernel into hostmem guest memory. The image is a tiny ELF made
//! here (nothing downloaded): one PT_LOAD segment with a marked payload and a bss.

use std::io::Cursor;
use std::os::unix::fs::FileExt;

use hostmem::vm_memory::{Bytes, GuestAddress};
use hostmem::vmm::{guest_memory, RegionSpec};
use hostmem::{Backend, Kind};
use linux_loader::loader::{elf::Elf, KernelLoader};

use crate::common::MIB;

/// Where the segment goes (physical) and the entry point inside it.
const LOAD: u64 = 0x20_0000;
const ENTRY: u64 = LOAD + 0x40;

/// A 64-bit little-endian x86-64 ELF executable: header, one program header, payload.
fn tiny_elf(payload: &[u8], bss: u64) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let offset = EHDR + PHDR;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF");
    e.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&ENTRY.to_le_bytes());
    e.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&(EHDR as u16).to_le_bytes());
    e.extend_from_slice(&(PHDR as u16).to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&64u16.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    assert_eq!(e.len() as u64, EHDR);
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&offset.to_le_bytes());
    e.extend_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&LOAD.to_le_bytes()); // p_paddr
    e.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    e.extend_from_slice(&(payload.len() as u64 + bss).to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(e.len() as u64, offset);
    e.extend_from_slice(payload);
    e
}

#[test]
fn linux_loader_loads_an_elf_kernel_into_hostmem_guest_memory() {
    let m = Backend::builder(Kind::Memfd, "kernel-mem")
        .size(8 * MIB)
        .create()
        .unwrap();
    let mem = guest_memory::<()>(&[RegionSpec {
        backend: &m,
        offset: 0,
        len: 8 * MIB,
        guest_addr: GuestAddress(0),
    }])
    .unwrap();
    // 0x40 bytes of marker, then at the entry point: hlt; jmp $-1.
    let mut payload = b"hostmem tiny kernel".to_vec();
    payload.resize(0x40, 0xcc);
    payload.extend_from_slice(&[0xf4, 0xeb, 0xfd]);
    let image = tiny_elf(&payload, 0x1000);

    let r = Elf::load(
        &mem,
        None,
        &mut Cursor::new(&image),
        Some(GuestAddress(MIB)),
    )
    .unwrap();
    assert_eq!(r.kernel_load, GuestAddress(ENTRY));
    assert_eq!(r.kernel_end, LOAD + payload.len() as u64 + 0x1000);

    let mut at_load = vec![0u8; payload.len()];
    mem.read_slice(&mut at_load, GuestAddress(LOAD)).unwrap();
    assert_eq!(at_load, payload);
    let mut at_entry = [0u8; 3];
    mem.read_slice(&mut at_entry, r.kernel_load).unwrap();
    assert_eq!(at_entry, [0xf4, 0xeb, 0xfd]);
    // The kernel is in the memfd itself, where a vhost-user back end would see it.
    let (fd, off) = m.dup_fd().unwrap();
    let mut in_fd = vec![0u8; payload.len()];
    std::fs::File::from(fd)
        .read_exact_at(&mut in_fd, off + LOAD)
        .unwrap();
    assert_eq!(in_fd, payload);
}
