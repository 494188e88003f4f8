//! The memory limits as the `hostmem` process shows and applies them on this host,
//! checked against /proc/meminfo and the cgroup files (read, never changed here: the
//! cases that need a cgroup of their own run in the NUMA guest, tests/numa-vm).

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hostmem");

/// A `/proc/meminfo` line in bytes.
fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn host_json_guest_memory_agrees_with_proc_meminfo() {
    let out = Command::new(BIN).args(["host", "--json"]).output().unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &doc["guest-memory"];
    let total = meminfo("MemTotal");
    assert_eq!(g["host"]["total"], total, "host total is MemTotal");
    let avail = g["host"]["available"].as_u64().unwrap();
    assert!(avail > 0 && avail <= total, "{avail} of {total}");
    // Free plus the reclaimable parts, less the reserve: within what the kernel says.
    let free = g["host"]["free"].as_u64().unwrap();
    assert!(free <= total && g["host"]["kernel-reserve"].as_u64().unwrap() > 0);
    for (n, node) in g["nodes"].as_object().unwrap() {
        let t = node["total"].as_u64().unwrap();
        assert!(
            t <= total && node["available"].as_u64().unwrap() <= t,
            "node {n}: {node}"
        );
    }
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
