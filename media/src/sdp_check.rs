//! Cheap looks at SDP text around str0m: an offer's directions and codecs before str0m sees it, the
//! bundle tag of an SDP, and the `o=` version of an SDP the server produced.
//!
//! Used to refuse, with a clear error, an offer from a participant that may not publish, or one with
//! nothing Dais can forward, before it can change a session. Only the lines concerned are read;
//! anything malformed is left for the real parser to reject.

/// Whether any audio or video m-line of `sdp` would send media to the answerer.
///
/// A direction attribute at session level is the default for every m-line; without any, the
/// direction is `sendrecv` (RFC 4566). m-lines with port 0 are rejected lines and do not count.
pub fn offers_to_send(sdp: &str) -> bool {
    let (audio, video) = sending_mlines(sdp);
    audio + video > 0
}

/// How many audio and how many video m-lines of `sdp` send media, in the sense of
/// [`offers_to_send`]: a publisher's streams (one m-line with simulcast layers is one).
pub fn sending_mlines(sdp: &str) -> (usize, usize) {
    let mut session_dir: Option<&str> = None;
    let mut in_media = false;
    // The current m-line's kind, if it is audio or video with a non-zero port.
    let mut media_kind: Option<bool> = None;
    let mut media_dir: Option<&str> = None;
    let mut counts = (0, 0);

    let mut finish = |kind: Option<bool>, dir: Option<&str>, session: Option<&str>| {
        if let Some(video) = kind {
            let d = dir.or(session).unwrap_or("sendrecv");
            if d == "sendrecv" || d == "sendonly" {
                if video {
                    counts.1 += 1;
                } else {
                    counts.0 += 1;
                }
            }
        }
    };

    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if in_media {
                finish(media_kind, media_dir, session_dir);
            }
            in_media = true;
            media_dir = None;
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            media_kind = ((kind == "audio" || kind == "video") && port != "0").then_some(kind == "video");
            continue;
        }
        if let Some(a) = line.strip_prefix("a=") {
            let dir = match a {
                "sendrecv" | "sendonly" | "recvonly" | "inactive" => Some(a),
                _ => None,
            };
            if let Some(d) = dir {
                if in_media {
                    media_dir = Some(d);
                } else {
                    session_dir = Some(d);
                }
            }
        }
    }
    if in_media {
        finish(media_kind, media_dir, session_dir);
    }
    counts
}

/// Whether some audio or video m-line of `sdp` with a non-zero port offers a codec Dais forwards
/// (Opus for audio; VP8, H.264, VP9 or AV1 for video).
pub fn has_usable_media(sdp: &str) -> bool {
    let mut kind: Option<&str> = None;
    let mut pts: Vec<&str> = Vec::new();
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let (k, port) = (parts.next().unwrap_or(""), parts.next().unwrap_or("0"));
            let live = (k == "audio" || k == "video") && port != "0";
            kind = live.then_some(k);
            pts = parts.skip(1).collect();
            continue;
        }
        let (Some(k), Some(rtpmap)) = (kind, line.strip_prefix("a=rtpmap:")) else { continue };
        let Some((pt, encoding)) = rtpmap.split_once(' ') else { continue };
        let name = encoding.split('/').next().unwrap_or("").to_ascii_uppercase();
        let usable = match k {
            "audio" => name == "OPUS",
            _ => matches!(name.as_str(), "VP8" | "H264" | "VP9" | "AV1"),
        };
        if usable && pts.contains(&pt) {
            return true;
        }
    }
    false
}

/// The first mid of an SDP's `a=group:BUNDLE` line: the m-line whose transport the bundle uses.
pub fn bundle_tag(sdp: &str) -> Option<str0m::media::Mid> {
    let group = sdp.lines().find_map(|l| l.strip_prefix("a=group:BUNDLE"))?;
    group.split_whitespace().next().map(str0m::media::Mid::from)
}

