//! One WebSocket connection: the socket's state machine.
//!
//! States: *connected* (only `join`, `resume`, `ping` and `leave` are meaningful), *carrying a
//! participant* (everything), and *closed*. Every failure of a client message is answered with an
//! `error` and the connection stays open, except an oversized frame (close 1009), `leave` (1000),
//! shutdown (1001), idle timeout (1001), a failed media connection (`media_failed`, 1011), a server
//! offer unanswered for `negotiation_timeout` (1008), an operator's kick or room close (4001, 4002),
//! and a resume of its participant on another socket (4003).
//!
//! How the participant ends with the socket: `leave`, a 1009, 1011, 1008, 4001, 4002 or shutdown end it
//! (others get `media_unpublished` for each of its streams and `participant_left`, and its media
//! session is closed). A socket that is merely lost (closed without `leave`, a transport error, a
//! client that stopped reading, an idle timeout) parks it for a resume (`participant.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use dais_proto::{
    parse_client, valid_name, valid_room, ClientMessage, ErrorCode, MediaInfo, MediaKind, Role, ServerMessage,
    CLOSE_MESSAGE_TOO_BIG, MAX_SDP_BYTES, PROTOCOL_VERSION,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admin::{Control, ModerateError};
use crate::chat::{Batch, CLOSE_TOO_SLOW};
use crate::media_api::{AnswerRejection, MediaEvent, OfferRejection, SessionMode};
use crate::participant::{Feeds, Joined, Participant, Takeover};
use crate::rate::{RateLimit, Verdict};
use crate::room::{self, media_wire_id, participant_wire_id, Receives, Room};
use crate::{Frame, OutFrame, Phase, Signaling};

/// How a socket's loop ended for its participant.
enum End {
    /// The participant leaves now; `Some` sends a close frame first.
    Leave(Option<(u16, String)>),
    /// The socket is gone (or no longer usable) but the participant may resume: park it. `Some`
    /// sends a close frame first.
    Lost(Option<(u16, String)>),
    /// A `resume` on another socket takes the participant over.
    Replaced(Takeover),
}

/// What a message on a socket without a participant led to.
enum Unjoined {
    Reply(Vec<ServerMessage>),
    /// Joined or resumed: the replies to send, then the participant's loop.
    Joined(Box<Participant>, Vec<ServerMessage>),
    Leave,
}

/// Keep-alive and pace of one socket: server pings, the last frame from the client, its rate limit.
struct Liveness {
    ping: tokio::time::Interval,
    last_seen: Instant,
    rate: RateLimit,
}

impl Liveness {
    /// Whether a text or binary frame just arrived may be handled: `Err` with the reply to send
    /// instead (`rate_limited`, or nothing), or with the close frame for a flood.
    fn admit(&mut self, frame: &Frame) -> Result<(), Result<Vec<ServerMessage>, (u16, String)>> {
        if !matches!(frame, Frame::Text(_) | Frame::Binary) {
            return Ok(());
        }
        match self.rate.frame(Instant::now()) {
            Verdict::Allow => Ok(()),
            Verdict::Refuse(report) => {
                let m = ServerMessage::error(
                    ErrorCode::RateLimited,
                    "too many messages: at most 20 a second (bursts of 200); this one was dropped",
                    None,
                );
                Err(Ok(if report { vec![m] } else { vec![] }))
            }
            Verdict::Close => {
                warn!("message flood, closing");
                Err(Err((CLOSE_POLICY, "rate_limited".into())))
            }
        }
    }
}

/// Close code for a socket whose participant was resumed on another socket.
pub const CLOSE_REPLACED: u16 = 4003;

impl Signaling {
    /// Serve one WebSocket connection until it closes.
    pub async fn serve<S, K>(self: Arc<Self>, incoming: S, outgoing: K)
    where
        S: Stream<Item = Frame> + Unpin + Send,
        K: Sink<OutFrame> + Unpin + Send,
    {
        let conn = self.next_id();
        let span = info_span!("ws", conn, room = tracing::field::Empty, participant = tracing::field::Empty);
        self.serve_inner(incoming, outgoing).instrument(span).await
    }

