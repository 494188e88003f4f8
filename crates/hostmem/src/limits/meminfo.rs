//! Memory a node (or the whole host) can give without swapping: what is free, plus
//! what the kernel reclaims without writing to swap (the file LRU and reclaimable
//! slab), less the min watermark the kernel keeps for itself. Allocations that would
//! dip below the min watermark are what wake reclaim and, when nothing can be freed,
//! the OOM killer; hostmem stays above it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{read_text, Known, Unknown};

const NODE_DIR: &str = "/sys/devices/system/node";
const ZONEINFO: &str = "/proc/zoneinfo";
const MEMINFO: &str = "/proc/meminfo";

/// What one node, or the host, can give guest memory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRoom {
    /// `MemTotal`, bytes.
    pub total: u64,
    /// `MemFree`, bytes.
    pub free: u64,
    /// `Active(file)` + `Inactive(file)`: page cache the kernel can drop or write back.
    pub file: u64,
    /// `SReclaimable`: slab caches the kernel can shrink.
    pub slab_reclaimable: u64,
    /// Sum of the `min` watermarks of the node's zones (of every zone for the host),
    /// bytes; 0 when /proc/zoneinfo could not be read (see [`Watermarks::unknown`]).
    pub min_watermark: u64,
}

impl MemoryRoom {
    /// Bytes guest memory can take before the kernel would have to swap or kill:
    /// free + file LRU + reclaimable slab − min watermark.
    pub fn available(&self) -> u64 {
        (self.free + self.file + self.slab_reclaimable).saturating_sub(self.min_watermark)
    }

    /// Parses a meminfo text (`/proc/meminfo` or a node's `meminfo`, whose lines begin
    /// with `Node N`), with `min_watermark` bytes kept back.
    pub fn parse(text: &str, min_watermark: u64) -> Result<MemoryRoom, String> {
        let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace().skip_while(|w| !w.ends_with(':'));
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let unit = match words.next() {
                Some("kB") => 1024,
                _ => 1,
            };
            seen.insert(key.trim_end_matches(':'), value * unit);
        }
        let get = |k: &str| seen.get(k).copied().ok_or_else(|| format!("no {k} line"));
        Ok(MemoryRoom {
            total: get("MemTotal")?,
            free: get("MemFree")?,
            file: get("Active(file)")? + get("Inactive(file)")?,
            slab_reclaimable: get("SReclaimable")?,
            min_watermark,
        })
    }

    /// The path of node `n`'s meminfo.
    pub(crate) fn node_path(n: u32) -> PathBuf {
        Path::new(NODE_DIR).join(format!("node{n}/meminfo"))
    }

    /// Node `n` now.
    pub fn read_node(n: u32, marks: &Watermarks) -> Known<MemoryRoom> {
        Self::read_file(&Self::node_path(n), marks.node(n))
    }

    /// The whole host now.
    pub fn read_host(marks: &Watermarks) -> Known<MemoryRoom> {
        Self::read_file(Path::new(MEMINFO), marks.host())
    }

    pub(crate) fn read_file(path: &Path, min_watermark: u64) -> Known<MemoryRoom> {
        let text = read_text(path)?;
        MemoryRoom::parse(&text, min_watermark).map_err(|e| Unknown::new(path, e))
    }
}

/// The `min` watermark of every node, in bytes, from /proc/zoneinfo. Watermarks change
/// only with `min_free_kbytes` or memory hotplug, so they are read once per check and
/// once per preallocation, not between steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    per_node: BTreeMap<u32, u64>,
    /// Why /proc/zoneinfo could not be read; the watermarks are then taken as 0.
    pub unknown: Option<Unknown>,
}

impl Watermarks {
    /// Reads /proc/zoneinfo now.
    pub fn read() -> Watermarks {
        match read_text(Path::new(ZONEINFO)) {
            Ok(text) => Watermarks::parse(&text, crate::sys::page_size() as u64),
            Err(e) => Watermarks {
                per_node: BTreeMap::new(),
                unknown: Some(e),
            },
        }
    }

