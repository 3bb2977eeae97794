//! The sans-IO endpoint: which session a datagram belongs to (quinn-proto's `Endpoint` is the model).
//!
//! Every session shares the media ports, so the endpoint demuxes each datagram by its [`Addr`]
//! (transport plus source address) and owns the two indexes that needs:
//! - the **ufrag index**: each session's local ICE username fragment and password, registered when the
//!   session opens (the server chooses its sessions' ICE credentials);
//! - the **address index**: the addresses that have proven they speak for a session.
//!
//! An address joins a session only through a STUN binding request whose USERNAME names that session's
//! ufrag and whose MESSAGE-INTEGRITY verifies with its password (RFC 8445 §7.3): the same check the
//! session's ICE agent makes, made here so that the datagrams that follow (DTLS, SRTP) find their
//! session at once, whichever worker owns it. Anything else from an unknown address is dropped without
//! a scan, so spoofed RTP or DTLS costs one map lookup. A session keeps at most
//! [`MAX_ADDRS_PER_SESSION`] addresses (the least recently heard goes first) and forgets one it has not
//! heard from for [`ADDR_IDLE`]; the endpoint is told the time for that and reads no clock.
//!
//! Binding requests are rationed ([`CHECKS_PER_SEC`], bursts of [`CHECK_BURST`]): per known address
//! (each check is answered, so a forged flood from a victim's address would be reflected to it), and
//! per session for checks from addresses it does not know yet (each costs an HMAC). Browsers send a
//! few a second while connecting and one every few seconds after (RFC 7675 consent).
//!
//! The transport is part of every address, so UDP and TCP (RFC 4571 framed) datagrams share this path.
//! Bytes never make the endpoint fail: they become a [`Demux::Drop`] with a reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::crypto::Sha1HmacProvider;
use str0m::ice::{IceCreds, StunMessage};

use crate::SessionId;

/// Most addresses one session may be reached from at once.
pub(crate) const MAX_ADDRS_PER_SESSION: usize = 4;

/// An address not heard from for this long is forgotten: ICE consent (RFC 7675) expires after 30 s
/// without a check, and browsers check every few seconds.
pub(crate) const ADDR_IDLE: Duration = Duration::from_secs(30);

/// Binding requests per second one known address, or one session's unknown addresses together, may
/// send, sustained.
pub(crate) const CHECKS_PER_SEC: f32 = 20.0;
/// Binding requests at once, see [`CHECKS_PER_SEC`].
pub(crate) const CHECK_BURST: f32 = 40.0;

/// A token bucket of binding requests.
#[derive(Debug, Clone, Copy)]
struct CheckBudget {
    tokens: f32,
    last: Instant,
}

impl CheckBudget {
    fn full(now: Instant) -> Self {
        CheckBudget { tokens: CHECK_BURST, last: now }
    }

    /// Whether one more check at `now` is within the budget.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f32() * CHECKS_PER_SEC;
        self.last = self.last.max(now);
        self.tokens = (self.tokens + refill).min(CHECK_BURST);
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

/// How often idle addresses are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// One RFC 4571 frame of a TCP connection. Nothing reads TCP yet; the tag exists so that a TCP
    /// listener feeds this same path without another reshape.
    #[cfg_attr(not(test), allow(dead_code))]
    Tcp,
}

/// A peer's address on one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr {
    /// The transport.
    pub transport: Transport,
    /// The peer's IP and port.
    pub addr: SocketAddr,
}

impl Addr {
    /// A UDP address.
    pub fn udp(addr: SocketAddr) -> Self {
        Addr { transport: Transport::Udp, addr }
    }
}

/// Where a session lives: its media worker and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Route {
    pub worker: usize,
    pub session: SessionId,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Demux {
    /// To this session.
    Session(Route),
    /// Nowhere, for this reason.
    Drop(DemuxDrop),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DemuxDrop {
    /// Not STUN, DTLS, RTP or RTCP (RFC 7983 first byte).
    Unparseable,
    /// From an address no session knows, and not a STUN binding request for one.
    UnknownSource,
    /// A STUN binding request whose USERNAME names no session.
    UnknownUfrag,
    /// A STUN binding request whose MESSAGE-INTEGRITY does not verify with the session's password.
    BadIntegrity,
    /// A STUN binding request beyond its address's (or its session's) budget of checks.
    CheckRate,
}

struct Registered {
    route: Route,
    pass: String,
    /// Checks from addresses the session does not know yet.
    unknown_checks: CheckBudget,
}

struct Latched {
    route: Route,
    last_seen: Instant,
    checks: CheckBudget,
}

/// The demultiplexer. See the module docs.
pub(crate) struct Endpoint {
    ufrags: HashMap<String, Registered>,
    ufrag_of: HashMap<SessionId, String>,
    addrs: HashMap<Addr, Latched>,
    addrs_of: HashMap<SessionId, Vec<Addr>>,
    hmac: &'static dyn Sha1HmacProvider,
    next_sweep: Option<Instant>,
}

/// What the first byte of a datagram says it is (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Stun,
    Other,
    Garbage,
}

