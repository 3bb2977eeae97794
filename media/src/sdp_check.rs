//! A cheap look at an offer's directions before it reaches str0m.
//!
//! Used to refuse, with a clear error, an offer from a participant that may not publish. Only the
//! direction attributes are read; anything malformed is left for the real parser to reject.

/// Whether any audio or video m-line of `sdp` would send media to the answerer.
///
/// A direction attribute at session level is the default for every m-line; without any, the
/// direction is `sendrecv` (RFC 4566). m-lines with port 0 are rejected lines and do not count.
pub fn offers_to_send(sdp: &str) -> bool {
    let mut session_dir: Option<&str> = None;
    let mut in_media = false;
    let mut media_counts = false;
    let mut media_dir: Option<&str> = None;
    let mut any = false;

    let mut finish = |counts: bool, dir: Option<&str>, session: Option<&str>| {
        if counts {
            let d = dir.or(session).unwrap_or("sendrecv");
            if d == "sendrecv" || d == "sendonly" {
                any = true;
            }
        }
    };

    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if in_media {
                finish(media_counts, media_dir, session_dir);
            }
            in_media = true;
            media_dir = None;
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            media_counts = (kind == "audio" || kind == "video") && port != "0";
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
        finish(media_counts, media_dir, session_dir);
    }
    any
}

#[cfg(test)]
mod tests {
    use super::offers_to_send;

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
        let session_level = "v=0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert!(!offers_to_send(session_level));
        let rejected = "v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(!offers_to_send(rejected));
        assert!(!offers_to_send("garbage"));
    }
}
