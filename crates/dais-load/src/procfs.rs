//! CPU time and resident memory of a process, read from Linux's /proc.
//!
//! CPU time is `utime + stime` of /proc/PID/stat (fields 14 and 15) in clock ticks; Linux reports them in
//! USER_HZ, which is 100 on every architecture it exposes to user space through /proc. Resident memory is
//! `VmRSS` of /proc/PID/status. A [`Sampler`] keeps one sample per call, so a run can report the peak over
//! any one-second step and the mean over its steady phase.
//!
//! Each sample also sums the CPU time of the threads whose name starts with [`MEDIA_THREADS`]
//! (/proc/PID/task/TID/stat): the server's media workers and its TCP media thread. The rest of the
//! server (its tokio runtime: signaling, HTTP, admin, metrics) is the difference, so a run can say
//! what signaling cost apart from media.

use std::time::Instant;

/// Clock ticks per second in /proc (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// Name prefix of the server's media threads (`dais-media-0`, ..., `dais-media-tcp`).
pub const MEDIA_THREADS: &str = "dais-media";

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// CPU seconds used so far (user + system, all threads).
    pub cpu_seconds: f64,
    /// CPU seconds used so far by its live threads named [`MEDIA_THREADS`]...
    pub media_cpu_seconds: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// Read process `pid` ("self" for this one); `None` if it is gone or /proc is not Linux's.
pub fn sample(pid: &str) -> Option<Sample> {
    let at = Instant::now();
    let (_, ticks) = cpu_ticks(&format!("/proc/{pid}/stat"))?;
    let media_ticks: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| cpu_ticks(&task.ok()?.path().join("stat").to_string_lossy()))
        .filter(|(name, _)| name.starts_with(MEDIA_THREADS))
        .map(|(_, t)| t)
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Sample {
        at,
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        media_cpu_seconds: media_ticks as f64 / TICKS_PER_SECOND,
        rss_bytes: rss_kb * 1024,
    })
}

/// The command name and `utime + stime` of a /proc `stat` file (a process's or a thread's).
fn cpu_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
    let close = stat.rfind(')')?;
    let name = stat.get(stat.find('(')? + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // The fields start at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((name, utime + stime))
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
    /// The share of it spent in threads named [`MEDIA_THREADS`], percent of one core.
    pub media_cpu_pct_mean: f64,
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
        let media_cpu_pct_mean = media_pct(first, last)?;
        let cpu_pct_peak = self.samples.windows(2).filter_map(|w| pct(&w[0], &w[1])).fold(0.0, f64::max);
        let rss_mean = window.iter().map(|s| s.rss_bytes).sum::<u64>() / window.len() as u64;
        let rss_peak = self.samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
        Some(Usage { cpu_pct_mean, media_cpu_pct_mean, cpu_pct_peak, rss_mean, rss_peak })
    }
}

fn pct(a: &Sample, b: &Sample) -> Option<f64> {
    let secs = b.at.checked_duration_since(a.at)?.as_secs_f64();
    (secs > 0.05).then(|| 100.0 * (b.cpu_seconds - a.cpu_seconds) / secs)
}

/// [`pct`] of the media threads (a thread that ended between the samples takes its time with it,
/// so this is never below 0).
fn media_pct(a: &Sample, b: &Sample) -> Option<f64> {
    let secs = b.at.checked_duration_since(a.at)?.as_secs_f64();
    (secs > 0.05).then(|| (100.0 * (b.media_cpu_seconds - a.media_cpu_seconds) / secs).max(0.0))
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
    fn counts_the_cpu_of_threads_named_as_media_apart() {
        let s = sample("self").expect("readable");
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name(format!("{MEDIA_THREADS}-0"))
            .spawn(move || {
                // Work until this thread has used 0.2 s of CPU, however busy the machine is.
                let ticks = || cpu_ticks("/proc/thread-self/stat").map_or(u64::MAX, |(_, t)| t);
                let start = ticks();
                let mut x = 0u64;
                while ticks() < start.saturating_add(20) {
                    for _ in 0..100_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                }
                std::hint::black_box(x);
                let _ = busy_tx.send(());
                // Alive while sampled: a thread's time leaves /proc/PID/task with it.
                let _ = done_rx.recv();
            })
            .expect("spawn");
        busy_rx.recv().expect("the worker worked");
        let t = sample("self").expect("readable");
        let _ = done_tx.send(());
        worker.join().expect("joins");
        assert!(t.media_cpu_seconds - s.media_cpu_seconds >= 0.2, "{} -> {}", s.media_cpu_seconds, t.media_cpu_seconds);
        assert!(t.cpu_seconds >= t.media_cpu_seconds, "the process's time includes its threads'");
    }

    #[test]
    fn missing_process_reads_as_none() {
        assert!(sample("999999999").is_none());
    }
}