fn classify(bytes: &[u8]) -> Class {
    match bytes.first() {
        Some(0..=3) => Class::Stun,
        Some(20..=63) | Some(128..=191) => Class::Other,
        _ => Class::Garbage,
    }
}

impl Endpoint {
    pub fn new() -> Self {
        Endpoint {
            ufrags: HashMap::new(),
            ufrag_of: HashMap::new(),
            addrs: HashMap::new(),
            addrs_of: HashMap::new(),
            hmac: str0m::crypto::from_feature_flags().sha1_hmac_provider,
            next_sweep: None,
        }
    }

    /// A session can now be reached with `creds` (a new session, or new credentials after an ICE
    /// restart: the old ufrag stops working, the session's addresses stay).
    pub fn register(&mut self, now: Instant, route: Route, creds: &IceCreds) {
        let mut unknown_checks = CheckBudget::full(now);
        if let Some(old) = self.ufrag_of.insert(route.session, creds.ufrag.clone()) {
            if let Some(old) = self.ufrags.remove(&old) {
                // An ICE restart does not refill the budget.
                unknown_checks = old.unknown_checks;
            }
        }
        self.ufrags.insert(creds.ufrag.clone(), Registered { route, pass: creds.pass.clone(), unknown_checks });
    }

    /// The session is gone: forget its ufrag and its addresses.
    pub fn unregister(&mut self, session: SessionId) {
        if let Some(ufrag) = self.ufrag_of.remove(&session) {
            self.ufrags.remove(&ufrag);
        }
        for a in self.addrs_of.remove(&session).unwrap_or_default() {
            self.addrs.remove(&a);
        }
    }

    /// Where the datagram `bytes` from `from` goes.
    pub fn handle(&mut self, now: Instant, from: Addr, bytes: &[u8]) -> Demux {
        match classify(bytes) {
            Class::Garbage => Demux::Drop(DemuxDrop::Unparseable),
            Class::Other => match self.addrs.get_mut(&from) {
                Some(l) => {
                    l.last_seen = now;
                    Demux::Session(l.route)
                }
                None => Demux::Drop(DemuxDrop::UnknownSource),
            },
            Class::Stun => self.stun(now, from, bytes),
        }
    }

    /// A STUN message: a binding request may (re)latch its address; anything else needs a known address.
    fn stun(&mut self, now: Instant, from: Addr, bytes: &[u8]) -> Demux {
        let message = StunMessage::parse(bytes).ok().filter(|m| m.is_binding_request());
        let Some(message) = message else {
            return match self.addrs.get_mut(&from) {
                Some(l) => {
                    l.last_seen = now;
                    Demux::Session(l.route)
                }
                None if StunMessage::parse(bytes).is_ok() => Demux::Drop(DemuxDrop::UnknownSource),
                None => Demux::Drop(DemuxDrop::Unparseable),
            };
        };
        let local = message.split_username().map(|(local, _)| local);
        let Some(reg) = local.and_then(|u| self.ufrags.get_mut(u)) else {
            return Demux::Drop(DemuxDrop::UnknownUfrag);
        };
        let route = reg.route;
        if let Some(l) = self.addrs.get_mut(&from).filter(|l| l.route == route) {
            if !l.checks.take(now) {
                return Demux::Drop(DemuxDrop::CheckRate);
            }
            l.last_seen = now;
            return Demux::Session(route);
        }
        if !reg.unknown_checks.take(now) {
            return Demux::Drop(DemuxDrop::CheckRate);
        }
        let hmac = self.hmac;
        if !message.verify(reg.pass.as_bytes(), |key, payloads| hmac.sha1_hmac(key, payloads)) {
            return Demux::Drop(DemuxDrop::BadIntegrity);
        }
        self.latch(now, from, route);
        Demux::Session(route)
    }

