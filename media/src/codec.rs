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

/// The negotiated parameters of `pts`, in the session's preference order (the order the answer
/// lists them, so the first is what a browser sends with).
pub fn params_for<'a>(all: &'a [PayloadParams], pts: &[Pt]) -> Vec<&'a PayloadParams> {
    all.iter().filter(|p| pts.contains(&p.pt())).collect()
}

/// The video codecs the server forwards, in its default preference order.
pub const VIDEO_CODECS: [SCodec; 4] = [SCodec::Vp8, SCodec::H264, SCodec::Vp9, SCodec::Av1];

/// The first forwardable video codec of the first video m-line of an offer, in the offerer's
/// preference order (the order of the m-line's payload types). `None` when there is none or the
/// SDP is too broken to tell; str0m's parser then has the last word.
pub fn preferred_video_codec(sdp: &str) -> Option<SCodec> {
    let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r'));
    let mline = lines.by_ref().find(|l| l.starts_with("m=video "))?;
    let pts: Vec<&str> = mline.split_whitespace().skip(3).collect();
    let mut rtpmap: Vec<(&str, &str)> = Vec::new();
    for l in lines {
        if l.starts_with("m=") {
            break;
        }
        if let Some(rest) = l.strip_prefix("a=rtpmap:") {
            if let Some((pt, enc)) = rest.split_once(' ') {
                rtpmap.push((pt, enc.split('/').next().unwrap_or("")));
            }
        }
    }
    pts.iter().find_map(|pt| {
        let (_, name) = rtpmap.iter().find(|(p, _)| p == pt)?;
        match name.to_ascii_uppercase().as_str() {
            "VP8" => Some(SCodec::Vp8),
            "H264" => Some(SCodec::H264),
            "VP9" => Some(SCodec::Vp9),
            "AV1" => Some(SCodec::Av1),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_preference_is_the_payload_order() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 97 102 96\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
                   a=rtpmap:102 H264/90000\r\n";
        assert_eq!(preferred_video_codec(sdp), Some(SCodec::H264));
        assert_eq!(preferred_video_codec("v=0\r\nm=audio 9 X 0\r\n"), None);
        assert_eq!(preferred_video_codec("m=video 9 X 45\r\na=rtpmap:45 AV1/90000\r\n"), Some(SCodec::Av1));
        assert_eq!(preferred_video_codec("m=video"), None);
    }
}
