//! Audience interaction load (`--react-every`, `--chat-share`): viewers react and chat over their
//! signaling socket while media flows, and measure how long the room takes to tell them.
//!
//! - Every viewer sends one `react` every `react_every`, starting at a point of that period spread
//!   by its index, so a room of N viewers sends N / period reactions a second evenly. Its reaction
//!   latency is from its `react` to the first `reactions` message that counts that reaction (the
//!   room sends its totals at most twice a second, so this includes the wait for the next tick).
//! - A share of the viewers (`chat_share`, picked by index) also chat at the rate limit,
//!   [`CHATS_PER_SECOND`]. Each message's text carries its send time (Unix microseconds), and every
//!   viewer that receives it records send -> receipt: the chat latency, over every delivery.
//! - Refusals of either (`too_many_reactions`, `too_many_chats`, ...) are counted by code, not
//!   failures.
//!
//! [`Interactor`] is one viewer's part, told the time: [`Interactor::poll`] gives what is due,
//! [`Interactor::on_message`] takes what the server sent. Latencies are recorded only while the run
//! measures, so the ramp does not count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dais_proto::{ClientMessage, Reaction, ServerMessage, CHATS_PER_SECOND};
use hdrhistogram::Histogram;

use crate::stats::latency_histogram;

/// Chat texts the generator writes start with this, then the writer's index and its send time.
const CHAT_PREFIX: &str = "load ";

/// What viewers do besides watching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InteractionPlan {
    /// Each viewer reacts once per this period (`None`: no reactions).
    pub react_every: Option<Duration>,
    /// Share of viewers, 0 to 1, that chat at the rate limit.
    pub chat_share: f64,
}

impl InteractionPlan {
    /// Whether viewer `index` chats (the same viewers every run, spread over the indices).
    pub fn chats(&self, index: usize) -> bool {
        crate::shard::picked(index, self.chat_share)
    }

    /// How many of `viewers` viewers chat.
    pub fn chatters(&self, viewers: usize) -> usize {
        (0..viewers).filter(|&i| self.chats(i)).count()
    }
}

/// What the viewers of one shard measured of interaction; merged over shards for the report.
#[derive(Debug, Clone)]
pub struct InteractionStats {
    /// Chat send -> receipt, microseconds, one per delivery while measuring.
    pub chat_latency: Histogram<u64>,
    /// `react` -> the first `reactions` counting it, microseconds, while measuring.
    pub reaction_latency: Histogram<u64>,
    /// `react` messages sent.
    pub reactions_sent: u64,
    /// `chat` messages sent.
    pub chats_sent: u64,
    /// Refusals of either, by error code.
    pub refused: BTreeMap<String, u64>,
    /// `chat` messages received while measuring.
    pub chats_received: u64,
    /// `reactions` messages received while measuring.
    pub reactions_received: u64,
}

impl Default for InteractionStats {
    fn default() -> Self {
        InteractionStats {
            chat_latency: latency_histogram(),
            reaction_latency: latency_histogram(),
            reactions_sent: 0,
            chats_sent: 0,
            refused: BTreeMap::new(),
            chats_received: 0,
            reactions_received: 0,
        }
    }
}

impl InteractionStats {
    /// Add another shard's figures.
    pub fn merge(&mut self, other: &InteractionStats) {
        // Both histograms have the same bounds, so adding cannot fail; a failure would only lose figures.
        let _ = self.chat_latency.add(&other.chat_latency);
        let _ = self.reaction_latency.add(&other.reaction_latency);
        self.reactions_sent += other.reactions_sent;
        self.chats_sent += other.chats_sent;
        for (code, n) in &other.refused {
            *self.refused.entry(code.clone()).or_insert(0) += n;
        }
        self.chats_received += other.chats_received;
        self.reactions_received += other.reactions_received;
    }

    /// Count a refusal of a `react` or `chat`; false for an error about anything else.
    pub fn refusal(&mut self, code: &str, request: Option<&str>) -> bool {
        if !matches!(request, Some("react" | "chat")) {
            return false;
        }
        *self.refused.entry(code.to_owned()).or_insert(0) += 1;
        true
    }
}

