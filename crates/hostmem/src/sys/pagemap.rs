//! Two ioctls on another process's /proc files that read its page tables or VMA list
//! for one address range only, instead of walking every page of every mapping as
//! smaps and numa_maps do: `PAGEMAP_SCAN` on /proc/PID/pagemap (Linux 6.7) and
//! `PROCMAP_QUERY` on /proc/PID/maps (Linux 6.11). Older kernels answer ENOTTY.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use super::check;

/// `PAGE_IS_PRESENT` category of PAGEMAP_SCAN.
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: the page is in swap.
#[cfg(feature = "json")]
pub(crate) const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `PAGE_IS_HUGE`: a PMD-mapped THP or a hugetlb page.
pub(crate) const PAGE_IS_HUGE: u64 = 1 << 6;

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`: a run of pages with the same categories.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `_IOWR(type, nr, size)`.
const fn iowr(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((3 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64) as libc::c_ulong
}

const PAGEMAP_SCAN: libc::c_ulong = iowr(b'f', 16, std::mem::size_of::<PmScanArg>());
const PROCMAP_QUERY: libc::c_ulong = iowr(b'f', 17, std::mem::size_of::<ProcmapQuery>());

/// `PAGEMAP_SCAN` over [start, end) of the process whose pagemap `fd` is: the runs of
/// pages having every category of `mask`, with their `return_mask` categories, into
/// `out`. Returns how many runs were written and the address the walk stopped at
/// (`end`, or earlier when `out` filled up: call again from there).
///
/// Safe for any arguments: the kernel writes at most `out.len()` runs into `out` and
/// only looks the addresses up in the other process's page tables.
pub(crate) fn pagemap_scan(
    fd: impl AsFd,
    start: u64,
    end: u64,
    mask: u64,
    return_mask: u64,
    out: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    scan(fd, start, end, mask, 0, return_mask, out)
}

/// Whether any page of [start, end) has one of the categories of `anyof` (e.g. present
/// or swapped): one `PAGEMAP_SCAN` that stops at the first such page, so an empty
/// range costs a walk of its page tables and no per-page copy (a pagemap read copies 8
/// bytes for every page: 16 MiB for 8 GiB of 4 KiB pages).
#[cfg(feature = "json")]
pub(crate) fn pagemap_any(fd: impl AsFd, start: u64, end: u64, anyof: u64) -> io::Result<bool> {
    let mut out = [PageRegion::default(); 1];
    let (n, _) = scan(fd, start, end, 0, anyof, anyof, &mut out)?;
    Ok(n > 0)
}

fn scan(
    fd: impl AsFd,
    start: u64,
    end: u64,
    mask: u64,
    anyof: u64,
    return_mask: u64,
    out: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: mask,
        category_anyof_mask: anyof,
        return_mask,
        ..Default::default()
    };
    // SAFETY: arg is a pm_scan_arg of the size it states; vec points at out, which has
    // room for vec_len page_region entries, the most the kernel writes.
    let n = check(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            PAGEMAP_SCAN,
            &mut arg as *mut PmScanArg,
        )
    })?;
    Ok((n as usize, arg.walk_end))
}

/// `struct procmap_query` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `PROCMAP_QUERY_COVERING_OR_NEXT_VMA`.
const COVERING_OR_NEXT_VMA: u64 = 0x10;

/// One VMA as PROCMAP_QUERY describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmaInfo {
    pub start: u64,
    pub end: u64,
    /// The kernel's page size for the VMA (hugetlb: the huge page size).
    pub page_size: u64,
}

/// The VMA covering `addr`, or the next one above it, of the process whose
/// /proc/PID/maps `fd` is; None when there is none (ENOENT).
///
/// Safe for any arguments: no name or build id buffer is passed (sizes 0), so the
/// kernel writes only into the query struct.
pub(crate) fn procmap_query(fd: impl AsFd, addr: u64) -> io::Result<Option<VmaInfo>> {
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: COVERING_OR_NEXT_VMA,
        query_addr: addr,
        ..Default::default()
    };
    // SAFETY: q is a procmap_query of the size it states, with no name or build id
    // buffers (their sizes are 0): the kernel writes only into q.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            PROCMAP_QUERY,
            &mut q as *mut ProcmapQuery,
        )
    };
    match check(r) {
        Ok(_) => Ok(Some(VmaInfo {
            start: q.vma_start,
            end: q.vma_end,
            page_size: q.vma_page_size,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // From include/uapi/linux/fs.h: PAGEMAP_SCAN is _IOWR('f', 16, 96 bytes),
        // PROCMAP_QUERY _IOWR('f', 17, 104 bytes).
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(PROCMAP_QUERY, 0xc068_6611);
    }
}
