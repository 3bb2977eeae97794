//! The media plane's counters and its latency histogram: shared atomics, written by the workers and read
//! by whoever renders them (`/metrics`). Counting never blocks and never allocates.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the media plane, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Datagrams received on the socket.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams that were not STUN, DTLS, RTP or RTCP.
    pub dropped_unparseable: AtomicU64,
    /// Datagrams from an address no session knows, that were not an acceptable STUN request.
    pub dropped_unknown_source: AtomicU64,
    /// Datagrams the kernel refused to send (buffer full).
    pub send_errors: AtomicU64,
    /// RTP packets the router dropped, all reasons together (see `drops_by_reason`), plus packets of
    /// streams that no producer owns.
    pub rtp_dropped: AtomicU64,
    /// RTP packets forwarded to consumers.
    pub rtp_forwarded: AtomicU64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// Sessions alive now.
    pub sessions: AtomicU64,
    /// Bytes received on the socket.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// RTP packets received from publishers and handed to the router.
    pub rtp_in: AtomicU64,
    /// Packets viewers NACKed (each sequence number once per NACK; answered from the producers' packet
    /// caches, never forwarded to publishers).
    pub nacks_received: AtomicU64,
    /// Retransmissions sent from the producers' packet caches; refreshed about once a second.
    pub retransmissions: AtomicU64,
    /// NACKed packets that could not be resent (too old, or never sent to that viewer); refreshed about
    /// once a second.
    pub retransmission_misses: AtomicU64,
    /// STUN binding requests from unknown addresses whose MESSAGE-INTEGRITY did not verify.
    pub dropped_stun_auth: AtomicU64,
    /// STUN binding requests beyond their address's or session's budget (the endpoint's `CheckRate`).
    pub dropped_stun_rate: AtomicU64,
    /// ICE nominations of a new address that did not move a session's media path: only media that
    /// decrypts from an address moves it there.
    pub path_moves_refused: AtomicU64,
    /// TCP media connections open now.
    pub tcp_connections: AtomicU64,
    /// Packets for TCP viewers dropped because their connection's outgoing queue was full (or the
    /// connection had closed).
    pub tcp_send_drops: AtomicU64,
    /// TCP media connections closed for a framing error (a length above the frame limit).
    pub tcp_closed_framing: AtomicU64,
    /// TCP media connections closed because their first frame was not STUN.
    pub tcp_closed_not_stun: AtomicU64,
    /// TCP media connections closed because they sent nothing within 10 s.
    pub tcp_closed_silent: AtomicU64,
    /// TCP media connections refused because the connection limit was reached.
    pub tcp_refused_limit: AtomicU64,
    /// Router drops by reason, in the order of [`dais_forward::DropReason::ALL`]; refreshed about once a second.
    pub drops_by_reason: [AtomicU64; dais_forward::DropReason::ALL.len()],
    /// Forwarding latency: ingress datagram received -> last egress copy handed to the kernel, per worker
    /// that forwards the packet.
    pub latency: Histogram,
    /// Datagrams the receiving worker handed to the worker that owns their session.
    pub datagrams_handed_over: AtomicU64,
    /// RTP packets relayed from a producer's worker to the other workers' mirrors (one per packet per
    /// other worker).
    pub packets_relayed: AtomicU64,
    /// Media workers running.
    pub workers: AtomicU64,
    /// Keyframe requests a producer's home worker took from its mirrors on other workers (each then
    /// passes the producer's one throttle).
    pub keyframes_wanted_elsewhere: AtomicU64,
    /// Relayed packets and handed-over datagrams dropped because the receiving worker's media queue
    /// was full (it is overloaded).
    pub backlog_drops: AtomicU64,
    /// Downlink estimates (REMB) received from clients.
    pub remb_received: AtomicU64,
    /// REMB reports received in the last second (a gauge).
    pub remb_last_second: AtomicU64,
    /// Sessions that receive at least one stream (a gauge).
    pub receiving_sessions: AtomicU64,
    /// Downlink estimates by size, per [`ESTIMATE_BOUNDS_KBPS`] bucket (not cumulative; the last
    /// one catches the rest).
    pub estimates: [AtomicU64; ESTIMATE_BOUNDS_KBPS.len() + 1],
    /// Sum of those estimates, bits per second.
    pub estimates_sum: AtomicU64,
    /// Video consumers that moved to another simulcast layer.
    pub layer_switches: AtomicU64,
    /// Resends sent only to probe a viewer's downlink, and their payload bytes.
    pub probe_packets: AtomicU64,
    /// Payload bytes of those.
    pub probe_bytes: AtomicU64,
    /// Video consumers forwarding each layer now (gauges).
    pub consumers_per_layer: [AtomicU64; dais_forward::MAX_LAYERS],
    /// Video consumers paused because the viewer's downlink cannot carry the lowest layer.
    pub consumers_paused_bandwidth: AtomicU64,
    /// Video consumers paused because the viewer hid the tile.
    pub consumers_paused_hidden: AtomicU64,
    /// Video consumers waiting for their first keyframe.
    pub consumers_starting: AtomicU64,
}

/// Upper bounds of the downlink-estimate buckets, kbit/s.
pub const ESTIMATE_BOUNDS_KBPS: [u64; 11] = [100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000];

/// A fixed-bucket latency histogram with atomic counters (Prometheus style: cumulative on read).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

/// Upper bounds of the latency buckets, in microseconds; a last bucket catches the rest.
pub const LATENCY_BOUNDS_US: [u64; 11] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

impl Histogram {
    /// Record one observation.
    pub fn record(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last one is +Inf), the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(Option<u64>, u64)>, u64, f64) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            out.push((LATENCY_BOUNDS_US.get(i).copied(), acc));
        }
        (out, acc, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

impl MediaStats {
    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Count one downlink estimate in its bucket.
    pub(crate) fn record_estimate(&self, bps: u64) {
        let kbps = bps / 1000;
        let i = ESTIMATE_BOUNDS_KBPS.iter().position(|b| kbps <= *b).unwrap_or(ESTIMATE_BOUNDS_KBPS.len());
        self.estimates[i].fetch_add(1, Ordering::Relaxed);
        self.estimates_sum.fetch_add(bps, Ordering::Relaxed);
    }
}
