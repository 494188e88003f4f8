//! vm-memory regions over memory hostmem already mapped, kept alive by the region.

use vm_memory::mmap::{MmapRegion, MmapRegionBuilder, MmapRegionError};
use vm_memory::FileOffset;

use crate::vmm::Hold;

/// An MmapRegion over the memory `hold` refers to, that does not own (or unmap) it: the
/// region keeps `hold` as its bitmap for its whole life, clones included, and the hold
/// owns the mapping through an Arc. So the region can never outlive the mapping, and a
/// safe caller cannot make it. Protection and sharing are the mapping's own.
pub(crate) fn held_region(
    hold: Hold,
    file_offset: Option<FileOffset>,
) -> Result<MmapRegion<Hold>, MmapRegionError> {
    let region = &hold.in_use().0;
    let map = &region.mapped.map;
    let (addr, len) = (map.addr(), map.len());
    let flags = if region.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let prot = if map.is_writable() {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let hugetlbfs = region.page_size > super::page_size() as u64;
    let mut b = MmapRegionBuilder::new_with_bitmap(len, hold)
        .with_mmap_prot(prot)
        .with_mmap_flags(flags)
        .with_hugetlbfs(hugetlbfs);
    if let Some(fo) = file_offset {
        b = b.with_file_offset(fo);
    }
    // SAFETY: [addr, addr+len) is a live mapping of this process owned by the Arc the
    // bitmap (moved into the builder above) holds, so it stays mapped for the region's
    // whole life; the region is built as not owning it and never unmaps it.
    unsafe { b.with_raw_mmap_pointer(addr as *mut u8) }.build()
}
