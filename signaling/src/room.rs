//! Room state: who is in which room, with what role and media, and who sees whom.
//!
//! Invariants: a participant id is in exactly one room; a room with no participants is removed; every
//! media entry of a member names a producer the media plane announced for that member's session.
//!
//! Visibility: everyone sees the speakers; only speakers see the viewers. A keynote's thousands of
//! viewers are an audience, not a roster: telling every viewer about every other viewer would cost
//! O(N²) messages over a ramp (2 million at 2,000 viewers) and a `joined` list that grows with the
//! room. Viewers learn how many they are from the room's viewer count instead, which each connection
//! watches and announces as `audience`, at most once per interval.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use dais_forward::speech::Detector;

use crate::chat::{self, Chat};
use crate::questions::{Asker, Questions};
use crate::rate::Bucket;
use dais_proto::{ErrorCode, MediaInfo, ParticipantInfo, Reaction, Role, ServerMessage};
use tokio::sync::{mpsc, watch};

/// Which of the room's streams a member's session is subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Receives {
    /// Everything the others publish (a WebSocket participant).
    All,
    /// Nothing (a WHIP publisher).
    Nothing,
    /// What the speaker with this wire id publishes (a WHEP player of one participant).
    Of(String),
}

impl Receives {
    /// Whether a member receiving this is subscribed to what `publisher` publishes.
    pub fn wants(&self, publisher: &ParticipantInfo) -> bool {
        match self {
            Receives::All => true,
            Receives::Nothing => false,
            Receives::Of(id) => publisher.role == Role::Speaker && publisher.id == *id,
        }
    }
}

/// One participant inside a room.
#[derive(Debug)]
pub(crate) struct Member {
    pub info: ParticipantInfo,
    pub session: u64,
    /// What its session is subscribed to.
    pub receives: Receives,
    /// Producer id of each entry of `info.media`, same order.
    pub producers: Vec<u64>,
    /// Mute state announced by the participant, applied to streams it publishes later.
    pub audio_muted: bool,
    /// See `audio_muted`.
    pub video_muted: bool,
    /// Muted by an operator (admin API): streams of that kind stay paused, also ones published later,
    /// and the participant's own `mute{muted:false}` is refused.
    pub operator_muted: [bool; 2],
    /// Its queue of room news ([`NOTICE_QUEUE`] long). When it is full the news is dropped and
    /// `overflow` set: its connection then closes as too slow, and the client's resume brings the
    /// room as it is.
    pub notices: mpsc::Sender<ServerMessage>,
    pub overflow: watch::Sender<bool>,
    /// Its reaction allowance ([`dais_proto::REACTIONS_PER_SECOND`]).
    pub reactions: Bucket,
    /// Its chat allowance ([`dais_proto::CHATS_PER_SECOND`]).
    pub chats: Bucket,
    /// Its allowance of hand changes (`raise_hand`).
    pub hand_changes: Bucket,
    /// Its allowance of questions (`ask`) and of votes (`upvote`).
    pub asks: Bucket,
    pub votes: Bucket,
    /// An operator silenced its chat.
    pub chat_silenced: bool,
    /// It holds the moderator grant.
    pub moderator: bool,
    /// When its hand went up (milliseconds since the Unix epoch), while it is raised.
    pub hand: Option<u64>,
}

/// Room news one member may have queued. Viewers only hear of speakers (a handful); a speaker hears
/// of every viewer who joins or leaves, so this covers a ramp of thousands of viewers arriving faster
/// than a healthy speaker's socket drains them (each notice is about 150 bytes: at most 600 KiB).
pub(crate) const NOTICE_QUEUE: usize = 4096;

impl Member {
    /// Queue `msg` for this member; a full queue drops it and marks the member too slow.
    pub fn notify(&self, msg: ServerMessage) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.notices.try_send(msg) {
            self.overflow.send_replace(true);
        }
    }
}