    async fn serve_inner<S, K>(self: Arc<Self>, mut incoming: S, mut outgoing: K)
    where
        S: Stream<Item = Frame> + Unpin + Send,
        K: Sink<OutFrame> + Unpin + Send,
    {
        let mut phase = self.phase.subscribe();
        self.connections.fetch_add(1, Ordering::Relaxed);
        let mut initial = vec![];
        if let Phase::Draining(within_ms) = *phase.borrow_and_update() {
            initial.push(ServerMessage::Draining { within_ms });
        }
        if *phase.borrow() == Phase::Closing {
            let _ = outgoing.send(OutFrame::Close(1001, "server shutting down".into())).await;
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if send_all(&mut outgoing, initial).await.is_err() {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut live = Liveness { ping, last_seen: Instant::now(), rate: RateLimit::new(Instant::now()) };

        let (end, participant) = match self.until_joined(&mut incoming, &mut outgoing, &mut phase, &mut live).await {
            Ok(mut p) => (self.run_joined(&mut p, &mut incoming, &mut outgoing, &mut phase, &mut live).await, Some(p)),
            Err(frame) => (End::Leave(frame), None),
        };
        // What becomes of the participant, and the close frame. One taken over goes to its new socket
        // before this one is closed: closing can wait on a dead peer for up to the send timeout.
        let (frame, after) = match (end, participant) {
            (End::Leave(f), p) => (f, p.map(|p| (*p, false))),
            (End::Lost(f), p) => (f, p.map(|p| (*p, true))),
            (End::Replaced(reply), Some(p)) => {
                let frame = Some((CLOSE_REPLACED, "resumed on another socket".into()));
                // The resuming socket stopped waiting: keep the participant for another try.
                (frame, reply.send(*p).err().map(|p| (p, true)))
            }
            (End::Replaced(_), None) => (None, None),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if let Some((code, reason)) = frame {
                let _ = outgoing.send(OutFrame::Close(code, reason)).await;
            }
            let _ = outgoing.close().await;
        })
        .await;
        drop((incoming, outgoing));
        // Counted until the close frame is out: shutdown waits for this to reach zero.
        self.connections.fetch_sub(1, Ordering::Relaxed);
        match after {
            Some((p, true)) => self.park(p).await,
            Some((p, false)) => self.finish(p),
            None => {}
        }
    }

    /// Serve a socket until it joins or resumes a participant. `Err` carries the close frame to send
    /// (`None`: the client went away).
    async fn until_joined<S, K>(
        &self,
        incoming: &mut S,
        outgoing: &mut K,
        phase: &mut watch::Receiver<Phase>,
        live: &mut Liveness,
    ) -> Result<Box<Participant>, Option<(u16, String)>>
    where
        S: Stream<Item = Frame> + Unpin + Send,
        K: Sink<OutFrame> + Unpin + Send,
    {
        loop {
            tokio::select! {
                frame = incoming.next() => {
                    live.last_seen = Instant::now();
                    let frame = frame.unwrap_or(Frame::Close);
                    let step = match live.admit(&frame) {
                        Ok(()) => None,
                        Err(Ok(reply)) => Some(Unjoined::Reply(reply)),
                        Err(Err(close)) => {
                            let m = ServerMessage::error(ErrorCode::RateLimited, "message flood; closing", None);
                            let _ = send_all(outgoing, vec![m]).await;
                            return Err(Some(close));
                        }
                    };
                    let step = match (step, frame) {
                        (Some(step), _) => step,
                        (None, Frame::Text(text)) => self.handle_unjoined(&text).await,
                        (None, other) => match socket_frame(other) {
                            Ok(m) => Unjoined::Reply(m),
                            Err(close) => return Err(close),
                        },
                    };
                    match step {
                        Unjoined::Reply(msgs) => {
                            if send_all(outgoing, msgs).await.is_err() { return Err(None) }
                        }
                        Unjoined::Leave => return Err(Some((1000, "bye".into()))),
                        Unjoined::Joined(p, msgs) => {
                            tracing::Span::current().record("room", p.joined.room.as_str());
                            tracing::Span::current().record("participant", participant_wire_id(p.joined.id).as_str());
                            // A reply that did not get out shows as a lost socket in the participant's loop.
                            let _ = send_all(outgoing, msgs).await;
                            return Ok(p);
                        }
                    }
                }
                _ = live.ping.tick() => {
                    keep_alive(outgoing, live, self.config.idle_timeout).await?;
                }
                changed = phase.changed() => match phase_news(changed.is_ok().then(|| *phase.borrow_and_update())) {
                    Err(close) => return Err(Some(close)),
                    Ok(Some(m)) => if send_all(outgoing, vec![m]).await.is_err() { return Err(None) },
                    Ok(None) => {}
                },
            }
        }
    }

    /// Serve a socket that carries a participant until the participant leaves, the socket is lost,
    /// or another socket resumes it.
    async fn run_joined<S, K>(
        &self,
        p: &mut Participant,
        incoming: &mut S,
        outgoing: &mut K,
        phase: &mut watch::Receiver<Phase>,
        live: &mut Liveness,
    ) -> End
    where
        S: Stream<Item = Frame> + Unpin + Send,
        K: Sink<OutFrame> + Unpin + Send,
    {
        // After each `audience` sent, changes of the viewer count wait out the hold.
        let hold = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(hold);
        let mut holding = false;
        // A server offer awaits the client's answer until `answer_due` (from now, after a resume that
        // sent the outstanding offer again).
        let answer_due = tokio::time::sleep(self.config.negotiation_timeout);
        tokio::pin!(answer_due);
        let mut awaiting_answer = p.outstanding_offer.is_some();

        loop {
            tokio::select! {
                // Room news before media events: a `media_unpublished` queued before the media plane
                // produced its renegotiation offer is always delivered first.
                biased;
                Some(msg) = p.notices.recv() => {
                    if send_all(outgoing, vec![msg]).await.is_err() { return End::Lost(None); }
                }
                frame = incoming.next() => {
                    live.last_seen = Instant::now();
                    let frame = frame.unwrap_or(Frame::Close);
                    let step = match live.admit(&frame) {
                        Ok(()) => None,
                        Err(Ok(reply)) => Some(Step::Reply(reply)),
                        Err(Err(close)) => {
                            let m = ServerMessage::error(ErrorCode::RateLimited, "message flood; closing", None);
                            let _ = send_all(outgoing, vec![m]).await;
                            return End::Leave(Some(close));
                        }
                    };
                    let step = match (step, frame) {
                        (Some(step), _) => step,
                        (None, Frame::Text(text)) => self.handle_text(&text, p).await,
                        (None, f @ (Frame::TooBig | Frame::InvalidUtf8)) => {
                            // A broken client: it leaves, with the close code that says why.
                            return End::Leave(socket_frame(f).err().flatten());
                        }
                        (None, other) => match socket_frame(other) {
                            Ok(m) => Step::Reply(m),
                            Err(_) => return End::Lost(None),
                        },
                    };
                    match step {
                        Step::Reply(msgs) => {
                            if send_all(outgoing, msgs).await.is_err() { return End::Lost(None); }
                        }
                        Step::Answered => {
                            awaiting_answer = false;
                            p.outstanding_offer = None;
                        }
                        Step::Leave => return End::Leave(Some((1000, "bye".into()))),
                    }
                }
                Some(reply) = p.takeover.recv() => return End::Replaced(reply),
                Some(ctl) = p.control.recv() => match ctl {
                    Control::Close { code, close, message } => {
                        self.remember_ended(&p.token, code);
                        let _ = send_all(outgoing, vec![ServerMessage::error(code, message, None)]).await;
                        return End::Leave(Some((close, code.as_str().into())));
                    }
                    Control::SetRole(role) => {
                        p.joined.role = role;
                        // What the new role sees of the hands and questions, as they are now.
                        p.hands.mark_changed();
                        p.questions.mark_changed();
                        p.all_questions.mark_changed();
                        info!(?role, "role changed by an operator");
                        let m = ServerMessage::RoleChanged { participant_id: participant_wire_id(p.joined.id), role };
                        if send_all(outgoing, vec![m]).await.is_err() { return End::Lost(None); }
                    }
                },
                Some(ev) = p.media.recv() => {
                    match self.handle_media_event(ev, &p.joined) {
                        Some(MediaStep::Fail) => {
                            let m = ServerMessage::error(ErrorCode::MediaFailed, "the media connection was lost", None);
                            let _ = send_all(outgoing, vec![m]).await;
                            return End::Leave(Some((1011, "media failed".into())));
                        }
                        Some(MediaStep::Offer(sdp)) => {
                            // The clock starts at the first offer after an accepted answer: the same
                            // offer sent again after a refused answer does not extend it.
                            if !awaiting_answer {
                                awaiting_answer = true;
                                answer_due.as_mut().reset(tokio::time::Instant::now() + self.config.negotiation_timeout);
                            }
                            p.outstanding_offer = Some(sdp.clone());
                            if send_all(outgoing, vec![ServerMessage::Offer { sdp }]).await.is_err() { return End::Lost(None); }
                        }
                        Some(MediaStep::Tell(m)) => {
                            let sent = send_all(outgoing, vec![m]).await;
                            if sent.is_err() { return End::Lost(None); }
                        }
                        None => {}
                    }
                }
                viewers = audience_changed(&mut p.audience), if !holding => match viewers {
                    // A change undone within the hold (3 -> 4 -> 3) is no news.
                    Some(viewers) if viewers == p.heard => {}
                    Some(viewers) => {
                        let m = ServerMessage::Audience { viewers };
                        if send_all(outgoing, vec![m]).await.is_err() { return End::Lost(None); }
                        p.heard = viewers;
                        hold.as_mut().reset(tokio::time::Instant::now() + self.config.audience_interval);
                        holding = true;
                    }
                    None => {}
                },
                news = room_broadcast(&mut p.feed, &mut p.reactions) => match news {
                    Ok(frames) => {
                        if send_frames(outgoing, frames).await.is_err() { return End::Lost(None); }
                    }
                    Err(behind) => {
                        warn!(behind, "the client fell behind the room's chat feed; closing as too slow");
                        return End::Lost(Some((CLOSE_TOO_SLOW, "too_slow".into())));
                    }
                },
                Ok(()) = p.overflow.changed() => if *p.overflow.borrow_and_update() {
                    warn!("the client fell behind its room news; closing as too slow");
                    return End::Lost(Some((CLOSE_TOO_SLOW, "too_slow".into())));
                },
                msg = room_news(&mut p.hands), if p.joined.backstage() => {
                    if let Some(m) = msg {
                        if send_all(outgoing, vec![m]).await.is_err() { return End::Lost(None); }
                    }
                }
                view = room_news(&mut p.questions), if !p.joined.backstage() => if let Some(text) = view {
                    if send_shared(outgoing, text).await.is_err() { return End::Lost(None); }
                },
                view = room_news(&mut p.all_questions), if p.joined.backstage() => if let Some(text) = view {
                    if send_shared(outgoing, text).await.is_err() { return End::Lost(None); }
                },
                msg = room_news(&mut p.speaking) => {
                    if let Some(m) = msg {
                        if send_all(outgoing, vec![m]).await.is_err() { return End::Lost(None); }
                    }
                }
                () = &mut hold, if holding => holding = false,
                () = &mut answer_due, if awaiting_answer => {
                    warn!("the server offer was not answered in time, closing");
                    let m = ServerMessage::error(
                        ErrorCode::NegotiationTimeout,
                        "the server's offer was not answered in time; join again",
                        None,
                    );
                    let _ = send_all(outgoing, vec![m]).await;
                    return End::Leave(Some((CLOSE_NEGOTIATION_TIMEOUT, "negotiation_timeout".into())));
                }
                _ = live.ping.tick() => {
                    if let Err(close) = keep_alive(outgoing, live, self.config.idle_timeout).await { return End::Lost(close) }
                }
                changed = phase.changed() => match phase_news(changed.is_ok().then(|| *phase.borrow_and_update())) {
                    Err(close) => return End::Leave(Some(close)),
                    Ok(Some(m)) => if send_all(outgoing, vec![m]).await.is_err() { return End::Lost(None) },
                    Ok(None) => {}
                },
            }
        }
    }

    /// A text frame on a socket without a participant: `join`, `resume`, `ping` and `leave` mean
    /// something; everything else is `not_joined`.
    async fn handle_unjoined(&self, text: &str) -> Unjoined {
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err(e) => return Unjoined::Reply(vec![parse_error(e)]),
        };
        let ty = msg.type_name();
        let refuse = |code: ErrorCode, message: &str| {
            self.count_join_failure(code);
            Unjoined::Reply(vec![ServerMessage::error(code, message, Some(ty))])
        };
        match msg {
            ClientMessage::Ping { id } => Unjoined::Reply(vec![ServerMessage::Pong { id }]),
            ClientMessage::Leave => Unjoined::Leave,
            ClientMessage::Resume { token, version } => match self.resume(&token, version).await {
                Ok((p, msgs)) => {
                    self.count_resume(true);
                    Unjoined::Joined(Box::new(p), msgs)
                }
                Err(e) => {
                    self.count_resume(false);
                    info!(code = %e.code(), "resume refused");
                    Unjoined::Reply(vec![ServerMessage::error(e.code(), e.message(), Some(ty))])
                }
            },
            ClientMessage::Join { room, name, role, version, token, moderator } => {
                if !self.is_ready() {
                    return refuse(ErrorCode::Draining, "the server is draining; join another server");
                }
                if version != PROTOCOL_VERSION {
                    return refuse(ErrorCode::UnsupportedVersion, "this server speaks protocol version 1");
                }
                if !valid_room(&room) {
                    return refuse(ErrorCode::InvalidRoom, "room names are 1-64 letters, digits, '-', '_' or '.'");
                }
                // With a secret, the token's grant replaces the requested name and role.
                // Open development mode grants the moderator flag to whoever asks for it.
                let (name, role, moderator, title) = match &self.config.tokens {
                    None => (name, role, moderator, None),
                    Some(verifier) => match verifier.verify(token.as_deref(), &room) {
                        Ok(grant) => (grant.name, grant.role, grant.moderator, grant.title),
                        Err(e) => {
                            info!(room = %room, code = %e.code(), "join token refused");
                            return refuse(e.code(), &e.to_string());
                        }
                    },
                };
                if !valid_name(&name) {
                    return refuse(ErrorCode::InvalidName, "names are 1-64 bytes without control characters");
                }
                match self.join(room, name, role, moderator, title) {
                    Ok((p, replies)) => Unjoined::Joined(Box::new(p), replies),
                    Err(ErrorCode::RoomFull) => refuse(ErrorCode::RoomFull, "the room is full"),
                    Err(code) => refuse(code, "the join could not be completed"),
                }
            }
            _ => Unjoined::Reply(vec![ServerMessage::error(ErrorCode::NotJoined, "send join first", Some(ty))]),
        }
    }

