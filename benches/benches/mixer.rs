//! `mixer`: the room program's audio mixer (`dais_media::mixer`), one 20 ms frame of a room with N
//! speakers: N Opus packets pushed (each a speaker's own 48 kbit/s encoding of a tone), then one
//! tick, which decodes all N with libopus, normalises, sums, limits and encodes the mix. 50 of
//! these make one second of a room's program audio, so the time per iteration times 50 is the
//! mixer's share of a core per room.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use dais_media::mixer::{Mixer, FRAME, FRAME_SAMPLES, SAMPLE_RATE};

/// One second of 20 ms packets of a `hz` tone from a speaker's own encoder.
fn speaker(hz: f32) -> Vec<Bytes> {
    let mut enc = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    let mut buf = vec![0u8; 1500];
    (0..50)
        .map(|f| {
            let pcm: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (f * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32;
                    0.2 * (2.0 * std::f32::consts::PI * hz * t).sin()
                })
                .collect();
            let n = enc.encode_float(&pcm, &mut buf).expect("encode");
            Bytes::copy_from_slice(&buf[..n])
        })
        .collect()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("mixer");
    g.throughput(Throughput::Elements(1));
    for n in [1u64, 4, 9] {
        let inputs: Vec<Vec<Bytes>> = (0..n).map(|k| speaker(300.0 + 150.0 * k as f32)).collect();
        g.bench_with_input(BenchmarkId::new("frame", n), &n, |b, _| {
            let mut now = Instant::now();
            let mut m = Mixer::new(now, 0, 0).expect("mixer");
            for k in 0..n {
                m.add_input(k).expect("input");
            }
            let mut f = 0usize;
            b.iter(|| {
                for (k, packets) in inputs.iter().enumerate() {
                    m.push(k as u64, f as u16, packets[f % packets.len()].clone());
                }
                m.handle_timeout(now);
                black_box(m.poll_output());
                now += FRAME;
                f += 1;
            });
        });
    }
    g.finish();
    c.final_summary();
}
