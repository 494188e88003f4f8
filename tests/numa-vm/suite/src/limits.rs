//! Memory limits (issue 11): a backend that cannot fit is refused before any page is
//! touched, a batch is summed, the memory and hugetlb cgroups are named — never the
//! OOM killer. (Memory taken by another process during prealloc: `eaten.rs`, with the
//! helpers here.) Each check reads the kernel: exit statuses,
//! dmesg, node meminfo, cgroup memory.peak / memory.events, the huge page counters.
//! Where /bin/qemu-system-x86_64 exists, QEMU 10 runs the same -object and its exit
//! status and last stderr line are recorded (a record, not an assertion).
//!
//! The cgroups are the guest's own: cgroup2 is mounted on /sys/fs/cgroup inside the
//! guest, with memory and hugetlb enabled for the children made here.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hostmem::limits::{MemoryRoom, Watermarks};
use hostmem::numa::HugePool;
use rustix::process::{kill_process, Pid, Signal};

use crate::common::*;

const CG: &str = "/sys/fs/cgroup";
pub(crate) const QEMU: &str = "/bin/qemu-system-x86_64";
/// The guest's memory-only node (384 MiB).
pub(crate) const SMALL: u32 = 4;

/// A fresh child cgroup `name` of the guest's cgroup2 root (mounted here if needed),
/// with the memory and hugetlb controllers enabled for it.
pub(crate) fn cgroup(name: &str) -> Result<String, String> {
    if !Path::new(CG).join("cgroup.controllers").exists() {
        let st = Command::new("mount")
            .args(["-t", "cgroup2", "none", CG])
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        ensure(st.success(), || format!("mount -t cgroup2: {st}"))?;
    }
    let ctl = format!("{CG}/cgroup.subtree_control");
    std::fs::write(&ctl, "+memory +hugetlb").map_err(|e| format!("{ctl}: {e}"))?;
    let on = std::fs::read_to_string(&ctl).map_err(|e| e.to_string())?;
    ensure(on.contains("memory") && on.contains("hugetlb"), || {
        format!("{ctl} reads {on:?}")
    })?;
    let dir = format!("{CG}/{name}");
    if Path::new(&dir).exists() {
        std::fs::remove_dir(&dir).map_err(|e| format!("rmdir {dir}: {e}"))?;
    }
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    Ok(dir)
}

pub(crate) fn read_u64(path: &str) -> Result<u64, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    t.trim().parse().map_err(|_| format!("{path}: {t:?}"))
}

/// A `key value` line of a flat cgroup file (memory.events).
pub(crate) fn keyed(path: &str, key: &str) -> Result<u64, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    t.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .ok_or_else(|| format!("{path} has no {key}: {t:?}"))
}

/// Lines of the kernel log that tell of the OOM killer.
pub(crate) fn oom_lines() -> Result<Vec<String>, String> {
    let out = Command::new("dmesg")
        .output()
        .map_err(|e| format!("dmesg: {e}"))?;
    ensure(out.status.success(), || format!("dmesg: {}", out.status))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("out of memory") || l.contains("oom-kill") || l.contains("oom_reaper")
        })
        .map(str::to_string)
        .collect())
}