    /// A text frame on a socket that carries a participant.
    async fn handle_text(&self, text: &str, p: &Participant) -> Step {
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(code = %e.code, "bad client message");
                return Step::Reply(vec![parse_error(e)]);
            }
        };
        let ty = msg.type_name();
        match msg {
            ClientMessage::Ping { id } => Step::Reply(vec![ServerMessage::Pong { id }]),
            ClientMessage::Leave => Step::Leave,
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } => Step::Reply(vec![ServerMessage::error(
                ErrorCode::AlreadyJoined,
                "this socket already carries a participant",
                Some(ty),
            )]),
            other => self.handle_joined(&p.joined, other).await,
        }
    }

    async fn handle_joined(&self, j: &Joined, msg: ClientMessage) -> Step {
        let ty = msg.type_name();
        let err = |code: ErrorCode, message: &str| Step::Reply(vec![ServerMessage::error(code, message, Some(ty))]);
        match msg {
            ClientMessage::Offer { sdp } => {
                if sdp.len() > MAX_SDP_BYTES {
                    return err(ErrorCode::BadSdp, "SDP larger than 128 KiB");
                }
                match self.media.client_offer(j.session, sdp).await {
                    Ok(answer) => Step::Reply(vec![ServerMessage::Answer { sdp: answer }]),
                    Err(OfferRejection::BadSdp(detail)) => {
                        info!(%detail, "client offer refused");
                        err(ErrorCode::BadSdp, "the offer could not be parsed or negotiated")
                    }
                    Err(OfferRejection::NotAPublisher) => {
                        err(ErrorCode::ViewerCannotPublish, "viewers receive media only; this offer sends media")
                    }
                    Err(OfferRejection::Collision) => {
                        err(ErrorCode::OfferCollision, "answer the outstanding server offer, then offer again")
                    }
                    Err(OfferRejection::TooManyStreams { detail }) => err(ErrorCode::TooManyStreams, &detail),
                    Err(OfferRejection::Gone) => err(ErrorCode::Internal, "the media session is gone"),
                }
            }
            ClientMessage::Answer { sdp } => {
                if sdp.len() > MAX_SDP_BYTES {
                    return err(ErrorCode::BadSdp, "SDP larger than 128 KiB");
                }
                match self.media.client_answer(j.session, sdp).await {
                    Ok(()) => Step::Answered,
                    Err(AnswerRejection::BadSdp(detail)) => {
                        info!(%detail, "client answer refused");
                        err(ErrorCode::BadSdp, "the answer could not be parsed or does not match the offer")
                    }
                    Err(AnswerRejection::Unexpected) => {
                        err(ErrorCode::UnexpectedAnswer, "no server offer is outstanding")
                    }
                    Err(AnswerRejection::Gone) => err(ErrorCode::Internal, "the media session is gone"),
                }
            }
            ClientMessage::Candidate { candidate, .. } => {
                if let Some(c) = candidate.filter(|c| !c.trim().is_empty()) {
                    if c.len() <= 1024 {
                        self.media.add_candidate(j.session, c);
                    } else {
                        return err(ErrorCode::BadMessage, "candidate longer than 1024 bytes");
                    }
                }
                Step::Reply(vec![])
            }
            ClientMessage::Mute { kind, muted } => {
                if j.role != Role::Speaker {
                    return err(ErrorCode::ViewerCannotPublish, "viewers publish no media to mute");
                }
                if !muted && self.operator_muted(j, kind) {
                    return err(
                        ErrorCode::MutedByOperator,
                        "an operator muted this media; only an operator can unmute it",
                    );
                }
                self.set_muted(j, kind, muted);
                Step::Reply(vec![])
            }
            ClientMessage::React { reaction } => {
                let Ok(mut rooms) = self.rooms.lock() else { return err(ErrorCode::Internal, "internal error") };
                let Some(room) = rooms.by_name.get_mut(&j.room) else { return Step::Reply(vec![]) };
                match room.react(Instant::now(), j.id, reaction) {
                    Ok(true) => {
                        // One flush per interval and room, whoever reacts in it.
                        self.flush_later(&j.room, dais_proto::REACTIONS_INTERVAL_MS, Room::flush_reactions);
                        Step::Reply(vec![])
                    }
                    Ok(false) => Step::Reply(vec![]),
                    Err(code) => err(code, "too many reactions: at most 2 a second (bursts of 5) are counted"),
                }
            }
            ClientMessage::Chat { text } => match self.with_room(&j.room, |r| r.chat(Instant::now(), j.id, text)) {
                None | Some(Ok(_)) => Step::Reply(vec![]),
                Some(Err(code)) => err(code, chat_refusal(code)),
            },
            ClientMessage::RaiseHand { raised } => {
                let Ok(mut rooms) = self.rooms.lock() else { return err(ErrorCode::Internal, "internal error") };
                let Some(room) = rooms.by_name.get_mut(&j.room) else { return Step::Reply(vec![]) };
                match room.raise_hand(Instant::now(), j.id, raised) {
                    Ok(()) => Step::Reply(vec![]),
                    Err(ErrorCode::TooManyHandChanges) => {
                        err(ErrorCode::TooManyHandChanges, "at most one hand change a second (bursts of 4)")
                    }
                    Err(code) => err(code, "only viewers raise hands; speakers are on stage"),
                }
            }
            ClientMessage::Ask { text } => match self.with_room(&j.room, |r| r.ask(Instant::now(), j.id, text)) {
                Some(Ok(question)) => Step::Reply(vec![ServerMessage::Asked { question }]),
                Some(Err(code)) => err(code, question_refusal(code)),
                None => Step::Reply(vec![]),
            },
            ClientMessage::Upvote { question, undo } => {
                match self.with_room(&j.room, |r| r.upvote(Instant::now(), j.id, question, !undo)) {
                    Some(Err(code)) => err(code, question_refusal(code)),
                    _ => Step::Reply(vec![]),
                }
            }
            ClientMessage::AnswerQuestion { question } => {
                if !j.backstage() {
                    return err(ErrorCode::NotModerator, "only speakers and moderators mark questions answered");
                }
                match self.with_room(&j.room, |r| r.questions.answer(question)) {
                    Some(Err(code)) => err(code, question_refusal(code)),
                    _ => Step::Reply(vec![]),
                }
            }
            ClientMessage::Moderate { action, participant, kind, muted, message, question } => {
                if !j.moderator {
                    return err(ErrorCode::NotModerator, "moderate needs the moderator grant");
                }
                let target =
                    crate::admin::Target { participant: participant.as_deref(), kind, muted, message, question };
                match self.moderate(&j.room, action, target) {
                    Ok(()) => Step::Reply(vec![]),
                    Err(ModerateError::Missing(field)) => err(ErrorCode::BadMessage, field),
                    Err(ModerateError::NotFound) => {
                        err(ErrorCode::UnknownTarget, "no such participant or message in this room")
                    }
                }
            }
            ClientMessage::VideoSize { media, width, height } => {
                let Some(producer) = room::parse_media_wire_id(&media) else {
                    return err(ErrorCode::BadMessage, "media is not a stream id (m<digits>)");
                };
                let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                self.media.video_size(j.session, producer, clamp(width), clamp(height));
                Step::Reply(vec![])
            }
            // Join, ping and leave are handled before.
            _ => Step::Reply(vec![]),
        }
    }

    /// Run `flush` on room `name` in `after_ms` milliseconds (if the room is still there then).
    pub(crate) fn flush_later(&self, name: &str, after_ms: u64, flush: fn(&mut Room)) {
        let rooms = self.rooms.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
            if let Ok(mut rooms) = rooms.lock() {
                if let Some(room) = rooms.by_name.get_mut(&name) {
                    flush(room);
                }
            }
        });
    }

    /// Run `op` on room `name` under the rooms lock, then schedule the flushes of its questions and
    /// chat that `op` made due. `None`: the room is gone.
    pub(crate) fn with_room<T>(
        &self,
        name: &str,
        op: impl FnOnce(&mut Room) -> Result<T, ErrorCode>,
    ) -> Option<Result<T, ErrorCode>> {
        let Ok(mut rooms) = self.rooms.lock() else { return Some(Err(ErrorCode::Internal)) };
        let room = rooms.by_name.get_mut(name)?;
        let done = op(room);
        if room.questions.needs_timer() {
            self.flush_later(name, dais_proto::QUESTIONS_INTERVAL_MS, |r| r.questions.flush());
        }
        if let Some(after) = room.chat.needs_timer(Instant::now()) {
            let ms = u64::try_from(after.as_millis()).unwrap_or(dais_proto::CHAT_INTERVAL_MS);
            self.flush_later(name, ms, |r| r.chat.flush(Instant::now()));
        }
        Some(done)
    }

    fn join(
        &self,
        room_name: String,
        name: String,
        role: Role,
        moderator: bool,
        title: Option<String>,
    ) -> Result<(Participant, Vec<ServerMessage>), ErrorCode> {
        let entry = Entry { room: room_name, name, role, moderator, title, receives: Receives::All };
        let entered = self.enter(entry, |room, me| {
            let participants: Vec<_> =
                room.members.values().filter(|m| room::sees(role, m.info.role)).map(|m| m.info.clone()).collect();
            let (feeds, history) = Feeds::of(room, me.overflow.subscribe());
            (participants, feeds, history, room.title().map(str::to_owned))
        })?;
        let Entered { joined, notices, media, extra: (participants, feeds, history, room_title) } = entered;
        let viewers = *feeds.audience.borrow();
        let id = joined.id;
        let room_name = joined.room.clone();
        let p = self.new_participant(joined, notices, media, feeds);
        let reply = ServerMessage::Joined {
            room: room_name,
            participant_id: participant_wire_id(id),
            role,
            version: PROTOCOL_VERSION,
            participants,
            viewers,
            ice_servers: self.config.ice.for_participant(&participant_wire_id(id), std::time::SystemTime::now()),
            resume_token: (!p.token.is_empty()).then(|| p.token.clone()),
            moderator,
            title: room_title,
        };
        Ok((p, vec![reply, history]))
    }

    /// Add a member to its room (made if need be): the others hear of it, its media session opens and
    /// is subscribed to what the room publishes that it receives. `extra` runs under the same lock,
    /// on the room and the new member, before it is inserted.
    pub(crate) fn enter<T>(
        &self,
        entry: Entry,
        extra: impl FnOnce(&Room, &room::Member) -> T,
    ) -> Result<Entered<T>, ErrorCode> {
        let Entry { room: room_name, name, role, moderator, title, receives } = entry;
        let id = self.next_id();
        let (notice_tx, notices) = mpsc::channel::<ServerMessage>(room::NOTICE_QUEUE);
        let (media_tx, media_rx) = mpsc::unbounded_channel::<MediaEvent>();
        let Ok(mut rooms) = self.rooms.lock() else { return Err(ErrorCode::Internal) };
        let room = rooms.by_name.entry(room_name.clone()).or_default();
        if room.members.len() >= self.config.max_participants {
            if room.members.is_empty() {
                rooms.by_name.remove(&room_name);
            }
            return Err(ErrorCode::RoomFull);
        }
        // The configured title wins; else the first token that carries one names the room.
        if let Some(t) = self.config.titles.get(&room_name).or(title.as_ref()) {
            room.entitle(t);
        }
        let mode = match (&receives, role) {
            (Receives::All | Receives::Nothing, Role::Speaker) => SessionMode::Speaker,
            (Receives::All | Receives::Nothing, Role::Viewer) => SessionMode::Viewer,
            (Receives::Of(_), _) => SessionMode::Player,
        };
        let me = room::member(id, name, role, moderator, notice_tx, receives);
        let info = me.info.clone();
        room.broadcast_about(role, id, &ServerMessage::ParticipantJoined { participant: info.clone() });
        if role == Role::Viewer {
            room.count_viewer(true);
        }
        let extra = extra(room, &me);
        // Media session first, then subscriptions to what the room already publishes.
        self.media.open_session(id, mode, media_tx.clone());
        for m in room.members.values().filter(|m| me.receives.wants(&m.info)) {
            for (producer, media) in m.producers.iter().zip(&m.info.media) {
                self.media.subscribe(id, *producer, m.info.id.clone(), media.id.clone());
            }
        }
        room.members.insert(id, me);
        drop(rooms);
        info!(room = %room_name, participant = %info.id, ?role, ?mode, "joined");
        let joined = Joined { room: room_name, id, role, session: id, moderator };
        Ok(Entered { joined, notices, media: (media_tx, media_rx), extra })
    }

    /// Remove the participant. Others hear `media_unpublished` and `participant_left` before the media
    /// session closes, so the renegotiation offers that follow always come after the news.
    pub(crate) fn leave(&self, j: &Joined) {
        self.remove_member(j);
        self.media.close_session(j.session);
        info!(room = %j.room, participant = %participant_wire_id(j.id), "left");
    }

    fn remove_member(&self, j: &Joined) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let Some(room) = rooms.by_name.get_mut(&j.room) else { return };
        if let Some(me) = room.members.remove(&j.id) {
            let role = me.info.role;
            if role == Role::Speaker {
                room.forget_speaker(Instant::now(), j.id);
            }
            for media in &me.info.media {
                room.broadcast_about(
                    role,
                    j.id,
                    &ServerMessage::MediaUnpublished { participant_id: me.info.id.clone(), media_id: media.id.clone() },
                );
            }
            room.broadcast_about(role, j.id, &ServerMessage::ParticipantLeft { participant_id: me.info.id.clone() });
            if role == Role::Viewer {
                room.count_viewer(false);
            }
            if me.hand.is_some() {
                room.announce_hands();
            }
        }
        if room.members.is_empty() {
            rooms.by_name.remove(&j.room);
        }
    }

    /// The participant's media session is gone while it stays: every stream it published ends for the
    /// others (`media_unpublished`).
    pub(crate) fn unpublish_all(&self, j: &Joined) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let Some(room) = rooms.by_name.get_mut(&j.room) else { return };
        let Some(me) = room.members.get_mut(&j.id) else { return };
        me.producers.clear();
        let gone = std::mem::take(&mut me.info.media);
        let (pid, role) = (me.info.id.clone(), me.info.role);
        for media in gone {
            room.broadcast_about(
                role,
                j.id,
                &ServerMessage::MediaUnpublished { participant_id: pid.clone(), media_id: media.id },
            );
        }
    }

    fn operator_muted(&self, j: &Joined, kind: MediaKind) -> bool {
        let Ok(rooms) = self.rooms.lock() else { return false };
        rooms
            .by_name
            .get(&j.room)
            .and_then(|r| r.members.get(&j.id))
            .is_some_and(|m| m.operator_muted[room::kind_index(kind)])
    }

    fn set_muted(&self, j: &Joined, kind: MediaKind, muted: bool) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let Some(room) = rooms.by_name.get_mut(&j.room) else { return };
        let Some(me) = room.members.get_mut(&j.id) else { return };
        let (pid, role) = (me.info.id.clone(), me.info.role);
        match kind {
            MediaKind::Audio => me.audio_muted = muted,
            MediaKind::Video => me.video_muted = muted,
        }
        let mut changed = Vec::new();
        for media in me.info.media.iter_mut().filter(|m| m.kind == kind) {
            if media.muted != muted {
                media.muted = muted;
                changed.push(media.id.clone());
            }
        }
        for media_id in changed {
            let msg = ServerMessage::MuteChanged { participant_id: pid.clone(), media_id, kind, muted };
            room.broadcast_about(role, j.id, &msg);
        }
    }

    pub(crate) fn handle_media_event(&self, ev: MediaEvent, j: &Joined) -> Option<MediaStep> {
        match ev {
            MediaEvent::Offer { sdp } => Some(MediaStep::Offer(sdp)),
            MediaEvent::Disconnected => Some(MediaStep::Fail),
            MediaEvent::VideoPaused { producer, reason } => {
                Some(MediaStep::Tell(ServerMessage::VideoPaused { media_id: media_wire_id(producer), reason }))
            }
            MediaEvent::VideoResumed { producer } => {
                Some(MediaStep::Tell(ServerMessage::VideoResumed { media_id: media_wire_id(producer) }))
            }
            MediaEvent::AudioActivity { activity, .. } => {
                let Ok(mut rooms) = self.rooms.lock() else { return None };
                if let Some(room) = rooms.by_name.get_mut(&j.room) {
                    room.hear(Instant::now(), j.id, activity);
                }
                None
            }
            other => {
                self.apply_media_event(j, other);
                None
            }
        }
    }

    /// A media event that changes the room (published, unpublished) or is only logged (connected),
    /// whether or not a socket carries the participant.
    pub(crate) fn apply_media_event(&self, j: &Joined, ev: MediaEvent) {
        match ev {
            MediaEvent::Connected => info!(participant = %participant_wire_id(j.id), "media connected"),
            MediaEvent::Unpublished { producer } => {
                let Ok(mut rooms) = self.rooms.lock() else { return };
                let Some(room) = rooms.by_name.get_mut(&j.room) else { return };
                let Some(me) = room.members.get_mut(&j.id) else { return };
                let Some(idx) = me.producers.iter().position(|p| *p == producer) else { return };
                me.producers.remove(idx);
                let media = me.info.media.remove(idx);
                let role = me.info.role;
                let msg = ServerMessage::MediaUnpublished { participant_id: me.info.id.clone(), media_id: media.id };
                room.broadcast_about(role, j.id, &msg);
            }
            MediaEvent::Published { producer, kind, codec } => {
                let Ok(mut rooms) = self.rooms.lock() else { return };
                let Some(room) = rooms.by_name.get_mut(&j.room) else { return };
                let Some(me) = room.members.get_mut(&j.id) else { return };
                let muted = match kind {
                    MediaKind::Audio => me.audio_muted,
                    MediaKind::Video => me.video_muted,
                };
                if me.operator_muted[room::kind_index(kind)] {
                    // An operator's mute also holds for streams published after it.
                    self.media.set_paused(producer, true);
                }
                let media = MediaInfo { id: media_wire_id(producer), kind, codec, muted };
                me.info.media.push(media.clone());
                me.producers.push(producer);
                let (pid, role) = (me.info.id.clone(), me.info.role);
                room.broadcast_about(
                    role,
                    j.id,
                    &ServerMessage::MediaPublished { participant_id: pid.clone(), media: media.clone() },
                );
                let publisher = me_info(room, j.id);
                for (other, m) in &room.members {
                    if *other != j.id && publisher.as_ref().is_some_and(|p| m.receives.wants(p)) {
                        self.media.subscribe(m.session, producer, pid.clone(), media.id.clone());
                    }
                }
            }
            // Offers, failures and what only this client hears are the caller's.
            MediaEvent::Offer { .. }
            | MediaEvent::Disconnected
            | MediaEvent::VideoPaused { .. }
            | MediaEvent::VideoResumed { .. }
            | MediaEvent::AudioActivity { .. } => {}
        }
    }
}

