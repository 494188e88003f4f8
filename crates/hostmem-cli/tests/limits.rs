//! The memory limits as the `hostmem` process shows and applies them on this host,
//! checked against /proc/meminfo and the cgroup files (read, never changed here: the
//! cases that need a cgroup of their own run in the NUMA guest, tests/numa-vm).

use std::process::Command;

use hostmem::size::format_size;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hostmem");

/// A `/proc/meminfo` line in bytes.
fn meminfo(key: &str) -> u64 {
    field(&std::fs::read_to_string("/proc/meminfo").unwrap(), key)
}

/// A line of a meminfo text (`/proc/meminfo`, or a node's with its `Node N` prefix), in
/// bytes.
fn field(text: &str, key: &str) -> u64 {
    let words = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.iter().any(|k| *k == format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} line"));
    let at = words.iter().position(|k| *k == format!("{key}:")).unwrap();
    words[at + 1].parse::<u64>().unwrap() * 1024
}

/// The figures the limits are documented to be, computed here from the kernel's files
/// (README, Memory limits): per node and for the host, MemFree + Active(file) +
/// Inactive(file) + SReclaimable less every zone's `min` watermark plus the most
/// boosting may add; per node its zones' present − managed bytes.
#[derive(Debug, Clone, Copy)]
struct Figures {
    host_available: u64,
    host_free: u64,
    host_total: u64,
    node0_available: u64,
    node0_unmanaged: u64,
    /// MemFree and MemTotal summed over every node with memory.
    nodes_free: u64,
    nodes_total: u64,
}

