//! What the `snapshot` and `plug` modes print: a header naming the host and how busy it
//! was, tables of medians with the kernel's figure beside hostmem's, and the targets,
//! each with its limit and verdict; or all of it, with every sample, as JSON.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::busy::Busy;
use crate::stats::{fmt_num, fmt_ratio, Samples};
use crate::targets::Target;

/// One finished mode run.
#[derive(Default)]
pub(crate) struct ModeRun {
    pub header: Vec<String>,
    /// Table lines, in order (section titles included).
    pub lines: Vec<String>,
    pub samples: Samples,
    pub targets: Vec<Target>,
    pub busy: Option<Busy>,
}

impl ModeRun {
    pub fn text(&self) -> String {
        let mut s = String::new();
        for h in &self.header {
            let _ = writeln!(s, "{h}");
        }
        if let Some(b) = &self.busy {
            let _ = writeln!(s, "{}", b.line());
        }
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "\ntargets (medians; the limit beside each)");
        for t in &self.targets {
            let _ = writeln!(s, "{}", t.line());
        }
        s
    }

    pub fn json(&self) -> Value {
        let metrics: Map<String, Value> = self
            .samples
            .0
            .iter()
            .map(|(k, v)| {
                let samples: Vec<Value> = v
                    .iter()
                    .map(|x| if x.is_nan() { Value::Null } else { json!(x) })
                    .collect();
                (
                    k.clone(),
                    json!({"median": self.samples.median(k), "samples": samples}),
                )
            })
            .collect();
        json!({
            "header": self.header,
            "busy": self.busy.map(|b| b.line()),
            "metrics": metrics,
            "targets": self.targets.iter().map(Target::json).collect::<Vec<_>>(),
        })
    }

    pub fn section(&mut self, title: &str) {
        self.lines.push(String::new());
        self.lines.push(title.to_string());
    }

    /// A row of two medians (hostmem's and the kernel baseline's) and their ratio
    /// `base / hostmem` for times (how many times faster hostmem is; ≥ 1 is faster).
    pub fn time_row(&mut self, what: &str, hm: &str, base: &str, base_label: &str) {
        let (a, b) = (self.samples.median(hm), self.samples.median(base));
        let r = crate::stats::ratio(b, a);
        self.lines.push(format!(
            "  {what:<38} hostmem {:>9} ms   {base_label:<26} {:>9} ms   {}",
            fmt_num(a.map(|x| x * 1e3), 1),
            fmt_num(b.map(|x| x * 1e3), 1),
            fmt_ratio(r)
        ));
    }

    /// A row of one median with its unit.
    pub fn value_row(&mut self, what: &str, key: &str, scale: f64, unit: &str) {
        let v = self.samples.median(key).map(|x| x * scale);
        self.lines
            .push(format!("  {what:<38} {:>12} {unit}", fmt_num(v, 1)));
    }

    /// A target on the ratio `base / hostmem` of two time medians (a rate ratio).
    pub fn speed_target(&mut self, what: String, hm: &str, base: &str, bound: f64) {
        let measured = self.samples.ratio(base, hm);
        self.targets.push(Target {
            what,
            measured,
            bound,
            at_least: true,
            unit: "×",
        });
    }

    /// A target on `hostmem / base` times staying at or under `bound`.
    pub fn time_ratio_max(&mut self, what: String, hm: &str, base: &str, bound: f64) {
        let measured = self.samples.ratio(hm, base);
        self.targets.push(Target {
            what,
            measured,
            bound,
            at_least: false,
            unit: "×",
        });
    }

    /// A target on one value against a bound.
    pub fn bound(
        &mut self,
        what: String,
        measured: Option<f64>,
        bound: f64,
        at_least: bool,
        unit: &'static str,
    ) {
        self.targets.push(Target {
            what,
            measured,
            bound,
            at_least,
            unit,
        });
    }
}

/// Order of `n` alternatives in repetition `rep`: rotated left by `rep`, so no
/// alternative always runs first (A B, then B A).
pub(crate) fn order(n: usize, rep: usize) -> Vec<usize> {
    (0..n).map(|i| (i + rep) % n.max(1)).collect()
}

/// The header lines every mode starts with.
pub(crate) fn host_header(title: String) -> Vec<String> {
    vec![
        title,
        format!(
            "host: {}, Linux {}; absolute numbers vary with the host, ratios are from this run",
            crate::report::cpu_model(),
            crate::report::kernel_release()
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates() {
        assert_eq!(order(2, 0), [0, 1]);
        assert_eq!(order(2, 1), [1, 0]);
        assert_eq!(order(3, 4), [1, 2, 0]);
    }

    #[test]
    fn speed_target_is_baseline_time_over_hostmem_time() {
        let mut r = ModeRun::default();
        r.samples.push("hm".into(), Some(2.0));
        r.samples.push("base".into(), Some(1.0));
        r.speed_target("x".into(), "hm", "base", 0.8);
        assert_eq!(r.targets[0].measured, Some(0.5));
        assert!(!r.targets[0].pass());
        r.time_ratio_max("y".into(), "hm", "base", 1.2);
        assert_eq!(r.targets[1].measured, Some(2.0));
    }
}
