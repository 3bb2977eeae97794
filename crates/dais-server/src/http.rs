//! The HTTP listener: an accept loop with connection caps and a header-read timeout, serving the axum
//! app over hyper's HTTP/1.1 (with upgrades, for `/ws`).
//!
//! A connection counts from accept until its socket closes, an upgraded WebSocket included (the
//! count rides in the socket object, so it drops only when hyper or the WebSocket drops the
//! stream). Beyond [`Limits::per_ip`] connections from one address, a new one is closed at once
//! (counted). Beyond [`Limits::total`], up to [`PROBE_LANE`] more are served only `/healthz` and
//! `/readyz` (everything else gets 503), so an orchestrator still sees the process alive while it is
//! full. A client that has not sent a whole request head within [`Limits::header_timeout`] is closed
//! (hyper's header-read timeout, which needs the timer this module gives it); one whose request
//! (body and answer) takes longer than [`Limits::request_timeout`] gets 408. A connection that ends
//! lingers for at most [`LINGER`], so that its last bytes reach the client instead of a reset.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;
use tracing::{debug, warn};

/// Connections beyond [`Limits::total`] that are still served the health probes.
pub const PROBE_LANE: usize = 64;
/// An address that already holds this many connections gets no place in the probe lane (whoever
/// filled the listener cannot fill the lane too).
pub const PROBE_LANE_PER_IP: usize = 4;

/// The most a connection buffers of a request head (hyper's default is about 400 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How many connections the listener holds, and how long a request head may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections (WebSockets included), all addresses together.
    pub total: usize,
    /// Open connections from one IP address. Behind a proxy every client shares its address: raise it.
    pub per_ip: usize,
    /// Longest wait for a whole request head.
    pub header_timeout: Duration,
    /// Longest a request may take after its head, its body and the answer included (not the life of
    /// an upgraded WebSocket, which begins after the answer).
    pub request_timeout: Duration,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Open connections now.
    pub open: AtomicU64,
    /// Connections closed at accept: their address held `per_ip` already.
    pub refused_per_ip: AtomicU64,
    /// Connections closed at accept: `total` and the probe lane were full.
    pub refused_full: AtomicU64,
    /// Connections served the probe lane only (`total` was reached).
    pub probe_lane: AtomicU64,
}

/// Who holds how many connections.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One connection's place in [`Counts`]; released on drop.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    stats: Arc<HttpStats>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where an accepted connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Serve,
    ProbesOnly,
    /// Its address holds `per_ip` already.
    RefusePerIp,
    /// The listener and the probe lane are full (or its address holds too many for the lane).
    RefuseFull,
}

/// Take a place for a connection from `ip`, or say why there is none. Sans-IO: unit-tested below.
fn admit(counts: &mut Counts, limits: &Limits, ip: IpAddr) -> Admit {
    let from_ip = counts.by_ip.get(&ip).copied().unwrap_or(0);
    if from_ip >= limits.per_ip {
        return Admit::RefusePerIp;
    }
    let how = if counts.total < limits.total {
        Admit::Serve
    } else if counts.total < limits.total + PROBE_LANE && from_ip < PROBE_LANE_PER_IP {
        Admit::ProbesOnly
    } else {
        return Admit::RefuseFull;
    };
    counts.total += 1;
    *counts.by_ip.entry(ip).or_default() += 1;
    how
}

/// How long a closed connection keeps reading what its client still sends (nginx's lingering close):
/// closing a socket with unread bytes makes the kernel answer with a reset, which can destroy the
/// last response (a WebSocket's 1009 after an oversized frame) before the client reads it.
pub const LINGER: Duration = Duration::from_secs(2);

/// A TCP stream that holds its connection's [`Slot`] until it is dropped, and then lingers.
struct Counted {
    stream: Option<TcpStream>,
    slot: Option<Slot>,
}

impl Counted {
    fn stream(&mut self) -> Pin<&mut TcpStream> {
        // Only `Drop` takes the stream out.
        Pin::new(self.stream.as_mut().expect("the stream is taken only on drop"))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let (Some(stream), Some(slot)) = (self.stream.take(), self.slot.take()) else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(stream, slot));
        }
    }
}

