//! A room's questions: viewers ask, everyone upvotes, speakers and moderators mark them answered.
//!
//! Built for thousands of voters, like reactions rather than chat: a vote only changes a count (and
//! the question's set of voters, so each participant counts once); nothing goes out per vote. At most
//! once per [`QUESTIONS_INTERVAL_MS`] the room ranks its open questions (most votes first, equal
//! votes earliest first) and serializes two views once each: the top [`QUESTIONS_SHOWN`] for viewers
//! and all of them for speakers and moderators. Each view sits in a watch that every connection of
//! that audience reads, and a view that did not change (a vote for the 40th question changes no
//! viewer's top ten) wakes nobody. A slow client reads the latest view, never a backlog.
//!
//! Bounds: at most [`MAX_OPEN_QUESTIONS`] open questions (asking beyond is `questions_full`), each
//! with its voters (at most the room's participants); the last [`ANSWERED_SHOWN`] answered ones.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use dais_proto::{ErrorCode, QuestionEntry, ServerMessage, ANSWERED_SHOWN, MAX_OPEN_QUESTIONS, QUESTIONS_SHOWN};
use tokio::sync::watch;

/// One open question and who voted for it.
#[derive(Debug)]
struct Open {
    entry: QuestionEntry,
    voters: HashSet<u64>,
}

/// A room's questions. See the module docs.
#[derive(Debug)]
pub(crate) struct Questions {
    next_id: u64,
    /// In the order asked.
    open: Vec<Open>,
    /// The most recently answered first.
    answered: VecDeque<QuestionEntry>,
    /// Something changed since the last [`Questions::flush`].
    changed: bool,
    /// A flush is scheduled.
    timer: bool,
    /// The viewers' view (`questions` with the top open ones), serialized.
    pub top: watch::Sender<Option<Bytes>>,
    /// The speakers' and moderators' view (every open question), serialized.
    pub all: watch::Sender<Option<Bytes>>,
}

impl Default for Questions {
    fn default() -> Self {
        Questions {
            next_id: 1,
            open: Vec::new(),
            answered: VecDeque::new(),
            changed: false,
            timer: false,
            top: watch::Sender::new(None),
            all: watch::Sender::new(None),
        }
    }
}

/// Who asks, as [`Questions::ask`] needs to know them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asker<'a> {
    pub participant_id: &'a str,
    pub name: &'a str,
}

impl Questions {
    /// Whether the room can take another question (before the asker's rate is spent).
    pub fn may_ask(&self) -> Result<(), ErrorCode> {
        if self.open.len() >= MAX_OPEN_QUESTIONS {
            return Err(ErrorCode::QuestionsFull);
        }
        Ok(())
    }

