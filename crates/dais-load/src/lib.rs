//! dais-load: a load generator that speaks Dais's real protocol to a real server.
//!
//! Synthetic speakers publish a VP8-like and an Opus-like stream whose payloads carry a [`stamp::Stamp`]
//! (stream, sequence number, send time); synthetic viewers join over WebSocket, complete ICE and DTLS with
//! the SFU, decrypt every SRTP packet and measure latency, loss, duplicates, reordering and join times from
//! those stamps. The run loop ([`run`]) ramps viewers, samples the server's and its own CPU and memory from
//! /proc, reads the server's own forwarding-latency histogram from its `/metrics` ([`scrape`]), and builds a
//! [`report::Report`], printed as a table and optionally written as JSON.
//!
//! # Why str0m clients
//! Every participant is a str0m `Rtc` in RTP mode (full ICE agent, DTLS client) on its own UDP socket, run
//! as a task of a single-threaded tokio runtime ([`shard`]). The alternative, the webrtc crate that
//! `dais-client` uses, costs about 410 KB and 11 us per received packet per peer (ADR 0001), which puts 1,000
//! viewers at 200 packets/s (200,000 packets/s) out of reach of one core. A str0m viewer costs a socket,
//! one `Rtc` and a task, and receiving one packet costs its share of a `recvmmsg`, SRTP decryption and
//! str0m's receive bookkeeping. By default no viewer skips decryption: every figure comes from packets that were really
//! decrypted. With `--decrypt-one-in K` only one viewer in K does; the others count SRTP headers against the
//! speakers' send log once they have decrypted their first key frame ([`sendlog`]), and the report says so.
//! The measured cost per viewer, both ways, is in docs/benchmarks.md.
//!
//! # Layout
//! - [`stamp`]: the synthetic payloads and their stamps.
//! - [`peer`]: one str0m session on one socket; [`link`]: a viewer's emulated downlink and its REMB.
//! - [`signal`]: the WebSocket side of docs/protocol.md.
//! - [`speaker`], [`viewer`]: the two participant tasks; [`interact`]: a viewer's reactions and chat.
//! - [`shard`]: threads running participant tasks.
//! - [`stats`], [`report`], [`procfs`], [`scrape`]: measurement and reporting.
//! - [`run`]: the run loop.

pub mod interact;
pub mod link;
pub mod peer;
pub mod procfs;
pub mod report;
pub mod run;
pub mod scrape;
pub mod sendlog;
pub mod shard;
pub mod signal;
pub mod speaker;
pub mod stamp;
pub mod stats;
pub mod viewer;

use std::fmt;
use std::time::Duration;

use dais_proto::Role;

use crate::shard::Target;

/// Why a participant ended early: an error code (the server's `error` code, or one of the generator's own:
/// `connect_failed`, `ws_closed`, `join_failed`, `join_timeout`, `no_media`, `ice_timeout`, `bind_failed`,
/// `bad_sdp`, `unexpected_answer`, `media_failed`, `socket`, `token_mint`, `internal`) and a human-readable
/// detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stable code, counted in the report.
    pub code: String,
    /// What happened.
    pub detail: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: &str, detail: impl fmt::Display) -> Failure {
        Failure { code: code.to_owned(), detail: detail.to_string() }
    }

    /// For `map_err`: wrap any error as a failure with `code`.
    pub fn with<E: fmt::Display>(code: &'static str) -> impl Fn(E) -> Failure {
        move |e| Failure::new(code, format!("{e:#}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The token for `name` in the run's room, if the run mints tokens.
pub(crate) fn token(target: &Target, name: &str, role: Role) -> Result<Option<String>, Failure> {
    let Some(secret) = &target.token_secret else { return Ok(None) };
    let claims = dais_signaling::token::TokenClaims::new(&target.room, name, role, Duration::from_secs(3600));
    dais_signaling::token::mint(secret, &claims).map(Some).map_err(Failure::with("token_mint"))
}
