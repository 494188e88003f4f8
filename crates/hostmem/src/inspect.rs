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

/// A reading the kernel did not give, and why: reports print it instead of a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// What could not be read (`/proc/self/numa_maps`).
    pub what: &'static str,
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

#[derive(Default)]
struct Smaps {
    vmas: usize,
    vmflags: Vec<String>,
    size: u64,
    resident: u64,
    thp: u64,
    hugetlb: u64,
    page_size: u64,
}

fn parse_range(head: &str) -> Option<(u64, u64)> {
    let range = head.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn kb(v: &str) -> u64 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Folds the smaps entries overlapping [start, end) into `view`.
fn parse_smaps(text: &str, start: u64, end: u64, view: &mut Smaps) {
    let mut inside = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = matches!(parse_range(line), Some((a, b)) if a < end && b > start);
            if inside {
                view.vmas += 1;
            }
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Size" => view.size += kb(val),
            "Rss" => view.resident += kb(val),
            "AnonHugePages" | "ShmemPmdMapped" | "FilePmdMapped" => view.thp += kb(val),
            "Private_Hugetlb" | "Shared_Hugetlb" => {
                view.hugetlb += kb(val);
                view.resident += kb(val);
            }
            "KernelPageSize" if view.page_size == 0 => view.page_size = kb(val),
            "VmFlags" if view.vmflags.is_empty() => {
                view.vmflags = val.split_whitespace().map(str::to_string).collect();
            }
            _ => {}
        }
    }
}

/// The numa_maps lines whose VMA starts inside [start, end), summed.
fn parse_numa_maps(text: &str, start: u64, end: u64) -> NumaView {
    let mut view = NumaView::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(addr) = words.next().and_then(|a| u64::from_str_radix(a, 16).ok()) else {
            continue;
        };
        if addr < start || addr >= end {
            continue;
        }
        // The policy may hold spaces ("prefer (many):1-2", "weighted interleave:0-1"):
        // it runs up to the first key=value word or mapping tag.
        let mut policy = Vec::new();
        let mut rest = Vec::new();
        for w in words.by_ref() {
            if w.contains('=') || ["heap", "stack", "huge"].contains(&w) {
                rest.push(w);
                break;
            }
            policy.push(w);
        }
        if view.policy.is_empty() {
            view.policy = policy.join(" ");
        }
        for w in rest.into_iter().chain(words) {
            if let Some(rest) = w.strip_prefix('N') {
                if let Some((n, p)) = rest.split_once('=') {
                    if let (Ok(n), Ok(p)) = (n.parse::<u32>(), p.parse::<u64>()) {
                        *view.pages_per_node.entry(n).or_default() += p;
                    }
                }
            } else if let Some(k) = w.strip_prefix("kernelpagesize_kB=") {
                if let Ok(k) = k.parse::<u64>() {
                    view.page_size = k * 1024;
                }
            }
        }
    }
    view
}

