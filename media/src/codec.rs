//! Mapping between str0m's vocabulary and the forwarding core's: codecs, payload parameters, media kinds
//! and the header-extension values that travel with the media.
//!
//! A producer's payload types come from what its publisher negotiated; a consumer's from what its own
//! session negotiated. H.264 and VP9 variants only match when their packetization mode, profile and
//! profile id agree, so a viewer never gets a bitstream it did not accept. The orphan rule keeps these
//! conversions functions rather than `From` impls (both sides are foreign to this crate).

use dais_forward::{Codec, MediaExt, MediaKind};
use str0m::format::{Codec as SCodec, CodecSpec, PayloadParams};
use str0m::media::{MediaKind as SKind, Pt};
use str0m::rtp::{ExtensionValues, VideoOrientation};

/// The core's kind of a str0m media kind.
pub fn kind_of(k: SKind) -> MediaKind {
    if k.is_audio() {
        MediaKind::Audio
    } else {
        MediaKind::Video
    }
}

/// str0m's kind of the core's media kind.
pub fn str0m_kind(k: MediaKind) -> SKind {
    match k {
        MediaKind::Audio => SKind::Audio,
        MediaKind::Video => SKind::Video,
    }
}

/// The values of an ingress packet's header extensions that describe the media and so travel with it.
/// Transport extensions (mid, rid, transport-cc, abs-send-time) belong to each leg and are written by
/// str0m with the ids that leg negotiated.
pub fn media_ext(ext: &ExtensionValues) -> MediaExt {
    MediaExt {
        audio_level: ext.audio_level,
        voice_activity: ext.voice_activity,
        video_orientation: ext.video_orientation.map(|o| o as u8),
        video_content_type: ext.video_content_type,
    }
}

/// The header-extension values of an egress packet carrying `ext`.
pub fn ext_values(ext: MediaExt) -> ExtensionValues {
    ExtensionValues {
        audio_level: ext.audio_level,
        voice_activity: ext.voice_activity,
        video_orientation: ext.video_orientation.map(VideoOrientation::from),
        video_content_type: ext.video_content_type,
        ..ExtensionValues::default()
    }
}

/// The payload types of `params` (a session's codec configuration) to offer on an m-line that carries
/// a producer whose publisher negotiated `specs`: each PT compatible with one of them, in the
/// session's order. RTX comes with each PT.
pub fn offer_pts(params: &[PayloadParams], specs: &[CodecSpec]) -> Vec<Pt> {
    params.iter().filter(|p| specs.iter().any(|s| compatible(s, &p.spec()))).map(|p| p.pt()).collect()
}

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
