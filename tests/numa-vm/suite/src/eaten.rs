//! Memory taken by another process while hostmem preallocates (issue 11): hostmem
//! stops at the edge, gives every page back and nobody is killed; QEMU 10 recorded.
//! Helpers (cgroups, dmesg, node free memory, running QEMU) are `limits.rs`'s.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostmem::{Backend, Kind, NodeSet, Policy};
use rustix::process::{kill_process, Pid, Signal};

use hostmem_testkit::qmp::{json, Qmp};

use crate::common::*;
use crate::limits::{
    command, finish, last_line, node_free, node_room, oom_lines, status_text, tail, Vmm, QEMU,
    SMALL,
};

/// `numa-suite eat NODE MIB [ignore]`: takes MIB on NODE (bound, preallocated; with
/// `ignore`, past the memory limits), says `ate`, and holds it until stdin closes. The other process of the eaten-during-prealloc case.
pub fn eat(args: &[String]) -> ! {
    let (node, mib, ignore) = match args {
        [n, m, rest @ ..] => (
            n.clone(),
            m.parse::<u64>().unwrap_or(0),
            rest.first().is_some_and(|a| a == "ignore"),
        ),
        _ => (String::new(), 0, false),
    };
    let b = Backend::builder(Kind::Ram, "eaten")
        .ignore_memory_limits(ignore)
        .size(mib * MIB)
        .policy(Policy::Bind)
        .host_nodes(NodeSet::parse(&node).unwrap_or_default())
        .prealloc(true)
        .create();
    match b {
        Ok(_b) => {
            println!("ate");
            let _ = std::io::stdout().flush();
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
            std::process::exit(0)
        }
        Err(e) => {
            println!("eater: {e}");
            std::process::exit(1)
        }
    }
}

/// Whether every thread of `pid` is stopped (state `T` in /proc/PID/task/*/stat): a
/// thread inside MADV_POPULATE_WRITE stops only when its call returns.
pub(crate) fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('T')))
            .unwrap_or(false)
    })
}

/// Pages on `node` over every mapping of a process (its numa_maps).
pub(crate) fn pages_on(pid: u32, node: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/numa_maps");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let key = format!("N{node}=");
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&key)?.parse::<u64>().ok())
        .sum())
}