    /// Sums the `min` line of every zone per node (`Node 0, zone Normal` opens a zone;
    /// the values are in pages of `page_size` bytes).
    pub fn parse(text: &str, page_size: u64) -> Watermarks {
        let mut per_node = BTreeMap::new();
        let mut node = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Node ") {
                node = rest
                    .split(',')
                    .next()
                    .and_then(|n| n.trim().parse::<u32>().ok());
                continue;
            }
            let mut words = line.split_whitespace();
            if let (Some(n), Some("min"), Some(v)) = (node, words.next(), words.next()) {
                if let Ok(pages) = v.parse::<u64>() {
                    *per_node.entry(n).or_insert(0) += pages * page_size;
                }
            }
        }
        Watermarks {
            per_node,
            unknown: None,
        }
    }

    /// Node `n`'s min watermark, bytes.
    pub fn node(&self, n: u32) -> u64 {
        self.per_node.get(&n).copied().unwrap_or(0)
    }

    /// Every node's together, bytes.
    pub fn host(&self) -> u64 {
        self.per_node.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE4: &str = "Node 4 MemTotal:          393216 kB
Node 4 MemFree:           380000 kB
Node 4 MemUsed:            13216 kB
Node 4 Active(file):        1000 kB
Node 4 Inactive(file):      2000 kB
Node 4 SReclaimable:         500 kB
Node 4 HugePages_Total:     0
";

    const ZONES: &str = "Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 0
  pages free     3840
        boost    0
        min      10
        low      13
        high     16
Node 0, zone    DMA32
  pages free     100000
        min      500
        low      625
Node 4, zone   Normal
  pages free     95000
        min      400
        low      500
        high     600
        spanned  98304
";

    #[test]
    fn a_nodes_room_is_free_plus_reclaimable_less_its_watermark() {
        let marks = Watermarks::parse(ZONES, 4096);
        assert_eq!(marks.node(0), 510 * 4096, "two zones of node 0 summed");
        assert_eq!(marks.node(4), 400 * 4096);
        assert_eq!(marks.node(7), 0);
        assert_eq!(marks.host(), 910 * 4096);
        let room = MemoryRoom::parse(NODE4, marks.node(4)).unwrap();
        assert_eq!(room.total, 393216 * 1024);
        assert_eq!(room.free, 380000 * 1024);
        assert_eq!(room.file, 3000 * 1024);
        assert_eq!(room.slab_reclaimable, 500 * 1024);
        assert_eq!(room.available(), (383500 * 1024) - 400 * 4096);
    }

    #[test]
    fn host_meminfo_parses_and_a_missing_line_is_named() {
        let host = "MemTotal: 100 kB\nMemFree: 50 kB\nMemAvailable: 70 kB\nActive(file): 5 kB\nInactive(file): 6 kB\nSReclaimable: 1 kB\n";
        let r = MemoryRoom::parse(host, 0).unwrap();
        assert_eq!(r.available(), 62 * 1024);
        let e = MemoryRoom::parse("MemTotal: 1 kB\nMemFree: 1 kB\n", 0).unwrap_err();
        assert_eq!(e, "no Active(file) line");
        let tight = MemoryRoom::parse(host, 1 << 30).unwrap();
        assert_eq!(
            tight.available(),
            0,
            "below the watermark nothing is available"
        );
    }

    #[test]
    fn this_hosts_nodes_have_at_most_their_total_available() {
        let marks = Watermarks::read();
        assert!(marks.unknown.is_none(), "{:?}", marks.unknown);
        assert!(marks.host() > 0, "zoneinfo has min watermarks");
        let host = MemoryRoom::read_host(&marks).unwrap();
        assert!(host.available() <= host.total);
        let node0 = MemoryRoom::read_node(0, &marks).unwrap();
        assert!(node0.available() <= node0.total && node0.total <= host.total);
        let e = MemoryRoom::read_node(4000, &marks).unwrap_err();
        assert!(e.path.ends_with("node4000/meminfo"), "{e}");
    }
}
