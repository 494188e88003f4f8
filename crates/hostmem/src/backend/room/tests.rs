//! The memory-room decisions against synthetic snapshots.

use super::*;
use crate::limits::{CgroupVersion, Watermarks};
use crate::props::MachineDefaults;
use crate::{sys, Kind};

const MIB: u64 = 1 << 20;

fn room(mib: u64) -> MemoryRoom {
    MemoryRoom {
        total: 1024 * MIB,
        free: mib * MIB,
        file: 0,
        slab_reclaimable: 0,
        reserve: 0,
    }
}

/// Node 4 with 371 MiB, the host with 2 GiB, a cgroup /machine.slice/vm1 with
/// 256 MiB of room.
fn snapshot() -> Snapshot {
    Snapshot {
        nodes: vec![(0, Ok(room(1500))), (4, Ok(room(371)))],
        host: Ok(room(2048)),
        memory_cgroup: Ok(Some(CgroupLimit {
            cgroup: "/machine.slice/vm1".into(),
            dir: "/sys/fs/cgroup/machine.slice/vm1".into(),
            version: CgroupVersion::V2,
            max_file: "memory.max".into(),
            current_file: "memory.current".into(),
            max: 1024 * MIB,
            current: 768 * MIB,
        })),
        hugetlb_cgroups: Vec::new(),
        marks: Watermarks::default(),
        uncounted: None,
        hints: Vec::new(),
    }
}

fn ram(id: &str, size: &str, bind: Option<&str>) -> (Backend, Plan) {
    let mut b = Backend::new(Kind::Ram, id, &MachineDefaults::default());
    b.set_str("size", size).unwrap();
    b.set_str("prealloc", "on").unwrap();
    if let Some(n) = bind {
        b.set_str("policy", "bind").unwrap();
        b.set_str("host-nodes", n).unwrap();
    }
    let plan = crate::kind::base_pages(b.size());
    (b, plan)
}

#[test]
fn a_bound_backend_larger_than_its_node_is_refused_naming_the_node() {
    let (b, p) = ram("x", "512M", Some("4"));
    let errs = check_batch(&[(&b, &p)], &snapshot());
    let texts: Vec<String> = errs.iter().map(|(_, e)| e.to_string()).collect();
    assert_eq!(
        texts,
        [
            "memory-backend-ram 'x': needs 512 MiB on node 4, which has 371 MiB available \
             (bound by policy=bind host-nodes=4)",
            "memory-backend-ram 'x': needs 512 MiB, the memory cgroup /machine.slice/vm1 \
             allows 256 MiB more (memory.max 1 GiB)"
        ]
    );
}

#[test]
fn two_that_fit_alone_are_summed_against_the_same_limits() {
    let mut snap = snapshot();
    snap.memory_cgroup = Ok(None);
    let (a, pa) = ram("a", "200M", Some("4"));
    let (b, pb) = ram("b", "200M", Some("4"));
    let (c, pc) = ram("c", "1800M", None);
    let errs = check_batch(&[(&a, &pa), (&b, &pb), (&c, &pc)], &snap);
    let texts: Vec<(usize, String)> = errs.iter().map(|(i, e)| (*i, e.to_string())).collect();
    assert_eq!(
        texts,
        [
            (
                1,
                "memory-backend-ram 'b': needs 400 MiB on node 4, which has 371 MiB \
                 available (bound by policy=bind host-nodes=4) (together with a of the \
                 same batch)"
                    .to_string()
            ),
            (
                2,
                "memory-backend-ram 'c': needs 2.15 GiB, the host has 2 GiB available \
                 (free memory and reclaimable page cache and slab, less what the \
                 kernel keeps) (together with a, b of the same batch)"
                    .to_string()
            ),
        ]
    );
}

