//! WHIP and WHEP sessions: participants that one HTTP exchange creates, with no WebSocket.
//!
//! A WHIP publisher (RFC 9725) enters its room as a speaker that receives nothing; a WHEP player of
//! one participant enters as a viewer whose media session is a player (it receives that speaker's
//! streams on the m-lines of its own offer). Either one is a member like any other: the room hears
//! it join and leave, an operator can kick or mute it, and its media reaches whoever receives it.
//! A task per session stands in for the connection: it applies the media plane's events, drains
//! the room news nobody reads, and ends the member when its media fails, an operator ends it, the
//! client deletes it or the server shuts down.
//!
//! Invariants kept here:
//! - A session is found by an unguessable resource id (32 random bytes, hex); that id is the
//!   capability to patch or delete it, as the resource URL is in RFC 9725.
//! - Its entity tag names its ICE session: it changes with every ICE restart, and a patch that names
//!   another one is refused (`PreconditionFailed`).
//! - At most [`MAX_HTTP_SESSIONS`] exist at once, and at most
//!   [`SignalingConfig::http_sessions_per_ip`](crate::SignalingConfig::http_sessions_per_ip) from one
//!   client address, so one client cannot take them all; an abandoned one (never connected) ends with its
//!   media session's connect timeout, so a flood of offers holds nothing for long.
//! - A session whose media ended on its own (clients close their peer connection before they send
//!   DELETE, and the DTLS close ends the media session at once) leaves the room at once, but its
//!   resource answers DELETE with success for [`ENDED_MEMORY`] more; then it is forgotten.

use std::collections::HashMap;
use std::sync::Arc;

use dais_proto::{ErrorCode, IceServer, ParticipantInfo, Role, MAX_SDP_BYTES};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn, Instrument};

use crate::admin::Control;
use crate::connection::{Entry, MediaStep};
use crate::media_api::{MediaEvent, OfferRejection};
use crate::participant::Joined;
use crate::room::{participant_wire_id, Receives};
use crate::token::VerifyError;
use crate::{Phase, Signaling};

/// Most WHIP and WHEP sessions at once.
pub const MAX_HTTP_SESSIONS: usize = 10_000;

/// How long a session that ended without DELETE still answers one.
pub const ENDED_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest trickle-ICE fragment accepted in a PATCH.
pub const MAX_FRAGMENT_BYTES: usize = 16 * 1024;

/// Which kind of HTTP session to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpSessionKind {
    /// WHIP: publish into the room as a speaker.
    Publish,
    /// WHEP: play what one speaker (by wire id or name) publishes.
    Play {
        /// The speaker's wire id (`p<N>`) or name, resolved to one speaker when the session opens.
        participant: String,
    },
}

/// A request to open a WHIP or WHEP session.
#[derive(Debug, Clone)]
pub struct HttpOffer {
    /// The room.
    pub room: String,
    /// WHIP or WHEP.
    pub kind: HttpSessionKind,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// The name asked for (open mode only; a token's name wins).
    pub name: Option<String>,
    /// The client's SDP offer.
    pub sdp: String,
    /// The client's address, for the per-address cap.
    pub client: Option<std::net::IpAddr>,
}

/// An opened session.
#[derive(Debug, Clone)]
pub struct HttpSession {
    /// The resource id (the last segment of its URL).
    pub resource: String,
    /// The entity tag of its ICE session, quoted.
    pub etag: String,
    /// The SDP answer.
    pub answer: String,
    /// STUN and TURN servers for the client (as `Link` headers).
    pub ice_servers: Vec<IceServer>,
    /// The participant it is in the room.
    pub participant_id: String,
}