    /// `from` speaks for `route` from now on (and no longer for another session).
    fn latch(&mut self, now: Instant, from: Addr, route: Route) {
        if let Some(prev) = self.addrs.remove(&from) {
            if let Some(list) = self.addrs_of.get_mut(&prev.route.session) {
                list.retain(|a| *a != from);
            }
        }
        let list = self.addrs_of.entry(route.session).or_default();
        if list.len() >= MAX_ADDRS_PER_SESSION {
            let addrs = &self.addrs;
            let oldest =
                list.iter().enumerate().min_by_key(|(_, a)| addrs.get(*a).map(|l| l.last_seen)).map(|(i, _)| i);
            if let Some(i) = oldest {
                let evicted = list.swap_remove(i);
                self.addrs.remove(&evicted);
            }
        }
        list.push(from);
        // The check that latched it counts against its budget too.
        let mut checks = CheckBudget::full(now);
        checks.take(now);
        self.addrs.insert(from, Latched { route, last_seen: now, checks });
        self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
    }

    /// Forget addresses idle for [`ADDR_IDLE`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now < t) {
            return;
        }
        let idle: Vec<(Addr, SessionId)> = self
            .addrs
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_seen) >= ADDR_IDLE)
            .map(|(a, l)| (*a, l.route.session))
            .collect();
        for (a, session) in idle {
            self.addrs.remove(&a);
            if let Some(list) = self.addrs_of.get_mut(&session) {
                list.retain(|x| *x != a);
                if list.is_empty() {
                    self.addrs_of.remove(&session);
                }
            }
        }
        self.next_sweep = (!self.addrs.is_empty()).then_some(now + SWEEP_INTERVAL);
    }

    /// When [`Endpoint::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Addresses known now, all sessions together.
    #[cfg(test)]
    fn known(&self) -> usize {
        self.addrs.len()
    }
}

