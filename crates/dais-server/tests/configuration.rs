//! Configuration as an operator meets it, against the real binary: precedence of flags over `DAIS_*`
//! variables over the `--config` file, one clear error naming a bad key, `check-config` with secrets
//! redacted, the example config, JSON logs, and the open-development-mode warning.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Server, REPLY_TIMEOUT};
use dais_client::{Client, ClientError, ErrorCode, Role};

const SECRET: &str = "secret-for-tests-0123456789abcdef";

fn dais() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dais"));
    // Keep the caller's environment from leaking into what these tests assert.
    for var in ["DAIS_CONFIG", "DAIS_LOG", "DAIS_LOG_FORMAT", "DAIS_TOKEN_SECRET", "DAIS_ADMIN_KEY", "RUST_LOG"] {
        c.env_remove(var);
    }
    c
}

/// A fresh temp file with `text`.
fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dais-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run dais");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dais.example.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_takes_flags_over_env_over_file() {
    // The file's HTTP address cannot be bound here (TEST-NET-1), so the server only starts if the
    // environment's address wins; the file, the env and a flag each set the room limit.
    let file = temp_config(
        "precedence.toml",
        "[http]\naddr = \"192.0.2.1:80\"\n[media]\naddr = \"127.0.0.1:0\"\n[rooms]\nmax_participants = 1\n",
    );
    let file = file.to_str().expect("utf-8 path");
    let server = Server::spawn(
        &["--config", file, "--max-participants", "2"],
        &[("DAIS_HTTP_ADDR", "127.0.0.1:0"), ("DAIS_MAX_PARTICIPANTS", "3")],
    );
    assert!(server.http.ip().is_loopback(), "env http.addr beats the file's");
    let mut joined = Vec::new();
    for i in 0..2 {
        let c = Client::connect(&server.ws_url()).await.expect("connect");
        c.join("prec", &format!("v{i}"), Role::Viewer).await.expect("joins within the flag's limit of 2");
        joined.push(c);
    }
    let third = Client::connect(&server.ws_url()).await.expect("connect");
    match third.join("prec", "v2", Role::Viewer).await {
        Err(ClientError::Server { code: ErrorCode::RoomFull, .. }) => {}
        other => panic!("the flag (2) beats env (3) and file (1); the third join got {other:?}"),
    }

    // The same layering as check-config reports it, for every kind of key.
    let (out, stdout, stderr) = run(dais()
        .args(["--config", file, "--max-participants", "2", "--log-format", "json", "check-config"])
        .env("DAIS_HTTP_ADDR", "127.0.0.1:9999")
        .env("DAIS_MAX_PARTICIPANTS", "3")
        .env("DAIS_DRAIN_TIMEOUT", "7")
        .env("DAIS_LOG_FORMAT", "text"));
    assert!(out.status.success(), "{stderr}");
    for line in [
        "addr = \"127.0.0.1:9999\"",
        "addr = \"127.0.0.1:0\"",
        "max_participants = 2",
        "timeout_secs = 7",
        "format = \"json\"",
        "level = \"info\"",
    ] {
        assert!(stdout.contains(line), "check-config lacks {line:?}:\n{stdout}");
    }
}

