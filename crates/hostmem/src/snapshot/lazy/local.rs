//! A lazy restore into a hostmem backend of this process: the checks a copy restore
//! makes (length, limits, placement), then the backend's mapping registered with a new
//! userfaultfd and handed to the engine.

use std::sync::Arc;

use super::super::image::Image;
use super::super::memory::Memory;
use super::super::{place, Result, SnapshotError};
use super::{start, LazyOptions, LazyRegion, LazyServer};
use crate::limits::Snapshot;
use crate::sys::uffd::{feature, mode, Uffd};
use crate::{Backend, HostTopology};

/// Restores `image` into `backend` lazily: the memory is usable when this returns;
/// each page is served from the image on first touch, and the rest is filled in the
/// background (with `opts.background`). The backend must be as long as the image's and
/// anonymous, shmem (memfd, shm, a file on tmpfs) or hugetlbfs memory — the memory the
/// kernel's userfaultfd serves; a file on a disk file system is refused (restore it by
/// copy). Memory it holds is discarded first (a lazy restore fills missing pages only).
///
/// Placed and limited like a copy restore: before anything, the data bytes are checked
/// against the limits the backend counts against ([`check_room`](super::super::check_room));
/// the pages UFFDIO_COPY allocates follow the backend's memory policy (the kernel
/// allocates them under the policy of the memory they go to), and the serving threads
/// run on the CPUs of its nodes unless `opts.cpus` names others.
pub fn restore_lazy(
    image: Arc<Image>,
    backend: &Backend,
    mut opts: LazyOptions,
) -> Result<LazyServer> {
    let h = image.header();
    if h.base.is_some() {
        return Err(SnapshotError::Mismatch(format!(
            "{} is a diff image: it cannot be restored lazily (restore_diff copies it)",
            image.path().display()
        )));
    }
    let hold = backend.hold()?;
    let io = |what, source| SnapshotError::Io {
        what,
        path: image.path().to_path_buf(),
        source,
    };
    let mem = Memory::new(hold.clone()).map_err(|e| io("opening the backend's memory for", e))?;
    if mem.len() != h.backend_len {
        return Err(SnapshotError::Mismatch(format!(
            "the image is of a {}-byte backend; '{}' has {} bytes",
            h.backend_len,
            backend.id(),
            mem.len()
        )));
    }
    if !hold.is_writable() {
        return Err(SnapshotError::Mismatch(format!(
            "'{}' is read-only: nothing can be restored into it",
            backend.id()
        )));
    }
    let missing = |e| io("discarding the backend's memory before restoring", e);
    if mem.may_hold_data(0, mem.len()).map_err(missing)? {
        mem.clear(0, mem.len()).map_err(missing)?;
    }
    let host = HostTopology::read();
    // The memory holds nothing now: every data page of the image will be faulted in,
    // without asking the kernel block by block (4096 questions for 8 GiB).
    let need = place::data_bytes(&image, mem.page_size());
    let snap = Snapshot::read(host.has_memory.iter(), &host.huge_page_sizes);
    place::check_room(backend, need, &snap)?;
    if opts.cpus.is_empty() {
        opts.cpus = place::cpus_for(backend, &host);
    }

    let wanted = feature::EVENT_REMOVE
        | feature::MISSING_SHMEM
        | feature::MISSING_HUGETLBFS
        | feature::POISON;
    let (uffd, got) = Uffd::new(wanted).map_err(|e| io("creating a userfaultfd for", e))?;
    if got & feature::POISON == 0 {
        return Err(SnapshotError::Mismatch(
            "this kernel's userfaultfd has no UFFDIO_POISON (Linux 6.6+): a page that cannot \
             be served would hang its toucher; restore by copy"
                .into(),
        ));
    }
    let map = &hold.0.mapped.map;
    uffd.register(map, 0, map.len(), mode::MISSING)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => SnapshotError::Mismatch(format!(
                "'{}': the kernel cannot serve this memory lazily (userfaultfd serves \
                 anonymous, shmem and hugetlbfs memory, not a file on a disk file system); \
                 restore it by copy",
                backend.id()
            )),
            _ => io(
                "registering the backend's memory with the userfaultfd of",
                e,
            ),
        })?;
    let regions = vec![LazyRegion {
        host_addr: hold.host_addr() as u64,
        len: hold.len() as u64,
        backend_offset: 0,
        page_size: hold.page_size(),
    }];
    start(image, uffd, regions, opts, Some(hold))
}
