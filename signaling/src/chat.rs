//! A room's chat: its last messages, who may write, and the one feed every member's connection reads.
//!
//! Each message is serialized once, as the JSON text of its `chat` message, and that one buffer goes
//! to every connection through a [`broadcast`] channel: at 2,000 viewers a message costs 2,000
//! reference-count increments, not 2,000 serializations or copies. Moderation (`chat_deleted`,
//! `chat_policy`) rides the same feed, so every client sees it in order with the messages.
//!
//! Bounds: the room keeps [`CHAT_HISTORY`] messages; the feed holds [`FEED_CAPACITY`] buffers, and a
//! connection that falls further behind than that (its client does not read) is closed with
//! [`CLOSE_TOO_SLOW`], so nothing queues without limit for it. Its client resumes and gets the room's
//! history again.

use std::collections::VecDeque;
use std::time::SystemTime;

use bytes::Bytes;
use dais_proto::{ChatEntry, ErrorCode, Role, ServerMessage, CHAT_HISTORY};
use tokio::sync::broadcast;

/// Feed buffers a connection may be behind before it is closed as too slow. At the chat rate
/// (0.5 a second per participant) this is the output of 20 busy writers for 25 s.
pub const FEED_CAPACITY: usize = 512;

/// Close code for a connection that fell too far behind (the room's chat feed, or its notice queue);
/// not final: the client resumes. Documented in docs/protocol.md.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// A room's chat. See the module docs.
#[derive(Debug)]
pub(crate) struct Chat {
    next_id: u64,
    history: VecDeque<ChatEntry>,
    viewer_chat: bool,
    feed: broadcast::Sender<Bytes>,
}

impl Default for Chat {
    fn default() -> Self {
        Chat { next_id: 1, history: VecDeque::new(), viewer_chat: true, feed: broadcast::Sender::new(FEED_CAPACITY) }
    }
}

/// Who writes a message, as [`Chat::post`] needs to know them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer<'a> {
    pub participant_id: &'a str,
    pub name: &'a str,
    pub role: Role,
    /// An operator silenced them.
    pub silenced: bool,
    /// They hold the moderator grant: a moderator may write while viewer chat is off.
    pub moderator: bool,
}

impl Chat {
    /// Whether `writer` may post now (before their rate is spent): silenced writers may not, nor
    /// viewers (other than moderators) while viewer chat is off.
    pub fn may_post(&self, writer: &Writer<'_>) -> Result<(), ErrorCode> {
        if writer.silenced {
            return Err(ErrorCode::ChatSilenced);
        }
        if writer.role == Role::Viewer && !writer.moderator && !self.viewer_chat {
            return Err(ErrorCode::ChatDisabled);
        }
        Ok(())
    }

    /// Take a message (already checked with [`Chat::may_post`] and [`dais_proto::valid_chat`]): it
    /// gets the next id, joins the history and goes out on the feed. Returns its id.
    pub fn post(&mut self, writer: &Writer<'_>, text: String) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let at_ms = unix_ms();
        let entry = ChatEntry {
            id,
            participant_id: writer.participant_id.to_owned(),
            name: writer.name.to_owned(),
            role: writer.role,
            text,
            at_ms,
        };
        let msg = ServerMessage::Chat(entry);
        self.publish(&msg);
        let ServerMessage::Chat(entry) = msg else { return id };
        if self.history.len() == CHAT_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
        id
    }

    /// Delete message `id` for everyone (it also leaves the history). `false`: no message had that
    /// id.
    pub fn delete(&mut self, id: u64) -> bool {
        if id == 0 || id >= self.next_id {
            return false;
        }
        self.history.retain(|e| e.id != id);
        self.publish(&ServerMessage::ChatDeleted { id });
        true
    }

    /// Let viewers chat, or not; everyone hears of a change.
    pub fn set_viewer_chat(&mut self, allowed: bool) {
        if self.viewer_chat != allowed {
            self.viewer_chat = allowed;
            self.publish(&ServerMessage::ChatPolicy { viewer_chat: allowed });
        }
    }