#[test]
fn an_ignoring_or_unknown_limit_refuses_nothing() {
    let mut snap = snapshot();
    snap.nodes[1].1 = Err(crate::limits::Unknown {
        path: "/sys/devices/system/node/node4/meminfo".into(),
        reason: "Permission denied".into(),
    });
    snap.memory_cgroup = Ok(None);
    let (b, p) = ram("x", "512M", Some("4"));
    assert!(check_batch(&[(&b, &p)], &snap).is_empty());
    let (mut b, p) = ram("x", "4G", None);
    b.set_ignore_memory_limits(true);
    assert!(check_batch(&[(&b, &p)], &snapshot()).is_empty());
    assert!(limits_of(&b, &p).is_empty());
}

/// `snapshot()` with hugetlb cgroup limits: 64 MiB of room for 2 MiB pages at /h2,
/// 4 GiB for 1 GiB pages at /h1g.
fn snapshot_with_hugetlb() -> Snapshot {
    let limit = |cg: &str, file: &str, max: u64, current: u64| {
        Ok(Some(CgroupLimit {
            cgroup: cg.into(),
            dir: format!("/sys/fs/cgroup{cg}").into(),
            version: CgroupVersion::V2,
            max_file: format!("hugetlb.{file}.max"),
            current_file: format!("hugetlb.{file}.current"),
            max,
            current,
        }))
    };
    let mut snap = snapshot();
    snap.hugetlb_cgroups = vec![
        (1 << 30, limit("/h1g", "1GB", 4 << 30, 0)),
        (2 * MIB, limit("/h2", "2MB", 96 * MIB, 32 * MIB)),
    ];
    snap
}

/// A preallocated hugetlb memfd of `mib` MiB in 2 MiB pages.
fn huge(id: &str, mib: u64) -> (Backend, Plan) {
    let mut b = Backend::new(Kind::Memfd, id, &MachineDefaults::default());
    b.set_str("size", &format!("{mib}M")).unwrap();
    b.set_str("prealloc", "on").unwrap();
    b.set_str("hugetlb", "on").unwrap();
    let plan = Plan {
        len: mib * MIB,
        page_size: 2 * MIB,
        hugetlb: true,
        existing_file: false,
    };
    (b, plan)
}

fn errors(items: &[(&Backend, &Plan)], snap: &Snapshot) -> Vec<(usize, String)> {
    check_batch(items, snap)
        .iter()
        .map(|(i, e)| (*i, e.to_string()))
        .collect()
}

#[test]
fn a_need_equal_to_the_room_of_each_limit_is_not_refused() {
    // Exactly the cgroup's 256 MiB, on node 4 with 371 MiB.
    let (a, pa) = ram("a", "256M", Some("4"));
    assert_eq!(errors(&[(&a, &pa)], &snapshot()), []);
    // Exactly node 4's 371 MiB, no cgroup limit.
    let mut snap = snapshot();
    snap.memory_cgroup = Ok(None);
    let (b, pb) = ram("b", "371M", Some("4"));
    assert_eq!(errors(&[(&b, &pb)], &snap), []);
    // Exactly the 2 MiB hugetlb cgroup's 64 MiB.
    let (h, ph) = huge("h", 64);
    assert_eq!(errors(&[(&h, &ph)], &snapshot_with_hugetlb()), []);
}

#[test]
fn memory_counted_on_the_host_is_not_summed_on_a_bound_node() {
    let mut snap = snapshot();
    snap.memory_cgroup = Ok(None);
    let (a, pa) = ram("a", "1000M", None);
    let (b, pb) = ram("b", "300M", Some("4"));
    assert_eq!(errors(&[(&a, &pa), (&b, &pb)], &snap), []);
}

#[test]
fn huge_pages_are_summed_on_their_sizes_hugetlb_cgroup_and_not_on_the_memory_cgroup() {
    // 32 + 48 MiB of 2 MiB pages against /h2's 64 MiB; 200 MiB of RAM after them
    // against the memory cgroup's 256 MiB.
    let (h1, p1) = huge("h1", 32);
    let (h2, p2) = huge("h2", 48);
    let (r, pr) = ram("r", "200M", None);
    assert_eq!(
        errors(
            &[(&h1, &p1), (&h2, &p2), (&r, &pr)],
            &snapshot_with_hugetlb()
        ),
        [(
            1,
            "memory-backend-memfd 'h2': needs 80 MiB of 2 MiB huge pages, the hugetlb cgroup \
             /h2 allows 64 MiB more (hugetlb.2MB.max 96 MiB) (together with h1 of the same \
             batch)"
                .to_string()
        )]
    );
}