/// One room.
#[derive(Debug)]
pub(crate) struct Room {
    pub members: BTreeMap<u64, Member>,
    /// Viewers among `members`. Every member's connection watches it and sends `audience`.
    pub viewers: watch::Sender<u64>,
    /// The active-speaker detector, fed by the speakers' connections with their audio activity.
    speech: Detector<u64>,
    /// Its latest `speaking` message. Every member's connection watches it and sends it on change
    /// (the detector already limits changes to 4 a second; a slow client just sees the latest).
    pub speaking: watch::Sender<Option<ServerMessage>>,
    /// Reactions counted in the current interval and since the room began, by [`Reaction::index`].
    reacted: [u64; Reaction::ALL.len()],
    reacted_total: [u64; Reaction::ALL.len()],
    /// Whether a flush of `reacted` is scheduled.
    flush_due: bool,
    /// The latest `reactions` message, watched by every member's connection like `speaking`.
    pub reactions: watch::Sender<Option<Bytes>>,
    /// The chat, whose feed every member's connection reads.
    pub chat: Chat,
    /// The latest `hands` message (raised hands), watched by speakers' and moderators' connections.
    pub hands: watch::Sender<Option<ServerMessage>>,
    /// The questions, whose two views the members' connections watch.
    pub questions: Questions,
    /// The event's title (`joined.title`): set once, from the configuration or the first join
    /// token that carries one.
    title: Option<String>,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            members: BTreeMap::new(),
            viewers: watch::Sender::new(0),
            speech: Detector::new(),
            speaking: watch::Sender::new(None),
            reacted: [0; Reaction::ALL.len()],
            reacted_total: [0; Reaction::ALL.len()],
            flush_due: false,
            reactions: watch::Sender::new(None),
            chat: Chat::default(),
            hands: watch::Sender::new(None),
            questions: Questions::default(),
            title: None,
        }
    }
}

/// Whether a participant with role `watcher` sees one with role `subject`: speakers are seen by
/// everyone, viewers only by speakers.
pub(crate) fn sees(watcher: Role, subject: Role) -> bool {
    subject == Role::Speaker || watcher == Role::Speaker
}

impl Room {
    /// Speaker `id` sent a window of audio `activity` (percent voiced). A muted speaker counts as
    /// silent whatever its packets say.
    pub fn hear(&mut self, now: Instant, id: u64, activity: u8) {
        let Some(m) = self.members.get(&id) else { return };
        if m.info.role != Role::Speaker {
            return;
        }
        let muted = m.audio_muted || m.operator_muted[kind_index(dais_proto::MediaKind::Audio)];
        self.speech.push(now, &id, if muted { 0 } else { activity });
        self.announce_speech(now);
    }

    /// `id` no longer speaks here (it left, or is no longer a speaker).
    pub fn forget_speaker(&mut self, now: Instant, id: u64) {
        self.speech.remove(&id);
        self.announce_speech(now);
    }

    /// Member `id` reacted at `now`. `Ok(true)`: counted, and the caller must schedule
    /// [`Room::flush_reactions`] in [`dais_proto::REACTIONS_INTERVAL_MS`] (none is due yet);
    /// `Ok(false)`: counted, a flush is already due; `Err`: over its allowance, not counted.
    pub fn react(&mut self, now: Instant, id: u64, reaction: Reaction) -> Result<bool, ErrorCode> {
        let Some(m) = self.members.get_mut(&id) else { return Ok(false) };
        if !m.reactions.take(now) {
            return Err(ErrorCode::TooManyReactions);
        }
        self.reacted[reaction.index()] += 1;
        self.reacted_total[reaction.index()] += 1;
        Ok(!std::mem::replace(&mut self.flush_due, true))
    }

    /// Member `id` writes `text` to the chat at `now`: checked (text, silence, viewer policy, then its
    /// allowance, so a refused message costs none of it) and posted. Returns the message id.
    pub fn chat(&mut self, now: Instant, id: u64, text: String) -> Result<u64, ErrorCode> {
        chat::check_text(&text)?;
        let Some(m) = self.members.get_mut(&id) else { return Err(ErrorCode::NotJoined) };
        let writer = chat::Writer {
            participant_id: &m.info.id,
            name: &m.info.name,
            role: m.info.role,
            silenced: m.chat_silenced,
            moderator: m.moderator,
        };
        self.chat.may_post(&writer)?;
        if !m.chats.take(now) {
            return Err(ErrorCode::TooManyChats);
        }
        Ok(self.chat.post(now, &writer, text))
    }

