//! A lazy restore into a hostmem backend of this process: the checks a copy restore
//! makes (length, limits, placement), then the backend's mapping registered with a new
//! userfaultfd and handed to the engine.

use std::sync::Arc;

use super::super::diff::check_chain;
use super::super::image::Image;
use super::super::memory::Memory;
use super::super::{place, Result, SnapshotError};
use super::engine::data_bytes;
use super::{plan, start_units, LazyOptions, LazyRegion, LazyServer};
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
///
/// A diff image is refused: [`restore_lazy_chain`] restores it with its base.
pub fn restore_lazy(image: Arc<Image>, backend: &Backend, opts: LazyOptions) -> Result<LazyServer> {
    restore_lazy_chain(vec![image], backend, opts)
}

/// [`restore_lazy`] of a chain: `chain[0]` a full image, every later one a diff taken
/// against the one before it (newest last), so the memory reads as it was when the
/// last diff was saved. Refused before the memory is touched unless the chain is one
/// (each link names the image before it, same regions, block sizes dividing), as
/// [`restore_chain`](super::super::restore_chain) refuses it.
///
/// The units served are the full image's blocks. One that no diff touches is served
/// as a lone image's (by 4 KiB chunk on a fault, when the full image's chunk sums are
/// known); one that a diff touches is served whole: every source block of it (the full
/// image's, each diff's) read and checked once against its own image's table, the unit
/// assembled (holes as zeros) and copied — the chunk sums are the full image's and do
/// not describe its bytes. A block that cannot be served names its image's file and
/// block. The touch order and learned chunk sums are not kept for a chain
/// ([`LazyReport::touched`](super::LazyReport) stays empty): the caller saves them
/// beside one image, and a chain's belong to none of its images.
pub fn restore_lazy_chain(
    chain: Vec<Arc<Image>>,
    backend: &Backend,
    mut opts: LazyOptions,
) -> Result<LazyServer> {
    let refs: Vec<&Image> = chain.iter().map(|im| &**im).collect();
    check_chain(&refs)?;
    let image = &chain[0];
    let h = image.header();
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
    // Planned before the memory is touched: a layout the memory cannot be served in is
    // refused first, and the units are split by the chain's diffs once.
    let regions = vec![LazyRegion {
        host_addr: hold.host_addr() as u64,
        len: hold.len() as u64,
        backend_offset: 0,
        page_size: hold.page_size(),
    }];
    let units = plan::units(&refs, &regions)?;
    let missing = |e| io("discarding the backend's memory before restoring", e);
    if mem.may_hold_data(0, mem.len()).map_err(missing)? {
        mem.clear(0, mem.len()).map_err(missing)?;
    }
    let host = HostTopology::read();
    // The memory holds nothing now: every data unit will be faulted in, without asking
    // the kernel block by block (4096 questions for 8 GiB).
    let need = data_bytes(&units);
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
    start_units(chain, units, uffd, regions, opts, Some(hold))
}
