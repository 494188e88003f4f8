//! `inspect::read_placement`, the exporter's bounded-cost reading, against the kernel's
//! own full walks read here: /proc/PID/smaps (Rss, AnonHugePages, *_Hugetlb) and
//! numa_maps (pages per node) of the range's VMAs. A walk must match them exactly; a
//! sample must hold them inside its stated 95 % intervals for nearly every seed.
//!
//! Each test runs in a child process of its own (`ran_in_child`): it turns THP off or
//! on for the whole process (prctl), and no other test's mapping can merge into its
//! VMA meanwhile.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use hostmem::inspect::{
    read_placement, read_placements, Choice, Method, PlacementReading, ReadOptions,
};
use hostmem::{Backend, InUse, Kind, NodeSet, Policy};
use hostmem_testkit::pool::{Pool, PoolGuard as KitPool};

const PAGE: u64 = 4096;
const HUGE: u64 = 2 * MIB;

/// What the kernel's full walks say about the VMAs overlapping a range.
#[derive(Debug, Default)]
struct Truth {
    resident: u64,
    thp: u64,
    hugetlb: u64,
    per_node: BTreeMap<u32, u64>,
}

impl Truth {
    fn share_on(&self, nodes: &NodeSet) -> f64 {
        let on: u64 = self
            .per_node
            .iter()
            .filter(|(&n, _)| nodes.contains(n))
            .map(|(_, &b)| b)
            .sum();
        on as f64 / self.resident as f64
    }
}

