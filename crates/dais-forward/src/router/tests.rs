//! Unit tests for the router, driven with explicit time (a base `Instant` plus offsets, never sleeping).

use std::sync::{Arc, OnceLock};

use super::*;
use crate::{Codec, ConsumerSpec, KeyframeKind, MediaExt, MediaKind, Output, Payload, ProducerSpec, RtpIn, RtpOut};

pub(super) const VP8_KEY: &[u8] = &[0x10, 0x00, 0x9d, 0x01, 0x2a];
pub(super) const VP8_DELTA: &[u8] = &[0x10, 0x01, 0xaa];
pub(super) const VP8_CONT: &[u8] = &[0x00, 0xbb, 0xcc];
pub(super) const OPUS: &[u8] = &[0xfc, 0xff, 0xfe];

pub(super) fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

pub(super) fn video_spec() -> ProducerSpec {
    ProducerSpec {
        kind: MediaKind::Video,
        clock_rate: 90_000,
        payload_types: vec![(96, Codec::Vp8), (102, Codec::H264)],
        layers: 1,
    }
}

pub(super) fn audio_spec() -> ProducerSpec {
    ProducerSpec { kind: MediaKind::Audio, clock_rate: 48_000, payload_types: vec![(111, Codec::Opus)], layers: 1 }
}

pub(super) fn consumer(ssrc: u32, payload_types: &[(Codec, u8)], initial_seq: u16) -> ConsumerSpec {
    ConsumerSpec { sink: u64::from(ssrc) + 1000, ssrc, payload_types: payload_types.to_vec(), initial_seq }
}

/// One capture time for every test packet: the tests look at it only to see that it is carried.
fn wallclock() -> Instant {
    static AT: OnceLock<Instant> = OnceLock::new();
    *AT.get_or_init(Instant::now)
}

fn payload(bytes: &[u8]) -> Payload {
    Arc::from(bytes)
}

pub(super) fn pkt(ssrc: u32, seq: u16, timestamp: u32, payload_type: u8, bytes: &'static [u8]) -> RtpIn {
    RtpIn {
        layer: LayerId(0),
        ssrc,
        seq,
        timestamp,
        payload_type,
        marker: false,
        payload: payload(bytes),
        ext: MediaExt::default(),
        wallclock: wallclock(),
    }
}

pub(super) fn drain(r: &mut Router) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

pub(super) fn rtp(outs: &[Output]) -> Vec<RtpOut> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Rtp(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn requests(outs: &[Output]) -> Vec<(ProducerId, KeyframeKind)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::KeyframeRequest { producer, kind, .. } => Some((*producer, *kind)),
            _ => None,
        })
        .collect()
}

fn router() -> Router {
    Router::new(RouterConfig::default())
}

/// An audio router with one consumer, outputs drained.
fn audio_router(base: Instant, initial_seq: u16) -> (Router, ProducerId, ConsumerId) {
    let mut r = router();
    let p = r.add_producer(base, audio_spec());
    let c = r.add_consumer(base, p, consumer(7, &[(Codec::Opus, 109)], initial_seq)).expect("opus in common");
    assert!(drain(&mut r).is_empty(), "audio consumers ask for no keyframe");
    (r, p, c)
}

/// Seqs of the RTP outputs produced by feeding `seqs` (one packet each).
fn feed_seqs(r: &mut Router, base: Instant, p: ProducerId, seqs: &[u16]) -> Vec<u64> {
    let mut out = Vec::new();
    for &s in seqs {
        r.handle_rtp(base, p, pkt(1, s, 960 * u32::from(s), 111, OPUS));
        out.extend(rtp(&drain(r)).iter().map(|o| o.seq));
    }
    out
}

#[test]
fn seq_wrap_is_contiguous() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 1000);
    let out = feed_seqs(&mut r, base, p, &[65533, 65534, 65535, 0, 1, 2]);
    assert_eq!(out, vec![1000, 1001, 1002, 1003, 1004, 1005]);
}

#[test]
fn consumer_seq_wraps_its_own_u16() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 65534);
    let out = feed_seqs(&mut r, base, p, &[10, 11, 12]);
    assert_eq!(out, vec![65534, 65535, 65536]);
    assert_eq!(out.iter().map(|&s| s as u16).collect::<Vec<_>>(), vec![65534, 65535, 0]);
}

