//! Hand-overs ([`Router::hand_over`]): one outgoing stream moves from one producer to another at the
//! new producer's keyframe, and the receiver sees one stream: the same SSRC, sequence numbers that
//! go on by one, timestamps that go on moving forward.

use super::tests::{at, audio_spec, consumer, drain, pkt, rtp, video_spec, OPUS, VP8_DELTA, VP8_KEY};
use super::*;
use crate::{Codec, KeyframeKind, Output};

const VP8: &[(Codec, u8)] = &[(Codec::Vp8, 98)];

fn handed_over(outs: &[Output]) -> Vec<(ConsumerId, ConsumerId)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::HandedOver { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// Two video producers and a consumer of the first that has sent three packets (seq 100 to 102,
/// timestamps 9000 to 9006).
fn two_speakers(base: Instant) -> (Router, ProducerId, ProducerId, ConsumerId) {
    let mut r = Router::new(RouterConfig::default());
    let a = r.add_producer(base, video_spec());
    let b = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, a, consumer(7, VP8, 100)).expect("vp8 in common");
    drain(&mut r);
    r.handle_rtp(at(base, 0), a, pkt(1, 10, 9000, 96, VP8_KEY));
    r.handle_rtp(at(base, 33), a, pkt(1, 11, 9003, 96, VP8_DELTA));
    r.handle_rtp(at(base, 66), a, pkt(1, 12, 9006, 96, VP8_DELTA));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.iter().map(|o| o.seq).collect::<Vec<_>>(), [100, 101, 102]);
    (r, a, b, c)
}

#[test]
fn a_hand_over_waits_for_the_new_keyframe_then_continues_the_same_stream() {
    let base = Instant::now();
    let (mut r, a, b, c) = two_speakers(base);
    let n = r.hand_over(at(base, 70), c, b).expect("handed over");
    let outs = drain(&mut r);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::KeyframeRequest { producer, kind: KeyframeKind::Pli, .. } if *producer == b)),
        "the next speaker is asked for a keyframe: {outs:?}"
    );
    // Until it comes, the old stream goes on and the new speaker's deltas are held back.
    r.handle_rtp(at(base, 80), b, pkt(2, 500, 777_000, 96, VP8_DELTA));
    r.handle_rtp(at(base, 100), a, pkt(1, 13, 9009, 96, VP8_DELTA));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.iter().map(|o| (o.consumer, o.seq)).collect::<Vec<_>>(), [(c, 103)]);
    // The keyframe: the new consumer sends on the same SSRC, right after the old one's last packet.
    r.handle_rtp(at(base, 200), b, pkt(2, 501, 777_003, 96, VP8_KEY));
    let outs = drain(&mut r);
    let out = rtp(&outs);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].consumer, out[0].ssrc, out[0].seq), (n, 7, 104));
    assert!(out[0].keyframe);
    let gap = out[0].timestamp.wrapping_sub(9009);
    assert!((8_000..10_000).contains(&gap), "the timestamp moves on by the 100 ms that passed: {gap}");
    assert_eq!(handed_over(&outs), [(c, n)]);
    // The old speaker reaches nobody now; the new one goes on.
    assert_eq!(r.consumers(a).count(), 0);
    assert_eq!(r.consumer_producer(c), None);
    r.handle_rtp(at(base, 233), a, pkt(1, 14, 9012, 96, VP8_DELTA));
    r.handle_rtp(at(base, 233), b, pkt(2, 502, 777_006, 96, VP8_DELTA));
    let out = rtp(&drain(&mut r));
    assert_eq!(out.iter().map(|o| (o.consumer, o.seq)).collect::<Vec<_>>(), [(n, 105)]);
    assert_eq!(out[0].timestamp.wrapping_sub(9009), gap + 3, "then timestamps follow the new source");
}

#[test]
fn a_predecessor_that_ends_first_hands_its_numbers_on() {
    let base = Instant::now();
    let (mut r, a, b, c) = two_speakers(base);
    let n = r.hand_over(at(base, 70), c, b).expect("handed over");
    drain(&mut r);
    assert!(r.remove_producer(a).is_empty(), "the old speaker leaves before the new keyframe: c did not end");
    assert_eq!(handed_over(&drain(&mut r)), [(c, n)]);
    r.handle_rtp(at(base, 300), b, pkt(2, 40, 5, 96, VP8_KEY));
    let out = rtp(&drain(&mut r));
    assert_eq!((out[0].consumer, out[0].seq), (n, 103), "the stream goes on where it stopped");
}