    /// Member `id` asks `text` at `now`: checked (text, silence, room, then its allowance, so a refused
    /// question costs none of it) and taken. Returns the question's id; the caller schedules the
    /// questions' flush ([`Questions::needs_timer`]).
    pub fn ask(&mut self, now: Instant, id: u64, text: String) -> Result<u64, ErrorCode> {
        if !dais_proto::valid_question(&text) {
            return Err(ErrorCode::InvalidQuestion);
        }
        let Some(m) = self.members.get_mut(&id) else { return Err(ErrorCode::NotJoined) };
        if m.chat_silenced {
            return Err(ErrorCode::ChatSilenced);
        }
        self.questions.may_ask()?;
        if !m.asks.take(now) {
            return Err(ErrorCode::TooManyQuestions);
        }
        let asker = Asker { participant_id: &m.info.id, name: &m.info.name };
        Ok(self.questions.ask(&asker, text, chat::unix_ms()))
    }

    /// Member `id` votes for `question` at `now` (or takes its vote back), within its allowance.
    pub fn upvote(&mut self, now: Instant, id: u64, question: u64, up: bool) -> Result<(), ErrorCode> {
        let Some(m) = self.members.get_mut(&id) else { return Err(ErrorCode::NotJoined) };
        if !m.votes.take(now) {
            return Err(ErrorCode::TooManyVotes);
        }
        self.questions.vote(question, id, up)
    }

    /// The room's title.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// Give the room `title` if it has none yet; everyone in it hears `room_title`. `false`: it
    /// already had one (which stays).
    pub fn entitle(&mut self, title: &str) -> bool {
        if self.title.is_some() {
            return false;
        }
        self.title = Some(title.to_owned());
        for m in self.members.values() {
            m.notify(ServerMessage::RoomTitle { title: title.to_owned() });
        }
        true
    }

    /// The member whose wire id (`p<N>`) is `participant`.
    pub fn find(&self, participant: &str) -> Option<u64> {
        self.members.iter().find(|(_, m)| m.info.id == participant).map(|(id, _)| *id)
    }

    /// Viewer `id` raises or lowers its hand at `now` (asking for the state it is in changes
    /// nothing). It hears `hand`, speakers and moderators the new `hands`. A change costs some of its allowance (each one
    /// rebuilds the room's list of hands: the allowance bounds that work per viewer).
    pub fn raise_hand(&mut self, now: Instant, id: u64, raised: bool) -> Result<(), ErrorCode> {
        let Some(m) = self.members.get_mut(&id) else { return Err(ErrorCode::NotJoined) };
        if m.info.role != Role::Viewer {
            return Err(ErrorCode::BadMessage);
        }
        if m.hand.is_some() == raised {
            return Ok(());
        }
        if !m.hand_changes.take(now) {
            return Err(ErrorCode::TooManyHandChanges);
        }
        m.hand = raised.then(chat::unix_ms);
        m.notify(ServerMessage::Hand { raised });
        self.announce_hands();
        Ok(())
    }

    /// Lower `id`'s hand if it is raised (a moderator's doing, or its promotion).
    pub fn lower_hand(&mut self, id: u64) {
        if let Some(m) = self.members.get_mut(&id) {
            if m.hand.take().is_some() {
                m.notify(ServerMessage::Hand { raised: false });
                self.announce_hands();
            }
        }
    }

    /// Publish the raised hands, earliest first.
    pub fn announce_hands(&mut self) {
        let mut hands: Vec<_> = self
            .members
            .values()
            .filter_map(|m| {
                let at_ms = m.hand?;
                Some(dais_proto::RaisedHand { participant_id: m.info.id.clone(), name: m.info.name.clone(), at_ms })
            })
            .collect();
        hands.sort_by_key(|h| h.at_ms);
        self.hands.send_replace(Some(ServerMessage::Hands { participants: hands }));
    }

