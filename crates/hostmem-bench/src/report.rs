//! What a finished run prints: a header naming the host, tables of medians and ratios,
//! and the targets; or all of it, with every sample, as one JSON document. The host's
//! CPU, kernel and QEMU version are part of it because absolute numbers mean nothing
//! without them.

use std::fmt::Write as _;

use hostmem::size::format_size;
use rustix::system::uname;
use serde_json::{json, Value};

use crate::measure::Ctx;
use crate::plan::{qemu_version, Libvirt, Mem, HUGE_2M};
use crate::stats::{fmt_num, fmt_ratio, ratio, Samples};
use crate::targets::{targets, Target};

/// How the 4 KiB case is made, printed with the results.
const FOUR_K_HOW: &str = "4 KiB pages for memory-backend-ram: THP disabled for the bench and the processes it starts with prctl(PR_SET_THP_DISABLE); hostmem and QEMU both still advise MADV_HUGEPAGE";

/// The running kernel's release (`6.18.44-...`), from uname.
pub(crate) fn kernel_release() -> String {
    uname().release().to_string_lossy().into_owned()
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn header(ctx: &Ctx, reps: usize, warmup: usize) -> String {
    let p = &ctx.plan;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "hostmem-bench: {} per backend, medians of {reps} interleaved repetitions after {warmup} warm-up, threads {:?}",
        format_size(p.size),
        p.threads
    );
    let _ = writeln!(
        s,
        "host: {}, Linux {}; absolute numbers vary with the host, ratios are from this run",
        cpu_model(),
        kernel_release()
    );
    let _ = writeln!(s, "QEMU: {}", qemu_version(&p.qemu));
    let _ = writeln!(
        s,
        "{FOUR_K_HOW} (THP bytes seen in the 4 KiB backend: {})",
        ctx.thp_seen_4k
    );
    s.push_str("process runs are timed whole; GiB/s = size / (time - same tool's time with prealloc=off)\n");
    if let Some(b) = &ctx.busy {
        s.push_str(&b.line());
        s.push('\n');
    }
    s
}

fn single_table(s: &Samples, threads: &[usize], qemu: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<22}{:>4} {:>12} {:>10} {:>9} {:>11} {:>9} {:>10}",
        "prealloc GiB/s",
        "thr",
        "hostmem run",
        qemu,
        "hm/QEMU",
        "in-process",
        "memset",
        "pre/memset"
    );
    for mem in Mem::ALL {
        for t in threads {
            let k = format!("{}/{t}", mem.key());
            let m = |x: &str| s.median(&format!("{k}/{x}"));
            let _ = writeln!(
                out,
                "{:<22}{:>4} {:>12} {:>10} {:>9} {:>11} {:>9} {:>10}",
                mem.label(),
                t,
                fmt_num(m("run"), 2),
                fmt_num(m("qemu"), 2),
                fmt_ratio(ratio(m("run"), m("qemu"))),
                fmt_num(m("inproc"), 2),
                fmt_num(m("memset"), 2),
                fmt_ratio(ratio(m("inproc"), m("memset"))),
            );
        }
    }
    out
}

fn other_tables(s: &Samples, size: u64, qemu: &str) -> String {
    let mut out = String::new();
    let ms = |k: &str| fmt_num(s.median(k), 1);
    let _ = writeln!(
        out,
        "\nstartup with prealloc=off, ms        hostmem run {qemu:>10}"
    );
    for mem in Mem::ALL {
        let k = mem.key();
        let (h, q) = (
            s.median(&format!("{k}/base-run")).map(|x| x * 1e3),
            s.median(&format!("{k}/base-qemu")).map(|x| x * 1e3),
        );
        let _ = writeln!(
            out,
            "  {:<34} {:>11} {:>10}",
            mem.label(),
            fmt_num(h, 1),
            fmt_num(q, 1)
        );
    }
    let four = (s.median("four/run"), s.median("four/qemu"));
    let _ = writeln!(
        out,
        "\nfour backends of {} together, prealloc-threads=1: hostmem {} GiB/s, QEMU {} GiB/s, {}",
        format_size(size / 4 / HUGE_2M * HUGE_2M),
        fmt_num(four.0, 2),
        fmt_num(four.1, 2),
        fmt_ratio(ratio(four.0, four.1))
    );
    let (h, q) = (s.median("e2e/run"), s.median("e2e/qemu"));
    let _ = writeln!(
        out,
        "end to end, 2 MiB ram backend: hostmem run {} ms, QEMU startup {} ms, hostmem {} faster",
        ms("e2e/run"),
        ms("e2e/qemu"),
        fmt_ratio(ratio(q, h))
    );
    let _ = writeln!(
        out,
        "report of a preallocated {} backend, ms: 4 KiB inspect {} / backend_json {}; THP inspect {} / backend_json {}",
        format_size(size),
        ms("report/ram-4k/inspect"),
        ms("report/ram-4k/json"),
        ms("report/ram-thp/inspect"),
        ms("report/ram-thp/json"),
    );
    out
}