/// Why a session was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The server is draining.
    #[error("the server is draining; try another one")]
    Draining,
    /// The room name is not valid.
    #[error("room names are 1-64 letters, digits, '-', '_' or '.'")]
    InvalidRoom,
    /// The name is not valid.
    #[error("names are 1-64 bytes without control characters")]
    InvalidName,
    /// The token is missing or refused.
    #[error("{0}")]
    Token(VerifyError),
    /// A WHIP offer with a token that does not grant the speaker role.
    #[error("publishing needs a token with the speaker role")]
    NotASpeaker,
    /// The room is full.
    #[error("the room is full")]
    RoomFull,
    /// A WHEP offer for a participant who is not a speaker in the room.
    #[error("no such speaker in the room")]
    ParticipantNotFound,
    /// A WHEP offer for a name that several speakers in the room hold.
    #[error("several speakers have that name: use the participant id")]
    Ambiguous,
    /// The server holds [`MAX_HTTP_SESSIONS`] already, or the client's address its share.
    #[error("too many WHIP and WHEP sessions")]
    TooMany,
    /// The offer could not be applied (the detail is for the log).
    #[error("the SDP offer could not be applied")]
    BadSdp(String),
    /// A WHEP offer that sends media.
    #[error("a WHEP offer may only receive")]
    CannotPublish,
    /// The offer sends more streams than a publisher may (the detail is safe to show).
    #[error("{0}")]
    TooManyStreams(String),
    /// Something failed inside the server.
    #[error("the session could not be opened")]
    Internal,
}

impl OpenError {
    /// The stable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::Draining => ErrorCode::Draining.as_str(),
            OpenError::InvalidRoom => ErrorCode::InvalidRoom.as_str(),
            OpenError::InvalidName => ErrorCode::InvalidName.as_str(),
            OpenError::Token(e) => e.code().as_str(),
            OpenError::NotASpeaker => "not_a_speaker",
            OpenError::RoomFull => ErrorCode::RoomFull.as_str(),
            OpenError::ParticipantNotFound => "participant_not_found",
            OpenError::Ambiguous => "participant_ambiguous",
            OpenError::TooMany => "too_many_sessions",
            OpenError::BadSdp(_) => ErrorCode::BadSdp.as_str(),
            OpenError::CannotPublish => ErrorCode::ViewerCannotPublish.as_str(),
            OpenError::TooManyStreams(_) => ErrorCode::TooManyStreams.as_str(),
            OpenError::Internal => ErrorCode::Internal.as_str(),
        }
    }
}

/// What a PATCH did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patched {
    /// Trickled candidates were taken (RFC 9725: 204).
    Trickled,
    /// The ICE session restarted: the new entity tag, and the server's fragment (RFC 9725: 200).
    Restarted {
        /// The new entity tag, quoted.
        etag: String,
        /// The server's `application/trickle-ice-sdpfrag`: its new ufrag, password and candidates.
        fragment: String,
    },
}

/// Why a PATCH was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// No such session (it ended, or never was).
    #[error("no such session")]
    NotFound,
    /// An ICE restart without `If-Match`.
    #[error("an ICE restart needs If-Match")]
    PreconditionRequired,
    /// `If-Match` names another ICE session than the current one.
    #[error("If-Match does not match the session's entity tag")]
    PreconditionFailed,
    /// The body is not a trickle-ICE fragment Dais can apply (the message says why).
    #[error("{0}")]
    Unprocessable(&'static str),
    /// The restart's offer was refused by the media plane (the detail is for the log).
    #[error("the ICE restart could not be applied")]
    RestartFailed(String),
}

impl PatchError {
    /// The stable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            PatchError::NotFound => "session_not_found",
            PatchError::PreconditionRequired => "precondition_required",
            PatchError::PreconditionFailed => "precondition_failed",
            PatchError::Unprocessable(_) => "bad_fragment",
            PatchError::RestartFailed(_) => ErrorCode::BadSdp.as_str(),
        }
    }
}

/// One live session in the table.
#[derive(Debug)]
pub(crate) struct Resource {
    session: u64,
    etag: String,
    /// The client's last full offer, the base of an ICE restart's offer.
    offer: String,
    /// Its ICE ufrag (a fragment with another one is a restart).
    ufrag: String,
    stage: Stage,
    /// Who opened it.
    client: Option<std::net::IpAddr>,
}

/// Where a session is in its life.
#[derive(Debug)]
enum Stage {
    /// Its offer is being applied (the client does not know it yet); it holds its place in the caps.
    Opening,
    /// Its task runs; a message here ends it.
    Live(oneshot::Sender<()>),
    /// It ended without DELETE at this instant; remembered for [`ENDED_MEMORY`].
    Ended(std::time::Instant),
}

impl Resource {
    fn live(&self) -> bool {
        matches!(self.stage, Stage::Live(_))
    }