#[test]
fn a_bad_key_is_one_clear_error_and_a_nonzero_exit() {
    let bad = temp_config("bad-key.toml", "[rooms]\nmax_participant = 10\n");
    for args in
        [vec!["--config", bad.to_str().expect("utf-8")], vec!["check-config", "--config", bad.to_str().expect("utf-8")]]
    {
        let (out, stdout, stderr) = run(dais().args(&args));
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
        assert!(stderr.contains("unknown key `rooms.max_participant`") && stderr.contains("line 2"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }

    let wrong_type = temp_config("wrong-type.toml", "[drain]\ntimeout_secs = \"soon\"\n");
    let (out, _, stderr) = run(dais().args(["check-config", "--config", wrong_type.to_str().expect("utf-8")]));
    assert!(!out.status.success());
    assert!(stderr.contains("`drain.timeout_secs`"), "{stderr}");

    let (out, _, stderr) = run(dais().arg("check-config").env("DAIS_MEDIA_ADDR", "not-an-address"));
    assert!(!out.status.success());
    assert!(stderr.contains("DAIS_MEDIA_ADDR") && stderr.contains("`media.addr`"), "{stderr}");

    let (out, _, stderr) = run(dais().arg("check-config").env("DAIS_TOKEN_SECRET", "short"));
    assert!(!out.status.success());
    assert!(stderr.contains("`auth.token_secret`") && !stderr.contains("short\""), "{stderr}");

    let (out, _, stderr) = run(dais().args(["--http-addr", "nowhere", "check-config"]));
    assert!(!out.status.success());
    assert!(stderr.contains("--http-addr"), "{stderr}");

    let (out, _, stderr) = run(dais().args(["check-config", "--config", "/nonexistent/dais.toml"]));
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/dais.toml"), "{stderr}");
}

#[test]
fn check_config_redacts_secrets_and_prints_a_valid_config() {
    let file = temp_config("secrets.toml", &format!("[auth]\ntoken_secret = \"{SECRET}\"\n"));
    let (out, stdout, stderr) = run(dais()
        .args(["check-config", "--config", file.to_str().expect("utf-8")])
        .env("DAIS_ADMIN_KEY", "admin-key-from-env"));
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(SECRET) && !stdout.contains("admin-key-from-env"), "{stdout}");
    assert!(stdout.contains("token_secret = \"<redacted>\""), "{stdout}");
    assert!(stdout.contains("admin_key = \"<redacted>\""), "{stdout}");
    assert!(!stderr.contains(SECRET), "{stderr}");

    // The printed configuration is itself a config file (put real secrets back in).
    let printed = temp_config("printed.toml", &stdout.replace("<redacted>", SECRET));
    let (out, again, stderr) = run(dais().args(["check-config", "--config", printed.to_str().expect("utf-8")]));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(again, stdout);
}

#[test]
fn the_example_config_passes_check_config_and_documents_every_key() {
    let example = example_path();
    let (out, stdout, stderr) = run(dais().args(["check-config", "--config", example.to_str().expect("utf-8")]));
    assert!(out.status.success(), "deploy/dais.example.toml fails check-config: {stderr}");
    // It documents the defaults: the same effective config as no file at all.
    let (_, defaults, _) = run(dais().arg("check-config"));
    assert_eq!(stdout, defaults, "the example's values are the defaults");

    // Every key check-config can print (secrets included) appears in the example.
    let (_, all, _) =
        run(dais().arg("check-config").env("DAIS_TOKEN_SECRET", SECRET).env("DAIS_ADMIN_KEY", "admin-key"));
    let text = std::fs::read_to_string(&example).expect("read example");
    let mut section = String::new();
    for line in all.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            assert!(text.contains(line), "the example lacks section {line}");
        } else if let Some((key, _)) = line.split_once(" = ") {
            let documented = text.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = ")));
            assert!(documented, "the example does not document {section}.{key}");
        }
    }
}

#[test]
fn json_logs_and_the_open_mode_warning() {
    let mut child = dais()
        .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dais");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(v);
        if seen.iter().any(|v| v["fields"]["message"] == "dais started") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warn = seen
        .iter()
        .find(|v| {
            v["level"] == "WARN" && v["fields"]["message"].as_str().is_some_and(|m| m.contains("open development"))
        })
        .unwrap_or_else(|| panic!("no open-development-mode warning in {seen:#?}"));
    assert!(warn["timestamp"].is_string());
    assert!(seen.iter().any(|v| v["fields"]["message"] == "dais started"), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_there_is_no_open_mode_warning_and_no_secret_in_logs() {
    let mut child = dais()
        .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0", "--log", "info"])
        .env("DAIS_TOKEN_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dais");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut ready = String::new();
    out.read_line(&mut ready).expect("ready line");
    let http = common::parse_ready(&ready).expect("ready line").0;
    // A join with a token, refused or not, must not put the token or the secret into the log.
    let c = Client::connect(&format!("ws://{http}/ws")).await.expect("connect");
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJyb29tIjoiciJ9.c2lnbmF0dXJl";
    let _ = c.join_with_token("r", "n", Role::Speaker, Some(token)).await;
    c.ping(1, REPLY_TIMEOUT).await.expect("pong");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut log).expect("read log");
    assert!(!log.contains("open development"), "{log}");
    assert!(log.contains("join token refused"), "{log}");
    assert!(!log.contains(SECRET) && !log.contains(token), "{log}");
}