/// The participant `id`'s public record in `room`.
fn me_info(room: &Room, id: u64) -> Option<dais_proto::ParticipantInfo> {
    room.members.get(&id).map(|m| m.info.clone())
}

/// Who enters a room, and what it receives.
pub(crate) struct Entry {
    pub room: String,
    pub name: String,
    pub role: Role,
    pub moderator: bool,
    pub title: Option<String>,
    pub receives: Receives,
}

/// A member that entered its room, with its channels and what the caller computed under the lock.
pub(crate) struct Entered<T> {
    pub joined: Joined,
    pub notices: mpsc::Receiver<ServerMessage>,
    pub media: (mpsc::UnboundedSender<MediaEvent>, mpsc::UnboundedReceiver<MediaEvent>),
    pub extra: T,
}

enum Step {
    Reply(Vec<ServerMessage>),
    /// The outstanding server offer was answered (nothing to reply).
    Answered,
    Leave,
}

/// Close code after `negotiation_timeout` (RFC 6455 1008, policy violation: the client broke the
/// offer/answer contract).
const CLOSE_NEGOTIATION_TIMEOUT: u16 = 1008;

/// Close code for a text frame that is not UTF-8 (RFC 6455 1007, invalid frame payload data).
const CLOSE_INVALID_DATA: u16 = 1007;

