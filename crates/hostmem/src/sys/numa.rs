//! NUMA system calls on a mapping: mbind, get_mempolicy, move_pages.

use std::io;

use super::{last_err, mpol, RawMapping};

impl RawMapping {
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
                self.addr() + off,
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

    /// Which node each page holding the given offsets is on (`move_pages(2)` query):
    /// a node id, or a negative errno (-ENOENT: not present).
    pub fn node_of_pages(&self, offsets: &[usize]) -> io::Result<Vec<i32>> {
        let mut out = Vec::with_capacity(offsets.len());
        for batch in offsets.chunks(16384) {
            let mut ptrs = Vec::with_capacity(batch.len());
            for &o in batch {
                self.range_ok(o, 1)?;
                ptrs.push((self.addr() + o) as *mut libc::c_void);
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

/// The policy of the VMA holding `addr` in this process: (mode without flags, node mask
/// words). Safe for any address: the kernel only looks the address up (EFAULT where
/// nothing is mapped).
pub(crate) fn mempolicy_at(addr: usize) -> io::Result<(i32, Vec<u64>)> {
    let mut mode: libc::c_int = 0;
    let mut mask = vec![0u64; 1024 / 64];
    // SAFETY: mode and mask are writable buffers; maxnode matches mask's bit count; the
    // address is only looked up, never accessed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            (mask.len() * 64) as u64,
            addr,
            mpol::F_ADDR,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok((mode & !mpol::MODE_FLAGS, mask))
}