/// The libvirt-style line against QEMU, with and without its thread-contexts.
fn libvirt_table(s: &Samples, lv: &Libvirt, qemu: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nlibvirt-style line: {} memory-backend-ram of {} (JSON -object, prealloc, policy bind, host nodes {}),",
        lv.nodes.len(),
        format_size(lv.each),
        lv.nodes
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "each with its own thread-context (node-affinity: its node) as prealloc-context; prealloc-threads unset;"
    );
    let _ = writeln!(
        out,
        "medians of {} runs each ({} per repetition)",
        s.0.get("libvirt/run-tc").map_or(0, Vec::len),
        lv.rounds
    );
    let _ = writeln!(
        out,
        "  {:<36} {:>8} {:>11} {:>11}",
        "", "GiB/s", "process ms", "startup ms"
    );
    let rows = [
        ("run-tc", "hostmem run, with contexts".to_string()),
        ("qemu-tc", format!("{qemu}, with contexts")),
        ("run-plain", "hostmem run, plain (no contexts)".to_string()),
        ("qemu-plain", format!("{qemu}, plain (no contexts)")),
    ];
    for (k, label) in rows {
        let _ = writeln!(
            out,
            "  {label:<36} {:>8} {:>11} {:>11}",
            fmt_num(s.median(&format!("libvirt/{k}")), 2),
            fmt_num(s.median(&format!("libvirt/{k}/ms")), 1),
            fmt_num(s.median(&format!("libvirt/{k}/base-ms")), 1),
        );
    }
    let _ = writeln!(
        out,
        "  (a) hostmem / {qemu}, same line with contexts: {} GiB/s, {} whole process (QEMU time / hostmem time)",
        fmt_ratio(s.ratio("libvirt/run-tc", "libvirt/qemu-tc")),
        fmt_ratio(s.ratio("libvirt/qemu-tc/ms", "libvirt/run-tc/ms")),
    );
    let _ = writeln!(
        out,
        "  (b) hostmem plain / {qemu} with contexts: {} GiB/s, {} whole process",
        fmt_ratio(s.ratio("libvirt/run-plain", "libvirt/qemu-tc")),
        fmt_ratio(s.ratio("libvirt/qemu-tc/ms", "libvirt/run-plain/ms")),
    );
    out
}

/// The run as people read it.
pub fn text_output(ctx: &Ctx, reps: usize, warmup: usize) -> String {
    let s = &ctx.samples;
    let mut out = header(ctx, reps, warmup);
    let q = &ctx.plan.qemu_label;
    out.push_str(&single_table(s, &ctx.plan.threads, q));
    out.push_str(&other_tables(s, ctx.plan.size, q));
    out.push_str(&libvirt_table(s, &ctx.plan.libvirt, q));
    out.push_str("\ntargets (medians)\n");
    for t in targets(s, &ctx.plan) {
        out.push_str(&t.line());
        out.push('\n');
    }
    out
}

/// The run for programs: medians, every sample and the targets.
pub fn json_output(ctx: &Ctx, reps: usize, warmup: usize) -> Value {
    let s = &ctx.samples;
    let medians: serde_json::Map<String, Value> =
        s.0.keys()
            .map(|k| (k.clone(), json!(s.median(k))))
            .collect();
    json!({
        "size": ctx.plan.size,
        "reps": reps,
        "warmup": warmup,
        "threads": ctx.plan.threads,
        "cpu": cpu_model(),
        "kernel": kernel_release(),
        "qemu": qemu_version(&ctx.plan.qemu),
        "four-kib-pages": FOUR_K_HOW,
        "thp-bytes-in-4k-backend": ctx.thp_seen_4k,
        "host-busy": ctx.busy.map(|b| json!({
            "other-processes-cpu-share": b.others,
            "steal-share": b.steal,
            "load-before": b.load_before,
            "load-after": b.load_after,
        })),
        "medians": medians,
        "samples": s.0,
        "libvirt-rounds": ctx.plan.libvirt.rounds,
        "libvirt-line": ctx.plan.libvirt.line(true, true),
        "libvirt-plain-line": ctx.plan.libvirt.line(false, true),
        "targets": targets(s, &ctx.plan).iter().map(Target::json).collect::<Vec<_>>(),
    })
}
