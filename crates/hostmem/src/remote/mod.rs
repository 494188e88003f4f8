//! Another process's memory, seen and moved from outside (a running QEMU's guest RAM,
//! for instance): [`Process`] is a process by id, [`RemoteRegion`] an address range of
//! it. The view is the same kernel-verified [`KernelView`] a backend of our own gets,
//! read from /proc/PID/smaps and numa_maps; placement and moves go through
//! move_pages(2) with the process's id. The addresses are the other process's: to us
//! they are only numbers the kernel looks up, never memory we touch.
//!
//! Permissions are the kernel's ([`error::READ_PERMISSION`], [`error::MOVE_PERMISSION`]):
//! whoever may read the process's maps may see the view; moving needs ptrace read
//! access too, and MPOL_MF_MOVE_ALL (pages shared with other processes) CAP_SYS_NICE.

use std::fs;

use crate::inspect::{self, KernelView, Placement};

pub mod error;
mod pass;
mod plan;
mod rebind;
mod report;

pub use error::{page_status_reason, RemoteError};
pub use rebind::{node_free_bytes, RebindOptions};
pub use report::RemoteRebindReport;

/// Pages asked about per move_pages(2) call: 64 MiB of 4 KiB pages.
pub(crate) const PAGES_PER_CALL: usize = 16384;

/// A process whose memory we look at by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pid: u32,
}

impl Process {
    /// The process `pid`, if it exists now.
    pub fn new(pid: u32) -> Result<Process, RemoteError> {
        if pid == 0 || fs::metadata(format!("/proc/{pid}")).is_err() {
            return Err(RemoteError::NoProcess { pid });
        }
        Ok(Process { pid })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process still exists (a zombie counts as gone: its memory is).
    pub fn is_alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => {
                // The state follows the command name's closing parenthesis.
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.trim().chars().next());
                !matches!(state, Some('Z') | Some('X') | None)
            }
            Err(_) => false,
        }
    }

    /// The range [start, start+len) of the process, refused unless the process's
    /// mappings cover all of it (/proc/PID/maps).
    pub fn region(&self, start: u64, len: u64) -> Result<RemoteRegion, RemoteError> {
        let what = format!("reading /proc/{}/maps", self.pid);
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|e| RemoteError::from_io(self.pid, &what, &e, error::READ_PERMISSION))?;
        if maps.is_empty() {
            // A process that is exiting (or a kernel thread) has no mappings left.
            return Err(RemoteError::NoProcess { pid: self.pid });
        }
        if let Some(hole) = first_hole(&maps, start, start.saturating_add(len)) {
            return Err(RemoteError::NotMapped {
                pid: self.pid,
                start,
                len,
                hole,
            });
        }
        Ok(RemoteRegion {
            pid: self.pid,
            start,
            len,
        })
    }
}

/// The first address of [start, end) that no line of a maps file covers.
fn first_hole(maps: &str, start: u64, end: u64) -> Option<u64> {
    let mut ranges: Vec<(u64, u64)> = maps.lines().filter_map(inspect::parse_range).collect();
    ranges.sort_unstable();
    let mut at = start;
    for (a, b) in ranges {
        if at >= end {
            break;
        }
        if a > at {
            break;
        }
        at = at.max(b);
    }
    (at < end || start >= end).then_some(at)
}

/// An address range of another process (checked to be mapped when it was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRegion {
    pid: u32,
    start: u64,
    len: u64,
}

impl RemoteRegion {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// First address, in the process's address space.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty (never, for a region made by [`Process::region`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the kernel says about the range now: VmFlags, resident, THP and hugetlb
    /// bytes (smaps), pages per node and the policy (numa_maps).
    pub fn inspect(&self) -> Result<KernelView, RemoteError> {
        let v = inspect::inspect_process_range(self.pid, self.start, self.len).map_err(|e| {
            let what = format!("reading /proc/{}/smaps", self.pid);
            RemoteError::from_io(self.pid, &what, &e, error::READ_PERMISSION)
        })?;
        if v.vmas == 0 {
            // The process exited, or unmapped the range, since the region was made.
            return Err(match Process::new(self.pid) {
                Ok(p) if p.is_alive() => RemoteError::NotMapped {
                    pid: self.pid,
                    start: self.start,
                    len: self.len,
                    hole: self.start,
                },
                _ => RemoteError::NoProcess { pid: self.pid },
            });
        }
        Ok(v)
    }