#[test]
fn fact_names_one_node_or_several_and_sums_their_room() {
    let snap = snapshot();
    let nodes = |s: &str| Limit::Nodes(NodeSet::parse(s).unwrap());
    let room = |limit: &str, bytes| LimitRoom {
        limit: limit.to_string(),
        available: Ok(Some(bytes)),
        uncertain: None,
    };
    assert_eq!(fact(&nodes("4"), &snap), room("node 4", 371 * MIB));
    assert_eq!(
        fact(&nodes("0,4"), &snap),
        room("nodes 0,4", (1500 + 371) * MIB)
    );
}

/// Errors and warnings of one preallocated backend bound to `nodes`.
fn verdict(size: &str, nodes: &str, snap: &Snapshot) -> (Vec<String>, Vec<String>) {
    let (b, p) = ram("x", size, Some(nodes));
    let errs = check_batch(&[(&b, &p)], snap);
    let warns = uncertain_passes(&[(&b, &p)], snap);
    (
        errs.iter().map(|(_, e)| e.to_string()).collect(),
        warns.into_iter().map(|(_, w)| w).collect(),
    )
}

#[test]
fn on_a_lazily_initialised_host_a_bind_above_the_nodes_meminfo_passes_with_a_warning() {
    let snap = crate::limits::uncounted::tests::lazy_host();
    let (errs, warns) = verdict("14G", "0", &snap);
    assert_eq!(errs, Vec::<String>::new());
    assert_eq!(warns.len(), 1);
    assert!(
        warns[0].starts_with(
            "memory-backend-ram 'x': needs 14 GiB on node 0, more than the 9.48 GiB its \
             meminfo shows available; not refused: 9.48 GiB of it from meminfo, 10.50 GiB \
             uncertain: the nodes' meminfo count 12.60 GiB of the host's 23.50 GiB"
        ),
        "{}",
        warns[0]
    );
    let f = fact(&Limit::Nodes(NodeSet::parse("0").unwrap()), &snap);
    let shown = snap.node(0).unwrap().as_ref().unwrap().available();
    assert_eq!(f.available, Ok(Some(shown + snap.extra([0]))));
    assert!(f.uncertain.is_some_and(|u| u.contains("an upper bound")));
    // Beyond even what the host counts free: refused, with the bound as the room.
    let (errs, warns) = verdict("21G", "0", &snap);
    assert_eq!(warns, Vec::<String>::new());
    assert_eq!(
        errs,
        [
            "memory-backend-ram 'x': needs 21 GiB on node 0, which has 19.98 GiB available \
          (bound by policy=bind host-nodes=0)"
        ]
    );
}

#[test]
fn on_a_host_whose_nodes_add_up_a_bind_above_the_nodes_meminfo_is_refused() {
    let snap = crate::limits::uncounted::tests::exact_host();
    let (errs, warns) = verdict("512M", "4", &snap);
    assert_eq!(warns, Vec::<String>::new());
    assert_eq!(
        errs,
        [
            "memory-backend-ram 'x': needs 512 MiB on node 4, which has 370.61 MiB available \
          (bound by policy=bind host-nodes=4)"
        ]
    );
    let f = fact(&Limit::Nodes(NodeSet::parse("4").unwrap()), &snap);
    assert_eq!(f.uncertain, None);
}

