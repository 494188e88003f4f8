//! Memory a node (or the whole host) can give without swapping: what is free, plus
//! what the kernel reclaims without writing to swap (the file LRU and reclaimable
//! slab), less what the kernel keeps for itself: the min watermark, raised by as much
//! as watermark boosting may add while memory is being taken (`watermark_boost_factor`
//! of the high watermark, at least a pageblock). Allocations that would dip below the
//! min watermark are what wake reclaim and, when nothing can be freed, the OOM killer;
//! hostmem stays above it. (Without the boost allowance the guest test that fills a
//! 384 MiB node to the edge met the OOM killer now and then.)

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
    /// Bytes the kernel keeps: per zone of the node (of every node for the host) its
    /// `min` watermark plus the most boosting can add ([`Watermarks`]); 0 when
    /// /proc/zoneinfo could not be read (see [`Watermarks::unknown`]).
    pub reserve: u64,
}

impl MemoryRoom {
    /// Bytes guest memory can take before the kernel would have to swap or kill:
    /// free + file LRU + reclaimable slab − reserve.
    pub fn available(&self) -> u64 {
        (self.free + self.file + self.slab_reclaimable).saturating_sub(self.reserve)
    }

    /// Parses a meminfo text (`/proc/meminfo` or a node's `meminfo`, whose lines begin
    /// with `Node N`), with `reserve` bytes kept back.
    pub fn parse(text: &str, reserve: u64) -> Result<MemoryRoom, String> {
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
            reserve,
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

    /// The paths of /proc/meminfo and /proc/zoneinfo.
    pub(crate) fn host_paths() -> (PathBuf, PathBuf) {
        (MEMINFO.into(), ZONEINFO.into())
    }

    pub(crate) fn read_file(path: &Path, reserve: u64) -> Known<MemoryRoom> {
        let text = read_text(path)?;
        MemoryRoom::parse(&text, reserve).map_err(|e| Unknown::new(path, e))
    }
}

/// What the kernel keeps of every node, in bytes, from /proc/zoneinfo: per zone with
/// memory, its `min` watermark plus the most watermark boosting may add (the `high`
/// watermark times `vm.watermark_boost_factor` / 10000, at least a 2 MiB pageblock;
/// nothing when the factor is 0). Watermarks change
/// only with `min_free_kbytes` or memory hotplug, so they are read once per check and
/// once per preallocation, not between steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    per_node: BTreeMap<u32, u64>,
    /// Per node, bytes its zones hold that the node's meminfo does not count: `present`
    /// less `managed` pages (read from the same file for [`super::uncounted`]).
    unmanaged: BTreeMap<u32, u64>,
    /// Why /proc/zoneinfo could not be read; the watermarks are then taken as 0.
    pub unknown: Option<Unknown>,
}

impl Watermarks {
    /// Reads /proc/zoneinfo and vm.watermark_boost_factor now (the kernel's default,
    /// 15000, when the sysctl cannot be read: the larger reserve).
    pub fn read() -> Watermarks {
        Watermarks::read_from(Path::new(ZONEINFO))
    }

