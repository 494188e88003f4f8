//! The snapshot mode's tables and targets (issue 21's "Measured" list, with the limit
//! beside each figure), from the samples `snap.rs`, `diffcase.rs` and `clones.rs` took.

use hostmem::size::format_size;

use crate::lazycase::quantile;
use crate::modereport::ModeRun;
use crate::modes::SnapArgs;
use crate::snap::KINDS;
use crate::stats::{fmt_num, ratio};

const MIB: f64 = (1u64 << 20) as f64;

pub(crate) fn tables(r: &mut ModeRun, size: u64, args: &SnapArgs) {
    for (key, mem) in KINDS {
        if r.samples.median(&format!("snap/{key}/save")).is_none() {
            // `--only-diff`: the diff case alone.
            if r.samples.median(&format!("diff/{key}/4k/pages")).is_some() {
                r.section(&format!("{}, diff only (times are medians)", mem.label()));
                diff_rows(r, key);
                diff_targets(r, key, mem.label());
            }
            continue;
        }
        let k = |m: &str| format!("snap/{key}/{m}");
        let label = mem.label();
        r.section(&format!(
            "{label}, {} backend (times are medians)",
            format_size(size)
        ));
        if args.lazy_only {
            r.value_row("copy restore (warm page cache)", &k("restore"), 1e3, "ms");
            for (what, m) in [
                ("bytes equal the source: copy restore", "restore-ok"),
                ("bytes equal the source: lazy", "lazy-ok"),
            ] {
                r.value_row(what, &k(m), 1.0, "(1 = yes)");
            }
            lazy_rows(r, key, label, args);
            continue;
        }
        r.time_row(
            "save",
            &k("save"),
            &k("plain-write"),
            "plain sequential write",
        );
        r.time_row(
            "save: CPU time (all threads)",
            &k("save-cpu"),
            &k("plain-write-cpu"),
            "plain write's CPU time",
        );
        let disk = ratio(
            r.samples.median(&k("image-disk")),
            r.samples.median(&k("written")),
        );
        r.lines.push(format!(
            "  {:<38} {:>12} MiB on disk for {} MiB written ({}); hole blocks: {} found by the kernel, {} read as zeros",
            "image",
            fmt_num(r.samples.median(&k("image-disk")).map(|b| b / MIB), 0),
            fmt_num(r.samples.median(&k("written")).map(|b| b / MIB), 0),
            crate::stats::fmt_ratio(disk),
            fmt_num(r.samples.median(&k("holes-unread")), 0),
            fmt_num(r.samples.median(&k("holes-read")), 0),
        ));
        r.time_row(
            "copy restore (warm page cache)",
            &k("restore"),
            &k("pread"),
            "parallel read(2) into a map",
        );
        r.time_row(
            "  the same, CPU time of all threads",
            &k("restore-cpu"),
            &k("pread-cpu"),
            "parallel read(2), CPU time",
        );
        r.time_row(
            "copy restore",
            &k("restore"),
            &k("whole-copy"),
            "1 thread, whole image",
        );
        let rows = [
            (
                "private, first clone: verify + stamp",
                "private-first-verify",
            ),
            ("private, first clone: map", "private-first-map"),
            ("private, later clones: stamp check", "private-verify"),
            ("private, later clones: map", "private-map"),
        ];
        for (what, m) in rows {
            r.value_row(what, &k(m), 1e3, "ms");
        }
        for (what, m) in [
            ("bytes equal the source: copy restore", "restore-ok"),
            ("bytes equal the source: read baseline", "pread-ok"),
            ("bytes equal the source: whole copy", "whole-copy-ok"),
            ("bytes equal the source: private", "private-ok"),
            ("bytes equal the source: lazy", "lazy-ok"),
        ] {
            r.value_row(what, &k(m), 1.0, "(1 = yes)");
        }
        diff_rows(r, key);
        lazy_rows(r, key, label, args);
        snap_targets(r, key, label);
    }
    clone_tables(r, args);
}

