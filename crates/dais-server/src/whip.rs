//! WHIP ingest (RFC 9725) and WHEP playback (draft-ietf-wish-whep) over HTTP: the routes, their
//! headers and status codes, over signaling's HTTP sessions (`dais_signaling::http_session`).
//!
//! Routes:
//! - `POST /whip/{room}` (`application/sdp` offer) publishes into the room as a speaker;
//! - `POST /whep/{room}/{participant}` (a recvonly offer) plays one speaker, by wire id or name;
//! - `PATCH` (`application/trickle-ice-sdpfrag`) and `DELETE` on the `Location` each `201` names:
//!   `/whip/{room}/{id}` and `/whep/{room}/{participant}/{id}`;
//! - `OPTIONS` on each of them, for CORS preflights.
//!
//! Every answer carries CORS headers (any origin: the bearer token, not a cookie, is the
//! credential), and every error a JSON body `{"code": ..., "message": ...}` with a stable code.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{options, post};
use axum::Extension;
use axum::Json;
use dais_signaling::http_session::{HttpOffer, HttpSessionKind, OpenError, PatchError, Patched};
use dais_signaling::token::VerifyError;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::AppState;

/// Media type of an SDP offer or answer.
const SDP: &str = "application/sdp";
/// Media type of a PATCH body (RFC 8840).
const FRAGMENT: &str = "application/trickle-ice-sdpfrag";
/// Longest request body: an SDP offer within the protocol's limit.
const MAX_BODY: usize = dais_proto::MAX_SDP_BYTES;

/// The WHIP and WHEP routes, with their CORS headers.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/whip/{room}", post(whip).options(preflight_collection))
        .route("/whip/{room}/{id}", options(preflight_resource).patch(whip_patch).delete(whip_delete))
        .route("/whep/{room}/{participant}", post(whep).options(preflight_collection))
        .route("/whep/{room}/{participant}/{id}", options(preflight_resource).patch(whep_patch).delete(whep_delete))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::map_response(cors))
}

/// CORS headers on every answer.
async fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Content-Type, Retry-After, WWW-Authenticate"),
    );
    r
}

fn preflight(methods: &'static str) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type, If-Match"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    h.insert(header::ALLOW, HeaderValue::from_static(methods));
    r
}

async fn preflight_collection() -> Response {
    let mut r = preflight("POST, OPTIONS");
    r.headers_mut().insert("accept-post", HeaderValue::from_static(SDP));
    r
}

async fn preflight_resource() -> Response {
    let mut r = preflight("PATCH, DELETE, OPTIONS");
    r.headers_mut().insert("accept-patch", HeaderValue::from_static(FRAGMENT));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

/// `?name=` of a POST (open mode only).
#[derive(Debug, Deserialize)]
struct NameQuery {
    name: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Whether the request's `Content-Type` is `want` (parameters ignored).
fn is_type(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}

/// The body as text, or the answer that refuses it.
fn text_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>, want: &str) -> Result<String, Box<Response>> {
    if !is_type(headers, want) {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &format!("send {want}"),
        )));
    }
    let body = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "bad_request" };
        Box::new(error(status, code, &e.body_text()))
    })?;
    String::from_utf8(body.to_vec())
        .map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "bad_sdp", "the body is not UTF-8 text")))
}

