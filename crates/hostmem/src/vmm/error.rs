//! Why a backend, or a range of it, could not become guest memory.

/// Why a backend, or a range of it, could not become guest memory. Each names the
/// backend and the value refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmmError {
    /// The backend refused (not allocated, deleted, ...).
    #[error("{0}")]
    Backend(#[from] crate::Error),
    /// vm-memory regions are always writable; read-only memory cannot be one.
    #[error("backend '{id}' is read-only, and vm-memory regions have no read-only mode")]
    ReadOnly {
        /// Object id.
        id: String,
    },
    /// Huge pages without a reservation (`reserve=off`), neither preallocated nor
    /// plugged block by block (`plug`): a touch when the pool is empty would raise
    /// SIGBUS in the VMM.
    #[error("backend '{id}': its {page:#x}-byte huge pages are not reserved (reserve=off), and the range is neither preallocated nor plugged, so a guest access could find the pool empty and raise SIGBUS; preallocate it (prealloc=on), plug its blocks, or keep reserve=on")]
    Unbacked {
        /// Object id.
        id: String,
        /// The huge page size.
        page: u64,
    },
    /// An offset, length or guest address that is not whole pages of the backend.
    #[error("backend '{id}': {what} {value:#x} is not a multiple of the page size {page:#x}")]
    NotAligned {
        /// Object id.
        id: String,
        /// `region offset`, `region length` or `guest address`.
        what: &'static str,
        /// The value asked for.
        value: u64,
        /// The page size it must be a multiple of (the backend's for offset and
        /// length; for the guest address the host's base page, or the huge page
        /// for hugetlb memory).
        page: u64,
    },
    /// The range is empty or does not lie inside the backend's memory.
    #[error("backend '{id}': region at offset {offset:#x} of length {len:#x} is not inside its {size:#x} bytes")]
    OutOfRange {
        /// Object id.
        id: String,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Bytes the backend has mapped.
        size: u64,
    },
    /// The range overlaps one that is already a guest region: the same host memory at
    /// two guest addresses.
    #[error("backend '{id}': region at offset {offset:#x} of length {len:#x} overlaps its range {other_offset:#x}+{other_len:#x}, already guest memory at {other_guest:#x}")]
    Aliased {
        /// Object id.
        id: String,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The live region's offset in the backend.
        other_offset: u64,
        /// The live region's length.
        other_len: u64,
        /// The live region's guest address.
        other_guest: u64,
    },
    /// The range holds an unplugged block made inaccessible (`plug`): vm-memory's
    /// copies would fault there.
    #[error("backend '{id}': region at offset {offset:#x} of length {len:#x} holds the unplugged, inaccessible block at {block_offset:#x}: plug it first")]
    Unplugged {
        /// Object id.
        id: String,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The first such block's offset in the backend.
        block_offset: u64,
    },
    /// Two regions of a layout overlap in guest physical addresses.
    #[error("guest range {first_start:#x}..{first_end:#x} of backend '{first}' overlaps {second_start:#x}..{second_end:#x} of backend '{second}'")]
    GuestOverlap {
        /// The backend of the lower region.
        first: String,
        /// Its guest start.
        first_start: u64,
        /// Its guest end (exclusive).
        first_end: u64,
        /// The backend of the region that starts inside it.
        second: String,
        /// Its guest start.
        second_start: u64,
        /// Its guest end (exclusive).
        second_end: u64,
    },
    /// The fd could not be duplicated for the region's FileOffset.
    #[error("cannot duplicate the fd of backend '{id}' for vm-memory: {err}")]
    DupFd {
        /// Object id.
        id: String,
        /// What dup said.
        err: std::io::Error,
    },
    /// vm-memory refused the mapping.
    #[error("vm-memory refused the mapping of backend '{id}': {err}")]
    Mmap {
        /// Object id.
        id: String,
        /// What vm-memory said.
        err: vm_memory::mmap::MmapRegionError,
    },
    /// The region would end beyond the guest address space.
    #[error("backend '{id}': region of length {len:#x} at guest address {base:#x} ends beyond the guest address space")]
    Overflow {
        /// Object id.
        id: String,
        /// The guest address asked for.
        base: u64,
        /// The length asked for.
        len: u64,
    },
    /// A slot layout that cannot cut the memory into slots of whole blocks.
    #[error("slot layout: {0}")]
    SlotLayout(String),
    /// KVM refused to register a memory slot.
    #[error("KVM refused memory slot {slot} at guest address {guest_addr:#x}: {source}")]
    Kvm {
        /// The slot number.
        slot: u32,
        /// Its guest physical address.
        guest_addr: u64,
        /// The errno KVM returned.
        source: std::io::Error,
    },
    /// vm-memory refused the set of regions (an empty layout).
    #[error("guest memory layout: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
}
