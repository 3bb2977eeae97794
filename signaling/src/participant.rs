//! A joined participant as it outlives one WebSocket: its channels, its resume token, and the parked
//! state between a lost socket and a `resume` (or the end of the grace period).
//!
//! A [`Participant`] holds everything its connection loop selects on. When the socket is lost (closed
//! without `leave`, a transport error, a client that stopped reading or went silent), the task that
//! ran it keeps the participant *parked* for [`SignalingConfig::resume_grace`]: it stays in the room,
//! its media session keeps running, room news for it is dropped (a resume sends the room as it is
//! instead), a server offer it could not receive is kept to be sent again, and an operator's kick or
//! room close still ends it. A `resume` on a new socket, carrying the participant's one-time token,
//! takes it over through its takeover channel, from a parked task or from a live one whose socket
//! has not noticed yet. If the media session fails while parked, its streams are unpublished for the
//! others and the resume opens a new session under a new id (ids are never reused, so no stale route
//! can reach it).
//!
//! Bounds: one parked task per participant (they are members, so `max_participants` bounds them per
//! room); tokens of participants an operator ended are remembered for [`ENDED_MEMORY`], at most
//! [`MAX_ENDED`] of them, so a resume can say `kicked` rather than `resume_failed`.
//!
//! [`SignalingConfig::resume_grace`]: crate::SignalingConfig::resume_grace

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dais_proto::{ErrorCode, Role, ServerMessage, PROTOCOL_VERSION};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::admin::Control;
use crate::media_api::{MediaEvent, SessionMode};
use crate::room::{self, participant_wire_id};
use crate::Signaling;

/// How long the tokens of participants an operator ended are remembered.
pub(crate) const ENDED_MEMORY: Duration = Duration::from_secs(300);
/// Most such tokens remembered; the oldest go first.
pub(crate) const MAX_ENDED: usize = 10_000;
/// Longest wait for the task holding a participant to hand it over: longer than the longest write it
/// may be blocked in (the connection's 10 s send timeout), so a handover is never given up on while it
/// is merely slow.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// A request to hand the participant over to a new socket.
pub(crate) type Takeover = oneshot::Sender<Participant>;

/// Where a joined participant is, with what it was granted.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub room: String,
    pub id: u64,
    pub role: Role,
    /// The media-plane session; a new one (new id) after a reset.
    pub session: u64,
    /// It holds the moderator grant.
    pub moderator: bool,
}

impl Joined {
    /// Whether it sees what only speakers and moderators see: the raised hands and every open
    /// question (viewers see the top ones).
    pub fn backstage(&self) -> bool {
        self.role == Role::Speaker || self.moderator
    }
}

/// A joined participant and every channel that reaches it. See the module docs.
pub(crate) struct Participant {
    pub joined: Joined,
    pub notices: mpsc::Receiver<ServerMessage>,
    pub media: mpsc::UnboundedReceiver<MediaEvent>,
    /// Kept for a new media session after a reset.
    pub media_tx: mpsc::UnboundedSender<MediaEvent>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub takeover: mpsc::UnboundedReceiver<Takeover>,
    /// The current resume token (registered in [`Signaling`]'s table).
    pub token: String,
    /// The room's viewer count, watched while a socket carries the participant.
    pub audience: watch::Receiver<u64>,
    /// The count this client last heard.
    pub heard: u64,
    /// The room's latest `speaking` message (`None` before anyone spoke), watched while a socket
    /// carries the participant.
    pub speaking: watch::Receiver<Option<ServerMessage>>,
    /// The room's latest `reactions` message, watched likewise.
    pub reactions: watch::Receiver<Option<Bytes>>,
    /// The room's chat feed (shared serialized messages), read while a socket carries the
    /// participant; a new reader after a resume.
    pub feed: broadcast::Receiver<crate::chat::Batch>,
    /// Set when the room's news overflowed this participant's queue: its socket is closed as too slow.
    pub overflow: watch::Receiver<bool>,
    /// The room's latest `hands` message, read while it [`Joined::backstage`].
    pub hands: watch::Receiver<Option<ServerMessage>>,
    /// The room's two views of its questions (serialized `questions`): the viewers' top ones, read
    /// while it is not [`Joined::backstage`], and all of them, read while it is.
    pub questions: watch::Receiver<Option<Bytes>>,
    pub all_questions: watch::Receiver<Option<Bytes>>,
    /// The last server offer sent (or due), until it is answered.
    pub outstanding_offer: Option<String>,
    /// The media session ended while no socket carried the participant.
    pub media_gone: bool,
}

