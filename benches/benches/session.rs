//! `session`: the forwarding core plus str0m sessions, including SRTP protect, without sockets.
//!
//! N viewer sessions (N in {1, 10, 100}) are handshaken in memory once (see `dais_benches::session`); then
//! one iteration is one ingress packet: the router fans it out, each consumer's `StreamTx::write_rtp` gets
//! the shared payload, and each session is polled until it has handed over its SRTP-protected transmit.
//! Criterion's time is per ingress packet; its throughput (elements = N) is egress packets per second.
//!
//! By default the sessions use what DTLS negotiates between two str0m peers, AEAD_AES_256_GCM, which is
//! also what Chromium negotiates with str0m. `--features srtp-profiles` adds AEAD_AES_128_GCM and
//! AES_CM_128_HMAC_SHA1_80, forced by re-keying after the handshake.
//!
//! Before measuring, the binary counts heap allocations per egress packet once warm (a counting global
//! allocator, only on this thread, only while a probe runs) and prints them with the first sizes seen.
//! `RUST_LOG=str0m=debug` shows str0m's log, e.g. the SRTP profile DTLS settled on.

// A `GlobalAlloc` impl is unsafe by definition; it only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dais_benches::session::Fanout;
use dais_benches::Kind;
use str0m::crypto::dtls::SrtpProfile;

const VIEWERS: [usize; 3] = [1, 10, 100];

/// Ingress packets timed between two untimed `Fanout::maintain` calls.
const CHUNK: u64 = 64;

fn profiles() -> Vec<(&'static str, Option<SrtpProfile>)> {
    let mut p = vec![("aes256gcm_negotiated", None)];
    if cfg!(feature = "srtp-profiles") {
        p.push(("aes128gcm_forced", Some(SrtpProfile::AEAD_AES_128_GCM)));
        p.push(("aescm_sha1_80_forced", Some(SrtpProfile::AES128_CM_SHA1_80)));
    }
    p
}

fn session(c: &mut Criterion) {
    for kind in Kind::ALL {
        for (label, force) in profiles() {
            let mut group = c.benchmark_group(format!("session/{}/{label}", kind.name()));
            group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
            for n in VIEWERS {
                let mut f = Fanout::new(kind, n, force).expect("the sessions connect in memory");
                group.throughput(Throughput::Elements(n as u64));
                group.bench_function(BenchmarkId::new("viewers", n), |b| {
                    b.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        let mut done = 0;
                        while done < iters {
                            let chunk = (iters - done).min(CHUNK);
                            let start = Instant::now();
                            for _ in 0..chunk {
                                black_box(f.send());
                            }
                            timed += start.elapsed();
                            done += chunk;
                            f.maintain().expect("the sessions stay connected");
                        }
                        timed
                    })
                });
            }
            group.finish();
        }
    }
}

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static SIZES: [AtomicUsize; 12] = [const { AtomicUsize::new(0) }; 12];

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if MEASURING.with(Cell::get) {
        let n = ALLOCATIONS.fetch_add(1, Ordering::Relaxed) as usize;
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
        if let Some(slot) = SIZES.get(n) {
            slot.store(size, Ordering::Relaxed);
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per egress packet once warm, for each kind at 1 and 100 viewers (negotiated profile).
fn allocation_probe() {
    // Every `poll_output` moves one of these out by value.
    eprintln!(
        "size_of str0m::Output = {} bytes, str0m::Event = {} bytes",
        std::mem::size_of::<str0m::Output>(),
        std::mem::size_of::<str0m::Event>()
    );
    for kind in Kind::ALL {
        for n in [1usize, 100] {
            let mut f = Fanout::new(kind, n, None).expect("the sessions connect in memory");
            // Warm: 3 s of simulated traffic, so that str0m's queues and RTX cache have grown.
            for i in 0..3000 {
                f.send();
                if i % CHUNK == 0 {
                    f.maintain().expect("the sessions stay connected");
                }
            }
            f.maintain().expect("the sessions stay connected");
            let packets = 50u64;
            ALLOCATIONS.store(0, Ordering::Relaxed);
            BYTES.store(0, Ordering::Relaxed);
            let mut egress = 0;
            MEASURING.with(|m| m.set(true));
            for _ in 0..packets {
                egress += f.send();
            }
            MEASURING.with(|m| m.set(false));
            let allocs = ALLOCATIONS.load(Ordering::Relaxed);
            let bytes = BYTES.load(Ordering::Relaxed);
            let sizes: Vec<usize> = SIZES.iter().map(|s| s.load(Ordering::Relaxed)).take(allocs as usize).collect();
            eprintln!(
                "allocations {} viewers={n}: {:.2} per egress packet, {:.0} bytes per egress packet \
                 ({allocs} over {egress} transmits of {packets} ingress packets); first sizes {sizes:?}",
                kind.name(),
                allocs as f64 / egress as f64,
                bytes as f64 / egress as f64,
            );
        }
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    allocation_probe();
    let mut c = Criterion::default().configure_from_args();
    session(&mut c);
    c.final_summary();
}