#[test]
fn reordering_and_loss_keep_gaps() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 500);
    // 10, 12, 11 reordered; 14 lost; 15.
    let out = feed_seqs(&mut r, base, p, &[10, 12, 11, 13, 15]);
    assert_eq!(out, vec![500, 502, 501, 503, 505]);
    // Late 14 still maps into its gap.
    assert_eq!(feed_seqs(&mut r, base, p, &[14]), vec![504]);
    // Older than the first forwarded packet.
    assert!(feed_seqs(&mut r, base, p, &[9]).is_empty());
    assert_eq!(r.drops().get(DropReason::BeforeStart), 1);
}

#[test]
fn reordering_across_wrap() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 0);
    let out = feed_seqs(&mut r, base, p, &[65534, 0, 65535, 1]);
    assert_eq!(out, vec![0, 2, 1, 3]);
}

#[test]
fn timestamps_pass_through_with_zero_offset() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 0);
    r.handle_rtp(base, p, pkt(1, 5, 123_456, 111, OPUS));
    let out = rtp(&drain(&mut r));
    assert_eq!(out[0].timestamp, 123_456);
}

#[test]
fn ssrc_switch_keeps_seq_and_ts_continuous() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(42, &[(Codec::Vp8, 96)], 100)).expect("vp8");
    drain(&mut r);
    r.handle_rtp(base, p, pkt(1, 7000, 90_000, 96, VP8_KEY));
    r.handle_rtp(at(base, 33), p, pkt(1, 7001, 92_970, 96, VP8_DELTA));
    let before = rtp(&drain(&mut r));
    assert_eq!(before.iter().map(|o| (o.seq, o.timestamp)).collect::<Vec<_>>(), vec![(100, 90_000), (101, 92_970)]);

    // The publisher restarts its encoder: new SSRC, unrelated seq and timestamp, a delta frame first.
    r.handle_rtp(at(base, 633), p, pkt(2, 10, 5, 96, VP8_DELTA));
    r.handle_rtp(at(base, 666), p, pkt(2, 11, 2_975, 96, VP8_DELTA));
    let outs = drain(&mut r);
    assert_eq!(requests(&outs), vec![(p, KeyframeKind::Pli)]);
    let after = rtp(&outs);
    // 600 ms elapsed since the last packet out: 54000 ticks at 90 kHz.
    assert_eq!(after.iter().map(|o| (o.seq, o.timestamp)).collect::<Vec<_>>(), vec![(102, 146_970), (103, 149_940)]);
    assert!(after.iter().all(|o| o.consumer == c && o.ssrc == 42));
    assert_eq!(r.drops().total(), 0);

    // A late packet of the new stream from before its first one is older than the rebase point.
    r.handle_rtp(at(base, 670), p, pkt(2, 9, 0, 96, VP8_DELTA));
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.drops().get(DropReason::BeforeStart), 1);
}

#[test]
fn ssrc_switch_without_elapsed_time_advances_ts_by_one() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 0);
    r.handle_rtp(base, p, pkt(1, 1, 1000, 111, OPUS));
    r.handle_rtp(base, p, pkt(9, 40_000, 77, 111, OPUS));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.iter().map(|o| (o.seq, o.timestamp)).collect::<Vec<_>>(), vec![(0, 1000), (1, 1001)]);
    assert!(drain(&mut r).is_empty(), "no keyframe request for audio");
}

/// Regression: a late packet of the old stream after a restart used to count as a restart back to it (and
/// the next packet of the new stream as a third one). It was forwarded between the two halves of the new
/// stream's first keyframe with an invented timestamp, and that keyframe was split across two timestamps.
#[test]
fn late_packet_of_the_replaced_stream_is_not_a_restart() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    r.add_consumer(base, p, consumer(42, &[(Codec::Vp8, 96)], 100)).expect("vp8");
    r.handle_rtp(base, p, pkt(1, 10, 1000, 96, VP8_KEY));
    r.handle_rtp(at(base, 1), p, pkt(1, 11, 1000, 96, VP8_CONT));
    assert_eq!(requests(&drain(&mut r)).len(), 1);

    // Restart to SSRC 2; SSRC 1's seq 12, reordered on the path, arrives inside the new keyframe.
    r.handle_rtp(at(base, 100), p, pkt(2, 500, 7000, 96, VP8_KEY));
    r.handle_rtp(at(base, 105), p, pkt(1, 12, 1000, 96, VP8_CONT));
    r.handle_rtp(at(base, 106), p, pkt(2, 501, 7000, 96, VP8_CONT));
    let out = rtp(&drain(&mut r));
    // 99 ms since the last packet out: 8910 ticks at 90 kHz.
    assert_eq!(out.iter().map(|o| (o.seq, o.timestamp)).collect::<Vec<_>>(), vec![(102, 9910), (103, 9910)]);
    assert_eq!(r.drops().get(DropReason::StaleSsrc), 1);
    assert_eq!(r.drops().total(), 1);
    // The restart's request (queued inside the throttle window) was answered by the new stream's keyframe;
    // the late packet queued no other.
    assert_eq!(r.poll_timeout(), None);

    // Long after the restart the old SSRC is a genuine restart back to it.
    r.handle_rtp(at(base, 100 + 1000), p, pkt(1, 40, 50_000, 96, VP8_KEY));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![104]);
    assert_eq!(r.drops().total(), 1);
}

