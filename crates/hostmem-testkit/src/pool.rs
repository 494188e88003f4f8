//! Huge page pools as the kernel shows them in sysfs, and a guard that sets pools for
//! a test and puts them back when dropped (also when the test panics or errs).
//!
//! The guard holds a lock of the process while alive: two guards of one process never
//! interleave their changes, so each puts back what it found. Read and written here
//! straight from sysfs, not through hostmem's `HugePool`, which is under test.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// The 2 MiB page size.
pub const HUGE_2M: u64 = 2 << 20;

/// One huge page pool: a page size, host-wide or of one NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub page_size: u64,
    pub node: Option<u32>,
}

/// A pool's counters, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub free: u64,
    /// Host-wide pools only (0 for a node's).
    pub reserved: u64,
    pub surplus: u64,
}

impl Counts {
    /// Free pages no mapping has reserved.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

impl Pool {
    /// The host-wide pool of `page_size` pages.
    pub fn host(page_size: u64) -> Pool {
        Pool {
            page_size,
            node: None,
        }
    }

    /// Node `node`'s pool of `page_size` pages.
    pub fn node(page_size: u64, node: u32) -> Pool {
        Pool {
            page_size,
            node: Some(node),
        }
    }

    fn dir(&self) -> PathBuf {
        let kb = self.page_size / 1024;
        match self.node {
            None => PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB")),
            Some(n) => PathBuf::from(format!(
                "/sys/devices/system/node/node{n}/hugepages/hugepages-{kb}kB"
            )),
        }
    }

    fn file(&self, name: &str) -> Result<u64, String> {
        let path = self.dir().join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e} (no such huge page pool?)", path.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{}: {text:?}: {e}", path.display()))
    }

    /// The counters as the kernel shows them now.
    pub fn counts(&self) -> Result<Counts, String> {
        Ok(Counts {
            total: self.file("nr_hugepages")?,
            free: self.file("free_hugepages")?,
            reserved: self.file("resv_hugepages").unwrap_or(0),
            surplus: self.file("surplus_hugepages")?,
        })
    }

    /// Asks the kernel for `pages` pages in the pool; what it made (fewer when it finds
    /// no contiguous memory).
    pub fn set_total(&self, pages: u64) -> Result<u64, String> {
        let path = self.dir().join("nr_hugepages");
        std::fs::write(&path, pages.to_string()).map_err(|e| {
            format!(
                "writing {pages} to {}: {e} (this needs root)",
                path.display()
            )
        })?;
        self.file("nr_hugepages")
    }
}

/// One pool changer at a time in this process.
static POOLS: Mutex<()> = Mutex::new(());

/// Pools set for a while: each is put back to the size it had when first set through
/// this guard, in reverse order, when the guard is dropped or [`PoolGuard::restore`]d.
pub struct PoolGuard {
    saved: Vec<(Pool, u64)>,
    _lock: MutexGuard<'static, ()>,
}

impl PoolGuard {
    /// A guard that has set nothing yet; waits for any other guard of the process to
    /// be dropped first.
    pub fn new() -> PoolGuard {
        PoolGuard {
            saved: Vec::new(),
            _lock: POOLS.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn remember(&mut self, pool: Pool) -> Result<Counts, String> {
        let now = pool.counts()?;
        if !self.saved.iter().any(|(p, _)| *p == pool) {
            self.saved.push((pool, now.total));
        }
        Ok(now)
    }

    /// Sets `pool` to `pages` pages; the number the kernel made. When it made fewer, the
    /// page cache is dropped and memory compacted once and the kernel asked again.
    pub fn set(&mut self, pool: Pool, pages: u64) -> Result<u64, String> {
        self.remember(pool)?;
        let got = pool.set_total(pages)?;
        if got >= pages {
            return Ok(got);
        }
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
        pool.set_total(pages)
    }

    /// Sets `pool` to exactly `pages` pages, or fails saying what the kernel made.
    pub fn set_exactly(&mut self, pool: Pool, pages: u64) -> Result<(), String> {
        let got = self.set(pool, pages)?;
        if got == pages {
            Ok(())
        } else {
            Err(format!(
                "asked for {pages} huge pages of {} KiB (node {:?}), the kernel made {got}",
                pool.page_size / 1024,
                pool.node
            ))
        }
    }

    /// Grows `pool` by `pages` pages over what it has now, exactly.
    pub fn raise(&mut self, pool: Pool, pages: u64) -> Result<(), String> {
        let total = self.remember(pool)?.total;
        self.set_exactly(pool, total + pages)
    }

    /// Grows `pool` until it has at least `pages` pages available (nothing when it has
    /// them already).
    pub fn reserve(&mut self, pool: Pool, pages: u64) -> Result<(), String> {
        let now = self.remember(pool)?;
        if now.available() >= pages {
            return Ok(());
        }
        self.set_exactly(pool, now.total + pages - now.available())
    }

    /// Puts every pool back now; an `Err` says which the kernel did not take back.
    pub fn restore(mut self) -> Result<(), String> {
        self.put_back()
    }

    fn put_back(&mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        while let Some((pool, total)) = self.saved.pop() {
            match pool.set_total(total) {
                Ok(got) if got == total => {}
                Ok(got) => failed.push(format!("{pool:?}: {got} pages, was {total}")),
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "huge page pools not put back: {}",
                failed.join("; ")
            ))
        }
    }
}

impl Default for PoolGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Err(e) = self.put_back() {
            eprintln!("{e}");
        }
    }
}
