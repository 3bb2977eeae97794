//! The offer/answer state machine of one session: server offers, client offers, glare, the bundle tag,
//! queued adds and stops, refused answers and SDP versions.
//!
//! Invariants kept here, each behind a method:
//! - At most one server offer is outstanding. A client offer meanwhile is a collision, refused with
//!   [`OfferError::Collision`]; the server's offer stands.
//! - A publisher gets no server offer before its first client offer was accepted, or until
//!   [`PUBLISHER_OFFER_GRACE`] after the session opened (it may have no camera).
//! - The bundle tag, the first mid of the BUNDLE group in the last SDP produced, is never stopped: it
//!   carries the bundle's one transport, so it is made `inactive` instead (Chromium refuses an offer
//!   whose group is empty, and tears down DTLS when the tag leaves a group that goes on).
//! - An answer that does not parse leaves the offer outstanding, to be answered again. An answer that
//!   parses but is refused changes nothing in the `Rtc` (str0m's `check_answer` runs before
//!   `accept_answer`), and the same offer, with the same mids, is sent again.
//! - Every SDP the session produces, offer or answer, carries a higher `o=` version than the one before
//!   (RFC 3264 §8); str0m itself always writes 2.
//! - A consumer m-line offers only the payload types compatible with its producer's codecs (plus RTX).
//! - No server offer is longer than [`MAX_OFFER_BYTES`], so its answer fits the SDP limit the server
//!   enforces on answers. Adds that would make it longer wait (in order) until an answered stop
//!   frees an m-line slot (str0m recycles it); a viewer of a room with very many streams gets the
//!   first ones and a warning is logged.

use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::CodecSpec;
use str0m::media::{Direction, Mid, Pt};
use str0m::Rtc;

use crate::sdp_check;
use crate::{codec, AnswerError, Kind, OfferError, ProducerKey};

/// A publisher normally offers first (so its first offer never collides with ours); one that has not
/// offered this long after joining (no camera, denied permission) gets server offers anyway.
pub(crate) const PUBLISHER_OFFER_GRACE: Duration = Duration::from_secs(5);

/// The longest server offer: three quarters of the 128 KiB SDP limit enforced on every client SDP,
/// leaving room for an answer longer than its offer (a browser adds its own lines).
pub const MAX_OFFER_BYTES: usize = 96 * 1024;

/// A consumer m-line to put in the next server offer.
#[derive(Debug, Clone)]
pub(crate) struct PendingConsumer {
    /// The producer it will carry.
    pub producer: ProducerKey,
    /// Its kind.
    pub kind: Kind,
    /// msid stream id (the publishing participant).
    pub stream_id: String,
    /// msid track id (the producer's media id).
    pub track_id: String,
    /// The producer's codec (the one its publisher sends with); the m-line offers only the payload
    /// types compatible with it, each with its RTX.
    pub specs: Vec<CodecSpec>,
}

/// The server offer that awaits the client's answer.
struct Outstanding {
    pending: SdpPendingOffer,
    /// The offer as last sent.
    sdp: String,
    adds: Vec<(Mid, PendingConsumer)>,
    stops: Vec<Mid>,
    /// Its last answer was refused: send it again.
    resend: bool,
}

/// One session's negotiation. See the module docs.
pub(crate) struct Negotiation {
    publisher: bool,
    client_offered: bool,
    opened_at: Instant,
    negotiated_at: Option<Instant>,
    outstanding: Option<Outstanding>,
    queued_adds: Vec<PendingConsumer>,
    queued_stops: Vec<Mid>,
    bundle_tag: Option<Mid>,
    version: u64,
    max_offer_bytes: usize,
    /// The queued adds did not fit in an offer: wait for an answered stop before trying again.
    held: bool,
}

impl Negotiation {
    pub fn new(now: Instant, publisher: bool) -> Self {
        Negotiation {
            publisher,
            client_offered: false,
            opened_at: now,
            negotiated_at: None,
            outstanding: None,
            queued_adds: Vec::new(),
            queued_stops: Vec::new(),
            bundle_tag: None,
            version: 0,
            max_offer_bytes: MAX_OFFER_BYTES,
            held: false,
        }
    }

    /// A smaller offer bound, for tests.
    #[cfg(test)]
    pub fn limit_offers_to(&mut self, bytes: usize) {
        self.max_offer_bytes = bytes;
    }

