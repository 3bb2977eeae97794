//! The background sender of a speaker's synthetic audio and video.
//!
//! Once the publish negotiation is answered and the peer connection is connected, one task per
//! stream writes RTP through a `TrackLocalStaticRTP`: audio every 20 ms (timestamp += 960), video
//! at 30 fps (timestamp += 3000 per frame, marker on a frame's last packet). A keyframe goes out
//! first, every [`MediaConfig::keyframe_interval`], and on the next frame after a PLI or FIR.
//! Every packet carries the SSRC given to the track and the payload type the negotiation settled on;
//! webrtc 0.21 drops a packet silently when either does not match the sender leg.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::rtp;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::media::{AudioSource, SyntheticPacket, VideoSource, AUDIO_TS_STEP, VIDEO_TS_STEP};
use crate::peer::is_keyframe_request;

/// What a speaker publishes.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Tag embedded in every payload, so receivers can tell senders apart. Default: unique per
    /// process and client.
    pub tag: u32,
    /// Send the audio stream.
    pub audio: bool,
    /// Send the video stream.
    pub video: bool,
    /// Time between periodic keyframes.
    pub keyframe_interval: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self { tag: next_tag(), audio: true, video: true, keyframe_interval: Duration::from_secs(2) }
    }
}

/// A tag not used before in this process, mixed with the process id so two processes differ too.
pub fn next_tag() -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    (std::process::id().rotate_left(20) ^ 0x5a5a_0000).wrapping_add(n.wrapping_mul(0x9e37_79b1))
}

/// Counters of what the sender did; read through [`crate::Snapshot::sent`].
#[derive(Debug, Default)]
pub(crate) struct SendCounters {
    pub audio_packets: AtomicU64,
    pub video_packets: AtomicU64,
    pub video_frames: AtomicU64,
    pub keyframes: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub write_errors: AtomicU64,
    pub keyframe_wanted: AtomicBool,
}

/// A copy of the sender's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// The tag in this sender's payloads (0 before publishing).
    pub tag: u32,
    /// Audio RTP packets handed to the stack.
    pub audio_packets: u64,
    /// Video RTP packets handed to the stack.
    pub video_packets: u64,
    /// Video frames sent.
    pub video_frames: u64,
    /// Keyframes sent (periodic, initial and requested).
    pub keyframes: u64,
    /// PLI/FIR packets received from the server for the video stream.
    pub keyframe_requests: u64,
    /// `write_rtp` calls that failed (track not bound, connection gone).
    pub write_errors: u64,
}

impl SendCounters {
    pub(crate) fn snapshot(&self, tag: u32) -> SenderStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SenderStats {
            tag,
            audio_packets: l(&self.audio_packets),
            video_packets: l(&self.video_packets),
            video_frames: l(&self.video_frames),
            keyframes: l(&self.keyframes),
            keyframe_requests: l(&self.keyframe_requests),
            write_errors: l(&self.write_errors),
        }
    }
}

/// One local stream ready to send on: its track, SSRC and negotiated payload type.
#[derive(Clone)]
pub(crate) struct Outlet {
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub payload_type: u8,
}

/// Deterministic starting sequence number and timestamp for a stream, so runs are reproducible.
fn initial_seq_ts(ssrc: u32) -> (u16, u32) {
    let s = ssrc.wrapping_mul(0x9e37_79b1);
    ((s >> 16) as u16, s.rotate_left(7))
}

fn packet(outlet: &Outlet, seq: u16, ts: u32, p: SyntheticPacket) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: p.marker,
            payload_type: outlet.payload_type,
            sequence_number: seq,
            timestamp: ts,
            ssrc: outlet.ssrc,
            ..Default::default()
        },
        payload: p.payload,
    }
}

async fn wait_connected(state: &mut watch::Receiver<RTCPeerConnectionState>, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        r = state.wait_for(|s| *s == RTCPeerConnectionState::Connected) => r.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Send audio until stopped or the track is gone.
pub(crate) async fn run_audio(
    outlet: Outlet,
    tag: u32,
    counters: Arc<SendCounters>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut stop: watch::Receiver<bool>,
) {
    if !wait_connected(&mut state, &mut stop).await {
        return;
    }
    let mut src = AudioSource::new(tag);
    let (mut seq, mut ts) = initial_seq_ts(outlet.ssrc);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let pkt = packet(&outlet, seq, ts, src.next_packet());
        if outlet.track.write_rtp(pkt).await.is_err() {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            if *state.borrow() == RTCPeerConnectionState::Closed {
                return;
            }
        } else {
            counters.audio_packets.fetch_add(1, Ordering::Relaxed);
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(AUDIO_TS_STEP);
    }
}

/// Send video until stopped or the track is gone.
pub(crate) async fn run_video(
    outlet: Outlet,
    tag: u32,
    keyframe_interval: Duration,
    counters: Arc<SendCounters>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut stop: watch::Receiver<bool>,
) {
    if !wait_connected(&mut state, &mut stop).await {
        return;
    }
    let mut src = VideoSource::new(tag);
    let (mut seq, mut ts) = initial_seq_ts(outlet.ssrc);
    let mut tick = tokio::time::interval(Duration::from_micros(33_333));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_key: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let requested = counters.keyframe_wanted.swap(false, Ordering::Relaxed);
        let key = requested || last_key.is_none_or(|t| t.elapsed() >= keyframe_interval);
        if key {
            last_key = Some(Instant::now());
            counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        for p in src.next_frame(key) {
            let pkt = packet(&outlet, seq, ts, p);
            seq = seq.wrapping_add(1);
            if outlet.track.write_rtp(pkt).await.is_err() {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.video_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
        counters.video_frames.fetch_add(1, Ordering::Relaxed);
        if *state.borrow() == RTCPeerConnectionState::Closed {
            return;
        }
        ts = ts.wrapping_add(VIDEO_TS_STEP);
    }
}

/// Watch the video track's RTCP feedback (PLI/FIR, delivered by the interceptor in `peer`) and
/// ask the video task for a keyframe. Ends when the track is unbound or the connection closes.
pub(crate) async fn watch_keyframe_requests(track: Arc<TrackLocalStaticRTP>, counters: Arc<SendCounters>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            let n = packets.iter().filter(|p| is_keyframe_request(p.as_ref())).count() as u64;
            if n > 0 {
                tracing::debug!(n, "keyframe requested");
                counters.keyframe_requests.fetch_add(n, Ordering::Relaxed);
                counters.keyframe_wanted.store(true, Ordering::Relaxed);
            }
        }
    }
}
