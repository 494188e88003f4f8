//! Every system call hostmem makes that needs `unsafe`, and nowhere else.
//!
//! This module is private to the crate (`pub(crate)`): the rest of the library is safe
//! Rust and sees guest memory only as [`RawMapping`], which owns its address range,
//! knows whether it may be written, never hands out references into it (guests and other
//! processes may write it at any time) and unmaps on drop. Each safe function here can be
//! called with any arguments without breaking memory safety; what can only be safe by a
//! caller's promise is an `unsafe fn` with a `# Safety` section.

mod blocks;
mod fd;
#[cfg(feature = "kvm")]
pub(crate) mod kvm;
mod mapping;
mod numa;
mod pagemap;
mod probe;
mod promise;
#[cfg(feature = "json")]
pub(crate) mod scm;
pub(crate) mod seek;
mod thread;
#[cfg(feature = "json")]
pub(crate) mod uffd;
#[cfg(feature = "vm-memory")]
pub(crate) mod vmm;

use std::io;

pub(crate) use fd::{add_seals, memfd_create, punch_hole, shm_create_unlinked, statfs, FsInfo};
pub(crate) use mapping::{MapOptions, RawMapping};
pub(crate) use numa::{mempolicy_at, move_pages_of};
#[cfg(feature = "json")]
pub(crate) use pagemap::{pagemap_any, PAGE_IS_SWAPPED};
pub(crate) use pagemap::{
    pagemap_scan, procmap_query, PageRegion, VmaInfo, PAGE_IS_HUGE, PAGE_IS_PRESENT,
};
pub(crate) use probe::{probe_mempolicy, probe_populate_write};
pub use promise::FileSizePromise;
pub(crate) use thread::{
    allowed_cpus, current_cpu, gettid, pin_current_thread, set_thread_affinity, thread_affinity,
};
#[cfg(feature = "json")]
pub(crate) use thread::{set_current_thread_share, CpuShare};

/// `madvise` advice values; spelled out because older libc releases lack the newer ones.
pub(crate) mod advice {
    pub const DONTFORK: i32 = 10;
    pub const MERGEABLE: i32 = 12;
    pub const UNMERGEABLE: i32 = 13;
    pub const HUGEPAGE: i32 = 14;
    pub const DONTDUMP: i32 = 16;
    pub const DODUMP: i32 = 17;
    pub const POPULATE_READ: i32 = 22;
    pub const POPULATE_WRITE: i32 = 23;
}

/// Memory policy modes and flags of `mbind(2)` / `get_mempolicy(2)`.
pub(crate) mod mpol {
    pub const DEFAULT: i32 = 0;
    pub const PREFERRED: i32 = 1;
    pub const BIND: i32 = 2;
    pub const INTERLEAVE: i32 = 3;
    pub const LOCAL: i32 = 4;
    pub const PREFERRED_MANY: i32 = 5;
    pub const WEIGHTED_INTERLEAVE: i32 = 6;
    pub const MF_STRICT: u32 = 1;
    pub const MF_MOVE: u32 = 2;
    pub const F_ADDR: u64 = 2;
    /// Mode flags the kernel may OR into the mode it reports.
    pub const MODE_FLAGS: i32 = (1 << 15) | (1 << 14) | (1 << 13);
}

/// memfd flags and seals.
pub(crate) mod memfd {
    pub const CLOEXEC: u32 = 1;
    pub const ALLOW_SEALING: u32 = 2;
    pub const HUGETLB: u32 = 4;
    pub const HUGE_SHIFT: u32 = 26;
    pub const SEAL_SEAL: i32 = 1;
    pub const SEAL_SHRINK: i32 = 2;
    pub const SEAL_GROW: i32 = 4;
    pub const F_ADD_SEALS: i32 = 1033;
}

/// statfs magic of hugetlbfs.
pub(crate) const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// statfs magic of tmpfs (and of shm, memfd's internal mount).
pub(crate) const TMPFS_MAGIC: i64 = 0x0102_1994;

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(last_err())
    } else {
        Ok(ret)
    }
}

/// The kernel's text for an errno, without Rust's " (os error N)" suffix, so messages
/// read like QEMU's (`Invalid argument`, `No such file or directory`).
pub(crate) fn strerror(err: &io::Error) -> String {
    let s = err.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The same error again (io::Error is not Clone): the errno for an OS error, else its
/// kind and text. For errors kept as a source and also shown.
pub(crate) fn copy_io_error(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

/// Base page size of the host.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf reads a constant; no memory is touched.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as usize
    } else {
        4096
    }
}

/// The running kernel's release string (`6.18.44-...`).
pub(crate) fn kernel_release() -> String {
    // SAFETY: utsname is plain data, valid when zeroed; uname fills it and we read it
    // only on success, where the kernel has NUL-terminated `release`.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}
