//! One repetition: every case, each measured for hostmem and QEMU back to back, plus
//! the in-process engine against memset. The host this runs on may itself be a VM whose
//! memory grows on first touch and shrinks after a few idle seconds, so cases are
//! interleaved inside a repetition rather than run as blocks.

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use hostmem::Progress;
use hostmem_cli::report;
use hostmem_cli::signals::Stop;

use crate::busy::Busy;
use crate::guards::NoThp;
use crate::inproc::{make_backend, memset_gibs, time_ms};
use crate::plan::{Mem, Plan, HUGE_2M};
use crate::runner::{prime, time_both, time_runs, Tool};
use crate::stats::{rate_beyond, Samples};

/// Stops the bench between measurements after SIGINT/SIGTERM (the running prealloc is
/// cancelled through `progress`; the children get the terminal's signal themselves).
pub struct Ctx {
    pub plan: Plan,
    pub progress: Arc<Progress>,
    pub stop: Receiver<Stop>,
    pub samples: Samples,
    /// THP bytes the kernel showed in the 4 KiB backend: proof that case had no THP.
    pub thp_seen_4k: u64,
    /// How busy the host was with other work during the measured repetitions.
    pub busy: Option<Busy>,
}

impl Ctx {
    fn check_stop(&self) -> Result<(), String> {
        match self.stop.try_recv() {
            Ok(Stop::Signal(s)) => Err(format!("interrupted by signal {s}")),
            _ if self.progress.is_cancelled() => Err("interrupted".into()),
            _ => Ok(()),
        }
    }
}

/// The library in this process: prealloc GiB/s from its own stats, memset of as many
/// bytes with the same threads, and for the ram kinds the cost of the kernel-read report.
/// The caller keeps THP off for the 4 KiB case (a guard here would turn it back on for
/// the caller's later child processes when dropped).
fn in_process(ctx: &mut Ctx, mem: Mem, threads: usize, report: bool) -> Result<(), String> {
    let spec = mem.spec("bench0", ctx.plan.size, true, threads);
    // Primed like the process runs: the memory the processes just freed may have gone
    // back to the hypervisor (page reporting), and the in-process prealloc would pay
    // for bringing it back (ram THP, 1 thread, median of 5: 3.6 GiB/s unprimed,
    // 10.2 primed, in two quiet runs of the same day).
    prime(ctx.plan.size, ctx.plan.cpus)?;
    let b = make_backend(&spec, &ctx.progress)?;
    let key = format!("{}/{threads}", mem.key());
    let gibs = b.prealloc_stats().map(|s| s.gib_per_sec());
    ctx.samples.push(format!("{key}/inproc"), gibs);
    let fill = memset_gibs(b.size() as usize, threads)?;
    ctx.samples.push(format!("{key}/memset"), Some(fill));
    if report {
        let (view, ms) = time_ms(|| b.inspect());
        let view = view.map_err(|e| e.to_string())?;
        if mem == Mem::Ram4k {
            ctx.thp_seen_4k = ctx.thp_seen_4k.max(view.thp);
        }
        ctx.samples
            .push(format!("report/{}/inspect", mem.key()), Some(ms));
        let (_, ms) = time_ms(|| report::backend_json(&b));
        ctx.samples
            .push(format!("report/{}/json", mem.key()), Some(ms));
    }
    Ok(())
}

/// One backend of one kind: startup baselines, then per thread count hostmem run,
/// QEMU and the in-process engine with memset.
fn single(ctx: &mut Ctx, mem: Mem, rep: usize) -> Result<(), String> {
    let _no_thp = NoThp::new(mem == Mem::Ram4k)?;
    let size = ctx.plan.size;
    let threads = ctx.plan.threads.clone();
    let off = [mem.spec("m0", size, false, threads[0])];
    let (base_h, base_q) = time_both(&ctx.plan, &off, rep)?;
    let k = mem.key();
    ctx.samples.push(format!("{k}/base-run"), Some(base_h));
    ctx.samples.push(format!("{k}/base-qemu"), Some(base_q));
    for &t in &threads {
        ctx.check_stop()?;
        let on = [mem.spec("m0", size, true, t)];
        let (h, q) = time_both(&ctx.plan, &on, rep)?;
        ctx.samples
            .push(format!("{k}/{t}/run"), rate_beyond(size, h, base_h));
        ctx.samples
            .push(format!("{k}/{t}/qemu"), rate_beyond(size, q, base_q));
        let report = t == *threads.last().unwrap_or(&1) && matches!(mem, Mem::RamThp | Mem::Ram4k);
        in_process(ctx, mem, t, report)?;
    }
    Ok(())
}

