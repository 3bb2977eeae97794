//! Any client frame either parses into a message that round-trips, or yields one of the three
//! parse error codes. Never a panic.
#![no_main]

use dais_proto::{parse_client, ErrorCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client(text) {
        Ok(msg) => assert_eq!(parse_client(&msg.to_json()).ok(), Some(msg)),
        Err(e) => assert!(matches!(e.code, ErrorCode::BadJson | ErrorCode::UnknownType | ErrorCode::BadMessage)),
    }
});