/// The diff case's figures: pages stored for N written, the file on disk, save and
/// restore times, at the default (4 KiB) block size and at the base's 2 MiB.
fn diff_rows(r: &mut ModeRun, key: &str) {
    for (bs, bl) in [
        ("4k", "own 4 KiB blocks"),
        ("2m", "the base's 2 MiB blocks"),
    ] {
        let d = |m: &str| format!("diff/{key}/{bs}/{m}");
        r.lines.push(format!(
            "  {:<38} {:>12} pages for {} written, {} MiB on disk ({} KiB of it the table); base + diff equal the source: {}",
            format!("diff, {bl}"),
            fmt_num(r.samples.median(&d("pages")), 0),
            fmt_num(r.samples.median(&d("written")), 0),
            fmt_num(r.samples.median(&d("disk")).map(|b| b / MIB), 1),
            // KiB: a diff's sparse table is 24 bytes per block it holds.
            fmt_num(r.samples.median(&d("table")).map(|b| b / 1024.0), 1),
            fmt_num(r.samples.median(&d("ok")), 0),
        ));
    }
    let d = |bs: &str, m: &str| r.samples.median(&format!("diff/{key}/{bs}/{m}"));
    for (what, m) in [
        ("diff save", "save"),
        ("diff restore (base + diff)", "restore"),
    ] {
        r.lines.push(format!(
            "  {:<38} {:>12} s with 4 KiB blocks, {} s with 2 MiB ({})",
            what,
            fmt_num(d("4k", m), 3),
            fmt_num(d("2m", m), 3),
            crate::stats::fmt_ratio(ratio(d("4k", m), d("2m", m))),
        ));
    }
    r.lines.push(format!(
        "  {:<38} {:>12} s: base + 4 KiB diff takes {} of it",
        "restore of the base alone",
        fmt_num(d("base", "restore"), 3),
        crate::stats::fmt_ratio(ratio(d("4k", "restore"), d("base", "restore"))),
    ));
}

/// The lazy restore's figures: usable, first touches during the fill, the fill's rate
/// against the copy restore's (both over the image's data bytes, so the ratio of their
/// times).
fn lazy_rows(r: &mut ModeRun, key: &str, label: &str, args: &SnapArgs) {
    let k = |m: &str| format!("snap/{key}/{m}");
    if r.samples.median(&k("lazy")).is_none() {
        r.lines.push("  lazy restore: not measured".into());
        return;
    }
    r.value_row("lazy restore: usable", &k("lazy"), 1e3, "ms");
    r.lines.push(format!(
        "  {:<38} {} priority, {} thread(s)",
        "lazy: background fill runs at",
        args.lazy_fill.as_deref().unwrap_or("idle (default)"),
        args.lazy_fill_threads.unwrap_or(1)
    ));
    let touches = r
        .samples
        .0
        .get(&k("lazy-touch"))
        .cloned()
        .unwrap_or_default();
    let (p50, p99) = (quantile(&touches, 0.5), quantile(&touches, 0.99));
    let us = |v: Option<f64>| v.map(|x| x * 1e6);
    r.lines.push(format!(
        "  {:<38} p50 {} µs, p99 {} µs ({} touches during the fill, one per data block; {} faulted per restore, median)",
        "lazy: first touch of a 4 KiB page",
        fmt_num(us(p50), 1),
        fmt_num(us(p99), 1),
        touches.len(),
        fmt_num(r.samples.median(&k("lazy-faults")), 0)
    ));
    let holes = r
        .samples
        .0
        .get(&k("lazy-touch-hole"))
        .cloned()
        .unwrap_or_default();
    r.lines.push(format!(
        "  {:<38} p50 {} µs, p99 {} µs ({} touches of hole pages, one after each above: the zero page, nothing read)",
        "lazy: the round trip alone (floor)",
        fmt_num(us(quantile(&holes, 0.5)), 1),
        fmt_num(us(quantile(&holes, 0.99)), 1),
        holes.len(),
    ));
    r.time_row(
        "lazy: background fill",
        &k("lazy-filled"),
        &k("restore"),
        "copy restore",
    );
    r.bound(
        format!("{label}: lazy usable"),
        r.samples.median(&k("lazy")).map(|x| x * 1e3),
        10.0,
        false,
        "ms",
    );
    // Issue 21's latency limits are for 4 KiB pages; on huge pages (a whole page copied
    // per fault) it asks only for the figures, which the line above prints.
    if key == "4k" {
        r.bound(
            format!("{label}: lazy first touch p50"),
            us(p50),
            20.0,
            false,
            "µs",
        );
        r.bound(
            format!("{label}: lazy first touch p99"),
            us(p99),
            200.0,
            false,
            "µs",
        );
    }
    r.speed_target(
        format!("{label}: lazy fill / copy restore (rate)"),
        &k("lazy-filled"),
        &k("restore"),
        0.5,
    );
    let ok = r.samples.median(&k("lazy-ok"));
    r.bound(
        format!("{label}: lazy-ok (bytes equal, 1 = yes)"),
        ok,
        1.0,
        true,
        "",
    );
}

