//! A tiny load run against a spawned server: 1 speaker, 20 viewers, 5 s measured. It checks what the
//! report promises a reader: everyone joined, at least 99 % of packets arrived, and the JSON report parses
//! with every field present. Also checks that `--help` documents every flag and preset.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The `dais` binary of this build. `cargo test -p dais-load` does not build other packages' binaries,
/// so build it (a no-op when it is up to date) rather than test a stale or missing one.
fn dais_bin() -> PathBuf {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_dais-load"));
    let dais = load.with_file_name("dais");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(["build", "-p", "dais-server"]).status().expect("run cargo build");
    assert!(status.success(), "cargo build -p dais-server failed");
    assert!(dais.exists(), "no dais binary at {}", dais.display());
    dais
}

/// Every key path the JSON report must have (values may be null only where documented: `server`; the
/// `server_forward_us` percentiles beyond the server's last bucket).
const FIELDS: &[&str] = &[
    "scenario.preset",
    "scenario.url",
    "scenario.speakers",
    "scenario.viewers",
    "scenario.join_rate",
    "scenario.duration_s",
    "scenario.ramp_s",
    "scenario.video_bitrate",
    "scenario.packets_per_viewer_per_s",
    "scenario.generator_threads",
    "scenario.all_viewers_decrypt",
    "scenario.decrypt_one_in",
    "viewers.started",
    "viewers.joined",
    "viewers.failed",
    "viewers.failed_after_media",
    "viewers.failures",
    "viewers.left_early",
    "join_time_ms.joined.p50",
    "join_time_ms.joined.p99",
    "join_time_ms.media_connected.p50",
    "join_time_ms.media_connected.p99",
    "join_time_ms.first_media.p50",
    "join_time_ms.first_media.p99",
    "join_time_ms.first_media.max",
    "join_time_ms.first_media.count",
    "join_time_ms.first_keyframe.p50",
    "join_time_ms.first_keyframe.p99",
    "join_time_ms.first_keyframe.max",
    "join_time_ms.first_keyframe.count",
    "latency_us.p50",
    "latency_us.p99",
    "latency_us.p999",
    "latency_us.max",
    "latency_us.samples",
    "delivery.delivered_pct",
    "delivery.expected",
    "delivery.received",
    "delivery.viewer_delivered_pct.worst",
    "delivery.viewer_delivered_pct.mean",
    "delivery.lost.worst",
    "delivery.lost.mean",
    "delivery.duplicates.worst",
    "delivery.duplicates.mean",
    "delivery.out_of_order.worst",
    "delivery.out_of_order.mean",
    "delivery.missing_streams",
    "delivery.counted_from_headers",
    "fanout_us.last_viewer.p50",
    "fanout_us.last_viewer.p99",
    "fanout_us.last_viewer.p999",
    "fanout_us.last_viewer.samples",
    "fanout_us.first_32_viewers.p50",
    "server_forward_us.packets",
    "server_forward_us.mean",
    "server_forward_us.p50_at_most",
    "server_forward_us.p99_at_most",
    "speakers.failed",
    "speakers.packets_sent",
    "speakers.keyframe_requests",
    "speakers.max_keyframe_requests_per_s",
    "server.pid",
    "server.cpu_pct_steady",
    "server.cpu_pct_media_threads",
    "server.cpu_pct_other_threads",
    "server.cpu_pct_peak",
    "server.cpu_pct_per_100_viewers",
    "server.rss_baseline_mib",
    "server.rss_steady_mib",
    "server.rss_peak_mib",
    "server.memory_per_viewer_kib",
    "generator.pid",
    "generator.cpu_pct_steady",
    "generator.cpu_pct_peak",
    "generator.cpu_pct_per_100_viewers",
    "generator.rss_baseline_mib",
    "generator.rss_steady_mib",
    "generator.rss_peak_mib",
    "generator.memory_per_viewer_kib",
];

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| v.get(k).unwrap_or_else(|| panic!("report has no `{path}`:\n{v:#}")))
}