/// What a participant's connection watches in its room, taken at join under the rooms lock.
pub(crate) struct Feeds {
    pub audience: watch::Receiver<u64>,
    pub speaking: watch::Receiver<Option<ServerMessage>>,
    pub reactions: watch::Receiver<Option<Bytes>>,
    pub feed: broadcast::Receiver<crate::chat::Batch>,
    pub overflow: watch::Receiver<bool>,
    pub hands: watch::Receiver<Option<ServerMessage>>,
    pub questions: watch::Receiver<Option<Bytes>>,
    pub all_questions: watch::Receiver<Option<Bytes>>,
}

impl Feeds {
    /// What `room` publishes, as a newcomer's connection watches it (with the chat history up to its
    /// feed); the current speaking state, hands and questions count as news for it.
    pub fn of(room: &crate::room::Room, overflow: watch::Receiver<bool>) -> (Feeds, ServerMessage) {
        let mut speaking = room.speaking.subscribe();
        speaking.mark_changed();
        let mut hands = room.hands.subscribe();
        hands.mark_changed();
        let mut questions = room.questions.top.subscribe();
        questions.mark_changed();
        let mut all_questions = room.questions.all.subscribe();
        all_questions.mark_changed();
        let (feed, history) = room.chat.subscribe();
        let feeds = Feeds {
            audience: room.viewers.subscribe(),
            speaking,
            reactions: room.reactions.subscribe(),
            feed,
            overflow,
            hands,
            questions,
            all_questions,
        };
        (feeds, history)
    }
}

/// The resume tokens of live and parked participants, and those of participants an operator ended.
#[derive(Default)]
pub(crate) struct Resumable {
    live: HashMap<String, mpsc::UnboundedSender<Takeover>>,
    ended: HashMap<String, (ErrorCode, Instant)>,
    /// `ended`'s tokens, oldest first.
    ended_order: VecDeque<(Instant, String)>,
}

/// Why a resume did not take a participant over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeError {
    /// Unknown, used or expired token.
    Failed,
    /// An operator ended the participant (kicked, room closed).
    Ended(ErrorCode),
    /// Another protocol version.
    Version,
}

impl ResumeError {
    pub fn code(self) -> ErrorCode {
        match self {
            ResumeError::Failed => ErrorCode::ResumeFailed,
            ResumeError::Ended(code) => code,
            ResumeError::Version => ErrorCode::UnsupportedVersion,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ResumeError::Failed => {
                "no participant to resume (the grace period ended, or the token was used); join again"
            }
            ResumeError::Ended(_) => "an operator ended this participant",
            ResumeError::Version => "this server speaks protocol version 1",
        }
    }
}

