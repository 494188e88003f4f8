//! Backends checked against what the kernel reports: smaps, numa_maps, get_mempolicy,
//! move_pages, the file system.

mod common;

use common::*;
use hostmem::numa::KernelMode;
use hostmem::prealloc::Progress;
use hostmem::{Backend, Error, Kind, MachineDefaults, NodeSet, ObjectSpec, Policy, PropValue};

fn spec_error(spec: &str) -> String {
    let r = ObjectSpec::parse(spec).and_then(|s| {
        let mut b = s.to_backend(&MachineDefaults::default())?;
        b.complete()
    });
    r.unwrap_err().to_string()
}

#[test]
fn prealloc_makes_the_whole_region_resident() {
    let b = ram("r", 256 * MIB).prealloc(true).create().unwrap();
    let v = b.inspect().unwrap();
    assert_eq!(v.size, 256 * MIB);
    assert_eq!(v.resident, 256 * MIB, "smaps Rss after prealloc");
    // THP is advised for anonymous memory: the kernel shows `hg`.
    assert!(v.has_flag("hg"), "VmFlags {:?}", v.vmflags);
    assert!(v.has_flag("dc"), "MADV_DONTFORK: {:?}", v.vmflags);
    assert_eq!(
        b.host_addr().unwrap() % (2 << 20),
        0,
        "2 MiB aligned for THP"
    );
}

#[test]
fn without_prealloc_nothing_is_resident_until_prealloc_is_switched_on_live() {
    let mut b = ram("r", 128 * MIB).create().unwrap();
    assert!(b.inspect().unwrap().resident < MIB);
    b.set("prealloc", PropValue::Bool(true)).unwrap();
    assert_eq!(b.inspect().unwrap().resident, 128 * MIB);
    // on→off does nothing to the memory.
    b.set("prealloc", PropValue::Bool(false)).unwrap();
    assert_eq!(b.inspect().unwrap().resident, 128 * MIB);
    assert_eq!(
        b.get("prealloc").unwrap(),
        PropValue::Bool(true),
        "as in QEMU"
    );
}

#[test]
fn merge_and_dump_flip_vmflags_at_creation_and_live() {
    let mut b = ram("r", 16 * MIB).merge(true).dump(false).create().unwrap();
    let v = b.inspect().unwrap();
    assert!(v.has_flag("mg") && v.has_flag("dd"), "{:?}", v.vmflags);
    b.set_str("merge", "off").unwrap();
    b.set_str("dump", "on").unwrap();
    let v = b.inspect().unwrap();
    assert!(!v.has_flag("mg") && !v.has_flag("dd"), "{:?}", v.vmflags);
    b.set("merge", PropValue::Bool(true)).unwrap();
    assert!(b.inspect().unwrap().has_flag("mg"));
}

#[test]
fn machine_defaults_apply_and_properties_override_them() {
    let d = MachineDefaults {
        merge: false,
        dump: false,
        prealloc: true,
        ..Default::default()
    };
    let b = Backend::builder_with(Kind::Ram, "r", &d)
        .size(8 * MIB)
        .create()
        .unwrap();
    let v = b.inspect().unwrap();
    assert!(!v.has_flag("mg") && v.has_flag("dd"));
    assert_eq!(v.resident, 8 * MIB, "-mem-prealloc default");
    let b = Backend::builder_with(Kind::Ram, "r", &d)
        .size(8 * MIB)
        .merge(true)
        .prealloc(false)
        .create()
        .unwrap();
    let v = b.inspect().unwrap();
    assert!(v.has_flag("mg"));
    assert!(v.resident < 8 * MIB);
}

#[test]
fn shared_memory_cannot_be_merged_and_the_kernel_says_so() {
    let b = Backend::builder(Kind::Memfd, "d")
        .size(8 * MIB)
        .merge(true)
        .create()
        .unwrap();
    assert!(!b.mergeable_kind());
    assert!(
        !b.inspect().unwrap().has_flag("mg"),
        "KSM ignores shared memory"
    );
}

