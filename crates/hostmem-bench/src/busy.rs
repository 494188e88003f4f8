//! How busy the host was with other work while the bench measured: the share of all
//! CPUs' time that went to processes other than the bench and the programs it ran
//! (from /proc/stat and /proc/self/stat, both in clock ticks), the hypervisor's steal,
//! and the load average before and after. Other engineers' builds and tests share this
//! machine; a run they disturbed says so in its own output.

/// CPU time counters at one moment, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSnapshot {
    /// All CPUs: user, nice, system, irq, softirq.
    busy: u64,
    /// All CPUs: every field of the `cpu` line but guest time (counted in user).
    total: u64,
    steal: u64,
    /// This process and its reaped children: utime, stime, cutime, cstime.
    own: u64,
    load: f64,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Busy {
    /// Share of all CPUs' time used by other processes (0..1).
    pub others: f64,
    /// Share of all CPUs' time the hypervisor took (0..1).
    pub steal: f64,
    pub load_before: f64,
    pub load_after: f64,
}

/// The `cpu` line of /proc/stat: (busy, total, steal).
fn parse_proc_stat(text: &str) -> Option<(u64, u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest, guest_nice: inside user)
    let busy = f(0) + f(1) + f(2) + f(5) + f(6);
    let total = busy + f(3) + f(4) + f(7);
    Some((busy, total, f(7)))
}

/// utime + stime + cutime + cstime of /proc/self/stat (fields 14-17; the command name,
/// field 2, may hold spaces, so count from its closing parenthesis).
fn parse_self_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is f[n - 3].
    (14..=17).map(|n| f.get(n - 3)?.parse::<u64>().ok()).sum()
}

impl CpuSnapshot {
    pub fn now() -> Option<CpuSnapshot> {
        let (busy, total, steal) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let own = parse_self_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(CpuSnapshot {
            busy,
            total,
            steal,
            own,
            load,
        })
    }

    /// From this snapshot to `later`.
    pub fn until(&self, later: &CpuSnapshot) -> Option<Busy> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)? as f64;
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        Some(Busy {
            others: busy.saturating_sub(own) as f64 / total,
            steal: later.steal.saturating_sub(self.steal) as f64 / total,
            load_before: self.load,
            load_after: later.load,
        })
    }
}

impl Busy {
    pub fn line(&self) -> String {
        format!(
            "host while measuring: other processes used {:.0}% of the CPUs' time, steal {:.0}%, load average {:.2} before, {:.2} after",
            self.others * 100.0,
            self.steal * 100.0,
            self.load_before,
            self.load_after
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        let t = "cpu  100 5 50 800 10 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_proc_stat(t), Some((158, 971, 3)));
    }

    #[test]
    fn self_stat_with_spaces_in_the_name() {
        let mut f = vec!["S"; 50];
        f[14 - 3] = "7";
        f[15 - 3] = "3";
        f[16 - 3] = "20";
        f[17 - 3] = "10";
        let t = format!("123 (a b) c) {}", f.join(" "));
        assert_eq!(parse_self_stat(&t), Some(40));
    }

    #[test]
    fn others_exclude_own_time() {
        let a = CpuSnapshot {
            busy: 0,
            total: 0,
            steal: 0,
            own: 0,
            load: 1.0,
        };
        let b = CpuSnapshot {
            busy: 150,
            total: 200,
            steal: 10,
            own: 100,
            load: 2.0,
        };
        let u = a.until(&b).unwrap();
        assert!((u.others - 0.25).abs() < 1e-9 && (u.steal - 0.05).abs() < 1e-9);
        assert_eq!(a.until(&a), None);
    }
}
