//! The host as sysfs describes it: nodes, their CPUs and memory, huge page pools, THP,
//! KSM, interleave weights, and which kernel features a backend can rely on.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use std::sync::OnceLock;

use super::{KernelMode, NodeSet, Policy};
use crate::sys;

const NODE_DIR: &str = "/sys/devices/system/node";
const HUGEPAGES_DIR: &str = "/sys/kernel/mm/hugepages";

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

fn read_nodes(name: &str) -> NodeSet {
    read_trim(Path::new(NODE_DIR).join(name))
        .and_then(|s| NodeSet::parse(&s).ok())
        .unwrap_or_default()
}

/// Parses `6.18.44-fc` into (6, 18).
pub fn parse_kernel_version(release: &str) -> (u32, u32) {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    parse_kernel_version(&sys::kernel_release())
}

/// One huge page pool: pages of one size, host-wide or on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePool {
    /// Bytes per page, from the `hugepages-<N>kB` directory name.
    pub page_size: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`); some may be reserved already.
    pub free: u64,
    /// Pages promised to existing mappings but not yet faulted (host-wide pools only).
    pub reserved: u64,
    /// Pages allocated past `nr_hugepages` under overcommit (`surplus_hugepages`); 0 when
    /// the file cannot be read.
    pub surplus: u64,
}

impl HugePool {
    fn dir(page_size: u64, node: Option<u32>) -> PathBuf {
        let leaf = format!("hugepages-{}kB", page_size / 1024);
        match node {
            Some(n) => Path::new(NODE_DIR).join(format!("node{n}/hugepages/{leaf}")),
            None => Path::new(HUGEPAGES_DIR).join(leaf),
        }
    }

    /// Reads the pool of `page_size` pages, host-wide or of one node.
    pub fn read(page_size: u64, node: Option<u32>) -> Option<HugePool> {
        let d = Self::dir(page_size, node);
        Some(HugePool {
            page_size,
            total: read_u64(d.join("nr_hugepages"))?,
            free: read_u64(d.join("free_hugepages"))?,
            reserved: read_u64(d.join("resv_hugepages")).unwrap_or(0),
            surplus: read_u64(d.join("surplus_hugepages")).unwrap_or(0),
        })
    }

    /// Pages that a new mapping can still get.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }

    /// Sets the pool size (root only); returns what the kernel actually made.
    pub fn set_total(page_size: u64, node: Option<u32>, pages: u64) -> std::io::Result<u64> {
        let f = Self::dir(page_size, node).join("nr_hugepages");
        fs::write(&f, pages.to_string())?;
        Ok(read_u64(&f).unwrap_or(0))
    }
}

/// Huge page sizes the host offers, smallest first.
pub fn huge_page_sizes() -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(HUGEPAGES_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(kb * 1024)
        })
        .collect();
    v.sort_unstable();
    v
}

/// The default huge page size (`Hugepagesize` in /proc/meminfo).
pub fn default_huge_page_size() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One online node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node number, as in `/sys/devices/system/node/node<id>`.
    pub id: u32,
    /// The node's CPUs (`node<id>/cpulist`); empty for a node without CPUs or when the
    /// file cannot be read.
    pub cpus: Vec<usize>,
    /// Bytes of memory on the node (`MemTotal` in `node<id>/meminfo`); 0 when unreadable.
    pub mem_total: u64,
    /// Bytes free on the node (`MemFree` in `node<id>/meminfo`); 0 when unreadable.
    pub mem_free: u64,
    /// The node's huge page pools (`node<id>/hugepages`), one per size the host offers,
    /// smallest first.
    pub huge_pools: Vec<HugePool>,
}

/// Parses a CPU list (`0-3,8`).
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            out.extend(a..=b);
        }
    }
    out
}

impl NodeInfo {
    fn read(id: u32, sizes: &[u64]) -> NodeInfo {
        let dir = Path::new(NODE_DIR).join(format!("node{id}"));
        let cpus = read_trim(dir.join("cpulist"))
            .map(|s| parse_cpu_list(&s))
            .unwrap_or_default();
        let mut mem_total = 0;
        let mut mem_free = 0;
        if let Ok(text) = fs::read_to_string(dir.join("meminfo")) {
            for line in text.lines() {
                let mut f = line.split_whitespace().skip(2);
                let (key, val) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok()));
                match (key, val) {
                    (Some("MemTotal:"), Some(v)) => mem_total = v * 1024,
                    (Some("MemFree:"), Some(v)) => mem_free = v * 1024,
                    _ => {}
                }
            }
        }
        let huge_pools = sizes
            .iter()
            .filter_map(|&s| HugePool::read(s, Some(id)))
            .collect();
        NodeInfo {
            id,
            cpus,
            mem_total,
            mem_free,
            huge_pools,
        }
    }

    /// The node's pool of `page_size`-byte pages; None when the host has no such size or
    /// the node's pool files cannot be read.
    pub fn pool(&self, page_size: u64) -> Option<&HugePool> {
        self.huge_pools.iter().find(|p| p.page_size == page_size)
    }
}

/// Where the per-node weights of MPOL_WEIGHTED_INTERLEAVE live (Linux 6.9+).
pub const WEIGHTED_INTERLEAVE_DIR: &str = "/sys/kernel/mm/mempolicy/weighted_interleave";

/// Which optional kernel interfaces the running kernel has, probed on scratch mappings
/// (never judged from the version string: distributions backport features and kernel
/// configs leave some out). Probed once per process: [`Features::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// MADV_POPULATE_WRITE (5.14): prealloc without SIGBUS risk. The madvise succeeded
    /// on a scratch page.
    pub populate_write: bool,
    /// MPOL_PREFERRED_MANY (5.15): mbind accepted it on a scratch page.
    pub preferred_many: bool,
    /// MPOL_WEIGHTED_INTERLEAVE (6.9): mbind accepted it on a scratch page.
    pub weighted_interleave: bool,
    /// The weights weighted interleave uses are in sysfs
    /// ([`WEIGHTED_INTERLEAVE_DIR`] is a directory).
    pub interleave_weights: bool,
    /// Per policy of [`Policy::ALL`]: the mode get_mempolicy read back after mbind set
    /// the policy's mode on a scratch page (on one node with memory for the policies
    /// that take nodes); None where mbind refused it.
    modes: [Option<KernelMode>; Policy::ALL.len()],
}