#[test]
fn keyframe_gating_vp8() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let early = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    r.handle_rtp(base, p, pkt(5, 1, 0, 96, VP8_KEY));
    drain(&mut r);

    // Joins mid-stream.
    let late = r.add_consumer(at(base, 10), p, consumer(2, &[(Codec::Vp8, 96)], 3000)).expect("vp8");
    assert_eq!(requests(&drain(&mut r)), vec![], "throttled: the first join asked 10 ms ago");
    r.handle_rtp(at(base, 20), p, pkt(5, 2, 3000, 96, VP8_DELTA));
    r.handle_rtp(at(base, 30), p, pkt(5, 3, 3000, 96, VP8_CONT));
    let outs = rtp(&drain(&mut r));
    assert!(outs.iter().all(|o| o.consumer == early));
    assert_eq!(r.drops().get(DropReason::WaitingForKeyframe), 2);

    let key = payload(VP8_KEY);
    let mut packet = pkt(5, 4, 6000, 96, VP8_KEY);
    packet.payload = key.clone();
    r.handle_rtp(at(base, 40), p, packet);
    let outs = rtp(&drain(&mut r));
    assert_eq!(outs.len(), 2);
    let late_out = outs.iter().find(|o| o.consumer == late).expect("late consumer started");
    assert!(late_out.keyframe);
    assert_eq!(late_out.seq, 3000);
    assert_eq!(late_out.payload, key);
    assert_eq!(late_out.payload.as_ptr(), key.as_ptr(), "payload shared, not copied");

    r.handle_rtp(at(base, 50), p, pkt(5, 5, 9000, 96, VP8_DELTA));
    let outs = rtp(&drain(&mut r));
    assert_eq!(outs.len(), 2);
    assert!(outs.iter().any(|o| o.consumer == late && o.seq == 3001 && !o.keyframe));
    assert_eq!(r.drops().get(DropReason::WaitingForKeyframe), 2);
}

#[test]
fn keyframe_gating_h264() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(1, &[(Codec::H264, 125)], 0)).expect("h264");
    drain(&mut r);
    const FU_A_NON_IDR_START: &[u8] = &[0x7c, 0x81, 0x00];
    const FU_A_IDR_MIDDLE: &[u8] = &[0x7c, 0x05, 0x00];
    const STAP_A_SPS_PPS: &[u8] = &[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68];
    const FU_A_IDR_START: &[u8] = &[0x7c, 0x85, 0x00];
    r.handle_rtp(base, p, pkt(3, 1, 0, 102, FU_A_NON_IDR_START));
    r.handle_rtp(base, p, pkt(3, 2, 0, 102, FU_A_IDR_MIDDLE));
    assert!(drain(&mut r).is_empty());
    r.handle_rtp(base, p, pkt(3, 3, 3000, 102, STAP_A_SPS_PPS));
    r.handle_rtp(base, p, pkt(3, 4, 3000, 102, FU_A_IDR_START));
    let outs = rtp(&drain(&mut r));
    assert_eq!(
        outs.iter().map(|o| (o.seq, o.keyframe, o.payload_type)).collect::<Vec<_>>(),
        vec![(0, true, 125), (1, true, 125)]
    );
    assert_eq!(&outs[0].payload[..], STAP_A_SPS_PPS);
    assert!(outs.iter().all(|o| o.consumer == c));
    assert_eq!(r.drops().get(DropReason::WaitingForKeyframe), 2);
}

#[test]
fn payload_type_and_ssrc_are_rewritten() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    r.add_consumer(base, p, consumer(0xdead_beef, &[(Codec::Vp8, 100)], 0)).expect("vp8");
    let mut packet = pkt(1, 1, 0, 96, VP8_KEY);
    packet.marker = true;
    r.handle_rtp(base, p, packet);
    let out = rtp(&drain(&mut r));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload_type, 100);
    assert_eq!(out[0].ssrc, 0xdead_beef);
    assert!(out[0].marker);
}

