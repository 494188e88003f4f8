//! Memory taken by another process while a plug preallocates (issue 22): the plug runs
//! under the same watch as a backend's preallocation, so it stops at the edge, gives
//! the blocks it was plugging back, keeps the block plugged before, and names the
//! node; nobody is killed. The same choreography as `eaten.rs` (whose helpers it
//! uses): the plugging process is paused with SIGSTOP once it has begun, the eater
//! takes all but 64 MiB of what is left on the small node, the plug resumes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostmem::plug::Blocks;
use hostmem::{Backend, Kind, NodeSet, Policy};
use rustix::process::{kill_process, Pid, Signal};

use crate::common::*;
use crate::eaten::{all_stopped, pages_on, start_eater, wait_begun};
use crate::limits::{node_free, node_room, oom_lines, SMALL};

/// `numa-suite plug-eaten MIB`: a `reserve=off` backend of MIB bound to the small node;
/// plugs its first 2 MiB block (written), says `ready`, plugs the rest on one thread,
/// says `plug: ok` or `plug: ERROR`, then `kept: RANGES BYTE` (the plugged ranges and
/// the first byte of block 0), and holds its memory until stdin closes.
pub fn plug_eaten_child(args: &[String]) -> ! {
    let mib = args
        .first()
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(0);
    let run = || -> Result<(), String> {
        let b = Backend::builder(Kind::Ram, "plugged")
            .size(mib * MIB)
            .reserve(false)
            .policy(Policy::Bind)
            .host_nodes(NodeSet::from_iter([SMALL]))
            .prealloc_threads(1)
            .create()
            .map_err(|e| e.to_string())?;
        let mut blocks = Blocks::new(&b, 2 * MIB).map_err(|e| e.to_string())?;
        blocks.plug(0..2 * MIB).map_err(|e| e.to_string())?;
        blocks
            .memory()
            .fill(0, 4096, 0x5c)
            .map_err(|e| e.to_string())?;
        println!("ready");
        let _ = std::io::stdout().flush();
        match blocks.plug(2 * MIB..mib * MIB) {
            Ok(_) => println!("plug: ok"),
            Err(e) => println!("plug: {e}"),
        }
        let mut first = [0u8];
        blocks
            .memory()
            .read_at(0, &mut first)
            .map_err(|e| e.to_string())?;
        println!("kept: {:?} {:#x}", blocks.plugged(), first[0]);
        let _ = std::io::stdout().flush();
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        Ok(())
    };
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            println!("plug-eaten: {e}");
            std::process::exit(1)
        }
    }
}

pub fn plug_eaten_during_prealloc(_: &Topo) -> Check {
    with_thp("never", plug_eaten)
}

fn plug_eaten() -> Check {
    let room0 = node_room(SMALL)?;
    let free0 = node_free(SMALL)?;
    let oom0 = oom_lines()?;
    let size = room0.saturating_sub(48 * MIB) / (2 * MIB) * 2;
    let mut child = Command::new("/bin/numa-suite")
        .args(["plug-eaten", &size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the plugging process: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().ok_or("child stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    ensure(line.trim() == "ready", || {
        format!("the child said {line:?}")
    })?;
    // Its code and the block plugged before: what may stay on the node.
    let base = pages_on(child.id(), SMALL)?;
    wait_begun(&mut child, free0).map_err(|e| format!("the plug {e}"))?;
    let pid = Pid::from_raw(child.id() as i32).ok_or("pid")?;
    kill_process(pid, Signal::STOP).map_err(|e| format!("SIGSTOP: {e}"))?;
    let t = Instant::now();
    while !all_stopped(child.id()) {
        ensure(t.elapsed() < Duration::from_secs(10), || {
            "the plugging threads did not stop in 10 s".to_string()
        })?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let taken = pages_on(child.id(), SMALL)? * 4096;
    ensure(taken + 64 * MIB < size * MIB, || {
        format!("{} of {size} MiB when paused: too late", taken / MIB)
    })?;
    let (mut eater, eat, said) = start_eater(false)?;
    kill_process(pid, Signal::CONT).map_err(|e| format!("SIGCONT: {e}"))?;
    let (mut plug, mut kept) = (String::new(), String::new());
    out.read_line(&mut plug).map_err(|e| e.to_string())?;
    out.read_line(&mut kept).map_err(|e| e.to_string())?;
    let left = pages_on(child.id(), SMALL)?;
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    let free_now = node_free(SMALL)?;
    let eater_pages = pages_on(eater.id(), SMALL)?;
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| e.to_string())?;
    drop(eater.stdin.take());
    let eater_status = eater.wait().map_err(|e| e.to_string())?;
    let oom = oom_lines()?;
    let record = format!(
        "{size} MiB plug, {} MiB in when paused, eater took {eat} MiB ({said}); {} {}; the plugging process has {left} pages on node {SMALL} ({base} before the plug), node free {} MiB before, {} MiB with the eater's {} MiB; exits {status} and {eater_status}, {} new OOM lines",
        taken / MIB,
        plug.trim(),
        kept.trim(),
        free0 / MIB,
        free_now / MIB,
        eater_pages * 4096 / MIB,
        oom.len() - oom0.len()
    );
    ensure(said == "ate", || format!("the eater did not eat: {record}"))?;
    ensure(
        plug.contains(&format!("node {SMALL}")) && plug.contains("stopped after"),
        || format!("the plug was not stopped at the node's edge: {record}"),
    )?;
    ensure(kept.trim() == "kept: [0..2097152] 0x5c", || {
        format!("the block plugged before did not stay: {record}")
    })?;
    ensure(left.saturating_sub(base) * 4096 < 4 * MIB, || {
        format!("pages kept: {record}")
    })?;
    let expect = free0.saturating_sub(eater_pages * 4096 + 2 * MIB);
    ensure(free_now + 8 * MIB >= expect, || {
        format!("node free memory short: {record}")
    })?;
    ensure(status.success() && eater_status.success(), || {
        format!("exit statuses: {record}")
    })?;
    ensure(oom.len() == oom0.len(), || {
        format!("dmesg: {:?}", &oom[oom0.len()..])
    })?;
    Ok(record)
}
