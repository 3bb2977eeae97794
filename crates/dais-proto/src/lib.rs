//! Wire messages of the Dais signaling protocol and their stable error codes.
//!
//! Every WebSocket text frame carries one JSON object with a `type` field. [`ClientMessage`] is what a
//! participant sends, [`ServerMessage`] what the server sends back. [`parse_client`] turns a frame into a
//! message or into the [`ErrorCode`] the server answers with, so the server and every client agree on the
//! same classification of bad input. This crate depends on serde only; docs/protocol.md is its prose twin
//! and must change with it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The protocol version this crate speaks. A `join` with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest text frame the server reads; a larger one closes the socket with [`CLOSE_MESSAGE_TOO_BIG`].
/// Room for a browser's [`MAX_SDP_BYTES`] SDP after JSON escaping (each `\r\n` becomes four
/// characters, about 6 % more); an SDP of pathological characters may escape past it and close the
/// socket with 1009 instead of getting `bad_sdp`.
pub const MAX_MESSAGE_BYTES: usize = 192 * 1024;
/// Largest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 64;
/// Largest display name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Largest SDP the server accepts, in bytes. Browsers keep every stopped m-section in their answers
/// (about 3.7 KB per speaker who came and went, see docs/architecture.md), so this bounds how many
/// speakers one viewer can see come and go: about 35.
pub const MAX_SDP_BYTES: usize = 128 * 1024;
/// WebSocket close code sent when a frame exceeds [`MAX_MESSAGE_BYTES`] (RFC 6455 "message too big").
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// What a participant does in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes audio and video and receives every other speaker.
    Speaker,
    /// Publishes nothing and receives every speaker.
    Viewer,
}

/// Kind of a published media stream, as the wire spells it (`"audio"`, `"video"`). The media plane's
/// own kind is `dais_forward::MediaKind`; with the `forward` feature the two convert with `From`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// An Opus audio stream.
    Audio,
    /// A video stream (VP8, VP9, H.264 or AV1).
    Video,
}

#[cfg(feature = "forward")]
impl From<dais_forward::MediaKind> for MediaKind {
    fn from(k: dais_forward::MediaKind) -> Self {
        match k {
            dais_forward::MediaKind::Audio => MediaKind::Audio,
            dais_forward::MediaKind::Video => MediaKind::Video,
        }
    }
}

#[cfg(feature = "forward")]
impl From<MediaKind> for dais_forward::MediaKind {
    fn from(k: MediaKind) -> Self {
        match k {
            MediaKind::Audio => dais_forward::MediaKind::Audio,
            MediaKind::Video => dais_forward::MediaKind::Video,
        }
    }
}

/// One published stream as seen by other participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// Stable id of the stream in this room, e.g. `"m3"`. It is also the WebRTC track id (msid) of every
    /// copy the server sends, so a client maps an incoming track to this entry.
    pub id: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Codec name as negotiated with the publisher, e.g. `"opus"`, `"vp8"`, `"h264"`.
    pub codec: String,
    /// Whether the publisher has muted it.
    pub muted: bool,
}

/// A participant as seen by others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Participant id, e.g. `"p7"`. It is also the WebRTC stream id (msid) of the tracks the server sends
    /// for this participant.
    pub id: String,
    /// Display name given at join.
    pub name: String,
    /// Speaker or viewer.
    pub role: Role,
    /// The streams this participant publishes now.
    pub media: Vec<MediaInfo>,
}

/// The fixed set of reactions, in wire order (the order of [`Reaction::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// Clapping hands.
    Applause,
    /// A heart.
    Heart,
    /// Laughter.
    Laugh,
    /// Thumbs up.
    ThumbsUp,
    /// Surprise.
    Wow,
    /// A celebration (party popper).
    Celebrate,
}

impl Reaction {
    /// Every reaction.
    pub const ALL: [Reaction; 6] =
        [Reaction::Applause, Reaction::Heart, Reaction::Laugh, Reaction::ThumbsUp, Reaction::Wow, Reaction::Celebrate];

    /// Its position in [`Reaction::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Reactions counted per participant per second (`react`); see [`REACTION_BURST`].
pub const REACTIONS_PER_SECOND: f64 = 2.0;
/// Reactions a participant may send at once before [`REACTIONS_PER_SECOND`] applies.
pub const REACTION_BURST: f64 = 5.0;
/// How often, at most, the room's reaction totals go out (`reactions`), in milliseconds.
pub const REACTIONS_INTERVAL_MS: u64 = 500;
/// How often, at most, a room's chat goes out, in milliseconds: a `chat` (or `chat_deleted`,
/// `chat_policy`) after a quiet interval goes out at once, one sooner with the next batch.
pub const CHAT_INTERVAL_MS: u64 = 250;

/// What a moderator can do (`moderate`): the admin API's actions on one room, over the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModerateAction {
    /// Make a viewer a speaker in place (its raised hand is lowered).
    Promote,
    /// Make a speaker a viewer in place.
    Demote,
    /// Remove a participant (`kicked`, close 4001).
    Kick,
    /// Server-side mute (or unmute) of a participant's audio or video.
    Mute,
    /// Lower a viewer's raised hand.
    LowerHand,
    /// Delete a chat message for everyone.
    DeleteChat,
    /// Delete a question for everyone (open or answered).
    DeleteQuestion,
}

/// A raised hand, as speakers and moderators see it (`hands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaisedHand {
    /// The viewer.
    pub participant_id: String,
    /// Its display name.
    pub name: String,
    /// When it raised its hand, milliseconds since the Unix epoch (server clock).
    pub at_ms: u64,
}

