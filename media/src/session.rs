//! State the worker keeps for one participant's WebRTC session.
//!
//! A session owns its str0m [`Rtc`], the one server offer that may be outstanding ([`Negotiation`]),
//! the consumer m-lines waiting for the next offer, and the lookup tables from mid/SSRC to the
//! router's producers and consumers. Invariant: a mid is in `consumers_by_mid` only once its m-line was
//! accepted by the client and the router holds the consumer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use dais_forward::{ConsumerId, ProducerId};
use str0m::change::SdpPendingOffer;
use str0m::media::Mid;
use str0m::rtp::Ssrc;
use str0m::Rtc;

use crate::{EventSink, Kind, ProducerKey};

/// A consumer m-line to put in the next server offer.
#[derive(Debug, Clone)]
pub(crate) struct PendingConsumer {
    pub producer: ProducerKey,
    pub kind: Kind,
    pub stream_id: String,
    pub track_id: String,
}

/// The server offer that awaits the client's answer.
pub(crate) struct Negotiation {
    pub offer: SdpPendingOffer,
    pub adds: Vec<(Mid, PendingConsumer)>,
}

pub(crate) struct Session {
    pub rtc: Rtc,
    pub publisher: bool,
    pub events: EventSink,
    /// A client offer was accepted at least once. Publishers get no server offer before that, so the
    /// browser's first offer never collides with ours.
    pub client_offered: bool,
    pub negotiation: Option<Negotiation>,
    pub queued_adds: Vec<PendingConsumer>,
    pub queued_stops: Vec<Mid>,
    /// The first mid of the BUNDLE group in the last SDP this session produced: the m-line whose
    /// transport the whole bundle uses. It is never stopped (see `Worker::negotiate`).
    pub bundle_tag: Option<Mid>,
    pub producers_by_mid: HashMap<Mid, ProducerId>,
    pub producers_by_ssrc: HashMap<Ssrc, ProducerId>,
    pub consumers_by_mid: HashMap<Mid, ConsumerId>,
    pub next_timeout: Option<Instant>,
    /// The entry of this session in the worker's timer heap, if any; entries that differ are stale.
    pub scheduled: Option<Instant>,
    pub addrs: Vec<SocketAddr>,
    pub last_source: Option<SocketAddr>,
    pub dirty: bool,
    pub wants_negotiation: bool,
    /// ICE and DTLS completed; until then accepted consumer m-lines wait in `awaiting_connect`, so the
    /// keyframe that opens a consumer's gate is never spent on a session that cannot send it yet.
    pub connected: bool,
    /// Set when the connection failed on its own; see `Worker::fail_session`.
    pub failed_at: Option<Instant>,
    /// When the first SDP exchange completed; the connect timeout runs from here.
    pub negotiated_at: Option<Instant>,
    pub awaiting_connect: Vec<(Mid, PendingConsumer)>,
    /// Last cumulative NACK count str0m reported per consumer mid.
    pub egress_nacks: HashMap<Mid, u64>,
    /// Trickled remote candidates added so far (capped).
    pub remote_candidates: usize,
    /// When the session was opened; a publisher that has not offered by `PUBLISHER_OFFER_GRACE`
    /// later gets server offers anyway (it may have no camera).
    pub opened_at: Instant,
}

/// The first mid of an SDP's `a=group:BUNDLE` line.
pub(crate) fn bundle_tag(sdp: &str) -> Option<Mid> {
    let group = sdp.lines().find_map(|l| l.strip_prefix("a=group:BUNDLE"))?;
    group.split_whitespace().next().map(Mid::from)
}

impl Session {
    /// Remember the bundle tag of an SDP this session just produced (offer or answer).
    pub fn produced(&mut self, sdp: &str) {
        self.bundle_tag = bundle_tag(sdp).or(self.bundle_tag);
    }

    pub fn new(rtc: Rtc, publisher: bool, events: EventSink) -> Self {
        Session {
            rtc,
            publisher,
            events,
            client_offered: false,
            negotiation: None,
            queued_adds: Vec::new(),
            queued_stops: Vec::new(),
            bundle_tag: None,
            producers_by_mid: HashMap::new(),
            producers_by_ssrc: HashMap::new(),
            consumers_by_mid: HashMap::new(),
            next_timeout: None,
            scheduled: None,
            addrs: Vec::new(),
            last_source: None,
            dirty: true,
            wants_negotiation: false,
            connected: false,
            failed_at: None,
            negotiated_at: None,
            awaiting_connect: Vec::new(),
            egress_nacks: HashMap::new(),
            remote_candidates: 0,
            opened_at: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_tag_is_the_first_mid_of_the_group() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a1 b2 c3\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        assert_eq!(bundle_tag(sdp), Some(Mid::from("a1")));
        assert_eq!(bundle_tag("v=0\r\na=group:BUNDLE\r\n"), None, "an empty group has no tag");
        assert_eq!(bundle_tag("v=0\r\n"), None);
    }
}