/// Close code for a message flood (RFC 6455 1008, policy violation).
const CLOSE_POLICY: u16 = 1008;

pub(crate) enum MediaStep {
    /// Send this server offer.
    Offer(String),
    /// Send this to the client (only while a socket carries it: a parked participant misses it).
    Tell(ServerMessage),
    Fail,
}

/// A client that does not read for this long (its TCP window stays full) is dropped, so a dead
/// network cannot freeze its connection task and, with it, kicks, drains and leaves.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The close frame and the close together take at most this long: a client that stopped reading is
/// let go (its socket dropped) once it runs out.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The room's next viewer count; once the room is gone, never.
async fn audience_changed(rx: &mut watch::Receiver<u64>) -> Option<u64> {
    if rx.changed().await.is_err() {
        return std::future::pending().await;
    }
    Some(*rx.borrow_and_update())
}

/// The next value of one of the room's watched messages (`speaking`, `reactions`, `hands`, a view
/// of the questions); once the room is gone, never.
async fn room_news<T: Clone>(rx: &mut watch::Receiver<Option<T>>) -> Option<T> {
    if rx.changed().await.is_err() {
        return std::future::pending().await;
    }
    rx.borrow_and_update().clone()
}

/// Chat batches a connection takes for one write beyond the first: what a client has not read
/// stays in the room's feed, where falling too far behind is noticed.
const MAX_GATHER: usize = 16;

