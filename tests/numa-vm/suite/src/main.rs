//! The NUMA placement suite, run inside the multi-node test guest (tests/numa-vm/run.sh).
//!
//! Every check reads placement back from the kernel (move_pages page by page,
//! get_mempolicy, numa_maps of a separate `hostmem run` process). One line per test,
//! page distributions included, then `numa-suite: N passed, M failed`.

mod bound_fill;
mod common;
mod eaten;
mod exporter;
mod lazy_fill;
mod limits;
mod placement;
mod plug_eaten;
mod pools;
mod rebind;
mod runs;
mod vm;

use bound_fill::*;
use common::{Check, Topo};
use eaten::*;
use exporter::*;
use lazy_fill::*;
use limits::*;
use placement::*;
use plug_eaten::*;
use pools::*;
use rebind::*;
use runs::*;
use vm::*;

/// A named check of the suite.
type Test = (&'static str, fn(&Topo) -> Check);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "eat") {
        eat(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "plug-eaten") {
        plug_eaten_child(&args[1..]);
    }
    let t = Topo::read();
    println!(
        "numa-suite: kernel {}, nodes online {}, with memory {}, memoryless {:?}",
        t.host.kernel_release, t.host.online, t.host.has_memory, t.cpu_only
    );
    if t.mem.len() < 4 {
        println!("FAIL topology: need 4 memory nodes, have {:?}", t.mem);
        println!("numa-suite: 0 passed, 1 failed");
        std::process::exit(1);
    }
    let tests: [Test; 26] = [
        ("bind-one-node", bind_one),
        ("bind-two-nodes", bind_two),
        ("interleave-four-nodes", interleave_four),
        ("preferred-and-preferred-many", preferred),
        ("weighted-interleave-3-1", weighted_interleave),
        ("local", local),
        ("refuse-memoryless-and-missing-nodes", refuses_bad_nodes),
        ("live-rebind-0-to-2", live_rebind),
        (
            "failed-rebind-restores-policy",
            failed_rebind_keeps_settings_and_kernel_agreeing,
        ),
        ("prealloc-threads-on-bound-cpus", threads_on_bound_cpus),
        ("empty-node-pool-named", empty_pool_named),
        ("run-two-backends-vs-numa-maps", run_two_backends),
        (
            "qemu-cmdline-checked-then-run",
            qemu_cmdline_checked_then_run,
        ),
        (
            "check-names-empty-node-pool",
            check_names_an_empty_node_pool_like_the_run,
        ),
        ("vm-rebind-backends-of-a-running-qemu", vm_rebind_backends),
        ("vm-qemu-killed-mid-rebind", vm_qemu_killed_mid_rebind),
        (
            "exporter-shows-the-moved-share",
            exporter_shows_the_moved_share,
        ),
        ("limits-bind-to-too-small-node", bind_to_too_small_node),
        ("limits-batch-summed-on-a-node", batch_summed_on_a_node),
        ("limits-memory-cgroup-below-size", memory_cgroup_below_size),
        (
            "limits-hugetlb-cgroup-below-pool",
            hugetlb_cgroup_below_pool,
        ),
        ("limits-eaten-during-prealloc", eaten_during_prealloc),
        ("plug-blocks-on-bound-node", plug_on_bound_node),
        ("restore-copy-on-bound-node", restore_on_bound_node),
        ("plug-eaten-during-prealloc", plug_eaten_during_prealloc),
        ("lazy-fill-on-bound-node", lazy_fill_lands_on_the_bound_node),
    ];
    let (mut passed, mut failed) = (0, 0);
    // `numa-suite only PREFIX`: the checks whose names begin with PREFIX.
    let only = match args.as_slice() {
        [cmd, prefix, ..] if cmd == "only" => Some(prefix.clone()),
        _ => None,
    };
    for (name, f) in tests {
        if only.as_ref().is_some_and(|p| !name.starts_with(p.as_str())) {
            continue;
        }
        let start = std::time::Instant::now();
        match std::panic::catch_unwind(|| f(&t)) {
            Ok(Ok(detail)) => {
                passed += 1;
                println!(
                    "ok   {name} ({:.2} s): {detail}",
                    start.elapsed().as_secs_f64()
                );
            }
            Ok(Err(why)) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
            Err(_) => {
                failed += 1;
                println!("FAIL {name}: panicked");
            }
        }
    }
    println!("numa-suite: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