/// Longest chat message, in bytes of UTF-8 (`chat`).
pub const MAX_CHAT_BYTES: usize = 500;
/// Chat messages a participant may send per second (`chat`); see [`CHAT_BURST`].
pub const CHATS_PER_SECOND: f64 = 0.5;
/// Chat messages a participant may send at once before [`CHATS_PER_SECOND`] applies.
pub const CHAT_BURST: f64 = 3.0;
/// Hand changes (a `raise_hand` that raises or lowers) a viewer may make per second; see [`HAND_BURST`].
pub const HANDS_PER_SECOND: f64 = 1.0;
/// Hand changes a viewer may make at once before [`HANDS_PER_SECOND`] applies.
pub const HAND_BURST: f64 = 4.0;
/// Chat messages a room keeps and sends to a participant who joins or resumes (`chat_history`).
pub const CHAT_HISTORY: usize = 50;

/// Longest question, in bytes of UTF-8 (`ask`).
pub const MAX_QUESTION_BYTES: usize = 300;
/// Questions a participant may ask per second (`ask`): one every 10 s; see [`ASK_BURST`].
pub const ASKS_PER_SECOND: f64 = 0.1;
/// Questions a participant may ask at once before [`ASKS_PER_SECOND`] applies.
pub const ASK_BURST: f64 = 2.0;
/// Votes (an `upvote`, or taking one back) a participant may cast per second; see [`VOTE_BURST`].
pub const VOTES_PER_SECOND: f64 = 2.0;
/// Votes a participant may cast at once before [`VOTES_PER_SECOND`] applies.
pub const VOTE_BURST: f64 = 10.0;
/// Open (unanswered) questions a room holds; an `ask` beyond is `questions_full` until one is
/// answered or deleted.
pub const MAX_OPEN_QUESTIONS: usize = 100;
/// Open questions a viewer's `questions` carries: the top ones by votes.
pub const QUESTIONS_SHOWN: usize = 10;
/// Answered questions every `questions` carries, the latest first.
pub const ANSWERED_SHOWN: usize = 5;
/// How often, at most, the room's questions go out (`questions`), in milliseconds.
pub const QUESTIONS_INTERVAL_MS: u64 = 1000;

/// Check a question text: as [`valid_chat`], but at most [`MAX_QUESTION_BYTES`].
pub fn valid_question(text: &str) -> bool {
    text.len() <= MAX_QUESTION_BYTES && valid_chat(text)
}

/// One question as `questions` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionEntry {
    /// Its id in the room, increasing from 1 (`upvote`, `answer_question` and moderation name it).
    pub id: u64,
    /// Who asked.
    pub participant_id: String,
    /// Their display name when they asked.
    pub name: String,
    /// The text, as sent.
    pub text: String,
    /// Upvotes: participants who voted for it (each counts once).
    pub votes: u64,
    /// When the server took it, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Longest room title, in bytes of UTF-8 (`joined.title`).
pub const MAX_TITLE_BYTES: usize = 120;

/// Check a room title: 1..=[`MAX_TITLE_BYTES`] bytes, not only whitespace, no control characters.
pub fn valid_title(title: &str) -> bool {
    !title.trim().is_empty() && title.len() <= MAX_TITLE_BYTES && !title.chars().any(char::is_control)
}

/// Check a chat text: 1..=[`MAX_CHAT_BYTES`] bytes, not only whitespace, no control characters
/// other than line feeds.
pub fn valid_chat(text: &str) -> bool {
    !text.trim().is_empty() && text.len() <= MAX_CHAT_BYTES && !text.chars().any(|c| c.is_control() && c != '\n')
}