/// What the room broadcasts to this connection, gathered for one write: the next chat batch or
/// reaction totals, whichever comes first, then every batch and the totals that are ready too (a
/// room flushes its chat with its reactions, so a busy room costs a connection one write for both).
/// `Err` with how many batches it missed when the client fell behind by more than the feed holds;
/// once the room is gone, never.
async fn room_broadcast(
    feed: &mut broadcast::Receiver<Batch>,
    reactions: &mut watch::Receiver<Option<bytes::Bytes>>,
) -> Result<Vec<bytes::Bytes>, u64> {
    let mut frames = Vec::new();
    let (mut feed_open, mut reactions_open) = (true, true);
    loop {
        if !feed_open && !reactions_open {
            return std::future::pending().await;
        }
        tokio::select! {
            batch = feed.recv(), if feed_open => match batch {
                Ok(b) => {
                    frames.extend(b.iter().cloned());
                    break;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(n),
                Err(broadcast::error::RecvError::Closed) => feed_open = false,
            },
            changed = reactions.changed(), if reactions_open => match changed {
                Ok(()) => {
                    frames.extend(reactions.borrow_and_update().clone());
                    break;
                }
                Err(_) => reactions_open = false,
            },
        }
    }
    for _ in 0..MAX_GATHER {
        match feed.try_recv() {
            Ok(b) => frames.extend(b.iter().cloned()),
            Err(broadcast::error::TryRecvError::Lagged(n)) => return Err(n),
            Err(_) => break,
        }
    }
    if reactions.has_changed().unwrap_or(false) {
        frames.extend(reactions.borrow_and_update().clone());
    }
    Ok(frames)
}

/// The text of a refused `ask`, `upvote` or `answer_question`.
fn question_refusal(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidQuestion => {
            "a question must be 1-300 bytes, without control characters other than line feeds"
        }
        ErrorCode::TooManyQuestions => "too many questions: at most one every 10 s (bursts of 2)",
        ErrorCode::QuestionsFull => "the room holds 100 open questions; ask again once some are answered",
        ErrorCode::UnknownQuestion => "no open question has that id",
        ErrorCode::TooManyVotes => "too many votes: at most 2 a second (bursts of 10)",
        ErrorCode::ChatSilenced => "an operator silenced your chat and questions",
        _ => "the question could not be taken",
    }
}

