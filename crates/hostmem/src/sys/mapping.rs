//! [`RawMapping`]: an address range this process mapped and owns, with the protection
//! it was mapped with, reached only by volatile copies.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{advice, last_err, page_size};

const MAP_SHARED_VALIDATE: i32 = 3;
const MAP_SYNC: i32 = 0x80000;

/// An address range this process mapped and owns; unmapped on drop.
///
/// Contents are reached only by volatile copies (`read_at`, `write_at`, `fill`), never as
/// Rust references: the memory is shared with guests, other mappings of the same fd and
/// the kernel, so no reference could honour Rust's aliasing rules, and volatile accesses
/// (as vm-memory makes them) keep the compiler from assuming nobody else writes it.
///
/// A copy first asks the kernel to fault the range in (MADV_POPULATE_READ/WRITE), which
/// reports a missing huge page or a full file system as an error where a plain access
/// would raise SIGBUS. What stays outside our control, as vm-memory documents for its
/// regions: another process truncating a shared file between that check and the copy.
#[derive(Debug)]
pub(crate) struct RawMapping {
    addr: usize,
    len: usize,
    /// Mapped PROT_WRITE: writes to a read-only mapping are refused, not SIGSEGV.
    writable: bool,
    /// MAP_PRIVATE|MAP_ANONYMOUS: faults can only fail by OOM, never SIGBUS.
    private_anon: bool,
}

/// How to map: the flags QEMU's `qemu_ram_mmap` chooses between.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MapOptions {
    pub shared: bool,
    pub noreserve: bool,
    pub readonly: bool,
    /// MAP_SYNC (DAX files, `pmem=on`): fails with EOPNOTSUPP where the file is not DAX.
    pub sync: bool,
    /// Start address alignment in bytes (power of two); 0 = page size.
    pub align: usize,
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the memory is mapped read-only",
    )
}

/// Copies `len` bytes with volatile accesses, a machine word at a time where source and
/// destination share their alignment.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the two ranges
/// must not overlap.
unsafe fn copy_volatile(dst: *mut u8, src: *const u8, len: usize) {
    const W: usize = std::mem::size_of::<u64>();
    let mut i = 0;
    if (dst as usize ^ src as usize).is_multiple_of(W) {
        while i < len && !(dst as usize + i).is_multiple_of(W) {
            // SAFETY: i < len, inside both ranges (the caller's promise).
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + W <= len {
            // SAFETY: [i, i+W) lies inside both ranges and both addresses are aligned.
            unsafe {
                (dst.add(i) as *mut u64).write_volatile((src.add(i) as *const u64).read_volatile())
            };
            i += W;
        }
    }
    while i < len {
        // SAFETY: i < len, inside both ranges.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

/// Whether this kernel has MADV_POPULATE (5.14+), probed once on a scratch page: a
/// kernel without it answers EINVAL.
fn kernel_populates() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        !matches!(super::probe_populate_write(), Err(e) if e.raw_os_error() == Some(libc::EINVAL))
    })
}

