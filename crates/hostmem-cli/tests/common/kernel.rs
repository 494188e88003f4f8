//! What a test reads itself from the kernel about a range of another process: smaps
//! and numa_maps of /proc/PID over [start, start+len), summed over the VMAs the range
//! touches. Tests compare hostmem's reports with this, or assert on it directly; it
//! shares no code with hostmem's own reader.

use std::collections::BTreeMap;

/// What the test reads itself about [start, start+len) of process `pid`.
#[derive(Debug, Default, PartialEq)]
pub struct Kernel {
    /// Rss, plus hugetlb pages (smaps counts those apart from Rss).
    pub resident: u64,
    /// AnonHugePages + ShmemPmdMapped + FilePmdMapped.
    pub thp: u64,
    /// Private_Hugetlb + Shared_Hugetlb.
    pub hugetlb: u64,
    /// VmFlags of the first VMA of the range.
    pub vmflags: Vec<String>,
    /// numa_maps' N<node>=<pages>, summed over the range's VMAs.
    pub pages_per_node: BTreeMap<String, u64>,
    /// numa_maps' policy of the first VMA of the range.
    pub policy: String,
}

impl Kernel {
    /// Whether the first VMA's VmFlags has `flag` (`mg`, `dd`, ...).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vmflags.iter().any(|f| f == flag)
    }
}

pub fn read_range(pid: u32, start: u64, len: u64) -> Kernel {
    let end = start + len;
    let mut k = Kernel::default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            inside = a < end && b > start;
            continue;
        }
        if !inside {
            continue;
        }
        let (key, val) = line.split_once(':').unwrap();
        let kb = || {
            val.split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        match key {
            "Rss" => k.resident += kb(),
            "AnonHugePages" | "ShmemPmdMapped" | "FilePmdMapped" => k.thp += kb(),
            "Private_Hugetlb" | "Shared_Hugetlb" => {
                k.hugetlb += kb();
                k.resident += kb();
            }
            "VmFlags" if k.vmflags.is_empty() => {
                k.vmflags = val.split_whitespace().map(String::from).collect()
            }
            _ => {}
        }
    }
    let numa = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    for line in numa.lines() {
        let mut w = line.split_whitespace();
        let addr = u64::from_str_radix(w.next().unwrap(), 16).unwrap();
        if addr < start || addr >= end {
            continue;
        }
        let policy = w.next().unwrap().to_string();
        if k.policy.is_empty() {
            k.policy = policy;
        }
        for word in w {
            if let Some((n, p)) = word.strip_prefix('N').and_then(|r| r.split_once('=')) {
                *k.pages_per_node.entry(n.to_string()).or_default() += p.parse::<u64>().unwrap();
            }
        }
    }
    k
}
