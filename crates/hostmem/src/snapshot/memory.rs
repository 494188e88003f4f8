//! A backend's memory as a snapshot sees it: where it may hold data (asked of the
//! kernel, without reading it), its bytes, and how to make a range read as zeros again.
//!
//! The one place this module reaches into the backend's internals (the descriptor
//! behind a hold), so a reshape of `backend/` touches only this file.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use crate::backend::InUse;

/// Pagemap entry bits: the page is present in RAM / swapped out.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

/// A hold on a backend's memory and the ways to look at it.
pub(crate) struct Memory {
    hold: InUse,
    /// The memfd/shm/file behind the memory and the memory's offset in it.
    file: Option<(File, u64)>,
    /// Whether the file sees every byte of the memory (MAP_SHARED).
    shared: bool,
    /// /proc/self/pagemap, for memory the file does not describe (anonymous or
    /// private): a page neither present nor swapped was never written.
    pagemap: Option<File>,
    base_page: u64,
    /// Shared hugetlb memory: hugetlbfs answers SEEK_DATA with "all data", so the
    /// holes come from [`mapped_pages`] instead, asked on the first `may_hold_data`
    /// (a save's start; a restore, which never asks, does not pay for it).
    hugetlb: bool,
    /// Which huge pages are present, when every page of the file is mapped here.
    mapped: OnceLock<Option<Vec<bool>>>,
}

impl Memory {
    pub(crate) fn new(hold: InUse) -> io::Result<Memory> {
        let file = match hold.0.fd_and_offset() {
            Some((fd, off)) => Some((File::from(fd.try_clone()?), off)),
            None if hold.is_shared() => shmem_of(&hold),
            None => None,
        };
        // Shared memory is described by its file. Private memory (anonymous, or a
        // private file mapping's copied pages) by the pagemap.
        let shared = hold.is_shared() && file.is_some();
        let pagemap = if hold.is_shared() {
            None
        } else {
            Some(File::open("/proc/self/pagemap")?)
        };
        let base_page = crate::sys::page_size() as u64;
        // Only hugetlb memory has pages larger than the base page.
        let hugetlb = shared && hold.page_size() > base_page;
        Ok(Memory {
            hold,
            file,
            shared,
            pagemap,
            base_page,
            hugetlb,
            mapped: OnceLock::new(),
        })
    }

    /// The present huge pages of shared hugetlb memory, if they are all its file has.
    /// A pagemap that cannot be read leaves every page to be read.
    fn mapped(&self) -> Option<&Vec<bool>> {
        let (f, _) = self.file.as_ref().filter(|_| self.hugetlb)?;
        self.mapped
            .get_or_init(|| {
                let pm = File::open("/proc/self/pagemap").ok()?;
                mapped_pages(&self.hold, f, &pm, self.base_page).ok()?
            })
            .as_ref()
    }

    pub(crate) fn len(&self) -> u64 {
        self.hold.len() as u64
    }

    pub(crate) fn page_size(&self) -> u64 {
        self.hold.page_size()
    }

    /// Whether `[off, off+len)` may hold anything but zeros. False only when the kernel
    /// says so: the file has a hole there (SEEK_DATA) and, for memory the file does not
    /// describe, no page of the range is present or swapped out (pagemap).
    pub(crate) fn may_hold_data(&self, off: u64, len: u64) -> io::Result<bool> {
        if let Some(present) = self.mapped() {
            let page = self.page_size();
            let (first, end) = (off / page, (off + len).div_ceil(page));
            return Ok(present
                .get(first as usize..end as usize)
                .is_none_or(|p| p.iter().any(|&b| b)));
        }
        if let Some((f, base)) = &self.file {
            if crate::sys::seek::may_hold_data(f, base + off, len)? {
                return Ok(true);
            }
            if self.shared {
                return Ok(false);
            }
        }
        let Some(pm) = &self.pagemap else {
            return Ok(true);
        };
        let start = self.hold.host_addr() as u64 + off;
        // One PAGEMAP_SCAN (Linux 6.7) stops at the first page present or swapped out;
        // a kernel without it gets the pagemap read below.
        let anyof = crate::sys::PAGE_IS_PRESENT | crate::sys::PAGE_IS_SWAPPED;
        let end = (start + len).div_ceil(self.base_page) * self.base_page;
        if let Ok(any) = crate::sys::pagemap_any(pm, start, end, anyof) {
            return Ok(any);
        }
        let first = start / self.base_page;
        let pages = len.div_ceil(self.base_page) as usize;
        let mut buf = vec![0u8; pages * 8];
        pm.read_exact_at(&mut buf, first * 8)?;
        Ok(buf.chunks_exact(8).any(|e| {
            let v = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
            v & (PM_PRESENT | PM_SWAPPED) != 0
        }))
    }