/// The kernel's view of [start, end) from the three readings; a reading that failed is
/// reported as unknown, with its reason.
fn assemble(
    start: u64,
    end: u64,
    smaps: &str,
    numa_maps: io::Result<String>,
    mempolicy: io::Result<(i32, Vec<u64>)>,
) -> KernelView {
    let unknown = |what, e: io::Error| Unknown {
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
        .map_err(|e| unknown("/proc/self/numa_maps", e));
    let mempolicy = mempolicy
        .map(|(mode, mask)| MemPolicy {
            mode: KernelMode::from_raw(mode),
            nodes: NodeSet::from_mask(&mask),
        })
        .map_err(|e| unknown("get_mempolicy", e));
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

/// Reads the kernel's view of [start, start+len) of this process now, whatever maps it
/// (a backend another thread is preallocating, a VMM's own memory).
pub fn inspect_range(start: usize, len: usize) -> io::Result<KernelView> {
    let addr = start;
    let start = start as u64;
    let end = start.saturating_add(len as u64);
    // Both files walk the page tables of every mapping: for 4 GiB of 4 KiB pages each
    // read costs ~40 ms of kernel time, so they are read at the same time.
    let (smaps, numa_maps) = std::thread::scope(|s| {
        let numa = s.spawn(|| fs::read_to_string("/proc/self/numa_maps"));
        let smaps = fs::read_to_string("/proc/self/smaps");
        let numa = numa
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("numa_maps reader panicked")));
        (smaps, numa)
    });
    Ok(assemble(
        start,
        end,
        &smaps?,
        numa_maps,
        crate::sys::mempolicy_at(addr),
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

    const SMAPS: &str = "\
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
Size:               2048 kB
KernelPageSize:        4 kB
Rss:                2048 kB
AnonHugePages:      2048 kB
Private_Hugetlb:       0 kB
VmFlags: rd wr mr mw me ac hg mg
7f0000200000-7f0000400000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                   4 kB
VmFlags: rd wr mr mw me ac
7f0000400000-7f0000600000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                2048 kB
VmFlags: rd wr
";

    #[test]
    fn smaps_sums_the_vmas_of_the_range_only() {
        let mut v = Smaps::default();
        parse_smaps(SMAPS, 0x7f00_0000_0000, 0x7f00_0040_0000, &mut v);
        assert_eq!(v.vmas, 2);
        assert_eq!(v.size, 4 << 20);
        assert_eq!(v.resident, (2 << 20) + 4096);
        assert_eq!(v.thp, 2 << 20);
        assert_eq!(v.vmflags.join(" "), "rd wr mr mw me ac hg mg");
    }

    #[test]
    fn numa_maps_pages_per_node() {
        let text = "7f0000000000 bind:0-1 anon=512 dirty=512 N0=256 N1=256 kernelpagesize_kB=4\n\
                    7f0000200000 bind:0-1 anon=2 N1=2 kernelpagesize_kB=4\n\
                    7f0000400000 default anon=9 N0=9 kernelpagesize_kB=4\n";
        let v = parse_numa_maps(text, 0x7f00_0000_0000, 0x7f00_0040_0000);
        assert_eq!(v.policy, "bind:0-1");
        assert_eq!(v.pages_per_node.get(&0), Some(&256));
        assert_eq!(v.pages_per_node.get(&1), Some(&258));
        assert_eq!(v.page_size, 4096);
    }

    #[test]
    fn policies_with_spaces_are_read_whole() {
        let text = "7f0000000000 prefer (many):1-2 anon=4 dirty=4 N1=4 kernelpagesize_kB=4\n\
                    7f0000200000 weighted interleave:0-1 anon=3 N0=2 N1=1 kernelpagesize_kB=4\n";
        let v = parse_numa_maps(text, 0x7f00_0000_0000, 0x7f00_0020_0000);
        assert_eq!(v.policy, "prefer (many):1-2");
        assert_eq!(v.pages_per_node.get(&1), Some(&4));
        let w = parse_numa_maps(text, 0x7f00_0020_0000, 0x7f00_0040_0000);
        assert_eq!(w.policy, "weighted interleave:0-1");
        assert_eq!(w.pages_per_node.values().sum::<u64>(), 3);
    }

    #[test]
    fn unreadable_numa_maps_and_policy_are_unknown_not_made_up() {
        let gone = || io::Error::from_raw_os_error(libc::ENOENT);
        let v = assemble(
            0x7f00_0000_0000,
            0x7f00_0040_0000,
            SMAPS,
            Err(gone()),
            Err(io::Error::from_raw_os_error(libc::ENOSYS)),
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
    fn smaps_counts_hugetlb_pages_as_resident_and_keeps_the_first_page_size() {
        let text = "\
7f0000000000-7f0000600000 rw-s 00000000 00:0f 7 /memfd:m (deleted)
Size:               6144 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
Private_Hugetlb:    4096 kB
Shared_Hugetlb:     2048 kB
VmFlags: rd wr sh mr mw me ms de ht
7f0000600000-7f0000608000 rw-p 00000000 00:00 0
Size:                 32 kB
KernelPageSize:        4 kB
Rss:                   8 kB
Shared_Hugetlb:        0 kB
VmFlags: rd wr mr mw me ac
";
        let mut v = Smaps::default();
        parse_smaps(text, 0x7f00_0000_0000, 0x7f00_0060_8000, &mut v);
        assert_eq!(v.vmas, 2);
        assert_eq!(v.hugetlb, 6 << 20);
        assert_eq!(v.resident, (6 << 20) + 8192, "hugetlb pages are not in Rss");
        assert_eq!(v.page_size, 2 << 20, "the first VMA's KernelPageSize");
        assert_eq!(v.vmflags.join(" "), "rd wr sh mr mw me ms de ht");
    }

    #[test]
    fn the_view_answers_in_the_kernels_words() {
        let (start, end) = (0x7f00_0000_0000, 0x7f00_0040_0000);
        let numa = "7f0000000000 bind:0-1 anon=8 N0=3 N1=5 kernelpagesize_kB=4\n";
        let v = assemble(
            start,
            end,
            SMAPS,
            Ok(numa.into()),
            Ok((mpol::BIND, vec![0b11])),
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
            start,
            end,
            SMAPS,
            Ok(String::new()),
            Ok((mpol::DEFAULT, vec![0])),
        );
        assert_eq!(d.mempolicy_text(), "default", "no nodes, no list");
        assert_eq!(d.mempolicy_nodes(), Some(&NodeSet::new()));

        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        let u = assemble(start, end, SMAPS, Ok(String::new()), Err(enosys));
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
            start,
            end,
            SMAPS,
            Ok("7f0000000000 default\n".into()),
            Err(io::Error::from_raw_os_error(libc::ENOSYS)),
        );
        let numa = empty.numa.unwrap();
        assert_eq!(numa.page_size, 4096, "smaps' KernelPageSize");
        assert_eq!(numa.policy, "default");
        let huge = "7f0000000000 bind:0 huge dirty=1 N0=1 kernelpagesize_kB=2048\n";
        let h = assemble(
            start,
            end,
            SMAPS,
            Ok(huge.into()),
            Err(io::Error::from_raw_os_error(libc::ENOSYS)),
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
