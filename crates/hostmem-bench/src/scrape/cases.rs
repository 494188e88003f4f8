//! The scrape cases, each measured against a single numa_maps read of the same
//! process in the same run, repetitions interleaved in a rotating order.

use std::fmt::Write as _;
use std::time::Instant;

use hostmem::inspect::{
    inspect_process_range, read_placement, Choice, PlacementReading, ReadOptions,
};
use hostmem::size::parse_size;
use hostmem::NodeSet;

use super::hold::{self, Held};
use super::ScrapeArgs;
use crate::stats::{fmt_num, fmt_ratio, Samples};

const GIB: f64 = (1u64 << 30) as f64;

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| format!("not a size: {text:?}"))
}

fn ms_of<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64() * 1e3)
}

/// The nodes with memory: the share asked is of those (the requested nodes of a VM
/// bound to all of them).
fn memory_nodes() -> Result<NodeSet, String> {
    let text = std::fs::read_to_string("/sys/devices/system/node/has_memory")
        .map_err(|e| format!("/sys/devices/system/node/has_memory: {e}"))?;
    NodeSet::parse(text.trim()).map_err(|e| e.to_string())
}

/// Milliseconds one read of /proc/PID/numa_maps takes: the one walk to compare with.
fn numa_maps_ms(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/numa_maps");
    let (r, ms) = ms_of(|| std::fs::read_to_string(&path));
    r.map_err(|e| format!("{path}: {e}"))?;
    Ok(ms)
}

fn read(h: &Held, method: Choice, nodes: &NodeSet) -> Result<(PlacementReading, f64), String> {
    let opts = ReadOptions {
        method,
        ..ReadOptions::for_nodes(nodes.clone())
    };
    let (r, ms) = ms_of(|| read_placement(h.pid, h.start, h.len, &opts));
    Ok((
        r.map_err(|e| format!("reading process {}: {e}", h.pid))?,
        ms,
    ))
}

fn method_text(r: &PlacementReading) -> String {
    match &r.method {
        hostmem::inspect::Method::Sample { samples, .. } => format!("sample of {samples} pages"),
        m => m.name().to_string(),
    }
}

fn target(pass: bool) -> &'static str {
    if pass {
        "met"
    } else {
        "MISSED"
    }
}

pub fn run(args: &ScrapeArgs) -> Result<String, String> {
    let nodes = memory_nodes()?;
    let mut out = String::new();
    let uname = rustix::system::uname();
    let _ = writeln!(
        out,
        "hostmem-bench scrape: medians of {} interleaved repetitions; Linux {}, nodes with memory {nodes}",
        args.reps.max(1),
        uname.release().to_string_lossy()
    );
    let wanted = |c: &str| args.cases.is_empty() || args.cases.iter().any(|a| a == c);
    if wanted("one") {
        one_vm(args, &nodes, &mut out)?;
    }
    if wanted("many") {
        many_vms(args, &nodes, &mut out)?;
    }
    if wanted("big") {
        big_range(args, &nodes, &mut out)?;
    }
    Ok(out)
}

