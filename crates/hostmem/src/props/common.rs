//! The properties every kind has (QEMU's `memory-backend` abstract class), in the
//! order QEMU 10's qom-list shows them.

use crate::context::ContextLink;
use crate::numa::{NodeSet, Policy};

use super::default_threads;
use super::group::property_group;

property_group! {
    /// The settings every backend has, whatever its kind.
    pub struct Common in common {
        /// map shared (visible to other mappings of the memory)
        SHARE share: bool = "share", live Fixed, default |shared, _| shared;
        /// size of the memory in bytes (required)
        SIZE size: u64 = "size", live Fixed, required, default |_, _| 0, min 1;
        /// include the memory in core dumps
        DUMP dump: bool = "dump", live Immediate, default |_, m| m.dump;
        /// threads that preallocate
        PREALLOC_THREADS prealloc_threads: u32 = "prealloc-threads", live Immediate,
            default |_, _| default_threads(), min 1;
        /// name the RAM block by the QOM path instead of the id (QEMU migration compat)
        X_USE_CANONICAL_PATH x_use_canonical_path: bool = "x-use-canonical-path-for-ramblock-id",
            live Immediate, default |_, _| false;
        /// NUMA memory policy
        POLICY policy: Policy = "policy", live Rebind, default |_, _| Policy::Default;
        /// thread-context whose CPUs the prealloc threads run on (none: node-local)
        PREALLOC_CONTEXT prealloc_context: ContextLink = "prealloc-context", live Immediate,
            default |_, _| ContextLink::default();
        /// fault all memory in up front
        PREALLOC prealloc: bool = "prealloc", live Immediate, default |_, m| m.prealloc;
        /// reserve swap space or huge pages for the memory
        RESERVE reserve: bool = "reserve", live Fixed, default |_, _| true;
        /// NUMA nodes of the policy
        HOST_NODES host_nodes: NodeSet = "host-nodes", live Rebind, default |_, _| NodeSet::new();
        /// let KSM merge identical pages
        MERGE merge: bool = "merge", live Immediate, default |_, m| m.merge;
    }
}
