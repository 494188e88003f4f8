//! The numbers: samples per metric, medians, ratios and rates. Kept apart from the
//! runs that produce them so the arithmetic can be tested without QEMU or root.

use std::collections::BTreeMap;

pub const GIB: f64 = (1u64 << 30) as f64;

/// The middle value (mean of the two middle ones for an even count); NaNs are dropped.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// `a / b` where both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A ratio as people read it: `1.23×`, or `n/a` when it could not be measured.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}×"))
}

pub fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

/// GiB/s of `bytes` done in `secs` beyond a startup baseline; None when the difference
/// is lost in noise (not positive).
pub fn rate_beyond(bytes: u64, secs: f64, baseline: f64) -> Option<f64> {
    let t = secs - baseline;
    (t > 0.0).then(|| bytes as f64 / GIB / t)
}

/// Samples per metric, in the order measured. A sample that could not be measured is
/// kept as NaN so the count of repetitions stays visible in the JSON output.
#[derive(Default)]
pub struct Samples(pub BTreeMap<String, Vec<f64>>);

impl Samples {
    pub fn push(&mut self, key: String, v: Option<f64>) {
        self.0.entry(key).or_default().push(v.unwrap_or(f64::NAN));
    }

    pub fn median(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(|v| median(v))
    }

    /// Ratio of two metrics' medians.
    pub fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        ratio(self.median(a), self.median(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratios_format_and_guard_division() {
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(2.0))), "1.50×");
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(0.0))), "n/a");
        assert_eq!(fmt_ratio(ratio(None, Some(1.0))), "n/a");
    }

    #[test]
    fn rate_subtracts_the_baseline() {
        let r = rate_beyond(4 << 30, 1.1, 0.1).unwrap();
        assert!((r - 4.0).abs() < 1e-9);
        assert_eq!(rate_beyond(1 << 30, 0.1, 0.2), None);
    }
}
