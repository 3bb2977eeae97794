//! The event title: from the configuration, or the first join token that carries one.

use super::*;
use crate::token::{mint, TokenClaims, TokenVerifier};

const SECRET: &str = "title-secret-0123456789abcdef0123";

fn token(room: &str, name: &str, title: Option<&str>) -> String {
    let mut c = TokenClaims::new(room, name, Role::Viewer, Duration::from_secs(600));
    c.title = title.map(str::to_owned);
    mint(SECRET, &c).expect("mint")
}

fn title_of(m: &ServerMessage) -> Option<String> {
    match m {
        ServerMessage::Joined { title, .. } => title.clone(),
        other => panic!("expected joined, got {other:?}"),
    }
}

impl Peer {
    async fn join_token(&mut self, room: &str, token: &str) -> ServerMessage {
        self.send(&format!(
            r#"{{"type":"join","room":"{room}","name":"x","role":"viewer","version":1,"token":"{token}"}}"#
        ));
        let joined = self.msg().await;
        self.history().await;
        joined
    }
}

#[tokio::test]
async fn the_first_token_with_a_title_names_the_room_and_earlier_members_hear_it() {
    let config = SignalingConfig {
        tokens: Some(TokenVerifier::new(SECRET).expect("secret")),
        titles: [("fixed".to_owned(), "The configured keynote".to_owned())].into_iter().collect(),
        ..SignalingConfig::default()
    };
    let (_, sig) = setup_with(config);
    let mut early = connect(&sig);
    assert_eq!(title_of(&early.join_token("t", &token("t", "Early", None)).await), None);
    let mut late = connect(&sig);
    assert_eq!(
        title_of(&late.join_token("t", &token("t", "Late", Some("Opening keynote"))).await).as_deref(),
        Some("Opening keynote")
    );
    loop {
        match early.msg().await {
            ServerMessage::RoomTitle { title } => break assert_eq!(title, "Opening keynote"),
            _ => continue,
        }
    }
    // Set once: a later token's title changes nothing.
    let mut third = connect(&sig);
    assert_eq!(
        title_of(&third.join_token("t", &token("t", "Third", Some("Another"))).await).as_deref(),
        Some("Opening keynote")
    );

    // A configured title wins over any token's.
    let mut p = connect(&sig);
    assert_eq!(
        title_of(&p.join_token("fixed", &token("fixed", "P", Some("From a token"))).await).as_deref(),
        Some("The configured keynote")
    );

    // A token whose title is not a title is refused.
    let mut q = connect(&sig);
    q.send(&format!(
        r#"{{"type":"join","room":"t","name":"x","role":"viewer","version":1,"token":"{}"}}"#,
        token("t", "Q", Some("bell\u{7}"))
    ));
    assert_eq!(q.error_code().await, ErrorCode::TokenInvalid);
}