#[test]
fn codec_not_negotiated_and_unknown_payload_type() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let vp8_only = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    let both = r.add_consumer(base, p, consumer(2, &[(Codec::Vp8, 96), (Codec::H264, 97)], 0)).expect("both");
    drain(&mut r);
    r.handle_rtp(base, p, pkt(1, 1, 0, 102, &[0x65, 0x00]));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].consumer, out[0].payload_type), (both, 97));
    assert_eq!(r.drops().get(DropReason::CodecNotNegotiated), 1);

    r.handle_rtp(base, p, pkt(1, 2, 0, 50, VP8_KEY));
    r.handle_rtp(base, p, pkt(1, 3, 0, 200, VP8_KEY));
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.drops().get(DropReason::UnknownPayloadType), 2);
    let _ = vp8_only;
}

#[test]
fn consume_errors() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    assert_eq!(r.add_consumer(base, p, consumer(1, &[(Codec::Av1, 45)], 0)), Err(ConsumeError::NoCommonCodec));
    assert_eq!(
        r.add_consumer(base, ProducerId(99), consumer(1, &[(Codec::Vp8, 96)], 0)),
        Err(ConsumeError::UnknownProducer)
    );
    // A shared RTX/RED entry does not count as a common codec for a video producer.
    let with_rtx = r.add_producer(
        base,
        ProducerSpec {
            kind: MediaKind::Video,
            clock_rate: 90_000,
            payload_types: vec![(96, Codec::Vp8), (97, Codec::Other)],
            layers: 1,
        },
    );
    assert_eq!(
        r.add_consumer(base, with_rtx, consumer(1, &[(Codec::H264, 102), (Codec::Other, 103)], 0)),
        Err(ConsumeError::NoCommonCodec)
    );
    assert!(drain(&mut r).is_empty(), "refused consumers ask for nothing");
    assert_eq!(ConsumeError::NoCommonCodec.to_string(), "no codec in common with the producer");
    let _: &dyn std::error::Error = &ConsumeError::UnknownProducer;
}

#[test]
fn keyframe_requests_are_throttled() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    for i in 0..10u32 {
        r.add_consumer(at(base, u64::from(i) * 50), p, consumer(i, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    }
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
    assert_eq!(r.poll_timeout(), Some(at(base, 500)));
    r.handle_timeout(at(base, 499));
    assert!(drain(&mut r).is_empty());
    r.handle_timeout(at(base, 500));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
    assert_eq!(r.stats().keyframe_requests_sent, 2);
    // Still waiting: the next thing is the retry, a full retry interval after the last request.
    assert_eq!(r.poll_timeout(), Some(at(base, 1500)));
}

#[test]
fn no_second_request_when_nothing_came_in_the_window() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_KEY));
    assert_eq!(requests(&drain(&mut r)).len(), 1);
    assert_eq!(r.poll_timeout(), None);
    // A viewer PLI outside the window goes out at once.
    r.handle_keyframe_request(at(base, 600), c, KeyframeKind::Pli);
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
}

#[test]
fn fir_beats_pli() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let a = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    let b = r.add_consumer(base, p, consumer(2, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_KEY));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
    r.handle_keyframe_request(at(base, 100), a, KeyframeKind::Pli);
    r.handle_keyframe_request(at(base, 200), b, KeyframeKind::Fir);
    r.handle_keyframe_request(at(base, 300), a, KeyframeKind::Pli);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.poll_timeout(), Some(at(base, 500)));
    r.handle_timeout(at(base, 500));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Fir)]);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn requests_from_elsewhere_share_the_throttle() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_KEY));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
    // Another worker's consumers and a local one ask inside the window: one merged request at its end.
    r.request_keyframe(at(base, 100), p, LayerId(0), KeyframeKind::Fir);
    r.handle_keyframe_request(at(base, 200), c, KeyframeKind::Pli);
    assert!(drain(&mut r).is_empty());
    r.handle_timeout(at(base, 500));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Fir)]);
    // Outside the window it goes out at once; audio and unknown producers are ignored.
    r.request_keyframe(at(base, 1100), p, LayerId(0), KeyframeKind::Pli);
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
    let a = r.add_producer(base, audio_spec());
    r.request_keyframe(at(base, 2000), a, LayerId(0), KeyframeKind::Pli);
    r.remove_producer(p);
    r.request_keyframe(at(base, 2000), p, LayerId(0), KeyframeKind::Pli);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.stats().keyframe_requests_sent, 3);
}

#[test]
fn keyframe_arrival_cancels_pending_request() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_KEY));
    drain(&mut r);
    r.handle_keyframe_request(at(base, 100), c, KeyframeKind::Pli);
    assert_eq!(r.poll_timeout(), Some(at(base, 500)));
    r.handle_rtp(at(base, 200), p, pkt(1, 2, 0, 96, VP8_KEY));
    assert_eq!(r.poll_timeout(), None);
    r.handle_timeout(at(base, 500));
    assert!(requests(&drain(&mut r)).is_empty());
}