fn read_figures() -> Figures {
    let page = 4096;
    let factor: u64 = std::fs::read_to_string("/proc/sys/vm/watermark_boost_factor")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").unwrap();
    // Per zone: node, min, high, present, managed (pages).
    let mut zones: Vec<[u64; 5]> = Vec::new();
    for line in zoneinfo.lines() {
        if let Some(rest) = line.strip_prefix("Node ") {
            zones.push([rest.split(',').next().unwrap().parse().unwrap(), 0, 0, 0, 0]);
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let at = match w.first() {
            Some(&"min") => 1,
            Some(&"high") => 2,
            Some(&"present") => 3,
            Some(&"managed") => 4,
            _ => continue,
        };
        if let (Some(z), Some(Ok(v))) = (zones.last_mut(), w.get(1).map(|v| v.parse())) {
            z[at] = v;
        }
    }
    let reserve = |node: Option<u64>| -> u64 {
        zones
            .iter()
            .filter(|z| node.is_none_or(|n| z[0] == n) && z[2] > 0)
            .map(|z| {
                let boost = if factor == 0 {
                    0
                } else {
                    (z[2] * page * factor / 10000).max(2 << 20)
                };
                z[1] * page + boost
            })
            .sum()
    };
    let room = |text: &str, reserve: u64| {
        (field(text, "MemFree")
            + field(text, "Active(file)")
            + field(text, "Inactive(file)")
            + field(text, "SReclaimable"))
        .saturating_sub(reserve)
    };
    let host = std::fs::read_to_string("/proc/meminfo").unwrap();
    let has_memory = std::fs::read_to_string("/sys/devices/system/node/has_memory").unwrap();
    let nodes: Vec<String> = hostmem::NodeSet::parse(has_memory.trim())
        .unwrap()
        .iter()
        .map(|n| std::fs::read_to_string(format!("/sys/devices/system/node/node{n}/meminfo")))
        .collect::<Result<_, _>>()
        .unwrap();
    let sum = |key: &str| nodes.iter().map(|t| field(t, key)).sum();
    let node0 = std::fs::read_to_string("/sys/devices/system/node/node0/meminfo").unwrap();
    Figures {
        host_available: room(&host, reserve(None)),
        host_free: field(&host, "MemFree"),
        host_total: field(&host, "MemTotal"),
        node0_available: room(&node0, reserve(Some(0))),
        node0_unmanaged: zones
            .iter()
            .filter(|z| z[0] == 0)
            .map(|z| z[3].saturating_sub(z[4]) * page)
            .sum(),
        nodes_free: sum("MemFree"),
        nodes_total: sum("MemTotal"),
    }
}

/// How far a figure may move between the test's reads and hostmem's (other processes
/// allocate and free meanwhile; the test reads before and after hostmem and allows this
/// much beyond the two).
const TOLERANCE: u64 = 64 << 20;

/// Whether `v` lies between `a` and `b`, give or take [`TOLERANCE`].
fn between(v: u64, a: u64, b: u64) -> bool {
    v + TOLERANCE >= a.min(b) && v <= a.max(b) + TOLERANCE
}

#[test]
fn host_json_guest_memory_agrees_with_proc_meminfo() {
    let before = read_figures();
    let out = Command::new(BIN).args(["host", "--json"]).output().unwrap();
    let after = read_figures();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &doc["guest-memory"];
    let total = meminfo("MemTotal");
    assert_eq!(g["host"]["total"], total, "host total is MemTotal");
    let avail = g["host"]["available"].as_u64().unwrap();
    assert!(
        between(avail, before.host_available, after.host_available),
        "host available {avail}, computed from /proc/meminfo and /proc/zoneinfo: {} before, \
         {} after",
        before.host_available,
        after.host_available
    );
    let node0 = &g["nodes"]["0"];
    let n0 = node0["available"].as_u64().unwrap();
    assert!(
        between(n0, before.node0_available, after.node0_available),
        "node 0 available {n0}, computed from node0/meminfo and /proc/zoneinfo: {} before, \
         {} after",
        before.node0_available,
        after.node0_available
    );
    // What the kernel may still add to node 0: present − managed, at most the free
    // memory the host counts and no node does; 0 when the host's figures add up.
    let expected = |f: &Figures| {
        let free = f.host_free.saturating_sub(f.nodes_free);
        if free <= 64 << 20 && f.host_total.saturating_sub(f.nodes_total) <= 64 << 20 {
            0
        } else {
            f.node0_unmanaged.min(free)
        }
    };
    let uncounted = node0["uncounted"].as_u64().unwrap();
    assert!(
        between(uncounted, expected(&before), expected(&after)),
        "node 0 uncounted {uncounted}: {before:?} before, {after:?} after"
    );
    // The cgroup: null (no limit), or a limit the files hold now.
    match &g["memory-cgroup"] {
        Value::Null => {}
        l => {
            let dir = l["dir"].as_str().unwrap();
            let file = l["limit-file"].as_str().unwrap();
            let max: u64 = std::fs::read_to_string(format!("{dir}/{file}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(l["max"], max);
        }
    }
}

/// This host (the CI VM) boots with `deferred_init=lazy`: node 0's meminfo leaves out
/// pages /proc/meminfo counts, total and free, and which the kernel adds to node 0 as
/// they are taken. While that is so, a bind to node 0 above node 0's figure but within
/// what the host counts passes `--check` with the warning that says so. Once the kernel
/// has added them all (a VM whose memory was all touched since boot, as after a big
/// prealloc) the nodes add up, and the same bind above node 0's figure is refused,
/// naming node 0, with nothing uncertain: which case holds is read from the kernel's
/// files first, and the test says which one it checked.
#[test]
fn a_bind_to_node0_above_its_meminfo_is_a_warning_while_nodes_do_not_add_up_and_refused_once_they_do(
) {
    let f = read_figures();
    let uncounted = f.host_free.saturating_sub(f.nodes_free);
    let extra = f.node0_unmanaged.min(uncounted);
    let room = extra.min(f.host_available.saturating_sub(f.node0_available));
    // `--check` of `size` bytes bound to node 0: its exit code, its backend and its
    // node 0 limit, as the JSON report has them.
    let check = |size: u64| {
        let obj =
            format!("memory-backend-ram,id=x,size={size},policy=bind,host-nodes=0,prealloc=on");
        let out = Command::new(BIN)
            .args(["run", "--check", "--json", "-object", &obj])
            .output()
            .unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let b = doc["backends"][0].clone();
        let node = b["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["limit"] == "node 0")
            .expect("node 0 is a limit of a bind to it")
            .clone();
        (out.status.code(), b, node)
    };
    if room <= 512 << 20 {
        eprintln!(
            "this host's node figures add up to /proc/meminfo (free {} of {}, total {} of {}, \
             {} present but not managed on node 0): checking the exact case",
            format_size(f.nodes_free),
            format_size(f.host_free),
            format_size(f.nodes_total),
            format_size(f.host_total),
            format_size(f.node0_unmanaged)
        );
        let size = (f.node0_available + (1 << 30)) & !0xfff;
        let (code, b, node) = check(size);
        assert_eq!(code, Some(1), "{size} bytes on node 0 ({f:?}): {b}");
        assert_eq!(b["fits"], false, "{b}");
        assert!(node["uncertain"].is_null(), "nothing uncertain: {node}");
        assert!(node["available"].as_u64().unwrap() < size, "{node}");
        return;
    }
    eprintln!(
        "node 0 may still give {} its meminfo does not count: checking the lazy case",
        format_size(room)
    );
    // Half way into what only the uncounted pages can give.
    let size = (f.node0_available + room / 2) & !0xfff;
    let (code, b, node) = check(size);
    assert_eq!(code, Some(0), "{size} bytes on node 0 ({f:?}): {b}");
    assert_eq!(b["fits"], true);
    let warnings = b["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().is_some_and(|w| {
            w.contains("on node 0, more than the") && w.contains("its meminfo shows available")
        })),
        "{b}"
    );
    assert!(node["uncertain"].as_str().is_some(), "{node}");
    assert!(node["available"].as_u64().unwrap() >= size, "{node}");
}

#[test]
fn more_than_the_host_has_is_refused_with_prealloc_and_a_warning_without() {
    let size = meminfo("MemTotal") + (1 << 30);
    let obj = |prealloc: &str| format!("memory-backend-ram,id=x,size={size},prealloc={prealloc}");
    // Refused before mapping: exit 1 with the message, not the OOM killer's 137.
    let out = Command::new(BIN)
        .args(["run", "-object", &obj("on")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("memory-backend-ram 'x': needs") && err.contains(", the host has "),
        "{err}"
    );
    // --check: a problem with prealloc, a warning without; the host limit listed.
    for (prealloc, fails) in [("on", true), ("off", false)] {
        let out = Command::new(BIN)
            .args(["run", "--check", "--json", "-object", &obj(prealloc)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(i32::from(fails)));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let b = &doc["backends"][0];
        let host = b["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["limit"] == "host")
            .expect("the host is a limit of a default-policy backend");
        assert!(host["available"].as_u64().unwrap() < size);
        let (problems, warnings) = (
            b["problems"].as_array().unwrap(),
            b["warnings"].as_array().unwrap(),
        );
        assert_eq!(
            (problems.len(), warnings.len()),
            if fails { (1, 0) } else { (0, 1) },
            "{b}"
        );
    }
}
