//! CPU time and resident memory of a process, read from Linux's /proc.
//!
//! CPU time is `utime + stime` of /proc/PID/stat (fields 14 and 15) in clock ticks; Linux reports them in
//! USER_HZ, which is 100 on every architecture it exposes to user space through /proc. Resident memory is
//! `VmRSS` of /proc/PID/status. A [`Sampler`] keeps one sample per call, so a run can report the peak over
//! any one-second step and the mean over its steady phase.

use std::time::Instant;

/// Clock ticks per second in /proc (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// CPU seconds used so far (user + system, all threads).
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// Read process `pid` ("self" for this one); `None` if it is gone or /proc is not Linux's.
pub fn sample(pid: &str) -> Option<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Sample { at, cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND, rss_bytes: rss_kb * 1024 })
}

/// Samples of one process over a run.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    samples: Vec<Sample>,
}

/// What a [`Sampler`] saw between two instants.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Mean CPU between the two instants, in percent of one core.
    pub cpu_pct_mean: f64,
    /// Highest CPU over any two consecutive samples in the whole run, percent of one core.
    pub cpu_pct_peak: f64,
    /// Mean resident memory between the two instants, bytes.
    pub rss_mean: u64,
    /// Highest resident memory seen, bytes.
    pub rss_peak: u64,
}

impl Sampler {
    /// Record one sample of `pid`, if it can be read.
    pub fn take(&mut self, pid: &str) {
        if let Some(s) = sample(pid) {
            self.samples.push(s);
        }
    }

    /// The most recent sample.
    pub fn last(&self) -> Option<Sample> {
        self.samples.last().copied()
    }

    /// CPU percent over the two most recent samples.
    pub fn recent_cpu_pct(&self) -> Option<f64> {
        let n = self.samples.len();
        let (a, b) = (self.samples.get(n.checked_sub(2)?)?, self.samples.get(n - 1)?);
        pct(a, b)
    }

    /// Resident memory of the first sample at or after `t`.
    pub fn rss_at(&self, t: Instant) -> Option<u64> {
        self.samples.iter().find(|s| s.at >= t).map(|s| s.rss_bytes)
    }

    /// Usage between `from` and `to` (mean), and over the whole run (peak).
    pub fn usage(&self, from: Instant, to: Instant) -> Option<Usage> {
        let window: Vec<&Sample> = self.samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
        let (first, last) = (window.first()?, window.last()?);
        let cpu_pct_mean = pct(first, last)?;
        let cpu_pct_peak = self.samples.windows(2).filter_map(|w| pct(&w[0], &w[1])).fold(0.0, f64::max);
        let rss_mean = window.iter().map(|s| s.rss_bytes).sum::<u64>() / window.len() as u64;
        let rss_peak = self.samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
        Some(Usage { cpu_pct_mean, cpu_pct_peak, rss_mean, rss_peak })
    }
}

fn pct(a: &Sample, b: &Sample) -> Option<f64> {
    let secs = b.at.checked_duration_since(a.at)?.as_secs_f64();
    (secs > 0.05).then(|| 100.0 * (b.cpu_seconds - a.cpu_seconds) / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample("self").expect("/proc/self is readable on Linux");
        assert!(s.rss_bytes > 1024 * 1024, "a test binary is resident in more than 1 MiB: {}", s.rss_bytes);
        // Burn some CPU and see it counted.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let t = sample("self").expect("readable");
        assert!(t.cpu_seconds - s.cpu_seconds >= 0.1, "{} -> {}", s.cpu_seconds, t.cpu_seconds);
    }

    #[test]
    fn missing_process_reads_as_none() {
        assert!(sample("999999999").is_none());
    }
}
