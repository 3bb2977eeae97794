//! `forward`: the forwarding core alone (`dais-forward`), no WebRTC stack, no socket.
//!
//! One producer fans out to N consumers, N in {1, 10, 100, 1000}, for 1,200-byte VP8 packets and 160-byte
//! Opus packets. The router is warm: every consumer has started on a keyframe before measuring. One
//! iteration is one ingress packet: `Router::handle_rtp`, then `poll_output` until the N rewritten packets
//! are drained. Criterion's time is per ingress packet; its throughput (elements = N) is egress packets per
//! second, so time per egress packet is the time divided by N.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dais_benches::Kind;
use dais_forward::{
    ConsumerSpec, LayerId, MediaExt, Output, Payload, ProducerId, ProducerSpec, Router, RouterConfig, RtpIn,
};

const VIEWERS: [u64; 4] = [1, 10, 100, 1000];

struct Fanout {
    kind: Kind,
    router: Router,
    producer: ProducerId,
    payload: Payload,
    sent: u64,
    now: Instant,
}

impl Fanout {
    fn new(kind: Kind, viewers: u64) -> Self {
        let now = Instant::now();
        let codec = kind.codec();
        let mut router = Router::new(RouterConfig::default());
        let producer = router.add_producer(
            now,
            ProducerSpec {
                kind: kind.into(),
                clock_rate: kind.clock_rate(),
                payload_types: vec![(kind.publisher_pt(), codec)],
                layers: 1,
            },
        );
        for i in 0..viewers {
            let spec = ConsumerSpec {
                sink: i,
                ssrc: 10_000 + i as u32,
                payload_types: vec![(codec, 100 + (i % 20) as u8)],
                initial_seq: (i * 7) as u16,
            };
            router.add_consumer(now, producer, spec).expect("the consumer negotiated the producer's codec");
        }
        while router.poll_output().is_some() {}
        let mut f = Fanout { kind, router, producer, payload: kind.payload(false).into(), sent: 0, now };
        let key: Payload = kind.payload(true).into();
        assert_eq!(f.send(key), viewers, "every consumer starts on the first packet");
        f
    }

    /// One ingress packet through the router; returns the egress packets drained.
    fn send(&mut self, payload: Payload) -> u64 {
        let i = self.sent;
        self.sent += 1;
        self.now += Duration::from_millis(1);
        let packet = RtpIn {
            layer: LayerId(0),
            ssrc: 0x5eed,
            seq: i as u16,
            timestamp: self.kind.timestamp(i),
            payload_type: self.kind.publisher_pt(),
            marker: self.kind.marker(i),
            payload,
            ext: MediaExt::default(),
            wallclock: self.now,
        };
        self.router.handle_rtp(self.now, self.producer, packet);
        let mut out = 0;
        while let Some(o) = self.router.poll_output() {
            if let Output::Rtp(rtp) = o {
                black_box(&rtp);
                out += 1;
            }
        }
        out
    }
}

fn forward(c: &mut Criterion) {
    for kind in Kind::ALL {
        let mut group = c.benchmark_group(format!("forward/{}", kind.name()));
        group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        for n in VIEWERS {
            let mut f = Fanout::new(kind, n);
            group.throughput(Throughput::Elements(n));
            group.bench_function(BenchmarkId::new("viewers", n), |b| {
                b.iter(|| {
                    let payload = f.payload.clone();
                    f.send(payload)
                })
            });
            assert_eq!(f.router.drops().total(), 0, "the warm router dropped packets");
        }
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    forward(&mut c);
    c.final_summary();
}
