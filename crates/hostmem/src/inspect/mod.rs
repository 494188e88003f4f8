//! What the kernel says about a mapping (README: every claim is read back from the kernel): VmFlags, resident and huge page
//! bytes from /proc/self/smaps, pages per node and policy from /proc/self/numa_maps,
//! and the VMA policy from get_mempolicy. Reports and tests use these, never our own
//! bookkeeping.

use std::collections::BTreeMap;
use std::fs;
use std::io;

use std::fmt;

use crate::numa::{KernelMode, NodeSet};
use crate::sys::RawMapping;

mod estimate;
mod procfs;
mod reading;
mod sample;
mod walk;
pub use estimate::{read_placement, read_placements};
pub(crate) use procfs::parse_range;
use procfs::{parse_numa_maps, parse_policy, parse_smaps, Smaps};
pub use reading::{Bytes, Choice, Fraction, Method, PlacementReading, ReadOptions};

/// A reading the kernel did not give, and why: reports print it instead of a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// What could not be read (`/proc/self/numa_maps`, `/proc/1234/numa_maps`).
    pub what: String,
    /// Why (the errno text).
    pub reason: String,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown ({}: {})", self.what, self.reason)
    }
}

/// Pages per node and the policy, as numa_maps prints them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NumaView {
    /// Pages per node, in units of `page_size`.
    pub pages_per_node: BTreeMap<u32, u64>,
    /// Page size numa_maps counts in.
    pub page_size: u64,
    /// The policy as numa_maps prints it (`bind:0`, `interleave:0-3`, `default`).
    pub policy: String,
}

impl NumaView {
    /// Bytes per node.
    pub fn bytes_per_node(&self) -> BTreeMap<u32, u64> {
        self.pages_per_node
            .iter()
            .map(|(&n, &p)| (n, p * self.page_size))
            .collect()
    }
}

/// The policy of a range as get_mempolicy(MPOL_F_ADDR) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemPolicy {
    /// The kernel's mode.
    pub mode: KernelMode,
    /// The nodes of the mode.
    pub nodes: NodeSet,
}

/// The kernel's view of one address range (summed over the VMAs it spans).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelView {
    /// VMAs covering the range (mbind or madvise on part of a range splits them).
    pub vmas: usize,
    /// VmFlags of the first VMA, two-letter codes (`rd wr mr mw me ac sd hg mg dd`).
    pub vmflags: Vec<String>,
    /// Bytes the VMAs span.
    pub size: u64,
    /// Resident bytes, huge TLB pages included.
    pub resident: u64,
    /// Transparent huge pages (AnonHugePages + ShmemPmdMapped + FilePmdMapped).
    pub thp: u64,
    /// hugetlbfs pages (Private_Hugetlb + Shared_Hugetlb).
    pub hugetlb: u64,
    /// Page size the kernel uses for the mapping (KernelPageSize).
    pub page_size: u64,
    /// Pages per node from numa_maps, or why they are unknown (a kernel without NUMA
    /// has no numa_maps: nothing is made up in its place).
    pub numa: Result<NumaView, Unknown>,
    /// get_mempolicy(MPOL_F_ADDR) at the start of the range, or why it is unknown.
    pub mempolicy: Result<MemPolicy, Unknown>,
}

impl KernelView {
    /// Whether the first VMA has a VmFlags code (`mg`, `dd`, `hg`, ...).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vmflags.iter().any(|f| f == flag)
    }

    /// The kernel's mode for the range; None when get_mempolicy failed.
    pub fn mempolicy_mode(&self) -> Option<KernelMode> {
        self.mempolicy.as_ref().ok().map(|p| p.mode)
    }

    /// The kernel's nodes for the range; None when get_mempolicy failed.
    pub fn mempolicy_nodes(&self) -> Option<&NodeSet> {
        self.mempolicy.as_ref().ok().map(|p| &p.nodes)
    }

    /// The kernel's policy as text (`bind 0-1`), or why it is unknown.
    pub fn mempolicy_text(&self) -> String {
        match &self.mempolicy {
            Ok(p) if p.nodes.is_empty() => p.mode.name().to_string(),
            Ok(p) => format!("{} {}", p.mode.name(), p.nodes),
            Err(u) => u.to_string(),
        }
    }

    /// Bytes per node, from numa_maps; None when numa_maps could not be read.
    pub fn bytes_per_node(&self) -> Option<BTreeMap<u32, u64>> {
        self.numa.as_ref().ok().map(NumaView::bytes_per_node)
    }
}

/// Where a policy reading comes from: get_mempolicy for this process, numa_maps'
/// policy field for another one (the kernel has no get_mempolicy for another process).
enum PolicySource {
    Syscall(io::Result<(i32, Vec<u64>)>),
    NumaMaps,
}