#[test]
fn retry_while_waiting_for_keyframe() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    assert_eq!(requests(&drain(&mut r)).len(), 1);
    assert_eq!(r.poll_timeout(), Some(at(base, 1000)));
    r.handle_timeout(at(base, 999));
    assert!(drain(&mut r).is_empty());
    r.handle_timeout(at(base, 1000));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
    assert_eq!(r.poll_timeout(), Some(at(base, 2000)));
    r.handle_rtp(at(base, 1500), p, pkt(1, 1, 0, 96, VP8_KEY));
    drain(&mut r);
    assert_eq!(r.poll_timeout(), None, "nobody waits any more");
}

#[test]
fn removing_a_waiting_consumer_stops_retries() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_DELTA));
    r.remove_consumer(c);
    // The producer's keyframe request stays queued; nothing is left for the removed consumer.
    assert_eq!(
        drain(&mut r),
        vec![Output::KeyframeRequest { producer: p, layer: LayerId(0), kind: KeyframeKind::Pli }]
    );
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.consumer_producer(c), None);
    r.remove_consumer(c);
}

#[test]
fn audio_ignores_keyframe_requests() {
    let base = Instant::now();
    let (mut r, p, c) = audio_router(base, 0);
    r.handle_keyframe_request(base, c, KeyframeKind::Fir);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.poll_timeout(), None);
    r.handle_keyframe_request(base, ConsumerId(12345), KeyframeKind::Pli);
    assert_eq!(r.drops().get(DropReason::UnknownConsumer), 1);
    let _ = p;
}

#[test]
fn remove_producer_removes_its_consumers() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, audio_spec());
    let other = r.add_producer(base, audio_spec());
    let a = r.add_consumer(base, p, consumer(1, &[(Codec::Opus, 111)], 0)).expect("opus");
    let b = r.add_consumer(base, p, consumer(2, &[(Codec::Opus, 111)], 0)).expect("opus");
    let keep = r.add_consumer(base, other, consumer(3, &[(Codec::Opus, 111)], 0)).expect("opus");
    assert_eq!(r.consumers(p).collect::<Vec<_>>(), vec![a, b]);
    r.handle_rtp(base, p, pkt(1, 1, 0, 111, OPUS));
    // Not drained: the removal discards what was queued for the removed consumers.
    assert_eq!(r.remove_producer(p), vec![a, b]);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.consumer_producer(a), None);
    assert_eq!(r.consumer_producer(keep), Some(other));
    assert_eq!(r.consumers(p).count(), 0);
    assert!(r.remove_producer(p).is_empty());

    r.handle_rtp(base, p, pkt(1, 2, 0, 111, OPUS));
    assert_eq!(r.drops().get(DropReason::UnknownProducer), 1);

    // Slots are reused, ids are not.
    let p2 = r.add_producer(base, audio_spec());
    let c = r.add_consumer(base, p2, consumer(4, &[(Codec::Opus, 111)], 0)).expect("opus");
    assert!(p2 != p && p2 != other);
    assert!(![a, b, keep].contains(&c));
    r.handle_rtp(base, p2, pkt(1, 1, 0, 111, OPUS));
    assert_eq!(rtp(&drain(&mut r)).iter().map(|o| o.consumer).collect::<Vec<_>>(), vec![c]);
}

#[test]
fn empty_payloads() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 0);
    r.handle_rtp(base, p, pkt(1, 1, 0, 111, &[]));
    assert_eq!(rtp(&drain(&mut r)).len(), 1, "empty audio payloads are forwarded");

    let v = r.add_producer(base, video_spec());
    r.add_consumer(base, v, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    drain(&mut r);
    r.handle_rtp(base, v, pkt(1, 1, 0, 96, &[]));
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.drops().get(DropReason::Malformed), 1);
}

#[test]
fn drop_counters_and_stats() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    for i in 0..3 {
        r.add_consumer(base, p, consumer(i, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    }
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_DELTA)); // 3 x waiting_for_keyframe
    r.handle_rtp(base, p, pkt(1, 2, 0, 96, VP8_KEY)); // 3 out, 5 bytes each
    r.handle_rtp(base, p, pkt(1, 3, 0, 102, &[0x41])); // 3 x codec_not_negotiated
    r.handle_rtp(base, p, pkt(1, 4, 0, 33, VP8_KEY)); // unknown_payload_type
    r.handle_rtp(base, ProducerId(77), pkt(1, 5, 0, 96, VP8_KEY)); // unknown_producer
    drain(&mut r);
    let d = r.drops();
    assert_eq!(d.get(DropReason::WaitingForKeyframe), 3);
    assert_eq!(d.get(DropReason::CodecNotNegotiated), 3);
    assert_eq!(d.get(DropReason::UnknownPayloadType), 1);
    assert_eq!(d.get(DropReason::UnknownProducer), 1);
    assert_eq!(d.total(), 8);
    assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), 8);
    assert_eq!(
        r.stats(),
        &RouterStats {
            packets_in: 4,
            bytes_in: 3 + 5 + 1 + 5,
            packets_out: 3,
            bytes_out: 15,
            keyframe_requests_sent: 1,
            ..RouterStats::default()
        }
    );
}

