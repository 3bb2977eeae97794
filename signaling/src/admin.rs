//! Operator actions on live rooms: kick, close a room, server-side mute, and role changes in place.
//!
//! Each action updates the room state under the rooms lock, tells the affected connection through
//! its control channel (registered when it joined), informs the rest of the room, and drives the
//! media plane through [`MediaPlane`](crate::MediaPlane). Nothing here waits on a client.

use std::time::Instant;

use dais_proto::{ErrorCode, MediaKind, ModerateAction, Role, ServerMessage};
use tokio::sync::mpsc;

use crate::Signaling;

/// An instruction from an operator to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Send `error{code}` and close with `close`.
    Close { code: ErrorCode, close: u16, message: &'static str },
    /// The participant's role changed.
    SetRole(Role),
}

/// Why an admin action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No room of that name.
    #[error("no such room")]
    RoomNotFound,
    /// No participant of that id in the room.
    #[error("no such participant in the room")]
    ParticipantNotFound,
    /// No chat message of that id in the room.
    #[error("no such chat message in the room")]
    MessageNotFound,
    /// No question of that id in the room (for answering: no open one).
    #[error("no such question in the room")]
    QuestionNotFound,
    /// The participant is a WHIP publisher or WHEP player, whose session cannot renegotiate.
    #[error("a WHIP or WHEP participant keeps its role")]
    FixedRole,
}

/// What a `moderate` names besides its action (each action reads the fields it needs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Target<'a> {
    pub participant: Option<&'a str>,
    pub kind: Option<MediaKind>,
    pub muted: Option<bool>,
    pub message: Option<u64>,
    pub question: Option<u64>,
}

/// Why a moderator's action failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModerateError {
    /// A field the action needs is missing: the message says which.
    Missing(&'static str),
    /// The participant or message is not in the room.
    NotFound,
}

/// Close code sent to a kicked participant.
pub const CLOSE_KICKED: u16 = 4001;
/// Close code sent to participants of a closed room.
pub const CLOSE_ROOM_CLOSED: u16 = 4002;

impl Signaling {
    pub(crate) fn register_control(&self, participant: u64, tx: mpsc::UnboundedSender<Control>) {
        if let Ok(mut c) = self.controls.lock() {
            c.insert(participant, tx);
        }
    }

    pub(crate) fn unregister_control(&self, participant: u64) {
        if let Ok(mut c) = self.controls.lock() {
            c.remove(&participant);
        }
    }

    fn control(&self, participant: u64, ctl: Control) {
        if let Ok(c) = self.controls.lock() {
            if let Some(tx) = c.get(&participant) {
                let _ = tx.send(ctl);
            }
        }
    }

    /// Find a member's numeric id by wire id, in a room.
    fn member_id(&self, room: &str, participant: &str) -> Result<u64, AdminError> {
        let rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
        let r = rooms.by_name.get(room).ok_or(AdminError::RoomNotFound)?;
        r.find(participant).ok_or(AdminError::ParticipantNotFound)
    }

    /// Remove a participant: it gets `error{kicked}` and close 4001, then leaves as usual.
    pub fn admin_kick(&self, room: &str, participant: &str) -> Result<(), AdminError> {
        let id = self.member_id(room, participant)?;
        self.control(
            id,
            Control::Close { code: ErrorCode::Kicked, close: CLOSE_KICKED, message: "removed by an operator" },
        );
        Ok(())
    }

    /// Close a room: every participant gets `error{room_closed}` and close 4002. Returns how many.
    pub fn admin_close_room(&self, room: &str) -> Result<usize, AdminError> {
        let ids: Vec<u64> = {
            let rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
            rooms.by_name.get(room).ok_or(AdminError::RoomNotFound)?.members.keys().copied().collect()
        };
        for id in &ids {
            self.control(
                *id,
                Control::Close {
                    code: ErrorCode::RoomClosed,
                    close: CLOSE_ROOM_CLOSED,
                    message: "the room was closed by an operator",
                },
            );
        }
        Ok(ids.len())
    }