fn range_of(head: &str) -> Option<(u64, u64)> {
    let (a, b) = head.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn kib(rest: &str) -> u64 {
    rest.split_whitespace()
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Reads /proc/PID/smaps and numa_maps for the VMAs overlapping [start, start+len).
fn truth(pid: u32, start: u64, len: u64) -> Truth {
    let end = start + len;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut t = Truth::default();
    let mut starts = Vec::new();
    let mut inside = false;
    for l in smaps.lines() {
        let head = l.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = range_of(head).filter(|_| !head.ends_with(':')) {
            inside = a < end && b > start;
            if inside {
                starts.push(a);
            }
            continue;
        }
        if !inside {
            continue;
        }
        let (key, rest) = l.split_once(':').unwrap_or(("", ""));
        match key {
            "Rss" => t.resident += kib(rest),
            "AnonHugePages" | "ShmemPmdMapped" => t.thp += kib(rest),
            "Private_Hugetlb" | "Shared_Hugetlb" => {
                t.hugetlb += kib(rest);
                t.resident += kib(rest);
            }
            _ => {}
        }
    }
    let numa = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    for l in numa.lines() {
        let mut words = l.split_whitespace();
        let a = u64::from_str_radix(words.next().unwrap(), 16).unwrap();
        if !starts.contains(&a) {
            continue;
        }
        let words: Vec<&str> = words.collect();
        let size = words
            .iter()
            .find_map(|w| w.strip_prefix("kernelpagesize_kB="))
            .map_or(PAGE, |k| k.parse::<u64>().unwrap() * 1024);
        for w in &words {
            if let Some((n, p)) = w.strip_prefix('N').and_then(|r| r.split_once('=')) {
                *t.per_node.entry(n.parse().unwrap()).or_default() +=
                    p.parse::<u64>().unwrap() * size;
            }
        }
    }
    t
}

/// The nodes with memory.
fn memory_nodes() -> NodeSet {
    let text = std::fs::read_to_string("/sys/devices/system/node/has_memory").unwrap();
    NodeSet::parse(text.trim()).unwrap()
}

/// The nodes whose share the tests ask: the first node with memory. On a host with
/// one node every page is there (share 1); in the NUMA test bed (tests/numa-vm) the
/// memory is interleaved over all nodes and the share is about 1/nodes.
fn share_nodes() -> NodeSet {
    memory_nodes().iter().take(1).collect()
}

/// A RAM backend of `size`, interleaved over every node with memory when there are
/// several (so the share on the first is neither 0 nor 1).
fn spread_ram(id: &str, size: u64) -> hostmem::Builder {
    let nodes = memory_nodes();
    if nodes.len() > 1 {
        ram(id, size).policy(Policy::Interleave).host_nodes(nodes)
    } else {
        ram(id, size)
    }
}

/// Writes one byte into about half the pages, chosen by a hash of the page index, so
/// neither a stride nor a block of the sample lines up with them.
fn write_half(mem: &InUse) {
    let pages = mem.len() as u64 / PAGE;
    for i in 0..pages {
        if (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63) == 0 {
            mem.write_at((i * PAGE) as usize, &[1]).unwrap();
        }
    }
}

/// A RAM backend of `size` on 4 KiB pages (THP off for this process), half written.
fn half_written_4k(size: u64) -> (Backend, InUse) {
    rustix::thread::disable_transparent_huge_pages(true).unwrap();
    let b = spread_ram("p", size).create().unwrap();
    let mem = b.hold().unwrap();
    write_half(&mem);
    (b, mem)
}

fn sample_opts(seed: u64, samples: u64) -> ReadOptions {
    ReadOptions {
        method: Choice::Sample,
        seed: Some(seed),
        max_samples: samples,
        round_samples: samples,
        target_half_width: 0.0,
        ..ReadOptions::for_nodes(share_nodes())
    }
}

/// Counts, over `seeds` sampled readings, how often the truth fell outside each
/// interval, and asserts it never fell far outside (4 half-widths: a wrong estimator
/// or a bound several times too narrow).
fn misses(pid: u32, start: u64, len: u64, truth: &Truth, seeds: u64, samples: u64) -> u64 {
    let nodes = share_nodes();
    let mut missed = 0;
    for seed in 0..seeds {
        let r = read_placement(pid, start, len, &sample_opts(seed, samples)).unwrap();
        assert_eq!(
            r.method,
            Method::Sample {
                samples,
                seed,
                confidence: 0.95
            }
        );
        let half = (r.resident.high - r.resident.low) as f64 / 2.0;
        let off = (r.resident.value as f64 - truth.resident as f64).abs();
        assert!(off <= 4.0 * half, "seed {seed}: {r:?} vs {truth:?}");
        missed += u64::from(!r.resident.contains(truth.resident));
        for (node, &bytes) in &truth.per_node {
            let est = r.resident_per_node.get(node).copied().unwrap_or_default();
            // A node the sample never hit reads 0 with no interval: a miss.
            missed += u64::from(!(est.high >= bytes && est.low <= bytes));
        }
        let share = r.share_on_nodes.expect("pages are resident");
        missed += u64::from(!share.contains(truth.share_on(&nodes)));
        assert!(
            (share.value - truth.share_on(&nodes)).abs()
                <= 4.0 * (share.high - share.low) / 2.0 + 1e-9
        );
    }
    missed
}

#[test]
fn sampled_resident_bytes_and_share_hold_the_walks_figures_in_their_95_percent_bounds() {
    let name = "sampled_resident_bytes_and_share_hold_the_walks_figures_in_their_95_percent_bounds";
    if let Some(run) = child_run(name) {
        run.assert_survived();
        // What the child counted, for the log.
        for l in run.stderr.lines().filter(|l| l.starts_with("CHILD")) {
            eprintln!("{l}");
        }
        return;
    }
    let (b, mem) = half_written_4k(512 * MIB);
    let (pid, start, len) = (std::process::id(), mem.host_addr() as u64, mem.len() as u64);
    let t = truth(pid, start, len);
    assert!(t.resident > 200 * MIB && t.resident < 312 * MIB, "{t:?}");
    assert_eq!(t.thp, 0, "THP is off for the process");
    // 40 seeds × (resident, each node, share): at 95 % about 2 of 120 checks miss, and
    // the seeds are fixed, so the count is the same on every run.
    let checks = 40 * (2 + t.per_node.len() as u64);
    let missed = misses(pid, start, len, &t, 40, 16384);
    eprintln!(
        "CHILD {missed} of {checks} intervals missed the walk's figure; share on {} {:.4}",
        share_nodes(),
        t.share_on(&share_nodes())
    );
    assert!(
        missed * 100 <= checks * 8,
        "{missed} of {checks} intervals missed the walk's figure"
    );
    let r = read_placement(pid, start, len, &sample_opts(3, 16384)).unwrap();
    assert!(
        (r.resident.high - r.resident.low) / 2 <= len / 100,
        "a 16384-page sample bounds the resident bytes to ±1 %: {r:?}"
    );
    assert_eq!(
        r.thp.clone().unwrap().high,
        0,
        "a process without THP has none"
    );
    assert_eq!(
        read_placement(pid, start, len, &sample_opts(3, 16384))
            .unwrap()
            .resident,
        r.resident,
        "the same seed draws the same pages"
    );
    // Left to choose, with a walk limit below the process's resident pages, the
    // reading samples, and says why.
    let auto = ReadOptions {
        walk_max_pages: 1 << 14,
        seed: Some(1),
        ..ReadOptions::for_nodes(share_nodes())
    };
    let r = read_placement(pid, start, len, &auto).unwrap();
    assert_eq!(r.method.name(), "sample", "{r:?}");
    assert!(r.resident.contains(t.resident), "{r:?} vs {t:?}");
    assert!(r.policy.is_err(), "a sample reads no numa_maps");
    drop((mem, b));
}

/// Asserts a reading is a walk that matches the kernel's figures exactly.
fn assert_walk_matches(r: &PlacementReading, t: &Truth) {
    assert_eq!(r.method, Method::Walk, "{r:?}");
    assert_eq!(r.resident.low, r.resident.high, "a walk is exact");
    assert_eq!(r.resident.value, t.resident, "smaps Rss + hugetlb");
    let per_node: BTreeMap<u32, u64> = r
        .resident_per_node
        .iter()
        .map(|(&n, b)| (n, b.value))
        .collect();
    assert_eq!(per_node, t.per_node, "numa_maps");
    assert_eq!(r.thp.clone().unwrap().value, t.thp, "smaps AnonHugePages");
    assert_eq!(
        r.hugetlb.clone().unwrap().value,
        t.hugetlb,
        "smaps *_Hugetlb"
    );
    if t.resident > 0 {
        let s = r.share_on_nodes.unwrap();
        assert_eq!(s.value, t.share_on(&share_nodes()));
    }
}

#[test]
fn small_4k_ranges_are_walked_and_match_smaps_and_numa_maps_exactly_one_by_one_and_together() {
    if ran_in_child(
        "small_4k_ranges_are_walked_and_match_smaps_and_numa_maps_exactly_one_by_one_and_together",
    ) {
        return;
    }
    let (_b, mem) = half_written_4k(64 * MIB);
    // dump=off: VmFlags `dd`, so the kernel never merges it into the first's VMA.
    let other = spread_ram("q", 32 * MIB)
        .dump(false)
        .prealloc(true)
        .create()
        .unwrap();
    let pid = std::process::id();
    let a = (mem.host_addr() as u64, mem.len() as u64);
    let b = (other.host_addr().unwrap() as u64, 32 * MIB);
    let opts = ReadOptions::for_nodes(share_nodes());
    let r = read_placement(pid, a.0, a.1, &opts).unwrap();
    assert_walk_matches(&r, &truth(pid, a.0, a.1));
    assert!(r.policy.is_ok(), "numa_maps gives the policy: {r:?}");
    // A VM's devices read together: each as the kernel says, and a range nothing maps
    // (the second page of the address space) fails alone.
    let all = read_placements(
        pid,
        [
            (a.0, a.1, &opts),
            (b.0, b.1, &opts),
            (0x1000, 0x1000, &opts),
        ],
    );
    assert_walk_matches(all[0].as_ref().unwrap(), &truth(pid, a.0, a.1));
    let tb = truth(pid, b.0, b.1);
    assert_eq!(tb.resident, 32 * MIB, "prealloc");
    assert_walk_matches(all[1].as_ref().unwrap(), &tb);
    let e = all[2].as_ref().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
}

#[test]
fn a_thp_range_is_walked_even_above_the_walk_limit_and_matches_exactly() {
    if ran_in_child("a_thp_range_is_walked_even_above_the_walk_limit_and_matches_exactly") {
        return;
    }
    rustix::thread::disable_transparent_huge_pages(false).unwrap();
    let b = spread_ram("t", 256 * MIB).prealloc(true).create().unwrap();
    let (pid, start, len) = (std::process::id(), b.host_addr().unwrap() as u64, 256 * MIB);
    let t = truth(pid, start, len);
    // 65536 base pages and as many in the process's counters, above the limit: only
    // the pilot sample can see that a walk visits one entry per THP.
    let opts = ReadOptions {
        walk_max_pages: 8192,
        seed: Some(5),
        ..ReadOptions::for_nodes(share_nodes())
    };
    let r = read_placement(pid, start, len, &opts).unwrap();
    if t.thp < len * 9 / 10 {
        // The kernel found too few huge pages (fragmented memory): nothing to test.
        eprintln!(
            "only {} of {len} bytes in THP; skipping the THP walk check",
            t.thp
        );
        return;
    }
    assert_walk_matches(&r, &t);
    assert!(r.why.contains("sample predicts"), "{}", r.why);
    // The sample sees the THP too, within its bounds.
    let s = read_placement(pid, start, len, &sample_opts(2, 8192)).unwrap();
    assert!(s.thp.clone().unwrap().contains(t.thp), "{s:?} vs {t:?}");
}

#[test]
fn a_hugetlb_range_is_walked_exactly_and_sampled_within_bounds() {
    if ran_in_child("a_hugetlb_range_is_walked_exactly_and_sampled_within_bounds") {
        return;
    }
    let mut pool = KitPool::new();
    pool.raise(Pool::host(HUGE), 32).unwrap();
    let b = Backend::builder(Kind::Memfd, "h")
        .size(64 * MIB)
        .hugetlb(true)
        .create()
        .unwrap();
    let mem = b.hold().unwrap();
    // Half the huge pages, one byte each at an odd offset.
    for i in (0..32).step_by(2) {
        mem.write_at(i * HUGE as usize + 12345, &[1]).unwrap();
    }
    let (pid, start, len) = (std::process::id(), mem.host_addr() as u64, 64 * MIB);
    let t = truth(pid, start, len);
    assert_eq!(t.hugetlb, 32 * MIB, "{t:?}");
    let r = read_placement(pid, start, len, &ReadOptions::for_nodes(share_nodes())).unwrap();
    assert_walk_matches(&r, &t);
    assert_eq!(r.page_size, HUGE, "PROCMAP_QUERY's page size");
    // move_pages answers for any base page address inside a huge page: the sample
    // finds about half of them resident, all hugetlb.
    let s = read_placement(pid, start, len, &sample_opts(1, 4096)).unwrap();
    assert!(s.resident.contains(t.resident), "{s:?} vs {t:?}");
    assert!(s.hugetlb.clone().unwrap().contains(t.hugetlb), "{s:?}");
    assert_eq!(s.hugetlb.clone().unwrap().value, s.resident.value, "{s:?}");
    assert_eq!(s.thp.clone().unwrap().high, 0, "{s:?}");
    drop((mem, b));
    pool.restore().unwrap();
}

/// The memory holder of `another_processs_range_reads_as_its_smaps_and_numa_maps_say`:
/// in the child, maps 256 MiB on 4 KiB pages, writes half of it, prints
/// `HOLDING pid start len` and keeps it until its stdin closes.
fn hold_memory_until_stdin_closes() {
    let (_b, mem) = half_written_4k(256 * MIB);
    println!(
        "\nHOLDING {} {} {}",
        std::process::id(),
        mem.host_addr(),
        mem.len()
    );
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap() > 0 {}
}

#[test]
fn another_processs_range_reads_as_its_smaps_and_numa_maps_say() {
    const NAME: &str = "another_processs_range_reads_as_its_smaps_and_numa_maps_say";
    if std::env::var_os("HOSTMEM_CHILD").is_some() {
        return hold_memory_until_stdin_closes();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env("HOSTMEM_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let holding = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before holding memory"
        );
        if let Some(rest) = line.trim().strip_prefix("HOLDING ") {
            let v: Vec<u64> = rest.split(' ').map(|w| w.parse().unwrap()).collect();
            break v;
        }
    };
    let (pid, start, len) = (holding[0] as u32, holding[1], holding[2]);
    assert_eq!(pid, child.id());
    let t = truth(pid, start, len);
    assert!(t.resident > 100 * MIB, "{t:?}");
    let r = read_placement(pid, start, len, &ReadOptions::for_nodes(share_nodes())).unwrap();
    assert_walk_matches(&r, &t);
    let checks = 20 * (2 + t.per_node.len() as u64);
    let missed = misses(pid, start, len, &t, 20, 8192);
    assert!(
        missed * 100 <= checks * 10,
        "{missed} of {checks} intervals missed"
    );
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(
        status.success() && rest.contains("1 passed"),
        "{status}\n{rest}"
    );
}