/// One viewer's reactions and chat.
#[derive(Debug)]
pub struct Interactor {
    index: usize,
    react_every: Option<Duration>,
    next_react: Option<Instant>,
    next_chat: Option<Instant>,
    /// Reactions sent so far (which one comes next).
    reacted: usize,
    /// The oldest reaction not yet seen counted, and when it was sent.
    pending: Option<(Reaction, Instant)>,
}

impl Interactor {
    /// Viewer `index`'s part of `plan`, starting at `now` (once it has joined).
    pub fn new(plan: &InteractionPlan, index: usize, now: Instant) -> Interactor {
        let spread = |period: Duration| now + period.mul_f64(crate::shard::unit(index as u64));
        let chat_every = Duration::from_secs_f64(1.0 / CHATS_PER_SECOND);
        Interactor {
            index,
            react_every: plan.react_every,
            next_react: plan.react_every.map(spread),
            next_chat: plan.chats(index).then(|| spread(chat_every)),
            reacted: 0,
            pending: None,
        }
    }

    /// When [`Interactor::poll`] has something next.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.next_react, self.next_chat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next message due at `now`, if any; call until `None`.
    pub fn poll(&mut self, now: Instant, stats: &mut InteractionStats) -> Option<ClientMessage> {
        if let (Some(at), Some(every)) = (self.next_react, self.react_every) {
            if at <= now {
                self.next_react = Some(at + every);
                let reaction = Reaction::ALL[(self.index + self.reacted) % Reaction::ALL.len()];
                self.reacted += 1;
                self.pending.get_or_insert((reaction, now));
                stats.reactions_sent += 1;
                return Some(ClientMessage::React { reaction });
            }
        }
        if let Some(at) = self.next_chat.filter(|&at| at <= now) {
            // A little over the rate limit's period, so that timer jitter is not refused.
            self.next_chat = Some(at + Duration::from_secs_f64(1.0 / CHATS_PER_SECOND) + Duration::from_millis(20));
            stats.chats_sent += 1;
            return Some(ClientMessage::Chat { text: chat_text(self.index, unix_us()) });
        }
        None
    }