/// The local address a datagram from `from` was sent to, among the advertised `candidates`. The socket
/// does not report it (no `IP_PKTINFO`), but ICE wants it: the only candidate; for a loopback source a
/// loopback candidate of the same family; otherwise the first non-loopback candidate of the same family.
pub(crate) fn destination(candidates: &[SocketAddr], from: SocketAddr) -> SocketAddr {
    if let [only] = candidates {
        return *only;
    }
    let same_family = |c: &&SocketAddr| c.is_ipv4() == from.is_ipv4();
    if from.ip().is_loopback() {
        if let Some(c) = candidates.iter().filter(same_family).find(|c| c.ip().is_loopback()) {
            return *c;
        }
    }
    candidates
        .iter()
        .filter(same_family)
        .find(|c| !c.ip().is_loopback())
        .or_else(|| candidates.first())
        .copied()
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::TransId;

    fn creds(ufrag: &str) -> IceCreds {
        IceCreds { ufrag: ufrag.into(), pass: format!("{ufrag}-password-0123456789") }
    }

    fn route(worker: usize, session: u64) -> Route {
        Route { worker, session: SessionId(session) }
    }

    fn from(port: u16) -> Addr {
        Addr::udp(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    /// A binding request to `server` ufrag from a client, signed with `pass` (or unsigned).
    fn check(server: &str, pass: Option<&str>) -> Vec<u8> {
        let username = format!("{server}:clientufrag");
        let msg = StunMessage::binding_request(&username, TransId::new(), true, 7, 1_000, true);
        let mut buf = vec![0u8; 512];
        let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
        let n = msg.to_bytes(pass.map(str::as_bytes), &mut buf, |k, p| hmac.sha1_hmac(k, p)).expect("serializes");
        buf.truncate(n);
        buf
    }

    const DTLS: &[u8] = &[22, 254, 253, 0, 0];
    const RTP: &[u8] = &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];

    fn endpoint() -> Endpoint {
        let mut e = Endpoint::new();
        e.register(Instant::now(), route(0, 1), &creds("aaaa"));
        e.register(Instant::now(), route(1, 2), &creds("bbbb"));
        e
    }

    #[test]
    fn an_unknown_source_is_dropped_until_it_authenticates() {
        let now = Instant::now();
        let mut e = endpoint();
        assert_eq!(e.handle(now, from(1), RTP), Demux::Drop(DemuxDrop::UnknownSource));
        assert_eq!(e.handle(now, from(1), DTLS), Demux::Drop(DemuxDrop::UnknownSource));
        assert_eq!(e.handle(now, from(1), &[0xff, 1, 2]), Demux::Drop(DemuxDrop::Unparseable));
        assert_eq!(e.handle(now, from(1), &[]), Demux::Drop(DemuxDrop::Unparseable));
        assert_eq!(e.handle(now, from(1), &check("zzzz", Some("x"))), Demux::Drop(DemuxDrop::UnknownUfrag));
        // A valid check latches the address; DTLS and RTP from it then find the session.
        assert_eq!(
            e.handle(now, from(1), &check("bbbb", Some("bbbb-password-0123456789"))),
            Demux::Session(route(1, 2))
        );
        assert_eq!(e.handle(now, from(1), DTLS), Demux::Session(route(1, 2)));
        assert_eq!(e.handle(now, from(1), RTP), Demux::Session(route(1, 2)));
        assert_eq!(
            e.handle(now, from(2), RTP),
            Demux::Drop(DemuxDrop::UnknownSource),
            "another port is another address"
        );
    }

    #[test]
    fn a_spoofed_source_without_the_password_latches_nothing() {
        let now = Instant::now();
        let mut e = endpoint();
        assert_eq!(e.handle(now, from(5), &check("aaaa", Some("wrong"))), Demux::Drop(DemuxDrop::BadIntegrity));
        assert!(matches!(e.handle(now, from(5), &check("aaaa", None)), Demux::Drop(_)), "unsigned");
        let mut tampered = check("aaaa", Some("aaaa-password-0123456789"));
        tampered[25] ^= 1;
        assert!(matches!(e.handle(now, from(5), &tampered), Demux::Drop(_)));
        assert_eq!(e.handle(now, from(5), RTP), Demux::Drop(DemuxDrop::UnknownSource));
        assert_eq!(e.known(), 0);
    }

    #[test]
    fn an_address_can_move_and_the_oldest_of_too_many_is_forgotten() {
        let now = Instant::now();
        let mut e = endpoint();
        let good = check("aaaa", Some("aaaa-password-0123456789"));
        for port in 1..=MAX_ADDRS_PER_SESSION as u16 {
            let t = now + Duration::from_millis(u64::from(port));
            assert_eq!(e.handle(t, from(port), &good), Demux::Session(route(0, 1)));
        }
        // Port 1 is heard again, so port 2 is the least recently heard when a new address arrives.
        let t = now + Duration::from_millis(10);
        assert_eq!(e.handle(t, from(1), RTP), Demux::Session(route(0, 1)));
        assert_eq!(e.handle(t, from(9), &good), Demux::Session(route(0, 1)), "the client moved to port 9");
        assert_eq!(e.known(), MAX_ADDRS_PER_SESSION);
        assert_eq!(e.handle(t, from(2), RTP), Demux::Drop(DemuxDrop::UnknownSource), "evicted");
        assert_eq!(e.handle(t, from(9), RTP), Demux::Session(route(0, 1)));
        // An address that authenticates for another session moves to it.
        let other = check("bbbb", Some("bbbb-password-0123456789"));
        assert_eq!(e.handle(t, from(9), &other), Demux::Session(route(1, 2)));
        assert_eq!(e.handle(t, from(9), RTP), Demux::Session(route(1, 2)));
    }

    #[test]
    fn checks_are_rationed_per_known_address_and_per_session_for_new_ones() {
        let now = Instant::now();
        let mut e = endpoint();
        let good = check("aaaa", Some("aaaa-password-0123456789"));
        // One known address: a burst of 40, then 20 a second.
        for i in 0..CHECK_BURST as usize {
            assert_eq!(e.handle(now, from(1), &good), Demux::Session(route(0, 1)), "check {i}");
        }
        assert_eq!(e.handle(now, from(1), &good), Demux::Drop(DemuxDrop::CheckRate));
        assert_eq!(e.handle(now, from(1), RTP), Demux::Session(route(0, 1)), "media is not rationed");
        let later = now + Duration::from_millis(500);
        let allowed = (0..30).filter(|_| e.handle(later, from(1), &good) == Demux::Session(route(0, 1))).count();
        assert_eq!(allowed, 10, "half a second refills 10");
        // New addresses of one session share one budget (each would cost an HMAC)...
        let mut latched = 1; // port 1's first check came out of it
        for port in 100..200 {
            if e.handle(now, from(port), &good) == Demux::Session(route(0, 1)) {
                latched += 1;
            }
        }
        assert_eq!(latched, CHECK_BURST as usize);
        assert!(e.known() <= MAX_ADDRS_PER_SESSION, "and the table stays capped");
        // ... which is not another session's.
        let other = check("bbbb", Some("bbbb-password-0123456789"));
        assert_eq!(e.handle(now, from(300), &other), Demux::Session(route(1, 2)));
    }

    #[test]
    fn idle_addresses_expire_and_closing_forgets_everything() {
        let now = Instant::now();
        let mut e = endpoint();
        let good = check("aaaa", Some("aaaa-password-0123456789"));
        assert_eq!(e.handle(now, from(1), &good), Demux::Session(route(0, 1)));
        assert_eq!(e.handle(now, from(2), &good), Demux::Session(route(0, 1)));
        assert!(e.poll_timeout().is_some());
        // Port 2 stays busy; port 1 falls silent.
        let mut t = now;
        while t < now + ADDR_IDLE + SWEEP_INTERVAL {
            t += Duration::from_secs(1);
            e.handle(t, from(2), RTP);
            if e.poll_timeout().is_some_and(|d| d <= t) {
                e.handle_timeout(t);
            }
        }
        assert_eq!(e.handle(t, from(1), RTP), Demux::Drop(DemuxDrop::UnknownSource), "idle address forgotten");
        assert_eq!(e.handle(t, from(2), RTP), Demux::Session(route(0, 1)));
        e.unregister(SessionId(1));
        assert_eq!(e.handle(t, from(2), RTP), Demux::Drop(DemuxDrop::UnknownSource));
        assert_eq!(e.handle(t, from(3), &good), Demux::Drop(DemuxDrop::UnknownUfrag), "its ufrag is gone too");
        assert_eq!(e.known(), 0);
    }

    #[test]
    fn the_transport_is_part_of_the_address() {
        let now = Instant::now();
        let mut e = endpoint();
        let udp = from(1);
        let tcp = Addr { transport: Transport::Tcp, addr: udp.addr };
        assert_eq!(e.handle(now, tcp, &check("aaaa", Some("aaaa-password-0123456789"))), Demux::Session(route(0, 1)));
        assert_eq!(e.handle(now, tcp, RTP), Demux::Session(route(0, 1)));
        assert_eq!(
            e.handle(now, udp, RTP),
            Demux::Drop(DemuxDrop::UnknownSource),
            "the same IP and port over UDP is another address"
        );
    }

    #[test]
    fn new_credentials_replace_the_old_ufrag() {
        let now = Instant::now();
        let mut e = endpoint();
        e.register(Instant::now(), route(0, 1), &creds("cccc"));
        assert_eq!(
            e.handle(now, from(1), &check("aaaa", Some("aaaa-password-0123456789"))),
            Demux::Drop(DemuxDrop::UnknownUfrag)
        );
        assert_eq!(
            e.handle(now, from(1), &check("cccc", Some("cccc-password-0123456789"))),
            Demux::Session(route(0, 1))
        );
    }

    #[test]
    fn destination_prefers_loopback_for_loopback_peers() {
        let lo: SocketAddr = "127.0.0.1:7882".parse().expect("addr");
        let pub4: SocketAddr = "203.0.113.7:7882".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:7882".parse().expect("addr");
        let all = [pub4, lo, v6];
        assert_eq!(destination(&all, "127.0.0.1:5000".parse().expect("addr")), lo);
        assert_eq!(destination(&all, "198.51.100.2:5000".parse().expect("addr")), pub4);
        assert_eq!(destination(&all, "[2001:db8::9]:5000".parse().expect("addr")), v6);
        assert_eq!(destination(&[lo], "198.51.100.2:5000".parse().expect("addr")), lo);
    }

    #[test]
    fn random_bytes_never_panic() {
        let now = Instant::now();
        let mut e = endpoint();
        let mut state: u64 = 0x1234_5678_9abc_def1;
        let mut buf = [0u8; 96];
        for i in 0..20_000u32 {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let len = (state % 97) as usize;
            // STUN-looking headers half of the time, so the parser is reached.
            if i % 2 == 0 && len >= 8 {
                buf[0] = 0;
                buf[1] = 1;
                buf[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            let _ = e.handle(now, from((i % 7) as u16), &buf[..len]);
        }
        assert_eq!(e.known(), 0, "random bytes authenticate nothing");
    }
}
