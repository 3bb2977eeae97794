//! One WebSocket connection: the participant's state machine.
//!
//! States: *connected* (only `join`, `ping` and `leave` are meaningful), *joined* (everything), and
//! *closed*. Every failure of a client message is answered with an `error` and the connection stays
//! open, except an oversized frame (close 1009), `leave` (1000), shutdown (1001), idle timeout (1001), a
//! failed media connection (`media_failed`, 1011) and a server offer unanswered for
//! `negotiation_timeout` (1008). When the task ends
//! for any reason the participant leaves its room: others get `media_unpublished` for each of its
//! streams and `participant_left`, and its media session is closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use dais_proto::{
    parse_client, valid_name, valid_room, ClientMessage, ErrorCode, MediaInfo, MediaKind, Role, ServerMessage,
    CLOSE_MESSAGE_TOO_BIG, MAX_SDP_BYTES, PROTOCOL_VERSION,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admin::Control;
use crate::media_api::{AnswerRejection, MediaEvent, OfferRejection};
use crate::room::{self, media_wire_id, participant_wire_id};
use crate::{Frame, OutFrame, Phase, Signaling};

struct Joined {
    room: String,
    id: u64,
    role: Role,
    /// The room's viewer count, subscribed under the join's lock so no change is missed; the
    /// connection loop takes it.
    audience: Option<watch::Receiver<u64>>,
}