    /// [`Watermarks::read`] from a zoneinfo file at `zoneinfo`.
    pub(crate) fn read_from(zoneinfo: &Path) -> Watermarks {
        let factor = read_text(Path::new("/proc/sys/vm/watermark_boost_factor"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(15000);
        match read_text(zoneinfo) {
            Ok(text) => Watermarks::parse(&text, crate::sys::page_size() as u64, factor),
            Err(e) => Watermarks {
                per_node: BTreeMap::new(),
                unmanaged: BTreeMap::new(),
                unknown: Some(e),
            },
        }
    }

    /// Adds up every zone's reserve per node (`Node 0, zone Normal` opens a zone; `min`
    /// and `high` are in pages of `page_size` bytes; `boost_factor` is
    /// vm.watermark_boost_factor), and its present pages the zone does not manage.
    pub fn parse(text: &str, page_size: u64, boost_factor: u64) -> Watermarks {
        const PAGEBLOCK: u64 = 2 << 20;
        let mut per_node: BTreeMap<u32, u64> = BTreeMap::new();
        let mut unmanaged: BTreeMap<u32, u64> = BTreeMap::new();
        // The zone being read.
        let mut zone: Option<Zone> = None;
        let mut close = |z: Option<Zone>| {
            let Some(z) = z else { return };
            *unmanaged.entry(z.node).or_insert(0) +=
                z.present.saturating_sub(z.managed) * page_size;
            if z.high > 0 {
                let boost = if boost_factor == 0 {
                    0
                } else {
                    (z.high * page_size * boost_factor / 10000).max(PAGEBLOCK)
                };
                *per_node.entry(z.node).or_insert(0) += z.min * page_size + boost;
            }
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Node ") {
                close(zone.take());
                zone = rest
                    .split(',')
                    .next()
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .map(|node| Zone {
                        node,
                        ..Zone::default()
                    });
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(z), Some(key), Some(v)) = (zone.as_mut(), words.next(), words.next()) else {
                continue;
            };
            match (key, v.parse::<u64>()) {
                ("min", Ok(p)) => z.min = p,
                ("high", Ok(p)) => z.high = p,
                ("present", Ok(p)) => z.present = p,
                ("managed", Ok(p)) => z.managed = p,
                _ => {}
            }
        }
        close(zone.take());
        Watermarks {
            per_node,
            unmanaged,
            unknown: None,
        }
    }

    /// Bytes of node `n`'s zones present but not managed (memory the firmware or the
    /// kernel reserved, or pages whose initialisation is deferred).
    pub fn unmanaged(&self, n: u32) -> u64 {
        self.unmanaged.get(&n).copied().unwrap_or(0)
    }

    /// Node `n`'s reserve, bytes.
    pub fn node(&self, n: u32) -> u64 {
        self.per_node.get(&n).copied().unwrap_or(0)
    }

    /// Every node's together, bytes.
    pub fn host(&self) -> u64 {
        self.per_node.values().sum()
    }
}

/// One zone of /proc/zoneinfo, in pages.
#[derive(Debug, Default)]
struct Zone {
    node: u32,
    min: u64,
    high: u64,
    present: u64,
    managed: u64,
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
        high     750
Node 0, zone   Movable
  pages free     0
        min      0
        low      0
        high     0
Node 4, zone   Normal
  pages free     95000
        min      400
        low      500
        high     600
        spanned  98304
";

    #[test]
    fn a_nodes_room_is_free_plus_reclaimable_less_its_watermark() {
        let none = Watermarks::parse(ZONES, 4096, 0);
        assert_eq!(none.node(0), 510 * 4096, "two zones' min of node 0 summed");
        assert_eq!(none.node(4), 400 * 4096);
        assert_eq!(none.node(7), 0);
        assert_eq!(none.host(), 910 * 4096);
        let marks = Watermarks::parse(ZONES, 4096, 15000);
        // DMA: 1.5 x 16 pages is less than a pageblock; DMA32: 1.5 x 750 pages; the
        // empty Movable zone keeps nothing.
        assert_eq!(marks.node(0), 510 * 4096 + (2 << 20) + 1125 * 4096);
        assert_eq!(marks.node(4), 400 * 4096 + 900 * 4096);
        let room = MemoryRoom::parse(NODE4, marks.node(4)).unwrap();
        assert_eq!(room.total, 393216 * 1024);
        assert_eq!(room.free, 380000 * 1024);
        assert_eq!(room.file, 3000 * 1024);
        assert_eq!(room.slab_reclaimable, 500 * 1024);
        assert_eq!(room.available(), (383500 * 1024) - marks.node(4));
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
        assert!(marks.host() > 0, "zoneinfo has watermarks");
        let host = MemoryRoom::read_host(&marks).unwrap();
        assert!(host.available() <= host.total);
        let node0 = MemoryRoom::read_node(0, &marks).unwrap();
        assert!(node0.available() <= node0.total && node0.total <= host.total);
        let e = MemoryRoom::read_node(4000, &marks).unwrap_err();
        assert!(e.path.ends_with("node4000/meminfo"), "{e}");
    }
}
