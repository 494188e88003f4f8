//! Huge page backends, checked against the kernel's pool counters. Every test here
//! sets the pool it needs (root) and puts it back; a lock runs them one at a time.

mod common;

use common::*;
use hostmem::numa::HugePool;
use hostmem::{Backend, Error, Kind, NodeSet, Policy};

const HUGE: u64 = 2 * MIB;

#[test]
fn memfd_hugetlb_backend_takes_its_pages_from_the_pool() {
    let pool = PoolGuard::set(HUGE, 16);
    let before = pool.pool();
    let b = Backend::builder(Kind::Memfd, "d")
        .size(8 * MIB)
        .hugetlb(true)
        .prealloc(true)
        .create()
        .unwrap();
    let after = pool.pool();
    assert_eq!(before.free - after.free, 4, "{before:?} -> {after:?}");
    let v = b.inspect().unwrap();
    assert_eq!(v.hugetlb, 8 * MIB, "smaps *_Hugetlb");
    assert_eq!(v.page_size, HUGE, "KernelPageSize");
    assert!(v.has_flag("ht"), "{:?}", v.vmflags);
    drop(b);
    assert_eq!(
        pool.pool().free,
        before.free,
        "pages returned when the backend goes"
    );
}

#[test]
fn hugetlb_reservation_is_taken_at_map_time_without_prealloc() {
    let pool = PoolGuard::set(HUGE, 8);
    let b = Backend::builder(Kind::Memfd, "d")
        .size(8 * MIB)
        .hugetlb(true)
        .create()
        .unwrap();
    let p = pool.pool();
    assert_eq!(p.reserved, 4, "reserve=on holds 4 pages: {p:?}");
    assert_eq!(b.inspect().unwrap().resident, 0);
    drop(b);
    assert_eq!(pool.pool().reserved, 0);
}

#[test]
fn huge_page_exhaustion_is_a_clear_error_and_returns_every_page() {
    let pool = PoolGuard::set(HUGE, 3);
    let before = pool.pool();
    // reserve=on: refused up front, before mapping, naming the shortage.
    let e = Backend::builder(Kind::Memfd, "d")
        .size(16 * MIB)
        .hugetlb(true)
        .prealloc(true)
        .create()
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::HugePagesShort { .. }), "{msg}");
    assert_eq!(
        msg,
        "memory-backend-memfd 'd': not enough 2 MiB huge pages: 8 needed, 3 free on the host"
    );
    assert_eq!(pool.pool(), before);
    // reserve=off maps without holding pages; a live prealloc then is refused before
    // faulting any in: no SIGBUS, a clear error, and the pool as it was while the
    // backend lives on (it used to keep the pages it got and report 0 free).
    let mut b = Backend::builder(Kind::Memfd, "d")
        .size(16 * MIB)
        .hugetlb(true)
        .reserve(false)
        .create()
        .unwrap();
    let msg = b.set_str("prealloc", "on").unwrap_err().to_string();
    assert_eq!(
        msg,
        "memory-backend-memfd 'd': not enough 2 MiB huge pages: 8 needed, 3 free on the host"
    );
    assert_eq!(pool.pool(), before, "pool as it was, backend still live");
    assert_eq!(b.inspect().unwrap().hugetlb, 0);
    // Pages the backend has already count: 2 there, 6 more needed.
    let user = b.hold().unwrap();
    user.fill(0, 4 * MIB as usize, 1).unwrap();
    drop(user);
    let msg = b.set_str("prealloc", "on").unwrap_err().to_string();
    assert!(msg.contains("6 needed, 1 free"), "{msg}");
    drop(b);
    assert_eq!(pool.pool(), before, "pool as it was");
}

