//! The two programs compared, run as whole processes: `hostmem run` and QEMU on a machine
//! that does nothing, given the same `-object` text and timed from spawn to exit.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use hostmem::{ObjectSpec, Progress};

use crate::inproc::make_backend;
use crate::plan::Plan;

/// QEMU (10.0 is the reference) on a machine that does nothing: it creates (and preallocates) the objects,
/// then the monitor reads `quit` from stdin and the process exits by itself.
const QEMU_ARGS: &[&str] = &[
    "-machine",
    "none",
    "-nodefaults",
    "-display",
    "none",
    "-qmp",
    "stdio",
];
const QEMU_INPUT: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";

/// Wall time of a whole process, from spawn to exit; `input` is its stdin.
fn time_process(mut cmd: Command, input: &[u8]) -> Result<f64, String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let name = cmd.get_program().to_string_lossy().into_owned();
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {name}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A process that exits without reading its input is no error here.
        let _ = stdin.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{name}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{name} failed ({}): {}", out.status, err.trim()));
    }
    Ok(secs)
}

fn hostmem_cmd(plan: &Plan, specs: &[String]) -> Command {
    let mut c = Command::new(&plan.hostmem);
    c.arg("run");
    for s in specs {
        c.arg("--object").arg(s);
    }
    c
}

fn qemu_cmd(plan: &Plan, specs: &[String]) -> Command {
    let mut c = Command::new(&plan.qemu);
    c.args(QEMU_ARGS);
    for s in specs {
        c.arg("-object").arg(s);
    }
    c
}

/// Which program a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Hostmem,
    Qemu,
}

/// Times `hostmem run` and QEMU with the same objects, in an order that flips with the
/// repetition so neither tool always runs on memory the other just freed.
pub fn time_both(plan: &Plan, specs: &[String], rep: usize) -> Result<(f64, f64), String> {
    let t = time_runs(plan, &[(Tool::Hostmem, specs), (Tool::Qemu, specs)], rep)?;
    Ok((t[0], t[1]))
}

/// Times each run (a program and its objects), returned in the order given but run in
/// an order rotated by the repetition (for two runs: flipped every other one), so no
/// run always goes first.
///
/// Each run is primed: on this host memory freed a few seconds ago may have been handed
/// back to the hypervisor and costs several times more to touch again, and without the
/// primer whichever tool ran first got that cold memory and the second the warm memory
/// the first had just freed. The primer touches and frees as much memory as the run
/// needs right before it, so every run starts alike.
pub fn time_runs(plan: &Plan, runs: &[(Tool, &[String])], rep: usize) -> Result<Vec<f64>, String> {
    let mut times = vec![0.0; runs.len()];
    for i in run_order(runs.len(), rep) {
        let (tool, specs) = runs[i];
        prime(specs_bytes(specs), plan.cpus)?;
        times[i] = match tool {
            Tool::Hostmem => time_process(hostmem_cmd(plan, specs), b"")?,
            Tool::Qemu => time_process(qemu_cmd(plan, specs), QEMU_INPUT)?,
        };
    }
    Ok(times)
}

/// 0..n rotated left by `rep`.
fn run_order(n: usize, rep: usize) -> Vec<usize> {
    (0..n).map(|i| (i + rep) % n.max(1)).collect()
}

/// Bytes the objects ask for (backends with prealloc=on; a `prealloc-context` does not
/// change the size, so it is left out rather than resolved).
fn specs_bytes(specs: &[String]) -> u64 {
    let defaults = hostmem::MachineDefaults::default();
    specs
        .iter()
        .filter_map(|s| {
            let mut o = ObjectSpec::parse(s).ok()?;
            o.props.retain(|(k, _)| k != "prealloc-context");
            o.to_backend(&defaults).ok()
        })
        .filter(|b| b.config().common.prealloc)
        .map(|b| b.size())
        .sum()
}

/// Touches `bytes` of anonymous memory with `threads` threads (all CPUs) and frees it
/// again (see [`time_runs`]).
pub fn prime(bytes: u64, threads: usize) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    let spec =
        format!("memory-backend-ram,id=primer,size={bytes},prealloc=on,prealloc-threads={threads}");
    make_backend(&spec, &Progress::new()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Mem;

    #[test]
    fn primer_size_counts_preallocated_objects_only() {
        let specs = [
            Mem::RamThp.spec("a", 1 << 30, true, 1),
            Mem::MemfdShmem.spec("b", 1 << 30, false, 1),
        ];
        assert_eq!(specs_bytes(&specs), 1 << 30);
    }

    #[test]
    fn primer_size_counts_backends_with_a_prealloc_context() {
        let specs = [
            r#"{"qom-type":"thread-context","id":"tc0","node-affinity":[0]}"#.to_string(),
            r#"{"qom-type":"memory-backend-ram","id":"r0","prealloc":true,"size":4194304,"prealloc-context":"tc0"}"#.to_string(),
        ];
        assert_eq!(specs_bytes(&specs), 4 << 20);
    }

    #[test]
    fn run_order_rotates_with_the_repetition() {
        assert_eq!(run_order(2, 0), [0, 1]);
        assert_eq!(run_order(2, 1), [1, 0]);
        assert_eq!(run_order(4, 2), [2, 3, 0, 1]);
    }
}
