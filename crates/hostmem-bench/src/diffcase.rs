//! Diff images: a base saved (2 MiB blocks, the library's default), N random 4 KiB
//! pages written, the diff saved with a dirty bitmap marking exactly those pages (as
//! KVM's dirty log would), then base + diff restored into a fresh backend and checked
//! byte for byte against the source (the bench's own digest). The diff at its default
//! block size (the bitmap's page: 4 KiB) and, for comparison, at the base's 2 MiB (what
//! a diff cost before diffs had their own block size): a diff stores whole blocks, so
//! the block size decides what N dirty pages cost.

use std::os::unix::fs::MetadataExt;

use hostmem::snapshot::{self, Dirty, Image, RestoreOptions, SaveOptions, DEFAULT_BLOCK_SIZE};
use hostmem::InUse;

use crate::pattern::{digest, pick_runs, write_runs, Rng};
use crate::plan::Mem;
use crate::snap::Snap;

const PAGE: u64 = 4096;

/// `n` distinct random 4 KiB pages of a `len`-byte memory, as a dirty bitmap.
pub(crate) fn random_pages(len: u64, n: u64, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let pages = len / PAGE;
    let mut bits = vec![0u64; pages.div_ceil(64) as usize];
    let mut picked = Vec::new();
    let mut rng = Rng(seed);
    while (picked.len() as u64) < n.min(pages) {
        let p = rng.below(pages);
        let (w, b) = ((p / 64) as usize, p % 64);
        if bits[w] & (1 << b) == 0 {
            bits[w] |= 1 << b;
            picked.push(p);
        }
    }
    (picked, bits)
}

fn write_pages(mem: &InUse, pages: &[u64], seed: u64) -> Result<(), String> {
    let mut buf = vec![0u8; PAGE as usize];
    let mut rng = Rng(seed);
    for &p in pages {
        rng.fill(&mut buf);
        mem.write_at((p * PAGE) as usize, &buf)
            .map_err(|e| format!("writing page {p}: {e}"))?;
    }
    Ok(())
}

pub(crate) fn measure(s: &mut Snap, key: &str, mem: Mem, len: u64) -> Result<(), String> {
    let n = s.args.diff_pages;
    let src = s.backend(mem, "dsrc", len)?;
    let hold = src.hold().map_err(|e| e.to_string())?;
    write_runs(&hold, &pick_runs(len, 0.5, 0xd1ff), s.cpus, 0xd1ff)?;
    let base_path = s.args.dir.join(format!("diff-base-{key}.img"));
    snapshot::save(&src, &base_path, &SaveOptions::default(), &s.progress)
        .map_err(|e| format!("save base: {e}"))?;
    let r = diffs(s, key, mem, len, &src, &base_path, n);
    crate::snap::remove(&base_path);
    r
}

/// The diffs of `n` random pages over the base at `base_path`, at the default block
/// size ("4k") and at the base's ("2m"), each restored with the base and checked; each
/// repetition does both, and restores the base alone, in an order that rotates.
fn diffs(
    s: &mut Snap,
    key: &str,
    mem: Mem,
    len: u64,
    src: &hostmem::Backend,
    base_path: &std::path::Path,
    n: u64,
) -> Result<(), String> {
    let hold = src.hold().map_err(|e| e.to_string())?;
    let (pages, bits) = random_pages(len, n, 0xfeed);
    write_pages(&hold, &pages, 0xfeed)?;
    let want = digest(&hold)?;
    let case = Case {
        key,
        mem,
        len,
        src,
        base: &Image::open(base_path).map_err(|e| format!("open base: {e}"))?,
        dirty: Dirty {
            page_size: PAGE,
            bits: &bits,
        },
        want,
    };
    let (warm, reps) = (s.args.common.warmup, s.args.common.reps.max(1));
    for rep in 0..warm + reps {
        let order = if rep % 2 == 0 {
            ["4k", "2m", "base"]
        } else {
            ["base", "2m", "4k"]
        };
        for name in order {
            s.check_stop()?;
            let samples = if name == "base" {
                base_alone(s, &case)?
            } else {
                one_diff(s, &case, name)?
            };
            if rep >= warm {
                for (m, v) in samples {
                    s.run
                        .samples
                        .push(format!("diff/{key}/{name}/{m}"), Some(v));
                }
            }
        }
    }
    Ok(())
}

/// The base restored alone into a fresh backend: what restoring base + diff costs more.
fn base_alone(s: &Snap, c: &Case<'_>) -> Result<Vec<(&'static str, f64)>, String> {
    s.prime(c.mem, c.base.data_bytes())?;
    let dst = s.backend(c.mem, "ddst", c.len)?;
    let r = snapshot::restore(c.base, &dst, &RestoreOptions::default(), &s.progress)
        .map_err(|e| format!("restore base: {e}"))?;
    Ok(vec![("restore", r.secs)])
}

/// What every diff of one kind is taken of and against.
struct Case<'a> {
    key: &'a str,
    mem: Mem,
    len: u64,
    src: &'a hostmem::Backend,
    base: &'a Image,
    dirty: Dirty<'a>,
    /// The source's digest after the pages were written.
    want: u64,
}

/// Saves the diff `name` ("4k": the default block size; "2m": the base's), restores it
/// with its base into a fresh backend and compares the digest; its samples.
fn one_diff(s: &Snap, c: &Case<'_>, name: &str) -> Result<Vec<(&'static str, f64)>, String> {
    let diff_path = s.args.dir.join(format!("diff-{}-{name}.img", c.key));
    let saved = if name == "2m" {
        let opts = SaveOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            ..SaveOptions::default()
        };
        snapshot::save_diff_with(c.src, c.base, &c.dirty, &diff_path, &opts, &s.progress)
    } else {
        snapshot::save_diff(c.src, c.base, &c.dirty, &diff_path, &s.progress)
    };
    let result = saved.map_err(|e| format!("save_diff: {e}")).and_then(|r| {
        let diff = Image::open(&diff_path).map_err(|e| format!("open diff: {e}"))?;
        let disk = std::fs::metadata(&diff_path).map_or(0, |m| m.blocks() * 512);
        // Fresh memory primed as for every timed restore (docs/bench.md, "Noise").
        s.prime(c.mem, c.base.data_bytes())?;
        let dst = s.backend(c.mem, "ddst", c.len)?;
        let opts = RestoreOptions::default();
        let restored = snapshot::restore_diff(&diff, c.base, &dst, &opts, &s.progress)
            .map_err(|e| format!("restore_diff: {e}"))?;
        let ok = digest(&dst.hold().map_err(|e| e.to_string())?)? == c.want;
        let h = diff.header();
        Ok(vec![
            ("pages", (r.data_bytes / PAGE) as f64),
            ("written", s.args.diff_pages as f64),
            ("ok", f64::from(u8::from(ok))),
            ("block-size", h.block_size as f64),
            ("disk", disk as f64),
            // As stored: a diff's sparse table lists only the blocks it holds.
            ("table", h.table_len() as f64),
            ("save", r.secs),
            ("restore", restored.secs),
        ])
    });
    let _ = std::fs::remove_file(&diff_path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pages_are_distinct_and_marked() {
        let (p, bits) = random_pages(1 << 20, 50, 3);
        assert_eq!(p.len(), 50);
        let marked: u32 = bits.iter().map(|w| w.count_ones()).sum();
        assert_eq!(marked, 50);
        let (p, _) = random_pages(8 * PAGE, 100, 3);
        assert_eq!(p.len(), 8, "no more pages than the memory has");
    }
}