    /// Take a question (its text already checked with [`dais_proto::valid_question`], the room with
    /// [`Questions::may_ask`]) at `at_ms`. Returns its id.
    pub fn ask(&mut self, asker: &Asker<'_>, text: String, at_ms: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let entry = QuestionEntry {
            id,
            participant_id: asker.participant_id.to_owned(),
            name: asker.name.to_owned(),
            text,
            votes: 0,
            at_ms,
        };
        self.open.push(Open { entry, voters: HashSet::new() });
        self.changed = true;
        id
    }

    /// Participant `voter` votes for open question `id` (`up`) or takes its vote back. Voting twice,
    /// or taking back a vote never cast, changes nothing.
    pub fn vote(&mut self, id: u64, voter: u64, up: bool) -> Result<(), ErrorCode> {
        let q = self.open.iter_mut().find(|q| q.entry.id == id).ok_or(ErrorCode::UnknownQuestion)?;
        let changed = if up { q.voters.insert(voter) } else { q.voters.remove(&voter) };
        if changed {
            q.entry.votes = q.voters.len() as u64;
            self.changed = true;
        }
        Ok(())
    }

    /// Mark open question `id` answered: it leaves the open ones and heads the answered ones.
    pub fn answer(&mut self, id: u64) -> Result<(), ErrorCode> {
        let at = self.open.iter().position(|q| q.entry.id == id).ok_or(ErrorCode::UnknownQuestion)?;
        let q = self.open.remove(at);
        self.answered.push_front(q.entry);
        self.answered.truncate(ANSWERED_SHOWN);
        self.changed = true;
        Ok(())
    }

    /// Delete question `id`, open or answered. `false`: no question of the room has that id.
    pub fn delete(&mut self, id: u64) -> bool {
        let (open, answered) = (self.open.len(), self.answered.len());
        self.open.retain(|q| q.entry.id != id);
        self.answered.retain(|q| q.id != id);
        let found = open != self.open.len() || answered != self.answered.len();
        self.changed |= found;
        found
    }

    /// Whether the caller must schedule a [`Questions::flush`] in [`dais_proto::QUESTIONS_INTERVAL_MS`]:
    /// `true` once after a change while none is scheduled.
    pub fn needs_timer(&mut self) -> bool {
        self.changed && !std::mem::replace(&mut self.timer, true)
    }

    /// Rank the open questions and publish both views; a view equal to the one published before is
    /// not sent again.
    pub fn flush(&mut self) {
        self.timer = false;
        if !std::mem::take(&mut self.changed) {
            return;
        }
        let mut ranked: Vec<&QuestionEntry> = self.open.iter().map(|q| &q.entry).collect();
        ranked.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.id.cmp(&b.id)));
        let answered: Vec<QuestionEntry> = self.answered.iter().cloned().collect();
        let view = |n: usize| {
            let msg = ServerMessage::Questions {
                open: ranked.iter().take(n).map(|q| (*q).clone()).collect(),
                open_count: ranked.len() as u64,
                answered: answered.clone(),
            };
            Some(Bytes::from(msg.to_json()))
        };
        publish(&self.top, view(QUESTIONS_SHOWN));
        publish(&self.all, view(MAX_OPEN_QUESTIONS));
    }
}