/// One chat message as the room keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEntry {
    /// Its id in the room, increasing from 1 (moderation deletes by it).
    pub id: u64,
    /// Who wrote it.
    pub participant_id: String,
    /// Their display name when they wrote it.
    pub name: String,
    /// Their role when they wrote it.
    pub role: Role,
    /// The text, as sent.
    pub text: String,
    /// When the server took it, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A message from a participant to the server. Unknown fields are ignored (forward compatibility).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Enter a room. Must be the first message, and is accepted once per socket.
    Join {
        /// Room name, 1..=64 bytes of letters, digits, `-`, `_` or `.`.
        room: String,
        /// Display name, 1..=64 bytes, no control characters.
        name: String,
        /// Requested role.
        role: Role,
        /// Protocol version; must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// Join token (an HS256 JWT from `dais token`). Required when the server has a token secret;
        /// then the token's room must equal `room`, and its name and role replace `name` and `role`.
        /// Ignored by a server in open development mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Ask for the moderator grant (`moderate`, and seeing raised hands). Granted by a token
        /// whose `moderator` claim is true, whatever this says; in open development mode, by this.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        moderator: bool,
    },
    /// An SDP offer from the client (a speaker publishing its media).
    Offer {
        /// The SDP text.
        sdp: String,
    },
    /// The client's SDP answer to a server `offer`.
    Answer {
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate of the client; `candidate: null` or `""` ends the trickle.
    Candidate {
        /// The `candidate:` attribute value, as in `RTCIceCandidate.candidate`.
        candidate: Option<String>,
        /// The media id it belongs to (ignored: the session is bundled).
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<String>,
    },
    /// Announce that the client muted or unmuted its own audio or video.
    Mute {
        /// Which of its streams.
        kind: MediaKind,
        /// New state.
        muted: bool,
    },
    /// Keep-alive and round-trip probe; answered by `pong` with the same `id`.
    Ping {
        /// Echoed back.
        #[serde(default)]
        id: Option<u64>,
    },
    /// The size at which the client shows a video stream it receives, in device pixels (CSS pixels
    /// times `devicePixelRatio`). The server then sends it no larger a simulcast layer than that
    /// needs; `0x0` means the tile is hidden, which pauses that video (answered with
    /// `video_paused`, reason `hidden`). Streams without a size get the largest layer the link takes.
    /// Unknown or audio media are ignored.
    VideoSize {
        /// The stream's id (`media.id` of `media_published`).
        media: String,
        /// Width, 0 to 65,535 (larger values count as 65,535).
        width: u32,
        /// Height, 0 to 65,535.
        height: u32,
    },
    /// React to what is happening on stage (any role). Counted into the room's totals, which everyone
    /// receives as `reactions` at most twice a second; at most [`REACTIONS_PER_SECOND`] a second
    /// (bursts of [`REACTION_BURST`]) are counted per participant, and one beyond that is answered
    /// with `too_many_reactions`. A reaction outside the set is `bad_message`.
    React {
        /// Which one.
        reaction: Reaction,
    },
    /// Write to the room's chat (any role). Everyone in the room, the writer included, receives it as
    /// `chat`. Refused with `invalid_chat` (empty, longer than [`MAX_CHAT_BYTES`], control
    /// characters), `too_many_chats` (over [`CHATS_PER_SECOND`], bursts of [`CHAT_BURST`]),
    /// `chat_silenced` (an operator silenced this participant) or `chat_disabled` (an operator turned
    /// viewer chat off and this is a viewer). The socket stays in every case.
    Chat {
        /// The text.
        text: String,
    },
    /// A viewer raises (or lowers) its hand: speakers and moderators see the room's raised hands as
    /// `hands`, and the viewer is told its own state as `hand`. A speaker's is `bad_message`.
    RaiseHand {
        /// Raised (`true`) or lowered.
        raised: bool,
    },
    /// A moderator acts on the room (participants with the moderator grant only; others get
    /// `not_moderator`). `participant` names the target of `promote`, `demote`, `kick`, `mute` and
    /// `lower_hand`; `kind` the media of `mute` (`muted` defaults to true); `message` the chat message
    /// of `delete_chat`. A target not in the room is `unknown_target`; a missing field `bad_message`.
    Moderate {
        /// What to do.
        action: ModerateAction,
        /// The participant acted on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant: Option<String>,
        /// For `mute`: which media.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<MediaKind>,
        /// For `mute`: mute (`true`, the default) or unmute.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        muted: Option<bool>,
        /// For `delete_chat`: the message id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<u64>,
        /// For `delete_question`: the question id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        question: Option<u64>,
    },
    /// Ask the room a question (any role). Answered with `asked` carrying its id; everyone then sees
    /// it in `questions` if it ranks among the top ones. Refused with `invalid_question` (empty,
    /// longer than [`MAX_QUESTION_BYTES`], control characters), `too_many_questions` (over
    /// [`ASKS_PER_SECOND`], bursts of [`ASK_BURST`]), `questions_full` (the room holds
    /// [`MAX_OPEN_QUESTIONS`] open questions) or `chat_silenced` (an operator silenced this
    /// participant, which covers questions too).
    Ask {
        /// The question.
        text: String,
    },
    /// Vote for an open question, or take the vote back (`undo: true`). Each participant counts once
    /// per question: voting again, or taking back a vote never cast, changes nothing. A question that
    /// is not open (answered, deleted, never asked) is `unknown_question`; votes beyond
    /// [`VOTES_PER_SECOND`] (bursts of [`VOTE_BURST`]) are `too_many_votes`, not counted.
    Upvote {
        /// The question's id.
        question: u64,
        /// Take the vote back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        undo: bool,
    },
    /// Mark an open question answered (speakers and moderators only; others get `not_moderator`).
    /// It leaves the open list and heads the answered ones. `unknown_question` if it is not open.
    AnswerQuestion {
        /// The question's id.
        question: u64,
    },
    /// Leave the room; the server closes the socket afterwards.
    Leave,
    /// Take a joined participant over on this socket, after the previous one was lost: the first
    /// message on a new socket, instead of `join`. Answered with `resumed`, or with the error
    /// `resume_failed` (join afresh), `kicked` or `room_closed` (do not come back).
    Resume {
        /// The `resume_token` of the last `joined` or `resumed`.
        token: String,
        /// Protocol version; must equal [`PROTOCOL_VERSION`].
        version: u32,
    },
}

