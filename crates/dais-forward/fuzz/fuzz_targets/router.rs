//! Interprets the input as a sequence of operations on a router with one video and one audio producer:
//! mostly RTP packets (header fields and payload taken from the input), plus consumer joins and leaves,
//! keyframe requests, NACKs, downlink estimates, tile sizes and timeouts. Nothing may panic, and every output must name a live consumer whose
//! sequence numbers never go below its initial value.

#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dais_forward::{
    Codec, ConsumerId, ConsumerSpec, KeyframeKind, LayerId, MediaExt, MediaKind, Output,
    ProducerSpec, Router, RouterConfig, RtpIn,
};
use libfuzzer_sys::fuzz_target;

/// Reads the input front to back; running out yields zeros, so every input is a valid program.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self, max: usize) -> &[u8] {
        let n = usize::from(self.u8()).min(max).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let base = Instant::now();
    let mut now = base;
    let mut router = Router::new(RouterConfig::default());
    let video = router.add_producer(
        now,
        ProducerSpec {
            kind: MediaKind::Video,
            clock_rate: 90_000,
            payload_types: vec![
                (96, Codec::Vp8),
                (98, Codec::Vp9),
                (102, Codec::H264),
                (45, Codec::Av1),
                (97, Codec::Other),
            ],
            layers: 2,
        },
    );
    let audio = router.add_producer(
        now,
        ProducerSpec {
            kind: MediaKind::Audio,
            clock_rate: 48_000,
            payload_types: vec![(111, Codec::Opus)],
            layers: 1,
        },
    );
    let producers = [video, audio];
    let mut live: HashMap<ConsumerId, u16> = HashMap::new();
    let mut order: Vec<ConsumerId> = Vec::new();

    while !input.0.is_empty() {
        now += Duration::from_millis(u64::from(input.u8()));
        let op = input.u8();
        match op % 8 {
            0 => {
                let producer = producers[usize::from(op >> 7)];
                let initial_seq = input.u16();
                let codecs = input.u8();
                let payload_types = [
                    Codec::Opus,
                    Codec::Vp8,
                    Codec::Vp9,
                    Codec::H264,
                    Codec::Av1,
                    Codec::Other,
                ]
                .into_iter()
                .enumerate()
                .filter(|(i, _)| codecs & (1 << i) != 0)
                .map(|(i, c)| (c, 100 + i as u8))
                .collect();
                let spec = ConsumerSpec {
                    sink: 0,
                    ssrc: input.u32(),
                    payload_types,
                    initial_seq,
                };
                if let Ok(c) = router.add_consumer(now, producer, spec) {
                    live.insert(c, initial_seq);
                    order.push(c);
                }
            }
            1 if !order.is_empty() => {
                let c = order.swap_remove(usize::from(input.u8()) % order.len());
                live.remove(&c);
                router.remove_consumer(c);
            }
            2 if !order.is_empty() => {
                let c = order[usize::from(input.u8()) % order.len()];
                let kind = if op & 0x80 != 0 {
                    KeyframeKind::Fir
                } else {
                    KeyframeKind::Pli
                };
                router.handle_keyframe_request(now, c, kind);
            }
            3 => router.handle_timeout(now),
            4 if !order.is_empty() => {
                let c = order[usize::from(input.u8()) % order.len()];
                let seqs = [u64::from(input.u32()), u64::from(input.u16())];
                router.handle_nack(now, c, &seqs);
            }
            5 => router.set_estimate(now, 0, u64::from(input.u32())),
            6 if !order.is_empty() => {
                let c = order[usize::from(input.u8()) % order.len()];
                router.set_video_size(now, c, input.u16(), input.u16());
            }
            _ => {
                let producer = producers[usize::from(op >> 7)];
                let packet = RtpIn {
                    layer: LayerId((op & 0x20) >> 5),
                    ssrc: u32::from(input.u8() & 3),
                    seq: input.u16(),
                    timestamp: input.u32(),
                    payload_type: input.u8(),
                    marker: op & 0x40 != 0,
                    payload: Arc::from(input.bytes(64)),
                    ext: MediaExt::default(),
                    wallclock: now,
                };
                router.handle_rtp(now, producer, packet);
            }
        }
        while let Some(out) = router.poll_output() {
            match out {
                Output::Rtp(rtp) => {
                    let initial = live.get(&rtp.consumer).copied();
                    assert!(initial.is_some(), "output for a removed consumer");
                    assert!(
                        rtp.seq >= u64::from(initial.unwrap_or_default()),
                        "seq below initial_seq"
                    );
                }
                Output::Paused { consumer, .. } | Output::Resumed { consumer, .. } => {
                    assert!(live.contains_key(&consumer), "pause news for a removed consumer");
                }
                Output::KeyframeRequest { .. } | Output::HandedOver { .. } => {}
            }
        }
        if router.poll_timeout().is_some_and(|t| t <= now) {
            router.handle_timeout(now);
        }
    }
});