    /// Whether the session may publish.
    pub fn publisher(&self) -> bool {
        self.publisher
    }

    /// Allow or forbid publishing (promote or demote in place). A promoted session already negotiated,
    /// so its server offers need not wait for its next client offer (a collision is resolved by the
    /// collision rule).
    pub fn set_publisher(&mut self, publisher: bool) {
        self.publisher = publisher;
        if publisher {
            self.client_offered = true;
        }
    }

    /// Whether no client offer was accepted yet (the `Rtc` may still be rebuilt).
    pub fn fresh(&self) -> bool {
        !self.client_offered && self.negotiated_at.is_none()
    }

    /// When the first SDP exchange completed; the connect timeout runs from here.
    pub fn negotiated_at(&self) -> Option<Instant> {
        self.negotiated_at
    }

    /// Whether a server offer awaits its answer.
    #[cfg(test)]
    pub fn outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Offer `consumer` in the next server offer.
    pub fn add(&mut self, consumer: PendingConsumer) {
        self.queued_adds.push(consumer);
    }

    /// Stop `mid` (its stream ended) in the next server offer.
    pub fn stop(&mut self, mid: Mid) {
        if !self.queued_stops.contains(&mid) {
            self.queued_stops.push(mid);
        }
    }

    /// When a publisher's wait for its own first offer ends, if it is waiting with something to offer.
    pub fn grace_deadline(&self) -> Option<Instant> {
        let waiting = self.publisher && !self.client_offered && !self.queued_adds.is_empty();
        waiting.then(|| self.opened_at + PUBLISHER_OFFER_GRACE)
    }

    /// The next server offer, if one is due: the refused offer again, or one with the queued adds
    /// (those whose producer is still `live`) and stops.
    pub fn poll_offer(&mut self, rtc: &mut Rtc, now: Instant, live: &dyn Fn(ProducerKey) -> bool) -> Option<String> {
        if let Some(o) = &mut self.outstanding {
            if !o.resend {
                return None;
            }
            o.resend = false;
            self.version += 1;
            o.sdp = sdp_check::with_version(&o.sdp, self.version);
            return Some(o.sdp.clone());
        }
        if self.grace_deadline().is_some_and(|t| now < t) {
            return None;
        }
        self.queued_adds.retain(|a| live(a.producer));
        let adds_due = !self.queued_adds.is_empty() && !self.held;
        if !adds_due && self.queued_stops.is_empty() {
            return None;
        }
        let stops = std::mem::take(&mut self.queued_stops);
        let keep = self.bundle_tag.filter(|t| stops.contains(t));
        let stops: Vec<Mid> = stops.into_iter().filter(|m| Some(*m) != self.bundle_tag).collect();
        // As many of the queued adds as fit, halving until they do. The trial offers carry the adds
        // alone: dropping their pending offer leaves the Rtc as it was, whereas str0m applies a stop
        // or a direction change at once, so those go in only once, below (and only shorten it).
        let mut n = if self.held { 0 } else { self.queued_adds.len() };
        let mut fitting = None;
        while n > 0 {
            match self.build_offer(rtc, &self.queued_adds[..n], &[], None) {
                Some((offer, ..)) if offer.len() > self.max_offer_bytes => n /= 2,
                built => {
                    fitting = built;
                    break;
                }
            }
        }
        if n < self.queued_adds.len() && !self.held {
            // Fewer may still fit after this one is answered; none: wait for a stop.
            self.held = n == 0;
            tracing::warn!(
                offered = n,
                waiting = self.queued_adds.len() - n,
                limit = self.max_offer_bytes,
                "a server offer with every stream would be too long: the rest wait for streams to end"
            );
        }
        if n == 0 && stops.is_empty() && keep.is_none() {
            return None;
        }
        // The trial that fit is the offer when there is nothing to stop (it is the newest offer
        // built, so its pending change set is still valid).
        let built = match fitting {
            Some(trial) if stops.is_empty() && keep.is_none() => Some(trial),
            _ => self.build_offer(rtc, &self.queued_adds[..n], &stops, keep),
        };
        let (offer, pending, mids) = built?;
        let adds: Vec<(Mid, PendingConsumer)> = mids.into_iter().zip(self.queued_adds.drain(..n)).collect();
        let sdp = self.produced(offer);
        self.outstanding = Some(Outstanding { pending, sdp: sdp.clone(), adds, stops, resend: false });
        Some(sdp)
    }

