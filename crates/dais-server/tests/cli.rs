//! The `dais` binary as an operator meets it: `--help`, the ready line, the embedded pages, bind
//! errors, and a clean exit on Ctrl-C / SIGTERM that closes WebSockets with 1001.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn dais() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dais"))
}

struct Running {
    child: Child,
    http: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Running {
    let mut child = dais()
        .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dais");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    let http = line
        .trim()
        .strip_prefix("dais ready http=")
        .and_then(|r| r.split_once(' '))
        .and_then(|(h, _)| h.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    std::thread::spawn(move || for _ in out.lines() {});
    Running { child, http }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    common::http_full(addr, "GET", path, None, None)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args(["-s", sig, &child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill -s {sig} failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(start.elapsed() < within, "dais did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn help_explains_every_flag() {
    let out = dais().arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--http-addr", "--media-addr", "--public-ip", "--media-workers", "--max-participants", "--log"] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    assert!(text.contains("127.0.0.1:8080"), "--help shows the HTTP default");
}

#[test]
fn pages_and_modules_are_served() {
    let srv = start(&[]);
    for (path, ctype, needle) in [
        ("/", "text/html", "index.js"),
        ("/speak?room=r&name=n", "text/html", "speak.js"),
        ("/watch?room=r", "text/html", "watch.js"),
        ("/assets/dais.js", "text/javascript", "export class DaisClient"),
        ("/assets/style.css", "text/css", "{"),
    ] {
        let (status, ct, body) = get(srv.http, path);
        assert_eq!(status, 200, "{path}");
        assert!(ct.starts_with(ctype), "{path}: content-type {ct}");
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
    assert_eq!(get(srv.http, "/assets/../Cargo.toml").0, 404);
    assert_eq!(get(srv.http, "/assets/secret.txt").0, 404);
}

/// The runtime's threads (signaling, HTTP) run at nice 5 and the media workers at the process's own
/// nice, so that a full CPU runs media first (docs/architecture.md, *Priorities*).
#[test]
fn media_workers_keep_the_priority_the_runtime_threads_give_up() {
    let srv = start(&["--media-workers", "2"]);
    // Each thread names itself once it runs, which can be just after the ready line: read again
    // until the three media threads have their names (at most 5 s).
    let threads = || -> Vec<(String, i64)> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", srv.child.id())).expect("/proc");
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
            .filter_map(|stat| {
                let (open, close) = (stat.find('(')?, stat.rfind(')')?);
                // Field 19 is the nice value; the fields after the name start at field 3.
                let nice = stat[close + 1..].split_whitespace().nth(19 - 3)?.parse().ok()?;
                Some((stat[open + 1..close].to_owned(), nice))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut by_name = threads();
    while by_name.iter().filter(|(n, _)| n.starts_with("dais-media")).count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        by_name = threads();
    }
    let nice_of =
        |prefix: &str| -> Vec<i64> { by_name.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, v)| *v).collect() };
    let (main, media, runtime) = (nice_of("dais"), nice_of("dais-media"), nice_of("tokio-rt"));
    assert_eq!(media.len(), 3, "two workers and the TCP thread: {by_name:?}");
    assert!(!runtime.is_empty(), "{by_name:?}");
    let own = main.iter().copied().min().expect("the main thread");
    assert!(media.iter().all(|&n| n == own), "media threads at the process's nice {own}: {by_name:?}");
    assert!(runtime.iter().all(|&n| n == (own + 5).min(19)), "runtime threads 5 lower: {by_name:?}");
}

#[test]
fn a_busy_media_port_is_a_clear_error() {
    let busy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = dais().args(["--http-addr", "127.0.0.1:0", "--media-addr", &addr]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind UDP") && err.contains(&addr), "stderr: {err}");
}

#[tokio::test]
async fn sigint_and_sigterm_close_sockets_and_exit_zero() {
    for sig in ["INT", "TERM"] {
        let mut srv = start(&[]);
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.http)).await.expect("websocket connects");
        signal(&srv.child, sig);
        let frame = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("close frame within 10 s");
        assert_eq!(frame, Some(1001), "SIG{sig}: going-away close");
        let status = wait_exit(&mut srv.child, Duration::from_secs(10));
        assert!(status.success(), "SIG{sig}: exit status {status:?}");
    }
}