/// Send FIN after whatever was written, then read and discard until the client closes too, at most
/// [`LINGER`]; the connection's slot (its file descriptor) is held until then.
async fn linger(mut stream: TcpStream, slot: Slot) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    drop(slot);
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting, let each connection end
/// its current request, and return once every one that is not an upgraded WebSocket has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<HttpStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a little rather than spin.
                    warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let how = {
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            admit(&mut c, &limits, peer.ip())
        };
        match how {
            Admit::RefusePerIp | Admit::RefuseFull => {
                let counter = if how == Admit::RefusePerIp { &stats.refused_per_ip } else { &stats.refused_full };
                counter.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, ?how, "HTTP connection refused: limit reached");
                drop(stream);
                continue;
            }
            Admit::ProbesOnly => {
                stats.probe_lane.fetch_add(1, Ordering::Relaxed);
            }
            Admit::Serve => {}
        }
        stats.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot { counts: counts.clone(), stats: stats.clone(), ip: peer.ip() };
        let io = TokioIo::new(Counted { stream: Some(stream), slot: Some(slot) });
        conns.spawn(connection(io, app.clone(), how == Admit::ProbesOnly, limits, peer, stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// One HTTP/1.1 connection: the app, or with `probes_only` just the health probes.
async fn connection(
    io: TokioIo<Counted>,
    app: Router,
    probes_only: bool,
    limits: Limits,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let mut app = app.clone();
        async move {
            let mut req = req.map(Body::new);
            // Handlers that count per client (WHIP and WHEP sessions) read the peer from here.
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            if probes_only && !matches!(req.uri().path(), "/healthz" | "/readyz") {
                let busy = axum::http::Response::builder()
                    .status(503)
                    .header("retry-after", "5")
                    .body(Body::from("busy: too many connections\n"))
                    .unwrap_or_default();
                return Ok::<_, std::convert::Infallible>(busy);
            }
            match tokio::time::timeout(limits.request_timeout, app.call(req)).await {
                Ok(answer) => answer,
                Err(_) => {
                    let late = axum::http::Response::builder()
                        .status(408)
                        .header("connection", "close")
                        .body(Body::from("request timeout\n"))
                        .unwrap_or_default();
                    Ok(late)
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(!probes_only);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        }
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        total: 4,
        per_ip: 2,
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn one_address_cannot_take_every_connection() {
        let mut c = Counts::default();
        assert_eq!(admit(&mut c, &LIMITS, ip(1)), Admit::Serve);
        assert_eq!(admit(&mut c, &LIMITS, ip(1)), Admit::Serve);
        assert_eq!(admit(&mut c, &LIMITS, ip(1)), Admit::RefusePerIp, "per address");
        assert_eq!(admit(&mut c, &LIMITS, ip(2)), Admit::Serve, "another address still gets in");
    }

    #[test]
    fn past_the_total_only_probes_are_served_then_nothing() {
        let mut c = Counts::default();
        for i in 0..4 {
            assert_eq!(admit(&mut c, &LIMITS, ip(i)), Admit::Serve);
        }
        assert_eq!(admit(&mut c, &LIMITS, ip(0)), Admit::ProbesOnly, "an address with 1 still gets a probe");
        for i in 1..PROBE_LANE {
            assert_eq!(
                admit(&mut c, &LIMITS, IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8])),
                Admit::ProbesOnly
            );
        }
        assert_eq!(admit(&mut c, &LIMITS, ip(200)), Admit::RefuseFull, "the probe lane is full too");
        assert_eq!(c.total, 4 + PROBE_LANE);
    }

    #[test]
    fn the_address_that_filled_the_listener_gets_no_probe_lane() {
        let limits = Limits { total: 10, per_ip: 100, ..LIMITS };
        let mut c = Counts::default();
        let attacker = IpAddr::from([10, 9, 9, 9]);
        for _ in 0..10 {
            assert_eq!(admit(&mut c, &limits, attacker), Admit::Serve);
        }
        assert_eq!(admit(&mut c, &limits, attacker), Admit::RefuseFull, "no lane for the one holding 10");
        assert_eq!(admit(&mut c, &limits, IpAddr::from([10, 0, 0, 1])), Admit::ProbesOnly, "a prober gets one");
    }
}
