//! The rule on synthetic meminfo and zoneinfo files; the hosts here are also what the
//! backend checks are tested against (`backend/room/tests.rs`).

use super::*;
use crate::limits::Snapshot;

const GIB_KB: u64 = 1 << 20;

/// A meminfo text: `prefix` is `""` for /proc/meminfo, `"Node N "` for a node's.
fn meminfo(prefix: &str, total_kb: u64, free_kb: u64) -> String {
    format!(
        "{prefix}MemTotal: {total_kb} kB\n{prefix}MemFree: {free_kb} kB\n\
         {prefix}Active(file): 0 kB\n{prefix}Inactive(file): 0 kB\n\
         {prefix}SReclaimable: 0 kB\nBalloon: 0 kB\n"
    )
}

/// A zone of /proc/zoneinfo, counts in 4 KiB pages.
fn zone(node: u32, name: &str, min: u64, present: u64, managed: u64) -> String {
    format!(
        "Node {node}, zone {name}\n  pages free     1000\n        min      {min}\n\
         low      {}\n        high     {}\n        spanned  {present}\n\
         present  {present}\n        managed  {managed}\n",
        min * 5 / 4,
        min * 3 / 2
    )
}

/// A snapshot of the host the texts describe, without cgroup limits.
fn snapshot(host: &str, nodes: &[(u32, String)], zoneinfo: &str) -> Snapshot {
    let marks = Watermarks::parse(zoneinfo, 4096, 0);
    let parse = |t: &str, reserve| MemoryRoom::parse(t, reserve).map_err(|e| unreachable!("{e}"));
    let nodes: Vec<(u32, Known<MemoryRoom>)> = nodes
        .iter()
        .map(|(n, t)| (*n, parse(t, marks.node(*n))))
        .collect();
    let host = parse(host, marks.host());
    Snapshot {
        uncounted: Uncounted::of(&host, &nodes, &marks),
        hints: Vec::new(),
        nodes,
        host,
        memory_cgroup: Ok(None),
        hugetlb_cgroups: Vec::new(),
        marks,
    }
}

/// The VM of issue 18 (`deferred_init=lazy`) as (/proc/meminfo, node 0's meminfo,
/// /proc/zoneinfo): /proc/meminfo counts 23.5 GiB, 20 GiB free; node 0's meminfo
/// 12.6 GiB, 9.5 GiB free; its Normal zone has 5.5 M pages present and 2.5 M managed.
pub(crate) fn lazy_files() -> (String, String, String) {
    (
        meminfo("", 23_500 * GIB_KB / 1000, 20 * GIB_KB),
        meminfo("Node 0 ", 12_600 * GIB_KB / 1000, 9_500 * GIB_KB / 1000),
        zone(0, "DMA32", 500, 782_336, 772_915) + &zone(0, "Normal", 4000, 5_505_024, 2_500_000),
    )
}

/// [`lazy_files`] as a snapshot.
pub(crate) fn lazy_host() -> Snapshot {
    let (host, node0, zones) = lazy_files();
    snapshot(&host, &[(0, node0)], &zones)
}

/// A NUMA host whose nodes add up to it exactly: node 0 with 8 GiB (6 free), node 4
/// with 384 MiB (371 MiB free); each zone keeps a few reserved pages.
pub(crate) fn exact_host() -> Snapshot {
    let zones =
        zone(0, "Normal", 1000, 2_097_152, 2_090_000) + &zone(4, "Normal", 100, 98_304, 97_000);
    snapshot(
        &meminfo("", 8 * GIB_KB + 384 * 1024, 6 * GIB_KB + 371 * 1024),
        &[
            (0, meminfo("Node 0 ", 8 * GIB_KB, 6 * GIB_KB)),
            (4, meminfo("Node 4 ", 384 * 1024, 371 * 1024)),
        ],
        &zones,
    )
}

#[test]
fn a_lazily_initialised_node_may_give_its_unmanaged_pages_up_to_the_hosts_uncounted_free() {
    let snap = lazy_host();
    let u = snap
        .uncounted
        .as_ref()
        .expect("node 0 does not add up to the host");
    assert_eq!(u.free(), (20 * GIB_KB - 9_500 * GIB_KB / 1000) * 1024);
    let unmanaged = ((782_336 - 772_915) + (5_505_024 - 2_500_000)) * 4096;
    assert_eq!(snap.marks.unmanaged(0), unmanaged);
    assert!(unmanaged > u.free(), "zoneinfo counts reserved pages too");
    assert_eq!(
        snap.extra([0]),
        u.free(),
        "at most what the host counts free"
    );
    assert_eq!(snap.extra([7]), 0, "a node without unmanaged pages");
    let why = u.why("node 0", &[0]);
    assert!(
        why.starts_with(
            "the nodes' meminfo count 12.60 GiB of the host's 23.50 GiB (9.50 GiB of 20 GiB \
             free); node 0's zones hold 11.50 GiB present but not managed"
        ),
        "{why}"
    );
    assert!(why.ends_with("counted as up to 10.50 GiB more that the kernel may add to node 0 as memory is taken, an upper bound"), "{why}");
}