#[test]
fn undrained_outputs_keep_queueing() {
    let base = Instant::now();
    let (mut r, p, _) = audio_router(base, 0);
    r.handle_rtp(base, p, pkt(1, 1, 0, 111, OPUS));
    r.handle_rtp(base, p, pkt(1, 2, 0, 111, OPUS));
    assert_eq!(rtp(&drain(&mut r)).iter().map(|o| o.seq).collect::<Vec<_>>(), vec![0, 1]);
}

/// Pseudo-random packets, requests and membership changes: nothing panics, every output names a live
/// consumer, and a timeout is never further away than the retry interval.
#[test]
fn random_traffic_never_panics() {
    let base = Instant::now();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let mut live: Vec<ConsumerId> = Vec::new();
    let mut now = base;
    let payloads: [&'static [u8]; 5] = [VP8_KEY, VP8_DELTA, VP8_CONT, &[], &[0x65, 1]];
    for _ in 0..20_000 {
        now += Duration::from_millis(next() % 20);
        match next() % 16 {
            0 => {
                let initial = next() as u16;
                if let Ok(c) = r.add_consumer(now, p, consumer(1, &[(Codec::Vp8, 96)], initial)) {
                    live.push(c);
                }
            }
            1 if !live.is_empty() => {
                let c = live.swap_remove((next() % live.len() as u64) as usize);
                r.remove_consumer(c);
            }
            2 if !live.is_empty() => {
                let c = live[(next() % live.len() as u64) as usize];
                r.handle_keyframe_request(
                    now,
                    c,
                    if next().is_multiple_of(2) { KeyframeKind::Pli } else { KeyframeKind::Fir },
                );
            }
            3 => r.handle_timeout(now),
            4 if !live.is_empty() => {
                let c = live[(next() % live.len() as u64) as usize];
                let seqs = [next() % 70_000, next() % 70_000, u64::MAX];
                r.handle_nack(now, c, &seqs);
            }
            _ => {
                let v = next();
                let packet = pkt(
                    (v & 1) as u32,
                    (v >> 8) as u16 % 64,
                    (v >> 24) as u32,
                    if v & 6 == 0 { 102 } else { 96 },
                    payloads[((v >> 40) % 5) as usize],
                );
                r.handle_rtp(now, p, packet);
            }
        }
        while let Some(o) = r.poll_output() {
            if let Output::Rtp(o) = o {
                assert!(live.contains(&o.consumer));
            }
        }
        if let Some(t) = r.poll_timeout() {
            assert!(t <= now + Duration::from_secs(1));
        }
    }
}

#[test]
fn pause_drops_and_resume_continues_without_a_gap_on_a_fresh_keyframe() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, p, consumer(7, &[(Codec::Vp8, 100)], 500)).unwrap();
    drain(&mut r);
    r.handle_rtp(at(base, 0), p, pkt(1, 10, 1000, 96, VP8_KEY));
    r.handle_rtp(at(base, 33), p, pkt(1, 11, 4000, 96, VP8_DELTA));
    assert_eq!(rtp(&drain(&mut r)).iter().map(|o| o.seq).collect::<Vec<_>>(), vec![500, 501]);

    assert!(r.set_paused(at(base, 40), p, true));
    for i in 0..30u16 {
        r.handle_rtp(at(base, 66 + u64::from(i) * 33), p, pkt(1, 12 + i, 7000 + u32::from(i) * 3000, 96, VP8_DELTA));
    }
    assert!(drain(&mut r).is_empty(), "nothing forwarded while paused");
    assert_eq!(r.drops().get(DropReason::Paused), 30);

    assert!(r.set_paused(at(base, 1100), p, false));
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)], "a keyframe is requested on resume");
    r.handle_rtp(at(base, 1110), p, pkt(1, 42, 100_000, 96, VP8_DELTA));
    assert!(drain(&mut r).is_empty(), "video waits for the keyframe after resume");
    r.handle_rtp(at(base, 1143), p, pkt(1, 43, 103_000, 96, VP8_KEY));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq, 502, "continues right after the last forwarded packet");
    assert!(out[0].keyframe);
    assert!(!r.set_paused(at(base, 1200), ProducerId(99), true), "unknown producer");
    assert_eq!(r.consumer_producer(c), Some(p));
}