    /// Server-side mute: stop (or resume) forwarding the participant's streams of `kind`. Everyone,
    /// the participant included, gets `mute_changed`. Returns how many streams changed.
    pub fn admin_mute(&self, room: &str, participant: &str, kind: MediaKind, muted: bool) -> Result<usize, AdminError> {
        let mut rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
        let r = rooms.by_name.get_mut(room).ok_or(AdminError::RoomNotFound)?;
        let (_, m) =
            r.members.iter_mut().find(|(_, m)| m.info.id == participant).ok_or(AdminError::ParticipantNotFound)?;
        let (pid, subject) = (m.info.id.clone(), m.info.role);
        let mut changed = Vec::new();
        for (producer, media) in m.producers.iter().zip(m.info.media.iter_mut()) {
            if media.kind == kind {
                self.media.set_paused(*producer, muted);
                if media.muted != muted {
                    media.muted = muted;
                    changed.push(media.id.clone());
                }
            }
        }
        match kind {
            MediaKind::Audio => m.audio_muted = muted,
            MediaKind::Video => m.video_muted = muted,
        }
        m.operator_muted[crate::room::kind_index(kind)] = muted;
        for media_id in &changed {
            let msg =
                ServerMessage::MuteChanged { participant_id: pid.clone(), media_id: media_id.clone(), kind, muted };
            r.broadcast_about(subject, u64::MAX, &msg);
        }
        Ok(changed.len())
    }

    /// Promote or demote a participant in place: no reconnect, the session renegotiates. It and the
    /// room's speakers get `role_changed`; viewers, who see only speakers, get `participant_joined` for a
    /// promoted one and `participant_left` for a demoted one; and the participant itself now sees the
    /// room's viewers (promoted) or no longer does (demoted). A demoted speaker's streams end
    /// (`media_unpublished` follows, to the speakers).
    pub fn admin_set_role(&self, room: &str, participant: &str, role: Role) -> Result<(), AdminError> {
        let mut rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
        let r = rooms.by_name.get_mut(room).ok_or(AdminError::RoomNotFound)?;
        let (&id, m) =
            r.members.iter_mut().find(|(_, m)| m.info.id == participant).ok_or(AdminError::ParticipantNotFound)?;
        if m.info.role == role {
            return Ok(());
        }
        if m.receives != crate::room::Receives::All {
            return Err(AdminError::FixedRole);
        }
        m.info.role = role;
        let (session, info) = (m.session, m.info.clone());
        let role_changed = ServerMessage::RoleChanged { participant_id: info.id.clone(), role };
        let mut for_it = Vec::new();
        for (_, o) in r.members.iter().filter(|(other, _)| **other != id) {
            let msg = match (o.info.role, role) {
                (Role::Speaker, _) => role_changed.clone(),
                (Role::Viewer, Role::Speaker) => ServerMessage::ParticipantJoined { participant: info.clone() },
                (Role::Viewer, Role::Viewer) => ServerMessage::ParticipantLeft { participant_id: info.id.clone() },
            };
            o.notify(msg);
            if o.info.role == Role::Viewer {
                for_it.push(match role {
                    Role::Speaker => ServerMessage::ParticipantJoined { participant: o.info.clone() },
                    Role::Viewer => ServerMessage::ParticipantLeft { participant_id: o.info.id.clone() },
                });
            }
        }
        if let Some(m) = r.members.get(&id) {
            for_it.into_iter().for_each(|msg| m.notify(msg));
        }
        r.count_viewer(role == Role::Viewer);
        if role == Role::Speaker {
            r.lower_hand(id);
        }
        if role == Role::Viewer {
            r.forget_speaker(std::time::Instant::now(), id);
        }
        drop(rooms);
        self.control(id, Control::SetRole(role));
        self.media.set_publisher(session, role == Role::Speaker);
        Ok(())
    }

