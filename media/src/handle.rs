//! The running media plane ([`MediaServer`]) and the cheap handle its callers hold ([`MediaHandle`]):
//! the socket, the worker threads, and where each session lives. Commands reach a worker on its control
//! queue (see `queues`).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use str0m::ice::IceCreds;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::hub::Shared;
use crate::queues::{Control, Links, Media, MEDIA_QUEUE};
use crate::session::SessionConfig;
use crate::tcp::{TcpConns, TcpServer};
use crate::worker::Start;
use crate::{
    send, worker, AnswerError, EventSink, MediaConfig, MediaStats, OfferError, ProducerKey, SessionId, SessionMode,
    StartError,
};

/// Kernel receive and send buffer asked for on the media socket, bytes.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Most media workers [`MediaServer::start`] runs.
pub const MAX_WORKERS: usize = 64;

/// Which worker owns each session, and how many each owns.
#[derive(Debug, Default)]
struct Placement {
    by_session: HashMap<SessionId, usize>,
    load: Vec<usize>,
}

impl Placement {
    /// The worker of a new session: the one with the fewest, the lowest index on a tie. A session id
    /// opened again stays where it was.
    fn place(&mut self, session: SessionId) -> usize {
        if let Some(w) = self.by_session.get(&session) {
            return *w;
        }
        let w = self.load.iter().enumerate().min_by_key(|(i, n)| (**n, *i)).map(|(i, _)| i).unwrap_or(0);
        if let Some(n) = self.load.get_mut(w) {
            *n += 1;
        }
        self.by_session.insert(session, w);
        w
    }

    fn remove(&mut self, session: SessionId) -> Option<usize> {
        let w = self.by_session.remove(&session)?;
        if let Some(n) = self.load.get_mut(w) {
            *n = n.saturating_sub(1);
        }
        Some(w)
    }
}

/// A cheap, cloneable handle to the media workers.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    links: Arc<Links>,
    placement: Arc<Mutex<Placement>>,
    local_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    candidates: Arc<[SocketAddr]>,
    stats: Arc<MediaStats>,
}

/// The running media plane: a handle plus the worker threads (and the TCP thread) to join at shutdown.
#[derive(Debug)]
pub struct MediaServer {
    handle: MediaHandle,
    threads: Vec<JoinHandle<()>>,
    tcp: Option<TcpServer>,
}

/// The UDP media socket, non-blocking, with large kernel buffers.
fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, StartError> {
    let socket = UdpSocket::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    socket.set_nonblocking(true)?;
    // One socket carries every participant: at 1,000 viewers the default buffers (about 200 KB) hold
    // well under a millisecond of traffic. Linux caps the request at net.core.rmem_max / wmem_max.
    let (rcv, snd) = send::size_buffers(&socket, SOCKET_BUFFER_BYTES);
    info!(receive = rcv, send = snd, "media socket buffers");
    Ok(socket)
}

/// The TCP media listener.
fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    std::net::TcpListener::bind(addr).map_err(|source| StartError::BindTcp { addr, source })
}

/// How many workers `configured` asks for: 0 is one per available core; at most [`MAX_WORKERS`].
pub fn worker_count(configured: usize) -> usize {
    let n =
        if configured == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { configured };
    n.clamp(1, MAX_WORKERS)
}