/// `sdp` with the version field of its `o=` line set to `version` (RFC 4566: `o=<username>
/// <sess-id> <sess-version> ...`). An SDP without a well-formed `o=` line is returned unchanged.
pub fn with_version(sdp: &str, version: u64) -> String {
    let mut out = String::with_capacity(sdp.len() + 8);
    let mut done = false;
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let fields: Vec<&str> = body.split(' ').collect();
        if !done && body.starts_with("o=") && fields.len() == 6 {
            done = true;
            let version = version.to_string();
            let mut fields = fields;
            fields[2] = &version;
            out.push_str(&fields.join(" "));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_media_needs_a_forwarded_codec_on_a_live_m_line() {
        let pcmu = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert!(!has_usable_media(pcmu));
        let opus = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0 111\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(has_usable_media(opus));
        let rejected = "v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(!has_usable_media(rejected));
        let not_listed = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(!has_usable_media(not_listed), "an rtpmap for a PT the m-line does not list");
        let data = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(!has_usable_media(data));
        let h264 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        assert!(has_usable_media(h264));
        assert!(!has_usable_media("garbage"));
    }

    #[test]
    fn bundle_tag_is_the_first_mid_of_the_group() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a1 b2 c3\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        assert_eq!(bundle_tag(sdp), Some(str0m::media::Mid::from("a1")));
        assert_eq!(bundle_tag("v=0\r\na=group:BUNDLE\r\n"), None, "an empty group has no tag");
        assert_eq!(bundle_tag("v=0\r\n"), None);
    }

    #[test]
    fn version_replaces_only_the_origin_version() {
        let sdp = "v=0\r\no=str0m-0.25.0 123 2 IN IP4 0.0.0.0\r\ns=-\r\na=x:o= 1 2 3 4 5\r\n";
        assert_eq!(with_version(sdp, 7), "v=0\r\no=str0m-0.25.0 123 7 IN IP4 0.0.0.0\r\ns=-\r\na=x:o= 1 2 3 4 5\r\n");
        assert_eq!(with_version("v=0\no=- 1 2 IN IP4 1.2.3.4\n", 3), "v=0\no=- 1 3 IN IP4 1.2.3.4\n");
        assert_eq!(with_version("v=0\r\no=broken\r\n", 3), "v=0\r\no=broken\r\n");
    }

    /// Pseudo-random SDP-like text through every check: none may panic, and a version stamp never
    /// changes anything but the `o=` line.
    #[test]
    fn random_text_never_panics() {
        const PARTS: [&str; 14] = [
            "m=",
            "audio ",
            "video ",
            "0 ",
            "9 ",
            "a=rtpmap:",
            "111 ",
            "opus/48000",
            "VP8/90000",
            "o=- 1 2 IN IP4 x",
            "a=group:BUNDLE ",
            "a=sendonly",
            "\r\n",
            "\u{e9}",
        ];
        let mut state: u64 = 0x0bad_5eed_1234_5678;
        for _ in 0..5_000 {
            let mut sdp = String::new();
            for _ in 0..(state % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                sdp.push_str(PARTS[(state % PARTS.len() as u64) as usize]);
            }
            let _ = (offers_to_send(&sdp), has_usable_media(&sdp), bundle_tag(&sdp));
            let (audio, video) = sending_mlines(&sdp);
            assert!(audio + video <= sdp.matches("m=").count(), "{sdp:?}");
            let stamped = with_version(&sdp, 9);
            let strip = |s: &str| s.lines().filter(|l| !l.starts_with("o=")).collect::<Vec<_>>().join("\n");
            assert_eq!(strip(&stamped), strip(&sdp));
        }
    }

    #[test]
    fn directions() {
        let recv =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";
        assert!(!offers_to_send(recv));
        let send =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        assert!(offers_to_send(send));
        let default = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert!(offers_to_send(default));
        assert_eq!(sending_mlines(send), (0, 1));
        let many = "v=0\r\nm=audio 9 X 111\r\nm=audio 9 X 111\r\na=sendonly\r\nm=video 9 X 96\r\na=sendrecv\r\nm=video 0 X 96\r\nm=video 9 X 96\r\na=inactive\r\n";
        assert_eq!(sending_mlines(many), (2, 1), "the stopped and the inactive video do not count");
        let session_level = "v=0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert!(!offers_to_send(session_level));
        let rejected = "v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(!offers_to_send(rejected));
        assert!(!offers_to_send("garbage"));
    }
}
