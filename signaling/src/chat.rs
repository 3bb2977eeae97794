//! A room's chat: its last messages, who may write, and the one feed every member's connection reads.
//!
//! Each message is serialized once, as the JSON text of its `chat` message, and that one buffer goes
//! to every connection through a [`broadcast`] channel: at 2,000 viewers a message costs 2,000
//! reference-count increments, not 2,000 serializations or copies. Moderation (`chat_deleted`,
//! `chat_policy`) rides the same feed, so every client sees it in order with the messages.
//!
//! The feed carries batches. A message posted when the feed has been quiet for
//! [`dais_proto::CHAT_INTERVAL_MS`] goes out at once, alone; one posted sooner waits for the next
//! batch, at most that long after the one before ([`Chat::needs_timer`] asks the caller to flush
//! then). A connection writes a batch with one flush, so a busy room costs each connection at
//! most four writes a second for its chat, not one per message (docs/benchmarks.md: with 2,000
//! viewers and ten messages a second, signaling took 19-21 % of a core one write per message, and
//! 11-12 % in batches).
//!
//! Bounds: the room keeps [`CHAT_HISTORY`] messages; a batch holds at most [`MAX_BATCH`] (a fuller
//! one goes out at once); the feed holds [`FEED_CAPACITY`] batches, and a connection that falls
//! further behind than that (its client does not read) is closed with [`CLOSE_TOO_SLOW`], so
//! nothing queues without limit for it. Its client resumes and gets the room's history again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use dais_proto::{ChatEntry, ErrorCode, Role, ServerMessage, CHAT_HISTORY, CHAT_INTERVAL_MS};
use tokio::sync::broadcast;

/// Feed batches a connection may be behind before it is closed as too slow: at most four batches
/// a second go out, so this is more than two minutes of a busy room.
pub const FEED_CAPACITY: usize = 512;

/// Most messages in one batch; a batch that fills goes out at once.
pub const MAX_BATCH: usize = 256;

/// Close code for a connection that fell too far behind (the room's chat feed, or its notice queue);
/// not final: the client resumes. Documented in docs/protocol.md.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// One batch of the feed: serialized messages in order, written by each connection with one flush.
pub(crate) type Batch = Arc<[Bytes]>;

/// The shortest time between two batches.
const INTERVAL: Duration = Duration::from_millis(CHAT_INTERVAL_MS);

/// A room's chat. See the module docs.
#[derive(Debug)]
pub(crate) struct Chat {
    next_id: u64,
    history: VecDeque<ChatEntry>,
    viewer_chat: bool,
    feed: broadcast::Sender<Batch>,
    /// The next batch: each message's JSON, with its entry for the history when it is a message.
    pending: Vec<(Bytes, Option<ChatEntry>)>,
    /// When the last batch went out.
    last_flush: Option<Instant>,
    /// A flush is scheduled.
    timer: bool,
}

impl Default for Chat {
    fn default() -> Self {
        Chat {
            next_id: 1,
            history: VecDeque::new(),
            viewer_chat: true,
            feed: broadcast::Sender::new(FEED_CAPACITY),
            pending: Vec::new(),
            last_flush: None,
            timer: false,
        }
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

    /// Take a message at `now` (already checked with [`Chat::may_post`] and
    /// [`dais_proto::valid_chat`]): it gets the next id and goes out with the next batch, and joins
    /// the history then. Returns its id.
    pub fn post(&mut self, now: Instant, writer: &Writer<'_>, text: String) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let entry = ChatEntry {
            id,
            participant_id: writer.participant_id.to_owned(),
            name: writer.name.to_owned(),
            role: writer.role,
            text,
            at_ms: unix_ms(),
        };
        let msg = ServerMessage::Chat(entry);
        let json = Bytes::from(msg.to_json());
        let ServerMessage::Chat(entry) = msg else { return id };
        self.queue(now, json, Some(entry));
        id
    }