    /// Where each page of the range is, page by page (move_pages(2) without nodes),
    /// asked a window of pages at a time.
    pub fn placement(&self, page_size: u64) -> Result<Placement, RemoteError> {
        let page = page_size.max(1);
        let pages = self.len / page;
        let mut p = Placement::default();
        let mut first = 0;
        while first < pages {
            let n = (PAGES_PER_CALL as u64).min(pages - first);
            let addrs: Vec<u64> = (first..first + n).map(|i| self.start + i * page).collect();
            for s in self.page_status(&addrs)? {
                match s {
                    s if s >= 0 => *p.per_node.entry(s as u32).or_default() += 1,
                    s if s == -libc::ENOENT => p.absent += 1,
                    s => *p.other.entry(-s).or_default() += 1,
                }
            }
            first += n;
        }
        Ok(p)
    }

    /// move_pages(2) status of each address, asked in batches.
    pub(crate) fn page_status(&self, addrs: &[u64]) -> Result<Vec<i32>, RemoteError> {
        let mut out = Vec::with_capacity(addrs.len());
        for batch in addrs.chunks(PAGES_PER_CALL) {
            let s = crate::sys::move_pages_of(self.pid, batch, None, false).map_err(|e| {
                RemoteError::from_io(self.pid, "move_pages", &e, error::MOVE_PERMISSION)
            })?;
            out.extend(s);
        }
        Ok(out)
    }
}

