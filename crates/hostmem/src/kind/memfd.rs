//! `memory-backend-memfd`: a memfd, shared by default so other processes (vhost-user
//! back ends) can map the same memory through the fd; optionally hugetlb and sealed.

use std::fs::File;
use std::os::fd::OwnedFd;

use super::{FdSize, Kind, KindOps, KindSpec, Mapped, Plan, Target};
use crate::error::Result;
use crate::numa::topology::{default_huge_page_size, huge_page_sizes};
use crate::props::group::property_group;
use crate::size::format_size;
use crate::sys::{self, memfd, MapOptions, RawMapping};

property_group! {
    /// The settings of `memory-backend-memfd`.
    pub struct MemfdConfig in kind {
        /// use huge pages
        HUGETLB hugetlb: bool = "hugetlb", live Fixed, default |_, _| false;
        /// seal the memfd against resizing
        SEAL seal: bool = "seal", live Fixed, default |_, _| true;
        /// huge page size (0: the host's default)
        HUGETLBSIZE hugetlbsize: u64 = "hugetlbsize", live Fixed, default |_, _| 0;
    }
}

/// What `memory-backend-memfd` is, statically.
pub(crate) const SPEC: KindSpec = KindSpec {
    qom_type: "memory-backend-memfd",
    shared_by_default: true,
    has_fd: true,
    own_props: MemfdConfig::PROPS,
};

impl KindOps for MemfdConfig {
    fn kind(&self) -> Kind {
        Kind::Memfd
    }

    fn plan(&self, t: &Target<'_>) -> Result<Plan> {
        let size = t.common.size;
        if !self.hugetlb {
            if self.hugetlbsize != 0 {
                return Err(t.invalid(
                    &MemfdConfig::HUGETLBSIZE,
                    self.hugetlbsize,
                    format!("it needs {}=on", MemfdConfig::HUGETLB.name),
                ));
            }
            return Ok(super::base_pages(size));
        }
        let offered = huge_page_sizes();
        let page = if self.hugetlbsize == 0 {
            default_huge_page_size().unwrap_or(0)
        } else {
            self.hugetlbsize
        };
        if page == 0 || !offered.contains(&page) {
            let list: Vec<String> = offered.iter().map(|&s| format_size(s)).collect();
            let why = if list.is_empty() {
                "this host offers no huge pages".to_string()
            } else {
                format!("this host offers huge pages of {}", list.join(", "))
            };
            return Err(t.invalid(&MemfdConfig::HUGETLBSIZE, self.hugetlbsize, why));
        }
        Ok(Plan {
            len: size,
            page_size: page,
            hugetlb: true,
            existing_file: false,
        })
    }

    fn map(&self, t: &Target<'_>, plan: &Plan) -> Result<Mapped> {
        // Sealing is allowed also with seal=off (QEMU's memfd then carries F_SEAL_SEAL):
        // such a memfd is sealed against shrinking before its descriptor is handed
        // out, so that no holder can cut the file under the mapping (SIGBUS).
        let mut flags = memfd::CLOEXEC | memfd::ALLOW_SEALING;
        if plan.hugetlb {
            flags |= memfd::HUGETLB | (plan.page_size.trailing_zeros() << memfd::HUGE_SHIFT);
        }
        let fail = |e: std::io::Error| t.map_failed(&e);
        let fd = sys::memfd_create(&memfd_name(t.id), flags).map_err(fail)?;
        let file = File::from(fd);
        file.set_len(plan.len).map_err(|e| {
            t.invalid(
                &crate::props::Common::SIZE,
                plan.len,
                format!("failed to resize memfd: {}", sys::strerror(&e)),
            )
        })?;
        let fd = OwnedFd::from(file);
        if self.seal {
            sys::add_seals(
                &fd,
                memfd::SEAL_GROW | memfd::SEAL_SHRINK | memfd::SEAL_SEAL,
            )
            .map_err(fail)?;
        }
        let opts = MapOptions {
            shared: t.common.share,
            noreserve: !t.common.reserve,
            align: plan.page_size as usize,
            ..Default::default()
        };
        let map = RawMapping::map(plan.len as usize, Some(&fd), 0, opts).map_err(fail)?;
        let fd_size = if self.seal {
            FdSize::Fixed
        } else {
            FdSize::Sealable
        };
        Ok(Mapped::of_fd(map, fd, fd_size))
    }
}

/// The memfd's name: the backend's id, so /proc/PID/maps and /proc/PID/fd show
/// `/memfd:ID (deleted)` for each backend (QEMU 10 names every one
/// `memory-backend-memfd`, so its backends cannot be told apart there). The kernel takes
/// at most 249 bytes and no NUL: longer ids are cut on a character boundary, a NUL
/// becomes `_`.
fn memfd_name(id: &str) -> String {
    const MAX: usize = 249;
    let mut name = id.replace('\0', "_");
    if name.len() > MAX {
        let mut end = MAX;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::memfd_name;

    #[test]
    fn memfd_names_fit_the_kernels_limit_and_keep_the_id() {
        assert_eq!(memfd_name("ram-node0"), "ram-node0");
        assert_eq!(memfd_name("a\0b"), "a_b");
        let long = "é".repeat(200);
        let n = memfd_name(&long);
        assert!(n.len() <= 249 && long.starts_with(&n) && n.len() == 248);
    }
}
