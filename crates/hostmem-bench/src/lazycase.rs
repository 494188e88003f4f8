//! Lazy restore (userfaultfd, `hostmem::snapshot::restore_lazy`) into a fresh backend:
//! the time until the memory is usable, the latency of first touches of 4 KiB pages in
//! data blocks while the background fill runs, and the fill's rate (the image's data
//! bytes over the engine's time to the last block filled), set beside the copy
//! restore's rate of the same run by the report.
//!
//! A touch is a one-byte `InUse::read_at` of a random 4 KiB page of a data block no
//! earlier touch went to (the engine serves a fault with the whole block, so a second
//! page of a touched block would be no first touch), blocks in random order: each is
//! served by a fault unless the fill got there first, as for a guest's touches. Its
//! time includes the call's own cost (an madvise(MADV_POPULATE_READ) and a copy), a
//! few microseconds. How many of the touches faulted is counted by the engine.
//!
//! Each touch of a data page is followed by one of a page in a hole block (the fill
//! never fills holes, so each is a fault, answered with the zero page: no read, no
//! checksum, no page allocated): the userfaultfd round trip alone on this host, under
//! the same fill, the floor the first-touch figure is set beside.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hostmem::snapshot::{restore_lazy, BlockKind, FillPriority, Image, LazyOptions};
use hostmem::Backend;

use crate::modes::SnapArgs;
use crate::pattern::Rng;

/// Touches timed per restore, at most (the fill may end first).
const TOUCHES: usize = 2000;

pub(crate) struct Lazy {
    pub usable: f64,
    /// Seconds from serving to the last data block filled.
    pub filled: Option<f64>,
    /// First-touch latencies (seconds) taken while the fill was still running.
    pub touches: Vec<f64>,
    /// Data faults (not answered with zeros) while the touches ran: the rest of the data
    /// touches found their block filled.
    pub faults: u64,
    /// Latencies of first touches of hole pages, one after each data touch: the floor.
    pub floor: Vec<f64>,
}

/// One random 4 KiB page in each of up to `n` data blocks (`data`) or hole blocks, the
/// blocks in random order.
fn pages(image: &Image, n: usize, seed: u64, data: bool) -> Vec<u64> {
    let h = image.header();
    let mut blocks: Vec<u64> = (0..h.blocks)
        .filter(|&i| matches!(image.blocks()[i as usize], BlockKind::Data { .. }) == data)
        .collect();
    let mut rng = Rng(seed);
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    blocks
        .iter()
        .take(n)
        .filter_map(|&i| {
            let b = h.block(i)?;
            Some(b.backend_offset + rng.below(b.len / 4096) * 4096)
        })
        .collect()
}

pub(crate) fn run(
    image: &Arc<Image>,
    dst: &Backend,
    seed: u64,
    args: &SnapArgs,
) -> Result<Lazy, String> {
    let data = pages(image, TOUCHES, seed, true);
    let holes = pages(image, TOUCHES, seed ^ 0x401e, false);
    let t = Instant::now();
    let mut opts = LazyOptions::default();
    opts.fill_priority = match args.lazy_fill.as_deref() {
        Some("normal") => FillPriority::Normal,
        Some("low") => FillPriority::Low,
        Some("idle") => FillPriority::Idle,
        _ => opts.fill_priority,
    };
    opts.fill_threads = args.lazy_fill_threads.unwrap_or(opts.fill_threads);
    let server =
        restore_lazy(Arc::clone(image), dst, opts).map_err(|e| format!("restore_lazy: {e}"))?;
    let usable = t.elapsed().as_secs_f64();
    let hold = dst.hold().map_err(|e| e.to_string())?;
    let mut touches = Vec::with_capacity(data.len());
    let mut floor = Vec::with_capacity(holes.len());
    let mut byte = [0u8; 1];
    let mut touch = |off: u64| -> Result<f64, String> {
        let t = Instant::now();
        hold.read_at(off as usize, &mut byte)
            .map_err(|e| format!("touch at {off:#x}: {e}"))?;
        Ok(t.elapsed().as_secs_f64())
    };
    let data_faults = |p: hostmem::snapshot::LazyProgress| p.faults - p.zero_faults;
    let faults0 = data_faults(server.progress());
    for (i, &off) in data.iter().enumerate() {
        if server.progress().filled {
            break;
        }
        touches.push(touch(off)?);
        if let Some(&hole) = holes.get(i) {
            floor.push(touch(hole)?);
        }
    }
    let faults = data_faults(server.progress()) - faults0;
    // The fill ends by itself; a deadline so a stuck restore is an error, not a hang.
    if !server.wait_timeout(Duration::from_secs(600)) {
        return Err("the lazy fill did not end within 600 s".into());
    }
    let report = server.wait().map_err(|e| format!("lazy restore: {e}"))?;
    Ok(Lazy {
        usable,
        filled: report.filled_secs,
        touches,
        faults,
        floor,
    })
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
pub(crate) fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.99), Some(3.0));
    }
}
