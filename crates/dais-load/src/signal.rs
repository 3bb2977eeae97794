//! The signaling side of one synthetic participant: a WebSocket that speaks docs/protocol.md.
//!
//! The socket lives in a task of its own ([`Signal::spawn`]) and talks to the participant over channels, so
//! the participant's media loop, which wakes for every packet, never polls the WebSocket: each poll of a
//! tungstenite stream that finds nothing to read still prepares its read buffer, and doing that per media
//! packet cost a third of the generator's CPU. The read buffer is 8 KiB rather than tungstenite's 128 KiB.
//! Messages a load participant never acts on (another viewer joined or left, mute changes) are recognised by
//! their `type` prefix and skipped without a full JSON parse: in a room of N viewers every join is announced
//! to everyone, so a run of N joins delivers N² of them to the generator. WebSocket pings are answered by
//! tungstenite while reading.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use dais_proto::{ClientMessage, Role, ServerMessage, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Failure;

/// How long a WebSocket connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Server message types that no load participant acts on.
const IGNORED: [&str; 4] = [
    r#"{"type":"participant_joined""#,
    r#"{"type":"participant_left""#,
    r#"{"type":"mute_changed""#,
    r#"{"type":"pong""#,
];

/// A connected signaling socket.
#[derive(Debug)]
pub struct Signal {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What [`Signal::next`] yields.
#[derive(Debug)]
pub enum Incoming {
    /// A message the participant may act on.
    Message(ServerMessage),
    /// The server closed the socket (or it broke); the close code if there was one.
    Closed(Option<u16>),
}

impl Incoming {
    /// The message to act on, or how the participant ends: a server `error` fails it with the server's
    /// code, a closed socket with `ws_closed`.
    pub fn into_message(self) -> Result<ServerMessage, Failure> {
        match self {
            Incoming::Message(ServerMessage::Error { code, message, .. }) => Err(Failure::new(code.as_str(), message)),
            Incoming::Message(m) => Ok(m),
            Incoming::Closed(code) => Err(Failure::new("ws_closed", format!("close code {code:?}"))),
        }
    }
}

impl Signal {
    /// Open the WebSocket at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Signal> {
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
        let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow!("WebSocket connect to {url} timed out"))?
            .with_context(|| format!("WebSocket connect to {url}"))?;
        Ok(Signal { ws })
    }

    /// Send one message.
    pub async fn send(&mut self, msg: &ClientMessage) -> anyhow::Result<()> {
        self.ws.send(Message::text(msg.to_json())).await.context("WebSocket send")
    }

    /// Send `join`.
    pub async fn join(&mut self, room: &str, name: &str, role: Role, token: Option<String>) -> anyhow::Result<()> {
        let join = ClientMessage::Join {
            room: room.into(),
            name: name.into(),
            role,
            version: PROTOCOL_VERSION,
            token,
            moderator: false,
        };
        self.send(&join).await
    }

    /// Move the socket into a local task (the caller runs inside a `LocalSet`) and talk to it over
    /// channels. The task ends, closing the socket, after a [`ClientMessage::Leave`] or when the handle is
    /// dropped.
    pub fn spawn(mut self) -> SignalHandle {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientMessage>();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let task = tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    msg = out_rx.recv() => match msg {
                        Some(ClientMessage::Leave) | None => {
                            self.leave().await;
                            return;
                        }
                        Some(m) => {
                            if let Err(e) = self.send(&m).await {
                                let _ = in_tx.send(Err(e));
                                return;
                            }
                        }
                    },
                    incoming = self.next() => {
                        let closed = !matches!(incoming, Ok(Incoming::Message(_)));
                        if in_tx.send(incoming).is_err() || closed {
                            return;
                        }
                    }
                }
            }
        });
        SignalHandle { tx: out_tx, rx: in_rx, task }
    }

    /// The next message worth acting on. Cancel-safe: it can lose the race in a `select!` without losing a
    /// message.
    pub async fn next(&mut self) -> anyhow::Result<Incoming> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Ok(Incoming::Closed(None));
            };
            match frame {
                Ok(Message::Text(text)) => {
                    if IGNORED.iter().any(|p| text.starts_with(p)) {
                        continue;
                    }
                    match serde_json::from_str::<ServerMessage>(&text) {
                        Ok(m) => return Ok(Incoming::Message(m)),
                        // A newer server's message type: ignore it, as the protocol asks.
                        Err(_) => continue,
                    }
                }
                Ok(Message::Close(frame)) => return Ok(Incoming::Closed(frame.map(|f| u16::from(f.code)))),
                Ok(_) => continue,
                Err(e) => bail!("WebSocket: {e}"),
            }
        }
    }

    /// Say `leave` and close, ignoring a peer that is already gone.
    pub async fn leave(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.send(&ClientMessage::Leave).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }
}

/// A participant's end of a spawned [`Signal`].
#[derive(Debug)]
pub struct SignalHandle {
    tx: mpsc::UnboundedSender<ClientMessage>,
    rx: mpsc::UnboundedReceiver<anyhow::Result<Incoming>>,
    task: tokio::task::JoinHandle<()>,
}

impl SignalHandle {
    /// Queue a message for the socket; an error if the socket task has ended.
    pub fn send(&self, msg: ClientMessage) -> anyhow::Result<()> {
        self.tx.send(msg).map_err(|_| anyhow!("the WebSocket is closed"))
    }

    /// The next message worth acting on (cancel-safe); [`Incoming::Closed`] once the socket has ended.
    pub async fn next(&mut self) -> anyhow::Result<Incoming> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Ok(Incoming::Closed(None)),
        }
    }

    /// Lose the socket as a network outage would: no `leave`, no close frame.
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Say `leave`, close the socket and wait (at most 2 s) until it is closed.
    pub async fn leave(mut self) {
        if self.tx.send(ClientMessage::Leave).is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), async { while self.rx.recv().await.is_some() {} }).await;
        }
    }
}
