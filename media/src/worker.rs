//! One media worker thread: the IO driver of its [`Hub`] and, on worker 0, of the [`Endpoint`]. It owns
//! the socket handles, the two queues and the timer, and nothing else: every decision is the hub's, the
//! endpoint's or a session's.
//!
//! The loop waits for the first of: a control message (commands from a [`crate::MediaHandle`], and
//! other workers' control messages), a media message (packets relayed by another worker, datagrams
//! handed over by worker 0), a datagram (worker 0 only), or the earliest deadline. Control comes first
//! and has its own queue, so a client's offer never waits behind relayed packets. After each batch of
//! inputs it flushes the hub and moves what the hub asks for: datagrams into `sendmmsg` batches, events
//! to the sessions' owners, messages to other workers. Network bytes never make this loop fail: they are
//! dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use str0m::ice::IceCreds;
use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{debug, info, warn};

use crate::endpoint::{self, Addr, Demux, DemuxDrop, Endpoint, Route};
use crate::hub::{Hub, HubOutput, PeerMessage, Shared};
use crate::queues::{Control, Links, Media};
use crate::send::SendBatch;
use crate::{EventSink, MediaStats, SessionId};

/// Most queued control messages handled in one pass before the worker flushes its output.
const CONTROL_BATCH: usize = 256;

/// Most queued media messages handled in one pass (each is one packet or datagram).
const MEDIA_BATCH: usize = 64;

/// Datagrams read from the socket in one pass without waiting.
const RECV_BATCH: usize = 64;

/// The receive buffer; a larger datagram is truncated (and then fails to parse or decrypt).
const RECV_BUFFER: usize = 2048;

/// What one worker thread starts with.
pub(crate) struct Start {
    pub index: usize,
    /// Worker 0 reads the socket.
    pub recv: Option<std::net::UdpSocket>,
    /// This worker's handle to the socket, for sending.
    pub send: std::net::UdpSocket,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub media: mpsc::Receiver<Media>,
    pub links: Arc<Links>,
    pub shared: Arc<Shared>,
}

struct Worker {
    index: usize,
    hub: Hub,
    endpoint: Option<Endpoint>,
    links: Arc<Links>,
    shared: Arc<Shared>,
    sinks: HashMap<SessionId, EventSink>,
    send: std::net::UdpSocket,
    batch: SendBatch,
}

/// The thread body: a current-thread runtime driving one worker until shutdown.
pub(crate) fn run(start: Start) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            warn!("media runtime failed to start: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let Start { index, recv, send, mut control, mut media, links, shared } = start;
        let recv = match recv.map(UdpSocket::from_std).transpose() {
            Ok(s) => s,
            Err(e) => {
                warn!("media socket could not be registered: {e}");
                return;
            }
        };
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        let hub = Hub::new(Instant::now(), index, links.control.len(), shared.clone(), seed ^ index as u64);
        let endpoint = recv.is_some().then(Endpoint::new);
        let mut w =
            Worker { index, hub, endpoint, links, shared, sinks: HashMap::new(), send, batch: SendBatch::new() };
        info!(worker = index, receives = recv.is_some(), "media worker started");
        w.serve(recv.as_ref(), &mut control, &mut media).await;
        w.hub.close_all(Instant::now());
        w.flush();
        info!(worker = index, "media worker stopped");
    });
}

impl Worker {
    fn stats(&self) -> &MediaStats {
        &self.shared.stats
    }