/// On this one-node host every page is on node 0 whatever the policy: what can differ
/// here is the kernel's policy (get_mempolicy, numa_maps) and the page counts of
/// move_pages and numa_maps. Pages on the bound node among several: the NUMA guest
/// (`bind-one-node`).
#[test]
fn bind_sets_the_kernels_policy_and_move_pages_counts_what_numa_maps_counts() {
    let b = ram("r", 64 * MIB)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::parse("0").unwrap())
        .prealloc(true)
        .create()
        .unwrap();
    let placed = b.page_nodes().unwrap();
    let per_node = placed.per_node;
    assert_eq!((placed.absent, placed.other.len()), (0, 0));
    assert_eq!(
        per_node.get(&0).copied(),
        Some(64 * MIB / 4096),
        "move_pages: {per_node:?}"
    );
    let v = b.inspect().unwrap();
    let pol = v.mempolicy.as_ref().unwrap();
    assert_eq!(pol.mode, KernelMode::Bind);
    assert_eq!(pol.nodes.to_string(), "0");
    let numa = v.numa.as_ref().unwrap();
    assert!(
        numa.policy.starts_with("bind:0"),
        "numa_maps: {}",
        numa.policy
    );
    assert_eq!(numa.pages_per_node.get(&0).copied(), Some(64 * MIB / 4096));
    // The policy covers the whole range, read here from the kernel: one VMA from the
    // first byte to the last (an mbind of part of it would split it), and numa_maps
    // says bind for every VMA inside it.
    let (start, end) = (
        b.host_addr().unwrap(),
        b.host_addr().unwrap() + 64 * MIB as usize,
    );
    let inside: Vec<Vma> = vmas()
        .into_iter()
        .filter(|v| v.start < end && v.end > start)
        .collect();
    assert_eq!(inside.len(), 1, "one VMA over the backend: {inside:?}");
    assert_eq!((inside[0].start, inside[0].end), (start, end));
    for v in &inside {
        let line = numa_maps_line(v.start).unwrap();
        assert!(line.contains(" bind:0 "), "numa_maps: {line}");
    }
}

/// On a one-node host every CPU is node 0's, so the placement of the threads cannot
/// fail here: the NUMA guest checks threads on the CPUs of nodes 1 and 2. What can fail
/// here: the thread count and that the threads report where they ran.
#[test]
fn prealloc_threads_one_node_host_four_threads_all_on_node0s_cpus() {
    let host = hostmem::HostTopology::read();
    let b = ram("r", 256 * MIB)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::parse("0").unwrap())
        .prealloc(true)
        .prealloc_threads(4)
        .create()
        .unwrap();
    let s = b.prealloc_stats().unwrap();
    assert_eq!(s.threads, 4, "256 MiB / 64 MiB per thread");
    let node0 = host.cpus_of(&NodeSet::parse("0").unwrap());
    assert!(!s.cpus_seen.is_empty());
    assert!(
        s.cpus_seen.iter().all(|c| node0.contains(c)),
        "{:?} not within {node0:?}",
        s.cpus_seen
    );
}

#[test]
fn validation_messages_are_qemus_and_nothing_is_mapped() {
    let e = spec_error("memory-backend-ram,id=m3,size=1M,host-nodes=0");
    assert_eq!(e, "host-nodes must be empty for policy default, or you should explicitly specify a policy other than default");
    assert_eq!(
        spec_error("memory-backend-ram,id=m4,size=1M,policy=bind"),
        "host-nodes must be set for policy bind"
    );
    assert_eq!(
        spec_error("memory-backend-ram,id=m,size=0"),
        "property 'size' of memory-backend-ram doesn't take value '0'"
    );
    assert_eq!(
        spec_error("memory-backend-ram,id=m,size=1M,host-nodes=2000,policy=bind"),
        "Invalid host-nodes value: 2000"
    );
    assert_eq!(
        spec_error("memory-backend-ram,id=m,size=1M,prealloc=on,reserve=off"),
        "'prealloc=on' and 'reserve=off' are incompatible"
    );
    assert_eq!(
        spec_error("memory-backend-ram,id=m,prealloc-threads=0,size=1M"),
        "property 'prealloc-threads' of memory-backend-ram doesn't take value '0'"
    );
    assert_eq!(
        spec_error("memory-backend-ram,id=m"),
        "Parameter 'size' is missing"
    );
    assert_eq!(
        spec_error("memory-backend-file,id=m,size=1M"),
        "Parameter 'mem-path' is missing"
    );
    assert_eq!(
        spec_error("memory-backend-file,id=m,size=1M,mem-path=/nonexistent/dir/x"),
        "can't open backing store /nonexistent/dir/x for guest RAM: No such file or directory"
    );
    assert_eq!(
        spec_error("memory-backend-ram,id=m,size=1M,policy=local,host-nodes=0"),
        "host-nodes must be empty for policy local"
    );
}