#[test]
fn a_balloon_is_a_warning_on_node_and_host_limits_and_refuses_as_before() {
    let mut snap = crate::limits::uncounted::tests::exact_host();
    snap.hints = vec![crate::limits::Hint::Balloon(1 << 30)];
    let (errs, warns) = verdict("512M", "4", &snap);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(warns, Vec::<String>::new());
    let (b, p) = ram("x", "512M", Some("4"));
    let hint = "memory-backend-ram 'x': a balloon holds 1 GiB (/proc/meminfo Balloon): the \
                hypervisor may take more or give it back; the kernel returns a \
                deflate-on-oom balloon's pages only when it is out of memory, so they are \
                not counted";
    assert_eq!(hint_warnings(&b, &p, &snap), [hint]);
    let f = fact(&Limit::Nodes(NodeSet::parse("4").unwrap()), &snap);
    assert!(f
        .uncertain
        .is_some_and(|u| u.starts_with("a balloon holds 1 GiB")));
    let f = fact(&Limit::MemoryCgroup, &snap);
    assert_eq!(
        f.uncertain, None,
        "a balloon does not change the cgroup's room"
    );
}

/// A file backend of 64 MiB at `path`, shared or not.
fn file(path: &std::path::Path, share: bool) -> (Backend, Plan) {
    let mut b = Backend::new(Kind::File, "f", &MachineDefaults::default());
    b.set_str("size", "64M").unwrap();
    b.set_str("mem-path", path.to_str().unwrap()).unwrap();
    b.set_str("share", if share { "on" } else { "off" })
        .unwrap();
    b.set_str("prealloc", "on").unwrap();
    let plan = crate::kind::base_pages(b.size());
    (b, plan)
}

#[test]
fn only_a_shared_file_on_a_disk_file_system_counts_against_no_limit() {
    let disk = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let magic = |p: &std::path::Path| sys::statfs(p).unwrap().magic;
    assert_ne!(
        magic(disk),
        sys::TMPFS_MAGIC,
        "the source tree must be on a disk"
    );
    let shm = std::path::Path::new("/dev/shm");
    assert_eq!(magic(shm), sys::TMPFS_MAGIC, "/dev/shm must be tmpfs");
    let host_and_cgroup = vec![Limit::Host, Limit::MemoryCgroup];
    let (b, p) = file(&disk.join("not-there.img"), true);
    assert_eq!(limits_of(&b, &p), [], "shared file on disk: page cache");
    let (b, p) = file(&disk.join("not-there.img"), false);
    assert_eq!(limits_of(&b, &p), host_and_cgroup, "private file on disk");
    let (b, p) = file(&shm.join("not-there.img"), true);
    assert_eq!(limits_of(&b, &p), host_and_cgroup, "shared file on tmpfs");
    let (b, p) = ram("r", "64M", None);
    assert_eq!(limits_of(&b, &p), host_and_cgroup, "ram");
}