/// The text of a refused `chat`.
fn chat_refusal(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidChat => "chat text must be 1-500 bytes, without control characters other than line feeds",
        ErrorCode::TooManyChats => "too many chat messages: at most one every 2 s (bursts of 3)",
        ErrorCode::ChatSilenced => "an operator silenced your chat",
        ErrorCode::ChatDisabled => "an operator turned viewer chat off for this room",
        _ => "the message could not be sent",
    }
}

/// A non-text frame: the reply to send, or `Err` with the close frame to send when the socket is done
/// (`None`: nothing to send, the client went away).
fn socket_frame(frame: Frame) -> Result<Vec<ServerMessage>, Option<(u16, String)>> {
    match frame {
        Frame::Binary => {
            Ok(vec![ServerMessage::error(ErrorCode::BinaryNotSupported, "the protocol uses text frames only", None)])
        }
        Frame::Pong | Frame::Text(_) => Ok(vec![]),
        Frame::TooBig => {
            warn!("oversized frame, closing");
            Err(Some((CLOSE_MESSAGE_TOO_BIG, "message too big".into())))
        }
        Frame::InvalidUtf8 => {
            warn!("text frame that is not UTF-8, closing");
            Err(Some((CLOSE_INVALID_DATA, "invalid UTF-8".into())))
        }
        Frame::Close => Err(None),
        Frame::Error(e) => {
            debug!("transport error: {e}");
            Err(None)
        }
    }
}

