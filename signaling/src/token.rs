//! Join tokens: HS256 JWTs that grant one identity a role in one room until an expiry.
//!
//! [`mint`] signs [`TokenClaims`]; [`TokenVerifier`] checks a token at `join` and returns the
//! [`Grant`] that replaces the join's own `name` and `role` (as LiveKit does, the grant wins). A token
//! is checked once, at join: a participant whose token expires later stays until it leaves. The
//! secret never leaves this module: [`TokenVerifier`]'s `Debug` hides it and no error carries it or
//! the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dais_proto::{valid_name, valid_room, ErrorCode, Role};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated on `exp` between the minting host and this server.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The one room the token admits to.
    pub room: String,
    /// Display name (identity) of the participant.
    pub name: String,
    /// Speaker or viewer; a viewer token can never publish.
    pub role: Role,
    /// Issued at, seconds since the Unix epoch (optional in tokens minted elsewhere).
    #[serde(default)]
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch (optional, RFC 7519 §4.1.5): earlier joins are refused
    /// with `token_not_yet_valid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The moderator grant (`moderate`, raised hands); absent is false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderator: bool,
    /// The event's title (the room's display name, [`dais_proto::valid_title`]), used when the
    /// server's configuration has none for the room and no earlier token gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl TokenClaims {
    /// Claims for `room`, `name` and `role`, valid from now for `ttl`.
    pub fn new(room: impl Into<String>, name: impl Into<String>, role: Role, ttl: Duration) -> TokenClaims {
        let iat = unix_now();
        TokenClaims {
            room: room.into(),
            name: name.into(),
            role,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            nbf: None,
            moderator: false,
            title: None,
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The display name to use.
    pub name: String,
    /// The role to use.
    pub role: Role,
    /// The moderator grant.
    pub moderator: bool,
    /// The room title the token carries.
    pub title: Option<String>,
}

/// Why a token was refused at join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A secret is configured and the join carried no token.
    #[error("a join token is required")]
    Missing,
    /// The token's `exp` has passed.
    #[error("the join token has expired")]
    Expired,
    /// Malformed, wrongly signed, another algorithm, or claims missing or invalid.
    #[error("the join token is invalid")]
    Invalid,
    /// The token is for another room.
    #[error("the join token is for another room")]
    WrongRoom,
    /// The token's `nbf` is still ahead (beyond the leeway).
    #[error("the join token is not valid yet")]
    NotYetValid,
}

impl VerifyError {
    /// The wire code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            VerifyError::Missing => ErrorCode::TokenRequired,
            VerifyError::Expired => ErrorCode::TokenExpired,
            VerifyError::Invalid => ErrorCode::TokenInvalid,
            VerifyError::WrongRoom => ErrorCode::TokenWrongRoom,
            VerifyError::NotYetValid => ErrorCode::TokenNotYetValid,
        }
    }
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The secret is empty.
    #[error("the token secret is empty")]
    EmptySecret,
    /// The room name breaks the protocol's rules.
    #[error("invalid room name (1-64 letters, digits, '-', '_' or '.')")]
    InvalidRoom,
    /// The display name breaks the protocol's rules.
    #[error("invalid name (1-64 bytes without control characters)")]
    InvalidName,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Sign `claims` with `secret` (HS256).
pub fn mint(secret: &str, claims: &TokenClaims) -> Result<String, MintError> {
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if !valid_room(&claims.room) {
        return Err(MintError::InvalidRoom);
    }
    if !valid_name(&claims.name) {
        return Err(MintError::InvalidName);
    }
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|_| MintError::EmptySecret)?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).map_err(|e| MintError::Signing(e.to_string()))
}

/// [`TokenVerifier::new`] was given an empty secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token secret is empty")]
pub struct EmptySecret;