/// `snapshot()` whose memory cgroup is a scratch directory with no room left.
fn snapshot_with_full_cgroup(name: &str) -> (std::path::PathBuf, Snapshot) {
    let dir = std::env::temp_dir().join(format!("hostmem-room-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("memory.max"), (1024 * MIB).to_string()).unwrap();
    std::fs::write(dir.join("memory.current"), (1024 * MIB).to_string()).unwrap();
    let mut snap = snapshot();
    if let Ok(Some(l)) = &mut snap.memory_cgroup {
        l.dir = dir.clone();
    }
    (dir, snap)
}

#[test]
fn the_watch_lists_each_limit_once_and_refuses_with_the_batch_total_under_it() {
    let (dir, snap) = snapshot_with_full_cgroup("watch");
    let (a, pa) = ram("a", "200M", Some("4"));
    let (b, pb) = ram("b", "100M", None);
    let (c, pc) = ram("c", "50M", Some("4"));
    let (w, limits, per_item) = watch(&[(&a, &pa), (&b, &pb), (&c, &pc)], &snap);
    assert_eq!(
        limits,
        [
            Limit::Nodes(NodeSet::parse("4").unwrap()),
            Limit::MemoryCgroup,
            Limit::Host
        ]
    );
    assert_eq!(per_item, [vec![0, 1], vec![2, 1], vec![0, 1]]);
    // The cgroup (file: no room) refuses the first step; what it had to give is the
    // three backends' 350 MiB.
    let edge = w.grant(&[1], 16 * MIB).unwrap_err().unwrap();
    assert_eq!(
        edge,
        Edge {
            limit: 1,
            needed: 350 * MIB,
            available: 0,
            done: 0
        }
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A one-page anonymous mapping for a job that is never run.
fn page() -> sys::RawMapping {
    sys::RawMapping::map(4096, None, 0, sys::MapOptions::default()).unwrap()
}

fn job(map: &sys::RawMapping) -> Job<'_> {
    Job {
        map,
        page_size: 4096,
        threads: 1,
        cpus: Vec::new(),
        method: crate::prealloc::Method::Touch,
        watch: None,
        limits: Vec::new(),
        part: None,
    }
}

#[test]
fn a_job_is_given_the_batch_watch_with_its_own_limits_and_no_watch_when_none_applies() {
    let (dir, snap) = snapshot_with_full_cgroup("attach");
    let (a, pa) = ram("a", "200M", Some("4"));
    let (b, pb) = ram("b", "100M", None);
    let (watch, limits, per_job) = watch(&[(&a, &pa), (&b, &pb)], &snap);
    let guard = Guard {
        snap: Some(snap),
        watch,
        limits,
        per_job,
    };
    let map = page();
    let mut j = job(&map);
    guard.attach(1, &mut j);
    assert!(j.watch.is_some_and(|w| std::ptr::eq(w, &guard.watch)));
    assert_eq!(j.limits, [2, 1]);
    let unwatched = Guard::default();
    let mut j = job(&map);
    unwatched.attach(0, &mut j);
    assert!(j.watch.is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_stopped_prealloc_is_reported_against_the_limit_the_edge_names() {
    let (a, pa) = ram("a", "200M", Some("4"));
    let snap = snapshot();
    let (watch, limits, per_job) = watch(&[(&a, &pa)], &snap);
    let guard = Guard {
        snap: Some(snap),
        watch,
        limits,
        per_job,
    };
    let edge = Edge {
        limit: 0,
        needed: 184 * MIB,
        available: MIB,
        done: 16 * MIB,
    };
    let text = guard.edge_error(&a, &edge).map(|e| e.to_string());
    assert_eq!(
        text.as_deref(),
        Some(
            "memory-backend-ram 'a': needs 184 MiB more on node 4, which has 1 MiB available \
             (bound by policy=bind host-nodes=4); preallocation stopped after 16 MiB before \
             the kernel would have had to reclaim or kill, and every page was given back"
        )
    );
}

#[test]
fn before_mapping_refuses_a_preallocated_backend_larger_than_this_hosts_meminfo_room() {
    // 64 TiB is more than /proc/meminfo can show here; the first backend does not
    // preallocate, so the error's index is the second's.
    let (mut lazy, pl) = ram("lazy", "1G", None);
    lazy.set_str("prealloc", "off").unwrap();
    let (big, pb) = ram("big", "64T", None);
    let host = HostTopology::read();
    match Guard::before_mapping(&[(&lazy, &pl), (&big, &pb)], &host) {
        Err((1, Error::HostMemoryShort { id, .. })) => assert_eq!(id, "big"),
        other => panic!("expected the host refusing 'big', got {other:?}"),
    }
}

fn hugetlb_limit(max: u64, current: u64) -> CgroupLimit {
    CgroupLimit {
        cgroup: "/vm".into(),
        dir: "/sys/fs/cgroup/vm".into(),
        version: CgroupVersion::V2,
        max_file: "hugetlb.2MB.max".into(),
        current_file: "hugetlb.2MB.current".into(),
        max,
        current,
    }
}

#[test]
fn a_hugetlb_fault_failure_is_blamed_on_the_cgroup_only_when_its_room_is_short() {
    let (h, _) = huge("h", 64);
    let limit = hugetlb_limit(96 * MIB, 32 * MIB);
    assert!(hugetlb_short_of(&h, 2 * MIB, 64 * MIB, limit.clone()).is_none());
    let e = hugetlb_short_of(&h, 2 * MIB, 66 * MIB, limit).map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "memory-backend-memfd 'h': needs 66 MiB of 2 MiB huge pages, the hugetlb cgroup \
             /vm allows 64 MiB more (hugetlb.2MB.max 96 MiB)"
        )
    );
}
