//! Everything that can go wrong with a backend, as one enum. Messages that QEMU users
//! know are kept word for word; the others name the object, the property and the value.

use std::path::PathBuf;

use crate::numa::{NodeListError, NodeSet, Policy, PolicyNodesError};
use crate::size::format_size;
use crate::sys::strerror;

/// The step of allocation that failed, for errors that are not about one property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Mapping the memory or making what is mapped (memfd and its seals, the shm object
    /// and its length), or a size larger than the address space.
    Map,
    /// madvise on the mapping: MADV_DONTFORK and MADV_DONTDUMP at allocation, `dump`
    /// changed on a live backend (refused KSM advice is not an error).
    Advise,

    /// Faulting the pages in: creating the threads, the populate call itself, or a
    /// kernel without MADV_POPULATE_WRITE for memory that touching could SIGBUS.
    Prealloc,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Map => "mapping memory",
            Step::Advise => "advising memory",
            Step::Prealloc => "preallocating memory",
        })
    }
}

/// Who lacked huge pages, for [`Error::HugePagesShort`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// Bytes per huge page of the pool that fell short.
    pub page_size: u64,
    /// Pages the backend needs: its whole length, or the pages not yet faulted in when
    /// a live backend without `reserve` is preallocated.
    pub needed: u64,
    /// Pages the pool can give: host-wide free less reserved, or the bound nodes' free
    /// pages added up when the check before mapping was per node.
    pub free: u64,
    /// The node(s) the memory is bound to, with each one's free pages; empty = host-wide.
    pub nodes: Vec<(u32, u64)>,
    /// Backends of the same batch that take from the same pool first; `needed` counts
    /// their pages too.
    pub with: Vec<String>,
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not enough {} huge pages: {} needed, {} free",
            format_size(self.page_size),
            self.needed,
            self.free
        )?;
        if self.nodes.is_empty() {
            write!(f, " on the host")?;
        } else {
            let list: Vec<String> = self
                .nodes
                .iter()
                .map(|(n, free)| format!("node {n}: {free} free"))
                .collect();
            write!(f, " on the bound nodes ({})", list.join(", "))?;
        }
        if !self.with.is_empty() {
            write!(
                f,
                " (together with {} of the same batch)",
                self.with.join(", ")
            )?;
        }
        Ok(())
    }
}

/// How much memory a backend (with the backends of its batch before it) needs under
/// one limit, and how much the limit gives: for the memory errors
/// ([`Error::NodeMemoryShort`], [`Error::HostMemoryShort`], [`Error::CgroupMemoryShort`],
/// [`Error::HugetlbCgroupShort`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryShort {
    /// Bytes needed: the backend's, plus those of `with`; during prealloc, what was
    /// still to be faulted in.
    pub needed: u64,
    /// Bytes the limit could give when it was read.
    pub available: u64,
    /// Backends of the same batch counted against the same limit before this one.
    pub with: Vec<String>,
    /// Set when prealloc stopped at the limit: bytes that had been faulted in under it
    /// (and were given back).
    pub stopped_after: Option<u64>,
}

impl MemoryShort {
    fn needs(&self) -> String {
        let more = if self.stopped_after.is_some() {
            " more"
        } else {
            ""
        };
        format!("needs {}{more}", format_size(self.needed))
    }

    fn tail(&self) -> String {
        let mut s = String::new();
        if !self.with.is_empty() {
            s += &format!(
                " (together with {} of the same batch)",
                self.with.join(", ")
            );
        }
        if let Some(done) = self.stopped_after {
            s += &format!(
                "; preallocation stopped after {} before the kernel would have had to reclaim or kill, and every page was given back",
                format_size(done)
            );
        }
        s
    }
}

/// The cgroup a memory error names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRef {
    /// The cgroup as /proc/self/cgroup names it (`/machine.slice/vm1`).
    pub cgroup: String,
    /// The limit file (`memory.max`, `memory.limit_in_bytes`, `hugetlb.2MB.max`).
    pub file: String,
    /// The limit, bytes.
    pub max: u64,
}

