//! Every system call hostmem makes that needs `unsafe`, and nowhere else.
//!
//! The rest of the crate is safe Rust: it sees memory only as [`RawMapping`], which owns
//! its address range, never hands out references into guest RAM (guests and other
//! processes may write it at any time), and unmaps on drop.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `madvise` advice values; spelled out because older libc releases lack the newer ones.
pub mod advice {
    pub const REMOVE: i32 = 9;
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
pub mod mpol {
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
pub mod memfd {
    pub const CLOEXEC: u32 = 1;
    pub const ALLOW_SEALING: u32 = 2;
    pub const HUGETLB: u32 = 4;
    pub const HUGE_SHIFT: u32 = 26;
    pub const SEAL_SEAL: i32 = 1;
    pub const SEAL_SHRINK: i32 = 2;
    pub const SEAL_GROW: i32 = 4;
    pub const SEAL_WRITE: i32 = 8;
    pub const F_ADD_SEALS: i32 = 1033;
    pub const F_GET_SEALS: i32 = 1034;
}

pub const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
const MAP_SHARED_VALIDATE: i32 = 3;
const MAP_SYNC: i32 = 0x80000;

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
pub fn strerror(err: &io::Error) -> String {
    let s = err.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Base page size of the host.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant; no memory is touched.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as usize
    } else {
        4096
    }
}

/// The running kernel's release string (`6.18.44-...`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it and we read it only on success.
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

/// An address range this process mapped and owns; unmapped on drop.
///
/// Contents are reached only by copying (`read_at`, `write_at`, `fill`) through raw
/// pointers, never as Rust references: the memory is shared with guests, other mappings
/// of the same fd and the kernel, so no reference could honour Rust's aliasing rules.
#[derive(Debug)]
pub struct RawMapping {
    addr: usize,
    len: usize,
}

/// How to map: the flags QEMU's `qemu_ram_mmap` chooses between.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOptions {
    pub shared: bool,
    pub noreserve: bool,
    pub readonly: bool,
    /// MAP_SYNC (DAX files, `pmem=on`): fails with EOPNOTSUPP where the file is not DAX.
    pub sync: bool,
    /// Start address alignment in bytes (power of two); 0 = page size.
    pub align: usize,
}