/// A 4 GiB VM on 4 KiB pages: the walk report against one numa_maps read.
fn one_vm(args: &ScrapeArgs, nodes: &NodeSet, out: &mut String) -> Result<(), String> {
    let sz = size(&args.vm_size)?;
    let cases = [
        (
            "ram, THP off (prctl): numa_maps only",
            format!("memory-backend-ram,id=m,size={sz},prealloc=on"),
            true,
        ),
        (
            "memfd on shmem 4 KiB, THP possible: numa_maps + PAGEMAP_SCAN",
            format!("memory-backend-memfd,id=m,size={sz},prealloc=on"),
            false,
        ),
    ];
    let _ = writeln!(
        out,
        "\none VM, {:.1} GiB on 4 KiB pages, fully touched",
        sz as f64 / GIB
    );
    for (label, spec, thp_off) in cases {
        let h = hold::held(hold::start(&spec, None, thp_off)?)?;
        let mut s = Samples::default();
        let (mut last, mut auto_method) = (None, String::new());
        for rep in 0..args.reps.max(1) {
            for step in 0..4 {
                match (rep + step) % 4 {
                    0 => s.push("numa_maps".into(), Some(numa_maps_ms(h.pid)?)),
                    1 => {
                        let (r, ms) = read(&h, Choice::Walk, nodes)?;
                        s.push("walk".into(), Some(ms));
                        last = Some(r);
                    }
                    2 => {
                        let (r, ms) = ms_of(|| inspect_process_range(h.pid, h.start, h.len));
                        r.map_err(|e| e.to_string())?;
                        s.push("inspect".into(), Some(ms));
                    }
                    _ => {
                        let (r, ms) = read(&h, Choice::Auto, nodes)?;
                        s.push("auto".into(), Some(ms));
                        auto_method = method_text(&r);
                    }
                }
            }
        }
        let walk = last.ok_or("no walk measured")?;
        let ratio = s.ratio("walk", "numa_maps");
        let _ = writeln!(
            out,
            "  {label}\n    one numa_maps read {} ms | placement walk {} ms = {} of it (target <= 1.20x: {}) | \
             smaps+numa_maps report (inspect) {} ms = {}\n    \
             auto {} ms ({}); the walk read {:.2} GiB resident, {} THP bytes",
            fmt_num(s.median("numa_maps"), 1),
            fmt_num(s.median("walk"), 1),
            fmt_ratio(ratio),
            target(ratio.is_some_and(|r| r <= 1.2)),
            fmt_num(s.median("inspect"), 1),
            fmt_ratio(s.ratio("inspect", "numa_maps")),
            fmt_num(s.median("auto"), 1),
            auto_method,
            walk.resident.value as f64 / GIB,
            walk.thp.as_ref().map_or("unknown".into(), |b| b.value.to_string()),
        );
    }
    Ok(())
}

/// 8 VMs × 4 GiB: one scrape reads every VM's memory.
fn many_vms(args: &ScrapeArgs, nodes: &NodeSet, out: &mut String) -> Result<(), String> {
    let sz = size(&args.vm_size)?;
    // One shared file backs every VM: each maps all of it with 4 KiB page table
    // entries of its own (what a walk costs), while the host holds it once.
    let path = format!("/dev/shm/hostmem-scrape-bench-{}", std::process::id());
    let spec = format!("memory-backend-file,id=m,size={sz},mem-path={path},share=on,prealloc=on");
    let started: Result<Vec<_>, String> = (0..args.vms)
        .map(|_| hold::start(&spec, None, true))
        .collect();
    let held: Result<Vec<Held>, String> =
        started.and_then(|c| c.into_iter().map(hold::held).collect());
    let _ = std::fs::remove_file(&path);
    let vms = held?;
    let mut s = Samples::default();
    let mut methods = Vec::new();
    for rep in 0..args.reps.max(1) {
        for step in 0..3 {
            match (rep + step) % 3 {
                0 => {
                    let (r, ms) = ms_of(|| {
                        vms.iter()
                            .map(|h| numa_maps_ms(h.pid))
                            .collect::<Result<Vec<_>, _>>()
                    });
                    r?;
                    s.push("numa_maps".into(), Some(ms));
                }
                1 => {
                    let (r, ms) = ms_of(|| {
                        vms.iter()
                            .map(|h| read(h, Choice::Walk, nodes))
                            .collect::<Result<Vec<_>, _>>()
                    });
                    r?;
                    s.push("walk".into(), Some(ms));
                }
                _ => {
                    let (r, ms) = ms_of(|| {
                        vms.iter()
                            .map(|h| read(h, Choice::Auto, nodes))
                            .collect::<Result<Vec<_>, _>>()
                    });
                    methods = r?.iter().map(|(r, _)| method_text(r)).collect();
                    s.push("auto".into(), Some(ms));
                }
            }
        }
    }
    methods.dedup();
    let auto = s.median("auto");
    let _ = writeln!(
        out,
        "\n{} VMs x {:.1} GiB on 4 KiB pages (one shared 4 GiB file, each VM maps and touches all of it)\n  \
         scrape of all (auto) {} ms (target <= 1000 ms: {}; {}) | every VM walked {} ms | \
         one numa_maps read of each {} ms",
        vms.len(),
        sz as f64 / GIB,
        fmt_num(auto, 1),
        target(auto.is_some_and(|a| a <= 1000.0)),
        methods.join(", "),
        fmt_num(s.median("walk"), 1),
        fmt_num(s.median("numa_maps"), 1),
    );
    Ok(())
}