/// Run the 20-viewer keynote with `extra` flags; the JSON report, checked for every field, and stdout.
fn tiny_run(name: &str, extra: &[&str]) -> (Value, String) {
    let dais = dais_bin();
    let dir = std::env::temp_dir().join(format!("dais-load-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_dais-load"))
        .args(["--spawn-server", "--server-bin"])
        .arg(&dais)
        .args(["--preset", "keynote", "--viewers", "20", "--join-rate", "20", "--duration", "5", "--quiet", "--fanout"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run dais-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dais-load failed: {}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("dais-load report: keynote"), "no table on stdout:\n{stdout}");

    let text = std::fs::read_to_string(&json).expect("the JSON report was written");
    let report: Value = serde_json::from_str(&text).expect("the JSON report parses");
    for path in FIELDS {
        assert!(!field(&report, path).is_null(), "`{path}` is null:\n{report:#}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    (report, stdout.into_owned())
}

/// What every tiny run must show: everyone joined, at least 99 % arrived (overall and at the worst
/// viewer), every viewer got both streams and more than 5 s of packets were measured.
fn assert_everyone_received(report: &Value, stdout: &str) {
    assert_eq!(field(report, "viewers.started"), 20, "{stdout}");
    assert_eq!(field(report, "viewers.joined"), 20, "every viewer joined:\n{stdout}");
    assert_eq!(field(report, "viewers.failed"), 0, "{stdout}");
    let delivered = field(report, "delivery.delivered_pct").as_f64().expect("a number");
    assert!(delivered >= 99.0, "delivered {delivered} %:\n{stdout}");
    let worst = field(report, "delivery.viewer_delivered_pct.worst").as_f64().expect("a number");
    assert!(worst >= 99.0, "worst viewer {worst} %:\n{stdout}");
    assert_eq!(field(report, "delivery.missing_streams"), 0, "every viewer got audio and video:\n{stdout}");
    // 20 viewers x (180 video + 50 audio packets/s) x more than 5 s.
    let samples = field(report, "latency_us.samples").as_u64().expect("a number");
    assert!(samples > 20 * 230 * 5, "only {samples} packets measured:\n{stdout}");
    assert_eq!(field(report, "join_time_ms.first_keyframe.count"), 20, "{stdout}");
}

#[test]
fn twenty_viewers_all_join_and_receive_at_least_99_percent() {
    let (report, stdout) = tiny_run("all", &[]);
    assert_everyone_received(&report, &stdout);
    assert_eq!(field(&report, "scenario.all_viewers_decrypt"), true);
    assert_eq!(field(&report, "delivery.counted_from_headers"), 0, "nothing skips decryption by default");
    assert!(stdout.contains("every viewer decrypts"), "{stdout}");
    // Fan-out: every ingress packet of the measured phase reached all 20 viewers.
    let fanout = field(&report, "fanout_us.last_viewer.samples").as_u64().expect("a number");
    assert!(fanout > 230 * 4, "only {fanout} packets reached every viewer:\n{stdout}");
    // The SFU asks the speaker for key frames for new viewers, throttled to one per 550 ms.
    let kf = field(&report, "speakers.keyframe_requests").as_u64().expect("a number");
    assert!(kf >= 1, "the speaker was never asked for a key frame:\n{stdout}");
    // The server's CPU is split by thread: its media workers forward, so they have some of it.
    let cpu = |k: &str| field(&report, k).as_f64().expect("a number");
    let (all, media) = (cpu("server.cpu_pct_steady"), cpu("server.cpu_pct_media_threads"));
    assert!(media > 0.0 && media <= all + 1.0, "media threads {media} % of {all} %:\n{stdout}");
}

#[test]
fn viewers_that_count_headers_measure_the_same_things() {
    let (report, stdout) = tiny_run("sample", &["--decrypt-one-in", "4"]);
    assert_everyone_received(&report, &stdout);
    assert_eq!(field(&report, "scenario.all_viewers_decrypt"), false);
    assert_eq!(field(&report, "scenario.decrypt_one_in"), 4);
    // Viewers 0, 4, 8, 12 and 16 decrypt everything; the other 15 count headers after their first key
    // frame, so most but not all packets were counted so.
    let counted = field(&report, "delivery.counted_from_headers").as_u64().expect("a number");
    let received = field(&report, "delivery.received").as_u64().expect("a number");
    assert!(counted > received / 2 && counted < received * 15 / 20, "{counted} of {received} counted:\n{stdout}");
    assert!(stdout.contains("1 viewer in 4 decrypts"), "{stdout}");
}

#[test]
fn viewers_over_tcp_receive_everything() {
    let (report, stdout) = tiny_run("tcp", &["--transport", "tcp"]);
    assert_everyone_received(&report, &stdout);
    assert_eq!(field(&report, "transport"), "tcp");
    assert!(stdout.contains("over tcp"), "{stdout}");
}

#[test]
fn viewers_cut_off_for_a_second_resume_and_see_media_and_a_key_frame_again() {
    let (report, stdout) = tiny_run("blip", &["--blip", "1", "--blip-share", "0.5", "--blip-drop-signaling"]);
    assert_eq!(field(&report, "viewers.failed"), 0, "{stdout}");
    let cut = field(&report, "blip.viewers_cut").as_u64().expect("a number");
    assert!((5..=15).contains(&cut), "about half of 20 viewers cut, not {cut}:\n{stdout}");
    assert_eq!(field(&report, "blip.media_again"), cut, "{stdout}");
    assert_eq!(field(&report, "blip.keyframe_again"), cut, "every cut viewer can decode again:\n{stdout}");
    assert_eq!(field(&report, "blip.resumed"), cut, "each resumed its participant on a new socket:\n{stdout}");
    assert_eq!(field(&report, "blip.keyframe_after_ms.count"), cut, "{stdout}");
}

/// Every viewer reacts every second and a quarter of them chat at the rate limit, while media flows:
/// the server refuses none of it (the generator keeps to the documented limits), every viewer gets at
/// most two `reactions` messages a second (the room aggregates, whatever the number of reactions),
/// every chat reaches every viewer, and both are timed.
#[test]
fn viewers_react_and_chat_within_the_limits_and_the_room_aggregates_reactions() {
    let (report, stdout) = tiny_run("interact", &["--react-every", "1", "--chat-share", "0.25"]);
    assert_everyone_received(&report, &stdout);
    let i = field(&report, "interaction");
    let chatters = field(i, "chatters").as_u64().expect("a number");
    assert!((2..=10).contains(&chatters), "about a quarter of 20 viewers chat, not {chatters}:\n{stdout}");
    assert_eq!(field(i, "refused"), &serde_json::json!({}), "nothing beyond the limits:\n{stdout}");
    // 20 viewers, one reaction a second each, for more than the 5 s measured.
    let reactions = field(i, "reactions_sent").as_u64().expect("a number");
    assert!(reactions >= 20 * 5, "{reactions} reactions sent:\n{stdout}");
    let per_viewer = field(i, "reactions_messages_per_viewer_per_s").as_f64().expect("a number");
    assert!(per_viewer > 0.5 && per_viewer <= 2.2, "{per_viewer} reactions messages per viewer per second:\n{stdout}");
    assert!(field(i, "reaction_latency_ms.count").as_u64().expect("a number") >= 20 * 3, "{stdout}");
    // Each chatter writes one message per 2 s: every viewer receives all of them.
    let chats = field(i, "chats_received_per_viewer_per_s").as_f64().expect("a number");
    let expected = chatters as f64 * 0.5;
    assert!(
        chats > expected * 0.7 && chats < expected * 1.3,
        "{chats} chats per viewer per second, not about {expected}:\n{stdout}"
    );
    assert!(field(i, "chat_latency_ms.count").as_u64().expect("a number") >= 20 * chatters, "{stdout}");
    assert!(stdout.contains("chat: send -> each viewer"), "{stdout}");
}

/// A simulcast keynote whose viewers sit behind three downlinks: 400 kbit/s, 1.2 Mbit/s and none. Each
/// class must end on the layer its link carries (q, h, f), with its packets on that layer delivered, and
/// its viewers must have sent REMB.
#[test]
fn each_viewer_class_ends_on_the_layer_its_link_carries() {
    let dais = dais_bin();
    let dir = std::env::temp_dir().join(format!("dais-load-test-mix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_dais-load"))
        .args(["--spawn-server", "--server-bin"])
        .arg(&dais)
        .args(["--preset", "keynote", "--viewers", "10", "--join-rate", "20", "--duration", "15", "--quiet"])
        .args(["--simulcast", "--viewer-mix", "400:30,1200:30,0:40", "--json"])
        .arg(&json)
        .output()
        .expect("run dais-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dais-load failed: {}\n{stdout}\n{stderr}", out.status);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).expect("it parses");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(field(&report, "viewers.joined"), 10, "{stdout}");
    assert_eq!(field(&report, "scenario.simulcast"), true);
    let classes = field(&report, "classes").as_array().expect("a list of classes");
    assert_eq!(classes.len(), 3, "{stdout}");
    for (class, (cap, layer)) in classes.iter().zip([(400, "q"), (1200, "h"), (0, "f")]) {
        assert_eq!(field(class, "cap_kbps"), cap);
        assert_eq!(field(class, "expected_layer"), layer, "{stdout}");
        let viewers = field(class, "viewers").as_u64().expect("a number");
        assert!(viewers >= 2, "class {cap}: {viewers} viewers:\n{stdout}");
        assert_eq!(field(class, "pairs"), viewers, "one speaker:\n{stdout}");
        assert_eq!(field(class, "on_expected_at_end"), viewers, "class {cap} ends on {layer}:\n{stdout}");
        assert_eq!(field(class, &format!("at_end.{layer}")), viewers, "{stdout}");
        let delivered = field(class, &format!("layer_delivered_pct.{layer}")).as_f64().expect("a number");
        assert!(delivered >= 99.0, "class {cap}: {delivered} % of {layer} delivered:\n{stdout}");
        let rembs = field(class, "rembs_per_s").as_f64().expect("a number");
        assert!(rembs >= 0.5, "class {cap}: {rembs} REMB/s:\n{stdout}");
    }
    // The estimates reflect the caps: near each cap (an estimator probes a little past its link
    // before it measures overuse, as GCC does: 408 kbit/s was seen behind 400), and above the top
    // layer without one.
    let estimate = |c: &Value| field(c, "estimate_kbps").as_f64().expect("a number");
    assert!(estimate(&classes[0]) <= 440.0 && estimate(&classes[1]) <= 1320.0, "{stdout}");
    assert!(estimate(&classes[2]) > 1500.0, "{stdout}");
    assert!(stdout.contains("class 400 kbit/s"), "{stdout}");
}

#[test]
fn help_documents_every_flag_and_preset() {
    let out = Command::new(env!("CARGO_BIN_EXE_dais-load")).arg("--help").output().expect("run dais-load --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--preset",
        "--url",
        "--spawn-server",
        "--server-bin",
        "--server-arg",
        "--server-pid",
        "--room",
        "--speakers",
        "--viewers",
        "--join-rate",
        "--duration",
        "--lifetime",
        "--video-kbps",
        "--fps",
        "--threads",
        "--bind-ip",
        "--token-secret",
        "--fanout",
        "--decrypt-one-in",
        "--transport",
        "--blip",
        "--blip-share",
        "--blip-drop-signaling",
        "--simulcast",
        "--viewer-mix",
        "--json",
        "--quiet",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
    for preset in ["keynote", "roundtable", "churn", "late-join"] {
        assert!(help.contains(&format!("  {preset} ")), "--help does not describe the {preset} preset:\n{help}");
    }
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_dais-load"))
        .args(["--url", "ws://127.0.0.1:9/ws", "--viewers", "1", "--quiet"])
        .output()
        .expect("run dais-load");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("speaker 0 failed: connect_failed"), "{stderr}");
}

#[test]
fn bad_simulcast_and_mix_flags_are_clear_errors() {
    for (args, says) in [
        (&["--viewer-mix", "400:30,0:30"][..], "add up to 60"),
        (&["--viewer-mix", "400:100", "--transport", "tcp"][..], "UDP downlinks"),
        (&["--simulcast", "--decrypt-one-in", "4"][..], "leave out --decrypt-one-in"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dais-load"))
            .args(["--url", "ws://127.0.0.1:9/ws", "--quiet"])
            .args(args)
            .output()
            .expect("run dais-load");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