impl MediaServer {
    /// Bind the sockets and start the worker threads (and the TCP thread when TCP is on).
    pub fn start(config: MediaConfig) -> Result<MediaServer, StartError> {
        let socket = bind_udp(config.bind)?;
        let local_addr = socket.local_addr()?;
        let candidates: Arc<[SocketAddr]> = crate::candidate_addrs(local_addr, &config.advertise).into();
        if candidates.is_empty() {
            return Err(StartError::NoCandidate(local_addr));
        }
        let listener = config.tcp_bind.map(bind_tcp).transpose()?;
        let tcp_addr = listener.as_ref().map(std::net::TcpListener::local_addr).transpose()?;
        let tcp_candidates: Arc<[SocketAddr]> = match tcp_addr {
            Some(tcp) => candidates.iter().map(|c| SocketAddr::new(c.ip(), tcp.port())).collect(),
            None => Arc::from(Vec::new()),
        };
        info!(%local_addr, ?candidates, ?tcp_candidates, "media plane listening");
        let stats = Arc::new(MediaStats::default());
        let count = worker_count(config.workers);
        let (control_tx, control_rx): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let (media_tx, media_rx): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::channel(MEDIA_QUEUE)).unzip();
        let tcp = Arc::new(TcpConns::default());
        let links = Arc::new(Links { control: control_tx, media: media_tx, tcp: tcp.clone() });
        let wall_anchor = (Instant::now(), SystemTime::now());
        let session = SessionConfig {
            candidates: candidates.clone(),
            tcp_candidates,
            wall_anchor,
            stream_limits: config.stream_limits,
        };
        let shared = Arc::new(Shared { stats: stats.clone(), next_key: 1.into(), session });
        let placement = Placement { by_session: HashMap::new(), load: vec![0; count] };
        let handle = MediaHandle {
            links: links.clone(),
            placement: Arc::new(Mutex::new(placement)),
            local_addr,
            tcp_addr,
            candidates,
            stats: stats.clone(),
        };
        let mut server = MediaServer { handle, threads: Vec::with_capacity(count), tcp: None };
        server.spawn_workers(&socket, control_rx, media_rx, &links, &shared)?;
        if let (Some(listener), Some(worker0)) = (listener, links.media.first()) {
            server.tcp = Some(TcpServer::start(listener, tcp, worker0.clone(), stats.clone())?);
        }
        stats.workers.store(count as u64, Ordering::Relaxed);
        info!(workers = count, "media workers started");
        Ok(server)
    }

    /// One thread per worker. Worker 0 reads the socket; every worker sends on its own handle to it.
    fn spawn_workers(
        &mut self,
        socket: &UdpSocket,
        control: Vec<mpsc::UnboundedReceiver<Control>>,
        media: Vec<mpsc::Receiver<Media>>,
        links: &Arc<Links>,
        shared: &Arc<Shared>,
    ) -> Result<(), StartError> {
        let mut recv = Some(socket.try_clone()?);
        for (index, (control, media)) in control.into_iter().zip(media).enumerate() {
            let start = Start {
                index,
                recv: recv.take(),
                send: socket.try_clone()?,
                control,
                media,
                links: links.clone(),
                shared: shared.clone(),
            };
            let thread =
                std::thread::Builder::new().name(format!("dais-media-{index}")).spawn(move || worker::run(start))?;
            self.threads.push(thread);
        }
        Ok(())
    }

    /// A handle for sending commands.
    pub fn handle(&self) -> MediaHandle {
        self.handle.clone()
    }

    /// Stop the workers (closing every session) and wait for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut tcp) = self.tcp.take() {
            tcp.stop();
        }
        for tx in &self.handle.links.control {
            let _ = tx.send(Control::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MediaServer {
    /// Workers hold each other's senders, so they stop only when told to (also when `start` failed
    /// half-way: the threads already running are stopped here).
    fn drop(&mut self) {
        self.stop();
    }
}

impl MediaHandle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound TCP media address, when ICE over TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The UDP host candidates advertised in every SDP.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.stats
    }

    fn placement(&self) -> MutexGuard<'_, Placement> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_to(&self, session: SessionId, c: Control) -> bool {
        let w = self.placement().by_session.get(&session).copied();
        w.and_then(|w| self.links.control.get(w)).is_some_and(|tx| tx.send(c).is_ok())
    }

    /// Create a session on the least loaded worker. A publisher may offer media; others only receive
    /// (a player on the m-lines of its own offer, see [`SessionMode::Player`]).
    /// The session's ICE credentials are chosen here, and worker 0's endpoint learns them first.
    pub fn open_session(&self, session: SessionId, mode: SessionMode, events: EventSink) {
        let worker = self.placement().place(session);
        let creds = IceCreds::new();
        if let Some(tx) = self.links.control.first() {
            let _ = tx.send(Control::Route { session, worker, creds: creds.clone() });
        }
        if let Some(tx) = self.links.control.get(worker) {
            let _ = tx.send(Control::Open { session, mode, creds, events });
        }
    }

    /// Apply a client offer and return the answer SDP.
    pub async fn client_offer(&self, session: SessionId, sdp: String) -> Result<String, OfferError> {
        let (reply, rx) = oneshot::channel();
        if !self.send_to(session, Control::ClientOffer { session, sdp, reply }) {
            return Err(OfferError::NoSession);
        }
        rx.await.unwrap_or(Err(OfferError::NoSession))
    }

    /// Apply the client's answer to the outstanding server offer.
    pub async fn client_answer(&self, session: SessionId, sdp: String) -> Result<(), AnswerError> {
        let (reply, rx) = oneshot::channel();
        if !self.send_to(session, Control::ClientAnswer { session, sdp, reply }) {
            return Err(AnswerError::NoSession);
        }
        rx.await.unwrap_or(Err(AnswerError::NoSession))
    }

    /// Add a trickled remote candidate (`candidate:...` text). Unparseable ones are ignored and logged.
    pub fn add_candidate(&self, session: SessionId, candidate: String) {
        self.send_to(session, Control::Candidate { session, candidate });
    }

    /// Send `producer` to `session`: a consumer m-line with msid `stream_id track_id` is offered to it.
    pub fn subscribe(&self, session: SessionId, producer: ProducerKey, stream_id: String, track_id: String) {
        self.send_to(session, Control::Subscribe { session, producer, stream_id, track_id });
    }

    /// Close a session, ending its producers (their consumers are removed by renegotiation).
    pub fn close_session(&self, session: SessionId) {
        let w = self.placement().remove(session);
        if let Some(tx) = self.links.control.first() {
            let _ = tx.send(Control::Unroute { session });
        }
        if let Some(tx) = w.and_then(|w| self.links.control.get(w)) {
            let _ = tx.send(Control::Close { session });
        }
    }

    /// Allow or forbid a session to publish (promote/demote in place). Forbidding ends its producers,
    /// each reported as [`crate::SessionEvent::ProducerRemoved`], and stops their m-lines with a server offer.
    pub fn set_publisher(&self, session: SessionId, publisher: bool) {
        self.send_to(session, Control::SetPublisher { session, publisher });
    }

    /// Pause or resume forwarding one producer (server-side mute). Every worker applies it to its own
    /// consumers of the producer.
    pub fn set_paused(&self, producer: ProducerKey, paused: bool) {
        for tx in &self.links.control {
            let _ = tx.send(Control::SetPaused { producer, paused });
        }
    }

    /// The client of `session` shows `producer` at `width` x `height` device pixels; 0 in either
    /// hides it, which pauses that video ([`crate::SessionEvent::VideoPaused`]). Remembered for
    /// producers it does not receive yet; ignored for audio.
    pub fn video_size(&self, session: SessionId, producer: ProducerKey, width: u16, height: u16) {
        self.send_to(session, Control::VideoSize { session, producer, width, height });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_loaded_worker_and_stay_there() {
        let mut p = Placement { by_session: HashMap::new(), load: vec![0; 2] };
        assert_eq!(p.place(SessionId(1)), 0);
        assert_eq!(p.place(SessionId(2)), 1);
        assert_eq!(p.place(SessionId(3)), 0);
        assert_eq!(p.place(SessionId(1)), 0, "reopening keeps the worker and the count");
        assert_eq!(p.load, vec![2, 1]);
        assert_eq!(p.remove(SessionId(1)), Some(0));
        assert_eq!(p.remove(SessionId(1)), None);
        assert_eq!(p.place(SessionId(4)), 0, "ties go to the lowest index");
        assert_eq!(p.place(SessionId(5)), 1);
        assert_eq!(p.load, vec![2, 2]);
    }

    #[test]
    fn worker_count_is_clamped() {
        assert!(worker_count(0) >= 1);
        assert_eq!(worker_count(3), 3);
        assert_eq!(worker_count(10_000), MAX_WORKERS);
    }
}