    /// A server offer adding `adds` and stopping `stops` (and `keep`, the bundle tag, made
    /// inactive): its text, the pending offer and the new m-lines' mids, in the order of `adds`.
    fn build_offer(
        &self,
        rtc: &mut Rtc,
        adds: &[PendingConsumer],
        stops: &[Mid],
        keep: Option<Mid>,
    ) -> Option<(String, SdpPendingOffer, Vec<Mid>)> {
        let pts: Vec<Vec<Pt>> = adds.iter().map(|a| codec::offer_pts(rtc.codec_config().params(), &a.specs)).collect();
        let mut api = rtc.sdp_api();
        let mut mids = Vec::with_capacity(adds.len());
        for (a, pts) in adds.iter().zip(pts) {
            let kind = codec::str0m_kind(a.kind);
            let mid =
                api.add_media(kind, Direction::SendOnly, Some(a.stream_id.clone()), Some(a.track_id.clone()), None);
            if !pts.is_empty() {
                api.restrict_media_pts(mid, &pts);
            }
            mids.push(mid);
        }
        for mid in stops {
            api.stop_media(*mid);
        }
        if let Some(mid) = keep {
            api.set_direction(mid, Direction::Inactive);
        }
        let (offer, pending) = api.apply()?;
        Some((offer.to_sdp_string(), pending, mids))
    }

    /// The checks of a client offer that need no parsing by str0m: a non-publisher that sends media,
    /// a collision, and an offer without an audio or video m-line Dais can forward.
    pub fn check_client_offer(&self, sdp: &str, limits: crate::StreamLimits) -> Result<(), OfferError> {
        let (audio, video) = sdp_check::sending_mlines(sdp);
        if !self.publisher && audio + video > 0 {
            return Err(OfferError::NotAPublisher);
        }
        if audio > limits.audio || video > limits.video {
            return Err(OfferError::TooManyStreams { audio, video, limits });
        }
        if self.outstanding.is_some() {
            return Err(OfferError::Collision);
        }
        if !sdp_check::has_usable_media(sdp) {
            return Err(OfferError::BadSdp("no audio or video m-line with a codec Dais forwards".into()));
        }
        Ok(())
    }

    /// Apply a client offer that passed [`Negotiation::check_client_offer`]; returns the answer.
    pub fn accept_client_offer(&mut self, rtc: &mut Rtc, now: Instant, offer: SdpOffer) -> Result<String, OfferError> {
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| OfferError::BadSdp(e.to_string()))?;
        let answer = answer.to_sdp_string();
        if sdp_check::bundle_tag(&answer).is_none() {
            return Err(OfferError::BadSdp("nothing in the offer could be accepted".into()));
        }
        self.client_offered = true;
        self.negotiated_at.get_or_insert(now);
        Ok(self.produced(answer))
    }

    /// Apply the client's answer to the outstanding offer; returns the consumer m-lines it accepted.
    pub fn client_answer(
        &mut self,
        rtc: &mut Rtc,
        now: Instant,
        sdp: &str,
    ) -> Result<Vec<(Mid, PendingConsumer)>, AnswerError> {
        let Some(o) = &mut self.outstanding else { return Err(AnswerError::Unexpected) };
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| AnswerError::BadSdp(e.to_string()))?;
        if let Err(e) = rtc.sdp_api().check_answer(&o.pending, &answer) {
            o.resend = true;
            return Err(AnswerError::BadSdp(e.to_string()));
        }
        let Some(o) = self.outstanding.take() else { return Err(AnswerError::Unexpected) };
        if let Err(e) = rtc.sdp_api().accept_answer(o.pending, answer) {
            // Checked above, so this is str0m's SCTP path only; offer everything again.
            self.queued_adds.extend(o.adds.into_iter().map(|(_, a)| a));
            self.queued_stops.extend(o.stops);
            return Err(AnswerError::BadSdp(e.to_string()));
        }
        self.negotiated_at.get_or_insert(now);
        if !o.stops.is_empty() {
            // Stopped m-lines' slots are recycled by the next adds: try the held ones again.
            self.held = false;
        }
        Ok(o.adds)
    }

    /// Stamp a produced SDP with the next version and remember its bundle tag.
    fn produced(&mut self, sdp: String) -> String {
        self.version += 1;
        self.bundle_tag = sdp_check::bundle_tag(&sdp).or(self.bundle_tag);
        sdp_check::with_version(&sdp, self.version)
    }
}