    async fn serve(
        &mut self,
        recv: Option<&UdpSocket>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        media: &mut mpsc::Receiver<Media>,
    ) {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let deadline = self.deadline();
            // Timers first when due: under a socket that is always readable, the select below would
            // otherwise never pick its timer branch.
            if deadline <= Instant::now() {
                self.timeout(Instant::now());
                self.flush();
                continue;
            }
            tokio::select! {
                biased;
                c = control.recv() => {
                    let Some(c) = c else { break };
                    if !self.control(c) { break; }
                    for _ in 0..CONTROL_BATCH {
                        let Ok(c) = control.try_recv() else { break };
                        if !self.control(c) { return; }
                    }
                }
                Some(m) = media.recv() => {
                    self.media(m);
                    for _ in 0..MEDIA_BATCH {
                        let Ok(m) = media.try_recv() else { break };
                        self.media(m);
                    }
                }
                r = recv_from(recv, &mut buf) => match r {
                    Ok((n, src)) => {
                        self.datagram(src, &buf[..n]);
                        // Drain what else is readable without waiting.
                        for _ in 0..RECV_BATCH {
                            let Some(Ok((n, src))) = recv.map(|s| s.try_recv_from(&mut buf)) else { break };
                            self.datagram(src, &buf[..n]);
                        }
                    }
                    // ICMP errors (port unreachable) surface here on Linux; they concern one peer only.
                    Err(e) => debug!("udp recv error: {e}"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.timeout(Instant::now()),
            }
            self.flush();
        }
    }

    fn deadline(&self) -> Instant {
        let hub = self.hub.poll_timeout();
        self.endpoint.as_ref().and_then(Endpoint::poll_timeout).map_or(hub, |e| e.min(hub))
    }

    fn timeout(&mut self, now: Instant) {
        self.hub.handle_timeout(now);
        if let Some(e) = &mut self.endpoint {
            e.handle_timeout(now);
        }
    }

    /// Returns false on shutdown.
    fn control(&mut self, c: Control) -> bool {
        let now = Instant::now();
        match c {
            Control::Shutdown => return false,
            Control::Open { session, mode, creds, events } => {
                self.sinks.insert(session, events);
                self.hub.open(now, session, mode, creds);
            }
            Control::ClientOffer { session, sdp, reply } => {
                let _ = reply.send(self.hub.client_offer(now, session, &sdp));
            }
            Control::ClientAnswer { session, sdp, reply } => {
                let _ = reply.send(self.hub.client_answer(now, session, &sdp));
            }
            Control::Candidate { session, candidate } => self.hub.add_candidate(session, &candidate),
            Control::Subscribe { session, producer, stream_id, track_id } => {
                self.hub.subscribe(session, producer, stream_id, track_id);
            }
            Control::Close { session } => {
                self.hub.close(now, session);
                self.sinks.remove(&session);
                // After any Route this worker sent for it (one sender's messages stay in order).
                self.unroute(session);
            }
            Control::SetPublisher { session, publisher } => self.hub.set_publisher(session, publisher),
            Control::SetPaused { producer, paused } => self.hub.set_paused(now, producer, paused),
            Control::VideoSize { session, producer, width, height } => {
                self.hub.video_size(now, session, producer, width, height);
            }
            Control::Route { session, worker, creds } => {
                if let Some(e) = &mut self.endpoint {
                    e.register(now, Route { worker, session }, &creds);
                }
            }
            Control::Unroute { session } => {
                if let Some(e) = &mut self.endpoint {
                    e.unregister(session);
                }
            }
            Control::Peer(m) => self.hub.handle_peer(now, m),
        }
        true
    }

    fn media(&mut self, m: Media) {
        let now = Instant::now();
        match m {
            Media::Relay(r) => self.hub.handle_peer(now, PeerMessage::Relay(r)),
            Media::Datagram { session, from, to, data, at } => {
                self.hub.handle_datagram(now, session, from, to, &data, at);
            }
            Media::Received { from, to, data, at } => self.demux(from, to, &data, at),
        }
    }

    /// A datagram read from the UDP socket (worker 0).
    fn datagram(&mut self, src: SocketAddr, bytes: &[u8]) {
        let stats = &self.shared.stats;
        stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let to = endpoint::destination(&self.shared.session.candidates, src);
        self.demux(Addr::udp(src), to, bytes, Instant::now());
    }

    /// A datagram (or TCP frame) that arrived at `to` from `from`: to its session, here or on its
    /// worker (worker 0, which holds the endpoint).
    fn demux(&mut self, from: Addr, to: SocketAddr, bytes: &[u8], at: Instant) {
        let now = Instant::now();
        let stats = &self.shared.stats;
        let Some(endpoint) = &mut self.endpoint else { return };
        let route = match endpoint.handle(now, from, bytes) {
            Demux::Session(route) => route,
            Demux::Drop(reason) => {
                let counter = match reason {
                    DemuxDrop::Unparseable => &stats.dropped_unparseable,
                    DemuxDrop::UnknownSource | DemuxDrop::UnknownUfrag => &stats.dropped_unknown_source,
                    DemuxDrop::BadIntegrity => &stats.dropped_stun_auth,
                    DemuxDrop::CheckRate => &stats.dropped_stun_rate,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if route.worker == self.index {
            self.hub.handle_datagram(now, route.session, from, to, bytes, at);
            return;
        }
        let m = Media::Datagram { session: route.session, from, to, data: bytes.to_vec(), at };
        if self.send_media(route.worker, m) {
            self.stats().datagrams_handed_over.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Datagrams for `session` (credentials `creds`) come to this worker: worker 0's endpoint learns it.
    fn route(&mut self, session: SessionId, creds: IceCreds) {
        let route = Route { worker: self.index, session };
        match &mut self.endpoint {
            Some(e) => e.register(Instant::now(), route, &creds),
            None => {
                if let Some(tx) = self.links.control.first() {
                    let _ = tx.send(Control::Route { session, worker: self.index, creds });
                }
            }
        }
    }

    /// The session is gone from this worker: worker 0's endpoint forgets it. The handle unroutes it
    /// too, but a Route this worker sent after an ICE restart could otherwise arrive after that.
    fn unroute(&mut self, session: SessionId) {
        match &mut self.endpoint {
            Some(e) => e.unregister(session),
            None => {
                if let Some(tx) = self.links.control.first() {
                    let _ = tx.send(Control::Unroute { session });
                }
            }
        }
    }

    fn send_media(&self, to: usize, m: Media) -> bool {
        queue_media(self.links.media.get(to), m, self.stats())
    }

    /// Flush the hub and move everything it asks for; the pass's datagrams go to the kernel before
    /// their latency is taken.
    fn flush(&mut self) {
        self.hub.flush(Instant::now());
        while let Some(out) = self.hub.poll_output() {
            match out {
                HubOutput::Transmit(t) if t.proto == Protocol::Tcp => {
                    self.links.tcp.send(t.destination, &t.contents, &self.shared.stats);
                }
                HubOutput::Transmit(t) => self.batch.push(t, &self.send, &self.shared.stats),
                HubOutput::Event(id, e) => {
                    if let Some(sink) = self.sinks.get_mut(&id) {
                        sink(e);
                    }
                }
                HubOutput::Peer(to, PeerMessage::Relay(r)) => {
                    if self.send_media(to, Media::Relay(r)) {
                        self.stats().packets_relayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                HubOutput::Peer(to, m) => {
                    if let Some(tx) = self.links.control.get(to) {
                        let _ = tx.send(Control::Peer(m));
                    }
                }
                HubOutput::Route(session, creds) => self.route(session, creds),
            }
        }
        self.batch.send(&self.send, &self.shared.stats);
        let done = Instant::now();
        for a in self.hub.take_arrivals() {
            self.shared.stats.latency.record(done.saturating_duration_since(a));
        }
    }
}

/// Queue a media message on a worker's media queue, unless the queue is full: then it is dropped and
/// counted (`backlog_drops`), as a full socket buffer drops datagrams, instead of queueing without bound.
fn queue_media(tx: Option<&mpsc::Sender<Media>>, m: Media, stats: &MediaStats) -> bool {
    let Some(tx) = tx else { return false };
    match tx.try_send(m) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            stats.backlog_drops.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Receive on worker 0's socket; other workers have none and wait forever here.
async fn recv_from(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram() -> Media {
        let from = Addr::udp(SocketAddr::from(([127, 0, 0, 1], 9)));
        Media::Datagram { session: SessionId(1), from, to: from.addr, data: vec![0; 4], at: Instant::now() }
    }

    #[test]
    fn a_full_media_queue_drops_and_counts() {
        let stats = MediaStats::default();
        let (tx, mut rx) = mpsc::channel(crate::queues::MEDIA_QUEUE);
        for _ in 0..crate::queues::MEDIA_QUEUE {
            assert!(queue_media(Some(&tx), datagram(), &stats));
        }
        assert!(!queue_media(Some(&tx), datagram(), &stats), "the 8,193rd message is refused");
        assert_eq!(MediaStats::get(&stats.backlog_drops), 1);
        assert!(rx.try_recv().is_ok());
        assert!(queue_media(Some(&tx), datagram(), &stats), "room again once one was handled");
        assert!(!queue_media(None, datagram(), &stats), "no such worker");
        drop(rx);
        assert!(!queue_media(Some(&tx), datagram(), &stats), "a stopped worker takes nothing");
        assert_eq!(MediaStats::get(&stats.backlog_drops), 1, "only a full queue counts as a backlog drop");
    }
}
