//! Guest-like contents for the snapshot bench and the kernel's figures to check them
//! by: half of a backend's 2 MiB runs, picked at random, filled with random bytes (what
//! an image has to store, and nothing compresses or dedups); a digest read back from
//! the memory by the bench itself (through the memfd where there is one, so holes of
//! hugetlb memory are not faulted in by the reading); /proc/meminfo and smaps fields.

use std::fs::File;
use std::os::unix::fs::FileExt;

use hostmem::InUse;

pub const RUN: u64 = 2 << 20;

/// splitmix64: a fast, well-mixed generator; the bench needs speed and spread, not
/// unpredictability.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for w in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            w.copy_from_slice(&v[..w.len()]);
        }
    }
}

/// The 2 MiB runs of a `len`-byte memory to write: `share` of them (0..=1), picked at
/// random, in ascending order.
pub fn pick_runs(len: u64, share: f64, seed: u64) -> Vec<u64> {
    let n = len / RUN;
    let mut idx: Vec<u64> = (0..n).collect();
    let mut rng = Rng(seed);
    for i in (1..idx.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        idx.swap(i, j);
    }
    let take = ((n as f64) * share).round() as usize;
    let mut runs: Vec<u64> = idx.into_iter().take(take).collect();
    runs.sort_unstable();
    runs
}

/// Writes random bytes over `runs` of `mem`, `threads` threads taking every
/// `threads`-th run.
pub fn write_runs(mem: &InUse, runs: &[u64], threads: usize, seed: u64) -> Result<(), String> {
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<(), String> {
                    let mut buf = vec![0u8; RUN as usize];
                    for &r in runs.iter().skip(t).step_by(threads) {
                        Rng(seed ^ r.wrapping_mul(0x2545_f491_4f6c_dd1d)).fill(&mut buf);
                        mem.write_at((r * RUN) as usize, &buf)
                            .map_err(|e| format!("writing run {r}: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        join_all(workers, "writer")
    })
}

/// Joins scoped workers; the first error, or a panic, is the result.
pub fn join_all(
    workers: Vec<std::thread::ScopedJoinHandle<'_, Result<(), String>>>,
    what: &str,
) -> Result<(), String> {
    workers
        .into_iter()
        .try_for_each(|w| w.join().map_err(|_| format!("{what} panicked"))?)
}

/// The memfd behind `mem` if it has one (read through it, a hole reads as zeros
/// without a page being allocated).
fn file_of(mem: &InUse) -> Option<(File, u64)> {
    let (fd, off) = mem.fd()?;
    Some((File::from(fd.try_clone_to_owned().ok()?), off))
}

/// A digest of all of `mem`'s bytes: xxh3 of each 2 MiB chunk, folded in order.
/// Read by the bench itself (memfd or the mapping), not taken from any image.
pub fn digest(mem: &InUse) -> Result<u64, String> {
    let file = file_of(mem);
    let len = mem.len() as u64;
    let mut buf = vec![0u8; RUN as usize];
    let mut h: u64 = 0;
    let mut off = 0;
    while off < len {
        let n = RUN.min(len - off) as usize;
        let b = &mut buf[..n];
        match &file {
            Some((f, base)) => f.read_exact_at(b, base + off),
            None => mem.read_at(off as usize, b),
        }
        .map_err(|e| format!("reading memory at {off:#x}: {e}"))?;
        h = h.rotate_left(5) ^ hostmem::snapshot::block_checksum(b);
        off += n as u64;
    }
    Ok(h)
}

/// A /proc/meminfo field in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kb_field(&text, field)
}

/// `Field:   123 kB` as bytes, from any smaps-like text.
pub fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// A field (bytes) of the mapping that starts at `addr` in `/proc/PID/smaps` (`self`
/// for this process).
pub fn smaps_field(pid: &str, addr: usize, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    vma_field(&text, addr, field)
}

/// A field (bytes) of the mapping starting at `addr` in smaps text.
fn vma_field(text: &str, addr: usize, field: &str) -> Option<u64> {
    let start = format!("{addr:x}-");
    // The mapping's field lines follow its header line; the next header starts with
    // a hex digit, never an upper-case letter.
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(&start))
        .skip(1)
        .take_while(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .collect();
    kb_field(&body.join("\n"), field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_runs_distinct_and_sorted() {
        let r = pick_runs(64 * RUN, 0.5, 7);
        assert_eq!(r.len(), 32);
        assert!(r.windows(2).all(|w| w[0] < w[1]) && r[31] < 64);
        assert_ne!(r, pick_runs(64 * RUN, 0.5, 8));
    }

    #[test]
    fn fields_in_bytes() {
        assert_eq!(
            kb_field("MemFree:  10 kB\nCached: 3 kB", "Cached"),
            Some(3072)
        );
        assert_eq!(kb_field("MemFree:  10 kB", "Mem"), None);
    }

    #[test]
    fn the_field_of_the_mapping_asked_for() {
        let t = "7f00-7f10 rw-p 0 00:00 0\nRss:  4 kB\nVmFlags: rd\nab00-ab10 rw-s 0 00:01 5 /memfd:x\nRss:  8 kB\nShared_Hugetlb:  2048 kB\n";
        assert_eq!(vma_field(t, 0x7f00, "Rss"), Some(4096));
        assert_eq!(vma_field(t, 0xab00, "Rss"), Some(8192));
        assert_eq!(vma_field(t, 0x7f00, "Shared_Hugetlb"), None);
        assert_eq!(vma_field(t, 0xab00, "Shared_Hugetlb"), Some(2 << 20));
        assert_eq!(vma_field(t, 0x1000, "Rss"), None);
    }

    #[test]
    fn random_fill_covers_odd_lengths() {
        let mut b = [0u8; 13];
        Rng(1).fill(&mut b);
        assert!(b.iter().filter(|&&x| x != 0).count() > 8);
    }
}