/// A node this process may allocate on and that has memory, for the policy probes: the
/// first of `has_memory` in the process's `Mems_allowed_list` (cpusets), else node 0.
fn probe_node() -> u32 {
    let has_memory = read_nodes("has_memory");
    let allowed = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("Mems_allowed_list:"))?;
            NodeSet::parse(l.split_once(':')?.1.trim()).ok()
        })
        .unwrap_or_default();
    let first = has_memory
        .iter()
        .find(|&n| allowed.is_empty() || allowed.contains(n));
    first.unwrap_or(0)
}

static PROBED: OnceLock<Features> = OnceLock::new();

impl Features {
    /// The running kernel's features, probed on the first call in this process and
    /// remembered after: MADV_POPULATE_WRITE on a scratch page, every policy's mode set
    /// with mbind and read back with get_mempolicy on a scratch page, the weighted
    /// interleave weights by their sysfs directory.
    pub fn probe() -> Features {
        *PROBED.get_or_init(Features::probe_now)
    }

    fn probe_now() -> Features {
        let node = probe_node();
        let modes = Policy::ALL.map(|p| {
            let nodes = p.takes_nodes().then_some(node);
            // One node: the mode is the policy's own (preferred stays PREFERRED).
            sys::probe_mempolicy(p.kernel_mode(1, false), nodes)
                .ok()
                .map(KernelMode::from_raw)
        });
        let mut f = Features {
            populate_write: sys::probe_populate_write().is_ok(),
            preferred_many: false,
            weighted_interleave: false,
            interleave_weights: Path::new(WEIGHTED_INTERLEAVE_DIR).is_dir(),
            modes,
        };
        f.preferred_many = f.supports(Policy::PreferredMany);
        f.weighted_interleave = f.supports(Policy::WeightedInterleave);
        f
    }