fn open_error(e: OpenError) -> Response {
    let status = match &e {
        OpenError::Draining | OpenError::RoomFull | OpenError::TooMany => StatusCode::SERVICE_UNAVAILABLE,
        OpenError::Token(_) => StatusCode::UNAUTHORIZED,
        OpenError::NotASpeaker => StatusCode::FORBIDDEN,
        OpenError::ParticipantNotFound => StatusCode::NOT_FOUND,
        OpenError::Ambiguous => StatusCode::CONFLICT,
        OpenError::InvalidRoom | OpenError::InvalidName | OpenError::BadSdp(_) => StatusCode::BAD_REQUEST,
        OpenError::CannotPublish | OpenError::TooManyStreams(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if let OpenError::BadSdp(detail) = &e {
        info!(detail, "WHIP/WHEP offer refused");
    }
    let mut r = error(status, e.code(), &e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if matches!(e, OpenError::Token(VerifyError::Missing)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// A `Link` header value for each STUN or TURN URL (RFC 9725 §4.4).
fn ice_links(servers: &[dais_proto::IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for s in servers {
        for url in &s.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(pass)) = (&s.username, &s.credential) {
                link.push_str(&format!("; username=\"{user}\"; credential=\"{pass}\"; credential-type=\"password\""));
            }
            links.push(link);
        }
    }
    links
}

async fn open(st: AppState, offer: HttpOffer, base: String) -> Response {
    match st.signaling.open_http_session(offer).await {
        Ok(s) => {
            let location = format!("{base}/{}", s.resource);
            let mut r = (StatusCode::CREATED, s.answer).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
            h.insert("accept-patch", HeaderValue::from_static(FRAGMENT));
            for (name, value) in [(header::LOCATION, location), (header::ETAG, s.etag)] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
            for link in ice_links(&s.ice_servers) {
                if let Ok(v) = HeaderValue::from_str(&link) {
                    h.append(header::LINK, v);
                }
            }
            r
        }
        Err(e) => open_error(e),
    }
}

/// Encode one path segment for a `Location` (room names are safe; participant names may not be).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The client's address, as the listener recorded it.
type Peer = Option<Extension<ConnectInfo<std::net::SocketAddr>>>;

fn client_ip(peer: Peer) -> Option<std::net::IpAddr> {
    peer.map(|Extension(ConnectInfo(a))| a.ip())
}

/// A POST: the offer in its body, opened as `kind`; its resources live under `base`.
async fn open_posted(
    st: AppState,
    peer: Peer,
    post: Post,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let sdp = match text_body(&headers, body, SDP) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Post { room, kind, name, base } = post;
    let offer = HttpOffer { room, kind, token: bearer(&headers), name, sdp, client: client_ip(peer) };
    open(st, offer, base).await
}

/// What a route makes of its path and query.
struct Post {
    room: String,
    kind: HttpSessionKind,
    name: Option<String>,
    base: String,
}

async fn whip(
    State(st): State<AppState>,
    peer: Peer,
    Path(room): Path<String>,
    Query(q): Query<NameQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let base = format!("/whip/{}", segment(&room));
    open_posted(st, peer, Post { room, kind: HttpSessionKind::Publish, name: q.name, base }, headers, body).await
}

async fn whep(
    State(st): State<AppState>,
    peer: Peer,
    Path((room, participant)): Path<(String, String)>,
    Query(q): Query<NameQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let base = format!("/whep/{}/{}", segment(&room), segment(&participant));
    let kind = HttpSessionKind::Play { participant };
    open_posted(st, peer, Post { room, kind, name: q.name, base }, headers, body).await
}

async fn patch(st: AppState, id: &str, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let fragment = match text_body(&headers, body, FRAGMENT) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    match st.signaling.patch_http_session(id, if_match, &fragment).await {
        Ok(Patched::Trickled) => StatusCode::NO_CONTENT.into_response(),
        Ok(Patched::Restarted { etag, fragment }) => {
            let mut r = (StatusCode::OK, fragment).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FRAGMENT));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Err(e) => {
            let status = match &e {
                PatchError::NotFound => StatusCode::NOT_FOUND,
                PatchError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
                PatchError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            if let PatchError::RestartFailed(detail) = &e {
                info!(detail, "ICE restart refused");
            }
            error(status, e.code(), &e.to_string())
        }
    }
}

fn delete(st: &AppState, id: &str) -> Response {
    if st.signaling.delete_http_session(id) {
        (StatusCode::OK, Json(json!({ "deleted": true }))).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "session_not_found", "no such session")
    }
}

async fn whip_patch(
    State(st): State<AppState>,
    Path((_room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    patch(st, &id, headers, body).await
}

async fn whep_patch(
    State(st): State<AppState>,
    Path((_room, _participant, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    patch(st, &id, headers, body).await
}

async fn whip_delete(State(st): State<AppState>, Path((_room, id)): Path<(String, String)>) -> Response {
    delete(&st, &id)
}

async fn whep_delete(
    State(st): State<AppState>,
    Path((_room, _participant, id)): Path<(String, String, String)>,
) -> Response {
    delete(&st, &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_link_headers_with_their_credentials() {
        let servers = vec![
            dais_proto::IceServer { urls: vec!["stun:stun.example.net".into()], username: None, credential: None },
            dais_proto::IceServer {
                urls: vec!["turn:turn.example.net?transport=udp".into(), "turns:turn.example.net".into()],
                username: Some("1700000000:p3".into()),
                credential: Some("c2VjcmV0".into()),
            },
        ];
        let links = ice_links(&servers);
        assert_eq!(links.len(), 3);
        assert_eq!(links[0], "<stun:stun.example.net>; rel=\"ice-server\"");
        assert_eq!(
            links[2],
            "<turns:turn.example.net>; rel=\"ice-server\"; username=\"1700000000:p3\"; credential=\"c2VjcmV0\"; \
             credential-type=\"password\""
        );
    }

    #[test]
    fn bearer_tokens_and_content_types_are_read_loosely_but_exactly() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc.def "));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("Application/SDP; charset=utf-8"));
        assert_eq!(bearer(&h).as_deref(), Some("abc.def"));
        assert!(is_type(&h, SDP));
        assert!(!is_type(&h, FRAGMENT));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        assert_eq!(segment("alice smith/2"), "alice%20smith%2F2");
    }
}
