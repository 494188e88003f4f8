//! Guest memory in one call, from where each backend range goes.

use std::sync::Arc;

use vm_memory::bitmap::{Bitmap, NewBitmap};
use vm_memory::GuestAddress;

use super::{Memory, Region, VmmError};
use crate::Backend;

/// One region of a guest memory layout, by name: which bytes of which backend the
/// guest sees at which address. Fields are named so an offset and a length cannot
/// change places unnoticed.
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec<'a> {
    /// The backend the memory comes from.
    pub backend: &'a Backend,
    /// Where the range starts in the backend's memory (bytes, whole pages).
    pub offset: u64,
    /// How long the range is (bytes, whole pages).
    pub len: u64,
    /// The guest physical address the range starts at.
    pub guest_addr: GuestAddress,
}

impl<'a> RegionSpec<'a> {
    /// The whole of `backend` at `guest_addr` (an unallocated backend gives an empty
    /// range, which is refused when the region is made).
    pub fn whole(backend: &'a Backend, guest_addr: GuestAddress) -> RegionSpec<'a> {
        RegionSpec {
            backend,
            offset: 0,
            len: backend.mapped_len().unwrap_or(0) as u64,
            guest_addr,
        }
    }

    fn guest_end(&self) -> Result<u64, VmmError> {
        self.guest_addr
            .0
            .checked_add(self.len)
            .ok_or_else(|| VmmError::Overflow {
                id: self.backend.id().to_string(),
                base: self.guest_addr.0,
                len: self.len,
            })
    }
}

/// Guest memory from backend ranges placed at guest addresses, each with a new dirty
/// bitmap of type `B` sized to its region. Order does not matter; overlapping guest
/// ranges are refused, naming both, before any region is made, and so is the same
/// backend range twice. On any error nothing stays claimed or in use.
///
/// ```no_run
/// # use hostmem::{Backend, Kind};
/// use hostmem::vm_memory::{bitmap::AtomicBitmap, GuestAddress};
/// use hostmem::vmm::RegionSpec;
/// # let mem = Backend::builder(Kind::Memfd, "mem").size(4 << 30).create()?;
/// // One memfd split around the 32-bit PCI hole, writes tracked per page.
/// let guest = hostmem::vmm::guest_memory::<AtomicBitmap>(&[
///     RegionSpec { backend: &mem, offset: 0, len: 3 << 30, guest_addr: GuestAddress(0) },
///     RegionSpec { backend: &mem, offset: 3 << 30, len: 1 << 30, guest_addr: GuestAddress(4 << 30) },
/// ])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn guest_memory<B: NewBitmap>(layout: &[RegionSpec<'_>]) -> Result<Memory<B>, VmmError> {
    Ok(Memory::from_arc_regions(guest_regions(layout)?)?)
}

/// As [`guest_memory`], with dirty tracking switched on only for the regions
/// `tracked` picks (Firecracker's `Option<AtomicBitmap>`: `None` elsewhere). Each
/// bitmap is made by hostmem, sized to its region.
pub fn guest_memory_tracked<B: NewBitmap>(
    layout: &[RegionSpec<'_>],
    tracked: impl FnMut(&RegionSpec<'_>) -> bool,
) -> Result<Memory<Option<B>>, VmmError> {
    Ok(Memory::from_arc_regions(guest_regions_tracked(
        layout, tracked,
    )?)?)
}

/// The regions of [`guest_memory`], sorted by guest address, each in an `Arc` as
/// vm-memory's collections keep them: for VMMs that also hand each region to
/// something else (a [`KvmSlot`](crate::vmm::KvmSlot)) and then build the memory with
/// `Memory::from_arc_regions(regions.clone())`.
pub fn guest_regions<B: NewBitmap>(
    layout: &[RegionSpec<'_>],
) -> Result<Vec<Arc<Region<B>>>, VmmError> {
    make_regions(layout, |_, len| B::with_len(len))
}

/// The regions of [`guest_memory_tracked`].
pub fn guest_regions_tracked<B: NewBitmap>(
    layout: &[RegionSpec<'_>],
    mut tracked: impl FnMut(&RegionSpec<'_>) -> bool,
) -> Result<Vec<Arc<Region<Option<B>>>>, VmmError> {
    make_regions(layout, |spec, len| tracked(spec).then(|| B::with_len(len)))
}

/// Checks the layout as a whole, then makes each region, its bitmap made by
/// `bitmap(spec, len)` once the region's own checks passed.
fn make_regions<B: Bitmap>(
    layout: &[RegionSpec<'_>],
    mut bitmap: impl FnMut(&RegionSpec<'_>, usize) -> B,
) -> Result<Vec<Arc<Region<B>>>, VmmError> {
    let mut order: Vec<&RegionSpec<'_>> = layout.iter().collect();
    order.sort_by_key(|s| s.guest_addr);
    for spec in &order {
        spec.guest_end()?;
    }
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let a_end = a.guest_end()?;
        if b.guest_addr.0 < a_end {
            return Err(VmmError::GuestOverlap {
                first: a.backend.id().to_string(),
                first_start: a.guest_addr.0,
                first_end: a_end,
                second: b.backend.id().to_string(),
                second_start: b.guest_addr.0,
                second_end: b.guest_end()?,
            });
        }
    }
    order
        .into_iter()
        .map(|spec| {
            spec.backend
                .region_with(spec.offset, spec.len, spec.guest_addr, |len| {
                    bitmap(spec, len)
                })
                .map(Arc::new)
        })
        .collect()
}