/// Four backends of a quarter size each, prealloc-threads=1, created together.
fn four(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    let each = ctx.plan.size / 4 / HUGE_2M * HUGE_2M;
    let specs = |on| -> Vec<String> {
        (0..4)
            .map(|i| Mem::RamThp.spec(&format!("m{i}"), each, on, 1))
            .collect()
    };
    let (base_h, base_q) = time_both(&ctx.plan, &specs(false), rep)?;
    let (h, q) = time_both(&ctx.plan, &specs(true), rep)?;
    ctx.samples
        .push("four/run".into(), rate_beyond(4 * each, h, base_h));
    ctx.samples
        .push("four/qemu".into(), rate_beyond(4 * each, q, base_q));
    Ok(())
}

/// The libvirt-style line and the same backends without contexts, each given to
/// `hostmem run` and to QEMU: four runs in an order that rotates, after the same four
/// with prealloc off (the startup baselines); `--libvirt-rounds` times per repetition,
/// as the case is short and its two ratios are the targets.
fn libvirt(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    let rounds = ctx.plan.libvirt.rounds;
    for round in 0..rounds {
        ctx.check_stop()?;
        libvirt_round(ctx, rep * rounds + round)?;
    }
    Ok(())
}

fn libvirt_round(ctx: &mut Ctx, turn: usize) -> Result<(), String> {
    const RUNS: [(&str, Tool, bool); 4] = [
        ("run-tc", Tool::Hostmem, true),
        ("qemu-tc", Tool::Qemu, true),
        ("run-plain", Tool::Hostmem, false),
        ("qemu-plain", Tool::Qemu, false),
    ];
    fn runs(lines: &[Vec<String>]) -> Vec<(Tool, &[String])> {
        RUNS.iter()
            .zip(lines)
            .map(|(&(_, tool, _), l)| (tool, l.as_slice()))
            .collect()
    }
    let lv = &ctx.plan.libvirt;
    let lines = |prealloc| -> Vec<Vec<String>> {
        RUNS.iter()
            .map(|&(_, _, tc)| lv.line(tc, prealloc))
            .collect()
    };
    let (off, on) = (lines(false), lines(true));
    let total = lv.total();
    let base = time_runs(&ctx.plan, &runs(&off), turn)?;
    ctx.check_stop()?;
    let full = time_runs(&ctx.plan, &runs(&on), turn)?;
    for (i, &(key, _, _)) in RUNS.iter().enumerate() {
        ctx.samples.push(
            format!("libvirt/{key}"),
            rate_beyond(total, full[i], base[i]),
        );
        ctx.samples
            .push(format!("libvirt/{key}/ms"), Some(full[i] * 1e3));
        ctx.samples
            .push(format!("libvirt/{key}/base-ms"), Some(base[i] * 1e3));
    }
    Ok(())
}

/// `hostmem run` of a preallocated 2 MiB backend against QEMU starting with it.
fn end_to_end(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    let spec = [Mem::RamThp.spec("m0", HUGE_2M, true, 1)];
    let (h, q) = time_both(&ctx.plan, &spec, rep)?;
    ctx.samples.push("e2e/run".into(), Some(h * 1e3));
    ctx.samples.push("e2e/qemu".into(), Some(q * 1e3));
    Ok(())
}

/// Every case once, in a fixed order; `rep` flips which tool goes first.
pub fn repetition(ctx: &mut Ctx, rep: usize) -> Result<(), String> {
    for mem in Mem::ALL {
        ctx.check_stop()?;
        single(ctx, mem, rep)?;
    }
    ctx.check_stop()?;
    four(ctx, rep)?;
    ctx.check_stop()?;
    libvirt(ctx, rep)?;
    ctx.check_stop()?;
    end_to_end(ctx, rep)
}