/// Why the loop ended.
enum End {
    /// Client went away or asked to leave; `Some` sends a close frame.
    Close(Option<(u16, String)>),
}

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
        let (notice_tx, mut notice_rx) = mpsc::unbounded_channel::<ServerMessage>();
        let (media_tx, mut media_rx) = mpsc::unbounded_channel::<MediaEvent>();
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
        let mut joined: Option<Joined> = None;
        let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();
        let mut registered = false;
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut last_seen = Instant::now();
        // The room's viewer count once joined; after each `audience` sent, changes wait out the hold.
        let mut audience: Option<watch::Receiver<u64>> = None;
        // The count this client last heard (in `joined`, then in `audience`).
        let mut heard = 0u64;
        let hold = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(hold);
        let mut holding = false;
        // A server offer awaits the client's answer until `answer_due`.
        let answer_due = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(answer_due);
        let mut awaiting_answer = false;

        let end = loop {
            tokio::select! {
                // Room news before media events: a `media_unpublished` queued before the media plane
                // produced its renegotiation offer is always delivered first.
                biased;
                Some(msg) = notice_rx.recv() => {
                    if send_all(&mut outgoing, vec![msg]).await.is_err() { break End::Close(None); }
                }
                frame = incoming.next() => {
                    last_seen = Instant::now();
                    let frame = frame.unwrap_or(Frame::Close);
                    match frame {
                        Frame::Text(text) => {
                            let step = self.handle_text(&text, &mut joined, &notice_tx, &media_tx).await;
                            if let (false, Some(j)) = (registered, joined.as_mut()) {
                                self.register_control(j.id, control_tx.clone());
                                audience = j.audience.take();
                                heard = audience.as_ref().map_or(0, |a| *a.borrow());
                                registered = true;
                            }
                            match step {
                                Step::Reply(msgs) => {
                                    if send_all(&mut outgoing, msgs).await.is_err() { break End::Close(None); }
                                }
                                Step::Answered => awaiting_answer = false,
                                Step::Leave => break End::Close(Some((1000, "bye".into()))),
                            }
                        }
                        Frame::Binary => {
                            let m = ServerMessage::error(ErrorCode::BinaryNotSupported, "the protocol uses text frames only", None);
                            if send_all(&mut outgoing, vec![m]).await.is_err() { break End::Close(None); }
                        }
                        Frame::Pong => {}
                        Frame::TooBig => {
                            warn!("oversized frame, closing");
                            break End::Close(Some((CLOSE_MESSAGE_TOO_BIG, "message too big".into())));
                        }
                        Frame::Close => break End::Close(None),
                        Frame::Error(e) => { debug!("transport error: {e}"); break End::Close(None); }
                    }
                }
                Some(ctl) = control_rx.recv() => match ctl {
                    Control::Close { code, close, message } => {
                        let _ = send_all(&mut outgoing, vec![ServerMessage::error(code, message, None)]).await;
                        break End::Close(Some((close, code.as_str().into())));
                    }
                    Control::SetRole(role) => {
                        let Some(j) = joined.as_mut() else { continue };
                        j.role = role;
                        info!(?role, "role changed by an operator");
                        let m = ServerMessage::RoleChanged { participant_id: participant_wire_id(j.id), role };
                        if send_all(&mut outgoing, vec![m]).await.is_err() { break End::Close(None); }
                    }
                },
                Some(ev) = media_rx.recv() => {
                    let step = self.handle_media_event(ev, joined.as_ref());
                    if let Some(MediaStep::Fail) = step {
                        let m = ServerMessage::error(ErrorCode::MediaFailed, "the media connection was lost", None);
                        let _ = send_all(&mut outgoing, vec![m]).await;
                        break End::Close(Some((1011, "media failed".into())));
                    }
                    if let Some(MediaStep::Send(m)) = step {
                        // The clock starts at the first offer after an accepted answer: the same
                        // offer sent again after a refused answer does not extend it.
                        if matches!(m, ServerMessage::Offer { .. }) && !awaiting_answer {
                            awaiting_answer = true;
                            answer_due.as_mut().reset(tokio::time::Instant::now() + self.config.negotiation_timeout);
                        }
                        if send_all(&mut outgoing, vec![m]).await.is_err() { break End::Close(None); }
                    }
                }
                viewers = audience_changed(audience.as_mut()), if !holding => match viewers {
                    // A change undone within the hold (3 -> 4 -> 3) is no news.
                    Some(viewers) if viewers == heard => {}
                    Some(viewers) => {
                        let m = ServerMessage::Audience { viewers };
                        if send_all(&mut outgoing, vec![m]).await.is_err() { break End::Close(None); }
                        heard = viewers;
                        hold.as_mut().reset(tokio::time::Instant::now() + self.config.audience_interval);
                        holding = true;
                    }
                    None => audience = None,
                },
                () = &mut hold, if holding => holding = false,
                () = &mut answer_due, if awaiting_answer => {
                    warn!("the server offer was not answered in time, closing");
                    let m = ServerMessage::error(
                        ErrorCode::NegotiationTimeout,
                        "the server's offer was not answered in time; join again",
                        None,
                    );
                    let _ = send_all(&mut outgoing, vec![m]).await;
                    break End::Close(Some((CLOSE_NEGOTIATION_TIMEOUT, "negotiation_timeout".into())));
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > self.config.idle_timeout {
                        let m = ServerMessage::error(ErrorCode::IdleTimeout, "no traffic from the client", None);
                        let _ = send_all(&mut outgoing, vec![m]).await;
                        break End::Close(Some((1001, "idle".into())));
                    }
                    if !matches!(tokio::time::timeout(SEND_TIMEOUT, outgoing.send(OutFrame::Ping)).await, Ok(Ok(()))) {
                        break End::Close(None);
                    }
                }
                changed = phase.changed() => {
                    let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Closing };
                    match now {
                        Phase::Closing => break End::Close(Some((1001, "server shutting down".into()))),
                        Phase::Draining(within_ms) => {
                            let m = ServerMessage::Draining { within_ms };
                            if send_all(&mut outgoing, vec![m]).await.is_err() { break End::Close(None); }
                        }
                        Phase::Running => {}
                    }
                }
            }
        };

        if let Some(j) = joined.take() {
            self.unregister_control(j.id);
            self.leave(&j);
        }
        let End::Close(frame) = end;
        if let Some((code, reason)) = frame {
            let _ = outgoing.send(OutFrame::Close(code, reason)).await;
        }
        let _ = outgoing.close().await;
        // Counted until the close frame is out: shutdown waits for this to reach zero.
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    async fn handle_text(
        &self,
        text: &str,
        joined: &mut Option<Joined>,
        notices: &mpsc::UnboundedSender<ServerMessage>,
        media_events: &mpsc::UnboundedSender<MediaEvent>,
    ) -> Step {
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(code = %e.code, "bad client message");
                return Step::Reply(vec![ServerMessage::Error {
                    code: e.code,
                    message: e.message,
                    request: e.request,
                }]);
            }
        };
        let ty = msg.type_name();
        let err = |code: ErrorCode, message: &str| Step::Reply(vec![ServerMessage::error(code, message, Some(ty))]);
        match msg {
            ClientMessage::Ping { id } => Step::Reply(vec![ServerMessage::Pong { id }]),
            ClientMessage::Leave => Step::Leave,
            ClientMessage::Join { room, name, role, version, token } => {
                if joined.is_some() {
                    return err(ErrorCode::AlreadyJoined, "this socket already joined a room");
                }
                let refuse = |code: ErrorCode, message: &str| {
                    self.count_join_failure(code);
                    Step::Reply(vec![ServerMessage::error(code, message, Some(ty))])
                };
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
                let (name, role) = match &self.config.tokens {
                    None => (name, role),
                    Some(verifier) => match verifier.verify(token.as_deref(), &room) {
                        Ok(grant) => (grant.name, grant.role),
                        Err(e) => {
                            info!(room = %room, code = %e.code(), "join token refused");
                            return refuse(e.code(), &e.to_string());
                        }
                    },
                };
                if !valid_name(&name) {
                    return refuse(ErrorCode::InvalidName, "names are 1-64 bytes without control characters");
                }
                match self.join(room, name, role, notices.clone(), media_events.clone()) {
                    Ok((j, reply)) => {
                        tracing::Span::current().record("room", j.room.as_str());
                        tracing::Span::current().record("participant", participant_wire_id(j.id).as_str());
                        *joined = Some(j);
                        Step::Reply(vec![reply])
                    }
                    Err(ErrorCode::RoomFull) => refuse(ErrorCode::RoomFull, "the room is full"),
                    Err(code) => refuse(code, "the join could not be completed"),
                }
            }
            other => {
                let Some(j) = joined.as_ref() else {
                    return err(ErrorCode::NotJoined, "send join first");
                };
                self.handle_joined(j, other).await
            }
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
                match self.media.client_offer(j.id, sdp).await {
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
                    Err(OfferRejection::Gone) => err(ErrorCode::Internal, "the media session is gone"),
                }
            }
            ClientMessage::Answer { sdp } => {
                if sdp.len() > MAX_SDP_BYTES {
                    return err(ErrorCode::BadSdp, "SDP larger than 128 KiB");
                }
                match self.media.client_answer(j.id, sdp).await {
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
                        self.media.add_candidate(j.id, c);
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
            // Join, ping and leave are handled before.
            _ => Step::Reply(vec![]),
        }
    }

    fn join(
        &self,
        room_name: String,
        name: String,
        role: Role,
        notices: mpsc::UnboundedSender<ServerMessage>,
        media_events: mpsc::UnboundedSender<MediaEvent>,
    ) -> Result<(Joined, ServerMessage), ErrorCode> {
        let id = self.next_id();
        let Ok(mut rooms) = self.rooms.lock() else { return Err(ErrorCode::Internal) };
        let room = rooms.by_name.entry(room_name.clone()).or_default();
        if room.members.len() >= self.config.max_participants {
            return Err(ErrorCode::RoomFull);
        }
        let me = room::member(id, name, role, notices);
        let info = me.info.clone();
        let participants: Vec<_> =
            room.members.values().filter(|m| room::sees(role, m.info.role)).map(|m| m.info.clone()).collect();
        room.broadcast_about(role, id, &ServerMessage::ParticipantJoined { participant: info.clone() });
        if role == Role::Viewer {
            room.count_viewer(true);
        }
        let audience = room.viewers.subscribe();
        let viewers = *audience.borrow();
        // Media session first, then subscriptions to what the room already publishes.
        self.media.open_session(id, role == Role::Speaker, media_events);
        for m in room.members.values() {
            for (producer, media) in m.producers.iter().zip(&m.info.media) {
                self.media.subscribe(id, *producer, m.info.id.clone(), media.id.clone());
            }
        }
        room.members.insert(id, me);
        info!(room = %room_name, participant = %info.id, ?role, "joined");
        let reply = ServerMessage::Joined {
            room: room_name.clone(),
            participant_id: participant_wire_id(id),
            role,
            version: PROTOCOL_VERSION,
            participants,
            viewers,
            ice_servers: self.config.ice.for_participant(&participant_wire_id(id), std::time::SystemTime::now()),
        };
        Ok((Joined { room: room_name, id, role, audience: Some(audience) }, reply))
    }

    /// Remove the participant. Others hear `media_unpublished` and `participant_left` before the media
    /// session closes, so the renegotiation offers that follow always come after the news.
    fn leave(&self, j: &Joined) {
        self.remove_member(j);
        self.media.close_session(j.id);
        info!(room = %j.room, participant = %participant_wire_id(j.id), "left");
    }

    fn remove_member(&self, j: &Joined) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let Some(room) = rooms.by_name.get_mut(&j.room) else { return };
        if let Some(me) = room.members.remove(&j.id) {
            let role = me.info.role;
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
        }
        if room.members.is_empty() {
            rooms.by_name.remove(&j.room);
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

    fn handle_media_event(&self, ev: MediaEvent, joined: Option<&Joined>) -> Option<MediaStep> {
        let j = joined?;
        match ev {
            MediaEvent::Offer { sdp } => Some(MediaStep::Send(ServerMessage::Offer { sdp })),
            MediaEvent::Connected => {
                info!(participant = %participant_wire_id(j.id), "media connected");
                None
            }
            MediaEvent::Disconnected => Some(MediaStep::Fail),
            MediaEvent::Unpublished { producer } => {
                let Ok(mut rooms) = self.rooms.lock() else { return None };
                let room = rooms.by_name.get_mut(&j.room)?;
                let me = room.members.get_mut(&j.id)?;
                let idx = me.producers.iter().position(|p| *p == producer)?;
                me.producers.remove(idx);
                let media = me.info.media.remove(idx);
                let role = me.info.role;
                let msg = ServerMessage::MediaUnpublished { participant_id: me.info.id.clone(), media_id: media.id };
                room.broadcast_about(role, j.id, &msg);
                None
            }
            MediaEvent::Published { producer, kind, codec } => {
                let Ok(mut rooms) = self.rooms.lock() else { return None };
                let room = rooms.by_name.get_mut(&j.room)?;
                let me = room.members.get_mut(&j.id)?;
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
                for (other, m) in &room.members {
                    if *other != j.id {
                        self.media.subscribe(m.session, producer, pid.clone(), media.id.clone());
                    }
                }
                None
            }
        }
    }
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

enum MediaStep {
    Send(ServerMessage),
    Fail,
}

/// A client that does not read for this long (its TCP window stays full) is dropped, so a dead
/// network cannot freeze its connection task and, with it, kicks, drains and leaves.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The room's next viewer count; `None` once the room is gone. Without a room it never resolves.
async fn audience_changed(rx: Option<&mut watch::Receiver<u64>>) -> Option<u64> {
    let Some(rx) = rx else { return std::future::pending().await };
    rx.changed().await.ok()?;
    Some(*rx.borrow_and_update())
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