    /// Whether it holds a place in the caps (it has not ended).
    fn counts(&self) -> bool {
        !matches!(self.stage, Stage::Ended(_))
    }
}

/// The sessions by resource id.
pub(crate) type Resources = HashMap<String, Resource>;

/// Forget the sessions that ended more than [`ENDED_MEMORY`] ago.
fn purge(table: &mut Resources) {
    table.retain(|_, r| !matches!(r.stage, Stage::Ended(t) if t.elapsed() >= ENDED_MEMORY));
}

/// The trickle-ICE fragment of a PATCH (RFC 8840 §9.2), as far as Dais uses it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fragment {
    ufrag: Option<String>,
    pwd: Option<String>,
    candidates: Vec<String>,
}

/// Read a fragment: session- and media-level `a=` lines and `m=` lines; anything else is refused.
fn parse_fragment(body: &str) -> Result<Fragment, PatchError> {
    if body.len() > MAX_FRAGMENT_BYTES {
        return Err(PatchError::Unprocessable("the fragment is too long"));
    }
    let mut f = Fragment::default();
    for line in body.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            f.ufrag = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            f.pwd = Some(v.trim().to_owned());
        } else if let Some(c) = line.strip_prefix("a=candidate:") {
            f.candidates.push(format!("candidate:{c}"));
        } else if !(line.starts_with("a=") || line.starts_with("m=")) {
            return Err(PatchError::Unprocessable("not a trickle-ice-sdpfrag: every line is a= or m="));
        }
    }
    if f.ufrag.as_deref().is_some_and(|u| u.is_empty() || u.contains(char::is_whitespace)) {
        return Err(PatchError::Unprocessable("a=ice-ufrag is empty or has spaces"));
    }
    Ok(f)
}

/// The value of the first `a=<attr>:` line of `sdp`.
fn attribute<'a>(sdp: &'a str, attr: &str) -> Option<&'a str> {
    let prefix = format!("a={attr}:");
    sdp.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
}

