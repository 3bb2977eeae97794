//! `speech`: the active-speaker path's cost per audio packet, alone (`dais_forward::speech`).
//!
//! `meter`: one packet's audio level into a [`LevelMeter`] (what the media thread adds to every
//! audio packet of a speaker). `room/N`: one audio packet's share of the room's detector work with N
//! speakers: every 10th packet of each speaker closes a 200 ms window, which is pushed into the
//! [`Detector`] and followed by a poll; the time is divided over the 10 packets of the window (the
//! iteration is one packet of every speaker, N packets).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dais_forward::speech::{Detector, LevelMeter};

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("speech");
    g.throughput(Throughput::Elements(1));
    g.bench_function("meter", |b| {
        let mut m = LevelMeter::default();
        let mut now = Instant::now();
        let mut i = 0u32;
        b.iter(|| {
            now += Duration::from_millis(20);
            i = i.wrapping_add(1);
            black_box(m.count(now, if i.is_multiple_of(3) { 127 } else { 30 }));
        });
    });
    for speakers in [4u32, 9, 20] {
        g.throughput(Throughput::Elements(u64::from(speakers)));
        g.bench_with_input(BenchmarkId::new("room", speakers), &speakers, |b, &n| {
            let mut d: Detector<u32> = Detector::new();
            let mut meters = vec![LevelMeter::default(); n as usize];
            let mut now = Instant::now();
            let mut tick = 0u32;
            b.iter(|| {
                now += Duration::from_millis(20);
                tick = tick.wrapping_add(1);
                // Speakers take turns holding the floor, 3 s each.
                let talker = (tick / 150) % n;
                for (k, m) in meters.iter_mut().enumerate() {
                    let level = if k as u32 == talker { 25 } else { 120 };
                    if let Some(a) = m.count(now, level) {
                        d.push(now, &(k as u32), a);
                    }
                }
                black_box(d.poll(now));
            });
        });
    }
    g.finish();
    c.final_summary();
}