/// On this one-node host the host-wide pool is node 0's, and the host-wide check (free
/// less reserved) comes first: here a bound prealloc's shortage is named host-wide. A
/// bound node's own pool named while the host has pages enough elsewhere: the NUMA
/// guest (`empty-node-pool-named`, `check-names-empty-node-pool`).
#[test]
fn bound_prealloc_takes_the_nodes_pages_and_a_short_pool_is_named_host_wide() {
    let pool = PoolGuard::set(HUGE, 2);
    let node0 = || HugePool::read(HUGE, Some(0)).expect("node 0's 2 MiB pool in sysfs");
    let before = node0();
    let b = Backend::builder(Kind::Memfd, "d")
        .size(2 * MIB)
        .hugetlb(true)
        .prealloc(true)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::parse("0").unwrap())
        .create()
        .unwrap();
    assert_eq!(
        before.free - node0().free,
        1,
        "the page came from node 0's pool"
    );
    assert_eq!(b.inspect().unwrap().hugetlb, 2 * MIB, "smaps *_Hugetlb");
    drop(b);
    assert_eq!(node0().free, before.free, "and went back to it");
    drop(pool);
    let pool = PoolGuard::set(HUGE, 1);
    let before = pool.pool();
    let e = Backend::builder(Kind::Memfd, "d")
        .size(4 * MIB)
        .hugetlb(true)
        .prealloc(true)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::parse("0").unwrap())
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "memory-backend-memfd 'd': not enough 2 MiB huge pages: 2 needed, 1 free on the host"
    );
    assert_eq!(pool.pool(), before, "pool as it was");
}

#[test]
fn hugetlbfs_file_backend_uses_the_file_systems_page_size() {
    let _pool = PoolGuard::set(HUGE, 4);
    let fs = mount_hugetlbfs(HUGE);
    let e = Backend::builder(Kind::File, "f")
        .size(MIB)
        .mem_path(fs.path())
        .create()
        .unwrap_err();
    // QEMU 9.1's message, word for word.
    assert_eq!(
        e.to_string(),
        "backend 'memory-backend-file' memory size must be multiple of 2 MiB"
    );
    let b = Backend::builder(Kind::File, "f")
        .size(4 * MIB)
        .mem_path(fs.path())
        .share(true)
        .prealloc(true)
        .create()
        .unwrap();
    let v = b.inspect().unwrap();
    assert_eq!(v.page_size, HUGE, "smaps KernelPageSize");
    assert_eq!(v.hugetlb, 4 * MIB);
    assert_eq!(HugePool::read(HUGE, None).unwrap().free, 2);
    drop(b);
    assert_eq!(
        HugePool::read(HUGE, None).unwrap().free,
        4,
        "unlinked temp file gone with the backend"
    );
}

/// A 1 GiB page needs a free, 1 GiB-aligned range of physical memory, which a host
/// that has run for a while may not have whatever its free total (seen on the CI VM).
/// When the kernel makes the page, a 1 GiB memfd takes it; when it cannot, the backend
/// is refused before mapping, naming the page size and the count. Which case holds is
/// the kernel's answer to growing the pool, and the test says which one it checked.
#[test]
fn one_gib_pages_are_used_when_the_kernel_makes_one_and_refused_by_name_when_not() {
    let g = GIB;
    if HugePool::read(g, None).is_none() {
        panic!("this host has no 1 GiB huge page pool in sysfs");
    }
    let one_gib_memfd = || {
        Backend::builder(Kind::Memfd, "d")
            .size(g)
            .hugetlb(true)
            .hugetlbsize(g)
            .prealloc(true)
            .create()
    };
    match PoolGuard::try_set(g, 1) {
        Ok(pool) => {
            eprintln!("the kernel made a 1 GiB page: checking that the backend takes it");
            let b = one_gib_memfd().unwrap();
            assert_eq!(b.inspect().unwrap().page_size, g);
            assert_eq!(pool.pool().free, 0);
        }
        Err(pool) => {
            eprintln!("the kernel could not make a 1 GiB page: checking the refusal");
            let free = pool.pool().free;
            let e = one_gib_memfd().unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "not enough 1 GiB huge pages: 1 needed, {free} free"
                )),
                "{e}"
            );
            assert_eq!(pool.pool().free, free, "nothing taken");
        }
    }
}