    /// Copies `buf.len()` bytes of the memory at `off` out. Shared memory is read
    /// through its file (a hole reads as zeros without allocating a page, a huge page
    /// included); other memory through the mapping.
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.file {
            Some((f, base)) if self.shared => f.read_exact_at(buf, base + off),
            _ => self.hold.read_at(off as usize, buf),
        }
    }

    /// Reads `len` bytes of `file` at `file_off` straight into the memory at `off`
    /// (one kernel copy, through the mapping, so the pages are allocated where the
    /// backend's policy places them), showing each `scratch`-sized piece to `seen` as it
    /// lands. Returns the bytes read: fewer than `len` where the file ends.
    pub(crate) fn read_from(
        &self,
        off: u64,
        len: u64,
        file: &File,
        file_off: u64,
        scratch: &mut [u8],
        seen: impl FnMut(&[u8]),
    ) -> io::Result<u64> {
        let map = &self.hold.0.mapped.map;
        let n = map.read_from_file(
            off as usize,
            len as usize,
            file.as_fd(),
            file_off,
            scratch,
            seen,
        )?;
        Ok(n as u64)
    }

    /// Copies `data` into the memory at `off`, through the mapping, so the pages are
    /// allocated where the backend's policy places them.
    pub(crate) fn write(&self, off: u64, data: &[u8]) -> io::Result<()> {
        self.hold.write_at(off as usize, data)
    }

    /// Makes `[off, off+len)` read as zeros, freeing its pages where the kernel can:
    /// MADV_REMOVE on shared memory (a hole punched in its file), MADV_DONTNEED on
    /// private anonymous memory; anything else (a private file mapping, whose dropped
    /// pages would read the file again, a file system that cannot punch holes) is
    /// written with zeros.
    pub(crate) fn clear(&self, off: u64, len: u64) -> io::Result<()> {
        let page = self.page_size();
        if off.is_multiple_of(page) && len.is_multiple_of(page) {
            let map = &self.hold.0.mapped.map;
            let (o, l) = (off as usize, len as usize);
            let freed = if self.hold.is_shared() {
                map.madvise(o, l, libc::MADV_REMOVE)
            } else if self.file.is_none() {
                map.madvise(o, l, libc::MADV_DONTNEED)
            } else {
                Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
            };
            if freed.is_ok() {
                return Ok(());
            }
        }
        self.hold.fill(off as usize, len as usize, 0)
    }
}

/// For shared hugetlbfs memory: which of its huge pages are present, if this process's
/// page tables know every page of the file. They know the pages faulted through this
/// mapping only (a page another mapping or process faulted is in the file but not
/// here), so the pagemap alone cannot say a page was never written. The file's
/// allocated blocks (hugetlbfs counts each huge page in `st_blocks`) can: when as many
/// pages of the mapping are present as the file holds, none is anywhere else, and the
/// pages not present are holes. Otherwise (or if the file changed while the pages were
/// counted) `None`: every page is read, a hole reading as zeros without allocating.
///
/// One pagemap entry per huge page (its first base page): hugetlb maps a huge page
/// whole, so that entry is the page's.
fn mapped_pages(
    hold: &InUse,
    f: &File,
    pm: &File,
    base_page: u64,
) -> io::Result<Option<Vec<bool>>> {
    use std::os::unix::fs::MetadataExt;
    let page = hold.page_size();
    let before = f.metadata()?.blocks();
    let addr = hold.host_addr() as u64;
    let pages = hold.len() as u64 / page;
    let present = match present_runs(pm, addr, pages * page, page) {
        Some(p) => p,
        None => {
            let mut present = Vec::with_capacity(pages as usize);
            let mut entry = [0u8; 8];
            for p in 0..pages {
                pm.read_exact_at(&mut entry, (addr + p * page) / base_page * 8)?;
                present.push(u64::from_le_bytes(entry) & PM_PRESENT != 0);
            }
            present
        }
    };
    let after = f.metadata()?.blocks();
    let in_file = before.saturating_mul(512) / page;
    let here = present.iter().filter(|&&p| p).count() as u64;
    Ok((before == after && here == in_file).then_some(present))
}

/// Which `page`-byte pages of [addr, addr+len) are present, from PAGEMAP_SCAN's runs of
/// present pages (a few ioctls instead of a pagemap read per page: 4096 reads for 8 GiB
/// of 2 MiB pages took 16 ms); None where the kernel has no PAGEMAP_SCAN.
fn present_runs(pm: &File, addr: u64, len: u64, page: u64) -> Option<Vec<bool>> {
    let mut present = vec![false; (len / page) as usize];
    let mut runs = vec![crate::sys::PageRegion::default(); 512];
    let (mut at, end) = (addr, addr + len);
    while at < end {
        let is = crate::sys::PAGE_IS_PRESENT;
        let (n, walked) = crate::sys::pagemap_scan(pm, at, end, is, is, &mut runs).ok()?;
        for r in &runs[..n] {
            let (first, last) = ((r.start - addr) / page, (r.end - addr).div_ceil(page));
            for p in present.get_mut(first as usize..last as usize)? {
                *p = true;
            }
        }
        if walked <= at {
            return None;
        }
        at = walked;
    }
    Some(present)
}

/// The shmem file behind shared anonymous memory, through /proc/self/map_files (which
/// the kernel opens for CAP_SYS_ADMIN only): with it, holes are found by SEEK_DATA and
/// swapped-out pages still count as data. Without it, the memory is read whole.
fn shmem_of(hold: &InUse) -> Option<(File, u64)> {
    let (start, end) = (hold.host_addr(), hold.host_addr() + hold.len());
    let f = File::open(format!("/proc/self/map_files/{start:x}-{end:x}")).ok()?;
    // The whole mapping is one VMA from offset 0 of its shmem file only if the file is
    // exactly as long as the mapping.
    (f.metadata().ok()?.len() == hold.len() as u64).then_some((f, 0))
}