impl RawMapping {
    /// Maps `len` bytes of anonymous memory, or of `fd` from `offset`, starting at an
    /// address aligned to `opts.align` (so THP and huge pages can line up).
    pub fn map(
        len: usize,
        fd: Option<&OwnedFd>,
        offset: u64,
        opts: MapOptions,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let align = opts.align.max(page_size());
        // Reserve len + align of address space with no access, then place the real
        // mapping at an aligned address inside it and give the slack back.
        let reserve_len = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh PROT_NONE anonymous reservation; the kernel picks the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(last_err());
        }
        let base = base as usize;
        let start = (base + align - 1) & !(align - 1);
        let prot = if opts.readonly {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let mut flags = libc::MAP_FIXED;
        flags |= if opts.sync {
            MAP_SHARED_VALIDATE | MAP_SYNC
        } else if opts.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if opts.noreserve {
            flags |= libc::MAP_NORESERVE;
        }
        let raw_fd = match fd {
            Some(f) => f.as_raw_fd(),
            None => {
                flags |= libc::MAP_ANONYMOUS;
                -1
            }
        };
        // SAFETY: MAP_FIXED over [start, start+len), which lies inside the reservation we
        // own and nothing else uses; it replaces only our own PROT_NONE pages.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                prot,
                flags,
                raw_fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_err();
            // SAFETY: unmaps exactly the reservation made above.
            unsafe { libc::munmap(base as *mut libc::c_void, reserve_len) };
            return Err(e);
        }
        let head = start - base;
        let tail = reserve_len - head - len;
        // SAFETY: the head and tail slack are parts of our reservation outside the mapping.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        Ok(RawMapping { addr: start, len })
    }

    pub fn addr(&self) -> usize {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range_ok(&self, off: usize, len: usize) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EFAULT)),
        }
    }

    /// madvise over a sub-range. Advice values that discard contents (REMOVE) are fine
    /// here because no Rust reference into the mapping ever exists.
    pub fn madvise(&self, off: usize, len: usize, advice: i32) -> io::Result<()> {
        self.range_ok(off, len)?;
        // SAFETY: the range lies within our own mapping; madvise cannot unmap it.
        check(unsafe { libc::madvise((self.addr + off) as *mut libc::c_void, len, advice) })?;
        Ok(())
    }

    /// Faults in `[off, off+len)` writable (or readable) without writing data: the
    /// kernel reports failures (no huge pages, no memory) as errors instead of SIGBUS.
    pub fn populate(&self, off: usize, len: usize, write: bool) -> io::Result<()> {
        let adv = if write {
            advice::POPULATE_WRITE
        } else {
            advice::POPULATE_READ
        };
        self.madvise(off, len, adv)
    }

    /// Preallocation for kernels without MADV_POPULATE_WRITE: reads and writes back one
    /// byte per page. Callers must only use it where a fault cannot raise SIGBUS
    /// (private anonymous memory, not hugetlb or file-backed).
    pub fn touch_pages(&self, off: usize, len: usize, page: usize) -> io::Result<()> {
        self.range_ok(off, len)?;
        let mut p = self.addr + off;
        let end = p + len;
        while p < end {
            // SAFETY: p is inside our writable mapping; rewriting the byte just read
            // keeps contents intact, volatile keeps the compiler from dropping it.
            unsafe {
                let b = std::ptr::read_volatile(p as *const u8);
                std::ptr::write_volatile(p as *mut u8, b);
            }
            p += page;
        }
        Ok(())
    }

    /// Copies bytes out of the mapping.
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.range_ok(off, buf.len())?;
        // SAFETY: source range checked to lie in our mapping; destination is a distinct
        // Rust buffer. Concurrent writers can only change the bytes we copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.addr + off) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies bytes into the mapping (must be mapped writable).
    pub fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.range_ok(off, data.len())?;
        // SAFETY: destination range checked to lie in our mapping, which no Rust
        // reference aliases; the caller maps it writable before writing.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.addr + off) as *mut u8, data.len())
        };
        Ok(())
    }

    /// memset over a sub-range: the zeroing-bandwidth reference for benchmarks.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> io::Result<()> {
        self.range_ok(off, len)?;
        // SAFETY: range checked to lie in our writable mapping; no references alias it.
        unsafe { std::ptr::write_bytes((self.addr + off) as *mut u8, byte, len) };
        Ok(())
    }

    /// Applies a NUMA memory policy to a sub-range (`mbind(2)`).
    pub fn mbind(
        &self,
        off: usize,
        len: usize,
        mode: i32,
        mask: &[u64],
        maxnode: u64,
        flags: u32,
    ) -> io::Result<()> {
        self.range_ok(off, len)?;
        let mask_ptr = if mask.is_empty() {
            std::ptr::null()
        } else {
            mask.as_ptr()
        };
        // The kernel reads (maxnode - 1) bits from the mask; never let it read past it.
        let maxnode = maxnode.min(mask.len() as u64 * 64 + 1);
        // SAFETY: mbind reads at most maxnode-1 bits from mask, which holds that many.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.addr + off,
                len,
                mode as libc::c_long,
                mask_ptr,
                maxnode,
                flags as libc::c_long,
            )
        };
        if r < 0 {
            Err(last_err())
        } else {
            Ok(())
        }
    }

    /// The policy of the VMA holding `off`: (mode without flags, node mask words).
    pub fn mempolicy_at(&self, off: usize) -> io::Result<(i32, Vec<u64>)> {
        self.range_ok(off, 1)?;
        let mut mode: libc::c_int = 0;
        let mut mask = vec![0u64; 1024 / 64];
        // SAFETY: mode and mask are writable buffers; maxnode matches mask's bit count.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                mask.as_mut_ptr(),
                (mask.len() * 64) as u64,
                self.addr + off,
                mpol::F_ADDR,
            )
        };
        if r < 0 {
            return Err(last_err());
        }
        Ok((mode & !mpol::MODE_FLAGS, mask))
    }

    /// Which node each page holding the given offsets is on (`move_pages(2)` query):
    /// a node id, or a negative errno (-ENOENT: not present).
    pub fn node_of_pages(&self, offsets: &[usize]) -> io::Result<Vec<i32>> {
        let mut out = Vec::with_capacity(offsets.len());
        for batch in offsets.chunks(16384) {
            let mut ptrs = Vec::with_capacity(batch.len());
            for &o in batch {
                self.range_ok(o, 1)?;
                ptrs.push((self.addr + o) as *mut libc::c_void);
            }
            let mut status = vec![0i32; batch.len()];
            // SAFETY: ptrs and status have batch.len() entries; with nodes == NULL the
            // kernel only reports placement, it moves nothing.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_move_pages,
                    0,
                    batch.len() as libc::c_ulong,
                    ptrs.as_ptr(),
                    std::ptr::null::<i32>(),
                    status.as_mut_ptr(),
                    0,
                )
            };
            if r < 0 {
                return Err(last_err());
            }
            out.extend_from_slice(&status);
        }
        Ok(out)
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: we own exactly this range and nothing refers into it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `memfd_create(2)`.
pub fn memfd_create(name: &str, flags: u32) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid C string; on success we own the returned descriptor.
    let fd = check(unsafe { libc::memfd_create(c.as_ptr(), flags) })?;
    // SAFETY: fd is a fresh descriptor no one else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds file seals (`F_ADD_SEALS`).
