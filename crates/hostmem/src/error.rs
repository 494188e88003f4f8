//! Everything that can go wrong with a backend, as one enum. Messages that QEMU users
//! know are kept word for word; the others name the object, the property and the value.

use std::path::PathBuf;

use crate::numa::{NodeListError, Policy};
use crate::size::format_size;

/// The step of allocation that failed, for errors that are not about one property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Map,
    Advise,
    Bind,
    Prealloc,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Map => "mapping memory",
            Step::Advise => "advising memory",
            Step::Bind => "binding memory",
            Step::Prealloc => "preallocating memory",
        })
    }
}

/// Who lacked huge pages, for [`Error::HugePagesShort`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub page_size: u64,
    pub needed: u64,
    pub free: u64,
    /// The node(s) the memory is bound to, with each one's free pages; empty = host-wide.
    pub nodes: Vec<(u32, u64)>,
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
            write!(f, " on the host")
        } else {
            let list: Vec<String> = self
                .nodes
                .iter()
                .map(|(n, free)| format!("node {n}: {free} free"))
                .collect();
            write!(f, " on the bound nodes ({})", list.join(", "))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- QEMU's own messages, word for word -------------------------------------------
    #[error("host-nodes must be empty for policy default, or you should explicitly specify a policy other than default")]
    NodesWithDefaultPolicy,
    #[error("host-nodes must be set for policy {0}")]
    NodesMissing(Policy),
    #[error("cannot bind memory to host NUMA nodes: {0}")]
    Mbind(String),
    #[error("property '{prop}' of {kind} doesn't take value '{value}'")]
    ZeroValue {
        prop: &'static str,
        kind: &'static str,
        value: String,
    },
    #[error("{0}")]
    NodeList(#[from] NodeListError),
    #[error("can't open backing store {path} for guest RAM: {reason}")]
    OpenBackingStore { path: PathBuf, reason: String },
    #[error("Parameter '{0}' is missing")]
    Missing(&'static str),
    #[error("'prealloc=on' and 'reserve=off' are incompatible")]
    PreallocWithoutReserve,
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
    #[error("can't create shm backend with `share=off`")]
    ShmNotShared,

    // --- property access ---------------------------------------------------------------
    #[error("Property '{kind}.{prop}' not found")]
    UnknownProperty { kind: &'static str, prop: String },
    /// QEMU's keyval wording: `Parameter 'size' expects a size value`.
    #[error("Parameter '{prop}' expects {expected}")]
    BadType {
        prop: String,
        expected: &'static str,
    },
    #[error("Parameter '{prop}' does not accept value '{value}'")]
    BadEnum { prop: String, value: String },
    #[error("cannot change property '{prop}' of {kind} '{id}': it is fixed once the backend is allocated")]
    FixedAfterAllocation {
        kind: &'static str,
        id: String,
        prop: &'static str,
    },
    #[error("cannot change '{prop}' of live backend '{id}' on its own: rebind it instead (policy and host-nodes together, existing pages are migrated)")]
    PlacementNeedsRebind { id: String, prop: &'static str },
    #[error("{kind} '{id}': property '{prop}' = '{value}' is invalid: {why}")]
    Invalid {
        kind: &'static str,
        id: String,
        prop: &'static str,
        value: String,
        why: String,
    },

    // --- NUMA, better than QEMU --------------------------------------------------------
    #[error("host-nodes must be empty for policy {0}")]
    NodesNotTaken(Policy),
    #[error("{kind} '{id}': host-nodes = '{nodes}': {why}")]
    BadNode {
        kind: &'static str,
        id: String,
        nodes: String,
        why: String,
    },
    #[error("{kind} '{id}': policy '{policy}' needs Linux {}.{} or later; this kernel is {}.{}", need.0, need.1, have.0, have.1)]
    PolicyUnsupported {
        kind: &'static str,
        id: String,
        policy: Policy,
        need: (u32, u32),
        have: (u32, u32),
    },

    // --- allocation ---------------------------------------------------------------------
    #[error("{kind} '{id}': {shortage}")]
    HugePagesShort {
        kind: &'static str,
        id: String,
        shortage: Shortage,
    },
    #[error("{kind} '{id}': {step} failed: {reason}")]
    Alloc {
        kind: &'static str,
        id: String,
        step: Step,
        reason: String,
    },
    #[error("{kind} '{id}': preallocation cancelled")]
    Cancelled { kind: &'static str, id: String },
    #[error("{kind} '{id}' is not allocated")]
    NotAllocated { kind: &'static str, id: String },
    #[error("{kind} '{id}' is already allocated")]
    AlreadyAllocated { kind: &'static str, id: String },
    #[error("cannot rebind '{id}' to {policy} {nodes}: {reason}; its policy is {now}, pages already moved stay where they are")]
    RebindFailed {
        /// Object id.
        id: String,
        /// The policy asked for.
        policy: Policy,
        /// The nodes asked for.
        nodes: String,
        /// What mbind said.
        reason: String,
        /// The policy and nodes in force now (the previous ones, put back).
        now: String,
    },
    #[error("{kind} '{id}': {what}: {reason}")]
    Io {
        kind: &'static str,
        id: String,
        what: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
