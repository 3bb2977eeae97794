//! Mapping between str0m's negotiated payload parameters and the forwarding core's codec table.
//!
//! A producer's payload types come from what its publisher negotiated; a consumer's from what its own
//! session negotiated. H.264 and VP9 variants only match when their packetization mode, profile and
//! profile id agree, so a viewer never gets a bitstream it did not accept.

use dais_forward::Codec;
use str0m::format::{Codec as SCodec, CodecSpec, PayloadParams};
use str0m::media::Pt;

/// The forwarding core's codec for a str0m codec.
pub fn core_codec(c: SCodec) -> Codec {
    match c {
        SCodec::Opus => Codec::Opus,
        SCodec::Vp8 => Codec::Vp8,
        SCodec::Vp9 => Codec::Vp9,
        SCodec::H264 => Codec::H264,
        SCodec::Av1 => Codec::Av1,
        _ => Codec::Other,
    }
}

/// Lower-case name used on the wire.
pub fn codec_name(c: SCodec) -> String {
    match c {
        SCodec::Opus => "opus".into(),
        SCodec::Vp8 => "vp8".into(),
        SCodec::Vp9 => "vp9".into(),
        SCodec::H264 => "h264".into(),
        SCodec::Av1 => "av1".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Whether a consumer may receive what a producer with `a` sends, when it negotiated `b`.
pub fn compatible(a: &CodecSpec, b: &CodecSpec) -> bool {
    if a.codec != b.codec || a.clock_rate != b.clock_rate {
        return false;
    }
    match a.codec {
        SCodec::H264 => {
            let pm = |s: &CodecSpec| s.format.packetization_mode.unwrap_or(0);
            // profile_idc and profile-iop; the level may differ (level-asymmetry-allowed is standard).
            let profile = |s: &CodecSpec| s.format.profile_level_id.map(|p| p >> 8);
            pm(a) == pm(b) && profile(a) == profile(b)
        }
        SCodec::Vp9 => a.format.profile_id.unwrap_or(0) == b.format.profile_id.unwrap_or(0),
        _ => true,
    }
}

/// The negotiated parameters of `pts`, in that order, looked up in a session's codec table.
pub fn params_for<'a>(all: &'a [PayloadParams], pts: &[Pt]) -> Vec<&'a PayloadParams> {
    pts.iter().filter_map(|pt| all.iter().find(|p| p.pt() == *pt)).collect()
}
