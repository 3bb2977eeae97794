//! A headless Dais participant for tests, examples and load generation.
//!
//! [`Client`] speaks the signaling protocol of `dais-proto` over a WebSocket and holds one
//! webrtc-rs peer connection (bundled, one UDP socket on 127.0.0.1). A speaker [`Client::publish`]es
//! synthetic Opus-like audio (50 packets/s) and VP8-shaped video (30 fps, keyframes at start,
//! periodically and on PLI/FIR); every payload is self-verifying (see [`media`]), so a receiver
//! checks each packet byte for byte against what its sender must have produced. Server offers are
//! answered automatically; every server message, every received stream's [`StreamStats`] and the
//! sender's counters are visible in a [`Snapshot`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), dais_client::ClientError> {
//! use dais_client::{Client, MediaConfig, Role};
//! use std::time::Duration;
//! let speaker = Client::connect("ws://127.0.0.1:8080/ws").await?;
//! speaker.join("room1", "Ann", Role::Speaker).await?;
//! speaker.publish(MediaConfig::default()).await?;
//! let viewer = Client::connect("ws://127.0.0.1:8080/ws").await?;
//! viewer.join("room1", "Bob", Role::Viewer).await?;
//! viewer.wait_until(Duration::from_secs(20), "media", |s| s.total_packets() > 100).await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
pub mod media;
mod peer;
mod sender;
mod stats;

pub use client::{
    Client, ClientEvent, ClientOptions, CloseInfo, Joined, MediaHandle, ReceivedPacket, Resumed, Snapshot,
};
pub use dais_proto::{ClientMessage, ErrorCode, MediaKind, Role, ServerMessage};
pub use error::ClientError;
pub use peer::{OPUS_PT, VP8_PT};
pub use sender::{next_tag, MediaConfig, SenderStats};
pub use stats::StreamStats;
