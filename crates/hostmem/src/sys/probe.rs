//! Kernel feature probes: each makes its own one-page scratch mapping, asks the kernel
//! on it, and unmaps it again. Nothing outside the scratch page is touched, so any
//! argument is safe; what the kernel answers is the feature's presence, not a guess
//! from the version string (distributions backport features, and configs leave some
//! out).

use std::io;

use super::{advice, mempolicy_at, page_size, MapOptions, RawMapping};

/// A fresh page of private anonymous memory, unmapped on drop.
fn scratch_page() -> io::Result<RawMapping> {
    RawMapping::map(page_size(), None, 0, MapOptions::default())
}

/// Whether `madvise(MADV_POPULATE_WRITE)` works (Linux 5.14+): tried on a scratch page.
/// A kernel without it answers EINVAL.
pub(crate) fn probe_populate_write() -> io::Result<()> {
    let m = scratch_page()?;
    m.madvise(0, m.len(), advice::POPULATE_WRITE)
}

/// Sets the memory policy `mode` on a scratch page with `mbind(2)` — on `node` alone, or
/// with no nodes when `node` is None (the modes that take none: default, local) — and
/// reads it back with `get_mempolicy(2)`: the mode the kernel reports (without mode
/// flags), or the error of the call that failed (EINVAL: a mode this kernel lacks, or
/// a node it does not allow).
pub(crate) fn probe_mempolicy(mode: i32, node: Option<u32>) -> io::Result<i32> {
    let m = scratch_page()?;
    let (mask, maxnode) = match node {
        Some(n) => {
            let mut mask = vec![0u64; n as usize / 64 + 1];
            mask[n as usize / 64] |= 1 << (n % 64);
            // The kernel drops the last bit of maxnode: highest node + 2.
            (mask, u64::from(n) + 2)
        }
        None => (Vec::new(), 0),
    };
    m.mbind(0, m.len(), mode, &mask, maxnode, 0)?;
    let (got, _) = mempolicy_at(m.addr())?;
    Ok(got)
}