#[test]
fn nodes_that_add_up_to_the_host_within_the_slack_leave_nothing_uncounted() {
    let snap = exact_host();
    assert_eq!(snap.uncounted, None);
    assert_eq!(snap.extra([0, 4]), 0);
    // 60 MiB more free on the host than on its nodes (read a moment apart): still exact.
    let marks = snap.marks.clone();
    let mut host = snap.host.clone();
    if let Ok(h) = &mut host {
        h.free += 60 << 20;
    }
    assert_eq!(Uncounted::of(&host, &snap.nodes, &marks), None);
    // 65 MiB: the nodes no longer add up; each node's unmanaged pages are its bound.
    if let Ok(h) = &mut host {
        h.free += 5 << 20;
    }
    let u = Uncounted::of(&host, &snap.nodes, &marks).expect("beyond the slack");
    assert_eq!(u.extra([4]), 1304 * 4096);
    assert_eq!(u.extra([0, 4]), (7152 + 1304) * 4096);
    // With 30 MiB uncounted in total but 65 MiB more free, free is the bound.
    if let Ok(h) = &mut host {
        h.free -= 40 << 20;
        h.total += 65 << 20;
    }
    let u = Uncounted::of(&host, &snap.nodes, &marks).expect("totals beyond the slack");
    assert_eq!(
        u.extra([0, 4]),
        25 << 20,
        "at most the host's uncounted free"
    );
}

#[test]
fn an_unknown_node_or_zoneinfo_is_never_taken_as_zero() {
    let mut snap = lazy_host();
    // zoneinfo unreadable: any node may hold all the uncounted free memory.
    let mut marks = snap.marks.clone();
    marks.unknown = Some(crate::limits::Unknown {
        path: "/proc/zoneinfo".into(),
        reason: "Permission denied".into(),
    });
    let u = Uncounted::of(&snap.host, &snap.nodes, &marks).unwrap();
    assert_eq!(u.unmanaged, None);
    assert_eq!(u.extra([0]), u.free());
    assert!(u
        .why("node 0", &[0])
        .contains("/proc/zoneinfo could not be read"));
    // A node's meminfo unreadable: no comparison (that node refuses nothing anyway).
    snap.nodes[0].1 = Err(crate::limits::Unknown {
        path: "/sys/devices/system/node/node0/meminfo".into(),
        reason: "No such file or directory".into(),
    });
    assert_eq!(Uncounted::of(&snap.host, &snap.nodes, &marks), None);
}

#[test]
fn a_balloon_and_offline_memory_blocks_are_hints_and_nothing_else_is() {
    assert_eq!(balloon(&meminfo("", 100, 50)), None, "Balloon: 0 kB");
    let ballooned = "MemTotal: 100 kB\nBalloon:         1048576 kB\n";
    assert_eq!(balloon(ballooned), Some(Hint::Balloon(1 << 30)));
    let dir = std::env::temp_dir().join(format!("hostmem-memory-{}", std::process::id()));
    for (block, state) in [(0, "online"), (1, "offline"), (2, "offline")] {
        let d = dir.join(format!("memory{block}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state"), format!("{state}\n")).unwrap();
    }
    std::fs::write(dir.join("block_size_bytes"), "8000000\n").unwrap();
    std::fs::write(dir.join("auto_online_blocks"), "offline\n").unwrap();
    let hint = offline(&dir).expect("two blocks offline");
    assert_eq!(
        hint,
        Hint::Offline {
            blocks: 2,
            bytes: 2 << 27,
            auto_online: "offline".into()
        }
    );
    assert_eq!(
        hint.to_string(),
        "2 memory blocks (256 MiB) are offline (auto_online_blocks: offline): the kernel \
         gives them only once they are onlined, so they are not counted"
    );
    std::fs::write(dir.join("memory1/state"), "online\n").unwrap();
    std::fs::write(dir.join("memory2/state"), "online\n").unwrap();
    assert_eq!(offline(&dir), None, "every block online");
    std::fs::remove_dir_all(dir).unwrap();
}