/// The kernel's view of [start, end) from the three readings; a reading that failed is
/// reported as unknown, with its reason. `proc_dir` is `/proc/self` or `/proc/PID`.
fn assemble(
    proc_dir: &str,
    start: u64,
    end: u64,
    smaps: &str,
    numa_maps: io::Result<String>,
    mempolicy: PolicySource,
) -> KernelView {
    let unknown = |what: String, e: io::Error| Unknown {
        what,
        reason: crate::sys::strerror(&e),
    };
    let mut sm = Smaps::default();
    parse_smaps(smaps, start, end, &mut sm);
    let numa = numa_maps
        .map(|text| {
            let mut v = parse_numa_maps(&text, start, end);
            // numa_maps leaves out the page size of a VMA with no pages yet.
            if v.page_size == 0 {
                v.page_size = sm.page_size;
            }
            v
        })
        .map_err(|e| unknown(format!("{proc_dir}/numa_maps"), e));
    let mempolicy = match mempolicy {
        PolicySource::Syscall(r) => r
            .map(|(mode, mask)| MemPolicy {
                mode: KernelMode::from_raw(mode),
                nodes: NodeSet::from_mask(&mask),
            })
            .map_err(|e| unknown("get_mempolicy".into(), e)),
        PolicySource::NumaMaps => match &numa {
            Ok(v) => parse_policy(&v.policy).ok_or_else(|| Unknown {
                what: format!("{proc_dir}/numa_maps policy"),
                reason: format!("unrecognised policy {:?}", v.policy),
            }),
            Err(u) => Err(u.clone()),
        },
    };
    KernelView {
        vmas: sm.vmas,
        vmflags: sm.vmflags,
        size: sm.size,
        resident: sm.resident,
        thp: sm.thp,
        hugetlb: sm.hugetlb,
        page_size: sm.page_size,
        numa,
        mempolicy,
    }
}

/// Reads the kernel's view of a whole mapping now.
pub(crate) fn inspect(map: &RawMapping) -> io::Result<KernelView> {
    inspect_range(map.addr(), map.len())
}

/// smaps and numa_maps of `proc_dir` (`/proc/self`, `/proc/PID`). Both files walk the
/// page tables of every mapping: for 4 GiB of 4 KiB pages each read costs ~40 ms of
/// kernel time, so they are read at the same time.
fn read_maps(proc_dir: &str) -> (io::Result<String>, io::Result<String>) {
    std::thread::scope(|s| {
        let numa = s.spawn(|| fs::read_to_string(format!("{proc_dir}/numa_maps")));
        let smaps = fs::read_to_string(format!("{proc_dir}/smaps"));
        let numa = numa
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("numa_maps reader panicked")));
        (smaps, numa)
    })
}

/// Reads the kernel's view of [start, start+len) of this process now, whatever maps it
/// (a backend another thread is preallocating, a VMM's own memory).
pub fn inspect_range(start: usize, len: usize) -> io::Result<KernelView> {
    let addr = start;
    let start = start as u64;
    let end = start.saturating_add(len as u64);
    let (smaps, numa_maps) = read_maps("/proc/self");
    Ok(assemble(
        "/proc/self",
        start,
        end,
        &smaps?,
        numa_maps,
        PolicySource::Syscall(crate::sys::mempolicy_at(addr)),
    ))
}

/// Reads the kernel's view of [start, start+len) of process `pid` now, from its
/// /proc/PID/smaps and numa_maps. The policy is numa_maps' policy field of the first
/// VMA in the range. Reading them needs ptrace read access to the process
/// (PTRACE_MODE_READ_FSCREDS: same user, or CAP_SYS_PTRACE); without it the error is
/// the kernel's EACCES.
pub fn inspect_process_range(pid: u32, start: u64, len: u64) -> io::Result<KernelView> {
    let dir = format!("/proc/{pid}");
    let (smaps, numa_maps) = read_maps(&dir);
    let end = start.saturating_add(len);
    Ok(assemble(
        &dir,
        start,
        end,
        &smaps?,
        numa_maps,
        PolicySource::NumaMaps,
    ))
}

/// Where the pages of a range are, page by page, as move_pages(2) reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Present pages per node.
    pub per_node: BTreeMap<u32, u64>,
    /// Pages not faulted in (ENOENT).
    pub absent: u64,
    /// Pages the kernel gave another status for (errno → count): EFAULT for the zero
    /// page or a hole, EBUSY for a page being migrated, ...
    pub other: BTreeMap<i32, u64>,
}

impl Placement {
    /// Present pages in all.
    pub fn present(&self) -> u64 {
        self.per_node.values().sum()
    }
}

