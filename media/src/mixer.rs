//! The room program's audio, sans-IO: every speaker's Opus decoded, mixed and encoded once per room
//! (libopus through the `opus` crate), at 48 kHz in 20 ms frames.
//!
//! Push each input's packets in ([`Mixer::push`]), move time ([`Mixer::handle_timeout`] at
//! [`Mixer::poll_timeout`]), and poll the mixed frames out ([`Mixer::poll_output`]). Told the time,
//! like the rest of the media plane; it reads no clock.
//!
//! Invariants kept here:
//! - One frame leaves every 20 ms from the first tick on, with consecutive sequence numbers and
//!   timestamps 960 apart, whatever its inputs do (silence is encoded too).
//! - An input plays once it holds a frame; each tick takes at most one frame from it, and an input
//!   that ran dry is concealed (libopus loss concealment) for up to [`CONCEAL_FRAMES`], then silent
//!   until it is fed again. It holds at most [`MAX_QUEUED`] frames: beyond that the oldest go (the
//!   input caught up), so a packet waits at most a tick plus what jitter put before it.
//! - Loudness: each input is brought towards [`TARGET_RMS`] by a slow gain (at most +12 dB, only
//!   while it is voiced); the sum goes through a limiter whose gain never lets a sample exceed
//!   [`CEILING`], so the mix never clips.
//! - Packets older than what an input already played, duplicates and undecodable ones are counted
//!   ([`MixerStats`]), never errors.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The mix's clock rate.
pub const SAMPLE_RATE: u32 = 48_000;
/// One frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Samples in one frame (mono).
pub const FRAME_SAMPLES: usize = 960;
/// Frames an input may hold; more drop the oldest.
pub const MAX_QUEUED: usize = 4;
/// Frames an input that ran dry is concealed for before it counts as silent.
pub const CONCEAL_FRAMES: u32 = 3;
/// The level each voiced input is brought towards (RMS, full scale 1.0): about -20 dBFS.
pub const TARGET_RMS: f32 = 0.1;
/// The highest sample the limiter lets through (about -1 dBFS).
pub const CEILING: f32 = 0.89;
/// Most gain the loudness normaliser gives an input (+12 dB).
const MAX_GAIN: f32 = 4.0;
/// Below this RMS an input frame is taken for silence (about -50 dBFS): its gain is left alone.
const VOICED_RMS: f32 = 0.003;
/// Frames without a packet after which an input's next packet may start anywhere (1 s).
const RESTART_FRAMES: u32 = 50;
/// Most frames one late call of [`Mixer::handle_timeout`] makes.
pub const MAX_CATCH_UP: u32 = 5;
/// Largest encoded frame.
const MAX_PACKET: usize = 1500;

/// Why a mixer could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MixerError {
    /// libopus refused to make an encoder or decoder.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

/// What the mixer counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Frames mixed and encoded.
    pub frames: u64,
    /// Input packets taken.
    pub packets: u64,
    /// Input packets dropped: late (older than what was played), duplicate, or beyond the queue.
    pub dropped: u64,
    /// Input packets libopus could not decode.
    pub undecodable: u64,
    /// Frames of an input concealed because its packet was missing.
    pub concealed: u64,
    /// Frames in which the limiter lowered the mix.
    pub limited: u64,
}

/// One mixed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedFrame {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (48 kHz).
    pub timestamp: u32,
    /// The Opus packet.
    pub payload: Bytes,
    /// The tick it was mixed at.
    pub at: Instant,
}

struct Input {
    decoder: opus::Decoder,
    /// Frames waiting, by sequence number.
    queue: VecDeque<(u16, Bytes)>,
    /// The last sequence number played.
    played: Option<u16>,
    /// Ticks since it last had a frame.
    dry: u32,
    gain: f32,
}

/// Newer than `b` in sequence-number order (RFC 3550 wrap).
fn newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// The audio mixer of one room. See the module docs.
pub struct Mixer {
    inputs: BTreeMap<u64, Input>,
    encoder: opus::Encoder,
    next_tick: Option<Instant>,
    seq: u16,
    timestamp: u32,
    limiter: f32,
    out: VecDeque<MixedFrame>,
    frame: Vec<f32>,
    sum: Vec<f32>,
    packet: Vec<u8>,
    stats: MixerStats,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer").field("inputs", &self.inputs.len()).field("stats", &self.stats).finish()
    }
}

