//! Protection and residency of parts of a [`RawMapping`]: what plugging and unplugging
//! blocks of a backend (`plug.rs`) asks of the kernel beyond madvise and fallocate.

use std::io;

use super::{check, page_size, RawMapping};

impl RawMapping {
    /// Makes `[off, off+len)` inaccessible (PROT_NONE), or accessible again with the
    /// protection the mapping was made with. Checked copies (`read_at`, `write_at`,
    /// `fill`) ask MADV_POPULATE first, which the kernel refuses on PROT_NONE, so an
    /// access to a protected range through them is an error, never SIGSEGV.
    pub fn protect(&self, off: usize, len: usize, accessible: bool) -> io::Result<()> {
        self.range_ok(off, len)?;
        let prot = match (accessible, self.is_writable()) {
            (false, _) => libc::PROT_NONE,
            (true, true) => libc::PROT_READ | libc::PROT_WRITE,
            (true, false) => libc::PROT_READ,
        };
        // SAFETY: the range lies in our own mapping (checked); mprotect changes no
        // contents, and no Rust reference into the mapping exists (copies are volatile
        // and check the range with the kernel first).
        check(unsafe { libc::mprotect((self.addr() + off) as *mut libc::c_void, len, prot) })?;
        Ok(())
    }

    /// Which base pages of `[off, off+len)` are resident, as mincore(2) reports them:
    /// for private memory the pages mapped here, for shared memory the pages of the
    /// file or shm object (whoever maps them). `off` is page aligned.
    pub fn resident_pages(&self, off: usize, len: usize) -> io::Result<Vec<bool>> {
        self.range_ok(off, len)?;
        let page = page_size();
        if !off.is_multiple_of(page) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut vec = vec![0u8; len.div_ceil(page)];
        if len == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the range lies in our own mapping; `vec` has one byte per page of it,
        // all the kernel writes.
        check(unsafe {
            libc::mincore(
                (self.addr() + off) as *mut libc::c_void,
                len,
                vec.as_mut_ptr(),
            )
        })?;
        Ok(vec.iter().map(|b| b & 1 != 0).collect())
    }
}