/// Where each page of a mapping is, page by page (`move_pages`).
pub(crate) fn page_nodes(map: &RawMapping, page_size: u64) -> io::Result<Placement> {
    let offsets: Vec<usize> = (0..map.len() as u64)
        .step_by(page_size as usize)
        .map(|o| o as usize)
        .collect();
    let status = map.node_of_pages(&offsets)?;
    let mut p = Placement::default();
    for s in status {
        match s {
            s if s >= 0 => *p.per_node.entry(s as u32).or_default() += 1,
            s if s == -libc::ENOENT => p.absent += 1,
            s => *p.other.entry(-s).or_default() += 1,
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mpol;
    use procfs::tests::SMAPS;

    #[test]
    fn unreadable_numa_maps_and_policy_are_unknown_not_made_up() {
        let gone = || io::Error::from_raw_os_error(libc::ENOENT);
        let v = assemble(
            "/proc/self",
            0x7f00_0000_0000,
            0x7f00_0040_0000,
            SMAPS,
            Err(gone()),
            PolicySource::Syscall(Err(io::Error::from_raw_os_error(libc::ENOSYS))),
        );
        let numa = v.numa.clone().unwrap_err();
        assert_eq!(numa.what, "/proc/self/numa_maps");
        assert_eq!(numa.reason, "No such file or directory");
        assert_eq!(v.bytes_per_node(), None);
        assert_eq!(v.mempolicy.unwrap_err().what, "get_mempolicy");
        // What could be read still is.
        assert_eq!(v.resident, (2 << 20) + 4096);
    }

    #[test]
    fn the_view_answers_in_the_kernels_words() {
        let (start, end) = (0x7f00_0000_0000, 0x7f00_0040_0000);
        let numa = "7f0000000000 bind:0-1 anon=8 N0=3 N1=5 kernelpagesize_kB=4\n";
        let v = assemble(
            "/proc/self",
            start,
            end,
            SMAPS,
            Ok(numa.into()),
            PolicySource::Syscall(Ok((mpol::BIND, vec![0b11]))),
        );
        assert_eq!(
            v.bytes_per_node(),
            Some([(0, 3 * 4096), (1, 5 * 4096)].into())
        );
        assert!(v.has_flag("mg") && v.has_flag("hg"));
        assert!(!v.has_flag("dd") && !v.has_flag("m"));
        assert_eq!(v.mempolicy_mode(), Some(KernelMode::Bind));
        assert_eq!(v.mempolicy_nodes(), Some(&NodeSet::parse("0-1").unwrap()));
        assert_eq!(v.mempolicy_text(), "bind 0-1");

        let d = assemble(
            "/proc/self",
            start,
            end,
            SMAPS,
            Ok(String::new()),
            PolicySource::Syscall(Ok((mpol::DEFAULT, vec![0]))),
        );
        assert_eq!(d.mempolicy_text(), "default", "no nodes, no list");
        assert_eq!(d.mempolicy_nodes(), Some(&NodeSet::new()));

        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        let u = assemble(
            "/proc/self",
            start,
            end,
            SMAPS,
            Ok(String::new()),
            PolicySource::Syscall(Err(enosys)),
        );
        assert_eq!(u.mempolicy_mode(), None);
        assert_eq!(u.mempolicy_nodes(), None);
        let text = "unknown (get_mempolicy: Function not implemented)";
        assert_eq!(u.mempolicy_text(), text);
        assert_eq!(u.mempolicy.unwrap_err().to_string(), text);
    }

    #[test]
    fn numa_maps_page_size_falls_back_to_smaps_only_when_missing() {
        let (start, end) = (0x7f00_0000_0000, 0x7f00_0040_0000);
        // A VMA with no pages yet: numa_maps prints no kernelpagesize_kB.
        let empty = assemble(
            "/proc/self",
            start,
            end,
            SMAPS,
            Ok("7f0000000000 default\n".into()),
            PolicySource::Syscall(Err(io::Error::from_raw_os_error(libc::ENOSYS))),
        );
        let numa = empty.numa.unwrap();
        assert_eq!(numa.page_size, 4096, "smaps' KernelPageSize");
        assert_eq!(numa.policy, "default");
        let huge = "7f0000000000 bind:0 huge dirty=1 N0=1 kernelpagesize_kB=2048\n";
        let h = assemble(
            "/proc/self",
            start,
            end,
            SMAPS,
            Ok(huge.into()),
            PolicySource::Syscall(Err(io::Error::from_raw_os_error(libc::ENOSYS))),
        );
        assert_eq!(
            h.numa.unwrap().page_size,
            2 << 20,
            "numa_maps' own size kept"
        );
    }

    #[test]
    fn placement_counts_present_absent_and_other_pages_apart() {
        let page = crate::sys::page_size();
        let map = RawMapping::map(4 * page, None, 0, Default::default()).unwrap();
        map.write_at(0, &[1]).unwrap();
        map.write_at(page, &[1]).unwrap();
        let mut b = [0u8];
        map.read_at(2 * page, &mut b).unwrap(); // the shared zero page
        let p = page_nodes(&map, page as u64).unwrap();
        assert_eq!(p.present(), 2, "{p:?}");
        assert_eq!(p.per_node.values().sum::<u64>(), 2, "{p:?}");
        assert_eq!(p.absent, 1, "{p:?}");
        assert_eq!(p.other, [(libc::EFAULT, 1)].into(), "{p:?}");
    }
}
