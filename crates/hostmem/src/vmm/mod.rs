//! Backends as vm-memory guest memory (cargo feature `vm-memory`), for VMMs built on
//! rust-vmm.
//!
//! A [`Region`] is a range of a backend (offset, length) at a guest address, over the
//! backend's own mapping: no copy, no second mmap, so the NUMA binding and the
//! preallocation hostmem did are the guest's. Its dirty tracking is a type parameter,
//! as in vm-memory: `()` for none, `AtomicBitmap` (Cloud Hypervisor), or
//! `Option<AtomicBitmap>` (Firecracker, tracking switched on per region). One backend
//! may give several regions (one memfd split around the 32-bit PCI hole), each range
//! at most once: an alias would be written through one guest address and tracked
//! through the other.
//!
//! Why a region type of our own and not vm-memory's `GuestRegionMmap<B>`: that type
//! cannot keep memory it did not map alive (its `Arc<MmapRegion>` is public and can be
//! cloned out), and its bitmap slot is the only place for a keep-alive, which is then
//! not free for dirty tracking. [`Region`] keeps the hold beside a private
//! `GuestRegionMmap<B>` — Firecracker's own shape for vm-memory 0.18 — and implements
//! [`GuestMemoryRegion`](vm_memory::GuestMemoryRegion) with `B` as its bitmap, so a
//! [`Memory<B>`] is a `GuestRegionCollection` that every crate generic over vm-memory's
//! traits accepts (linux-loader, virtio-queue, vhost-user-backend's
//! `GuestMemoryAtomic`).
//!
//! The fd goes into the region's `FileOffset` only when another process mapping it
//! sees the guest's writes ([`Backend::is_shareable`](crate::Backend::is_shareable)):
//! with `share=off` the mapping is MAP_PRIVATE, and a vhost-user back end would read
//! zeros. Read-only backends are refused: vm-memory writes do not check protection.
//!
//! What keeps vm-memory's copies from SIGBUS: the holder of a region's `FileOffset`
//! cannot shrink the file (memfds are sealed against it; shm objects and files give a
//! `FileOffset` only after [`Backend::trust_file_size`](crate::Backend::trust_file_size)),
//! and huge pages without a reservation become a region only once preallocated. What
//! another holder of a shared file can still do: write the memory (the guest sees it),
//! grow the file, punch holes (the guest reads zeros there); another process can
//! truncate a named `mem-path` file by its path, as for any file mapping.

mod error;
mod layout;
mod region;
mod slots;

pub use error::VmmError;
pub use layout::{
    guest_memory, guest_memory_tracked, guest_regions, guest_regions_tracked, RegionSpec,
};
#[cfg(feature = "kvm")]
pub use slots::KvmSlots;
pub use slots::{SlotChanges, SlotLayout, SlotSpan};

#[cfg(feature = "kvm")]
pub use crate::sys::kvm::KvmSlot;
pub use crate::sys::vmm::Region;

/// Guest memory made of hostmem regions, with dirty tracking `B` (`()`: none).
pub type Memory<B = ()> = vm_memory::GuestRegionCollection<Region<B>>;

/// Guest memory that can be swapped for a new layout while vCPUs and device threads
/// read it (vm-memory's `GuestMemoryAtomic`, as Cloud Hypervisor and vhost-user back
/// ends use): no second vm-memory dependency with `backend-atomic` needed.
pub type AtomicMemory<B = ()> = vm_memory::GuestMemoryAtomic<Memory<B>>;
