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

/// `MPOL_MF_MOVE_ALL`: move pages mapped by other processes too (needs CAP_SYS_NICE).
const MF_MOVE_ALL: libc::c_int = 1 << 2;
/// `MPOL_MF_MOVE`: move pages mapped by this process only.
const MF_MOVE: libc::c_int = 1 << 1;

/// `move_pages(2)` on process `pid`: with `nodes`, asks the kernel to move the page at
/// each address to the node at the same index; without, only asks where each page is.
/// Returns one status per address: the node the page is on now, or a negative errno
/// (-ENOENT not present, -EFAULT nothing or the zero page there, -EACCES mapped by
/// several processes and `move_all` unset, -EBUSY busy, -ENOMEM target full).
///
/// Safe for any arguments: the addresses are the other process's and only numbers to
/// us (the kernel looks them up in that process's page tables and never dereferences
/// them here); the buffers are ours and sized from `addrs`. Migration keeps a page's
/// contents, so even when `pid` is this process nothing it holds changes.
pub(crate) fn move_pages_of(
    pid: u32,
    addrs: &[u64],
    nodes: Option<&[i32]>,
    move_all: bool,
) -> io::Result<Vec<i32>> {
    if nodes.is_some_and(|n| n.len() != addrs.len()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let ptrs: Vec<*mut libc::c_void> = addrs
        .iter()
        .map(|&a| a as usize as *mut libc::c_void)
        .collect();
    let mut status = vec![0i32; addrs.len()];
    let nodes_ptr = nodes.map_or(std::ptr::null(), <[i32]>::as_ptr);
    let flags = if move_all { MF_MOVE_ALL } else { MF_MOVE };
    // SAFETY: ptrs, status and (when given) nodes hold addrs.len() entries each, the
    // count passed; the kernel reads ptrs and nodes and writes status only. The
    // addresses in ptrs are looked up in process `pid`'s page tables, never accessed
    // through our own mappings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid,
            addrs.len() as libc::c_ulong,
            ptrs.as_ptr(),
            nodes_ptr,
            status.as_mut_ptr(),
            flags,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(status)
}