/// One entry of `joined.ice_servers`, shaped as WebRTC's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs, e.g. `turn:turn.example.org:3478?transport=tcp`.
    pub urls: Vec<String>,
    /// TURN user name (for minted credentials: `<expiry unix seconds>:<participant id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A message from the server to a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// The room joined.
        room: String,
        /// This participant's id.
        participant_id: String,
        /// The role granted.
        role: Role,
        /// Protocol version of the server.
        version: u32,
        /// The others in the room this participant can see, with what they publish: every speaker,
        /// and, for a speaker, every viewer too (viewers do not see each other).
        participants: Vec<ParticipantInfo>,
        /// Viewers in the room now, this participant included if it is one. `audience` updates it.
        /// Absent from servers before it existed, hence the default.
        #[serde(default)]
        viewers: u64,
        /// STUN and TURN servers for this participant's peer connection (`RTCConfiguration.iceServers`),
        /// TURN credentials minted for it; absent when the operator configured none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// Secret that lets a new socket take this participant over (`resume`) while the server
        /// keeps it after losing this socket. Absent from servers before resume existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        /// This participant holds the moderator grant (absent when not).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        moderator: bool,
        /// The event's title: the room's display name (from the server's configuration or a join
        /// token); absent when the room has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// The `resume` succeeded: this socket now carries the participant. What the client missed while it
    /// had no socket is not replayed; this is the room as it is now, to reconcile with.
    Resumed {
        /// The room.
        room: String,
        /// This participant's id (unchanged).
        participant_id: String,
        /// Its role now (an operator may have changed it meanwhile).
        role: Role,
        /// The others in the room it sees, with what they publish, as in `joined`.
        participants: Vec<ParticipantInfo>,
        /// Viewers in the room now.
        viewers: u64,
        /// The token for the next `resume` (each token works once).
        resume_token: String,
        /// `false`: the media session lives on; keep the peer connection (a server `offer` that was
        /// outstanding is sent again right after this). `true`: the media session ended meanwhile;
        /// close the peer connection, make a new one and negotiate as after `joined` (a speaker
        /// offers its media again). The participant's streams were unpublished for the others.
        media_reset: bool,
        /// As in `joined`, with fresh TURN credentials.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// As in `joined`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        moderator: bool,
        /// As in `joined`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// A server-initiated SDP offer (media to receive appeared or disappeared). Answer it with `answer`.
    Offer {
        /// The SDP text.
        sdp: String,
    },
    /// The server's answer to a client `offer`.
    Answer {
        /// The SDP text.
        sdp: String,
    },
    /// Someone this participant can see entered the room (or became visible: a viewer promoted to
    /// speaker, as seen by other viewers).
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone this participant could see left the room, was disconnected, or stopped being visible
    /// (a speaker demoted to viewer, as seen by viewers).
    ParticipantLeft {
        /// Their id.
        participant_id: String,
    },
    /// A participant started publishing a stream. A server `offer` that carries it follows.
    MediaPublished {
        /// Publisher's id.
        participant_id: String,
        /// The new stream.
        media: MediaInfo,
    },
    /// A stream ended. A server `offer` that marks it inactive follows.
    MediaUnpublished {
        /// Publisher's id.
        participant_id: String,
        /// The stream's id.
        media_id: String,
    },
    /// The server stopped sending this client one video stream: its downlink cannot carry even the
    /// lowest layer next to the audio (`reason` `"bandwidth"`), or the client hid its tile
    /// (`"hidden"`, after `video_size` 0x0). Audio keeps flowing. `video_resumed` follows when the
    /// video comes back, by itself once the link recovers.
    VideoPaused {
        /// The stream's id.
        media_id: String,
        /// `"bandwidth"` or `"hidden"`.
        reason: String,
    },
    /// A stream paused by `video_paused` is sent again, starting at a keyframe.
    VideoResumed {
        /// The stream's id.
        media_id: String,
    },
    /// A participant muted or unmuted a stream.
    MuteChanged {
        /// Publisher's id.
        participant_id: String,
        /// The stream's id.
        media_id: String,
        /// Audio or video.
        kind: MediaKind,
        /// New state.
        muted: bool,
    },
    /// The server is draining (shutting down gracefully): media keeps flowing, but the socket will be
    /// closed with 1001 when everyone has left or after `within_ms` at the latest. Clients should
    /// finish or move to another server. New joins meanwhile get the `draining` error.
    Draining {
        /// Upper bound until the server closes this socket, in milliseconds.
        within_ms: u64,
    },
    /// An operator changed a participant's role in place (promote to speaker, demote to viewer). Sent
    /// to the participant and to the room's speakers; viewers, who see only speakers, get
    /// `participant_joined` for a promoted one and `participant_left` for a demoted one instead. A
    /// promoted participant may now offer its media; a demoted one gets a server offer that stops the
    /// m-lines it published.
    RoleChanged {
        /// Whose role changed.
        participant_id: String,
        /// The new role.
        role: Role,
    },
    /// The number of viewers in the room changed. Sent to everyone in the room, at most once per
    /// second per participant, with the latest count.
    Audience {
        /// Viewers in the room now.
        viewers: u64,
    },
    /// Who is speaking changed (the server's active-speaker detector, from the RFC 6464 audio levels
    /// speakers send). Sent to everyone in the room, only on change, at most 4 times a second; a
    /// participant who joins while someone speaks gets the current state at once.
    Speaking {
        /// Participant ids of the speakers speaking now, most active first; empty in silence.
        participants: Vec<String>,
        /// The dominant speaker: who holds the floor, kept through silence; `null` until someone
        /// has spoken, and after the dominant speaker left.
        dominant: Option<String>,
    },
    /// The room's reactions of the last interval. Sent to everyone in the room, once per
    /// [`REACTIONS_INTERVAL_MS`] at most, and only after an interval in which someone reacted; a client
    /// that reads slowly gets the latest, never a backlog.
    Reactions {
        /// Reactions counted in that interval, by reaction (only those with a count).
        counts: BTreeMap<Reaction, u64>,
        /// Reactions counted since the room began, by reaction (only those with a count).
        totals: BTreeMap<Reaction, u64>,
    },
    /// A chat message, to everyone in the room (its writer too), in the order the server took them.
    Chat(ChatEntry),
    /// Sent right after `joined` and after `resumed`: the room's last [`CHAT_HISTORY`] chat messages,
    /// oldest first, and whether viewers may chat. `chat` messages that follow are newer.
    ChatHistory {
        /// The messages.
        messages: Vec<ChatEntry>,
        /// Whether viewers may chat now (speakers always may, unless silenced).
        viewer_chat: bool,
    },
    /// The room's raised hands, earliest first. To speakers and moderators only: on each change, and
    /// the current list when one joins (or becomes a speaker); a slow client gets the latest.
    Hands {
        /// The raised hands.
        participants: Vec<RaisedHand>,
    },
    /// This viewer's own hand went up or down (its `raise_hand`, a moderator's `lower_hand`, or its
    /// promotion to speaker).
    Hand {
        /// Raised now.
        raised: bool,
    },
    /// An operator deleted a chat message: remove it from view.
    ChatDeleted {
        /// Its id.
        id: u64,
    },
    /// An operator turned viewer chat on or off for the room.
    ChatPolicy {
        /// Whether viewers may chat now.
        viewer_chat: bool,
    },
    /// The room's questions: the open ones ranked (most votes first; equal votes, earliest first)
    /// and the latest answered ones. Sent at most once per [`QUESTIONS_INTERVAL_MS`] and only when
    /// what this participant sees changed; the current state when one joins or resumes, once the
    /// room has questions. Viewers get the top [`QUESTIONS_SHOWN`] open questions, speakers and
    /// moderators all of them; a slow client gets the latest, never a backlog.
    Questions {
        /// Open questions, ranked.
        open: Vec<QuestionEntry>,
        /// How many questions are open in the room (more than `open` holds for a viewer when the
        /// room has more than [`QUESTIONS_SHOWN`]).
        open_count: u64,
        /// The latest [`ANSWERED_SHOWN`] answered questions, the most recently answered first.
        answered: Vec<QuestionEntry>,
    },
    /// The room got its title after this participant joined (a later join token carried the first
    /// one).
    RoomTitle {
        /// The title.
        title: String,
    },
    /// This participant's `ask` was taken: the question's id.
    Asked {
        /// Its id.
        question: u64,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Something went wrong; see [`ErrorCode`] for whether the socket stays open.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable text, safe to show; never carries secrets.
        message: String,
        /// The `type` of the message that caused it, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
}

/// Stable error codes. Codes are never renamed; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a JSON object.
    BadJson,
    /// The `type` field is missing or names no known message.
    UnknownType,
    /// A known message with missing, extra or mistyped fields.
    BadMessage,
    /// A binary frame; the protocol is text only.
    BinaryNotSupported,
    /// A message that needs a joined participant arrived before `join`.
    NotJoined,
    /// A second `join` on the same socket.
    AlreadyJoined,
    /// The `version` in `join` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The room name is empty, too long or has characters outside the allowed set.
    InvalidRoom,
    /// The display name is empty, too long or has control characters.
    InvalidName,
    /// The room holds its maximum number of participants.
    RoomFull,
    /// The SDP could not be parsed or negotiated.
    BadSdp,
    /// A viewer offered to send media.
    ViewerCannotPublish,
    /// An `answer` arrived while the server had no offer outstanding.
    UnexpectedAnswer,
    /// The client sent an `offer` while a server offer was outstanding; answer that one first, then re-offer.
    OfferCollision,
    /// The server is shutting down and takes no new joins.
    Draining,
    /// The participant's media connection failed or timed out; the server ends the participant.
    MediaFailed,
    /// The participant sent nothing (not even a WebSocket pong) for too long; the socket is closed.
    IdleTimeout,
    /// A server `offer` went unanswered for too long (the client could not apply it); the socket is
    /// closed (1008) so the client can join again with a fresh peer connection.
    NegotiationTimeout,
    /// An operator muted this kind of media; the participant cannot unmute it.
    MutedByOperator,
    /// An operator removed this participant; the socket is closed (4001).
    Kicked,
    /// An operator closed the room; the socket is closed (4002).
    RoomClosed,
    /// An unexpected server-side failure; the detail is in the server log.
    Internal,
    /// The server requires a join token and the `join` carried none.
    TokenRequired,
    /// The join token's expiry has passed; get a fresh one.
    TokenExpired,
    /// The join token is malformed, forged (bad signature) or lacks a valid claim.
    TokenInvalid,
    /// The join token grants another room than the one in `join`.
    TokenWrongRoom,
    /// The join token's `nbf` (not before) is still ahead.
    TokenNotYetValid,
    /// The `resume` token is unknown, used or expired: the participant is gone. Join afresh.
    ResumeFailed,
    /// The offer sends more audio or video streams than a publisher may (by default 1 audio and 2
    /// video: a camera and a screen); nothing of it was applied.
    TooManyStreams,
    /// The client sent messages faster than allowed (20 a second, bursts of 200); the message was
    /// dropped. A flood (over 1,000 dropped within 10 s) closes the socket (1008).
    RateLimited,
    /// A `react` beyond the participant's reaction rate ([`REACTIONS_PER_SECOND`], bursts of
    /// [`REACTION_BURST`]); that reaction was not counted. The socket stays.
    TooManyReactions,
    /// A `chat` whose text is empty, longer than [`MAX_CHAT_BYTES`] or holds control characters other
    /// than line feeds; nothing was sent. The socket stays.
    InvalidChat,
    /// A `chat` beyond the participant's chat rate ([`CHATS_PER_SECOND`], bursts of [`CHAT_BURST`]);
    /// that message was not sent. The socket stays.
    TooManyChats,
    /// An operator silenced this participant's chat; the message was not sent. The socket stays.
    ChatSilenced,
    /// An operator turned viewer chat off for this room and the sender is a viewer; the message was
    /// not sent. The socket stays.
    ChatDisabled,
    /// A `raise_hand` that changes the hand beyond [`HANDS_PER_SECOND`] (bursts of [`HAND_BURST`]);
    /// the hand stays as it was. The socket stays.
    TooManyHandChanges,
    /// A `moderate` from a participant without the moderator grant. The socket stays.
    NotModerator,
    /// A `moderate` whose participant or message is not in the room. The socket stays.
    UnknownTarget,
    /// An `ask` whose text is empty, longer than [`MAX_QUESTION_BYTES`] or holds control characters
    /// other than line feeds; nothing was asked. The socket stays.
    InvalidQuestion,
    /// An `ask` beyond the participant's rate ([`ASKS_PER_SECOND`], bursts of [`ASK_BURST`]); nothing
    /// was asked. The socket stays.
    TooManyQuestions,
    /// An `ask` while the room holds [`MAX_OPEN_QUESTIONS`] open questions; ask again once some are
    /// answered. The socket stays.
    QuestionsFull,
    /// An `upvote` or `answer_question` (or a moderator's `delete_question`) naming no open question.
    /// The socket stays.
    UnknownQuestion,
    /// An `upvote` beyond the participant's vote rate ([`VOTES_PER_SECOND`], bursts of
    /// [`VOTE_BURST`]); the vote was not counted. The socket stays.
    TooManyVotes,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::ViewerCannotPublish => "viewer_cannot_publish",
            ErrorCode::UnexpectedAnswer => "unexpected_answer",
            ErrorCode::OfferCollision => "offer_collision",
            ErrorCode::Draining => "draining",
            ErrorCode::MediaFailed => "media_failed",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::NegotiationTimeout => "negotiation_timeout",
            ErrorCode::MutedByOperator => "muted_by_operator",
            ErrorCode::Kicked => "kicked",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::Internal => "internal",
            ErrorCode::TokenRequired => "token_required",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenWrongRoom => "token_wrong_room",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyReactions => "too_many_reactions",
            ErrorCode::InvalidChat => "invalid_chat",
            ErrorCode::TooManyChats => "too_many_chats",
            ErrorCode::ChatSilenced => "chat_silenced",
            ErrorCode::ChatDisabled => "chat_disabled",
            ErrorCode::TooManyHandChanges => "too_many_hand_changes",
            ErrorCode::NotModerator => "not_moderator",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::InvalidQuestion => "invalid_question",
            ErrorCode::TooManyQuestions => "too_many_questions",
            ErrorCode::QuestionsFull => "questions_full",
            ErrorCode::UnknownQuestion => "unknown_question",
            ErrorCode::TooManyVotes => "too_many_votes",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client frame was not turned into a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The code to answer with.
    pub code: ErrorCode,
    /// A safe explanation.
    pub message: String,
    /// The frame's `type`, when it had one.
    pub request: Option<String>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ParseError {}

const CLIENT_TYPES: &[&str] = &[
    "join",
    "offer",
    "answer",
    "candidate",
    "mute",
    "video_size",
    "react",
    "chat",
    "raise_hand",
    "moderate",
    "ask",
    "upvote",
    "answer_question",
    "ping",
    "leave",
    "resume",
];

/// Parse one client text frame, classifying failures as `bad_json`, `unknown_type` or `bad_message`.
pub fn parse_client(text: &str) -> Result<ClientMessage, ParseError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError {
        code: ErrorCode::BadJson,
        message: format!("not valid JSON: {e}"),
        request: None,
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ParseError {
            code: ErrorCode::BadJson,
            message: "a message must be a JSON object".into(),
            request: None,
        });
    };
    let ty = match obj.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        _ => {
            return Err(ParseError {
                code: ErrorCode::UnknownType,
                message: "missing string field `type`".into(),
                request: None,
            })
        }
    };
    if !CLIENT_TYPES.contains(&ty.as_str()) {
        let shown: String = ty.chars().take(32).collect();
        return Err(ParseError {
            code: ErrorCode::UnknownType,
            message: format!("unknown message type `{shown}`"),
            request: None,
        });
    }
    serde_json::from_value(value).map_err(|e| ParseError {
        code: ErrorCode::BadMessage,
        message: format!("invalid `{ty}` message: {e}"),
        request: Some(ty),
    })
}

