//! The admin HTTP API under `/admin`, behind `Authorization: Bearer <admin key>`.
//!
//! Routes (JSON in and out; errors are `{"code": ..., "message": ...}`):
//! - `GET /admin/rooms`: every room with its participants and their media;
//! - `DELETE /admin/rooms/{room}`: close the room (everyone gets `room_closed`, close 4002);
//! - `DELETE /admin/rooms/{room}/participants/{id}`: kick (`kicked`, close 4001);
//! - `POST /admin/rooms/{room}/participants/{id}/mute` `{"kind":"audio"|"video","muted":bool}`:
//!   server-side mute, the media stops being forwarded;
//! - `POST /admin/rooms/{room}/participants/{id}/role` `{"role":"speaker"|"viewer"}`: promote or
//!   demote in place, the session renegotiates and the WebSocket stays (409 `fixed_role` for a WHIP
//!   or WHEP participant, whose session cannot renegotiate);
//! - `DELETE /admin/rooms/{room}/chat/{message}`: delete a chat message for everyone (`chat_deleted`);
//! - `POST /admin/rooms/{room}/participants/{id}/chat` `{"silenced":bool}`: silence a participant's
//!   chat (`chat_silenced`), or lift it;
//! - `POST /admin/rooms/{room}/chat` `{"viewer_chat":bool}`: turn viewer chat off or on for the room
//!   (`chat_policy` to everyone);
//! - `DELETE /admin/rooms/{room}/participants/{id}/hand`: lower a viewer's raised hand;
//! - `GET /admin/rooms/{room}/questions`: the room's questions as speakers see them (the latest
//!   `questions` message, or `null` before the first question);
//! - `POST /admin/rooms/{room}/questions/{question}/answered`: mark an open question answered;
//! - `DELETE /admin/rooms/{room}/questions/{question}`: delete a question for everyone;
//! - `POST /admin/rooms/{room}/tokens` `{"name":..., "role":..., "moderator":bool, "ttl_secs":n}`:
//!   (and optionally `"title"`, the event's title the token carries)
//!   mint a join token for the room with the server's token secret (`{"token": ...}`), so that a
//!   moderator page can log in with the admin key; 409 `tokens_disabled` in open development mode.
//!
//! Without a configured admin key every route answers 404 `admin_disabled`; a missing or wrong key
//! is 401 `unauthorized`. The key is compared in constant time and never logged.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use dais_proto::{MediaKind, Role};
use dais_signaling::AdminError;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::AppState;

/// The `/admin` routes; `key` is the configured admin key, if any. One layer checks the key for
/// every route, so the handlers only do their action.
/// `token_secret` (auth.token_secret) signs the tokens the tokens route mints.
pub fn routes(key: Option<String>, token_secret: Option<String>) -> axum::Router<AppState> {
    let key = std::sync::Arc::new(key);
    let secret = std::sync::Arc::new(token_secret);
    let auth = middleware::from_fn(move |req: Request, next: Next| {
        let key = key.clone();
        async move {
            match authorize(key.as_deref(), req.headers()) {
                Some(rejection) => rejection,
                None => next.run(req).await,
            }
        }
    });
    axum::Router::new()
        .route("/admin/rooms", get(list_rooms))
        .route("/admin/rooms/{room}", delete(close_room))
        .route("/admin/rooms/{room}/participants/{id}", delete(kick))
        .route("/admin/rooms/{room}/participants/{id}/mute", post(mute))
        .route("/admin/rooms/{room}/participants/{id}/role", post(set_role))
        .route("/admin/rooms/{room}/participants/{id}/chat", post(silence_chat))
        .route("/admin/rooms/{room}/chat", post(viewer_chat))
        .route("/admin/rooms/{room}/chat/{message}", delete(delete_chat))
        .route("/admin/rooms/{room}/participants/{id}/hand", delete(lower_hand))
        .route("/admin/rooms/{room}/questions", get(list_questions))
        .route("/admin/rooms/{room}/questions/{question}", delete(delete_question))
        .route("/admin/rooms/{room}/questions/{question}/answered", post(answer_question))
        .route(
            "/admin/rooms/{room}/tokens",
            post(move |path: Path<String>, body: Result<Json<TokenBody>, JsonRejection>| {
                let secret = secret.clone();
                async move { mint_token(secret.as_deref(), path, body) }
            }),
        )
        .route_layer(auth)
}

async fn list_rooms(State(st): State<AppState>) -> Response {
    let rooms: Vec<_> =
        st.signaling.rooms().into_iter().map(|r| json!({ "name": r.name, "participants": r.participants })).collect();
    Json(json!({ "rooms": rooms })).into_response()
}