    /// A message from the server at `now`; its latencies are recorded when `measuring`.
    pub fn on_message(&mut self, msg: &ServerMessage, now: Instant, measuring: bool, stats: &mut InteractionStats) {
        match msg {
            ServerMessage::Chat(entry) => {
                if !measuring {
                    return;
                }
                stats.chats_received += 1;
                if let Some(sent) = sent_at(&entry.text) {
                    stats.chat_latency.saturating_record(unix_us().saturating_sub(sent).max(1));
                }
            }
            ServerMessage::Reactions { counts, .. } => {
                if measuring {
                    stats.reactions_received += 1;
                }
                if let Some((reaction, sent)) = self.pending {
                    if counts.get(&reaction).is_some_and(|&n| n > 0) {
                        self.pending = None;
                        if measuring {
                            let us = u64::try_from(now.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                            stats.reaction_latency.saturating_record(us.max(1));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The text of a generator's chat message: its writer and its send time.
pub fn chat_text(index: usize, unix_us: u64) -> String {
    format!("{CHAT_PREFIX}{index} {unix_us}")
}

/// The send time (Unix microseconds) in a generator's chat text; `None` for any other text.
pub fn sent_at(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(CHAT_PREFIX)?;
    let (_, at) = rest.split_once(' ')?;
    at.parse().ok()
}

/// Now, in microseconds since the Unix epoch (0 before it).
fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dais_proto::{ChatEntry, Role};

    use super::*;

    fn plan(react_s: Option<u64>, chat_share: f64) -> InteractionPlan {
        InteractionPlan { react_every: react_s.map(Duration::from_secs), chat_share }
    }

    #[test]
    fn a_viewer_reacts_once_per_period_and_a_chatter_at_the_rate_limit() {
        let t0 = Instant::now();
        let p = plan(Some(5), 1.0);
        let mut i = Interactor::new(&p, 3, t0);
        let mut stats = InteractionStats::default();
        let (mut reacts, mut chats) = (0, 0);
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            while let Some(m) = i.poll(now, &mut stats) {
                match m {
                    ClientMessage::React { .. } => reacts += 1,
                    ClientMessage::Chat { text } => {
                        assert!(sent_at(&text).is_some(), "{text}");
                        chats += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(reacts, 12, "one per 5 s for 60 s");
        // 0.5 a second, a little under because of the margin against jitter.
        assert!((28..=30).contains(&chats), "{chats} chats in 60 s");
        assert_eq!((stats.reactions_sent, stats.chats_sent), (reacts, chats));
    }

    #[test]
    fn chatters_are_the_share_asked_for() {
        let p = plan(None, 0.01);
        let n = p.chatters(2000);
        assert!((15..=25).contains(&n), "{n} of 2000 chat at 1 %");
        assert_eq!(plan(None, 0.0).chatters(2000), 0);
        let mut i = Interactor::new(&p, (0..2000).find(|&i| !p.chats(i)).expect("a non-chatter"), Instant::now());
        assert!(i.poll(Instant::now() + Duration::from_secs(10), &mut InteractionStats::default()).is_none());
    }

    #[test]
    fn a_reaction_is_timed_to_the_first_totals_that_count_it() {
        let t0 = Instant::now();
        let mut i = Interactor::new(&plan(Some(5), 0.0), 0, t0);
        let mut stats = InteractionStats::default();
        let Some(ClientMessage::React { reaction }) = i.poll(t0 + Duration::from_secs(5), &mut stats) else {
            panic!("a reaction is due");
        };
        let other = Reaction::ALL.into_iter().find(|&r| r != reaction).expect("another reaction");
        let totals =
            |r: Reaction| ServerMessage::Reactions { counts: BTreeMap::from([(r, 2)]), totals: BTreeMap::new() };
        i.on_message(&totals(other), t0 + Duration::from_millis(5200), true, &mut stats);
        assert_eq!(stats.reaction_latency.len(), 0, "totals without it do not count");
        i.on_message(&totals(reaction), t0 + Duration::from_millis(5300), true, &mut stats);
        assert_eq!(stats.reaction_latency.len(), 1);
        let ms = stats.reaction_latency.max() as f64 / 1000.0;
        assert!((299.0..=301.0).contains(&ms), "{ms} ms");
        i.on_message(&totals(reaction), t0 + Duration::from_millis(5800), true, &mut stats);
        assert_eq!(stats.reaction_latency.len(), 1, "one reaction, one latency");
        assert_eq!(stats.reactions_received, 3);
    }

    #[test]
    fn a_chat_is_timed_from_the_send_time_in_its_text_and_only_while_measuring() {
        let mut i = Interactor::new(&plan(None, 0.0), 0, Instant::now());
        let mut stats = InteractionStats::default();
        let entry = |text: String| {
            ServerMessage::Chat(ChatEntry {
                id: 1,
                participant_id: "p1".into(),
                name: "viewer-1".into(),
                role: Role::Viewer,
                text,
                at_ms: 0,
            })
        };
        let sent = unix_us() - 250_000;
        i.on_message(&entry(chat_text(7, sent)), Instant::now(), false, &mut stats);
        assert_eq!((stats.chats_received, stats.chat_latency.len()), (0, 0), "not while ramping");
        i.on_message(&entry(chat_text(7, sent)), Instant::now(), true, &mut stats);
        i.on_message(&entry("hello".into()), Instant::now(), true, &mut stats);
        assert_eq!((stats.chats_received, stats.chat_latency.len()), (2, 1), "a person's text has no time");
        let ms = stats.chat_latency.max() as f64 / 1000.0;
        assert!((250.0..1000.0).contains(&ms), "{ms} ms");
    }

    #[test]
    fn refusals_of_reactions_and_chat_are_counted_and_others_are_not() {
        let mut stats = InteractionStats::default();
        assert!(stats.refusal("too_many_chats", Some("chat")));
        assert!(stats.refusal("too_many_reactions", Some("react")));
        assert!(!stats.refusal("bad_sdp", Some("answer")));
        assert!(!stats.refusal("room_full", None));
        assert_eq!(stats.refused.len(), 2);
        let mut all = InteractionStats::default();
        all.merge(&stats);
        all.merge(&stats);
        assert_eq!(all.refused["too_many_chats"], 2);
    }
}