    /// The interval is over: its counts (and the running totals) go to everyone as one `reactions`
    /// message in the room's watch, and a new interval starts.
    pub fn flush_reactions(&mut self) {
        self.flush_due = false;
        let by_name = |counts: &[u64; Reaction::ALL.len()]| -> BTreeMap<Reaction, u64> {
            Reaction::ALL.iter().zip(counts).filter(|(_, n)| **n > 0).map(|(r, n)| (*r, *n)).collect()
        };
        let msg = ServerMessage::Reactions { counts: by_name(&self.reacted), totals: by_name(&self.reacted_total) };
        self.reacted = [0; Reaction::ALL.len()];
        // Chat that waits for its batch goes now, so that connections write both at once.
        self.chat.publish(Instant::now());
        self.reactions.send_replace(Some(Bytes::from(msg.to_json())));
    }

    fn announce_speech(&mut self, now: Instant) {
        if let Some(s) = self.speech.poll(now) {
            let msg = ServerMessage::Speaking {
                participants: s.speaking.iter().map(|id| participant_wire_id(*id)).collect(),
                dominant: s.dominant.map(participant_wire_id),
            };
            self.speaking.send_replace(Some(msg));
        }
    }

    /// Send news about a participant whose role is `subject` to every member except `except` who
    /// sees it.
    pub fn broadcast_about(&self, subject: Role, except: u64, msg: &ServerMessage) {
        for (id, m) in &self.members {
            if *id != except && sees(m.info.role, subject) {
                m.notify(msg.clone());
            }
        }
    }

    /// One more viewer (`true`) or one fewer.
    pub fn count_viewer(&self, joined: bool) {
        self.viewers.send_modify(|n| *n = if joined { *n + 1 } else { n.saturating_sub(1) });
    }
}

/// Every room by name.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    pub by_name: HashMap<String, Room>,
}

/// What an operator or a test sees of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// Room name.
    pub name: String,
    /// Its participants.
    pub participants: Vec<ParticipantInfo>,
}

impl Rooms {
    pub fn snapshot(&self) -> Vec<RoomSnapshot> {
        let mut v: Vec<RoomSnapshot> = self
            .by_name
            .iter()
            .map(|(name, r)| RoomSnapshot {
                name: name.clone(),
                participants: r.members.values().map(|m| m.info.clone()).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Wire id of a participant.
pub(crate) fn participant_wire_id(id: u64) -> String {
    format!("p{id}")
}

/// Wire id of a producer.
pub(crate) fn media_wire_id(producer: u64) -> String {
    format!("m{producer}")
}

/// The producer of a stream id made by [`media_wire_id`].
pub(crate) fn parse_media_wire_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix('m')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A fresh member record.
pub(crate) fn member(
    id: u64,
    name: String,
    role: Role,
    moderator: bool,
    notices: mpsc::Sender<ServerMessage>,
    receives: Receives,
) -> Member {
    Member {
        info: ParticipantInfo { id: participant_wire_id(id), name, role, media: Vec::<MediaInfo>::new() },
        session: id,
        receives,
        producers: Vec::new(),
        audio_muted: false,
        video_muted: false,
        operator_muted: [false; 2],
        notices,
        overflow: watch::Sender::new(false),
        reactions: Bucket::new(Instant::now(), dais_proto::REACTIONS_PER_SECOND, dais_proto::REACTION_BURST),
        chats: Bucket::new(Instant::now(), dais_proto::CHATS_PER_SECOND, dais_proto::CHAT_BURST),
        hand_changes: Bucket::new(Instant::now(), dais_proto::HANDS_PER_SECOND, dais_proto::HAND_BURST),
        asks: Bucket::new(Instant::now(), dais_proto::ASKS_PER_SECOND, dais_proto::ASK_BURST),
        votes: Bucket::new(Instant::now(), dais_proto::VOTES_PER_SECOND, dais_proto::VOTE_BURST),
        chat_silenced: false,
        moderator,
        hand: None,
    }
}

/// Index of a kind in per-kind arrays.
pub(crate) fn kind_index(kind: dais_proto::MediaKind) -> usize {
    match kind {
        dais_proto::MediaKind::Audio => 0,
        dais_proto::MediaKind::Video => 1,
    }
}
