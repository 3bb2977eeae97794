//! Room state: who is in which room, with what role and media.
//!
//! Invariants: a participant id is in exactly one room; a room with no participants is removed; every
//! media entry of a member names a producer the media plane announced for that member's session.

use std::collections::{BTreeMap, HashMap};

use dais_proto::{MediaInfo, ParticipantInfo, Role, ServerMessage};
use tokio::sync::mpsc;

/// One participant inside a room.
#[derive(Debug)]
pub(crate) struct Member {
    pub info: ParticipantInfo,
    pub session: u64,
    /// Producer id of each entry of `info.media`, same order.
    pub producers: Vec<u64>,
    /// Mute state announced by the participant, applied to streams it publishes later.
    pub audio_muted: bool,
    /// See `audio_muted`.
    pub video_muted: bool,
    /// Muted by an operator (admin API): streams of that kind stay paused, also ones published later,
    /// and the participant's own `mute{muted:false}` is refused.
    pub operator_muted: [bool; 2],
    pub notices: mpsc::UnboundedSender<ServerMessage>,
}

/// One room.
#[derive(Debug, Default)]
pub(crate) struct Room {
    pub members: BTreeMap<u64, Member>,
}

impl Room {
    /// Send a message to every member except `except`.
    pub fn broadcast(&self, except: u64, msg: &ServerMessage) {
        for (id, m) in &self.members {
            if *id != except {
                let _ = m.notices.send(msg.clone());
            }
        }
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

/// A fresh member record.
pub(crate) fn member(id: u64, name: String, role: Role, notices: mpsc::UnboundedSender<ServerMessage>) -> Member {
    Member {
        info: ParticipantInfo { id: participant_wire_id(id), name, role, media: Vec::<MediaInfo>::new() },
        session: id,
        producers: Vec::new(),
        audio_muted: false,
        video_muted: false,
        operator_muted: [false; 2],
        notices,
    }
}

/// Index of a kind in per-kind arrays.
pub(crate) fn kind_index(kind: dais_proto::MediaKind) -> usize {
    match kind {
        dais_proto::MediaKind::Audio => 0,
        dais_proto::MediaKind::Video => 1,
    }
}