impl RawMapping {
    /// Maps `len` bytes (whole pages) of anonymous memory, or of `fd` from `offset`, starting at an
    /// address aligned to `opts.align` (so THP and huge pages can line up).
    pub fn map(
        len: usize,
        fd: Option<&OwnedFd>,
        offset: u64,
        opts: MapOptions,
    ) -> io::Result<Self> {
        let page = page_size();
        let align = opts.align.max(page);
        // A length that is not whole pages would leave the tail of the last page mapped
        // but outside the range we own (and its slack unmappable): callers round first.
        if len == 0 || !len.is_multiple_of(page) || !align.is_power_of_two() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
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
        Ok(RawMapping {
            addr: start,
            len,
            writable: !opts.readonly,
            private_anon: fd.is_none() && !opts.shared,
        })
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory was mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub(super) fn range_ok(&self, off: usize, len: usize) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EFAULT)),
        }
    }

    /// madvise over a sub-range. Advice values that discard contents (REMOVE) are fine
    /// here because no Rust reference into the mapping ever exists.
    pub fn madvise(&self, off: usize, len: usize, advice: i32) -> io::Result<()> {
        self.range_ok(off, len)?;
        // SAFETY: the range lies within our own mapping; madvise cannot unmap it, and no
        // Rust reference into it exists whose contents an advice could change.
        super::check(unsafe {
            libc::madvise((self.addr + off) as *mut libc::c_void, len, advice)
        })?;
        Ok(())
    }

    /// Faults in `[off, off+len)` writable (or readable) without writing data: the
    /// kernel reports failures (no huge pages, no memory) as errors instead of SIGBUS.
    pub fn populate(&self, off: usize, len: usize, write: bool) -> io::Result<()> {
        if write && !self.writable {
            return Err(read_only());
        }
        let adv = if write {
            advice::POPULATE_WRITE
        } else {
            advice::POPULATE_READ
        };
        self.madvise(off, len, adv)
    }

    /// Makes sure `[off, off+len)` can be accessed without a signal: populated through
    /// the kernel (an error instead of SIGBUS), or, on kernels without MADV_POPULATE
    /// (before 5.14), only private anonymous memory, which cannot raise SIGBUS.
    fn ready(&self, off: usize, len: usize, write: bool) -> io::Result<()> {
        self.range_ok(off, len)?;
        if len == 0 {
            return Ok(());
        }
        let page = page_size();
        let lo = off / page * page;
        let hi = (off + len).div_ceil(page) * page;
        match self.populate(lo, hi.min(self.len) - lo, write) {
            // EINVAL is also the answer for a PROT_NONE range (an unplugged block,
            // `plug.rs`), where a copy would SIGSEGV: fall back only where the kernel
            // lacks MADV_POPULATE.
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && self.private_anon
                    && !kernel_populates() =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Preallocation for kernels without MADV_POPULATE_WRITE: reads and writes back one
    /// byte per page. Refused unless the memory is private anonymous and writable, the
    /// only memory whose faults cannot raise SIGBUS.
    pub fn touch_pages(&self, off: usize, len: usize, page: usize) -> io::Result<()> {
        self.range_ok(off, len)?;
        if !self.writable {
            return Err(read_only());
        }
        if !self.private_anon {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "touching shared or file memory could raise SIGBUS",
            ));
        }
        let mut p = self.addr + off;
        let end = p + len;
        while p < end {
            // SAFETY: p is inside our writable private anonymous mapping (checked above);
            // rewriting the byte just read keeps contents intact, volatile keeps the
            // compiler from dropping it, and such a fault can only fail by OOM.
            unsafe {
                let b = std::ptr::read_volatile(p as *const u8);
                std::ptr::write_volatile(p as *mut u8, b);
            }
            p += page.max(1);
        }
        Ok(())
    }

    /// Copies bytes out of the mapping.
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.ready(off, buf.len(), false)?;
        // SAFETY: source range checked to lie in our mapping and faulted in readable;
        // destination is a distinct Rust buffer.
        unsafe { copy_volatile(buf.as_mut_ptr(), (self.addr + off) as *const u8, buf.len()) };
        Ok(())
    }

    /// Copies bytes into the mapping; refused on a read-only mapping.
    pub fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.ready(off, data.len(), true)?;
        // SAFETY: destination range checked to lie in our writable mapping and faulted in
        // writable; no Rust reference aliases it; the source is a distinct Rust buffer.
        unsafe { copy_volatile((self.addr + off) as *mut u8, data.as_ptr(), data.len()) };
        Ok(())
    }

    /// Reads `len` bytes of `file` from `file_off` straight into the mapping at `off`:
    /// `pread` into the memory, so the kernel copies the page cache into it once (no
    /// bounce buffer), a piece of `scratch.len()` bytes at a time. After each piece
    /// lands, while it is still in the CPU's cache, it is copied into `scratch` and shown
    /// to `seen` (a restore hashes it there); an empty `scratch` skips that. Returns the
    /// bytes read: fewer than `len` where the file ends. Refused on a read-only mapping.
    #[cfg(feature = "json")]
    pub fn read_from_file(
        &self,
        off: usize,
        len: usize,
        file: std::os::fd::BorrowedFd<'_>,
        file_off: u64,
        scratch: &mut [u8],
        mut seen: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        if !self.writable {
            return Err(read_only());
        }
        self.ready(off, len, true)?;
        let step = if scratch.is_empty() {
            len
        } else {
            scratch.len()
        };
        let mut got = 0usize;
        while got < len {
            let want = step.min(len - got);
            let at = libc::off_t::try_from(file_off + got as u64)
                .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            // SAFETY: [off+got, off+got+want) lies in our writable mapping, faulted in
            // writable above (range checked by `ready`); the kernel writes it as any
            // other writer of the memory would, and no Rust reference aliases it.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    (self.addr + off + got) as *mut libc::c_void,
                    want,
                    at,
                )
            };
            if n < 0 {
                let e = last_err();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n == 0 {
                break;
            }
            if !scratch.is_empty() {
                // SAFETY: the source lies in our mapping, faulted in and just written
                // by the kernel; the destination is a distinct Rust buffer of at least
                // n <= step bytes. A bulk copy, as vm-memory makes every copy over a
                // word: the bytes are only copied, never kept as a reference.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (self.addr + off + got) as *const u8,
                        scratch.as_mut_ptr(),
                        n,
                    )
                };
                seen(&scratch[..n]);
            }
            got += n;
        }
        Ok(got)
    }

    /// Sets a sub-range to `byte`; refused on a read-only mapping.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.ready(off, len, true)?;
        let word = [byte; 8];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(word.len());
            // SAFETY: [off+done, off+done+n) lies in our writable, faulted-in mapping.
            unsafe { copy_volatile((self.addr + off + done) as *mut u8, word.as_ptr(), n) };
            done += n;
        }
        Ok(())
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: we own exactly this range and nothing refers into it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
