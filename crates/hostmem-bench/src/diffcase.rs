//! Diff images: a base saved, N random 4 KiB pages written, the diff saved with a dirty
//! bitmap marking exactly those pages (as KVM's dirty log would), then base + diff
//! restored into a fresh backend and checked byte for byte against the source (the
//! bench's own digest). Measured with the library's default block size (2 MiB) and with
//! 4 KiB blocks, since a diff stores whole blocks: the block size decides what N dirty
//! pages cost.

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
    let sizes = [DEFAULT_BLOCK_SIZE, PAGE];
    let base_path = |bs: u64| s.args.dir.join(format!("diff-base-{key}-{bs}.img"));
    for bs in sizes {
        let opts = SaveOptions {
            block_size: bs,
            ..SaveOptions::default()
        };
        snapshot::save(&src, base_path(bs), &opts, &s.progress)
            .map_err(|e| format!("save base: {e}"))?;
    }
    let (pages, bits) = random_pages(len, n, 0xfeed);
    write_pages(&hold, &pages, 0xfeed)?;
    let want = digest(&hold)?;
    let dirty = Dirty {
        page_size: PAGE,
        bits: &bits,
    };
    for bs in sizes {
        s.check_stop()?;
        let diff_path = s.args.dir.join(format!("diff-{key}-{bs}.img"));
        let base = Image::open(base_path(bs)).map_err(|e| format!("open base: {e}"))?;
        let r = snapshot::save_diff(&src, &base, &dirty, &diff_path, &s.progress)
            .map_err(|e| format!("save_diff: {e}"))?;
        let diff = Image::open(&diff_path).map_err(|e| format!("open diff: {e}"))?;
        let dst = s.backend(mem, "ddst", len)?;
        snapshot::restore_diff(&diff, &base, &dst, &RestoreOptions::default(), &s.progress)
            .map_err(|e| format!("restore_diff: {e}"))?;
        let ok = digest(&dst.hold().map_err(|e| e.to_string())?)? == want;
        let k = format!("diff/{key}/{}", if bs == PAGE { "4k" } else { "2m" });
        let sm = &mut s.run.samples;
        sm.push(format!("{k}/pages"), Some((r.data_bytes / PAGE) as f64));
        sm.push(format!("{k}/written"), Some(n as f64));
        sm.push(format!("{k}/ok"), Some(f64::from(u8::from(ok))));
        let _ = std::fs::remove_file(&diff_path);
    }
    for bs in sizes {
        let _ = std::fs::remove_file(base_path(bs));
    }
    Ok(())
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