#[test]
fn a_paused_producer_is_not_asked_for_keyframes_until_it_resumes() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    assert!(r.set_paused(base, p, true));
    let c = r.add_consumer(at(base, 10), p, consumer(7, &[(Codec::Vp8, 100)], 1)).unwrap();
    r.handle_keyframe_request(at(base, 20), c, KeyframeKind::Fir);
    for ms in (0..5_000).step_by(250) {
        r.handle_timeout(at(base, ms));
    }
    assert!(requests(&drain(&mut r)).is_empty(), "no PLI/FIR while paused");
    assert_eq!(r.poll_timeout(), None);
    r.set_paused(at(base, 5_000), p, false);
    assert_eq!(requests(&drain(&mut r)), vec![(p, KeyframeKind::Pli)]);
}

#[test]
fn admits_tells_packet_level_drops_without_counting_them() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    assert_eq!(r.admits(base, p, &pkt(1, 1, 0, 96, VP8_KEY)), Ok(()));
    assert_eq!(r.admits(base, p, &pkt(1, 1, 0, 100, VP8_KEY)), Err(DropReason::UnknownPayloadType));
    assert_eq!(r.admits(base, p, &pkt(1, 1, 0, 96, b"")), Err(DropReason::Malformed));
    assert_eq!(r.admits(base, ProducerId(99), &pkt(1, 1, 0, 96, VP8_KEY)), Err(DropReason::UnknownProducer));
    // A restart to SSRC 2 makes late SSRC 1 packets stale for a while, then a restart again.
    r.handle_rtp(base, p, pkt(1, 1, 0, 96, VP8_KEY));
    r.handle_rtp(at(base, 10), p, pkt(2, 9, 0, 96, VP8_KEY));
    assert_eq!(r.admits(at(base, 20), p, &pkt(1, 2, 0, 96, VP8_CONT)), Err(DropReason::StaleSsrc));
    assert_eq!(r.admits(at(base, 20), p, &pkt(2, 10, 0, 96, VP8_CONT)), Ok(()));
    assert_eq!(r.admits(at(base, 2000), p, &pkt(1, 2, 0, 96, VP8_CONT)), Ok(()));
    assert!(r.set_paused(at(base, 30), p, true));
    assert_eq!(r.admits(at(base, 40), p, &pkt(2, 11, 0, 96, VP8_CONT)), Err(DropReason::Paused));
    // What admits refuses, handle_rtp drops for the same reason; admits itself counted nothing.
    assert_eq!(r.drops().total(), 0);
    r.handle_rtp(at(base, 40), p, pkt(2, 11, 0, 96, VP8_CONT));
    assert_eq!(r.drops().get(DropReason::Paused), 1);
}

/// A video router with two consumers (initial seqs 100 and 5000) that both received a keyframe and
/// `n - 1` more packets (publisher seqs 10 ..= 9 + n).
fn two_viewers(base: Instant, n: u16) -> (Router, ProducerId, [ConsumerId; 2]) {
    let mut r = router();
    let p = r.add_producer(base, video_spec());
    let a = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 100)], 100)).expect("vp8");
    let b = r.add_consumer(base, p, consumer(2, &[(Codec::Vp8, 120)], 5000)).expect("vp8");
    for i in 0..n {
        let payload = if i == 0 { VP8_KEY } else { VP8_DELTA };
        r.handle_rtp(at(base, u64::from(i)), p, pkt(5, 10 + i, 3000 * u32::from(i), 96, payload));
    }
    drain(&mut r);
    (r, p, [a, b])
}

#[test]
fn a_nack_is_answered_from_the_producer_cache_through_each_consumers_mapping() {
    let base = Instant::now();
    let (mut r, _, [a, b]) = two_viewers(base, 5);
    // Both lost publisher seq 12: consumer a sent it as 102, consumer b as 5002.
    r.handle_nack(at(base, 50), a, &[102]);
    r.handle_nack(at(base, 50), b, &[5002]);
    let outs = rtp(&drain(&mut r));
    assert_eq!(outs.len(), 2);
    let (ra, rb) = (&outs[0], &outs[1]);
    assert_eq!((ra.consumer, ra.seq, ra.payload_type, ra.ssrc, ra.sink), (a, 102, 100, 1, 1001));
    assert_eq!((rb.consumer, rb.seq, rb.payload_type, rb.ssrc, rb.sink), (b, 5002, 120, 2, 1002));
    for o in &outs {
        assert!(o.resend);
        assert_eq!(o.timestamp, 6000, "the timestamp the consumer first gave it");
        assert_eq!(&o.payload[..], VP8_DELTA);
    }
    assert!(Arc::ptr_eq(&ra.payload, &rb.payload), "one cached payload serves both");
    assert_eq!((r.stats().resend_requests, r.stats().resends, r.stats().resend_misses), (2, 2, 0));
}

