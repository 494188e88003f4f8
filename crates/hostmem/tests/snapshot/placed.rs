//! A copy restore placed and limited like a preallocation: refused before any page
//! when the backend's limit is short (the decision, against chosen figures, and the
//! memory untouched), and a bound restore's pages on its node per numa_maps.

use crate::common::*;
use crate::*;
use hostmem::limits::{MemoryRoom, Snapshot, Watermarks};
use hostmem::snapshot::{self, Image, RestoreOptions, SaveOptions, SnapshotError};
use hostmem::{Backend, Error, Kind, NodeSet, Policy, Progress};

const SIZE: u64 = 32 * MIB;

fn room(free: u64) -> MemoryRoom {
    MemoryRoom {
        total: 4 * GIB,
        free,
        file: 0,
        slab_reclaimable: 0,
        reserve: 0,
    }
}

/// Node 0 with `node` bytes available, the host with `host`, no cgroup limit.
fn figures(node: u64, host: u64) -> Snapshot {
    Snapshot {
        nodes: vec![(0, Ok(room(node)))],
        host: Ok(room(host)),
        memory_cgroup: Ok(None),
        hugetlb_cgroups: Vec::new(),
        marks: Watermarks::default(),
        uncounted: None,
        hints: Vec::new(),
    }
}

fn bound_memfd(id: &str) -> Backend {
    Backend::builder(Kind::Memfd, id)
        .size(SIZE)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::from_iter([0]))
        .create()
        .unwrap()
}

#[test]
fn restore_room_decision_names_the_bound_node_when_it_is_short() {
    let b = bound_memfd("bound");
    match snapshot::check_room(&b, 16 * MIB, &figures(8 * MIB, 8 * GIB)) {
        Err(SnapshotError::Backend(e @ Error::NodeMemoryShort { .. })) => {
            let text = e.to_string();
            assert!(text.contains("node 0"), "names the node: {text}");
            assert!(text.contains("16 MiB") || text.contains("16M"), "{text}");
        }
        other => panic!("16 MiB on a node with 8 MiB: {other:?}"),
    }
    snapshot::check_room(&b, 16 * MIB, &figures(64 * MIB, 8 * GIB))
        .expect("16 MiB on a node with 64 MiB fits");
    // Unbound memory counts against the host, not the node.
    let free = Backend::builder(Kind::Memfd, "free")
        .size(SIZE)
        .create()
        .unwrap();
    snapshot::check_room(&free, 16 * MIB, &figures(8 * MIB, 8 * GIB))
        .expect("unbound memory may come from any node");
    assert!(matches!(
        snapshot::check_room(&free, 16 * MIB, &figures(8 * GIB, 8 * MIB)),
        Err(SnapshotError::Backend(Error::HostMemoryShort { .. }))
    ));
}

/// `N<node>=<pages>` counts of a numa_maps line.
fn pages_per_node(line: &str) -> Vec<(u32, u64)> {
    line.split_whitespace()
        .filter_map(|f| {
            let (n, p) = f.strip_prefix('N')?.split_once('=')?;
            Some((n.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

#[test]
fn bound_restore_lands_on_node_0_per_numa_maps() {
    let dir = TempDir::new("placed-node");
    let path = dir.path().join("mem.img");
    let src = Backend::builder(Kind::Memfd, "src")
        .size(SIZE)
        .create()
        .unwrap();
    let want = scatter(&src.hold().unwrap(), 12);
    snapshot::save(&src, &path, &SaveOptions::default(), &Progress::new()).unwrap();
    let dst = bound_memfd("dst");
    let image = Image::open(&path).unwrap();
    let r = snapshot::restore(&image, &dst, &RestoreOptions::default(), &Progress::new()).unwrap();
    assert!(r.data_bytes > 0);
    assert_same_bytes(&read_memory(&dst), &want.bytes, "bound restore");
    let line = numa_maps_line(dst.host_addr().unwrap()).expect("numa_maps has the mapping");
    assert!(line.contains(" bind:0"), "policy in numa_maps: {line}");
    let nodes = pages_per_node(&line);
    let page = dst.page_size().unwrap();
    let on0: u64 = nodes.iter().filter(|(n, _)| *n == 0).map(|(_, p)| p).sum();
    assert!(
        on0 * page >= r.data_bytes - BLOCK,
        "restored pages on node 0: {on0} of {} bytes ({line})",
        r.data_bytes
    );
    assert!(
        nodes.iter().all(|(n, _)| *n == 0),
        "pages off node 0: {line}"
    );
}
