//! The offer-direction check reads client SDP before str0m does: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = std::str::from_utf8(data) {
        let _ = dais_media::offers_to_send(sdp);
    }
});
