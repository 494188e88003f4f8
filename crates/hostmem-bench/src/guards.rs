//! Host settings the bench changes for a while and puts back when dropped: the 2 MiB
//! huge page pool (for the hugetlb case) and THP for this process and its children (for
//! the 4 KiB case). Guards, so that an error or Ctrl-C, which end the bench by error,
//! restore them too.

use hostmem::numa::HugePool;
use rustix::thread::disable_transparent_huge_pages;

use crate::plan::HUGE_2M;

/// Sets the 2 MiB pool big enough for one backend and puts the old size back when
/// dropped: at the end, on an error, and after Ctrl-C (which ends the bench by error).
pub struct HugePagesGuard {
    restore: Option<u64>,
}

impl HugePagesGuard {
    pub fn reserve(pages: u64) -> Result<Self, String> {
        let pool = HugePool::read(HUGE_2M, None)
            .ok_or("this host has no 2 MiB huge page pool (/sys/kernel/mm/hugepages)")?;
        if pool.available() >= pages {
            return Ok(Self { restore: None });
        }
        let want = pool.total + pages - pool.available();
        let guard = Self {
            restore: Some(pool.total),
        };
        let got = HugePool::set_total(HUGE_2M, None, want)
            .map_err(|e| format!("cannot set nr_hugepages to {want}: {e}"))?;
        if got < want {
            return Err(format!(
                "asked the kernel for {want} huge pages of 2 MiB, it made {got}"
            ));
        }
        Ok(guard)
    }
}

impl Drop for HugePagesGuard {
    fn drop(&mut self) {
        if let Some(total) = self.restore.take() {
            if let Err(e) = HugePool::set_total(HUGE_2M, None, total) {
                eprintln!("hostmem-bench: could not restore nr_hugepages to {total}: {e}");
            }
        }
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