/// Replace the watched view with `view` unless it is the same.
fn publish(tx: &watch::Sender<Option<Bytes>>, view: Option<Bytes>) {
    tx.send_if_modified(|cur| {
        if *cur == view {
            return false;
        }
        *cur = view;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADA: Asker<'static> = Asker { participant_id: "p2", name: "Ada" };

    fn view(rx: &watch::Receiver<Option<Bytes>>) -> serde_json::Value {
        let b = rx.borrow().clone().expect("a view");
        serde_json::from_slice(&b).expect("json")
    }

    fn ids(v: &serde_json::Value, list: &str) -> Vec<u64> {
        v[list].as_array().expect("list").iter().map(|q| q["id"].as_u64().expect("id")).collect()
    }

    #[test]
    fn open_questions_are_ranked_by_votes_then_age_and_each_voter_counts_once() {
        let mut q = Questions::default();
        let all = q.all.subscribe();
        let (a, b, c) = (q.ask(&ADA, "a?".into(), 1), q.ask(&ADA, "b?".into(), 2), q.ask(&ADA, "c?".into(), 3));
        assert!(q.needs_timer());
        assert!(!q.needs_timer(), "one timer at a time");
        for voter in [10, 11, 11] {
            q.vote(c, voter, true).expect("open");
        }
        q.vote(b, 10, true).expect("open");
        q.vote(b, 12, false).expect("never voted: nothing changes");
        q.flush();
        let v = view(&all);
        assert_eq!(v["type"], "questions");
        assert_eq!(ids(&v, "open"), vec![c, b, a], "2 votes, 1 vote, then none");
        assert_eq!(v["open"][0]["votes"], 2, "voter 11 counted once");
        assert_eq!(v["open_count"], 3);
        q.vote(c, 10, false).expect("open");
        q.vote(c, 11, false).expect("open");
        q.flush();
        assert_eq!(ids(&view(&all), "open"), vec![b, a, c], "equal votes rank the earlier first");
        assert_eq!(q.vote(99, 10, true), Err(ErrorCode::UnknownQuestion));
    }

    #[test]
    fn viewers_see_the_top_ones_and_an_unchanged_view_wakes_nobody() {
        let mut q = Questions::default();
        let mut top = q.top.subscribe();
        let mut all = q.all.subscribe();
        let ids_asked: Vec<u64> = (0..QUESTIONS_SHOWN + 3).map(|i| q.ask(&ADA, format!("q{i}?"), i as u64)).collect();
        q.flush();
        assert!(top.has_changed().expect("open") && all.has_changed().expect("open"));
        let v = view(&top);
        top.mark_unchanged();
        all.mark_unchanged();
        assert_eq!(ids(&v, "open"), ids_asked[..QUESTIONS_SHOWN].to_vec());
        assert_eq!(v["open_count"], QUESTIONS_SHOWN + 3);
        assert_eq!(ids(&view(&all), "open").len(), QUESTIONS_SHOWN + 3);
        // A vote for the last one: it does not reach the top ten (ties rank by age)... until it does.
        let last = *ids_asked.last().expect("asked");
        q.vote(last, 1, true).expect("open");
        q.flush();
        assert!(top.has_changed().expect("open"), "one vote puts it first");
        assert_eq!(ids(&view(&top), "open")[0], last);
        top.mark_unchanged();
        all.mark_unchanged();
        // The 11th (outside the top) gets and loses a vote between flushes: only speakers' view
        // could differ, and it does not either.
        q.vote(ids_asked[QUESTIONS_SHOWN], 1, true).expect("open");
        q.vote(ids_asked[QUESTIONS_SHOWN], 1, false).expect("open");
        q.flush();
        assert!(!top.has_changed().expect("open"), "same view: no wake-up");
        assert!(!all.has_changed().expect("open"));
    }

    #[test]
    fn answered_questions_leave_the_open_ones_and_deleted_ones_vanish() {
        let mut q = Questions::default();
        let all = q.all.subscribe();
        let asked: Vec<u64> = (0..ANSWERED_SHOWN + 2).map(|i| q.ask(&ADA, format!("q{i}?"), 0)).collect();
        for id in &asked[..ANSWERED_SHOWN + 1] {
            q.answer(*id).expect("open");
        }
        assert_eq!(q.answer(asked[0]), Err(ErrorCode::UnknownQuestion), "already answered");
        assert_eq!(q.vote(asked[0], 1, true), Err(ErrorCode::UnknownQuestion), "answered: no votes");
        q.flush();
        let v = view(&all);
        assert_eq!(ids(&v, "open"), vec![asked[ANSWERED_SHOWN + 1]]);
        let answered = ids(&v, "answered");
        assert_eq!(answered.len(), ANSWERED_SHOWN);
        assert_eq!(answered[0], asked[ANSWERED_SHOWN], "the latest answered first");
        assert!(q.delete(asked[ANSWERED_SHOWN]));
        assert!(q.delete(asked[ANSWERED_SHOWN + 1]));
        assert!(!q.delete(999));
        q.flush();
        let v = view(&all);
        assert!(ids(&v, "open").is_empty());
        assert!(!ids(&v, "answered").contains(&asked[ANSWERED_SHOWN]));
    }

    #[test]
    fn a_room_holds_a_bounded_number_of_open_questions() {
        let mut q = Questions::default();
        for i in 0..MAX_OPEN_QUESTIONS {
            q.may_ask().expect("room");
            q.ask(&ADA, format!("{i}"), 0);
        }
        assert_eq!(q.may_ask(), Err(ErrorCode::QuestionsFull));
        q.answer(1).expect("open");
        assert_eq!(q.may_ask(), Ok(()), "answering makes room");
    }
}