/// Free memory of a node: MemFree of its meminfo plus the free pages the kernel keeps
/// on per-CPU lists (the `count:` of each zone's pagesets in /proc/zoneinfo), which
/// MemFree leaves out: pages just given back land there first.
pub(crate) fn node_free(n: u32) -> Result<u64, String> {
    let free = MemoryRoom::read_node(n, &Watermarks::default())
        .map_err(|e| e.to_string())?
        .free;
    let zones = std::fs::read_to_string("/proc/zoneinfo").map_err(|e| e.to_string())?;
    let mut mine = false;
    let mut pcp = 0;
    for line in zones.lines() {
        if let Some(rest) = line.strip_prefix("Node ") {
            mine = rest.split(',').next() == Some(&n.to_string());
        } else if mine {
            if let Some(c) = line.trim().strip_prefix("count:") {
                pcp += c.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(free + pcp * 4096)
}

pub(crate) fn node_room(n: u32) -> Result<u64, String> {
    Ok(MemoryRoom::read_node(n, &Watermarks::read())
        .map_err(|e| e.to_string())?
        .available())
}

/// Which program runs the -object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Vmm {
    Hostmem,
    Qemu,
}

/// The command for `objects`, started inside cgroup `dir` when given (a shell puts
/// itself there, then execs the program).
pub(crate) fn command(vmm: Vmm, dir: Option<&str>, objects: &[String], extra: &[&str]) -> Command {
    let mut args: Vec<String> = match vmm {
        Vmm::Hostmem => vec!["/bin/hostmem".into(), "run".into()],
        Vmm::Qemu => ["-machine", "none", "-nodefaults", "-display", "none"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    if vmm == Vmm::Qemu {
        args.insert(0, QEMU.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    for o in objects {
        args.push("-object".into());
        args.push(o.clone());
    }
    let mut c = match dir {
        Some(d) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!("echo $$ > {d}/cgroup.procs && exec \"$0\" \"$@\""))
                .args(&args);
            c
        }
        None => {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        }
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// CPU time of a process so far, in clock ticks (utime + stime of /proc/PID/stat).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Waits for `child`. QEMU with `-machine none` keeps running once its objects exist
/// (prealloc is part of making them), so it is stopped with SIGTERM once it has used
/// no CPU for a second, or after 120 s.
pub(crate) fn finish(vmm: Vmm, mut child: Child) -> Result<Output, String> {
    if vmm == Vmm::Qemu {
        let start = Instant::now();
        let (mut last, mut idle) = (None, 0);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            let now = cpu_ticks(child.id());
            idle = if now == last { idle + 1 } else { 0 };
            last = now;
            if idle >= 10 || start.elapsed() > Duration::from_secs(120) {
                let pid = Pid::from_raw(child.id() as i32).ok_or("pid")?;
                let _ = kill_process(pid, Signal::TERM);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

pub(crate) fn status_text(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(9)) => "killed by SIGKILL (exit 137)".into(),
        (_, Some(15)) => {
            "still running once its objects were made (ended by the suite's SIGTERM)".into()
        }
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

pub(crate) fn last_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    s.trim().lines().last().unwrap_or("").to_string()
}

/// What QEMU 10 does with the same objects, as one line; empty without QEMU.
fn qemu_record(dir: Option<&str>, objects: &[String]) -> String {
    if !Path::new(QEMU).exists() {
        return String::new();
    }
    let before = oom_lines().map_or(0, |l| l.len());
    let r = command(Vmm::Qemu, dir, objects, &[])
        .spawn()
        .map_err(|e| e.to_string())
        .and_then(|c| finish(Vmm::Qemu, c));
    let oom = oom_lines().map_or(0, |l| l.len()) > before;
    match r {
        Ok(o) => format!(
            "; QEMU 10: {}{}{}",
            status_text(&o.status),
            if oom { ", OOM killer in dmesg" } else { "" },
            match last_line(&o.stderr) {
                l if l.is_empty() => String::new(),
                l => format!(", stderr: {l}"),
            }
        ),
        Err(e) => format!("; QEMU 10 did not start: {e}"),
    }
}

/// hostmem's refusal of `objects` in a fresh cgroup: exit 1 (not a signal), stderr
/// holding each of `words`, the cgroup's memory.peak below `peak_max` (nothing of the
/// size was touched), no OOM line added to dmesg, and the small node's MemFree as it
/// was. Returns the message and the peak.
fn refused(
    name: &str,
    objects: &[String],
    extra: &[&str],
    words: &[&str],
    peak_max: u64,
    setup: impl Fn(&str) -> Result<(), String>,
) -> Result<(String, String), String> {
    let dir = cgroup(name)?;
    setup(&dir)?;
    let oom0 = oom_lines()?;
    let free0 = node_free(SMALL)?;
    let out = command(Vmm::Hostmem, Some(&dir), objects, extra)
        .output()
        .map_err(|e| format!("starting hostmem: {e}"))?;
    let msg = last_line(&out.stderr);
    ensure(out.status.code() == Some(1), || {
        format!("hostmem: {} (want exit 1): {msg}", status_text(&out.status))
    })?;
    for w in words {
        ensure(msg.contains(w), || format!("message lacks {w:?}: {msg}"))?;
    }
    let peak = read_u64(&format!("{dir}/memory.peak"))?;
    ensure(peak < peak_max, || {
        format!("{dir}/memory.peak is {peak}: memory was touched before the refusal")
    })?;
    let kills = keyed(&format!("{dir}/memory.events"), "oom_kill ")?;
    ensure(kills == 0, || {
        format!("{dir}/memory.events: oom_kill {kills}")
    })?;
    let oom = oom_lines()?;
    ensure(oom.len() == oom0.len(), || {
        format!("dmesg: {:?}", &oom[oom0.len()..])
    })?;
    let free = node_free(SMALL)?;
    ensure(free.abs_diff(free0) < 8 * MIB, || {
        format!("node {SMALL} MemFree {free0} before, {free} after")
    })?;
    Ok((msg, format!("peak {} KiB", peak / 1024)))
}

pub(crate) fn tail(msg: &str) -> &str {
    msg.split_once("': ").map_or(msg, |(_, r)| r)
}

/// Bound to the 384 MiB node, asking 512 MiB: refused before mapping.
pub fn bind_to_too_small_node(_: &Topo) -> Check {
    let obj =
        format!("memory-backend-ram,id=x,size=512M,policy=bind,host-nodes={SMALL},prealloc=on");
    let objs = [obj];
    let (msg, peak) = refused(
        "a",
        &objs,
        &[],
        &[
            "'x': needs 512 MiB on node 4, which has",
            "(bound by policy=bind host-nodes=4)",
        ],
        32 * MIB,
        |_| Ok(()),
    )?;
    let q = qemu_record(None, &objs);
    Ok(format!("exit 1, {peak}: {}{q}", tail(&msg)))
}

/// Two backends on the small node that each fit but not together.
pub fn batch_summed_on_a_node(_: &Topo) -> Check {
    let room = node_room(SMALL)?;
    let each = (room * 6 / 10) / (2 * MIB) * 2;
    let objs: Vec<String> = ["a", "b"]
        .iter()
        .map(|id| {
            format!("memory-backend-ram,id={id},size={each}M,policy=bind,host-nodes={SMALL},prealloc=on")
        })
        .collect();
    let (msg, peak) = refused(
        "b",
        &objs,
        &[],
        &[
            "'b': needs",
            "on node 4",
            "(together with a of the same batch)",
        ],
        32 * MIB,
        |_| Ok(()),
    )?;
    let q = qemu_record(None, &objs);
    Ok(format!("2 x {each} MiB, exit 1, {peak}: {}{q}", tail(&msg)))
}

/// A memory cgroup whose memory.max is below the size.
pub fn memory_cgroup_below_size(_: &Topo) -> Check {
    let objs = ["memory-backend-ram,id=x,size=256M,prealloc=on".to_string()];
    let set = |dir: &str| {
        write_sysfs(&format!("{dir}/memory.max"), "134217728", |v| {
            v == "134217728"
        })
    };
    let (msg, peak) = refused(
        "c",
        &objs,
        &[],
        &[
            "'x': needs 256 MiB, the memory cgroup /c allows",
            "(memory.max 128 MiB)",
        ],
        32 * MIB,
        set,
    )?;
    let dir = cgroup("c")?;
    set(&dir)?;
    let q = qemu_record(Some(&dir), &objs);
    let qkills = keyed(&format!("{dir}/memory.events"), "oom_kill ")?;
    Ok(format!(
        "exit 1, {peak}: {}{q}{}",
        tail(&msg),
        if q.is_empty() {
            String::new()
        } else {
            format!(" (cgroup oom_kill {qkills})")
        }
    ))
}

/// A hugetlb cgroup limit below the pool: refused naming the cgroup, the pool's
/// counters as before. With --ignore-memory-limits hostmem goes ahead, and the kernel
/// refuses the faults: an error again (not SIGBUS), the pool as before.
pub fn hugetlb_cgroup_below_pool(_: &Topo) -> Check {
    with_node_pools(&[(0, 16)], 16, || {
        let objs = [
            "memory-backend-memfd,id=h,size=16M,hugetlb=on,hugetlbsize=2M,prealloc=on".to_string(),
        ];
        let set = |dir: &str| {
            write_sysfs(&format!("{dir}/hugetlb.2MB.max"), "8388608", |v| {
                v == "8388608"
            })
        };
        let pool = || HugePool::read(2 * MIB, None).ok_or("no 2 MiB pool".to_string());
        let before = pool()?;
        let (msg, peak) = refused(
            "d",
            &objs,
            &[],
            &["'h': needs 16 MiB of 2 MiB huge pages, the hugetlb cgroup /d allows 8 MiB more (hugetlb.2MB.max 8 MiB)"],
            32 * MIB,
            set,
        )?;
        ensure(pool()? == before, || {
            format!("pool {before:?} before, {:?} after", pool())
        })?;
        // The override: past the check, into the kernel's own refusal.
        let dir = cgroup("d")?;
        set(&dir)?;
        let out = command(Vmm::Hostmem, Some(&dir), &objs, &["--ignore-memory-limits"])
            .output()
            .map_err(|e| e.to_string())?;
        let over = last_line(&out.stderr);
        ensure(
            out.status.code() == Some(1) && over.contains("hugetlb cgroup /d"),
            || format!("with the override: {}: {over}", status_text(&out.status)),
        )?;
        let fails = keyed(&format!("{dir}/hugetlb.2MB.events"), "max ")?;
        ensure(fails > 0, || {
            format!("{dir}/hugetlb.2MB.events: max {fails}: the kernel never refused a page")
        })?;
        ensure(pool()? == before, || {
            format!("pool {before:?} before, {:?} after the override", pool())
        })?;
        let dir = cgroup("d")?;
        set(&dir)?;
        let q = qemu_record(Some(&dir), &objs);
        Ok(format!(
            "exit 1, {peak}, pool unchanged: {}; override: went ahead, the kernel refused {fails} faults, exit 1: {}{q}",
            tail(&msg),
            tail(&over)
        ))
    })
}