pub fn add_seals(fd: &OwnedFd, seals: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), memfd::F_ADD_SEALS, seals) })?;
    Ok(())
}

/// Reads file seals (`F_GET_SEALS`) of any descriptor.
pub fn get_seals(fd: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: fcntl query on a valid descriptor.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), memfd::F_GET_SEALS) })
}

/// Punches a hole (discard data, keep size): `fallocate(PUNCH_HOLE|KEEP_SIZE)`.
pub fn punch_hole(fd: &OwnedFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory passed.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

/// What statfs says about a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsInfo {
    pub magic: i64,
    pub block_size: u64,
    /// Bytes an unprivileged writer could still use.
    pub avail_bytes: u64,
}

/// statfs(2) of the file system holding `path`.
pub fn statfs(path: &Path) -> io::Result<FsInfo> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid path string; statfs is plain data filled by the kernel and
    // read only on success.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        check(libc::statfs(c.as_ptr(), &mut s))?;
        Ok(FsInfo {
            magic: s.f_type as i64,
            block_size: s.f_bsize as u64,
            avail_bytes: (s.f_bavail as u64).saturating_mul(s.f_bsize as u64),
        })
    }
}

/// CPUs this thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Turns transparent huge pages off (or back on) for this process and for every child
/// it starts afterwards (`prctl(PR_SET_THP_DISABLE)` is inherited across fork and kept
/// across execve). Benchmarks use it to measure 4 KiB pages of memory that hostmem and
/// QEMU both advise MADV_HUGEPAGE.
pub fn set_thp_disabled(disabled: bool) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; it flips a flag of this process's mm
    // and touches no memory of ours.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            libc::c_ulong::from(disabled),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Pins the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; we only set bits below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        check(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments; returns a CPU number or -1.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as usize)
}

/// vm-memory regions over memory hostmem already mapped.
#[cfg(feature = "vm-memory")]
pub mod vmm {
    use vm_memory::bitmap::Bitmap;
    use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
    use vm_memory::FileOffset;

    use super::RawMapping;

    /// An MmapRegion over `map` that does not own (or unmap) it. `bitmap` must keep
    /// `map` alive as long as the region exists: hostmem passes the backend's
    /// in-use hold, which owns the mapping through an Arc.
    pub fn borrowed_region<B: Bitmap>(
        map: &RawMapping,
        bitmap: B,
        file_offset: Option<FileOffset>,
        shared: bool,
        writable: bool,
        hugetlbfs: bool,
    ) -> Result<MmapRegion<B>, vm_memory::mmap::MmapRegionError> {
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let mut b = MmapRegionBuilder::new_with_bitmap(map.len(), bitmap)
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugetlbfs);
        if let Some(fo) = file_offset {
            b = b.with_file_offset(fo);
        }
        // SAFETY: [addr, addr+len) is a live mapping of this process; the bitmap holds
        // the Arc that owns it, so it stays mapped for the region's whole life, and the
        // region never unmaps it (it is built as not owned).
        unsafe { b.with_raw_mmap_pointer(map.addr() as *mut u8) }.build()
    }
}

/// Runs `f` with the process umask set to `mask`, then puts the old umask back.
///
/// For files that must never exist with wider permissions than asked for, such as a
/// monitor socket created by `bind` (which cannot take a mode). The umask is
/// process-wide: call this only while no other thread creates files.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail and
    // touches no memory.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let r = f();
    // SAFETY: as above; restores the mask read before.
    unsafe { libc::umask(old) };
    r
}