/// Starts the eater for all but 64 MiB of the small node's room (free pages parked on
/// per-CPU lists are not in MemFree, so the eater's own watch may see less than is
/// there); returns it once it said what it did (`ate`, or its error).
pub(crate) fn start_eater(ignore: bool) -> Result<(Child, u64, String), String> {
    let eat = node_room(SMALL)?.saturating_sub(64 * MIB) / (2 * MIB) * 2;
    let mut eater = Command::new("/bin/numa-suite")
        .args(["eat", &SMALL.to_string(), &eat.to_string()])
        .args(ignore.then_some("ignore"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the eater: {e}"))?;
    let mut said = String::new();
    BufReader::new(eater.stdout.take().ok_or("eater stdout")?)
        .read_line(&mut said)
        .map_err(|e| e.to_string())?;
    Ok((eater, eat, said.trim().to_string()))
}

/// Waits until `pid` has taken 32 MiB of the small node (MemFree from `free0`).
pub(crate) fn wait_begun(child: &mut Child, free0: u64) -> Result<(), String> {
    let start = Instant::now();
    while free0.saturating_sub(node_free(SMALL)?) < 32 * MIB {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("ended ({st}) before it had begun"));
        }
        ensure(start.elapsed() < Duration::from_secs(30), || {
            "did not begin in 30 s".to_string()
        })?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Another process takes the small node's memory while hostmem preallocates there.
///
/// The backend is added over QMP, so hostmem lives on after the failure and its own
/// numa_maps and descriptors can be read. hostmem (one thread, 4 KiB pages) is paused
/// with SIGSTOP once it has begun and every thread has stopped; the eater
/// (`numa-suite eat`, itself a hostmem library user) takes all but 64 MiB of what is
/// left; hostmem resumes and must stop at the edge and give every page back: none of
/// its pages on the node, no memfd left open, the node's MemFree short only of the
/// eater's pages. Nobody is killed.
fn eaten_over_qmp(kind: &str) -> Result<String, String> {
    let room0 = node_room(SMALL)?;
    let free0 = node_free(SMALL)?;
    let oom0 = oom_lines()?;
    let size = room0.saturating_sub(48 * MIB) / (2 * MIB) * 2;
    let sock = format!("/tmp/limits-{kind}.sock");
    let _ = std::fs::remove_file(&sock);
    let mut hm = Command::new("/bin/hostmem")
        .args(["run", "--qmp", &sock])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting hostmem: {e}"))?;
    let mut q = Qmp::connect(Path::new(&sock), Duration::from_secs(60))?;
    // What the process itself has on the node before any backend (its code and the
    // initramfs files it maps may lie there): the baseline for "gave every page back".
    let base_on_node = pages_on(hm.id(), SMALL)?;
    q.send(
        "object-add",
        json!({"qom-type": format!("memory-backend-{kind}"), "id": "x", "size": size * MIB,
               "policy": "bind", "host-nodes": [SMALL], "prealloc": true, "prealloc-threads": 1}),
    )?;
    wait_begun(&mut hm, free0).map_err(|e| format!("hostmem {e}"))?;
    let pid = Pid::from_raw(hm.id() as i32).ok_or("pid")?;
    kill_process(pid, Signal::STOP).map_err(|e| format!("SIGSTOP: {e}"))?;
    let t = Instant::now();
    while !all_stopped(hm.id()) {
        ensure(t.elapsed() < Duration::from_secs(10), || {
            "hostmem's threads did not stop in 10 s".to_string()
        })?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let taken = pages_on(hm.id(), SMALL)? * 4096;
    ensure(taken + 64 * MIB < size * MIB, || {
        format!(
            "hostmem had {} of {size} MiB when paused: too late to test",
            taken / MIB
        )
    })?;
    let (mut eater, eat, said) = start_eater(false)?;
    if said != "ate" {
        let mi = std::fs::read_to_string(format!("/sys/devices/system/node/node{SMALL}/meminfo"))
            .unwrap_or_default();
        let free = mi.lines().find(|l| l.contains("MemFree")).unwrap_or("");
        return Err(format!(
            "the eater did not eat: {said}; hostmem paused with {} MiB; then {free}",
            taken / MIB
        ));
    }
    let still = pages_on(hm.id(), SMALL)? * 4096;
    ensure(still == taken, || {
        format!(
            "hostmem went on while stopped: {} MiB then {} MiB; eater: {said}",
            taken / MIB,
            still / MIB
        )
    })?;
    kill_process(pid, Signal::CONT).map_err(|e| format!("SIGCONT: {e}"))?;
    let reply = q.reply()?.to_string();
    // hostmem is alive: read what it holds now.
    let left_on_node = pages_on(hm.id(), SMALL)?;
    let memfds = std::fs::read_dir(format!("/proc/{}/fd", hm.id()))
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|f| {
            std::fs::read_link(f.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:"))
        })
        .count();
    let eater_pages = pages_on(eater.id(), SMALL)?;
    // Pages just freed may sit on the per-CPU free lists, outside MemFree; compaction
    // drains those lists first (this is the guest's own kernel).
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    let free_now = node_free(SMALL)?;
    q.send("quit", json!({}))?;
    let out = hm.wait_with_output().map_err(|e| e.to_string())?;
    drop(eater.stdin.take());
    let eater_status = eater.wait().map_err(|e| e.to_string())?;
    let oom = oom_lines()?;
    let desc = reply
        .split("\"desc\": \"")
        .nth(1)
        .or_else(|| reply.split("\"desc\":\"").nth(1))
        .map_or(reply.as_str(), |d| d.trim_end_matches(['}', '"', ' ']));
    let record = format!(
        "{} MiB {kind} asked, {} MiB faulted in when paused, eater took {eat} MiB ({said}); object-add: {}; then the whole hostmem process has {left_on_node} pages on node {SMALL} ({base_on_node} before the object-add: its code and files) and {memfds} memfds, node MemFree {} MiB before, {} MiB with the eater's {} MiB; hostmem {}, eater {}, {} new OOM lines",
        size,
        taken / MIB,
        tail(desc),
        free0 / MIB,
        free_now / MIB,
        eater_pages * 4096 / MIB,
        status_text(&out.status),
        status_text(&eater_status),
        oom.len() - oom0.len()
    );
    // What the kernel logged, if it had to kill: the allocating task and the victim.
    let record = if oom.len() > oom0.len() {
        format!("{record} [{}]", oom[oom0.len()..].join(" | "))
    } else {
        record
    };
    ensure(said == "ate", || format!("the eater did not eat: {record}"))?;
    ensure(
        reply.contains("\"error\"")
            && desc.contains("on node 4")
            && desc.contains("preallocation stopped after"),
        || format!("object-add was not refused at the edge: {record}"),
    )?;
    // A few pages of hostmem's own (a thread's stack, malloc's arena) may sit on the
    // node; the backend's were at least the 32 MiB faulted in before the pause.
    ensure(
        left_on_node.saturating_sub(base_on_node) * 4096 < 4 * MIB && memfds == 0,
        || format!("pages kept: {record}"),
    )?;
    // Nothing of hostmem's may be missing from the node's free memory. More free than
    // before is fine: the eater's pressure may have reclaimed page cache there.
    let expect = free0.saturating_sub(eater_pages * 4096);
    ensure(free_now + 8 * MIB >= expect, || {
        format!(
            "node MemFree {} MiB, expected at least {} MiB (before less the eater's): {record}",
            free_now / MIB,
            expect.saturating_sub(8 * MIB) / MIB
        )
    })?;
    ensure(
        out.status.code() == Some(0) && eater_status.success(),
        || format!("exit statuses: {record}"),
    )?;
    ensure(oom.len() == oom0.len(), || {
        format!("dmesg: {:?}", &oom[oom0.len()..])
    })?;
    Ok(record)
}

/// The same with QEMU 10 for the record. QEMU cannot be paused so (its one populate
/// call runs on under SIGSTOP), so the eater, told to ignore the limits, takes the
/// same share while QEMU runs.
fn eaten_qemu() -> Result<String, String> {
    let room0 = node_room(SMALL)?;
    let free0 = node_free(SMALL)?;
    let oom0 = oom_lines()?;
    let size = room0.saturating_sub(48 * MIB) / (2 * MIB) * 2;
    let objs = [format!(
        "memory-backend-ram,id=x,size={size}M,policy=bind,host-nodes={SMALL},prealloc=on,prealloc-threads=1"
    )];
    let mut child = command(Vmm::Qemu, None, &objs, &[])
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    wait_begun(&mut child, free0)?;
    let (mut eater, eat, said) = start_eater(true)?;
    let out = finish(Vmm::Qemu, child)?;
    drop(eater.stdin.take());
    let eater_status = eater.wait().map_err(|e| e.to_string())?;
    let oom = oom_lines()?;
    Ok(format!(
        "QEMU 10 ({size} MiB ram): {}, eater of {eat} MiB {} ({said}), {} new OOM lines in dmesg{}",
        status_text(&out.status),
        status_text(&eater_status),
        oom.len() - oom0.len(),
        match last_line(&out.stderr) {
            l if l.is_empty() => String::new(),
            l => format!(", stderr: {l}"),
        }
    ))
}

/// [`eaten_over_qmp`] for memory-backend-ram and memory-backend-memfd (whose pages go
/// back only when the memfd is closed), then QEMU 10 for the record.
pub fn eaten_during_prealloc(_: &Topo) -> Check {
    with_thp("never", || {
        let ram = eaten_over_qmp("ram")?;
        let memfd = eaten_over_qmp("memfd")?;
        let q = if Path::new(QEMU).exists() {
            format!(
                "; {}",
                eaten_qemu().unwrap_or_else(|e| format!("QEMU 10: {e}"))
            )
        } else {
            String::new()
        };
        Ok(format!("ram: {ram}; memfd: {memfd}{q}"))
    })
}