    /// A new reader of the feed and the history up to it: every message after the history comes
    /// through the reader (call both under the rooms lock, which every post holds).
    pub fn subscribe(&self) -> (broadcast::Receiver<Bytes>, ServerMessage) {
        let history = ServerMessage::ChatHistory {
            messages: self.history.iter().cloned().collect(),
            viewer_chat: self.viewer_chat,
        };
        (self.feed.subscribe(), history)
    }

    /// Serialize once; every reader gets the same buffer. Nobody listening is no error.
    fn publish(&self, msg: &ServerMessage) {
        let _ = self.feed.send(Bytes::from(msg.to_json()));
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Check a chat text ([`dais_proto::valid_chat`]).
pub(crate) fn check_text(text: &str) -> Result<(), ErrorCode> {
    if dais_proto::valid_chat(text) {
        Ok(())
    } else {
        Err(ErrorCode::InvalidChat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(silenced: bool) -> Writer<'static> {
        Writer { participant_id: "p2", name: "Ada", role: Role::Viewer, silenced, moderator: false }
    }

    fn text(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).expect("json")
    }

    #[test]
    fn posts_are_serialized_once_numbered_and_kept_up_to_the_history_limit() {
        let mut chat = Chat::default();
        let (mut rx, _) = chat.subscribe();
        for i in 0..CHAT_HISTORY + 5 {
            assert_eq!(chat.post(&viewer(false), format!("m{i}")), i as u64 + 1);
        }
        let first = rx.try_recv().expect("first");
        assert_eq!(text(&first)["type"], "chat");
        assert_eq!(text(&first)["text"], "m0");
        assert_eq!(text(&first)["name"], "Ada");
        let (_, history) = chat.subscribe();
        let ServerMessage::ChatHistory { messages, viewer_chat } = history else { panic!("history") };
        assert!(viewer_chat);
        assert_eq!(messages.len(), CHAT_HISTORY);
        assert_eq!(messages.first().map(|e| e.id), Some(6), "the oldest go first");
        assert_eq!(messages.last().map(|e| e.text.as_str()), Some(format!("m{}", CHAT_HISTORY + 4).as_str()));
    }

    #[test]
    fn moderation_deletes_silences_and_turns_viewer_chat_off() {
        let mut chat = Chat::default();
        let id = chat.post(&viewer(false), "spam".into());
        let (mut rx, _) = chat.subscribe();
        assert!(chat.delete(id));
        assert!(!chat.delete(id + 1), "an id never given");
        assert_eq!(text(&rx.try_recv().expect("deleted")), serde_json::json!({"type": "chat_deleted", "id": id}));
        let (_, history) = chat.subscribe();
        assert!(matches!(history, ServerMessage::ChatHistory { ref messages, .. } if messages.is_empty()));

        assert_eq!(chat.may_post(&viewer(true)), Err(ErrorCode::ChatSilenced));
        chat.set_viewer_chat(false);
        chat.set_viewer_chat(false);
        assert_eq!(
            text(&rx.try_recv().expect("policy")),
            serde_json::json!({"type": "chat_policy", "viewer_chat": false})
        );
        assert!(rx.try_recv().is_err(), "no news without a change");
        assert_eq!(chat.may_post(&viewer(false)), Err(ErrorCode::ChatDisabled));
        let speaker = Writer { role: Role::Speaker, ..viewer(false) };
        assert_eq!(chat.may_post(&speaker), Ok(()));
        let moderator = Writer { moderator: true, ..viewer(false) };
        assert_eq!(chat.may_post(&moderator), Ok(()));
    }

    #[test]
    fn a_reader_that_falls_behind_the_feed_learns_it_lagged() {
        let mut chat = Chat::default();
        let (mut rx, _) = chat.subscribe();
        for _ in 0..FEED_CAPACITY + 1 {
            chat.post(&viewer(false), "x".into());
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(1))));
    }

    #[test]
    fn texts_are_checked() {
        assert_eq!(check_text("hi"), Ok(()));
        assert_eq!(check_text(""), Err(ErrorCode::InvalidChat));
        assert_eq!(check_text(&"a".repeat(dais_proto::MAX_CHAT_BYTES + 1)), Err(ErrorCode::InvalidChat));
    }
}