#[test]
fn a_node_that_does_not_exist_is_named_before_mapping() {
    let host = hostmem::HostTopology::read();
    let missing = (0..1024).find(|n| !host.possible.contains(*n)).unwrap();
    let e = spec_error(&format!(
        "memory-backend-ram,id=m6,size=1M,policy=bind,host-nodes={missing}"
    ));
    assert!(
        e.contains(&format!("node {missing} does not exist")) && e.contains("online nodes: "),
        "{e}"
    );
    assert!(e.starts_with("memory-backend-ram 'm6'"), "{e}");
}

#[test]
fn fixed_properties_are_refused_after_allocation() {
    let mut b = ram("r", 4 * MIB).create().unwrap();
    let e = b.set("size", PropValue::Int(8 * MIB)).unwrap_err();
    assert!(
        matches!(e, Error::FixedAfterAllocation { prop: "size", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("'size'") && e.to_string().contains("'r'"));
    assert_eq!(
        b.inspect().unwrap().size,
        4 * MIB,
        "the kernel still sees 4 MiB"
    );
    assert!(b.set("share", PropValue::Bool(true)).is_err());
    // Placement alone is refused with a pointer to the rebind; the same value is fine.
    let e = b
        .set("policy", PropValue::Policy(Policy::Interleave))
        .unwrap_err();
    assert!(e.to_string().contains("rebind"), "{e}");
    b.set("policy", PropValue::Policy(Policy::Default)).unwrap();
    let e = b.set_str("host-nodes", "0").unwrap_err();
    assert!(e.to_string().contains("rebind"), "{e}");
}

/// On a one-node host nothing migrates (every page is on node 0 already): moving pages
/// between nodes is the NUMA guest's rebind test. Here: the policy the kernel sets and
/// the pages read back against smaps and numa_maps.
#[test]
fn rebind_one_node_host_sets_the_policy_and_reads_back_every_page() {
    let mut b = ram("r", 32 * MIB).prealloc(true).create().unwrap();
    let r = b
        .rebind(Policy::Bind, NodeSet::parse("0").unwrap())
        .unwrap();
    let addr = b.host_addr().unwrap();
    assert_eq!(
        r.pages_present * 4096,
        smaps_rss(addr, 32 * MIB as usize),
        "pages read back = smaps Rss"
    );
    assert_eq!(r.fraction_on_target(), 1.0);
    let v = b.inspect().unwrap();
    let pol = v.mempolicy.as_ref().unwrap();
    assert_eq!(
        (pol.mode, pol.nodes.to_string()),
        (KernelMode::Bind, "0".into())
    );
    let numa = v.numa.as_ref().unwrap();
    assert!(numa.policy.starts_with("bind:0"), "{}", numa.policy);
    assert_eq!(
        numa.pages_per_node.values().sum::<u64>(),
        r.pages_present,
        "numa_maps counts the pages the rebind read back"
    );
    // A bad rebind changes nothing.
    assert!(b.rebind(Policy::Bind, NodeSet::new()).is_err());
    assert_eq!(
        b.inspect().unwrap().mempolicy.unwrap().mode,
        KernelMode::Bind
    );
}

#[test]
fn in_use_backends_cannot_be_deleted() {
    let mut b = ram("busy", 4 * MIB).create().unwrap();
    let addr = b.host_addr().unwrap();
    let hold = b.hold().unwrap();
    // The hold is the whole mapping, as /proc/self/maps has it.
    let vma = vmas().into_iter().find(|v| v.start == addr).unwrap();
    assert_eq!((hold.host_addr(), hold.len()), (vma.start, vma.len()));
    assert!(!hold.is_empty());
    let e = b.delete().unwrap_err();
    assert_eq!(e.to_string(), "object 'busy' is in use, can not be deleted");
    assert!(mapped(addr, 4096));
    drop(hold);
    b.delete().unwrap();
    assert!(!mapped(addr, 4096), "unmapped after delete");
}

#[test]
fn two_backends_preallocate_at_the_same_time() {
    let mut a = ram("a", 512 * MIB)
        .prealloc(true)
        .prealloc_threads(1)
        .build()
        .unwrap();
    let mut b = ram("b", 512 * MIB)
        .prealloc(true)
        .prealloc_threads(1)
        .build()
        .unwrap();
    Backend::complete_all(&mut [&mut a, &mut b], &Progress::new()).unwrap();
    let (sa, sb) = (a.prealloc_stats().unwrap(), b.prealloc_stats().unwrap());
    assert!(
        sa.began < sb.ended && sb.began < sa.ended,
        "intervals overlap: {sa:?} {sb:?}"
    );
    assert_eq!(a.inspect().unwrap().resident, 512 * MIB);
    assert_eq!(b.inspect().unwrap().resident, 512 * MIB);
}

#[test]
fn a_batch_refused_before_mapping_creates_no_file() {
    let dir = TempDir::new("batch");
    let path = dir.path().join("created");
    let mut a = ram("a", 64 * MIB).prealloc(true).build().unwrap();
    let mut f = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(&path)
        .build()
        .unwrap();
    let mut bad = ram("bad", 4 * MIB)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::parse("1000").unwrap())
        .build()
        .unwrap();
    let e = Backend::complete_batch(&mut [&mut a, &mut f, &mut bad], &Progress::new()).unwrap_err();
    assert_eq!(e.index, 2, "{}", e.error);
    assert!(!path.exists(), "validation failed before the file was made");
    assert_eq!(dir.entries(), 0);
}
#[test]
fn property_access_by_name_lists_types() {
    let b = Backend::new(Kind::File, "f", &MachineDefaults::default());
    let names: Vec<(&str, &str)> = b.properties().map(|p| (p.name, p.ty.qom_name())).collect();
    assert!(names.contains(&("policy", "HostMemPolicy")));
    assert!(names.contains(&("mem-path", "string")));
    assert!(names.contains(&("host-nodes", "int")));
    assert!(matches!(b.get("nope"), Err(Error::UnknownProperty { .. })));
    // The default is the CPUs this process may run on, as the kernel says.
    let cpus = rustix::thread::sched_getaffinity(None).unwrap().count();
    assert_eq!(
        b.get("prealloc-threads").unwrap(),
        PropValue::Int(u64::from(cpus))
    );
}

/// The kernel features hostmem probes agree with what happens to real backends: each
/// policy the probe saw accepted makes a backend whose get_mempolicy and numa_maps show
/// the mode the probe read back; MADV_POPULATE_WRITE preallocates a shared memfd (no
/// fallback exists for shared memory) as smaps Rss shows; the weights' sysfs directory
/// is there exactly when the probe says.
#[test]
fn probed_features_agree_with_what_backends_get() {
    let f = hostmem::numa::Features::probe();
    assert_eq!(
        f.interleave_weights,
        std::path::Path::new("/sys/kernel/mm/mempolicy/weighted_interleave").is_dir()
    );
    assert!(f.interleave_weights, "Linux 6.9+ has the weights in sysfs");
    assert!(f.populate_write, "Linux 5.14+ has MADV_POPULATE_WRITE");
    let m = Backend::builder(Kind::Memfd, "m")
        .size(8 * MIB)
        .prealloc(true)
        .create()
        .unwrap();
    assert_eq!(smaps_rss(m.host_addr().unwrap(), 8 * MIB as usize), 8 * MIB);
    for p in Policy::ALL {
        let mut b = ram("p", 2 * MIB).policy(p).prealloc(true);
        if p.takes_nodes() {
            b = b.host_nodes(NodeSet::parse("0").unwrap());
        }
        let Some(mode) = f.read_back(p) else {
            assert!(b.create().is_err(), "{p}: mbind refused it in the probe");
            continue;
        };
        let b = b.create().unwrap_or_else(|e| panic!("{p}: {e}"));
        let v = b.inspect().unwrap();
        assert_eq!(
            v.mempolicy.as_ref().unwrap().mode,
            mode,
            "{p}: get_mempolicy"
        );
        // numa_maps read here, not through inspect: its policy field may hold a space
        // (`prefer (many):0`, `weighted interleave:0`).
        let line = numa_maps_line(b.host_addr().unwrap()).unwrap();
        let policy = line.split_once(' ').unwrap().1;
        assert!(
            policy.starts_with(mode.name()),
            "{p}: numa_maps {line}, probe {mode:?}"
        );
    }
    assert!(
        Policy::ALL.iter().all(|&p| f.supports(p)),
        "Linux 6.9+ accepts every policy: {f:?}"
    );
}