/// MemAvailable from /proc/meminfo, bytes.
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A 64 GiB range on 4 KiB pages, partly touched: the sample against a full walk.
fn big_range(args: &ScrapeArgs, nodes: &NodeSet, out: &mut String) -> Result<(), String> {
    let sz = size(&args.big_size)?;
    let asked = size(&args.big_touched)?.min(sz);
    let touched = asked.min(mem_available().saturating_sub(4 << 30)) / hold::BLOCK * hold::BLOCK;
    let spec = format!("memory-backend-ram,id=big,size={sz},reserve=off");
    let h = hold::held(hold::start(&spec, Some(touched), true)?)?;
    let mut s = Samples::default();
    let (mut worst_share, mut worst_resident) = (0.0f64, 0.0f64);
    let mut outside = 0;
    let mut last = None;
    for rep in 0..args.reps.max(1) {
        let mut walk = None;
        let mut auto = None;
        for step in 0..3 {
            match (rep + step) % 3 {
                0 => s.push("numa_maps".into(), Some(numa_maps_ms(h.pid)?)),
                1 => {
                    let (r, ms) = read(&h, Choice::Walk, nodes)?;
                    s.push("walk".into(), Some(ms));
                    walk = Some(r);
                }
                _ => {
                    let (r, ms) = read(&h, Choice::Auto, nodes)?;
                    s.push("auto".into(), Some(ms));
                    auto = Some(r);
                }
            }
        }
        let (w, a) = walk.zip(auto).ok_or("a case did not run")?;
        let ws = w.share_on_nodes.map_or(f64::NAN, |f| f.value);
        let ash = a.share_on_nodes.unwrap_or_default();
        worst_share = worst_share.max((ash.value - ws).abs());
        worst_resident = worst_resident
            .max((a.resident.value as f64 - w.resident.value as f64).abs() / sz as f64);
        outside += u32::from(!a.resident.contains(w.resident.value)) + u32::from(!ash.contains(ws));
        last = Some((w, a));
    }
    let (w, a) = last.ok_or("no repetition")?;
    let auto = s.median("auto");
    let share = a.share_on_nodes.unwrap_or_default();
    let _ = writeln!(
        out,
        "\n{:.1} GiB on 4 KiB pages, {:.1} GiB touched (asked {:.1} GiB; 2 MiB blocks spread over it), reserve=off\n  \
         auto reading {} ms (target <= 500 ms: {}; {}) | full walk {} ms | one numa_maps read {} ms\n  \
         share on nodes {nodes}: sample {:.4} [{:.4}, {:.4}] vs walk {:.4}; largest |difference| over the \
         repetitions {:.3} % (target <= 1 %: {})\n  \
         resident: sample {:.2} GiB [{:.2}, {:.2}] vs walk {:.2} GiB; largest |difference| {:.3} % of the range; \
         walk figure outside the sample's 95 % intervals {outside} times of {}",
        sz as f64 / GIB,
        touched as f64 / GIB,
        asked as f64 / GIB,
        fmt_num(auto, 1),
        target(auto.is_some_and(|a| a <= 500.0)),
        method_text(&a),
        fmt_num(s.median("walk"), 1),
        fmt_num(s.median("numa_maps"), 1),
        share.value,
        share.low,
        share.high,
        w.share_on_nodes.map_or(f64::NAN, |f| f.value),
        worst_share * 100.0,
        target(worst_share <= 0.01),
        a.resident.value as f64 / GIB,
        a.resident.low as f64 / GIB,
        a.resident.high as f64 / GIB,
        w.resident.value as f64 / GIB,
        worst_resident * 100.0,
        2 * args.reps.max(1),
    );
    Ok(())
}