/// One server ping, after closing a socket idle for `idle` (`Err` with the close frame) or one that
/// does not take the ping (`Err(None)`).
async fn keep_alive<K>(out: &mut K, live: &Liveness, idle: std::time::Duration) -> Result<(), Option<(u16, String)>>
where
    K: Sink<OutFrame> + Unpin,
{
    if live.last_seen.elapsed() > idle {
        let m = ServerMessage::error(ErrorCode::IdleTimeout, "no traffic from the client", None);
        let _ = send_all(out, vec![m]).await;
        return Err(Some((1001, "idle".into())));
    }
    match tokio::time::timeout(SEND_TIMEOUT, out.send(OutFrame::Ping)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(None),
    }
}

/// What a change of the service's phase means for a socket: `Err` with the close frame (shutting
/// down), or a `draining` notice. `None` in: the service is gone.
fn phase_news(now: Option<Phase>) -> Result<Option<ServerMessage>, (u16, String)> {
    match now.unwrap_or(Phase::Closing) {
        Phase::Closing => Err((1001, "server shutting down".into())),
        Phase::Draining(within_ms) => Ok(Some(ServerMessage::Draining { within_ms })),
        Phase::Running => Ok(None),
    }
}

fn parse_error(e: dais_proto::ParseError) -> ServerMessage {
    ServerMessage::Error { code: e.code, message: e.message, request: e.request }
}

/// Send a message serialized once for many connections.
async fn send_shared<K>(out: &mut K, text: bytes::Bytes) -> Result<(), ()>
where
    K: Sink<OutFrame> + Unpin,
{
    send_frames(out, vec![text]).await
}

/// Send buffers serialized once for many connections, with one flush.
async fn send_frames<K>(out: &mut K, frames: Vec<bytes::Bytes>) -> Result<(), ()>
where
    K: Sink<OutFrame> + Unpin,
{
    let write = async {
        for f in frames {
            out.feed(OutFrame::Shared(f)).await?;
        }
        out.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn send_all<K>(out: &mut K, msgs: Vec<ServerMessage>) -> Result<(), ()>
where
    K: Sink<OutFrame> + Unpin,
{
    for m in msgs {
        match tokio::time::timeout(SEND_TIMEOUT, out.send(OutFrame::Text(m.to_json()))).await {
            Ok(Ok(())) => {}
            _ => return Err(()),
        }
    }
    Ok(())
}
