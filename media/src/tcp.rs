//! ICE over TCP (RFC 6544 passive candidates, RFC 4571 framing): the TCP media listener and its
//! connections, on one thread of their own (`dais-media-tcp`), one task per connection.
//!
//! A TCP connection carries one ICE candidate pair, so it is a source address like any other:
//! - **Ingress.** Each whole frame goes to worker 0's media queue as a datagram from
//!   `Addr { Tcp, peer }`, and the endpoint demultiplexes it like a UDP one (a STUN check that names a
//!   session's ufrag and verifies with its password latches the address; anything else from an unknown
//!   address is dropped). A full media queue drops the frame and counts it, as for UDP.
//! - **Egress.** Any worker writes a session's TCP transmit into that connection's outgoing queue
//!   (found by peer address in [`TcpConns`]), which holds at most [`SEND_QUEUE`] packets: a viewer whose
//!   TCP window is full loses its own packets (`tcp_send_queue_full`), and no worker ever waits on a
//!   socket.
//! - **Limits.** At most [`MAX_CONNECTIONS`] connections at once (further ones are closed at once). A
//!   connection must send a STUN binding request first, within [`FIRST_FRAME_TIMEOUT`]; a first frame
//!   that is not STUN, a framing error (see `framing`) or a silent start closes the connection, each
//!   counted by reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::endpoint::{Addr, Transport};
use crate::framing::{self, Deframer};
use crate::queues::Media;
use crate::MediaStats;

/// Most TCP media connections open at once.
pub(crate) const MAX_CONNECTIONS: usize = 4096;

/// Packets waiting to be written on one connection; more are dropped.
pub(crate) const SEND_QUEUE: usize = 256;

/// How long a new connection may take to send its first frame (a STUN binding request).
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a connection at once.
const READ_CHUNK: usize = 16 * 1024;

/// Why a TCP connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// A length above the frame limit.
    Framing,
    /// The first frame was not a STUN message.
    NotStun,
    /// Nothing arrived within [`FIRST_FRAME_TIMEOUT`].
    Silent,
    /// [`MAX_CONNECTIONS`] were open.
    Limit,
}

/// The outgoing queues of the open connections, by peer address; shared by every worker.
#[derive(Debug, Default)]
pub(crate) struct TcpConns {
    table: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

impl TcpConns {
    fn table(&self) -> MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `packet` for the connection to `peer`; false (and counted) when there is none or its
    /// queue is full.
    pub fn send(&self, peer: SocketAddr, packet: &[u8], stats: &MediaStats) -> bool {
        let Some(tx) = self.table().get(&peer).cloned() else {
            stats.tcp_send_drops.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let Some(framed) = framing::frame(packet) else { return false };
        if tx.try_send(framed).is_err() {
            stats.tcp_send_drops.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
        stats.bytes_out.fetch_add(packet.len() as u64, Ordering::Relaxed);
        true
    }

    fn open(&self, peer: SocketAddr) -> Option<mpsc::Receiver<Vec<u8>>> {
        let mut table = self.table();
        if table.len() >= MAX_CONNECTIONS {
            return None;
        }
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        table.insert(peer, tx);
        Some(rx)
    }

    fn close(&self, peer: SocketAddr) {
        self.table().remove(&peer);
    }
}

/// The running TCP side: stop it by dropping or calling [`TcpServer::stop`].
#[derive(Debug)]
pub(crate) struct TcpServer {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Serve `listener` on a thread of its own; frames go to `to_worker0`.
    pub fn start(
        listener: std::net::TcpListener,
        conns: Arc<TcpConns>,
        to_worker0: mpsc::Sender<Media>,
        stats: Arc<MediaStats>,
    ) -> std::io::Result<TcpServer> {
        listener.set_nonblocking(true)?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new().name("dais-media-tcp".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return warn!("TCP media runtime failed to start: {e}"),
            };
            rt.block_on(accept(listener, conns, to_worker0, stats, stopped));
        })?;
        Ok(TcpServer { stop, thread: Some(thread) })
    }

    /// Close every connection and wait for the thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(
    listener: std::net::TcpListener,
    conns: Arc<TcpConns>,
    to_worker0: mpsc::Sender<Media>,
    stats: Arc<MediaStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return warn!("TCP media listener could not be registered: {e}"),
    };
    info!(addr = ?listener.local_addr().ok(), "TCP media listener started");
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let conn = Conn { peer, conns: conns.clone(), to_worker0: to_worker0.clone(), stats: stats.clone() };
                    tokio::spawn(conn.serve(stream, stopped.clone()));
                }
                Err(e) => debug!("TCP accept failed: {e}"),
            },
        }
    }
    info!("TCP media listener stopped");
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    conns: Arc<TcpConns>,
    to_worker0: mpsc::Sender<Media>,
    stats: Arc<MediaStats>,
}

