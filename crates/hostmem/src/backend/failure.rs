//! What a failed preallocation tells the user: which backend, what was short (huge
//! pages, memory, room on a file system) and where.

use super::{capacity, room, Backend};
use crate::error::{Error, Step};
use crate::prealloc::Failure;
use crate::size::format_size;
use crate::sys;

impl Backend {
    /// The error for a failed prealloc of this backend's `len` bytes of `page_size`
    /// pages. Called after the memory is undone, so pools and file systems read as
    /// they are again.
    pub(crate) fn prealloc_error(
        &self,
        f: Failure,
        page_size: u64,
        hugetlb: bool,
        len: usize,
    ) -> Error {
        match f {
            Failure::Cancelled => Error::Cancelled {
                kind: self.kind().qom_type(),
                id: self.id.clone(),
            },
            Failure::Aborted => self.alloc_error(
                Step::Prealloc,
                "stopped because another backend failed".into(),
            ),
            Failure::Spawn(e) => self.alloc_error(
                Step::Prealloc,
                format!("cannot create threads: {}", sys::strerror(&e)),
            ),
            // The batch names the limit (`room::edge_error`); this is for a caller
            // without the watch's list of limits.
            Failure::Edge(edge) => self.alloc_error(
                Step::Prealloc,
                format!(
                    "stopped at a memory limit: needs {} more, {} available; every page was given back",
                    format_size(edge.needed),
                    format_size(edge.available)
                ),
            ),
            Failure::Fault { .. } if hugetlb => {
                room::hugetlb_cgroup_short(self, page_size, len as u64).unwrap_or_else(|| {
                    capacity::shortage_now(self, len as u64 / page_size, page_size)
                })
            }
            Failure::Fault { offset, err } => {
                // A file this backend created is removed by now: ask about the
                // directory it was in.
                let file_room = self.mem_path().and_then(|p| {
                    sys::statfs(p)
                        .or_else(|e| p.parent().map_or(Err(e), sys::statfs))
                        .ok()
                        .map(|fs| (p, fs.avail_bytes))
                });
                let what = match (err.raw_os_error(), file_room) {
                    (Some(libc::EFAULT | libc::ENOSPC), Some((path, free))) => format!(
                        "the file system holding {} has no room for it ({} free)",
                        path.display(),
                        format_size(free)
                    ),
                    (Some(libc::ENOMEM), _) => "out of memory".to_string(),
                    (Some(libc::EFAULT), _) => {
                        "the memory cannot be faulted in (it would raise SIGBUS)".to_string()
                    }
                    _ => sys::strerror(&err),
                };
                self.alloc_error(
                    Step::Prealloc,
                    format!("{what} at offset {offset} of {len} bytes"),
                )
            }
        }
    }
}