    /// Whether mbind accepted the policy's mode on a scratch page.
    pub fn supports(&self, p: Policy) -> bool {
        self.read_back(p).is_some()
    }

    /// The mode get_mempolicy reported after the policy's mode was set on a scratch
    /// page (older kernels report `local` as `preferred` without nodes); None where
    /// mbind refused the mode.
    pub fn read_back(&self, p: Policy) -> Option<KernelMode> {
        let i = Policy::ALL.iter().position(|&q| q == p)?;
        self.modes[i]
    }
}

/// Everything hostmem reads about the host, in one snapshot.
#[derive(Debug, Clone)]
pub struct HostTopology {
    /// The running kernel's release (uname), e.g. `6.8.0-45-generic`; empty if uname
    /// fails.
    pub kernel_release: String,
    /// (major, minor) of `kernel_release`: policies are checked against it
    /// ([`Policy::min_kernel`]); kernel interfaces are probed instead (`features`).
    pub kernel_version: (u32, u32),
    /// Kernel interfaces, probed once per process ([`Features::probe`]).
    pub features: Features,
    /// Nodes this kernel could ever have (`/sys/devices/system/node/possible`): a
    /// host-nodes id outside it does not exist here. Just node 0 without NUMA.
    pub possible: NodeSet,
    /// Nodes online now (`/sys/devices/system/node/online`). Just node 0 without NUMA.
    pub online: NodeSet,
    /// Nodes with memory (`/sys/devices/system/node/has_memory`): host-nodes must be
    /// among them. Just node 0 without NUMA.
    pub has_memory: NodeSet,
    /// Nodes with CPUs (`/sys/devices/system/node/has_cpu`); empty without NUMA.
    pub has_cpu: NodeSet,
    /// Each online node's CPUs, memory and huge page pools, in id order.
    pub nodes: Vec<NodeInfo>,
    /// Huge page sizes in bytes (`/sys/kernel/mm/hugepages`), smallest first.
    pub huge_page_sizes: Vec<u64>,
    /// Bytes; `Hugepagesize` in /proc/meminfo, the size a memfd with `hugetlb=on` and no
    /// `hugetlbsize` gets. None when /proc/meminfo has no such line (no hugetlb support).
    pub default_huge_page_size: Option<u64>,
    /// The host-wide pool of each size in `huge_page_sizes`, smallest first.
    pub huge_pools: Vec<HugePool>,
    /// /sys/kernel/mm/transparent_hugepage: enabled, defrag, shmem_enabled (the
    /// bracketed choice of each).
    pub thp: BTreeMap<String, String>,
    /// /sys/kernel/mm/ksm: run, pages_shared, pages_sharing, ...
    pub ksm: BTreeMap<String, String>,
    /// Node → weight, where the kernel has weighted interleave.
    pub interleave_weights: BTreeMap<u32, u32>,
    /// CPUs this process may run on.
    pub allowed_cpus: Vec<usize>,
}

fn bracketed(s: &str) -> String {
    match (s.find('['), s.find(']')) {
        (Some(a), Some(b)) if b > a => s[a + 1..b].to_string(),
        _ => s.to_string(),
    }
}

fn read_dir_values(
    dir: &str,
    names: &[&str],
    pick: fn(&str) -> String,
) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|n| Some((n.to_string(), pick(&read_trim(Path::new(dir).join(n))?))))
        .collect()
}