async fn close_room(State(st): State<AppState>, Path(room): Path<String>) -> Response {
    match st.signaling.admin_close_room(&room) {
        Ok(n) => {
            info!(%room, participants = n, "admin: room closed");
            Json(json!({ "closed": n })).into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn kick(State(st): State<AppState>, Path((room, id)): Path<(String, String)>) -> Response {
    match st.signaling.admin_kick(&room, &id) {
        Ok(()) => {
            info!(%room, participant = %id, "admin: kicked");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn mute(
    State(st): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    body: Result<Json<MuteBody>, JsonRejection>,
) -> Response {
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
}

async fn set_role(
    State(st): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    body: Result<Json<RoleBody>, JsonRejection>,
) -> Response {
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
}

async fn delete_chat(State(st): State<AppState>, Path((room, message)): Path<(String, String)>) -> Response {
    let Ok(id) = message.parse::<u64>() else {
        return error(StatusCode::NOT_FOUND, "message_not_found", "no such chat message in the room");
    };
    match st.signaling.admin_delete_chat(&room, id) {
        Ok(()) => {
            info!(%room, message = id, "admin: chat message deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn list_questions(State(st): State<AppState>, Path(room): Path<String>) -> Response {
    match st.signaling.admin_questions(&room) {
        Ok(view) => {
            let body = view.unwrap_or_else(|| axum::body::Bytes::from_static(b"null"));
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn delete_question(State(st): State<AppState>, Path((room, question)): Path<(String, String)>) -> Response {
    let Ok(id) = question.parse::<u64>() else { return admin_error(AdminError::QuestionNotFound) };
    match st.signaling.admin_delete_question(&room, id) {
        Ok(()) => {
            info!(%room, question = id, "admin: question deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn answer_question(State(st): State<AppState>, Path((room, question)): Path<(String, String)>) -> Response {
    let Ok(id) = question.parse::<u64>() else { return admin_error(AdminError::QuestionNotFound) };
    match st.signaling.admin_answer_question(&room, id) {
        Ok(()) => {
            info!(%room, question = id, "admin: question answered");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn silence_chat(
    State(st): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    body: Result<Json<SilenceBody>, JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    match st.signaling.admin_silence_chat(&room, &id, b.silenced) {
        Ok(()) => {
            info!(%room, participant = %id, silenced = b.silenced, "admin: chat silence");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn viewer_chat(
    State(st): State<AppState>,
    Path(room): Path<String>,
    body: Result<Json<ChatPolicyBody>, JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    match st.signaling.admin_viewer_chat(&room, b.viewer_chat) {
        Ok(()) => {
            info!(%room, viewer_chat = b.viewer_chat, "admin: viewer chat");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn lower_hand(State(st): State<AppState>, Path((room, id)): Path<(String, String)>) -> Response {
    match st.signaling.admin_lower_hand(&room, &id) {
        Ok(()) => {
            info!(%room, participant = %id, "admin: hand lowered");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(e),
    }
}

/// Longest lifetime of a token minted through the admin API.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;

fn mint_token(
    secret: Option<&str>,
    Path(room): Path<String>,
    body: Result<Json<TokenBody>, JsonRejection>,
) -> Response {
    use dais_signaling::token::{mint, MintError, TokenClaims};
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    let Some(secret) = secret else {
        return error(
            StatusCode::CONFLICT,
            "tokens_disabled",
            "open development mode: no token secret is configured, so joins need no token",
        );
    };
    if b.ttl_secs == 0 || b.ttl_secs > MAX_TOKEN_TTL_SECS {
        return error(StatusCode::BAD_REQUEST, "bad_request", "ttl_secs must be 1 to 86400");
    }
    if b.title.as_deref().is_some_and(|t| !dais_proto::valid_title(t)) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "title must be 1-120 bytes without control characters");
    }
    let mut claims =
        TokenClaims::new(room.as_str(), b.name.as_str(), b.role, std::time::Duration::from_secs(b.ttl_secs));
    claims.moderator = b.moderator;
    claims.title = b.title.clone();
    match mint(secret, &claims) {
        Ok(token) => {
            info!(%room, role = ?b.role, moderator = b.moderator, ttl_secs = b.ttl_secs, "admin: token minted");
            Json(json!({ "token": token, "exp": claims.exp })).into_response()
        }
        Err(MintError::InvalidRoom) => {
            error(StatusCode::BAD_REQUEST, "invalid_room", &MintError::InvalidRoom.to_string())
        }
        Err(MintError::InvalidName) => {
            error(StatusCode::BAD_REQUEST, "invalid_name", &MintError::InvalidName.to_string())
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "minting failed"),
    }
}

/// Body of the token route.
#[derive(Debug, Deserialize)]
pub struct TokenBody {
    name: String,
    role: Role,
    #[serde(default)]
    moderator: bool,
    #[serde(default)]
    title: Option<String>,
    #[serde(default = "default_token_ttl")]
    ttl_secs: u64,
}

fn default_token_ttl() -> u64 {
    3600
}

/// Body of the chat silence route.
#[derive(Debug, Deserialize)]
pub struct SilenceBody {
    silenced: bool,
}

/// Body of the room chat policy route.
#[derive(Debug, Deserialize)]
pub struct ChatPolicyBody {
    viewer_chat: bool,
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
        AdminError::MessageNotFound => {
            error(StatusCode::NOT_FOUND, "message_not_found", "no such chat message in the room")
        }
        AdminError::QuestionNotFound => error(
            StatusCode::NOT_FOUND,
            "question_not_found",
            "no such question in the room (answering needs an open one)",
        ),
        AdminError::FixedRole => {
            error(StatusCode::CONFLICT, "fixed_role", "a WHIP or WHEP participant keeps its role; kick it instead")
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
