//! Feeds arbitrary bytes to the keyframe detector of every codec: it must never panic.

#![no_main]

use dais_forward::{is_keyframe_start, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for codec in [
        Codec::Opus,
        Codec::Vp8,
        Codec::Vp9,
        Codec::H264,
        Codec::Av1,
        Codec::Other,
    ] {
        let _ = is_keyframe_start(codec, data);
    }
});