/// Check a room name: 1..=[`MAX_ROOM_BYTES`] bytes of ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_BYTES
        && room.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Check a display name: 1..=[`MAX_NAME_BYTES`] bytes, no control characters, not only whitespace.
pub fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

impl ServerMessage {
    /// Shorthand for an [`ServerMessage::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>, request: Option<&str>) -> Self {
        ServerMessage::Error { code, message: message.into(), request: request.map(str::to_owned) }
    }

    /// Serialize to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no custom impls.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned())
    }
}

impl ClientMessage {
    /// The wire `type` of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Offer { .. } => "offer",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::VideoSize { .. } => "video_size",
            ClientMessage::React { .. } => "react",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::RaiseHand { .. } => "raise_hand",
            ClientMessage::Moderate { .. } => "moderate",
            ClientMessage::Ask { .. } => "ask",
            ClientMessage::Upvote { .. } => "upvote",
            ClientMessage::AnswerQuestion { .. } => "answer_question",
            ClientMessage::Leave => "leave",
            ClientMessage::Resume { .. } => "resume",
        }
    }

    /// Serialize to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_round_trips() {
        let m = parse_client(r#"{"type":"join","room":"r1","name":"Ann","role":"viewer","version":1}"#)
            .expect("valid join");
        assert_eq!(
            m,
            ClientMessage::Join {
                room: "r1".into(),
                name: "Ann".into(),
                role: Role::Viewer,
                version: 1,
                token: None,
                moderator: false
            }
        );
        assert!(!m.to_json().contains("moderator"), "no moderator field when not asked for");
        assert_eq!(parse_client(&m.to_json()).expect("round trip"), m);
        assert!(!m.to_json().contains("token"), "no token field when there is none");
        let t = parse_client(r#"{"type":"join","room":"r1","name":"Ann","role":"viewer","version":1,"token":"a.b.c"}"#)
            .expect("join with token");
        assert!(matches!(t, ClientMessage::Join { token: Some(ref s), .. } if s == "a.b.c"));
        assert_eq!(parse_client(&t.to_json()).expect("round trip"), t);
    }

    #[test]
    fn classification_of_bad_frames() {
        assert_eq!(parse_client("{not json").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(parse_client("[1,2]").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(parse_client(r#"{"x":1}"#).unwrap_err().code, ErrorCode::UnknownType);
        assert_eq!(parse_client(r#"{"type":"fly"}"#).unwrap_err().code, ErrorCode::UnknownType);
        let e = parse_client(r#"{"type":"join","room":"r"}"#).unwrap_err();
        assert_eq!((e.code, e.request.as_deref()), (ErrorCode::BadMessage, Some("join")));
        // Unknown fields are ignored, so newer clients can talk to older servers.
        assert_eq!(parse_client(r#"{"type":"leave","extra":1}"#), Ok(ClientMessage::Leave));
        assert_eq!(parse_client(r#"{"type":"ping","id":"x"}"#).unwrap_err().code, ErrorCode::BadMessage);
    }

    #[test]
    fn candidate_accepts_browser_shape_and_end_of_candidates() {
        let m =
            parse_client(r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 5 typ host","sdpMid":"0"}"#)
                .expect("candidate");
        assert!(matches!(m, ClientMessage::Candidate { candidate: Some(_), sdp_mid: Some(_) }));
        let end = parse_client(r#"{"type":"candidate","candidate":null}"#).expect("end");
        assert_eq!(end, ClientMessage::Candidate { candidate: None, sdp_mid: None });
    }

    #[test]
    fn server_messages_use_snake_case_tags() {
        let e = ServerMessage::error(ErrorCode::ViewerCannotPublish, "no", Some("offer")).to_json();
        assert_eq!(e, r#"{"type":"error","code":"viewer_cannot_publish","message":"no","request":"offer"}"#);
        let j = ServerMessage::MediaUnpublished { participant_id: "p1".into(), media_id: "m2".into() };
        assert!(j.to_json().starts_with(r#"{"type":"media_unpublished""#));
        assert_eq!(ServerMessage::Audience { viewers: 1200 }.to_json(), r#"{"type":"audience","viewers":1200}"#);
        let s = ServerMessage::Speaking { participants: vec!["p3".into()], dominant: None };
        assert_eq!(s.to_json(), r#"{"type":"speaking","participants":["p3"],"dominant":null}"#);
    }

    #[test]
    fn room_and_name_rules() {
        assert!(valid_room("panel-1.main_room"));
        assert!(!valid_room(""));
        assert!(!valid_room(&"a".repeat(10 * 1024)));
        assert!(!valid_room("a b"));
        assert!(valid_name("Ann Lee"));
        assert!(!valid_name("  "));
        assert!(!valid_name("a\nb"));
    }

    /// The fuzz target's property on pseudo-random frames built from protocol fragments, so it runs on
    /// stable in every `cargo test` (the real fuzzer lives in fuzz/).
    #[test]
    fn random_frames_parse_or_classify() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"type\"",
            ":",
            ",",
            "\"join\"",
            "\"offer\"",
            "\"sdp\"",
            "\"room\"",
            "null",
            "1",
            "-1e999",
            "\"\\u0000\"",
            "\"version\"",
            "true",
            "\"role\"",
            "\"viewer\"",
            "\"candidate\"",
            "\"upvote\"",
            "\"question\"",
            "\"undo\"",
            "\u{10ffff}",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for i in 0..(x % 24) {
                s.push_str(pieces[((x >> (i % 48)) as usize + i as usize) % pieces.len()]);
            }
            match parse_client(&s) {
                Ok(m) => assert_eq!(parse_client(&m.to_json()).ok(), Some(m)),
                Err(e) => {
                    assert!(matches!(e.code, ErrorCode::BadJson | ErrorCode::UnknownType | ErrorCode::BadMessage))
                }
            }
        }
    }

    #[test]
    fn questions_parse_and_serialize() {
        assert_eq!(
            parse_client(r#"{"type":"ask","text":"Why?"}"#).ok(),
            Some(ClientMessage::Ask { text: "Why?".into() })
        );
        assert_eq!(
            parse_client(r#"{"type":"upvote","question":3}"#).ok(),
            Some(ClientMessage::Upvote { question: 3, undo: false })
        );
        assert_eq!(
            parse_client(r#"{"type":"upvote","question":3,"undo":true}"#).ok(),
            Some(ClientMessage::Upvote { question: 3, undo: true })
        );
        assert_eq!(parse_client(r#"{"type":"upvote"}"#).err().map(|e| e.code), Some(ErrorCode::BadMessage));
        assert_eq!(
            parse_client(r#"{"type":"answer_question","question":4}"#).ok(),
            Some(ClientMessage::AnswerQuestion { question: 4 })
        );
        let q = QuestionEntry {
            id: 4,
            participant_id: "p2".into(),
            name: "Ada".into(),
            text: "Why?".into(),
            votes: 2,
            at_ms: 9,
        };
        let m = ServerMessage::Questions { open: vec![q], open_count: 1, answered: vec![] };
        assert_eq!(
            m.to_json(),
            r#"{"type":"questions","open":[{"id":4,"participant_id":"p2","name":"Ada","text":"Why?","votes":2,"at_ms":9}],"open_count":1,"answered":[]}"#
        );
        assert_eq!(ServerMessage::Asked { question: 4 }.to_json(), r#"{"type":"asked","question":4}"#);
        assert!(valid_question("a"));
        assert!(!valid_question(&"a".repeat(MAX_QUESTION_BYTES + 1)));
    }

    #[test]
    fn reactions_parse_from_the_fixed_set_and_totals_serialize_by_name() {
        assert_eq!(
            parse_client(r#"{"type":"react","reaction":"thumbs_up"}"#).ok(),
            Some(ClientMessage::React { reaction: Reaction::ThumbsUp })
        );
        assert_eq!(
            parse_client(r#"{"type":"react","reaction":"boo"}"#).err().map(|e| e.code),
            Some(ErrorCode::BadMessage)
        );
        assert_eq!(parse_client(r#"{"type":"react"}"#).err().map(|e| e.code), Some(ErrorCode::BadMessage));
        let m = ServerMessage::Reactions {
            counts: [(Reaction::Heart, 3)].into_iter().collect(),
            totals: [(Reaction::Applause, 1), (Reaction::Heart, 7)].into_iter().collect(),
        };
        assert_eq!(m.to_json(), r#"{"type":"reactions","counts":{"heart":3},"totals":{"applause":1,"heart":7}}"#);
        for (i, r) in Reaction::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn chat_parses_and_serializes_flat_with_its_checks() {
        assert_eq!(
            parse_client(r#"{"type":"chat","text":"hello"}"#).ok(),
            Some(ClientMessage::Chat { text: "hello".into() })
        );
        assert_eq!(parse_client(r#"{"type":"chat"}"#).err().map(|e| e.code), Some(ErrorCode::BadMessage));
        let entry = ChatEntry {
            id: 7,
            participant_id: "p3".into(),
            name: "Ada".into(),
            role: Role::Viewer,
            text: "hi".into(),
            at_ms: 1,
        };
        assert_eq!(
            ServerMessage::Chat(entry.clone()).to_json(),
            r#"{"type":"chat","id":7,"participant_id":"p3","name":"Ada","role":"viewer","text":"hi","at_ms":1}"#
        );
        let history = ServerMessage::ChatHistory { messages: vec![entry], viewer_chat: false };
        assert_eq!(serde_json::from_str::<ServerMessage>(&history.to_json()).ok(), Some(history));
        assert!(valid_chat("two\nlines"));
        assert!(!valid_chat("  \n "));
        assert!(!valid_chat("bell\u{7}"));
        assert!(valid_chat(&"é".repeat(MAX_CHAT_BYTES / 2)));
        assert!(!valid_chat(&"é".repeat(MAX_CHAT_BYTES / 2 + 1)));
    }

    #[test]
    fn hands_and_moderation_parse() {
        assert_eq!(
            parse_client(r#"{"type":"raise_hand","raised":true}"#).ok(),
            Some(ClientMessage::RaiseHand { raised: true })
        );
        assert_eq!(
            parse_client(r#"{"type":"moderate","action":"promote","participant":"p7"}"#).ok(),
            Some(ClientMessage::Moderate {
                action: ModerateAction::Promote,
                participant: Some("p7".into()),
                kind: None,
                muted: None,
                message: None,
                question: None
            })
        );
        assert_eq!(
            parse_client(r#"{"type":"moderate","action":"ban"}"#).err().map(|e| e.code),
            Some(ErrorCode::BadMessage)
        );
        let hands = ServerMessage::Hands {
            participants: vec![RaisedHand { participant_id: "p7".into(), name: "Bo".into(), at_ms: 5 }],
        };
        assert_eq!(
            hands.to_json(),
            r#"{"type":"hands","participants":[{"participant_id":"p7","name":"Bo","at_ms":5}]}"#
        );
    }

    #[test]
    fn every_code_spells_as_serde_does() {
        for c in [
            ErrorCode::BadJson,
            ErrorCode::OfferCollision,
            ErrorCode::ViewerCannotPublish,
            ErrorCode::Internal,
            ErrorCode::TokenRequired,
            ErrorCode::TokenExpired,
            ErrorCode::TokenInvalid,
            ErrorCode::TokenWrongRoom,
            ErrorCode::NegotiationTimeout,
            ErrorCode::ResumeFailed,
            ErrorCode::TooManyStreams,
            ErrorCode::RateLimited,
            ErrorCode::TooManyReactions,
            ErrorCode::InvalidChat,
            ErrorCode::TooManyChats,
            ErrorCode::ChatSilenced,
            ErrorCode::ChatDisabled,
            ErrorCode::TooManyHandChanges,
            ErrorCode::NotModerator,
            ErrorCode::UnknownTarget,
            ErrorCode::InvalidQuestion,
            ErrorCode::TooManyQuestions,
            ErrorCode::QuestionsFull,
            ErrorCode::UnknownQuestion,
            ErrorCode::TooManyVotes,
            ErrorCode::TokenNotYetValid,
        ] {
            assert_eq!(serde_json::to_string(&c).expect("code"), format!("\"{}\"", c.as_str()));
        }
    }
}
