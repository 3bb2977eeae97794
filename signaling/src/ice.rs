//! The STUN and TURN servers a participant's `joined` carries (`ice_servers`): entries the operator
//! configured as they are, and TURN servers whose credentials are minted for each participant with the
//! TURN REST scheme that coturn calls `use-auth-secret` (draft-uberti-behave-turn-rest): the user name
//! is `<expiry unix seconds>:<participant id>`, the password `base64(HMAC-SHA1(secret, user name))`.
//! The TURN server checks the signature and the expiry itself, so Dais and coturn share only the
//! secret, and a credential stops working when it expires.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use dais_proto::IceServer;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Where the ICE servers of every `joined` come from.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    /// Handed to every participant as they are (STUN, or TURN with fixed credentials).
    pub servers: Vec<IceServer>,
    /// TURN servers whose credentials are minted per participant.
    pub turn: Option<TurnRest>,
}

/// TURN servers sharing a `use-auth-secret` secret with Dais.
#[derive(Clone)]
pub struct TurnRest {
    /// `turn:`/`turns:` URLs of the servers.
    pub urls: Vec<String>,
    /// How long a minted credential is valid.
    pub ttl: Duration,
    secret: String,
}

impl fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnRest").field("urls", &self.urls).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl TurnRest {
    /// TURN servers at `urls`, credentials signed with `secret` (coturn's `static-auth-secret`) and
    /// valid for `ttl`.
    pub fn new(urls: Vec<String>, secret: String, ttl: Duration) -> Self {
        TurnRest { urls, ttl, secret }
    }

    /// A credential for `participant`, valid until `now + ttl`.
    pub fn credential(&self, participant: &str, now: SystemTime) -> IceServer {
        let expiry = now.checked_add(self.ttl).unwrap_or(now);
        let expiry = expiry.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let username = format!("{expiry}:{participant}");
        let credential = sign(&self.secret, &username);
        IceServer { urls: self.urls.clone(), username: Some(username), credential: Some(credential) }
    }
}

/// `base64(HMAC-SHA1(secret, message))`.
fn sign(secret: &str, message: &str) -> String {
    // HMAC takes a key of any length, so `new_from_slice` cannot fail here.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl IceServers {
    /// Whether `joined` carries any.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.turn.is_none()
    }

    /// The list for one participant's `joined`.
    pub fn for_participant(&self, participant: &str, now: SystemTime) -> Vec<IceServer> {
        let mut out = self.servers.clone();
        out.extend(self.turn.as_ref().map(|t| t.credential(participant, now)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_follow_the_turn_rest_scheme() {
        let turn =
            TurnRest::new(vec!["turn:127.0.0.1:3478?transport=tcp".into()], "north".into(), Duration::from_secs(600));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = turn.credential("p7", now);
        assert_eq!(s.urls, vec!["turn:127.0.0.1:3478?transport=tcp".to_owned()]);
        assert_eq!(s.username.as_deref(), Some("1000600:p7"), "expiry, a colon, the participant");
        // HMAC-SHA1("north", "1000600:p7"), base64, as coturn computes it (checked with
        // `printf 1000600:p7 | openssl dgst -sha1 -hmac north -binary | base64`).
        assert_eq!(s.credential.as_deref(), Some("9HV1HaN6EdMO2LFhmmmtepE0NQI="));
        assert!(!format!("{turn:?}").contains("north"), "the secret never shows in Debug");
    }

    #[test]
    fn static_servers_come_first_and_nothing_is_added_without_turn() {
        let stun = IceServer { urls: vec!["stun:stun.example.org".into()], username: None, credential: None };
        let mut ice = IceServers { servers: vec![stun.clone()], turn: None };
        assert_eq!(ice.for_participant("p1", SystemTime::now()), vec![stun.clone()]);
        ice.turn = Some(TurnRest::new(vec!["turn:t".into()], "s".into(), Duration::from_secs(60)));
        let list = ice.for_participant("p1", SystemTime::now());
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], stun);
        assert!(IceServers::default().is_empty());
    }
}
