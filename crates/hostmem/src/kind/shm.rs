//! `memory-backend-shm` (QEMU 9.1): POSIX shared memory from `shm_open`, unlinked at
//! once so no other process can open it by name; shared by default, and `share=off`
//! refused (private shm memory would be anonymous memory with extra steps).

use std::fs::File;
use std::os::fd::OwnedFd;

use super::{base_pages, FdSize, Kind, KindOps, KindSpec, Mapped, Plan, Target};
use crate::error::{Error, Result};
use crate::props::group::property_group;
use crate::sys::{self, MapOptions, RawMapping};

property_group! {
    /// `memory-backend-shm` has only the common properties.
    pub struct ShmConfig in kind {}
}

/// What `memory-backend-shm` is, statically.
pub(crate) const SPEC: KindSpec = KindSpec {
    qom_type: "memory-backend-shm",
    shared_by_default: true,
    has_fd: true,
    own_props: ShmConfig::PROPS,
};

impl KindOps for ShmConfig {
    fn kind(&self) -> Kind {
        Kind::Shm
    }

    fn plan(&self, t: &Target<'_>) -> Result<Plan> {
        if !t.common.share {
            return Err(Error::ShmNotShared);
        }
        Ok(base_pages(t.common.size))
    }

    fn map(&self, t: &Target<'_>, plan: &Plan) -> Result<Mapped> {
        let fd = sys::shm_create_unlinked().map_err(|e| t.map_failed(&e))?;
        let file = File::from(fd);
        file.set_len(plan.len).map_err(|e| t.map_failed(&e))?;
        let fd = OwnedFd::from(file);
        let opts = MapOptions {
            shared: true,
            noreserve: !t.common.reserve,
            ..Default::default()
        };
        let map =
            RawMapping::map(plan.len as usize, Some(&fd), 0, opts).map_err(|e| t.map_failed(&e))?;
        Ok(Mapped::of_fd(map, fd, FdSize::Unsealable))
    }
}
