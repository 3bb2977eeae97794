//! Every look the media plane takes at client SDP text before str0m does: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = std::str::from_utf8(data) {
        dais_media::fuzzing::sdp_text(sdp);
    }
});