/// Checks join tokens against one HS256 secret.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("algorithm", &"HS256").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &str) -> Result<TokenVerifier, EmptySecret> {
        let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|_| EmptySecret)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Ok(TokenVerifier { key, validation })
    }

    /// Check `token` for a join to `room`.
    pub fn verify(&self, token: Option<&str>, room: &str) -> Result<Grant, VerifyError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(VerifyError::Missing)?;
        let data =
            jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                _ => VerifyError::Invalid,
            })?;
        let c = data.claims;
        if !valid_room(&c.room)
            || !valid_name(&c.name)
            || c.title.as_deref().is_some_and(|t| !dais_proto::valid_title(t))
        {
            return Err(VerifyError::Invalid);
        }
        if c.room != room {
            return Err(VerifyError::WrongRoom);
        }
        Ok(Grant { name: c.name, role: c.role, moderator: c.moderator, title: c.title })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn claims(room: &str, role: Role, ttl: u64) -> TokenClaims {
        TokenClaims::new(room, "Ann", role, Duration::from_secs(ttl))
    }

    #[test]
    fn a_minted_token_verifies_and_grants_its_claims() {
        let t = mint(SECRET, &claims("panel", Role::Viewer, 60)).expect("mint");
        let g = TokenVerifier::new(SECRET).expect("secret").verify(Some(&t), "panel").expect("valid");
        assert_eq!(g, Grant { name: "Ann".into(), role: Role::Viewer, moderator: false, title: None });
    }

    #[test]
    fn each_failure_has_its_own_code() {
        let v = TokenVerifier::new(SECRET).expect("secret");
        let code = |t: Option<&str>, room: &str| v.verify(t, room).expect_err("refused").code();
        assert_eq!(code(None, "panel"), ErrorCode::TokenRequired);
        assert_eq!(code(Some(""), "panel"), ErrorCode::TokenRequired);

        let mut old = claims("panel", Role::Speaker, 0);
        old.exp = unix_now() - 3600;
        assert_eq!(code(Some(&mint(SECRET, &old).expect("mint")), "panel"), ErrorCode::TokenExpired);

        let forged = mint("another-secret-another-secret-xx", &claims("panel", Role::Speaker, 60)).expect("mint");
        assert_eq!(code(Some(&forged), "panel"), ErrorCode::TokenInvalid);
        assert_eq!(code(Some("not.a.jwt"), "panel"), ErrorCode::TokenInvalid);
        assert_eq!(code(Some("garbage"), "panel"), ErrorCode::TokenInvalid);

        let other = mint(SECRET, &claims("other", Role::Speaker, 60)).expect("mint");
        assert_eq!(code(Some(&other), "panel"), ErrorCode::TokenWrongRoom);

        let mut early = claims("panel", Role::Speaker, 7200);
        early.nbf = Some(unix_now() + 3600);
        assert_eq!(code(Some(&mint(SECRET, &early).expect("mint")), "panel"), ErrorCode::TokenNotYetValid);
        early.nbf = Some(unix_now() + 10);
        assert!(v.verify(Some(&mint(SECRET, &early).expect("mint")), "panel").is_ok(), "within the leeway");
    }

    #[test]
    fn a_token_with_a_changed_claim_is_invalid() {
        let t = mint(SECRET, &claims("panel", Role::Viewer, 60)).expect("mint");
        let parts: Vec<&str> = t.split('.').collect();
        let speaker = mint(SECRET, &claims("panel", Role::Speaker, 60)).expect("mint");
        let spliced = format!("{}.{}.{}", parts[0], speaker.split('.').nth(1).expect("payload"), parts[2]);
        let e = TokenVerifier::new(SECRET).expect("secret").verify(Some(&spliced), "panel").expect_err("refused");
        assert_eq!(e, VerifyError::Invalid);
    }

    #[test]
    fn minting_checks_names_and_debug_hides_the_secret() {
        assert_eq!(mint(SECRET, &claims("a b", Role::Viewer, 60)), Err(MintError::InvalidRoom));
        assert_eq!(mint("", &claims("a", Role::Viewer, 60)), Err(MintError::EmptySecret));
        assert!(!format!("{:?}", TokenVerifier::new(SECRET).expect("secret")).contains(SECRET));
    }
}