#[test]
fn nacks_for_packets_never_sent_or_gone_are_misses() {
    let base = Instant::now();
    let (mut r, p, [a, _]) = two_viewers(base, 5);
    // 99: before the consumer's first packet; 105: not sent yet; 104: sent, but asked for too late.
    r.handle_nack(at(base, 50), a, &[99, 105]);
    r.handle_nack(at(base, 1005), a, &[104]);
    assert!(rtp(&drain(&mut r)).is_empty());
    assert_eq!((r.stats().resends, r.stats().resend_misses), (0, 3));
    // After a publisher restart the old mapping is gone: the packet it named cannot be found again.
    r.handle_rtp(at(base, 60), p, pkt(6, 900, 0, 96, VP8_KEY));
    drain(&mut r);
    r.handle_nack(at(base, 61), a, &[103]);
    assert!(rtp(&drain(&mut r)).is_empty());
    assert_eq!(r.stats().resend_misses, 4);
    // The restart's first packet continues the consumer's numbering (105) and can be resent.
    r.handle_nack(at(base, 61), a, &[105]);
    let outs = rtp(&drain(&mut r));
    assert_eq!((outs.len(), outs[0].seq, outs[0].keyframe), (1, 105, true));
    r.handle_nack(at(base, 61), ConsumerId(77), &[1]);
    assert_eq!(r.drops().get(DropReason::UnknownConsumer), 1);
}

#[test]
fn audio_is_never_cached_or_resent() {
    let base = Instant::now();
    let (mut r, p, c) = audio_router(base, 0);
    r.handle_rtp(base, p, pkt(1, 1, 0, 111, OPUS));
    drain(&mut r);
    r.handle_nack(base, c, &[0]);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.stats().resend_misses, 1);
}

#[test]
fn outputs_carry_the_sink_extensions_and_capture_time() {
    let base = Instant::now();
    let (mut r, p, c) = audio_router(base, 0);
    let mut packet = pkt(1, 1, 0, 111, OPUS);
    packet.ext = MediaExt { audio_level: Some(-30), voice_activity: Some(true), ..MediaExt::default() };
    packet.wallclock = at(base, 7);
    r.handle_rtp(base, p, packet);
    let outs = rtp(&drain(&mut r));
    assert_eq!(outs.len(), 1);
    assert_eq!((outs[0].consumer, outs[0].sink, outs[0].resend), (c, 1007, false));
    assert_eq!(outs[0].ext.audio_level, Some(-30));
    assert_eq!(outs[0].wallclock, at(base, 7));
}

#[test]
fn layers_are_separate_streams() {
    let base = Instant::now();
    let mut r = router();
    let p = r.add_producer(base, ProducerSpec { layers: 2, ..video_spec() });
    let c = r.add_consumer(base, p, consumer(1, &[(Codec::Vp8, 96)], 0)).expect("vp8");
    drain(&mut r);
    let on = |layer: u8, ssrc: u32, seq: u16, payload: &'static [u8]| {
        let mut packet = pkt(ssrc, seq, u32::from(seq) * 3000, 96, payload);
        packet.layer = LayerId(layer);
        packet
    };
    r.handle_rtp(base, p, on(0, 10, 1, VP8_KEY));
    r.handle_rtp(base, p, on(1, 20, 500, VP8_KEY)); // another SSRC on another layer: no restart
    r.handle_rtp(base, p, on(0, 10, 2, VP8_DELTA));
    r.handle_rtp(base, p, on(2, 30, 1, VP8_KEY)); // no such layer
    let outs = drain(&mut r);
    assert!(requests(&outs).is_empty(), "a second layer is not a restart of the first");
    let seqs: Vec<u64> = rtp(&outs).iter().map(|o| o.seq).collect();
    assert_eq!(seqs, vec![0, 1], "the consumer forwards its one layer, without a gap");
    assert_eq!(rtp(&outs).iter().filter(|o| o.consumer == c).count(), 2);
    assert_eq!(r.drops().get(DropReason::UnknownLayer), 1);
    assert_eq!(r.drops().get(DropReason::StaleSsrc), 0);
}