    /// Delete message `id` for everyone at `now` (it also leaves the history; one still waiting for
    /// its batch never goes out). `false`: no message had that id.
    pub fn delete(&mut self, now: Instant, id: u64) -> bool {
        if id == 0 || id >= self.next_id {
            return false;
        }
        let waiting = self.pending.len();
        self.pending.retain(|(_, e)| e.as_ref().is_none_or(|e| e.id != id));
        if self.pending.len() < waiting {
            return true;
        }
        self.history.retain(|e| e.id != id);
        self.queue(now, Bytes::from(ServerMessage::ChatDeleted { id }.to_json()), None);
        true
    }

    /// Let viewers chat, or not; everyone hears of a change.
    pub fn set_viewer_chat(&mut self, now: Instant, allowed: bool) {
        if self.viewer_chat != allowed {
            self.viewer_chat = allowed;
            self.queue(now, Bytes::from(ServerMessage::ChatPolicy { viewer_chat: allowed }.to_json()), None);
        }
    }

    /// A new reader of the feed and the history up to it: every message after the history comes
    /// through the reader, those still waiting for their batch included (call both under the rooms
    /// lock, which every post holds).
    pub fn subscribe(&self) -> (broadcast::Receiver<Batch>, ServerMessage) {
        let history = ServerMessage::ChatHistory {
            messages: self.history.iter().cloned().collect(),
            viewer_chat: self.viewer_chat,
        };
        (self.feed.subscribe(), history)
    }

    /// How long from `now` until the caller must call [`Chat::flush`]: once, while something waits
    /// and no flush is scheduled.
    pub fn needs_timer(&mut self, now: Instant) -> Option<Duration> {
        if self.pending.is_empty() || std::mem::replace(&mut self.timer, true) {
            return None;
        }
        Some(self.last_flush.map_or(Duration::ZERO, |t| (t + INTERVAL).saturating_duration_since(now)))
    }

    /// The scheduled flush: what waits goes out as one batch.
    pub fn flush(&mut self, now: Instant) {
        self.timer = false;
        self.publish(now);
    }

    /// Send what waits, if anything, as one batch: serialized once, every reader gets the same
    /// buffers. Nobody listening is no error.
    pub fn publish(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(self.pending.len());
        for (json, entry) in self.pending.drain(..) {
            batch.push(json);
            if let Some(e) = entry {
                if self.history.len() == CHAT_HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(e);
            }
        }
        self.last_flush = Some(now);
        let _ = self.feed.send(batch.into());
    }