#[test]
fn a_second_hand_over_replaces_the_pending_one() {
    let base = Instant::now();
    let (mut r, a, b, c) = two_speakers(base);
    let third = r.add_producer(base, video_spec());
    let first = r.hand_over(at(base, 70), c, b).expect("to b");
    let second = r.hand_over(at(base, 80), c, third).expect("then to the third");
    assert_ne!(first, second);
    assert_eq!(r.consumers(b).count(), 0, "the pending hand-over to b is gone");
    drain(&mut r);
    r.handle_rtp(at(base, 100), b, pkt(2, 1, 0, 96, VP8_KEY));
    assert!(rtp(&drain(&mut r)).is_empty());
    r.handle_rtp(at(base, 120), third, pkt(3, 1, 0, 96, VP8_KEY));
    let outs = drain(&mut r);
    assert_eq!(rtp(&outs).iter().map(|o| (o.consumer, o.seq)).collect::<Vec<_>>(), [(second, 103)]);
    assert_eq!(handed_over(&outs), [(c, second)]);
    assert_eq!(r.consumers(a).count(), 0);
    // Removing a pending successor leaves its predecessor as it was.
    let fourth = r.add_producer(base, video_spec());
    let pending = r.hand_over(at(base, 130), second, fourth).expect("pending");
    r.remove_consumer(pending);
    r.handle_rtp(at(base, 150), third, pkt(3, 2, 3, 96, VP8_DELTA));
    assert_eq!(rtp(&drain(&mut r)).iter().map(|o| o.seq).collect::<Vec<_>>(), [104]);
}

#[test]
fn audio_hands_over_at_the_next_packet_and_kinds_do_not_mix() {
    let base = Instant::now();
    let mut r = Router::new(RouterConfig::default());
    let a = r.add_producer(base, audio_spec());
    let b = r.add_producer(base, audio_spec());
    let v = r.add_producer(base, video_spec());
    let c = r.add_consumer(base, a, consumer(9, &[(Codec::Opus, 111)], 50)).expect("opus");
    r.handle_rtp(at(base, 0), a, pkt(1, 7, 960, 111, OPUS));
    r.handle_rtp(at(base, 20), a, pkt(1, 8, 1920, 111, OPUS));
    assert_eq!(r.hand_over(at(base, 30), c, v), Err(ConsumeError::KindMismatch));
    assert_eq!(r.hand_over(at(base, 30), ConsumerId(999), b), Err(ConsumeError::UnknownConsumer));
    let n = r.hand_over(at(base, 30), c, b).expect("audio to audio");
    drain(&mut r);
    r.handle_rtp(at(base, 40), b, pkt(2, 1000, 5, 111, OPUS));
    r.handle_rtp(at(base, 40), a, pkt(1, 9, 2880, 111, OPUS));
    let outs = drain(&mut r);
    assert_eq!(rtp(&outs).iter().map(|o| (o.consumer, o.seq)).collect::<Vec<_>>(), [(n, 52)]);
    assert_eq!(handed_over(&outs), [(c, n)]);
}

#[test]
fn handing_over_a_waiting_successor_moves_the_forwarding_one_and_going_back_calls_it_off() {
    let base = Instant::now();
    let (mut r, a, b, c) = two_speakers(base);
    let third = r.add_producer(base, video_spec());
    let first = r.hand_over(at(base, 70), c, b).expect("to b");
    // The caller names the waiting successor: the consumer that forwards (c) is the one moved.
    let second = r.hand_over(at(base, 80), first, third).expect("then to the third");
    assert_eq!(r.consumers(b).count(), 0, "the wait for b is over");
    r.handle_rtp(at(base, 120), third, pkt(3, 1, 0, 96, VP8_KEY));
    let outs = drain(&mut r);
    assert_eq!(rtp(&outs).iter().map(|o| (o.consumer, o.seq)).collect::<Vec<_>>(), [(second, 103)]);
    assert_eq!(handed_over(&outs), [(c, second)]);
    // Handing over to what it forwards already calls a pending hand-over off.
    let fourth = r.add_producer(base, video_spec());
    let pending = r.hand_over(at(base, 130), second, fourth).expect("pending");
    assert_eq!(r.hand_over(at(base, 131), second, third), Ok(second));
    assert_eq!(r.consumer_producer(pending), None);
    r.handle_rtp(at(base, 140), fourth, pkt(4, 1, 0, 96, VP8_KEY));
    r.handle_rtp(at(base, 150), third, pkt(3, 2, 3, 96, VP8_DELTA));
    assert_eq!(rtp(&drain(&mut r)).iter().map(|o| (o.consumer, o.seq)).collect::<Vec<_>>(), [(second, 104)]);
    let _ = a;
}