impl Mixer {
    /// A mixer with no inputs; its first frame is due at `now`. `seq` and `timestamp` are its
    /// first frame's.
    pub fn new(now: Instant, seq: u16, timestamp: u32) -> Result<Mixer, MixerError> {
        let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(48_000))?;
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(5)?;
        Ok(Mixer {
            inputs: BTreeMap::new(),
            encoder,
            next_tick: Some(now),
            seq,
            timestamp,
            limiter: 1.0,
            out: VecDeque::new(),
            frame: vec![0.0; FRAME_SAMPLES],
            sum: vec![0.0; FRAME_SAMPLES],
            packet: vec![0; MAX_PACKET],
            stats: MixerStats::default(),
        })
    }

    /// Mix input `key` from now on (a speaker's audio); adding one again changes nothing.
    pub fn add_input(&mut self, key: u64) -> Result<(), MixerError> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.inputs.entry(key) {
            let decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?;
            e.insert(Input { decoder, queue: VecDeque::new(), played: None, dry: CONCEAL_FRAMES, gain: 1.0 });
        }
        Ok(())
    }

    /// Stop mixing input `key`.
    pub fn remove_input(&mut self, key: u64) {
        self.inputs.remove(&key);
    }

    /// The inputs mixed now.
    pub fn inputs(&self) -> impl Iterator<Item = u64> + '_ {
        self.inputs.keys().copied()
    }

    /// An RTP packet of input `key` (sequence number `seq`, one 20 ms Opus frame); unknown inputs are
    /// ignored.
    pub fn push(&mut self, key: u64, seq: u16, payload: Bytes) {
        let Some(input) = self.inputs.get_mut(&key) else { return };
        if input.dry > RESTART_FRAMES {
            // Silent for a second: a new stream (a restarted sender) may begin anywhere.
            input.played = None;
        }
        let late = input.played.is_some_and(|p| !newer(seq, p));
        if late || input.queue.iter().any(|(s, _)| *s == seq) {
            self.stats.dropped += 1;
            return;
        }
        let at = input.queue.iter().position(|(s, _)| newer(*s, seq)).unwrap_or(input.queue.len());
        input.queue.insert(at, (seq, payload));
        if input.queue.len() > MAX_QUEUED {
            input.queue.pop_front();
            self.stats.dropped += 1;
        }
        self.stats.packets += 1;
    }

    /// When the next frame is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// Mix every frame due by `now`; a mixer called more than [`MAX_CATCH_UP`] frames late skips
    /// the rest (they would arrive too late to play), so one call makes a bounded number of frames.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.next_tick.filter(|t| now.saturating_duration_since(*t) > FRAME * MAX_CATCH_UP) {
            let behind = now.saturating_duration_since(t).as_micros() / FRAME.as_micros();
            let skip = u32::try_from(behind).unwrap_or(u32::MAX).saturating_sub(MAX_CATCH_UP);
            self.next_tick = Some(t + FRAME * skip);
        }
        while let Some(t) = self.next_tick.filter(|t| *t <= now) {
            self.mix(t);
            self.next_tick = Some(t + FRAME);
        }
    }

    /// The next mixed frame.
    pub fn poll_output(&mut self) -> Option<MixedFrame> {
        self.out.pop_front()
    }

    /// What it counted.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    fn mix(&mut self, at: Instant) {
        self.sum.iter_mut().for_each(|s| *s = 0.0);
        for input in self.inputs.values_mut() {
            let next = input.queue.pop_front();
            let decoded = match &next {
                Some((seq, payload)) => {
                    input.played = Some(*seq);
                    input.dry = 0;
                    match input.decoder.decode_float(payload, &mut self.frame, false) {
                        Ok(n) => n,
                        Err(_) => {
                            self.stats.undecodable += 1;
                            0
                        }
                    }
                }
                None if input.dry < CONCEAL_FRAMES => {
                    input.dry += 1;

                    self.stats.concealed += u64::from(input.played.is_some());
                    if input.played.is_some() {
                        input.decoder.decode_float(&[], &mut self.frame, false).unwrap_or(0)
                    } else {
                        0
                    }
                }
                None => {
                    input.dry = input.dry.saturating_add(1);
                    0
                }
            };
            if decoded == 0 {
                continue;
            }
            let n = decoded.min(FRAME_SAMPLES);
            let rms = (self.frame[..n].iter().map(|x| x * x).sum::<f32>() / n as f32).sqrt();
            let start = input.gain;
            if rms > VOICED_RMS {
                // A slow move towards the target: about 3 dB a second at most.
                let want = (TARGET_RMS / rms).clamp(0.25, MAX_GAIN);
                input.gain = start + (want - start) * 0.02;
            }
            for (i, (s, x)) in self.sum.iter_mut().zip(&self.frame[..n]).enumerate() {
                let g = start + (input.gain - start) * (i as f32 / n as f32);
                *s += x * g;
            }
        }
        // The limiter: down at once to what keeps the peak under the ceiling, back up slowly
        // (about 6 dB a second), ramped across the frame so that it never clicks.
        let peak = self.sum.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let safe = if peak > 0.0 { CEILING / peak } else { f32::INFINITY };
        let start = self.limiter;
        let end = (start * 1.014).min(1.0).min(safe);
        if end < start {
            self.stats.limited += 1;
        }
        for (i, s) in self.sum.iter_mut().enumerate() {
            let g = (start + (end - start) * (i as f32 / FRAME_SAMPLES as f32)).min(safe);
            *s = (*s * g).clamp(-CEILING, CEILING);
        }
        self.limiter = end;
        let len = self.encoder.encode_float(&self.sum, &mut self.packet).unwrap_or(0);
        if len > 0 {
            self.out.push_back(MixedFrame {
                seq: self.seq,
                timestamp: self.timestamp,
                payload: Bytes::copy_from_slice(&self.packet[..len]),
                at,
            });
        }
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        self.stats.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms Opus packets of a `hz` tone at `amplitude`, from a speaker's own encoder.
    fn tone(hz: f32, amplitude: f32, frames: usize) -> Vec<Bytes> {
        let mut enc = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio).expect("encoder");
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_PACKET];
        for f in 0..frames {
            let pcm: Vec<f32> = (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (f * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32;
                    amplitude * (2.0 * std::f32::consts::PI * hz * t).sin()
                })
                .collect();
            let n = enc.encode_float(&pcm, &mut buf).expect("encode");
            out.push(Bytes::copy_from_slice(&buf[..n]));
        }
        out
    }

    /// Decode the mixer's frames as a player would.
    fn decode(frames: &[MixedFrame]) -> Vec<f32> {
        let mut dec = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).expect("decoder");
        let mut pcm = Vec::new();
        let mut buf = vec![0.0f32; FRAME_SAMPLES];
        for f in frames {
            let n = dec.decode_float(&f.payload, &mut buf, false).expect("the mix decodes");
            pcm.extend_from_slice(&buf[..n]);
        }
        pcm
    }

    /// The power of `hz` in `pcm` (Goertzel), relative to the signal's whole power.
    fn share(pcm: &[f32], hz: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / SAMPLE_RATE as f32;
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &x in pcm {
            let s = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        let total: f32 = pcm.iter().map(|x| x * x).sum::<f32>() * pcm.len() as f32 / 2.0;
        power / total.max(f32::MIN_POSITIVE)
    }

    /// Run `inputs` (key, packets) through a mixer, one packet per input per 20 ms, the packet of
    /// each frame pushed 5 ms before its tick; the mixed frames.
    fn run(inputs: &[(u64, Vec<Bytes>)], frames: usize) -> (Vec<MixedFrame>, MixerStats) {
        let base = Instant::now();
        let mut m = Mixer::new(base, 100, 48_000).expect("mixer");
        for (key, _) in inputs {
            m.add_input(*key).expect("input");
        }
        let mut out = Vec::new();
        for f in 0..frames {
            let tick = base + FRAME * f as u32;
            for (key, packets) in inputs {
                if let Some(p) = packets.get(f) {
                    m.push(*key, f as u16, p.clone());
                }
            }
            m.handle_timeout(tick);
            out.extend(std::iter::from_fn(|| m.poll_output()));
        }
        (out, m.stats())
    }

    #[test]
    fn two_speakers_are_heard_at_once_in_one_stream() {
        let (frames, stats) = run(&[(1, tone(440.0, 0.2, 100)), (2, tone(1250.0, 0.2, 100))], 100);
        assert_eq!(frames.len(), 100, "a frame every 20 ms");
        assert!(frames
            .windows(2)
            .all(|w| w[1].seq == w[0].seq.wrapping_add(1) && w[1].timestamp == w[0].timestamp + 960));
        let pcm = decode(&frames[10..]);
        let (a, b, none) = (share(&pcm, 440.0), share(&pcm, 1250.0), share(&pcm, 800.0));
        assert!(a > 0.2 && b > 0.2, "both tones are in the mix: {a:.3} {b:.3}");
        assert!(none < 0.01, "and little else: {none:.4}");
        assert_eq!(stats.dropped + stats.undecodable, 0);
    }

    #[test]
    fn loud_speakers_together_never_clip() {
        let loud = [(1, tone(440.0, 0.95, 100)), (2, tone(440.0, 0.95, 100)), (3, tone(660.0, 0.95, 100))];
        let (frames, stats) = run(&loud, 100);
        let pcm = decode(&frames);
        let peak = pcm.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(peak < 1.0, "the mix stays under full scale: {peak}");
        assert!(stats.limited > 0, "the limiter worked");
        let rms = (pcm[9600..].iter().map(|x| x * x).sum::<f32>() / (pcm.len() - 9600) as f32).sqrt();
        assert!(rms > 0.2, "and the mix is not crushed to silence: {rms}");
    }

    #[test]
    fn a_quiet_speaker_is_brought_up_over_time() {
        let quiet = tone(440.0, 0.02, 250);
        let (frames, _) = run(&[(1, quiet)], 250);
        let pcm = decode(&frames);
        let rms = |s: &[f32]| (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt();
        let early = rms(&pcm[960 * 5..960 * 10]);
        let late = rms(&pcm[960 * 240..]);
        assert!(late > early * 2.5, "the normaliser raised it: {early:.4} -> {late:.4}");
        assert!(late <= TARGET_RMS * 1.2, "not past the target: {late:.4}");
    }

    #[test]
    fn a_lost_packet_is_concealed_and_late_or_doubled_ones_are_dropped() {
        let base = Instant::now();
        let mut m = Mixer::new(base, 0, 0).expect("mixer");
        m.add_input(1).expect("input");
        let packets = tone(440.0, 0.2, 10);
        for (f, p) in packets.iter().enumerate() {
            if f != 4 {
                m.push(1, f as u16, p.clone());
            }
            if f == 6 {
                m.push(1, 6, p.clone());
                m.push(1, 2, packets[2].clone());
            }
            m.handle_timeout(base + FRAME * f as u32);
        }
        let frames: Vec<MixedFrame> = std::iter::from_fn(|| m.poll_output()).collect();
        assert_eq!(frames.len(), 10, "the stream never stops");
        let s = m.stats();
        assert_eq!((s.concealed, s.dropped), (1, 2), "{s:?}");
        m.push(9, 0, packets[0].clone());
        assert_eq!(m.stats().packets, 9, "unknown inputs are ignored");
    }

    #[test]
    fn a_mixer_called_late_makes_a_bounded_number_of_frames() {
        let base = Instant::now();
        let mut m = Mixer::new(base, 0, 0).expect("mixer");
        m.handle_timeout(base + Duration::from_secs(10));
        assert!(std::iter::from_fn(|| m.poll_output()).count() <= MAX_CATCH_UP as usize + 1);
        assert!(m.poll_timeout().is_some_and(|t| t > base + Duration::from_secs(10)));
    }

    #[test]
    fn a_packet_is_mixed_at_the_first_tick_after_it_arrives() {
        let base = Instant::now();
        let mut m = Mixer::new(base, 0, 0).expect("mixer");
        m.add_input(1).expect("input");
        m.handle_timeout(base);
        assert_eq!(m.poll_timeout(), Some(base + FRAME));
        let p = tone(440.0, 0.5, 1).remove(0);
        m.push(1, 0, p);
        m.handle_timeout(base + FRAME);
        let frames: Vec<MixedFrame> = std::iter::from_fn(|| m.poll_output()).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].at, base + FRAME, "mixed at the next tick: at most 20 ms after it arrived");
        assert!(frames[1].payload.len() > frames[0].payload.len(), "the second frame carries the sound");
    }
}
