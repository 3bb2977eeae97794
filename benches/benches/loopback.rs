//! `loopback`: the real server (`dais`, its media workers on one 127.0.0.1 UDP socket) fanning one
//! speaker's packets out to N real viewers, measured from outside, with one and with two media workers.
//!
//! The viewers are dais-load's str0m sessions (ICE, DTLS, SRTP decryption), each on its own socket, all on
//! one generator thread. Each viewer socket asks the kernel for receive timestamps, so a copy's arrival
//! time is when the server's `sendmmsg` queued it on that socket (loopback delivery happens inside the
//! server's send call), not when the generator got round to it. Per ingress packet the bench reports the
//! time from the speaker's send to the **last** viewer's copy and to the **32nd** copy, with hdrhistogram
//! percentiles. That span is ingress (speaker send, then loopback delivery to the server's socket) ->
//! last egress datagram accepted by the kernel, plus one loopback hop.
//!
//! The speaker sends one 1,000-byte video packet per frame at 30 fps plus 50 Opus packets/s (80 ingress
//! packets/s): at N = 100 the worker is far from saturated and the figures are the cost of fanning out
//! one packet; at N = 1,000 (80,000 egress packets/s) one worker saturates, and queueing shows.
//!
//! `cargo bench -p dais-benches --bench loopback` runs N = 100 and N = 1,000 for 20 s each, each with
//! `--media-workers 1` and `--media-workers 2`. In test mode (`cargo test --bench loopback`, as the test
//! command runs it) it runs N = 10 on two workers for 2 s and checks that every viewer received media, so
//! the bench cannot rot. It builds the `dais` binary of its own profile with
//! cargo first (a no-op when it is up to date), so it never measures a stale server.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use dais_load::report::Report;
use dais_load::run::{run, LoadConfig};

fn dais_bin() -> anyhow::Result<PathBuf> {
    // target/<profile>/deps/loopback-<hash> -> target/<profile>/dais
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(|d| d.parent()).ok_or_else(|| anyhow::anyhow!("odd bench path"))?;
    let dais = profile_dir.join("dais");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "dais-server"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "building dais failed");
    anyhow::ensure!(dais.exists(), "no dais binary at {}", dais.display());
    Ok(dais)
}

fn config(dais: PathBuf, viewers: usize, workers: usize, duration: Duration) -> LoadConfig {
    LoadConfig {
        preset: format!("loopback-{viewers}-w{workers}"),
        url: None,
        spawn_server: true,
        server_bin: Some(dais),
        server_args: vec!["--media-workers".into(), workers.to_string()],
        server_pid: None,
        room: "bench".into(),
        speakers: 1,
        viewers,
        join_rate: 200.0,
        duration,
        lifetime: None,
        // 1,000-byte frames: one packet per frame.
        video_bitrate: 240_000,
        fps: 30,
        threads: 1,
        bind_ip: [127, 0, 0, 1].into(),
        token_secret: None,
        progress: false,
        fanout: true,
        decrypt_one_in: 1,
        transport: dais_load::shard::Transport::Udp,
        blip: None,
        simulcast: false,
        viewer_mix: None,
        interaction: None,
    }
}

fn print(r: &Report, workers: usize) {
    let Some(f) = &r.fanout_us else { return };
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "loopback/{:<5} workers {workers}  viewers {:>5} joined  delivered {:>8.3} %  send->last viewer p50 {:>7.3} ms p99 {:>7.3} ms p99.9 {:>7.3} ms  send->32nd viewer p50 {:>6.3} ms p99 {:>6.3} ms  ({} packets)  server CPU {}  in-process ingress->last egress {}",
        r.scenario.viewers,
        r.viewers.joined,
        r.delivery.delivered_pct,
        ms(f.last_viewer.p50),
        ms(f.last_viewer.p99),
        ms(f.last_viewer.p999),
        ms(f.first_32_viewers.p50),
        ms(f.first_32_viewers.p99),
        f.last_viewer.samples,
        r.server.as_ref().map(|s| format!("{:.0} %", s.cpu_pct_steady)).unwrap_or_else(|| "-".into()),
        r.server_forward_us.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
    );
}

fn main() -> ExitCode {
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loopback: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dais = match dais_bin() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("loopback: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cases: &[(usize, usize, u64)] =
        if bench { &[(100, 1, 20), (100, 2, 20), (1000, 1, 20), (1000, 2, 20)] } else { &[(10, 2, 2)] };
    for &(viewers, workers, secs) in cases {
        let report = match rt.block_on(run(config(dais.clone(), viewers, workers, Duration::from_secs(secs)))) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("loopback/{viewers}: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        print(&report, workers);
        if !bench {
            // Test mode: the bench must still measure something real.
            let fanout_packets = report.fanout_us.as_ref().map_or(0, |f| f.last_viewer.samples);
            if report.viewers.joined != viewers || fanout_packets == 0 {
                eprintln!(
                    "loopback/{viewers}: {} of {viewers} viewers joined, {fanout_packets} packets reached all of them",
                    report.viewers.joined
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
