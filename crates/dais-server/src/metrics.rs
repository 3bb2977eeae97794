//! `/metrics` in the Prometheus text format (version 0.0.4), rendered on request from the live
//! counters of signaling ([`dais_signaling::SignalingMetrics`]) and the media plane
//! ([`dais_media::MediaStats`]). Nothing is sampled in the background: a scrape reads atomics.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use dais_media::{DropReason, MediaStats, ESTIMATE_BOUNDS_KBPS};
use dais_signaling::Signaling;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter with one sample per `reason` label.
fn by_reason(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    header(out, name, "counter", help);
    for (reason, value) in samples {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {value}");
    }
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Render every metric.
pub fn render(sig: &Signaling, media: &MediaStats, http: &crate::http::HttpStats) -> String {
    let mut out = String::with_capacity(4096);
    let m = sig.metrics();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);

    single(&mut out, "dais_ready", "gauge", "1 while joins are accepted, 0 while draining.", sig.is_ready() as u64);
    single(&mut out, "dais_rooms", "gauge", "Rooms with at least one participant.", m.rooms);
    header(&mut out, "dais_participants", "gauge", "Joined participants by role.");
    let _ = writeln!(out, "dais_participants{{role=\"speaker\"}} {}", m.speakers);
    let _ = writeln!(out, "dais_participants{{role=\"viewer\"}} {}", m.viewers);
    single(&mut out, "dais_connections", "gauge", "Open signaling WebSockets, joined or not.", m.connections);
    single(&mut out, "dais_http_connections", "gauge", "Open HTTP connections (WebSockets included).", get(&http.open));
    by_reason(
        &mut out,
        "dais_http_refused_total",
        "HTTP connections closed at accept, by reason.",
        &[("per_ip", get(&http.refused_per_ip)), ("full", get(&http.refused_full))],
    );
    single(
        &mut out,
        "dais_http_probe_lane_total",
        "counter",
        "HTTP connections served only /healthz and /readyz because max_connections was reached.",
        get(&http.probe_lane),
    );
    single(
        &mut out,
        "dais_parked_participants",
        "gauge",
        "Participants whose WebSocket was lost, kept for a resume.",
        m.parked,
    );
    single(
        &mut out,
        "dais_http_sessions",
        "gauge",
        "Live WHIP and WHEP sessions (publishers and players without a WebSocket).",
        sig.http_session_count() as u64,
    );
    single(&mut out, "dais_resumes_total", "counter", "Resumes that took a participant over.", m.resumed);
    single(
        &mut out,
        "dais_resume_failures_total",
        "counter",
        "Resumes refused (unknown, used or expired token, or a participant an operator ended).",
        m.resume_failures,
    );
    header(&mut out, "dais_join_failures_total", "counter", "Refused joins by error code.");
    for (code, n) in &m.join_failures {
        let _ = writeln!(out, "dais_join_failures_total{{code=\"{code}\"}} {n}");
    }

    single(&mut out, "dais_media_sessions", "gauge", "WebRTC sessions in the media plane.", get(&media.sessions));
    single(&mut out, "dais_media_workers", "gauge", "Media worker threads.", get(&media.workers));
    single(
        &mut out,
        "dais_datagrams_handed_over_total",
        "counter",
        "Datagrams the receiving media worker handed to the worker owning their session.",
        get(&media.datagrams_handed_over),
    );
    single(
        &mut out,
        "dais_rtp_packets_relayed_total",
        "counter",
        "RTP packets relayed from a producer's media worker to each other worker.",
        get(&media.packets_relayed),
    );
    single(
        &mut out,
        "dais_keyframe_requests_from_other_workers_total",
        "counter",
        "Keyframe requests a producer's media worker took from its mirrors on other workers, before its throttle.",
        get(&media.keyframes_wanted_elsewhere),
    );
    single(
        &mut out,
        "dais_worker_backlog_drops_total",
        "counter",
        "Relayed packets and handed-over datagrams dropped because the receiving media worker was too far behind.",
        get(&media.backlog_drops),
    );
    single(&mut out, "dais_datagrams_received_total", "counter", "UDP datagrams received.", get(&media.datagrams_in));
    single(&mut out, "dais_datagrams_sent_total", "counter", "UDP datagrams sent.", get(&media.datagrams_out));
    single(&mut out, "dais_bytes_received_total", "counter", "UDP bytes received.", get(&media.bytes_in));
    single(&mut out, "dais_bytes_sent_total", "counter", "UDP bytes sent.", get(&media.bytes_out));
    by_reason(
        &mut out,
        "dais_datagrams_dropped_total",
        "Datagrams dropped before any session, by reason.",
        &[
            ("unparseable", get(&media.dropped_unparseable)),
            ("unknown_source", get(&media.dropped_unknown_source)),
            ("stun_auth", get(&media.dropped_stun_auth)),
            ("stun_rate", get(&media.dropped_stun_rate)),
            ("send_error", get(&media.send_errors)),
        ],
    );
    single(
        &mut out,
        "dais_path_moves_refused_total",
        "counter",
        "ICE nominations of a new address that did not move a session's media path (it moves only on media that decrypts).",
        get(&media.path_moves_refused),
    );
    single(
        &mut out,
        "dais_tcp_media_connections",
        "gauge",
        "TCP media connections (ICE over TCP) open now.",
        get(&media.tcp_connections),
    );
    by_reason(
        &mut out,
        "dais_tcp_media_closed_total",
        "TCP media connections the server closed, by reason.",
        &[
            ("framing", get(&media.tcp_closed_framing)),
            ("not_stun", get(&media.tcp_closed_not_stun)),
            ("silent", get(&media.tcp_closed_silent)),
            ("limit", get(&media.tcp_refused_limit)),
        ],
    );
    single(
        &mut out,
        "dais_tcp_send_drops_total",
        "counter",
        "Packets for TCP viewers dropped because their connection's outgoing queue was full.",
        get(&media.tcp_send_drops),
    );
    single(
        &mut out,
        "dais_rtp_packets_received_total",
        "counter",
        "RTP packets from publishers handed to the router.",
        get(&media.rtp_in),
    );
    single(
        &mut out,
        "dais_rtp_packets_forwarded_total",
        "counter",
        "RTP packets written to consumers.",
        get(&media.rtp_forwarded),
    );
    header(&mut out, "dais_rtp_dropped_total", "counter", "RTP packets the router dropped, by reason.");
    for (i, reason) in DropReason::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "dais_rtp_dropped_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            get(&media.drops_by_reason[i])
        );
    }
    single(
        &mut out,
        "dais_nacks_received_total",
        "counter",
        "Packets viewers reported missing (NACK), answered from the producers' packet caches.",
        get(&media.nacks_received),
    );
    single(
        &mut out,
        "dais_retransmissions_total",
        "counter",
        "Packets resent to viewers (as RTX) from the producers' packet caches.",
        get(&media.retransmissions),
    );
    single(
        &mut out,
        "dais_retransmission_misses_total",
        "counter",
        "NACKed packets that could not be resent: older than the cache's 1 s, or never sent to that viewer.",
        get(&media.retransmission_misses),
    );
    single(
        &mut out,
        "dais_keyframe_requests_sent_total",
        "counter",
        "Keyframe requests (PLI/FIR) sent to publishers.",
        get(&media.keyframe_requests),
    );

    simulcast(&mut out, media);

    let name = "dais_forward_latency_seconds";
    header(&mut out, name, "histogram", "Ingress datagram received to last egress copy handed to the kernel.");
    let (buckets, count, sum) = media.latency.snapshot();
    for (bound, n) in buckets {
        match bound {
            Some(us) => {
                let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", us as f64 / 1e6);
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// Layers per viewer: what each video consumer forwards, the viewers' estimates, probes, feedback.
fn simulcast(out: &mut String, media: &MediaStats) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    header(
        out,
        "dais_video_consumers",
        "gauge",
        "Video consumers by what they forward: a simulcast layer (0 lowest), or paused, or starting.",
    );
    for (i, g) in media.consumers_per_layer.iter().enumerate() {
        let _ = writeln!(out, "dais_video_consumers{{state=\"layer\",layer=\"{i}\"}} {}", get(g));
    }
    let _ =
        writeln!(out, "dais_video_consumers{{state=\"paused_bandwidth\"}} {}", get(&media.consumers_paused_bandwidth));
    let _ = writeln!(out, "dais_video_consumers{{state=\"paused_hidden\"}} {}", get(&media.consumers_paused_hidden));
    let _ = writeln!(out, "dais_video_consumers{{state=\"starting\"}} {}", get(&media.consumers_starting));
    single(
        out,
        "dais_layer_switches_total",
        "counter",
        "Video consumers that moved to another simulcast layer.",
        get(&media.layer_switches),
    );
    single(
        out,
        "dais_probe_packets_total",
        "counter",
        "Resends sent only to probe viewers' downlinks.",
        get(&media.probe_packets),
    );
    single(out, "dais_probe_bytes_total", "counter", "Payload bytes of those probes.", get(&media.probe_bytes));
    single(
        out,
        "dais_remb_received_total",
        "counter",
        "Downlink estimates (REMB) received from clients.",
        get(&media.remb_received),
    );
    let receiving = get(&media.receiving_sessions);
    let per_viewer = if receiving == 0 { 0.0 } else { get(&media.remb_last_second) as f64 / receiving as f64 };
    header(
        out,
        "dais_feedback_per_viewer_per_second",
        "gauge",
        "Downlink-estimate feedback packets (REMB) per receiving session in the last second.",
    );
    let _ = writeln!(out, "dais_feedback_per_viewer_per_second {per_viewer:.3}");
    let name = "dais_downlink_estimate_bits_per_second";
    header(out, name, "histogram", "Downlink estimates (REMB) received from clients.");
    let mut acc = 0;
    for (i, c) in media.estimates.iter().enumerate() {
        acc += get(c);
        match ESTIMATE_BOUNDS_KBPS.get(i) {
            Some(kbps) => {
                let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {acc}", kbps * 1000);
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {acc}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum {}", get(&media.estimates_sum));
    let _ = writeln!(out, "{name}_count {acc}");
}
