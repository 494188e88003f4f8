//! The vm-memory guest region over part of a backend's mapping.
//!
//! vm-memory's `MmapRegion` can point at memory someone else mapped
//! (`with_raw_mmap_pointer`, unsafe): it then never unmaps it, and nothing keeps the
//! memory mapped for it. So the region type lives here, next to that one unsafe call:
//! [`Region`] owns the claim (and through it the hold) that keeps the backend's mapping
//! alive, and keeps its `GuestRegionMmap` private — handing that out would hand out
//! `get_mmap()`, an `Arc` that could outlive the claim. Everything a VMM needs goes
//! through vm-memory's [`GuestMemoryRegion`] trait, whose borrows end with the region.
//! This is how Firecracker wraps vm-memory 0.18 regions over memory it mapped itself
//! (an owner plus a private `GuestRegionMmap`); Cloud Hypervisor's bare
//! `GuestRegionMmap<AtomicBitmap>` cannot keep someone else's mapping alive.

use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionMmap,
    GuestUsize, MemoryRegionAddress, MmapRegion, VolatileSlice,
};

use crate::backend::claim::Claim;
use crate::backend::InUse;

/// A guest memory region over a range of a hostmem backend, with dirty tracking `B`
/// (`()` for none, vm-memory's `AtomicBitmap`, or `Option<AtomicBitmap>` as Firecracker
/// uses).
///
/// It implements vm-memory's [`GuestMemoryRegion`] (its `B` is exactly `B`) and
/// `Bytes`, so it goes into a [`vm_memory::GuestRegionCollection`] ([`crate::vmm::Memory`])
/// and everything generic over vm-memory (linux-loader, virtio queues, vhost) works on
/// it. While it lives the backend is in use (deletion refused), its memory stays mapped
/// even if the `Backend` is dropped, and its range of the backend is claimed: no second
/// region may alias it. The pages are the backend's own mapping (no copy, no second
/// mmap), so its NUMA binding and preallocation are the guest's.
#[derive(Debug)]
pub struct Region<B = ()> {
    // Fields drop in order: the view over the memory goes before the claim that keeps
    // the memory mapped.
    view: GuestRegionMmap<B>,
    claim: Claim,
    backend_id: String,
}

impl<B: Bitmap> Region<B> {
    /// A region at `guest_base` over the claimed range, tracking writes in `bitmap`
    /// (whose length should be the claim's). `Ok(None)` if the region would end beyond
    /// the guest address space.
    pub(crate) fn new(
        claim: Claim,
        backend_id: String,
        guest_base: GuestAddress,
        bitmap: B,
        file_offset: Option<FileOffset>,
    ) -> Result<Option<Region<B>>, MmapRegionError> {
        let hold = claim.hold();
        let map = &hold.0.mapped.map;
        let flags = if hold.0.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let prot = if map.is_writable() {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // The claim's range is inside the mapping (`Claim::new` checks), so this
        // address and the claim's length stay within it.
        let addr = map.addr() + claim.offset();
        let mut b = MmapRegionBuilder::new_with_bitmap(claim.len(), bitmap)
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hold.0.hugetlb);
        if let Some(fo) = file_offset {
            b = b.with_file_offset(fo);
        }
        // SAFETY: [addr, addr + claim.len()) lies within a live mapping of this process
        // (the claim's range is inside it), and the claim, which holds the Arc that owns
        // the mapping, is stored next to the MmapRegion in the Region and dropped after
        // it; the GuestRegionMmap's Arc is never handed out, so no clone of the
        // MmapRegion can outlive the claim. The region is built as not owning the memory
        // and never unmaps it.
        let mmap = unsafe { b.with_raw_mmap_pointer(addr as *mut u8) }.build()?;
        Ok(GuestRegionMmap::new(mmap, guest_base).map(|view| Region {
            view,
            claim,
            backend_id,
        }))
    }

    /// The id of the backend the region is a range of.
    pub fn backend_id(&self) -> &str {
        &self.backend_id
    }

    /// Where the region starts in the backend's memory (bytes from its start).
    pub fn backend_offset(&self) -> u64 {
        self.claim.offset() as u64
    }

    /// The dirty bitmap itself (for `AtomicBitmap`: `get_and_reset`, `reset`), indexed
    /// by offset in the region. [`GuestMemoryRegion::bitmap`] gives vm-memory's slice
    /// view of it.
    pub fn dirty_bitmap(&self) -> &B {
        MmapRegion::bitmap(&self.view)
    }

    /// Start of the region in this process's address space (what KVM's
    /// `userspace_addr` takes).
    pub fn host_addr(&self) -> usize {
        self.view.as_ptr() as usize
    }

    /// The hold on the backend's memory this region keeps.
    pub fn in_use(&self) -> &InUse {
        self.claim.hold()
    }
}

impl<B: Bitmap> GuestMemoryRegion for Region<B> {
    type B = B;

    fn len(&self) -> GuestUsize {
        self.view.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.view.start_addr()
    }

    fn bitmap(&self) -> BS<'_, B> {
        GuestMemoryRegion::bitmap(&self.view)
    }

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        self.view.get_host_address(addr)
    }

    fn file_offset(&self) -> Option<&FileOffset> {
        GuestMemoryRegion::file_offset(&self.view)
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, BS<'_, B>>> {
        self.view.get_slice(offset, count)
    }

    fn is_hugetlbfs(&self) -> Option<bool> {
        GuestMemoryRegion::is_hugetlbfs(&self.view)
    }
}

impl<B: Bitmap> GuestMemoryRegionBytes for Region<B> {}
