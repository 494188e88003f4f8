//! Guest memory in one call, from where each backend range goes.

use std::sync::Arc;

use vm_memory::bitmap::{Bitmap, NewBitmap};
use vm_memory::GuestAddress;

use super::{Memory, Region, VmmError};
use crate::Backend;

/// One region of a layout: the backend, the offset and length of the range in it, and
/// the guest address it is mapped at.
pub type Placement<'a> = (&'a Backend, u64, u64, GuestAddress);

/// Guest memory from backend ranges placed at guest addresses, each with a new dirty
/// bitmap of type `B`. Order does not matter; overlapping guest ranges are refused,
/// naming both, before any region is made, and so is the same backend range twice.
/// On any error nothing stays claimed or in use.
///
/// ```no_run
/// # use hostmem::{Backend, Kind};
/// use hostmem::vm_memory::{bitmap::AtomicBitmap, GuestAddress};
/// # let mem = Backend::builder(Kind::Memfd, "mem").size(4 << 30).create()?;
/// // One memfd split around the 32-bit PCI hole, writes tracked per page.
/// let guest = hostmem::vmm::guest_memory::<AtomicBitmap>(&[
///     (&mem, 0, 3 << 30, GuestAddress(0)),
///     (&mem, 3 << 30, 1 << 30, GuestAddress(4 << 30)),
/// ])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn guest_memory<B: NewBitmap>(layout: &[Placement<'_>]) -> Result<Memory<B>, VmmError> {
    guest_memory_with(layout, |_, len| B::with_len(len as usize))
}

/// As [`guest_memory`], with each region's bitmap made by `bitmap(backend, len)` (for
/// bitmaps without a default, like Firecracker's `Option<AtomicBitmap>`).
pub fn guest_memory_with<B: Bitmap>(
    layout: &[Placement<'_>],
    bitmap: impl FnMut(&Backend, u64) -> B,
) -> Result<Memory<B>, VmmError> {
    Ok(Memory::from_arc_regions(guest_regions_with(
        layout, bitmap,
    )?)?)
}

/// The regions of [`guest_memory`], sorted by guest address, each in an `Arc` as
/// vm-memory's collections keep them: for VMMs that also hand each region to
/// something else (a [`KvmSlot`](crate::vmm::KvmSlot)) and then build the memory with
/// `Memory::from_arc_regions(regions.clone())`.
pub fn guest_regions<B: NewBitmap>(
    layout: &[Placement<'_>],
) -> Result<Vec<Arc<Region<B>>>, VmmError> {
    guest_regions_with(layout, |_, len| B::with_len(len as usize))
}

/// [`guest_regions`] with each bitmap made by `bitmap(backend, len)`.
pub fn guest_regions_with<B: Bitmap>(
    layout: &[Placement<'_>],
    mut bitmap: impl FnMut(&Backend, u64) -> B,
) -> Result<Vec<Arc<Region<B>>>, VmmError> {
    let mut order: Vec<&Placement<'_>> = layout.iter().collect();
    order.sort_by_key(|p| p.3);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let a_end = a.3 .0.checked_add(a.2).ok_or_else(|| VmmError::Overflow {
            id: a.0.id().to_string(),
            base: a.3 .0,
            len: a.2,
        })?;
        if b.3 .0 < a_end {
            return Err(VmmError::GuestOverlap {
                first: a.0.id().to_string(),
                first_start: a.3 .0,
                first_end: a_end,
                second: b.0.id().to_string(),
                second_start: b.3 .0,
                second_end: b.3 .0.saturating_add(b.2),
            });
        }
    }
    order
        .into_iter()
        .map(|&(backend, offset, len, base)| {
            backend
                .guest_region_with_bitmap(offset, len, base, bitmap(backend, len))
                .map(Arc::new)
        })
        .collect()
}