fn snap_targets(r: &mut ModeRun, key: &str, label: &str) {
    let k = |m: &str| format!("snap/{key}/{m}");
    let disk = ratio(
        r.samples.median(&k("image-disk")),
        r.samples.median(&k("written")),
    );
    r.bound(
        format!("{label}: image on disk / written data"),
        disk,
        1.01,
        false,
        "×",
    );
    r.speed_target(
        format!("{label}: save / plain write (rate)"),
        &k("save"),
        &k("plain-write"),
        0.8,
    );
    r.speed_target(
        format!("{label}: copy restore / parallel read"),
        &k("restore"),
        &k("pread"),
        0.8,
    );
    for m in ["restore-ok", "private-ok"] {
        let v = r.samples.median(&k(m));
        r.bound(
            format!("{label}: {m} (bytes equal, 1 = yes)"),
            v,
            1.0,
            true,
            "",
        );
    }
    let usable = r.samples.median(&k("private-usable")).map(|s| s * 1e3);
    r.bound(
        format!("{label}: private usable, later clone (stamp + map)"),
        usable,
        10.0,
        false,
        "ms",
    );
    let map = r.samples.median(&k("private-map")).map(|s| s * 1e3);
    r.bound(
        format!("{label}: private usable (map alone)"),
        map,
        10.0,
        false,
        "ms",
    );
    diff_targets(r, key, label);
}

fn clone_tables(r: &mut ModeRun, args: &SnapArgs) {
    let Some(image) = r.samples.median("clones/image") else {
        return;
    };
    let n = args.clones as f64;
    let pct = args.clone_write_pct as f64 / 100.0;
    let limit = (n * pct * image + image) * 1.1 / MIB;
    r.section(&format!(
        "{} private clones of one {} image, each reading all of it and writing {} % of its pages",
        args.clones,
        format_size(image as u64),
        args.clone_write_pct
    ));
    let mib = |r: &ModeRun, key: &str| r.samples.median(key).map(|b| b / MIB);
    let rows = [
        ("sum of the clones' Pss (smaps_rollup)", "clones/pss"),
        ("  of it, the image mappings' Pss", "clones/pss-mapping"),
        (
            "  the image mappings' Private_Dirty",
            "clones/private-dirty",
        ),
        ("MemFree drop (host-wide)", "clones/delta-MemFree"),
        ("Cached growth (host-wide)", "clones/delta-Cached"),
        ("AnonPages growth (host-wide)", "clones/delta-AnonPages"),
        ("PageTables growth (host-wide)", "clones/delta-PageTables"),
    ];
    for (what, key) in rows {
        let mut v = mib(r, key);
        if key.ends_with("MemFree") {
            v = v.map(|x| -x);
        }
        r.lines
            .push(format!("  {what:<38} {:>12} MiB", fmt_num(v, 0)));
    }
    r.lines.push(format!(
        "  {:<38} {:>12} MiB",
        "limit: (clones × share + one image) + 10 %",
        fmt_num(Some(limit), 0)
    ));
    r.value_row(
        "restore_private, median of the clones",
        "clones/usable-median",
        1e3,
        "ms",
    );
    r.value_row(
        "all clones ready (restored, read, written)",
        "clones/all-ready",
        1e3,
        "ms",
    );
    let pss = mib(r, "clones/pss");
    r.bound("clones: sum of Pss".into(), pss, limit, false, "MiB");
    let drop = mib(r, "clones/delta-MemFree").map(|x| -x);
    r.bound(
        "clones: MemFree drop (host-wide, noisy)".into(),
        drop,
        limit,
        false,
        "MiB",
    );
}

/// Issue 21's diff target (≤ 1.1 × N pages) at the default block size, and base + diff
/// byte for byte at both sizes (the 2 MiB diff's pages are in the rows: a comparison,
/// what a diff cost before it had its own block size, not a target).
fn diff_targets(r: &mut ModeRun, key: &str, label: &str) {
    let d = |bs: &str, m: &str| r.samples.median(&format!("diff/{key}/{bs}/{m}"));
    let x = ratio(d("4k", "pages"), d("4k", "written"));
    // The whole file as the disk holds it (st_blocks: data, header and table) in pages
    // of 4 KiB: what a diff costs, which a dense table made twice N at 1000 pages of 1 GiB.
    let disk = ratio(d("4k", "disk").map(|b| b / 4096.0), d("4k", "written"));
    let oks = [("4 KiB", d("4k", "ok")), ("2 MiB", d("2m", "ok"))];
    r.bound(
        format!("{label}: diff pages / N (default: own 4 KiB blocks)"),
        x,
        1.1,
        false,
        "×",
    );
    r.bound(
        format!("{label}: diff on disk / N pages (default: own 4 KiB blocks)"),
        disk,
        1.1,
        false,
        "×",
    );
    for (what, ok) in oks {
        r.bound(
            format!("{label}: base + diff equal ({what} blocks)"),
            ok,
            1.0,
            true,
            "",
        );
    }
}
