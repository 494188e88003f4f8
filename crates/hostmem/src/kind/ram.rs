//! `memory-backend-ram`: anonymous memory, aligned for THP. Like QEMU, a size that is not
//! whole pages is rounded up, and all of it is preallocated.

use super::{base_pages, Kind, KindOps, KindSpec, Mapped, Plan, Target, THP_ALIGN};
use crate::error::Result;
use crate::prealloc::Method;
use crate::props::group::property_group;
use crate::props::Common;
use crate::sys::{advice, MapOptions, RawMapping};

property_group! {
    /// `memory-backend-ram` has only the common properties.
    pub struct RamConfig in kind {}
}

/// What `memory-backend-ram` is, statically.
pub(crate) const SPEC: KindSpec = KindSpec {
    qom_type: "memory-backend-ram",
    shared_by_default: false,
    has_fd: false,
    own_props: RamConfig::PROPS,
};

impl KindOps for RamConfig {
    fn kind(&self) -> Kind {
        Kind::Ram
    }

    fn plan(&self, t: &Target<'_>) -> Result<Plan> {
        Ok(base_pages(t.common.size))
    }

    fn map(&self, t: &Target<'_>, plan: &Plan) -> Result<Mapped> {
        let opts = MapOptions {
            shared: t.common.share,
            noreserve: !t.common.reserve,
            align: THP_ALIGN,
            ..Default::default()
        };
        let len = plan.len as usize;
        let map = RawMapping::map(len, None, 0, opts).map_err(|e| t.map_failed(&e))?;
        // THP is `madvise` on most hosts: without this hint guest RAM gets 4 KiB pages.
        // A kernel without THP refuses the advice; the memory works all the same.
        let _ = map.madvise(0, len, advice::HUGEPAGE);
        Ok(Mapped::anonymous(map))
    }

    fn rounds_size_up(&self) -> bool {
        true
    }

    fn prealloc_method(&self, common: &Common, has_populate_write: bool) -> Option<Method> {
        if has_populate_write {
            Some(Method::Populate { write: true })
        } else if !common.share {
            // Private anonymous memory gets OOM, never SIGBUS: touching it is safe.
            Some(Method::Touch)
        } else {
            None
        }
    }

    fn mergeable(&self, common: &Common) -> bool {
        !common.share
    }
}