/// Test memory of this process: `pages` base pages in a VMA of their own (a VmFlag no
/// other mapping has, so none merges into it: smaps counts whole VMAs), the pages in
/// `touched` faulted in, and the region over all of it. Keep the mapping alive.
#[cfg(test)]
pub(crate) fn own_pages(pages: usize, touched: &[usize]) -> (crate::sys::RawMapping, RemoteRegion) {
    let page = crate::sys::page_size();
    let map = crate::sys::RawMapping::map(pages * page, None, 0, Default::default()).unwrap();
    map.madvise(0, map.len(), libc::MADV_DONTDUMP).unwrap();
    for &i in touched {
        map.write_at(i * page, &[1]).unwrap();
    }
    let region = Process::new(std::process::id())
        .unwrap()
        .region(map.addr() as u64, map.len() as u64)
        .unwrap();
    (map, region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_in_the_maps_are_found() {
        let maps = "1000-3000 rw-p 00000000 00:00 0\n\
                    3000-5000 rw-p 00000000 00:00 0\n\
                    8000-9000 r--p 00000000 00:00 0 [vdso]\n";
        assert_eq!(first_hole(maps, 0x1000, 0x4000), None);
        assert_eq!(
            first_hole(maps, 0x2000, 0x5000),
            None,
            "two VMAs back to back"
        );
        assert_eq!(first_hole(maps, 0x4000, 0x9000), Some(0x5000));
        assert_eq!(first_hole(maps, 0x0, 0x2000), Some(0x0));
        assert_eq!(first_hole(maps, 0x8800, 0xa000), Some(0x9000));
        assert_eq!(
            first_hole(maps, 0x1000, 0x1000),
            Some(0x1000),
            "empty range"
        );
    }

    #[test]
    fn our_own_memory_reads_the_same_as_from_outside() {
        let me = Process::new(std::process::id()).unwrap();
        let page = crate::sys::page_size() as u64;
        let (_map, r) = own_pages(8, &[0, 1, 2]);
        let v = r.inspect().unwrap();
        assert_eq!(v.resident, 3 * page);
        let p = r.placement(page).unwrap();
        assert_eq!((p.present(), p.absent), (3, 5), "{p:?}");
        assert!(matches!(
            me.region(0x1000, 0x1000),
            Err(RemoteError::NotMapped { hole: 0x1000, .. })
        ));
        assert!(matches!(
            Process::new(0),
            Err(RemoteError::NoProcess { pid: 0 })
        ));
    }

    /// A child that has exited and is not reaped yet: a zombie, /proc/PID still there.
    fn zombie() -> std::process::Child {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        for _ in 0..500 {
            let s = fs::read_to_string(&stat).unwrap();
            if s.rsplit_once(')').unwrap().1.trim().starts_with('Z') {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let status = child.wait();
        panic!(
            "child {} did not become a zombie in 5 s ({status:?})",
            child.id()
        );
    }

    #[test]
    fn a_region_reports_the_pid_and_range_it_was_made_for() {
        let me = Process::new(std::process::id()).unwrap();
        assert_eq!(me.pid(), std::process::id());
        let page = crate::sys::page_size();
        let map = crate::sys::RawMapping::map(3 * page, None, 0, Default::default()).unwrap();
        let r = me
            .region(map.addr() as u64 + page as u64, 2 * page as u64)
            .unwrap();
        assert_eq!(r.pid(), std::process::id());
        assert_eq!(r.start(), map.addr() as u64 + page as u64);
        assert_eq!(r.len(), 2 * page as u64);
        assert!(!r.is_empty());
        let none = RemoteRegion { len: 0, ..r };
        assert!(none.is_empty());
    }

    #[test]
    fn a_running_process_is_alive_and_a_zombie_or_missing_one_is_not() {
        assert!(Process::new(std::process::id()).unwrap().is_alive());
        let mut child = zombie();
        let z = Process::new(child.id()).unwrap();
        assert!(!z.is_alive(), "/proc/{}/stat says Z", child.id());
        child.wait().unwrap();
        // Above the kernel's PID_MAX_LIMIT (4 M): no /proc entry can exist.
        assert!(!Process { pid: 1 << 30 }.is_alive());
    }

    #[test]
    fn a_range_unmapped_since_reads_as_not_mapped_while_the_process_lives() {
        // Nothing maps the second page of the address space unless it asks for it
        // (MAP_FIXED); a range unmapped by dropping a mapping could be taken by
        // another test's mmap meanwhile.
        let r = RemoteRegion {
            pid: std::process::id(),
            start: 0x1000,
            len: 0x1000,
        };
        match r.inspect() {
            Err(RemoteError::NotMapped { hole, .. }) => assert_eq!(hole, 0x1000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_zombies_range_reads_as_no_process() {
        let mut child = zombie();
        let r = RemoteRegion {
            pid: child.id(),
            start: 0x1000_0000,
            len: 0x1000,
        };
        let got = r.inspect();
        child.wait().unwrap();
        assert!(
            matches!(got, Err(RemoteError::NoProcess { pid }) if pid == r.pid),
            "{got:?}"
        );
    }

    #[test]
    fn placement_counts_every_page_of_a_range_longer_than_one_call_once() {
        let me = Process::new(std::process::id()).unwrap();
        let page = crate::sys::page_size();
        let pages = PAGES_PER_CALL + 8;
        let opts = crate::sys::MapOptions {
            noreserve: true,
            ..Default::default()
        };
        let map = crate::sys::RawMapping::map(pages * page, None, 0, opts).unwrap();
        map.write_at(0, &[1]).unwrap();
        map.write_at((pages - 1) * page, &[1]).unwrap();
        // A read of an untouched private page maps the shared zero page, which
        // move_pages reports as EFAULT.
        map.read_at(5 * page, &mut [0]).unwrap();
        let r = me.region(map.addr() as u64, map.len() as u64).unwrap();
        let p = r.placement(page as u64).unwrap();
        assert_eq!(p.present(), 2, "{p:?}");
        assert_eq!(p.other, [(libc::EFAULT, 1)].into(), "{p:?}");
        assert_eq!(p.absent, pages as u64 - 3, "{p:?}");
    }
}