    /// Add to the next batch: at once if the feed has been quiet for [`INTERVAL`] or the batch is
    /// full, else when the caller's timer fires.
    fn queue(&mut self, now: Instant, json: Bytes, entry: Option<ChatEntry>) {
        self.pending.push((json, entry));
        let quiet = self.last_flush.is_none_or(|t| now.saturating_duration_since(t) >= INTERVAL);
        if quiet || self.pending.len() >= MAX_BATCH {
            self.publish(now);
        }
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

    /// Every message of the batches waiting in `rx`, as JSON.
    fn drain(rx: &mut broadcast::Receiver<Batch>) -> Vec<Vec<serde_json::Value>> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|b| b.iter().map(text).collect()).collect()
    }

    #[test]
    fn posts_are_serialized_once_numbered_and_kept_up_to_the_history_limit() {
        let mut chat = Chat::default();
        let (mut rx, _) = chat.subscribe();
        let mut now = Instant::now();
        for i in 0..CHAT_HISTORY + 5 {
            assert_eq!(chat.post(now, &viewer(false), format!("m{i}")), i as u64 + 1);
            now += INTERVAL;
        }
        let first = rx.try_recv().expect("first");
        assert_eq!(first.len(), 1, "a post after a quiet interval goes out alone, at once");
        assert_eq!(text(&first[0])["type"], "chat");
        assert_eq!(text(&first[0])["text"], "m0");
        assert_eq!(text(&first[0])["name"], "Ada");
        let (_, history) = chat.subscribe();
        let ServerMessage::ChatHistory { messages, viewer_chat } = history else { panic!("history") };
        assert!(viewer_chat);
        assert_eq!(messages.len(), CHAT_HISTORY);
        assert_eq!(messages.first().map(|e| e.id), Some(6), "the oldest go first");
        assert_eq!(messages.last().map(|e| e.text.as_str()), Some(format!("m{}", CHAT_HISTORY + 4).as_str()));
    }

    #[test]
    fn posts_within_an_interval_go_out_together_once_it_is_over() {
        let mut chat = Chat::default();
        let (mut rx, _) = chat.subscribe();
        let t0 = Instant::now();
        chat.post(t0, &viewer(false), "a".into());
        assert_eq!(chat.needs_timer(t0), None, "it went out at once");
        let ms = |n: u64| t0 + Duration::from_millis(n);
        chat.post(ms(10), &viewer(false), "b".into());
        chat.post(ms(100), &viewer(false), "c".into());
        assert_eq!(chat.needs_timer(ms(100)), Some(INTERVAL - Duration::from_millis(100)));
        assert_eq!(chat.needs_timer(ms(100)), None, "one timer at a time");
        // A newcomer meanwhile: its history stops at what went out, the rest comes in the batch.
        let (mut late, history) = chat.subscribe();
        assert!(matches!(history, ServerMessage::ChatHistory { ref messages, .. } if messages.len() == 1));
        assert_eq!(drain(&mut rx).len(), 1, "b and c wait");
        chat.flush(ms(250));
        let batches = drain(&mut rx);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].iter().map(|m| m["text"].as_str().expect("text")).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(drain(&mut late).len(), 1, "the newcomer gets b and c once");
        assert_eq!(chat.needs_timer(ms(250)), None, "nothing waits");
        let (_, history) = chat.subscribe();
        assert!(matches!(history, ServerMessage::ChatHistory { ref messages, .. } if messages.len() == 3));
    }

    #[test]
    fn a_full_batch_goes_out_at_once() {
        let mut chat = Chat::default();
        let (mut rx, _) = chat.subscribe();
        let t0 = Instant::now();
        for i in 0..=MAX_BATCH {
            chat.post(t0, &viewer(false), format!("m{i}"));
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok()).map(|b| b.len()).collect();
        assert_eq!(sizes, [1, MAX_BATCH]);
    }

    #[test]
    fn moderation_deletes_silences_and_turns_viewer_chat_off() {
        let mut chat = Chat::default();
        let t0 = Instant::now();
        let id = chat.post(t0, &viewer(false), "spam".into());
        let (mut rx, _) = chat.subscribe();
        let later = t0 + INTERVAL;
        assert!(chat.delete(later, id));
        assert!(!chat.delete(later, id + 1), "an id never given");
        assert_eq!(drain(&mut rx), [[serde_json::json!({"type": "chat_deleted", "id": id})]]);
        let (_, history) = chat.subscribe();
        assert!(matches!(history, ServerMessage::ChatHistory { ref messages, .. } if messages.is_empty()));

        // A message deleted before its batch never goes out.
        let waiting = chat.post(later, &viewer(false), "oops".into());
        assert!(chat.delete(later, waiting));
        chat.flush(later + INTERVAL);
        assert!(drain(&mut rx).is_empty());

        assert_eq!(chat.may_post(&viewer(true)), Err(ErrorCode::ChatSilenced));
        let later = later + INTERVAL * 2;
        chat.set_viewer_chat(later, false);
        chat.set_viewer_chat(later, false);
        assert_eq!(drain(&mut rx), [[serde_json::json!({"type": "chat_policy", "viewer_chat": false})]]);
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
        let mut now = Instant::now();
        for _ in 0..FEED_CAPACITY + 1 {
            chat.post(now, &viewer(false), "x".into());
            now += INTERVAL;
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