    /// A moderator's `moderate` in `room`: the admin action it names.
    pub(crate) fn moderate(&self, room: &str, action: ModerateAction, t: Target<'_>) -> Result<(), ModerateError> {
        let who = || t.participant.ok_or(ModerateError::Missing("this action needs participant"));
        let done = match action {
            ModerateAction::Promote => self.admin_set_role(room, who()?, Role::Speaker),
            ModerateAction::Demote => self.admin_set_role(room, who()?, Role::Viewer),
            ModerateAction::Kick => self.admin_kick(room, who()?),
            ModerateAction::Mute => {
                let kind = t.kind.ok_or(ModerateError::Missing("mute needs kind"))?;
                self.admin_mute(room, who()?, kind, t.muted.unwrap_or(true)).map(|_| ())
            }
            ModerateAction::LowerHand => self.admin_lower_hand(room, who()?),
            ModerateAction::DeleteChat => {
                self.admin_delete_chat(room, t.message.ok_or(ModerateError::Missing("delete_chat needs message"))?)
            }
            ModerateAction::DeleteQuestion => self.admin_delete_question(
                room,
                t.question.ok_or(ModerateError::Missing("delete_question needs question"))?,
            ),
        };
        done.map_err(|_| ModerateError::NotFound)
    }

    /// Lower a viewer's raised hand (it hears `hand`, speakers and moderators the new `hands`).
    pub fn admin_lower_hand(&self, room: &str, participant: &str) -> Result<(), AdminError> {
        let mut rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
        let r = rooms.by_name.get_mut(room).ok_or(AdminError::RoomNotFound)?;
        let id = r.find(participant).ok_or(AdminError::ParticipantNotFound)?;
        r.lower_hand(id);
        Ok(())
    }

    /// Delete chat message `id` for everyone in the room (`chat_deleted`); a participant who joins
    /// later no longer gets it in `chat_history`.
    pub fn admin_delete_chat(&self, room: &str, id: u64) -> Result<(), AdminError> {
        match self.with_room(room, |r| Ok(r.chat.delete(Instant::now(), id))) {
            None => Err(AdminError::RoomNotFound),
            Some(Ok(true)) => Ok(()),
            Some(_) => Err(AdminError::MessageNotFound),
        }
    }

    /// Delete question `id` (open or answered) for everyone in the room; the next `questions` no
    /// longer holds it.
    pub fn admin_delete_question(&self, room: &str, id: u64) -> Result<(), AdminError> {
        let deleted = self.with_room(room, |r| r.questions.delete(id).then_some(()).ok_or(ErrorCode::UnknownQuestion));
        deleted.ok_or(AdminError::RoomNotFound)?.map_err(|_| AdminError::QuestionNotFound)
    }

    /// Mark open question `id` answered, as a speaker's `answer_question` does.
    pub fn admin_answer_question(&self, room: &str, id: u64) -> Result<(), AdminError> {
        let answered = self.with_room(room, |r| r.questions.answer(id)).ok_or(AdminError::RoomNotFound)?;
        answered.map_err(|_| AdminError::QuestionNotFound)
    }

    /// The room's questions as speakers see them (the JSON of the latest `questions`; `null` before
    /// the first question).
    pub fn admin_questions(&self, room: &str) -> Result<Option<bytes::Bytes>, AdminError> {
        let rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
        let r = rooms.by_name.get(room).ok_or(AdminError::RoomNotFound)?;
        let view = r.questions.all.borrow().clone();
        Ok(view)
    }

    /// Silence (or let speak again) a participant's chat: its `chat` is refused with `chat_silenced`.
    /// It lasts as long as the participant (a resume keeps it; a new join is a new participant).
    pub fn admin_silence_chat(&self, room: &str, participant: &str, silenced: bool) -> Result<(), AdminError> {
        let mut rooms = self.rooms.lock().map_err(|_| AdminError::RoomNotFound)?;
        let r = rooms.by_name.get_mut(room).ok_or(AdminError::RoomNotFound)?;
        let id = r.find(participant).ok_or(AdminError::ParticipantNotFound)?;
        if let Some(m) = r.members.get_mut(&id) {
            m.chat_silenced = silenced;
        }
        Ok(())
    }

    /// Let the room's viewers chat, or not (`chat_policy` to everyone on a change); speakers always may.
    pub fn admin_viewer_chat(&self, room: &str, allowed: bool) -> Result<(), AdminError> {
        let set = self.with_room(room, |r| {
            r.chat.set_viewer_chat(Instant::now(), allowed);
            Ok(())
        });
        set.ok_or(AdminError::RoomNotFound)?.map_err(|_| AdminError::RoomNotFound)
    }
}
