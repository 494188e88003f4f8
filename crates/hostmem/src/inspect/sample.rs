//! The statistics of a placement sample: which base pages to ask about (a stratified
//! random sample from a seedable generator) and how sure the counts make us (Wilson
//! score intervals). Pure arithmetic: the asking is `estimate.rs`'s.

use std::collections::BTreeMap;

/// z of a two-sided 95 % interval.
pub(super) const Z95: f64 = 1.959_963_984_540_054;

/// SplitMix64: a small, well-mixed generator whose whole state is its seed, so a
/// sample can be drawn again from the seed a reading reports.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (Lemire's multiply-shift with rejection: no modulo bias).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// `n` page indices out of `pages`, one from each of `n` equal strata, ascending.
///
/// Stratum i is [i·pages/n, (i+1)·pages/n) on a continuous scale: page
/// ⌊(i·pages + r)/n⌋ with r uniform in [0, pages). Every page is drawn with the same
/// probability n/pages (each page owns exactly n of the pages·n numerators), so the
/// sample mean is unbiased however the resident pages lie, and its variance is at most
/// that of a simple random sample of n: the simple-random-sample interval is a
/// conservative one for it. Ascending addresses also keep move_pages' page-table
/// lookups local.
pub(super) fn stratified(pages: u64, n: u64, rng: &mut Rng) -> Vec<u64> {
    let n = n.min(pages);
    (0..n)
        .map(|i| {
            let r = rng.below(pages);
            ((u128::from(i) * u128::from(pages) + u128::from(r)) / u128::from(n)) as u64
        })
        .collect()
}

/// Wilson score interval of a proportion seen `k` times in `n` draws, at `z`: unlike
/// p̂ ± z·√(p̂(1−p̂)/n) it stays honest at 0 and n (a sample with every page on the
/// node still says "at least 99.9 %", not "exactly 100 %").
pub(super) fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At k = 0 (k = n) the lower (upper) end is exactly 0 (1); rounding says 1e-18.
    let lo = if k == 0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let hi = if k as f64 == n {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (lo, hi)
}

/// What the asked pages were, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Pages asked about.
    pub samples: u64,
    /// Resident pages per node.
    pub per_node: BTreeMap<u32, u64>,
    /// Resident pages in hugetlb VMAs.
    pub hugetlb: u64,
    /// Resident pages outside hugetlb VMAs inside a huge page (PAGE_IS_HUGE): THP.
    pub huge: u64,
    /// Pages drawn while every resident page outside hugetlb VMAs was asked whether
    /// it is a THP's (the first `ReadOptions::thp_samples`): THP's own sample size.
    pub thp_samples: u64,
    /// Pages with another status than a node or ENOENT (errno → count): EFAULT for a
    /// hole or the shared zero page, which the walks do not count as resident either.
    pub other: BTreeMap<i32, u64>,
}

impl Tally {
    pub(super) fn resident(&self) -> u64 {
        self.per_node.values().sum()
    }

    /// Resident pages on the nodes `on` says yes to.
    pub(super) fn resident_on(&self, on: impl Fn(u32) -> bool) -> u64 {
        self.per_node
            .iter()
            .filter(|(&n, _)| on(n))
            .map(|(_, &c)| c)
            .sum()
    }

    /// Adds one move_pages status.
    pub(super) fn add_status(&mut self, status: i32) {
        self.samples += 1;
        match status {
            s if s >= 0 => *self.per_node.entry(s as u32).or_default() += 1,
            s if s == -libc::ENOENT => {}
            s => *self.other.entry(-s).or_default() += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_sample_and_another_seed_another() {
        let a = stratified(1 << 20, 1000, &mut Rng::new(7));
        let b = stratified(1 << 20, 1000, &mut Rng::new(7));
        let c = stratified(1 << 20, 1000, &mut Rng::new(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_stratified_sample_is_ascending_in_range_and_one_per_stratum() {
        let pages = 1_000_003;
        let n = 4096;
        let s = stratified(pages, n, &mut Rng::new(1));
        assert_eq!(s.len(), n as usize);
        assert!(s.windows(2).all(|w| w[0] <= w[1]), "ascending");
        for (i, &p) in s.iter().enumerate() {
            let lo = i as u64 * pages / n;
            let hi = (i as u64 + 1) * pages / n + 1;
            assert!(p >= lo && p < hi.min(pages), "page {p} of stratum {i}");
        }
        // More draws than pages: every page once.
        assert_eq!(stratified(5, 9, &mut Rng::new(3)), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn every_page_is_drawn_equally_often_even_with_unequal_strata() {
        // 10 pages, 3 strata of 3.33 pages: pages on stratum borders must not be
        // favoured. 100k samples of 3: each page expects 30k hits.
        let mut hits = [0u64; 10];
        let mut rng = Rng::new(42);
        for _ in 0..100_000 {
            for p in stratified(10, 3, &mut rng) {
                hits[p as usize] += 1;
            }
        }
        for (p, &h) in hits.iter().enumerate() {
            // sd ≈ √(30k·0.7) ≈ 145 per page: 7 sd.
            assert!((h as i64 - 30_000).abs() < 1_000, "page {p}: {h} {hits:?}");
        }
    }

    #[test]
    fn below_stays_below_and_covers_the_range() {
        let mut rng = Rng::new(9);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = rng.below(7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn wilson_intervals_match_known_values_and_stay_honest_at_the_ends() {
        // k=50, n=100: 0.4038..0.5962 (the textbook value).
        let (lo, hi) = wilson(50, 100, Z95);
        assert!(
            (lo - 0.4038).abs() < 1e-4 && (hi - 0.5962).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(100, 100, Z95);
        assert!(lo < 0.97 && lo > 0.95 && hi == 1.0, "{lo} {hi}");
        let (lo, hi) = wilson(0, 100, Z95);
        assert!(lo == 0.0 && hi > 0.03 && hi < 0.05, "{lo} {hi}");
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0), "nothing seen, nothing known");
    }

    #[test]
    fn a_tally_counts_nodes_absent_and_other_statuses_apart() {
        let mut t = Tally::default();
        for s in [0, 1, 1, -libc::ENOENT, -libc::EFAULT, 3] {
            t.add_status(s);
        }
        assert_eq!(t.samples, 6);
        assert_eq!(t.resident(), 4);
        assert_eq!(t.resident_on(|n| n == 1 || n == 3), 3);
        assert_eq!(t.other, [(libc::EFAULT, 1)].into());
    }
}
