//! Proves the hot path allocates nothing once warm: 1 producer fanned out to 100 consumers, 100 packets
//! through `handle_rtp` (each also kept in the producer's packet cache) and one NACK answered from that
//! cache after each, drained with `poll_output`: zero heap allocations.
//!
//! This is its own test binary because it installs a counting global allocator. Only allocations made on
//! the measuring thread while measurement is switched on are counted, so the test harness's own threads
//! cannot disturb the result.

// A `GlobalAlloc` impl is unsafe by definition; this test needs one to count allocations. It only forwards
// to `System` and bumps a counter.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use dais_forward::{
    Codec, ConsumerSpec, LayerId, MediaExt, MediaKind, Output, Payload, ProducerSpec, Router, RouterConfig, RtpIn,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if MEASURING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const VP8_KEY: &[u8] = &[0x10, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
const VP8_DELTA: &[u8] = &[0x10, 0x01, 0x00, 0x11, 0x22, 0x33];

fn packet(seq: u16, payload: &Payload, wallclock: Instant) -> RtpIn {
    RtpIn {
        layer: LayerId(0),
        ssrc: 0x1234,
        seq,
        timestamp: u32::from(seq) * 3000,
        payload_type: 96,
        marker: seq.is_multiple_of(3),
        payload: payload.clone(),
        ext: MediaExt::default(),
        wallclock,
    }
}

#[test]
fn warm_fan_out_allocates_nothing() {
    let base = Instant::now();
    let mut router = Router::new(RouterConfig::default());
    let producer = router.add_producer(
        base,
        ProducerSpec { kind: MediaKind::Video, clock_rate: 90_000, payload_types: vec![(96, Codec::Vp8)], layers: 1 },
    );
    let mut consumers = Vec::new();
    for i in 0..100u32 {
        let spec = ConsumerSpec {
            sink: u64::from(i),
            ssrc: 1000 + i,
            payload_types: vec![(Codec::Vp8, 100)],
            initial_seq: i as u16,
        };
        consumers.push(router.add_consumer(base, producer, spec).expect("vp8 in common"));
    }
    while router.poll_output().is_some() {}

    // Heap-backed payloads, as the media layer hands them in.
    let key: Payload = Arc::from(VP8_KEY);
    let delta: Payload = Arc::from(VP8_DELTA);

    // Warm up: a keyframe starts every consumer, then some ordinary packets.
    let mut seq: u16 = 65_500;
    let mut now = base;
    for i in 0..10 {
        let payload = if i == 0 { &key } else { &delta };
        router.handle_rtp(now, producer, packet(seq, payload, now));
        while router.poll_output().is_some() {}
        seq = seq.wrapping_add(1);
        now += Duration::from_millis(33);
    }

    // Packets are built before measuring: the caller's parsing is not the router's cost.
    let packets: Vec<RtpIn> = (0..100u16)
        .map(|i| packet(seq.wrapping_add(i), if i.is_multiple_of(30) { &key } else { &delta }, now))
        .collect();
    let mut forwarded = 0u64;
    let mut resent = 0u64;
    let mut last_seq = 0u64;
    // The first consumer started at 0 and NACKs its previous packet each time (9 was the last warm-up one).

    // The counter itself works: one deliberate allocation is seen.
    MEASURING.with(|m| m.set(true));
    drop(std::hint::black_box(Box::new(7u64)));
    MEASURING.with(|m| m.set(false));
    assert_eq!(ALLOCATIONS.swap(0, Ordering::Relaxed), 1);

    MEASURING.with(|m| m.set(true));
    for (previous, p) in (9u64..).zip(packets) {
        router.handle_rtp(now, producer, p);
        router.handle_nack(now, consumers[0], &[previous]);
        while let Some(out) = router.poll_output() {
            match out {
                Output::Rtp(rtp) if rtp.resend => resent += 1,
                Output::Rtp(rtp) => {
                    forwarded += 1;
                    last_seq = rtp.seq;
                }
                _ => {}
            }
        }
        now += Duration::from_millis(33);
    }
    MEASURING.with(|m| m.set(false));

    assert_eq!(forwarded, 100 * 100);
    assert_eq!(resent, 100, "every NACK was answered from the cache");
    // The last consumer started at 99 and has seen 110 packets (the sequence wrapped on the way).
    assert_eq!(last_seq, 99 + 109);
    assert_eq!(router.drops().total(), 0);
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "the warm hot path allocated");
}