impl HostTopology {
    /// Reads the host from sysfs and procfs now.
    pub fn read() -> HostTopology {
        let kernel_release = sys::kernel_release();
        let kernel_version = parse_kernel_version(&kernel_release);
        let mut possible = read_nodes("possible");
        let mut online = read_nodes("online");
        let mut has_memory = read_nodes("has_memory");
        let has_cpu = read_nodes("has_cpu");
        // Kernels without NUMA have no node directory: everything is node 0.
        if online.is_empty() {
            for s in [&mut possible, &mut online, &mut has_memory] {
                s.insert(0).ok();
            }
        }
        let huge_page_sizes = huge_page_sizes();
        let nodes = online
            .iter()
            .map(|n| NodeInfo::read(n, &huge_page_sizes))
            .collect();
        let huge_pools = huge_page_sizes
            .iter()
            .filter_map(|&s| HugePool::read(s, None))
            .collect();
        let thp = read_dir_values(
            "/sys/kernel/mm/transparent_hugepage",
            &["enabled", "defrag", "shmem_enabled"],
            bracketed,
        );
        let ksm = read_dir_values(
            "/sys/kernel/mm/ksm",
            &[
                "run",
                "pages_to_scan",
                "sleep_millisecs",
                "pages_shared",
                "pages_sharing",
                "merge_across_nodes",
            ],
            |s| s.to_string(),
        );
        let interleave_weights = online
            .iter()
            .filter_map(|n| {
                let w = read_u64(format!("{WEIGHTED_INTERLEAVE_DIR}/node{n}"))?;
                Some((n, w as u32))
            })
            .collect();
        HostTopology {
            kernel_release,
            kernel_version,
            features: Features::probe(),
            possible,
            online,
            has_memory,
            has_cpu,
            nodes,
            huge_page_sizes,
            default_huge_page_size: default_huge_page_size(),
            huge_pools,
            thp,
            ksm,
            interleave_weights,
            allowed_cpus: sys::allowed_cpus(),
        }
    }

    /// The online node `id`; None when it is offline or does not exist.
    pub fn node(&self, id: u32) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Why a node of `nodes` cannot hold memory here (missing, offline, no memory), with
    /// the nodes that could; None when all can.
    pub fn unusable_node(&self, nodes: &NodeSet) -> Option<String> {
        nodes.iter().find_map(|n| {
            if !self.possible.contains(n) {
                Some(format!(
                    "node {n} does not exist on this host (online nodes: {})",
                    self.online
                ))
            } else if !self.online.contains(n) {
                Some(format!(
                    "node {n} is offline (online nodes: {})",
                    self.online
                ))
            } else if !self.has_memory.contains(n) {
                Some(format!(
                    "node {n} has no memory (nodes with memory: {})",
                    self.has_memory
                ))
            } else {
                None
            }
        })
    }

    /// CPUs of the given nodes that this process may use, in order.
    pub fn cpus_of(&self, nodes: &NodeSet) -> Vec<usize> {
        let mut cpus: Vec<usize> = nodes
            .iter()
            .filter_map(|n| self.node(n))
            .flat_map(|n| n.cpus.iter().copied())
            .filter(|c| self.allowed_cpus.is_empty() || self.allowed_cpus.contains(c))
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        cpus
    }

    /// Free memory on the whole host (MemAvailable).
    pub fn mem_available() -> Option<u64> {
        let text = fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mpol;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), (6, 18));
        assert_eq!(parse_kernel_version("5.4.0"), (5, 4));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5\n"), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("").is_empty());
    }

    /// The probes can say no: a mode number past the kernel's last one, and a node that
    /// does not exist, are refused by mbind on the scratch page.
    #[test]
    fn the_policy_probe_reports_what_mbind_refuses() {
        let e = sys::probe_mempolicy(mpol::WEIGHTED_INTERLEAVE + 10, Some(0)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let missing = sys::probe_mempolicy(mpol::BIND, Some(1000));
        assert!(missing.is_err(), "{missing:?}");
        assert_eq!(
            sys::probe_mempolicy(mpol::BIND, Some(probe_node())).unwrap(),
            mpol::BIND,
            "get_mempolicy reads back the mode mbind set"
        );
    }

    #[test]
    fn features_are_probed_once_per_process() {
        let a = Features::probe();
        assert_eq!(PROBED.get(), Some(&a));
        assert_eq!(HostTopology::read().features, a);
    }

    #[test]
    fn reads_this_host() {
        let t = HostTopology::read();
        assert!(t.online.contains(0));
        assert!(!t.nodes.is_empty());
        assert!(t.nodes[0].mem_total > 0, "node 0 meminfo read from sysfs");
        assert_eq!(t.kernel_version, kernel_version());
    }
}
