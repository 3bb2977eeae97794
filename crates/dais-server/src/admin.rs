//! The admin HTTP API under `/admin`, behind `Authorization: Bearer <admin key>`.
//!
//! Routes (JSON in and out; errors are `{"code": ..., "message": ...}`):
//! - `GET /admin/rooms`: every room with its participants and their media;
//! - `DELETE /admin/rooms/{room}`: close the room (everyone gets `room_closed`, close 4002);
//! - `DELETE /admin/rooms/{room}/participants/{id}`: kick (`kicked`, close 4001);
//! - `POST /admin/rooms/{room}/participants/{id}/mute` `{"kind":"audio"|"video","muted":bool}`:
//!   server-side mute, the media stops being forwarded;
//! - `POST /admin/rooms/{room}/participants/{id}/role` `{"role":"speaker"|"viewer"}`: promote or
//!   demote in place, the session renegotiates and the WebSocket stays.
//!
//! Without a configured admin key every route answers 404 `admin_disabled`; a missing or wrong key
//! is 401 `unauthorized`. The key is compared in constant time and never logged.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use dais_proto::{MediaKind, Role};
use dais_signaling::AdminError;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::AppState;

/// The `/admin` routes; `key` is the configured admin key, if any.
pub fn routes(key: Option<String>) -> axum::Router<AppState> {
    let key = std::sync::Arc::new(key);
    let guard = move |headers: HeaderMap| {
        let key = key.clone();
        async move { authorize(key.as_deref(), &headers) }
    };
    let g1 = guard.clone();
    let g2 = guard.clone();
    let g3 = guard.clone();
    let g4 = guard.clone();
    let g5 = guard;
    axum::Router::new()
        .route(
            "/admin/rooms",
            get(move |headers: HeaderMap, State(st): State<AppState>| async move {
                if let Some(r) = g1(headers).await {
                    return r;
                }
                let rooms: Vec<_> = st
                    .signaling
                    .rooms()
                    .into_iter()
                    .map(|r| json!({ "name": r.name, "participants": r.participants }))
                    .collect();
                Json(json!({ "rooms": rooms })).into_response()
            }),
        )
        .route(
            "/admin/rooms/{room}",
            delete(move |headers: HeaderMap, State(st): State<AppState>, Path(room): Path<String>| async move {
                if let Some(r) = g2(headers).await {
                    return r;
                }
                match st.signaling.admin_close_room(&room) {
                    Ok(n) => {
                        info!(%room, participants = n, "admin: room closed");
                        Json(json!({ "closed": n })).into_response()
                    }
                    Err(e) => admin_error(e),
                }
            }),
        )
        .route(
            "/admin/rooms/{room}/participants/{id}",
            delete(move |headers: HeaderMap, State(st): State<AppState>, Path((room, id)): Path<(String, String)>| async move {
                if let Some(r) = g3(headers).await {
                    return r;
                }
                match st.signaling.admin_kick(&room, &id) {
                    Ok(()) => {
                        info!(%room, participant = %id, "admin: kicked");
                        StatusCode::NO_CONTENT.into_response()
                    }
                    Err(e) => admin_error(e),
                }
            }),
        )
        .route(
            "/admin/rooms/{room}/participants/{id}/mute",
            post(
                move |headers: HeaderMap,
                      State(st): State<AppState>,
                      Path((room, id)): Path<(String, String)>,
                      body: Result<Json<MuteBody>, JsonRejection>| async move {
                    if let Some(r) = g4(headers).await {
                        return r;
                    }
                    let Json(b) = match body {
                        Ok(b) => b,
                        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
                    };
                    match st.signaling.admin_mute(&room, &id, b.kind, b.muted) {
                        Ok(n) => {
                            info!(%room, participant = %id, kind = ?b.kind, muted = b.muted, "admin: mute");
                            Json(json!({ "changed": n })).into_response()
                        }
                        Err(e) => admin_error(e),
                    }
                },
            ),
        )
        .route(
            "/admin/rooms/{room}/participants/{id}/role",
            post(
                move |headers: HeaderMap,
                      State(st): State<AppState>,
                      Path((room, id)): Path<(String, String)>,
                      body: Result<Json<RoleBody>, JsonRejection>| async move {
                    if let Some(r) = g5(headers).await {
                        return r;
                    }
                    let Json(b) = match body {
                        Ok(b) => b,
                        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
                    };
                    match st.signaling.admin_set_role(&room, &id, b.role) {
                        Ok(()) => {
                            info!(%room, participant = %id, role = ?b.role, "admin: role changed");
                            StatusCode::NO_CONTENT.into_response()
                        }
                        Err(e) => admin_error(e),
                    }
                },
            ),
        )
}

/// Body of the mute route.
#[derive(Debug, Deserialize)]
pub struct MuteBody {
    kind: MediaKind,
    muted: bool,
}

/// Body of the role route.
#[derive(Debug, Deserialize)]
pub struct RoleBody {
    role: Role,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::RoomNotFound => error(StatusCode::NOT_FOUND, "room_not_found", "no such room"),
        AdminError::ParticipantNotFound => {
            error(StatusCode::NOT_FOUND, "participant_not_found", "no such participant in the room")
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "admin action failed"),
    }
}

/// `None` when the request may proceed, else the rejection to send.
fn authorize(key: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let Some(key) = key else {
        return Some(error(StatusCode::NOT_FOUND, "admin_disabled", "no admin key is configured"));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        None
    } else {
        Some(error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin key"))
    }
}

/// Equality whose running time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
