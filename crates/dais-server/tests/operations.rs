//! What an operator relies on, against the real binary: `/metrics` parses as Prometheus text and
//! moves with media, `/healthz` and `/readyz` answer, and SIGTERM drains without cutting live media.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{has_media_from, http_get, speaker, viewer, Server, MEDIA_TIMEOUT, REPLY_TIMEOUT};
use dais_client::{Client, ClientError, ErrorCode, Role, ServerMessage};

/// Scrape `/metrics` into `name{labels}` -> value, through a Prometheus text parser.
fn scrape(server: &Server) -> HashMap<String, f64> {
    let (status, body) = http_get(server.http, "/metrics");
    assert_eq!(status, 200);
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() { s.metric.clone() } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                for b in h {
                    out.insert(format!("{}_bucket{{le={}}}", s.metric, b.less_than), b.count);
                }
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("metric {key} missing; have {:?}", m.keys().collect::<Vec<_>>()))
}

fn wait_exit(server: &mut Server, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = server.child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(start.elapsed() < within, "dais did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(server: &Server) {
    let ok =
        Command::new("kill").args(["-s", "TERM", &server.child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill -s TERM failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_and_move_with_media() {
    let server = Server::start();
    assert_eq!(http_get(server.http, "/healthz").0, 200);
    assert_eq!(http_get(server.http, "/readyz").0, 200);
    let (_s, sp, _) = speaker(&server, "ops-metrics", "s").await;
    let (v, _) = viewer(&server, "ops-metrics", "v").await;
    v.wait_until(MEDIA_TIMEOUT, "viewer receives", |s| has_media_from(s, &sp, 20, 20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = Client::connect(&server.ws_url()).await.expect("connect");
    assert!(matches!(
        refused.join("bad room", "x", Role::Viewer).await,
        Err(ClientError::Server { code: ErrorCode::InvalidRoom, .. })
    ));

    let first = scrape(&server);
    assert_eq!(metric(&first, "dais_ready"), 1.0);
    assert_eq!(metric(&first, "dais_rooms"), 1.0);
    assert_eq!(metric(&first, "dais_participants{role=speaker}"), 1.0);
    assert_eq!(metric(&first, "dais_participants{role=viewer}"), 1.0);
    assert_eq!(metric(&first, "dais_media_sessions"), 2.0);
    assert_eq!(metric(&first, "dais_join_failures_total{code=invalid_room}"), 1.0);
    assert!(metric(&first, "dais_rtp_packets_forwarded_total") > 0.0);
    assert!(metric(&first, "dais_keyframe_requests_sent_total") >= 1.0, "the viewer's consumer asked for a keyframe");
    assert!(metric(&first, "dais_forward_latency_seconds_count") > 0.0);
    assert!(metric(&first, "dais_forward_latency_seconds_bucket{le=inf}") > 0.0);
    for reason in ["unparseable", "unknown_source", "send_error"] {
        metric(&first, &format!("dais_datagrams_dropped_total{{reason={reason}}}"));
    }
    metric(&first, "dais_rtp_dropped_total{reason=waiting_for_keyframe}");

    v.wait_until(MEDIA_TIMEOUT, "more media", |s| s.packets_from(&sp) > 150).await.unwrap_or_else(|e| panic!("{e}"));
    let second = scrape(&server);
    for counter in [
        "dais_rtp_packets_forwarded_total",
        "dais_rtp_packets_received_total",
        "dais_bytes_sent_total",
        "dais_datagrams_received_total",
    ] {
        assert!(metric(&second, counter) > metric(&first, counter), "{counter} did not move");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_until_everyone_has_left() {
    let mut server = Server::start_with(&["--drain-timeout", "60"]);
    let room = "ops-drain";
    let (s, sp, _) = speaker(&server, room, "s").await;
    let (v, _) = viewer(&server, room, "v").await;
    v.wait_until(MEDIA_TIMEOUT, "viewer receives", |s| has_media_from(s, &sp, 20, 20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mark = v.message_count();
    sigterm(&server);
    let start = Instant::now();
    while http_get(server.http, "/readyz").0 != 503 {
        assert!(start.elapsed() < REPLY_TIMEOUT, "/readyz did not turn 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(server.http, "/healthz").0, 200, "alive while draining");
    v.wait_for_message(mark, |m| matches!(m, ServerMessage::Draining { within_ms: 60_000 }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let late = Client::connect(&server.ws_url()).await.expect("connect while draining");
    assert!(matches!(
        late.join(room, "late", Role::Viewer).await,
        Err(ClientError::Server { code: ErrorCode::Draining, .. })
    ));
    assert_eq!(metric(&scrape(&server), "dais_ready"), 0.0);

    let before = v.snapshot().packets_from(&sp);
    v.wait_until(MEDIA_TIMEOUT, "media keeps flowing while draining", |s| s.packets_from(&sp) >= before + 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(server.child.try_wait().expect("try_wait").is_none(), "still running while participants remain");

    v.leave().await.expect("viewer leaves");
    s.leave().await.expect("speaker leaves");
    let status = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "exit status after the drain: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_timeout_closes_remaining_sockets() {
    let mut server = Server::start_with(&["--drain-timeout", "1"]);
    let (v, _) = viewer(&server, "ops-timeout", "v").await;
    sigterm(&server);
    let close = v.wait_closed(Duration::from_secs(15)).await.expect("closed by the drain timeout");
    assert_eq!(close.code, Some(1001), "{close:?}");
    let status = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "exit status: {status:?}");
}
