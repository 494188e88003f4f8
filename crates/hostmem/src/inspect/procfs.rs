//! The text of /proc/PID/smaps and /proc/PID/numa_maps, folded over one address range.
//! Pure parsing: who reads the files (this process or another one) is the caller's
//! business (`inspect::read_proc`).

use std::collections::BTreeMap;

use super::{MemPolicy, NumaView};
use crate::numa::{KernelMode, NodeSet};

#[derive(Default)]
pub(super) struct Smaps {
    pub vmas: usize,
    pub vmflags: Vec<String>,
    pub size: u64,
    pub resident: u64,
    pub thp: u64,
    pub hugetlb: u64,
    pub page_size: u64,
}

pub(crate) fn parse_range(head: &str) -> Option<(u64, u64)> {
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
pub(super) fn parse_smaps(text: &str, start: u64, end: u64, view: &mut Smaps) {
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

/// One line of numa_maps: a VMA's start, policy, pages per node and page size.
#[derive(Debug, Default)]
pub(super) struct NumaLine {
    pub start: u64,
    /// The policy as printed (`bind:0-1`, `prefer (many):1-2`).
    pub policy: String,
    /// Pages per node, in units of `page_size`.
    pub pages: BTreeMap<u32, u64>,
    /// kernelpagesize_kB in bytes; 0 when the line has none (a VMA with no pages).
    pub page_size: u64,
    /// The `huge` tag: a hugetlb VMA.
    pub hugetlb: bool,
}

/// Reads one numa_maps line; None for a line that does not start with an address.
pub(super) fn parse_numa_line(line: &str) -> Option<NumaLine> {
    let mut words = line.split_whitespace();
    let start = u64::from_str_radix(words.next()?, 16).ok()?;
    let mut out = NumaLine {
        start,
        ..Default::default()
    };
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
    out.policy = policy.join(" ");
    for w in rest.into_iter().chain(words) {
        if w == "huge" {
            out.hugetlb = true;
        } else if let Some(rest) = w.strip_prefix('N') {
            if let Some((n, p)) = rest.split_once('=') {
                if let (Ok(n), Ok(p)) = (n.parse::<u32>(), p.parse::<u64>()) {
                    *out.pages.entry(n).or_default() += p;
                }
            }
        } else if let Some(k) = w.strip_prefix("kernelpagesize_kB=") {
            if let Ok(k) = k.parse::<u64>() {
                out.page_size = k * 1024;
            }
        }
    }
    Some(out)
}

/// The numa_maps lines whose VMA starts inside [start, end).
pub(super) fn numa_lines(text: &str, start: u64, end: u64) -> impl Iterator<Item = NumaLine> + '_ {
    text.lines()
        .filter_map(parse_numa_line)
        .filter(move |l| l.start >= start && l.start < end)
}

/// The numa_maps lines whose VMA starts inside [start, end), summed.
pub(super) fn parse_numa_maps(text: &str, start: u64, end: u64) -> NumaView {
    let mut view = NumaView::default();
    for line in numa_lines(text, start, end) {
        if view.policy.is_empty() {
            view.policy = line.policy;
        }
        for (n, p) in line.pages {
            *view.pages_per_node.entry(n).or_default() += p;
        }
        if line.page_size != 0 {
            view.page_size = line.page_size;
        }
    }
    view
}

/// numa_maps' policy field (`bind:0-1`, `bind=static:2`, `prefer (many):1-2`,
/// `default`, `local`) as a mode and nodes; None for a text this library does not know.
/// The kernel prints the mode name, `=flags` when the policy has mode flags, and
/// `:nodes` when it has nodes.
pub(super) fn parse_policy(text: &str) -> Option<MemPolicy> {
    const MODES: [KernelMode; 7] = [
        KernelMode::Default,
        KernelMode::Preferred,
        KernelMode::Bind,
        KernelMode::Interleave,
        KernelMode::Local,
        KernelMode::PreferredMany,
        KernelMode::WeightedInterleave,
    ];
    let (head, nodes) = text.split_once(':').unwrap_or((text, ""));
    let name = head.split_once('=').map_or(head, |(n, _)| n);
    let mode = MODES.into_iter().find(|m| m.name() == name)?;
    let nodes = if nodes.is_empty() {
        NodeSet::new()
    } else {
        NodeSet::parse(nodes).ok()?
    };
    Some(MemPolicy { mode, nodes })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const SMAPS: &str = "\
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
    fn numa_maps_policy_text_reads_as_mode_and_nodes() {
        let p = |t: &str| parse_policy(t).map(|p| (p.mode, p.nodes.to_string()));
        assert_eq!(p("default"), Some((KernelMode::Default, String::new())));
        assert_eq!(p("bind:0-1"), Some((KernelMode::Bind, "0-1".into())));
        assert_eq!(p("bind=static:2"), Some((KernelMode::Bind, "2".into())));
        assert_eq!(
            p("prefer (many):1-2"),
            Some((KernelMode::PreferredMany, "1-2".into()))
        );
        assert_eq!(
            p("weighted interleave:0,2"),
            Some((KernelMode::WeightedInterleave, "0,2".into()))
        );
        assert_eq!(p("local"), Some((KernelMode::Local, String::new())));
        assert_eq!(p("sideways:1"), None);
        assert_eq!(p("bind:x"), None);
    }
}