impl Conn {
    async fn serve(self, stream: TcpStream, mut stopped: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else { return };
        let Some(mut outgoing) = self.conns.open(self.peer) else {
            self.count(Closed::Limit);
            return;
        };
        self.stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            while let Some(framed) = outgoing.recv().await {
                if write.write_all(&framed).await.is_err() {
                    break;
                }
            }
        });
        let closed = tokio::select! {
            c = self.read(&mut read, local) => c,
            _ = stopped.changed() => None,
        };
        if let Some(reason) = closed {
            self.count(reason);
        }
        self.conns.close(self.peer);
        writer.abort();
        self.stats.tcp_connections.fetch_sub(1, Ordering::Relaxed);
        debug!(peer = %self.peer, ?closed, "TCP media connection closed");
    }

    /// Read frames until the peer closes (`None`) or breaks a rule.
    async fn read(&self, read: &mut (impl AsyncRead + Unpin), local: SocketAddr) -> Option<Closed> {
        let mut deframer = Deframer::default();
        let mut buf = vec![0u8; READ_CHUNK];
        let deadline = tokio::time::Instant::now() + FIRST_FRAME_TIMEOUT;
        let mut first = true;
        loop {
            let n = if first {
                match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                    Ok(r) => r.ok()?,
                    Err(_) => return Some(Closed::Silent),
                }
            } else {
                read.read(&mut buf).await.ok()?
            };
            if n == 0 {
                return None;
            }
            deframer.push(&buf[..n]);
            while let Some(packet) = deframer.next_packet() {
                let packet = match packet {
                    Ok(p) => p,
                    Err(_) => return Some(Closed::Framing),
                };
                if first && !matches!(packet.first(), Some(0..=3)) {
                    return Some(Closed::NotStun);
                }
                first = false;
                self.deliver(local, packet);
            }
        }
    }

    /// Hand one frame to worker 0, as a datagram from this connection's address.
    fn deliver(&self, local: SocketAddr, data: Vec<u8>) {
        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        let from = Addr { transport: Transport::Tcp, addr: self.peer };
        let m = Media::Received { from, to: local, data, at: Instant::now() };
        if self.to_worker0.try_send(m).is_err() {
            self.stats.backlog_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self, reason: Closed) {
        let counter = match reason {
            Closed::Framing => &self.stats.tcp_closed_framing,
            Closed::NotStun => &self.stats.tcp_closed_not_stun,
            Closed::Silent => &self.stats.tcp_closed_silent,
            Closed::Limit => &self.stats.tcp_refused_limit,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(queue: usize) -> (Conn, mpsc::Receiver<Media>, Arc<MediaStats>) {
        let (tx, rx) = mpsc::channel(queue);
        let stats = Arc::new(MediaStats::default());
        let peer = SocketAddr::from(([192, 0, 2, 9], 50_000));
        (Conn { peer, conns: Arc::default(), to_worker0: tx, stats: stats.clone() }, rx, stats)
    }

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7881))
    }

    const STUN: &[u8] = &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        packets.iter().flat_map(|p| framing::frame(p).expect("fits")).collect()
    }

    #[tokio::test]
    async fn frames_go_to_worker_0_as_datagrams_of_the_connection() {
        let (c, mut rx, stats) = conn(8);
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let bytes = framed(&[STUN, &rtp]);
        let mut reader = &bytes[..];
        assert_eq!(c.read(&mut reader, local()).await, None, "the peer closed");
        for want in [STUN, &rtp[..]] {
            let Some(Media::Received { from, to, data, .. }) = rx.recv().await else { panic!("a frame") };
            assert_eq!((from, to, &data[..]), (Addr { transport: Transport::Tcp, addr: c.peer }, local(), want));
        }
        assert_eq!(MediaStats::get(&stats.datagrams_in), 2);
    }

    #[tokio::test]
    async fn a_first_frame_that_is_not_stun_closes_the_connection() {
        let (c, mut rx, _) = conn(8);
        let bytes = framed(&[&[0x80, 96, 0, 1], STUN]);
        assert_eq!(c.read(&mut &bytes[..], local()).await, Some(Closed::NotStun));
        assert!(rx.try_recv().is_err(), "nothing was delivered");
    }

    #[tokio::test]
    async fn an_oversized_length_closes_the_connection() {
        let (c, mut rx, _) = conn(8);
        let mut bytes = framed(&[STUN]);
        bytes.extend_from_slice(&[0xff, 0xff, 0, 0]);
        assert_eq!(c.read(&mut &bytes[..], local()).await, Some(Closed::Framing));
        assert!(rx.try_recv().is_ok(), "the STUN frame before it was delivered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_first_frame_timeout() {
        let (c, _rx, _) = conn(8);
        let (_peer, mut server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        assert_eq!(c.read(&mut server, local()).await, Some(Closed::Silent));
        assert_eq!(started.elapsed(), FIRST_FRAME_TIMEOUT);
    }

    #[tokio::test]
    async fn a_full_outgoing_queue_drops_and_counts_only_that_viewers_packets() {
        let conns = TcpConns::default();
        let stats = MediaStats::default();
        let (slow, fast) = (SocketAddr::from(([192, 0, 2, 1], 1)), SocketAddr::from(([192, 0, 2, 2], 2)));
        let _slow_rx = conns.open(slow).expect("room");
        let mut fast_rx = conns.open(fast).expect("room");
        for _ in 0..SEND_QUEUE {
            assert!(conns.send(slow, &[1; 100], &stats));
        }
        assert!(!conns.send(slow, &[1; 100], &stats), "the slow viewer's queue is full");
        assert_eq!(MediaStats::get(&stats.tcp_send_drops), 1);
        assert!(conns.send(fast, &[2; 10], &stats), "another viewer is not affected");
        assert_eq!(fast_rx.recv().await, Some(framing::frame(&[2; 10]).expect("fits")));
        conns.close(slow);
        assert!(!conns.send(slow, &[1; 100], &stats), "a closed connection takes nothing");
        assert_eq!(MediaStats::get(&stats.tcp_send_drops), 2);
    }

    #[test]
    fn the_connection_limit_holds() {
        let conns = TcpConns::default();
        for i in 0..MAX_CONNECTIONS {
            let peer = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9));
            assert!(conns.open(peer).is_some());
        }
        assert!(conns.open(SocketAddr::from(([11, 0, 0, 1], 9))).is_none());
    }
}
