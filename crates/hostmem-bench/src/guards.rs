//! Host settings the bench changes for a while and puts back when dropped: the 2 MiB
//! huge page pool (for the hugetlb case) and THP for this process and its children (for
//! the 4 KiB case). Guards, so that an error or Ctrl-C, which end the bench by error,
//! restore them too.

use hostmem_testkit::pool::{Pool, PoolGuard};
use rustix::thread::disable_transparent_huge_pages;

use crate::plan::HUGE_2M;

/// Grows the 2 MiB pool until one backend's pages are available and puts the old size
/// back when dropped: at the end, on an error, and after Ctrl-C (which ends the bench
/// by error). hostmem-testkit's pool guard, shared with the tests.
pub struct HugePagesGuard {
    _pool: PoolGuard,
}

impl HugePagesGuard {
    pub fn reserve(pages: u64) -> Result<Self, String> {
        let mut guard = PoolGuard::new();
        guard.reserve(Pool::host(HUGE_2M), pages)?;
        Ok(Self { _pool: guard })
    }

    /// Grows the pool again if fewer than `pages` are available now: other people's
    /// tests on this host set and put back the same pool, and one that puts back the
    /// size it found can take away pages this guard added. The size put back at the
    /// end is still the one this guard found first.
    pub fn top_up(&mut self, pages: u64) -> Result<(), String> {
        self._pool.reserve(Pool::host(HUGE_2M), pages)
    }
}

/// THP off for this process and its children while alive (the 4 KiB case): the flag
/// belongs to the process's mm, is inherited across fork and kept across execve.
pub struct NoThp;

impl NoThp {
    pub fn new(on: bool) -> Result<Option<NoThp>, String> {
        if !on {
            return Ok(None);
        }
        disable_transparent_huge_pages(true)
            .map_err(|e| format!("prctl(PR_SET_THP_DISABLE): {e}"))?;
        Ok(Some(NoThp))
    }
}

impl Drop for NoThp {
    fn drop(&mut self) {
        let _ = disable_transparent_huge_pages(false);
    }
}