fn node_words(nodes: &NodeSet) -> String {
    if nodes.len() == 1 {
        format!("node {nodes}, which has")
    } else {
        format!("nodes {nodes}, which have")
    }
}

/// Everything that can go wrong with a backend: setting its properties, parsing
/// `-object` text, allocating, changing it live and reading it back from the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- QEMU's own messages, word for word -------------------------------------------
    /// Policy and host-nodes do not go together (QEMU's words for QEMU's policies;
    /// checked at allocation and rebind).
    #[error(transparent)]
    PolicyNodes(#[from] PolicyNodesError),
    /// mbind refused the policy on freshly mapped memory; holds the errno text.
    #[error("cannot bind memory to host NUMA nodes: {}", strerror(.0))]
    Mbind(#[source] std::io::Error),
    /// An integer property was set below its minimum (`size=0`, `prealloc-threads=0`).
    #[error("property '{prop}' of {kind} doesn't take value '{value}'")]
    ZeroValue {
        /// Property name (`size`).
        prop: &'static str,
        /// QEMU type name.
        kind: &'static str,
        /// The refused value, in decimal.
        value: String,
    },
    /// host-nodes text is not a node list, or names a node at or past
    /// [`MAX_NODES`](crate::numa::MAX_NODES).
    #[error("{0}")]
    NodeList(#[from] NodeListError),
    /// The file backend's `mem-path` cannot be examined (statfs), opened, created, or
    /// given a temp file when it is a directory.
    #[error("can't open backing store {path} for guest RAM: {}", strerror(.source))]
    OpenBackingStore {
        /// The `mem-path` as set (the directory, for a temp file).
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A required parameter is unset: `size` or the file backend's `mem-path` at
    /// allocation, `qom-type` or `id` in `-object` text.
    #[error("Parameter '{0}' is missing")]
    Missing(&'static str),
    /// `prealloc=on` together with `reserve=off`, refused at allocation as QEMU does.
    #[error("'prealloc=on' and 'reserve=off' are incompatible")]
    PreallocWithoutReserve,
    /// Delete was asked while a consumer holds the memory (a hold from
    /// [`Backend::hold`](crate::Backend::hold)); holds the object id.
    #[error("object '{0}' is in use, can not be deleted")]
    InUse(String),
    /// QEMU 9.1+: file, memfd and shm memory must be whole pages.
    #[error("backend '{kind}' memory size must be multiple of {}", format_size(*page_size))]
    SizeNotPageMultiple {
        /// QEMU type name.
        kind: &'static str,
        /// The memory's page size.
        page_size: u64,
    },
    /// `memory-backend-shm` with `share=off`: private shm memory would only be anonymous
    /// memory.
    #[error("can't create shm backend with `share=off`")]
    ShmNotShared,
    /// A link property (`prealloc-context`) names no object.
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    /// A JSON member of the wrong type, or a link to an object of the wrong type:
    /// QEMU's QAPI wording.
    #[error("Invalid parameter type for '{prop}', expected: {expected}")]
    InvalidType {
        /// The member or property.
        prop: String,
        /// What it must be (`uint64`, `boolean`, `thread-context`, ...).
        expected: &'static str,
    },
    /// A JSON member no property takes (QEMU's QAPI wording).
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
    /// A thread-context refused a setting (QEMU's own words).
    #[error("{0}")]
    Context(String),
    /// A combination QEMU refuses, in QEMU's own words.
    #[error("{0}")]
    Refused(String),

    // --- property access ---------------------------------------------------------------
    /// The backend's kind has no property of that name.
    #[error("Property '{kind}.{prop}' not found")]
    UnknownProperty {
        /// QEMU type name.
        kind: &'static str,
        /// The name asked for.
        prop: String,
    },
    /// QEMU's keyval wording: `Parameter 'size' expects a size value`.
    #[error("Parameter '{prop}' expects {expected}")]
    BadType {
        /// Property name, or the `-object` key (`id`, `object` for an empty pair).
        prop: String,
        /// What the value must be, in QEMU's words (`a size value`, `uint32`).
        expected: &'static str,
    },
    /// A value that is none of the names the parameter takes: a policy, on/off/auto, or
    /// a `qom-type` that is not a backend kind.
    #[error("Parameter '{prop}' does not accept value '{value}'")]
    BadEnum {
        /// Property name, or `qom-type`.
        prop: String,
        /// The text given.
        value: String,
    },
    /// A change was asked of a property that would need the memory remade (size, share,
    /// mem-path, ...) on a live backend.
    #[error("cannot change property '{prop}' of {kind} '{id}': it is fixed once the backend is allocated")]
    FixedAfterAllocation {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// Property name.
        prop: &'static str,
    },
    /// `policy` or `host-nodes` was set alone to a new value on a live backend; the two
    /// change together through [`Backend::rebind`](crate::Backend::rebind).
    #[error("cannot change '{prop}' of live backend '{id}' on its own: rebind it instead (policy and host-nodes together, existing pages are migrated)")]
    PlacementNeedsRebind {
        /// Object id.
        id: String,
        /// `policy` or `host-nodes`.
        prop: &'static str,
    },
    /// A property's value does not fit the other settings, the host or the file, found
    /// before or while mapping (file `align`, `offset`, `rom`, `pmem`, a `size` the file
    /// cannot hold; memfd `hugetlbsize`, a memfd that cannot be resized).
    #[error("{kind} '{id}': property '{prop}' = '{value}' is invalid: {why}")]
    Invalid {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// Property name.
        prop: &'static str,
        /// The value, as text.
        value: String,
        /// Why it is refused, naming what would be accepted where there is a choice.
        why: String,
    },

    // --- NUMA, better than QEMU --------------------------------------------------------
    /// A node of host-nodes does not exist on this host, is offline or has no memory.
    #[error("{kind} '{id}': host-nodes = '{nodes}': {why}")]
    BadNode {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// host-nodes in list form (`0-1,4`).
        nodes: String,
        /// Which node and why, with the nodes that could be used (from sysfs).
        why: String,
    },
    /// The running kernel's mbind does not know the policy (preferred-many,
    /// weighted-interleave, local).
    #[error("{kind} '{id}': policy '{policy}' needs Linux {}.{} or later; this kernel is {}.{}", need.0, need.1, have.0, have.1)]
    PolicyUnsupported {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// The policy asked for.
        policy: Policy,
        /// Oldest kernel (major, minor) that has the policy.
        need: (u32, u32),
        /// The running kernel's (major, minor), from uname.
        have: (u32, u32),
    },

    // --- allocation ---------------------------------------------------------------------
    /// The huge page pool (host-wide, or the bound nodes' for `bind`) cannot give the
    /// pages: found before mapping, before preallocating a live backend with
    /// `reserve=off`, or after a failed prealloc of hugetlb memory.
    #[error("{kind} '{id}': {shortage}")]
    HugePagesShort {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// Page size, pages needed and free, and the nodes.
        shortage: Shortage,
    },
    /// A backend bound to nodes (a strict policy) needs more memory than those nodes can
    /// give without swapping: free, plus reclaimable page cache and slab, less the min
    /// watermarks (checked before mapping, and between prealloc steps).
    #[error("{kind} '{id}': {} on {} {} available (bound by policy={policy} host-nodes={nodes}){}",
        short.needs(), node_words(nodes), format_size(short.available), short.tail())]
    NodeMemoryShort {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// The policy that binds it.
        policy: Policy,
        /// Its host-nodes.
        nodes: NodeSet,
        /// Needed and available.
        short: Box<MemoryShort>,
    },
    /// The host as a whole cannot give the memory (policies that may fall back to any
    /// node: default, preferred, interleave, ...).
    #[error("{kind} '{id}': {}, the host has {} available (free memory and reclaimable page cache and slab, less what the kernel keeps){}",
        short.needs(), format_size(short.available), short.tail())]
    HostMemoryShort {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// Needed and available.
        short: Box<MemoryShort>,
    },
    /// The process's memory cgroup (or an ancestor) would pass its limit.
    #[error("{kind} '{id}': {}, the memory cgroup {} allows {} more ({} {}){}",
        short.needs(), cgroup.cgroup, format_size(short.available), cgroup.file,
        format_size(cgroup.max), short.tail())]
    CgroupMemoryShort {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// The cgroup whose limit it is.
        cgroup: Box<CgroupRef>,
        /// Needed and available.
        short: Box<MemoryShort>,
    },
    /// The hugetlb cgroup's limit for the page size would be passed: faulting the pages
    /// would raise SIGBUS.
    #[error("{kind} '{id}': {} of {} huge pages, the hugetlb cgroup {} allows {} more ({} {}){}",
        short.needs(), format_size(*page_size), cgroup.cgroup, format_size(short.available),
        cgroup.file, format_size(cgroup.max), short.tail())]
    HugetlbCgroupShort {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// Bytes per huge page.
        page_size: u64,
        /// The cgroup whose limit it is.
        cgroup: Box<CgroupRef>,
        /// Needed and available.
        short: Box<MemoryShort>,
    },
    /// A step of allocation failed for a reason that is not one property's.
    #[error("{kind} '{id}': {step} failed: {reason}")]
    Alloc {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// The step that failed.
        step: Step,
        /// The errno text, or what was short and where (memory, file system room).
        reason: String,
        /// The system call's error, where one failed.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Preallocation was stopped through [`Progress::cancel`](crate::Progress::cancel).
    #[error("{kind} '{id}': preallocation cancelled")]
    Cancelled {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// The backend has no memory: not allocated yet, or deleted (a deleted backend
    /// refuses every later change too).
    #[error("{kind} '{id}' is not allocated")]
    NotAllocated {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// The fd of memory that has none was asked for (`memory-backend-ram` is
    /// anonymous memory).
    #[error("{kind} '{id}' has no fd: its memory is anonymous")]
    NoFd {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// The descriptor of a file the kernel cannot seal (shm, file) was asked for
    /// without the caller's [`FileSizePromise`](crate::FileSizePromise): whoever holds
    /// it could shrink the file, and the mapped memory past the new end would raise
    /// SIGBUS.
    #[error("{kind} '{id}': its file cannot be sealed against shrinking, and a descriptor would let its holder cut the memory from under the mapping (SIGBUS); promise that it will not shrink (Backend::trust_file_size) to have it handed out")]
    FileCanShrink {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// Allocation was asked of a backend that is already live.
    #[error("{kind} '{id}' is already allocated")]
    AlreadyAllocated {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
    },
    /// A rebind's mbind (MPOL_MF_MOVE | MPOL_MF_STRICT) failed, typically on pages that
    /// cannot migrate; the previous policy is put back where the kernel lets it.
    #[error("cannot rebind '{id}' to {policy} {nodes}: {}; its policy is {now}, pages already moved stay where they are", strerror(.source))]
    RebindFailed {
        /// Object id.
        id: String,
        /// The policy asked for.
        policy: Policy,
        /// The nodes asked for.
        nodes: String,
        /// What mbind said.
        #[source]
        source: std::io::Error,
        /// The policy and nodes in force now (the previous ones, put back).
        now: String,
    },
    /// Reading what the kernel says about a live backend failed (/proc/self/smaps,
    /// page placement through move_pages).
    #[error("{kind} '{id}': {what}: {}", strerror(.source))]
    Io {
        /// QEMU type name.
        kind: &'static str,
        /// Object id.
        id: String,
        /// What was being done (`reading /proc/self/smaps`).
        what: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

/// A result whose error is this crate's [`Error`] unless another is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;
