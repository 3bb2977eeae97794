//! The server's own account of forwarding: its `dais_forward_latency_seconds` histogram (ingress
//! datagram received -> the last egress copy of that packet handed to the kernel, in-process), read
//! from `/metrics` on the signaling URL's host and port at the start and at the end of the measured
//! phase. The difference of the two readings covers exactly the measured phase.
//!
//! The server's buckets are coarse (50 µs ... 100 ms), so percentiles are reported as the upper
//! bound of the bucket they fall in; the mean (sum / count) is exact. A server whose `/metrics`
//! cannot be read (another host's firewall, an older server) leaves the report's field `null`.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Name of the histogram in the server's exposition.
const METRIC: &str = "dais_forward_latency_seconds";
/// Longest wait for one `/metrics` reading.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/metrics` body read.
const MAX_BODY: u64 = 4 << 20;

/// One reading of the histogram: cumulative counts per upper bound (`None` is `+Inf`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    buckets: Vec<(Option<f64>, u64)>,
    count: u64,
    sum_s: f64,
}

/// In-process forwarding latency over the measured phase, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerForward {
    /// Observations: one per forwarded ingress packet per media worker that forwarded it.
    pub packets: u64,
    /// Exact mean.
    pub mean: f64,
    /// Upper bound of the bucket holding the median; `null` beyond the last bound (100 ms).
    pub p50_at_most: Option<u64>,
    /// Upper bound of the bucket holding the 99th percentile; `null` beyond the last bound.
    pub p99_at_most: Option<u64>,
}

impl std::fmt::Display for ServerForward {
    /// `mean 785.0 µs, p50 <= 1000 µs, p99 <= 2500 µs (1601 packets)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = |b: Option<u64>| b.map_or_else(|| "> 100 ms".to_owned(), |us| format!("<= {us} µs"));
        write!(
            f,
            "mean {:.1} µs, p50 {}, p99 {} ({} packets)",
            self.mean,
            bound(self.p50_at_most),
            bound(self.p99_at_most),
            self.packets
        )
    }
}

/// `host:port` of the HTTP server behind a `ws://host:port/path` signaling URL.
pub fn http_authority(ws_url: &str) -> Option<&str> {
    let rest = ws_url.strip_prefix("ws://")?;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then_some(authority)
}

/// Read the histogram from the server behind `ws_url`; `None` if it cannot be read.
pub async fn read(ws_url: &str) -> Option<Reading> {
    let authority = http_authority(ws_url)?;
    let body = tokio::time::timeout(TIMEOUT, get_metrics(authority)).await.ok()??;
    parse(&body)
}

async fn get_metrics(authority: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.take(MAX_BODY).read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}

/// Parse the histogram out of a Prometheus text exposition.
pub fn parse(text: &str) -> Option<Reading> {
    let mut buckets = Vec::new();
    let (mut count, mut sum_s) = (None, None);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else { continue };
        let Some((key, value)) = rest.rsplit_once(' ') else { continue };
        if let Some(le) = key.strip_prefix("_bucket{le=\"").and_then(|k| k.strip_suffix("\"}")) {
            let bound = if le == "+Inf" { None } else { Some(le.parse::<f64>().ok()?) };
            buckets.push((bound, value.parse::<u64>().ok()?));
        } else if key == "_count" {
            count = value.parse::<u64>().ok();
        } else if key == "_sum" {
            sum_s = value.parse::<f64>().ok();
        }
    }
    if buckets.is_empty() {
        return None;
    }
    Some(Reading { buckets, count: count?, sum_s: sum_s? })
}

/// What happened between two readings.
pub fn between(start: &Reading, end: &Reading) -> Option<ServerForward> {
    if start.buckets.len() != end.buckets.len() {
        return None;
    }
    let packets = end.count.checked_sub(start.count)?;
    if packets == 0 {
        return None;
    }
    let sum_us = (end.sum_s - start.sum_s).max(0.0) * 1e6;
    let counts: Vec<(Option<f64>, u64)> =
        start.buckets.iter().zip(&end.buckets).map(|((bound, a), (_, b))| (*bound, b.saturating_sub(*a))).collect();
    let at_most = |q: f64| -> Option<u64> {
        let rank = (q * packets as f64).ceil() as u64;
        let (bound, _) = counts.iter().find(|(_, cumulative)| *cumulative >= rank.max(1))?;
        bound.map(|s| (s * 1e6).round() as u64)
    };
    Some(ServerForward {
        packets,
        mean: (sum_us / packets as f64 * 10.0).round() / 10.0,
        p50_at_most: at_most(0.5),
        p99_at_most: at_most(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE dais_forward_latency_seconds histogram
dais_forward_latency_seconds_bucket{le=\"0.00005\"} 10
dais_forward_latency_seconds_bucket{le=\"0.0001\"} 20
dais_forward_latency_seconds_bucket{le=\"0.00025\"} 30
dais_forward_latency_seconds_bucket{le=\"+Inf\"} 30
dais_forward_latency_seconds_sum 0.003
dais_forward_latency_seconds_count 30
dais_rtp_packets_forwarded_total 99
";

    #[test]
    fn readings_subtract_into_the_measured_phase() {
        let start = parse(BEFORE).expect("parses");
        assert_eq!(start.count, 30);
        // 100 more packets: 10 <= 50 µs, 80 in (100, 250], 10 beyond the last bound; 30 ms more in all.
        let after = BEFORE
            .replace("{le=\"0.00005\"} 10", "{le=\"0.00005\"} 20")
            .replace("{le=\"0.0001\"} 20", "{le=\"0.0001\"} 30")
            .replace("{le=\"0.00025\"} 30", "{le=\"0.00025\"} 120")
            .replace("{le=\"+Inf\"} 30", "{le=\"+Inf\"} 130")
            .replace("_sum 0.003", "_sum 0.033")
            .replace("_count 30", "_count 130");
        let end = parse(&after).expect("parses");
        let f = between(&start, &end).expect("packets in between");
        assert_eq!(f.packets, 100);
        assert_eq!(f.mean, 300.0);
        assert_eq!(f.p50_at_most, Some(250));
        assert_eq!(f.p99_at_most, None, "the 99th percentile lies beyond the last bound");
        assert_eq!(f.to_string(), "mean 300.0 µs, p50 <= 250 µs, p99 > 100 ms (100 packets)");
        assert_eq!(between(&start, &start), None, "no packets, no figures");
    }

    #[test]
    fn urls_and_odd_input() {
        assert_eq!(http_authority("ws://127.0.0.1:8080/ws"), Some("127.0.0.1:8080"));
        assert_eq!(http_authority("wss://example.org/ws"), None);
        assert_eq!(parse("dais_ready 1\n"), None);
        assert_eq!(parse("dais_forward_latency_seconds_bucket{le=\"x\"} 1\n"), None);
    }
}