/// `offer` with new ICE credentials and no candidates (the ICE restart's offer, RFC 9725 §4.3.2).
fn restart_offer(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    for line in offer.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// The server's side of an ICE restart as a fragment: its credentials, and its candidates under
/// the first m-line of its answer (the bundle's transport).
fn answer_fragment(answer: &str) -> String {
    let mut out = String::new();
    if answer.lines().any(|l| l.trim_end_matches('\r') == "a=ice-lite") {
        out.push_str("a=ice-lite\r\n");
    }
    for attr in ["ice-ufrag", "ice-pwd"] {
        if let Some(v) = attribute(answer, attr) {
            out.push_str(&format!("a={attr}:{v}\r\n"));
        }
    }
    let mline = answer.lines().find(|l| l.starts_with("m=")).and_then(|l| l.split_whitespace().next());
    if let (Some(m), Some(mid)) = (mline, attribute(answer, "mid")) {
        out.push_str(&format!("{m} 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\n"));
        for c in answer.lines().map(|l| l.trim_end_matches('\r')).filter(|l| l.starts_with("a=candidate:")) {
            out.push_str(c);
            out.push_str("\r\n");
        }
        out.push_str("a=end-of-candidates\r\n");
    }
    out
}

/// A fresh random hex string of `bytes` bytes; `None` without OS randomness.
fn random_hex(bytes: usize) -> Option<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn new_etag() -> Option<String> {
    random_hex(8).map(|t| format!("\"{t}\""))
}

impl Signaling {
    /// Open a WHIP or WHEP session: check the token, enter the room, apply the offer. See the module
    /// docs.
    /// The open runs in its own task: a caller that gives up (a client that disconnects, a request
    /// timeout) cannot cut it half-way and leave a member or a table entry behind; a session nobody
    /// learned of then ends with its media's connect timeout.
    pub async fn open_http_session(self: &Arc<Self>, offer: HttpOffer) -> Result<HttpSession, OpenError> {
        let me = self.clone();
        tokio::spawn(async move { me.open_inner(offer).await }).await.unwrap_or(Err(OpenError::Internal))
    }

    async fn open_inner(self: &Arc<Self>, offer: HttpOffer) -> Result<HttpSession, OpenError> {
        if !self.is_ready() {
            return Err(OpenError::Draining);
        }
        if !dais_proto::valid_room(&offer.room) {
            return Err(OpenError::InvalidRoom);
        }
        if offer.sdp.len() > MAX_SDP_BYTES {
            return Err(OpenError::BadSdp("longer than the SDP limit".into()));
        }
        let publish = offer.kind == HttpSessionKind::Publish;
        let fallback = if publish { "whip" } else { "whep" };
        let (name, role, title) = match &self.config.tokens {
            None => (offer.name.clone().unwrap_or_else(|| fallback.to_owned()), Role::Speaker, None),
            Some(v) => {
                let g = v.verify(offer.token.as_deref(), &offer.room).map_err(OpenError::Token)?;
                (g.name, g.role, g.title)
            }
        };
        if publish && role != Role::Speaker {
            return Err(OpenError::NotASpeaker);
        }
        if !dais_proto::valid_name(&name) {
            return Err(OpenError::InvalidName);
        }
        let (resource, etag) = match (random_hex(32), new_etag()) {
            (Some(r), Some(e)) => (r, e),
            _ => return Err(OpenError::Internal),
        };
        let (end_tx, end_rx) = oneshot::channel();
        {
            let mut table = self.resources.lock().map_err(|_| OpenError::Internal)?;
            purge(&mut table);
            let live = || table.values().filter(|r| r.counts());
            let crowded = offer
                .client
                .is_some_and(|ip| live().filter(|r| r.client == Some(ip)).count() >= self.config.http_sessions_per_ip);
            if live().count() >= MAX_HTTP_SESSIONS || crowded {
                return Err(OpenError::TooMany);
            }
            // Held from here, so concurrent offers cannot pass the cap; filled in below.
            let held = Resource {
                session: 0,
                etag: etag.clone(),
                offer: String::new(),
                ufrag: String::new(),
                stage: Stage::Opening,
                client: offer.client,
            };
            table.insert(resource.clone(), held);
        }
        let opened = self.enter_http(&offer, name, title);
        let (joined, channels) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.forget_resource(&resource);
                return Err(e);
            }
        };
        let answer = match self.media.client_offer(joined.session, offer.sdp.clone()).await {
            Ok(a) => a,
            Err(e) => {
                self.forget_resource(&resource);
                self.end_http(&joined);
                return Err(match e {
                    OfferRejection::BadSdp(d) => OpenError::BadSdp(d),
                    OfferRejection::NotAPublisher => OpenError::CannotPublish,
                    OfferRejection::TooManyStreams { detail } => OpenError::TooManyStreams(detail),
                    OfferRejection::Collision | OfferRejection::Gone => OpenError::Internal,
                });
            }
        };
        let ufrag = attribute(&offer.sdp, "ice-ufrag").unwrap_or_default().to_owned();
        let live = match self.resources.lock() {
            Ok(mut table) => match table.get_mut(&resource) {
                Some(r) => {
                    *r = Resource {
                        session: joined.session,
                        etag: etag.clone(),
                        offer: offer.sdp,
                        ufrag,
                        stage: Stage::Live(end_tx),
                        client: offer.client,
                    };
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        if !live {
            self.end_http(&joined);
            return Err(OpenError::Internal);
        }
        let participant_id = participant_wire_id(joined.id);
        let ice_servers = self.config.ice.for_participant(&participant_id, std::time::SystemTime::now());
        let span = tracing::info_span!("http_session", room = %joined.room, participant = %participant_id);
        let me = self.clone();
        tokio::spawn(me.run_http(joined, channels, end_rx, resource.clone()).instrument(span));
        Ok(HttpSession { resource, etag, answer, ice_servers, participant_id })
    }

    /// Enter the room for an HTTP session (a WHEP target must be a speaker there already).
    fn enter_http(
        &self,
        offer: &HttpOffer,
        name: String,
        title: Option<String>,
    ) -> Result<(Joined, Channels), OpenError> {
        let (role, receives) = match &offer.kind {
            HttpSessionKind::Publish => (Role::Speaker, Receives::Nothing),
            HttpSessionKind::Play { participant } => {
                // The speaker is resolved once, to its wire id: a name names whoever holds it now.
                let rooms = self.rooms.lock().map_err(|_| OpenError::Internal)?;
                let speakers: Vec<&ParticipantInfo> = rooms
                    .by_name
                    .get(&offer.room)
                    .into_iter()
                    .flat_map(|r| r.members.values())
                    .map(|m| &m.info)
                    .filter(|i| i.role == Role::Speaker)
                    .collect();
                let by_id = speakers.iter().find(|i| i.id == *participant);
                let by_name: Vec<_> = speakers.iter().filter(|i| i.name == *participant).collect();
                let id = match (by_id, by_name.as_slice()) {
                    (Some(i), _) => i.id.clone(),
                    (None, [i]) => i.id.clone(),
                    (None, []) => return Err(OpenError::ParticipantNotFound),
                    (None, _) => return Err(OpenError::Ambiguous),
                };
                drop(rooms);
                (Role::Viewer, Receives::Of(id))
            }
        };
        let entry = Entry { room: offer.room.clone(), name, role, moderator: false, title, receives };
        let entered = self.enter(entry, |_, _| ()).map_err(|code| match code {
            ErrorCode::RoomFull => OpenError::RoomFull,
            _ => OpenError::Internal,
        })?;
        let (control_tx, control) = mpsc::unbounded_channel();
        self.register_control(entered.joined.id, control_tx);
        let channels = Channels { notices: entered.notices, media: entered.media.1, control };
        Ok((entered.joined, channels))
    }

    /// Remove an HTTP session's member, and its control channel.
    fn end_http(&self, joined: &Joined) {
        self.unregister_control(joined.id);
        self.leave(joined);
    }

    fn forget_resource(&self, resource: &str) -> Option<Resource> {
        let mut table = self.resources.lock().ok()?;
        purge(&mut table);
        table.remove(resource)
    }

    /// Stand in for the connection of an HTTP session until it ends.
    async fn run_http(
        self: Arc<Self>,
        mut j: Joined,
        mut ch: Channels,
        mut end: oneshot::Receiver<()>,
        resource: String,
    ) {
        let mut phase: watch::Receiver<Phase> = self.phase.subscribe();
        let closing = *phase.borrow_and_update() == Phase::Closing;
        let why = loop {
            if closing {
                break "shutdown";
            }
            tokio::select! {
                _ = &mut end => break "deleted",
                // Room news: nobody reads it.
                Some(_) = ch.notices.recv() => {}
                ev = ch.media.recv() => match ev {
                    None => break "media gone",
                    Some(MediaEvent::Offer { .. }) => warn!("a server offer for an HTTP session; ignored"),
                    Some(ev) => if let Some(MediaStep::Fail) = self.handle_media_event(ev, &j) { break "media failed" },
                },
                Some(ctl) = ch.control.recv() => match ctl {
                    Control::Close { code, .. } => break code.as_str(),
                    Control::SetRole(role) => j.role = role,
                },
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow_and_update() == Phase::Closing { break "shutdown" }
                }
            }
        };
        if let Ok(mut table) = self.resources.lock() {
            if let Some(r) = table.get_mut(&resource) {
                r.stage = Stage::Ended(std::time::Instant::now());
                r.offer = String::new();
            }
        }
        self.end_http(&j);
        info!(why, "HTTP session ended");
    }

    /// Apply a PATCH to session `resource`: trickled candidates, or an ICE restart. `if_match` is the
    /// request's `If-Match`.
    pub async fn patch_http_session(
        &self,
        resource: &str,
        if_match: Option<&str>,
        body: &str,
    ) -> Result<Patched, PatchError> {
        let fragment = parse_fragment(body)?;
        let (session, etag, offer, ufrag) = {
            let mut table = self.resources.lock().map_err(|_| PatchError::NotFound)?;
            purge(&mut table);
            let r = table.get(resource).filter(|r| r.live()).ok_or(PatchError::NotFound)?;
            (r.session, r.etag.clone(), r.offer.clone(), r.ufrag.clone())
        };
        if let Some(tag) = if_match.map(str::trim) {
            if tag != "*" && tag != etag {
                return Err(PatchError::PreconditionFailed);
            }
        }
        let restart = if_match.map(str::trim) == Some("*") || fragment.ufrag.as_ref().is_some_and(|u| *u != ufrag);
        if !restart {
            for c in &fragment.candidates {
                self.media.add_candidate(session, c.clone());
            }
            return Ok(Patched::Trickled);
        }
        if if_match.is_none() {
            return Err(PatchError::PreconditionRequired);
        }
        let (Some(new_ufrag), Some(pwd)) = (fragment.ufrag, fragment.pwd) else {
            return Err(PatchError::Unprocessable("an ICE restart needs a=ice-ufrag and a=ice-pwd"));
        };
        let sdp = restart_offer(&offer, &new_ufrag, &pwd);
        let answer = self.media.client_offer(session, sdp.clone()).await.map_err(|e| match e {
            OfferRejection::Gone => PatchError::NotFound,
            other => PatchError::RestartFailed(format!("{other:?}")),
        })?;
        for c in &fragment.candidates {
            self.media.add_candidate(session, c.clone());
        }
        let etag = new_etag().ok_or(PatchError::RestartFailed("no OS randomness".into()))?;
        let mut table = self.resources.lock().map_err(|_| PatchError::NotFound)?;
        let r = table.get_mut(resource).filter(|r| r.live()).ok_or(PatchError::NotFound)?;
        if if_match.map(str::trim).is_some_and(|t| t != "*" && t != r.etag) {
            // Another restart of the same ICE session won the race.
            return Err(PatchError::PreconditionFailed);
        }
        r.etag = etag.clone();
        r.offer = sdp;
        r.ufrag = new_ufrag;
        Ok(Patched::Restarted { etag, fragment: answer_fragment(&answer) })
    }

    /// End session `resource` (DELETE). `false`: there is no such session.
    pub fn delete_http_session(&self, resource: &str) -> bool {
        let Some(r) = self.forget_resource(resource) else { return false };
        // Ended already (and remembered), or still opening (it ends when it finds itself gone from
        // the table), or live, or just ending on its own: over either way.
        if let Stage::Live(end) = r.stage {
            let _ = end.send(());
        }
        true
    }

    /// WHIP and WHEP sessions now (not counting ended ones still remembered).
    pub fn http_session_count(&self) -> usize {
        self.resources.lock().map(|t| t.values().filter(|r| r.counts()).count()).unwrap_or(0)
    }
}

/// What an HTTP session's task reads.
struct Channels {
    notices: mpsc::Receiver<dais_proto::ServerMessage>,
    media: mpsc::UnboundedReceiver<MediaEvent>,
    control: mpsc::UnboundedReceiver<Control>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_takes_credentials_and_candidates_and_refuses_other_lines() {
        let body = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
                    a=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host\r\na=end-of-candidates\r\n";
        let f = parse_fragment(body).expect("a fragment");
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.candidates, ["candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host"]);
        assert!(matches!(parse_fragment("{\"json\": true}"), Err(PatchError::Unprocessable(_))));
        assert!(matches!(parse_fragment("v=0\r\n"), Err(PatchError::Unprocessable(_))));
        assert!(matches!(parse_fragment(&"a=x\r\n".repeat(5000)), Err(PatchError::Unprocessable(_))));
        assert!(matches!(parse_fragment("a=ice-ufrag:\r\n"), Err(PatchError::Unprocessable(_))));
    }

    #[test]
    fn a_restart_offer_has_the_new_credentials_and_no_candidates() {
        let offer = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                     a=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\na=candidate:1 1 udp 1 10.0.0.1 5 typ host\r\na=end-of-candidates\r\n";
        let r = restart_offer(offer, "new", "newpwd");
        assert_eq!(r.matches("a=ice-ufrag:new\r\n").count(), 2);
        assert_eq!(r.matches("a=ice-pwd:newpwd\r\n").count(), 2);
        assert!(!r.contains("old") && !r.contains("candidate"), "{r}");
    }

    #[test]
    fn the_answer_fragment_carries_the_servers_credentials_and_candidates() {
        let answer = "v=0\r\na=ice-lite\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:srv\r\n\
                      a=ice-pwd:srvpwd\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\nm=video 9 x\r\na=mid:1\r\n";
        let f = answer_fragment(answer);
        assert_eq!(
            f,
            "a=ice-lite\r\na=ice-ufrag:srv\r\na=ice-pwd:srvpwd\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
    }
}