/// A fresh unguessable token: 32 bytes from the OS, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: a token nobody can present, so this participant cannot be resumed.
        warn!("no OS randomness for a resume token; this participant cannot resume");
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Signaling {
    /// A new participant's channels around its membership; the token is registered.
    pub(crate) fn new_participant(
        &self,
        joined: Joined,
        notices: mpsc::Receiver<ServerMessage>,
        media: (mpsc::UnboundedSender<MediaEvent>, mpsc::UnboundedReceiver<MediaEvent>),
        feeds: Feeds,
    ) -> Participant {
        let Feeds { audience, speaking, reactions, feed, overflow, hands, questions, all_questions } = feeds;
        let (control_tx, control) = mpsc::unbounded_channel();
        self.register_control(joined.id, control_tx);
        let (token, takeover) = self.issue_token();
        let heard = *audience.borrow();
        Participant {
            joined,
            notices,
            media: media.1,
            media_tx: media.0,
            control,
            takeover,
            token,
            audience,
            heard,
            speaking,
            reactions,
            feed,
            overflow,
            hands,
            questions,
            all_questions,
            outstanding_offer: None,
            media_gone: false,
        }
    }

    fn issue_token(&self) -> (String, mpsc::UnboundedReceiver<Takeover>) {
        let token = new_token();
        let (tx, rx) = mpsc::unbounded_channel();
        if !token.is_empty() {
            if let Ok(mut r) = self.resumable.lock() {
                r.live.insert(token.clone(), tx);
            }
        }
        (token, rx)
    }

    /// The participant leaves for good: its token stops working, its control channel closes, and it
    /// leaves the room.
    pub(crate) fn finish(&self, p: Participant) {
        if let Ok(mut r) = self.resumable.lock() {
            r.live.remove(&p.token);
        }
        self.unregister_control(p.joined.id);
        self.leave(&p.joined);
    }

    /// An operator ended the participant: a later resume with its token hears why.
    pub(crate) fn remember_ended(&self, token: &str, code: ErrorCode) {
        let Ok(mut r) = self.resumable.lock() else { return };
        let now = Instant::now();
        // Closing a room of thousands ends each of them: O(1) per token, oldest evicted first.
        while let Some((at, _)) = r.ended_order.front() {
            if now.saturating_duration_since(*at) < ENDED_MEMORY && r.ended_order.len() < MAX_ENDED {
                break;
            }
            if let Some((_, old)) = r.ended_order.pop_front() {
                r.ended.remove(&old);
            }
        }
        if r.ended.insert(token.to_owned(), (code, now)).is_none() {
            r.ended_order.push_back((now, token.to_owned()));
        }
    }

    /// Keep a participant whose socket was lost until a resume takes it over, an operator ends it, the
    /// server shuts down, or the grace period passes; then it leaves.
    pub(crate) async fn park(&self, mut p: Participant) {
        let grace = self.config.resume_grace;
        if grace.is_zero() {
            self.finish(p);
            return;
        }
        info!(participant = %participant_wire_id(p.joined.id), grace_s = grace.as_secs(), "socket lost; parked");
        self.parked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut phase = self.phase.subscribe();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        // `Some`: the participant leaves; `None`: a new socket took it over.
        let leaving = loop {
            if *phase.borrow_and_update() == crate::Phase::Closing {
                break Some(p);
            }
            tokio::select! {
                Some(reply) = p.takeover.recv() => match reply.send(p) {
                    Ok(()) => break None,
                    // The resuming socket gave up waiting: stay parked.
                    Err(back) => p = back,
                },
                Some(ctl) = p.control.recv() => match ctl {
                    Control::Close { code, .. } => {
                        self.remember_ended(&p.token, code);
                        break Some(p);
                    }
                    Control::SetRole(role) => p.joined.role = role,
                },
                Some(ev) = p.media.recv() => self.parked_media_event(&mut p, ev),
                // News the client will not see: a resume sends the room as it is.
                Some(_) = p.notices.recv() => {}
                () = &mut deadline => {
                    info!(participant = %participant_wire_id(p.joined.id), "not resumed within the grace period");
                    break Some(p);
                }
                changed = phase.changed() => if changed.is_err() { break Some(p) },
            }
        };
        self.parked.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = leaving {
            self.finish(p);
        }
    }

    fn parked_media_event(&self, p: &mut Participant, ev: MediaEvent) {
        match ev {
            MediaEvent::Offer { sdp } => p.outstanding_offer = Some(sdp),
            MediaEvent::Disconnected => {
                info!(participant = %participant_wire_id(p.joined.id), "media session lost while parked");
                self.unpublish_all(&p.joined);
                self.media.close_session(p.joined.session);
                p.media_gone = true;
                p.outstanding_offer = None;
            }
            other => self.apply_media_event(&p.joined, other),
        }
    }

    /// Take the participant holding `token` over for a new socket: it gets a new token, and the reply
    /// (`resumed`, then the outstanding server offer if there is one) to send.
    pub(crate) async fn resume(
        &self,
        token: &str,
        version: u32,
    ) -> Result<(Participant, Vec<ServerMessage>), ResumeError> {
        if version != PROTOCOL_VERSION {
            return Err(ResumeError::Version);
        }
        let takeover = {
            let Ok(mut r) = self.resumable.lock() else { return Err(ResumeError::Failed) };
            if let Some((code, _)) = r.ended.get(token) {
                return Err(ResumeError::Ended(*code));
            }
            r.live.remove(token).ok_or(ResumeError::Failed)?
        };
        let (reply, rx) = oneshot::channel();
        let handed = match takeover.send(reply) {
            Ok(()) => tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        let Some(mut p) = handed else {
            // The participant ended meanwhile (an operator's end says so), or its task never answered:
            // the token stays good for a later try in that case.
            let Ok(mut r) = self.resumable.lock() else { return Err(ResumeError::Failed) };
            if let Some((code, _)) = r.ended.get(token) {
                return Err(ResumeError::Ended(*code));
            }
            if !takeover.is_closed() {
                r.live.insert(token.to_owned(), takeover);
            }
            return Err(ResumeError::Failed);
        };
        let (token, takeover) = self.issue_token();
        p.token = token;
        p.takeover = takeover;
        let Some(Snapshot { participants, viewers, role, history, title }) = self.resume_snapshot(&mut p) else {
            // The room went away under it (cannot happen while it is a member): it is gone.
            self.finish(p);
            return Err(ResumeError::Failed);
        };
        let media_reset = std::mem::take(&mut p.media_gone);
        p.joined.role = role;
        p.heard = viewers;
        info!(participant = %participant_wire_id(p.joined.id), media_reset, "resumed");
        let mut out = vec![ServerMessage::Resumed {
            room: p.joined.room.clone(),
            participant_id: participant_wire_id(p.joined.id),
            role,
            participants,
            viewers,
            resume_token: p.token.clone(),
            media_reset,
            ice_servers: self
                .config
                .ice
                .for_participant(&participant_wire_id(p.joined.id), std::time::SystemTime::now()),
            moderator: p.joined.moderator,
            title,
        }];
        out.push(history);
        if let Some(sdp) = &p.outstanding_offer {
            out.push(ServerMessage::Offer { sdp: sdp.clone() });
        }
        Ok((p, out))
    }

    /// Under the rooms lock: drop the news queued for the old socket, read the room as this participant
    /// sees it (and its chat, from a new reader of the feed), and open a new media session if the old
    /// one is gone (subscribed to what the room publishes, as at join).
    fn resume_snapshot(&self, p: &mut Participant) -> Option<Snapshot> {
        let Ok(mut rooms) = self.rooms.lock() else { return None };
        let room = rooms.by_name.get_mut(&p.joined.room)?;
        while p.notices.try_recv().is_ok() {}
        let me = room.members.get(&p.joined.id)?;
        let role = me.info.role;
        me.overflow.send_replace(false);
        p.overflow.mark_unchanged();
        let (feed, history) = room.chat.subscribe();
        p.feed = feed;
        // The raised hands and questions as they are now.
        p.hands.mark_changed();
        p.questions.mark_changed();
        p.all_questions.mark_changed();
        let participants = room
            .members
            .iter()
            .filter(|(id, m)| **id != p.joined.id && room::sees(role, m.info.role))
            .map(|(_, m)| m.info.clone())
            .collect();
        let viewers = *room.viewers.borrow();
        if p.media_gone {
            let session = self.next_id();
            p.joined.session = session;
            p.outstanding_offer = None;
            if let Some(me) = room.members.get_mut(&p.joined.id) {
                me.session = session;
            }
            let mode = if role == Role::Speaker { SessionMode::Speaker } else { SessionMode::Viewer };
            self.media.open_session(session, mode, p.media_tx.clone());
            for (id, m) in &room.members {
                if *id == p.joined.id {
                    continue;
                }
                for (producer, media) in m.producers.iter().zip(&m.info.media) {
                    self.media.subscribe(session, *producer, m.info.id.clone(), media.id.clone());
                }
            }
        }
        Some(Snapshot { participants, viewers, role, history, title: room.title().map(str::to_owned) })
    }
}

/// The room as a resumed participant sees it.
struct Snapshot {
    participants: Vec<dais_proto::ParticipantInfo>,
    viewers: u64,
    role: Role,
    /// Its `chat_history`.
    history: ServerMessage,
    title: Option<String>,
}

impl std::fmt::Debug for Resumable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumable").field("live", &self.live.len()).field("ended", &self.ended.len()).finish()
    }
}
