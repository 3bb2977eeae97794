//! Feeds arbitrary bytes to the keyframe detector of every codec and to the VP8 descriptor and
//! keyframe-header parsers: they must never panic.

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
    let _ = dais_forward::vp8::parse(data);
    if let Some((w, h)) = dais_forward::vp8::dimensions(data) {
        assert!(w < 0x4000 && h < 0x4000, "14-bit sizes");
    }
});
