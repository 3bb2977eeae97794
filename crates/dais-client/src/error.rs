//! The one error type of the client.
//!
//! A test client has few operations and they fail in the same few ways (socket, server refusal,
//! WebRTC stack, timeout), so one `#[non_exhaustive]` enum serves them all. Server refusals keep
//! the stable [`ErrorCode`] so tests match on it.

use dais_proto::ErrorCode;
use std::time::Duration;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The WebSocket could not be opened or written.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The socket is closed (by the server or by `leave`).
    #[error("the signaling socket is closed")]
    Closed,
    /// The server answered with an `error` message.
    #[error("server refused with {code}: {message}")]
    Server {
        /// Stable error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// Nothing matched within the time allowed.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The call does not fit the client's state (e.g. publishing twice, or before `join`).
    #[error("invalid use: {0}")]
    InvalidState(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}