#[test]
fn hugetlbfs_exhaustion_is_clear_at_creation_and_live_and_returns_every_page() {
    let pool = PoolGuard::set(HUGE, 2);
    let before = pool.pool();
    let fs = mount_hugetlbfs(HUGE);
    // prealloc=on: named up front.
    let e = Backend::builder(Kind::File, "f")
        .size(8 * MIB)
        .mem_path(fs.path())
        .share(true)
        .prealloc(true)
        .create()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "memory-backend-file 'f': not enough 2 MiB huge pages: 4 needed, 2 free on the host"
    );
    // prealloc=off, reserve=on: the mapping would reserve pages the pool lacks.
    let e = Backend::builder(Kind::File, "f")
        .size(8 * MIB)
        .mem_path(fs.path())
        .share(true)
        .create()
        .unwrap_err();
    assert!(e.to_string().contains("4 needed, 2 free"), "{e}");
    // reserve=off gets a mapping; a live prealloc off→on then fails cleanly.
    let mut b = Backend::builder(Kind::File, "f")
        .size(8 * MIB)
        .mem_path(fs.path())
        .share(true)
        .reserve(false)
        .create()
        .unwrap();
    let e = b.set_str("prealloc", "on").unwrap_err();
    assert!(
        e.to_string()
            .contains("not enough 2 MiB huge pages: 4 needed"),
        "{e}"
    );
    assert_eq!(
        b.get("prealloc").unwrap(),
        hostmem::PropValue::Bool(false),
        "a failed prealloc is not recorded as done"
    );
    drop(b);
    assert_eq!(fs.entries(), 0);
    assert_eq!(pool.pool(), before, "pool as it was");
}

/// Two backends that each fit the pool but not together: the pre-flight check says so
/// for both, and a real batch of the same two then fails with the pool as it was.
#[test]
fn preflight_sums_backends_against_the_pool_and_a_real_batch_agrees() {
    let pool = PoolGuard::set(HUGE, 3);
    let mk = |id: &str| {
        Backend::builder(Kind::Memfd, id)
            .size(4 * MIB)
            .hugetlb(true)
            .prealloc(true)
            .build()
            .unwrap()
    };
    let (mut a, mut b) = (mk("a"), mk("b"));
    let alone = hostmem::preflight::check(&[&a], &hostmem::HostTopology::read());
    assert!(alone[0].fits(), "{:?}", alone[0].problems);
    let both = hostmem::preflight::check(&[&a, &b], &hostmem::HostTopology::read());
    let want = "memory-backend-memfd 'b': not enough 2 MiB huge pages: 4 needed, 3 free on the host (together with a of the same batch)";
    assert!(both[0].fits(), "{:?}", both[0].problems);
    assert_eq!(both[1].problems, [want]);
    let before = pool.pool();
    let e = Backend::complete_all(&mut [&mut a, &mut b], &hostmem::Progress::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        want,
        "the real batch fails the same way, before mapping"
    );
    assert_eq!(pool.pool(), before, "a failed batch gives every page back");
}

#[test]
fn preflight_names_a_page_size_the_host_does_not_offer_as_the_real_run_does() {
    let b = Backend::builder(Kind::Memfd, "m")
        .size(4 * MIB)
        .hugetlb(true)
        .hugetlbsize(MIB)
        .build()
        .unwrap();
    let c = &hostmem::preflight::check(&[&b], &hostmem::HostTopology::read())[0];
    let mut real = b;
    let e = real.complete().unwrap_err().to_string();
    assert_eq!(c.problems, std::slice::from_ref(&e));
    assert!(e.contains("'hugetlbsize' = '1048576' is invalid"), "{e}");
}
