//! The targets the project set for itself, each checked against this run's medians: a
//! PASS or MISS line per target, so a run says plainly where hostmem stands.

use hostmem::size::format_size;
use serde_json::{json, Value};

use crate::plan::{Mem, Plan};
use crate::stats::Samples;

/// One target: what is compared, the bound, and the measured value.
pub struct Target {
    pub what: String,
    pub measured: Option<f64>,
    pub bound: f64,
    /// True: measured must be at least `bound`; false: at most.
    pub at_least: bool,
    pub unit: &'static str,
}

impl Target {
    pub fn pass(&self) -> bool {
        self.measured.is_some_and(|m| {
            if self.at_least {
                m >= self.bound
            } else {
                m <= self.bound
            }
        })
    }

    pub fn line(&self) -> String {
        let verdict = if self.pass() { "PASS" } else { "MISS" };
        let cmp = if self.at_least { "≥" } else { "≤" };
        let v = |x: f64| match self.unit {
            "×" => format!("{x:.2}×"),
            u => format!("{x:.1} {u}"),
        };
        let measured = self.measured.map_or("n/a".to_string(), v);
        format!(
            "  {verdict}  {:<46} {cmp} {:<8} measured {measured}",
            self.what,
            v(self.bound)
        )
    }

    pub fn json(&self) -> Value {
        json!({"target": self.what, "bound": self.bound, "at-least": self.at_least,
               "unit": self.unit, "measured": self.measured, "pass": self.pass()})
    }
}

pub fn targets(s: &Samples, plan: &Plan) -> Vec<Target> {
    let (threads, size) = (&plan.threads, plan.size);
    let mut out = Vec::new();
    let at_least = |what: String, measured, bound, unit| Target {
        what,
        measured,
        bound,
        at_least: true,
        unit,
    };
    for mem in Mem::ALL {
        for t in threads {
            let k = format!("{}/{t}", mem.key());
            let r = s.ratio(&format!("{k}/run"), &format!("{k}/qemu"));
            let what = format!("{} {t} thr: hostmem / QEMU GiB/s", mem.label());
            out.push(at_least(what, r, 0.95, "×"));
        }
    }
    let what = "four backends together: hostmem / QEMU GiB/s";
    out.push(at_least(
        what.into(),
        s.ratio("four/run", "four/qemu"),
        1.6,
        "×",
    ));
    let what = "(a) libvirt line: hostmem / QEMU GiB/s";
    out.push(at_least(
        what.into(),
        s.ratio("libvirt/run-tc", "libvirt/qemu-tc"),
        1.0,
        "×",
    ));
    let what = "(b) plain line / QEMU's libvirt line GiB/s";
    out.push(at_least(
        what.into(),
        s.ratio("libvirt/run-plain", "libvirt/qemu-tc"),
        1.0,
        "×",
    ));
    for t in threads {
        let k = format!("ram-thp/{t}");
        let r = s.ratio(&format!("{k}/inproc"), &format!("{k}/memset"));
        let what = format!("ram THP {t} thr: prealloc / memset GiB/s");
        out.push(at_least(what, r, 0.6, "×"));
    }
    let what = "2 MiB end to end: QEMU time / hostmem time";
    out.push(at_least(
        what.into(),
        s.ratio("e2e/qemu", "e2e/run"),
        5.0,
        "×",
    ));
    for mem in [Mem::Ram4k, Mem::RamThp] {
        out.push(Target {
            what: format!(
                "report of {} {}: backend_json",
                format_size(size),
                mem.label()
            ),
            measured: s.median(&format!("report/{}/json", mem.key())),
            bound: 20.0,
            at_least: false,
            unit: "ms",
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_verdicts() {
        let t = Target {
            what: "x".into(),
            measured: Some(19.0),
            bound: 20.0,
            at_least: false,
            unit: "ms",
        };
        assert!(t.pass() && t.line().contains("PASS"));
        let t = Target {
            measured: None,
            at_least: true,
            ..t
        };
        assert!(!t.pass() && t.line().contains("MISS"));
    }
}
