//! Typed construction of a backend: one setter per property, each going through the
//! property's row (`props`), so a typed call and a name/value one are checked alike.
//! A new property adds its setter here (a test lists every property against these).

use std::path::PathBuf;

use super::Backend;
use crate::context::ContextLink;
use crate::error::{Error, Result};
use crate::kind::file::FileConfig;
use crate::kind::memfd::MemfdConfig;
use crate::numa::{NodeSet, Policy};
use crate::prealloc::Progress;
use crate::props::{Common, OnOffAuto, Prop, Value};

/// Typed construction of a backend: `Backend::builder(Kind::Ram, "ram0").size(1 << 30)`.
/// The first refused value is kept and returned by [`Builder::build`].
#[derive(Debug)]
pub struct Builder {
    pub(super) backend: Backend,
    pub(super) error: Option<Error>,
}

impl Builder {
    /// Sets one property through its row; the first refusal is kept.
    fn with(mut self, prop: &Prop, value: impl Value) -> Self {
        if self.error.is_none() {
            if let Err(e) = self.backend.set(prop.name, value.to_value()) {
                self.error = Some(e);
            }
        }
        self
    }

    /// Sets `share`: map shared (visible to other mappings of the memory).
    pub fn share(self, v: bool) -> Self {
        self.with(&Common::SHARE, v)
    }

    /// Sets `size`: size of the memory in bytes (required).
    pub fn size(self, v: u64) -> Self {
        self.with(&Common::SIZE, v)
    }

    /// Sets `dump`: include the memory in core dumps.
    pub fn dump(self, v: bool) -> Self {
        self.with(&Common::DUMP, v)
    }

    /// Sets `prealloc-threads`: threads that preallocate.
    pub fn prealloc_threads(self, v: u32) -> Self {
        self.with(&Common::PREALLOC_THREADS, v)
    }

    /// Sets `x-use-canonical-path-for-ramblock-id`: name the RAM block by the QOM path.
    pub fn x_use_canonical_path(self, v: bool) -> Self {
        self.with(&Common::X_USE_CANONICAL_PATH, v)
    }

    /// Sets `policy`: NUMA memory policy.
    pub fn policy(self, v: Policy) -> Self {
        self.with(&Common::POLICY, v)
    }

    /// Sets `prealloc-context`: the thread-context whose CPUs the prealloc threads run
    /// on.
    pub fn prealloc_context(self, v: impl Into<ContextLink>) -> Self {
        self.with(&Common::PREALLOC_CONTEXT, v.into())
    }

    /// Sets `prealloc`: fault all memory in up front.
    pub fn prealloc(self, v: bool) -> Self {
        self.with(&Common::PREALLOC, v)
    }

    /// Sets `reserve`: reserve swap space or huge pages for the memory.
    pub fn reserve(self, v: bool) -> Self {
        self.with(&Common::RESERVE, v)
    }

    /// Sets `host-nodes`: NUMA nodes of the policy.
    pub fn host_nodes(self, v: NodeSet) -> Self {
        self.with(&Common::HOST_NODES, v)
    }

    /// Sets `merge`: let KSM merge identical pages.
    pub fn merge(self, v: bool) -> Self {
        self.with(&Common::MERGE, v)
    }

    /// Sets `readonly` (file): open and map the file read-only.
    pub fn readonly(self, v: bool) -> Self {
        self.with(&FileConfig::READONLY, v)
    }

    /// Sets `align` (file): alignment of the mapping (0: the page size).
    pub fn align(self, v: u64) -> Self {
        self.with(&FileConfig::ALIGN, v)
    }

    /// Sets `offset` (file): offset of the memory in the file.
    pub fn offset(self, v: u64) -> Self {
        self.with(&FileConfig::OFFSET, v)
    }

    /// Sets `pmem` (file): persistent memory, mapped with MAP_SYNC.
    pub fn pmem(self, v: bool) -> Self {
        self.with(&FileConfig::PMEM, v)
    }

    /// Sets `mem-path` (file): the file, or a directory for an unlinked temp file.
    pub fn mem_path(self, v: impl Into<PathBuf>) -> Self {
        self.with(&FileConfig::MEM_PATH, v.into())
    }

    /// Sets `discard-data` (file): drop the file's data on delete.
    pub fn discard_data(self, v: bool) -> Self {
        self.with(&FileConfig::DISCARD_DATA, v)
    }

    /// Sets `rom` (file): the guest sees the memory as ROM.
    pub fn rom(self, v: OnOffAuto) -> Self {
        self.with(&FileConfig::ROM, v)
    }

    /// Sets `hugetlb` (memfd): use huge pages.
    pub fn hugetlb(self, v: bool) -> Self {
        self.with(&MemfdConfig::HUGETLB, v)
    }

    /// Sets `seal` (memfd): seal the memfd against resizing.
    pub fn seal(self, v: bool) -> Self {
        self.with(&MemfdConfig::SEAL, v)
    }

    /// Sets `hugetlbsize` (memfd): huge page size (0: the host's default).
    pub fn hugetlbsize(self, v: u64) -> Self {
        self.with(&MemfdConfig::HUGETLBSIZE, v)
    }

    /// Goes ahead even where the memory limits say the memory is not there
    /// ([`Backend::set_ignore_memory_limits`]).
    pub fn ignore_memory_limits(mut self, ignore: bool) -> Self {
        self.backend.set_ignore_memory_limits(ignore);
        self
    }

    /// The configured backend, not yet allocated.
    pub fn build(self) -> Result<Backend> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.backend),
        }
    }

    /// The backend, allocated.
    pub fn create(self) -> Result<Backend> {
        self.create_with(&Progress::new())
    }

    /// The backend, allocated with observable progress and cancellation.
    pub fn create_with(self, progress: &Progress) -> Result<Backend> {
        let mut b = self.build()?;
        b.complete_with(progress)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use crate::kind::{properties, Kind};

    /// Every property of every kind has its typed setter here (each documented as
    /// ``Sets `NAME` ``): a property added to a group without one fails.
    #[test]
    fn every_property_has_a_typed_setter() {
        let text = include_str!("builder.rs");
        for &kind in Kind::ALL {
            for p in properties(kind) {
                assert!(
                    text.contains(&format!("/// Sets `{}`", p.name)),
                    "{kind}: no builder setter for '{}'",
                    p.name
                );
            }
        }
    }
}
