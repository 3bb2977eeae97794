//! Layer choice for one viewer: how its downlink estimate is shared among the video consumers it
//! receives, as a pure function of synthetic inputs ([`allocate`]) plus the time-based hysteresis that
//! the router keeps per viewer ([`Hysteresis`]).
//!
//! The rules, in order:
//! - Audio comes first: the budget handed to [`allocate`] is the video's (a browser's REMB is built
//!   from video alone; what got through after heavy loss is taken less the audio).
//! - Every visible consumer first gets the lowest layer that is flowing, in consumer order, while the
//!   budget lasts; a consumer that cannot have even that is paused (`None`). Pausing is the last
//!   resort: a consumer that receives video keeps its lowest layer while the budget holds
//!   [`KEEP_FACTOR`] of its rate (a little over the estimate costs some loss, a pause costs the
//!   picture), and a paused one resumes only once the whole rate fits.
//! - Then the consumers are raised one layer at a time, round robin, while the budget lasts and no
//!   consumer passes its cap (what its tile needs, [`Demand::max_layer`]).
//! - Hysteresis is in the prices: a layer at or below the one a consumer receives costs
//!   [`STAY_FACTOR`] of its rate (a consumer keeps its layer until the estimate falls clearly below
//!   it), a layer above costs [`UP_FACTOR`] of it (headroom before going up). [`Hysteresis`] then lets
//!   a choice go down at once and up only once it has held for [`UP_HOLD`].

use std::time::{Duration, Instant};

use crate::{LayerId, MAX_LAYERS};

/// Price of a layer at or below the current one, as a share of its rate.
pub const STAY_FACTOR: f64 = 0.85;
/// Price of a layer above the current one, as a share of its rate.
pub const UP_FACTOR: f64 = 1.1;
/// Price of the lowest layer for a consumer that receives video, as a share of its rate: below this
/// it is paused.
pub const KEEP_FACTOR: f64 = 0.3;
/// How long a higher choice must keep fitting before it is taken.
pub const UP_HOLD: Duration = Duration::from_millis(1500);

/// What one video consumer could receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// Measured bitrate of each layer of its producer, bits per second; 0 for a layer that is not
    /// flowing (never seen, or silent lately), which is never chosen.
    pub rates: [u64; MAX_LAYERS],
    /// The highest layer its tile needs; `None` when the tile is hidden (the consumer is paused
    /// whatever the budget).
    pub max_layer: Option<LayerId>,
    /// The layer it receives now (`None`: paused or not started).
    pub current: Option<LayerId>,
}

impl Demand {
    /// The flowing layers it may have, lowest first.
    fn allowed(&self) -> impl Iterator<Item = usize> + '_ {
        let top = self.max_layer.map_or(0, |l| usize::from(l.0) + 1).min(MAX_LAYERS);
        (0..top).filter(|&i| self.rates[i] > 0)
    }

    /// What layer `i` costs this consumer, hysteresis included.
    fn price(&self, i: usize) -> u64 {
        let factor = match self.current {
            Some(c) if i <= usize::from(c.0) => STAY_FACTOR,
            _ => UP_FACTOR,
        };
        (self.rates[i] as f64 * factor) as u64
    }

    /// What keeping (or getting) its lowest layer `i` costs: [`KEEP_FACTOR`] of its rate while it
    /// receives video, the whole rate to resume from a pause.
    fn keep_price(&self, i: usize) -> u64 {
        let factor = if self.current.is_some() { KEEP_FACTOR } else { 1.0 };
        (self.rates[i] as f64 * factor) as u64
    }
}

/// Share `budget` (bits per second left after audio) among `demands`, writing each one's layer (or
/// `None`, paused) into `out`, which must be as long as `demands` (extra entries are left alone).
/// Returns what the choice costs at the layers' measured rates (no hysteresis factors).
pub fn allocate(budget: u64, demands: &[Demand], out: &mut [Option<LayerId>]) -> u64 {
    let mut left = budget;
    for (d, o) in demands.iter().zip(out.iter_mut()) {
        *o = None;
        if let Some(lowest) = d.allowed().next() {
            let price = d.keep_price(lowest);
            if price <= left {
                left -= price;
                *o = Some(layer(lowest));
            }
        }
    }
    loop {
        let mut raised = false;
        for (d, o) in demands.iter().zip(out.iter_mut()) {
            let Some(cur) = *o else { continue };
            let cur = usize::from(cur.0);
            let Some(next) = d.allowed().find(|&i| i > cur) else { continue };
            let lowest = d.allowed().next() == Some(cur);
            let old = if lowest { d.keep_price(cur) } else { d.price(cur) };
            let new = d.price(next);
            let extra = new.saturating_sub(old);
            if extra <= left {
                left -= extra;
                *o = Some(layer(next));
                raised = true;
            }
        }
        if !raised {
            break;
        }
    }
    demands.iter().zip(out.iter()).map(|(d, o)| o.map_or(0, |l| d.rates[usize::from(l.0)])).sum()
}

/// The cost of raising the cheapest raisable consumer of `chosen` by one layer (at [`UP_FACTOR`]), if
/// any may go up: what a probe has to prove the link can carry.
pub fn next_step(demands: &[Demand], chosen: &[Option<LayerId>]) -> Option<u64> {
    demands
        .iter()
        .zip(chosen)
        .filter_map(|(d, c)| {
            let next = match c {
                Some(c) => d.allowed().find(|&i| i > usize::from(c.0))?,
                None => d.allowed().next()?,
            };
            let now = c.map_or(0, |c| d.rates[usize::from(c.0)]);
            Some(((d.rates[next] as f64 * UP_FACTOR) as u64).saturating_sub(now))
        })
        .min()
}

/// A layer id from an index below [`MAX_LAYERS`].
fn layer(i: usize) -> LayerId {
    LayerId(u8::try_from(i).unwrap_or(u8::MAX))
}

/// Whether a new choice is taken now: a move down (or a pause) at once, a move up once every
/// consumer's higher choice has held for [`UP_HOLD`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Hysteresis {
    up_since: Option<Instant>,
}

impl Hysteresis {
    /// Merge `ideal` into `current` at `now`: entries that go down are taken at once; entries that go
    /// up are taken only when some entry has wanted to go up for [`UP_HOLD`] without a break. Returns
    /// true when `current` changed.
    pub fn apply(&mut self, now: Instant, ideal: &[Option<LayerId>], current: &mut [Option<LayerId>]) -> bool {
        let rank = |l: Option<LayerId>| l.map_or(0, |l| u16::from(l.0) + 1);
        let mut changed = false;
        let mut wants_up = false;
        for (i, c) in ideal.iter().zip(current.iter_mut()) {
            if rank(*i) < rank(*c) {
                *c = *i;
                changed = true;
            } else if rank(*i) > rank(*c) {
                wants_up = true;
            }
        }
        if !wants_up {
            self.up_since = None;
            return changed;
        }
        let since = *self.up_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= UP_HOLD {
            self.up_since = None;
            for (i, c) in ideal.iter().zip(current.iter_mut()) {
                if rank(*i) > rank(*c) {
                    *c = *i;
                    changed = true;
                }
            }
        }
        changed
    }

    /// Forget a pending move up (the consumers changed).
    pub fn reset(&mut self) {
        self.up_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: [u64; MAX_LAYERS] = [150_000, 500_000, 1_500_000, 0];

    fn demand(max: Option<u8>, current: Option<u8>) -> Demand {
        Demand { rates: RATES, max_layer: max.map(LayerId), current: current.map(LayerId) }
    }

    fn choose(budget: u64, demands: &[Demand]) -> Vec<Option<u8>> {
        let mut out = vec![None; demands.len()];
        allocate(budget, demands, &mut out);
        out.into_iter().map(|l| l.map(|l| l.0)).collect()
    }

    #[test]
    fn the_highest_layer_that_fits_with_headroom() {
        let d = [demand(Some(2), None)];
        assert_eq!(choose(10_000_000, &d), [Some(2)]);
        assert_eq!(choose(1_700_000, &d), [Some(2)]);
        assert_eq!(choose(1_600_000, &d), [Some(1)], "1.5 Mbit/s needs 10 % headroom to be taken");
        assert_eq!(choose(560_000, &d), [Some(1)]);
        assert_eq!(choose(540_000, &d), [Some(0)]);
        assert_eq!(choose(100_000, &d), [None], "less than the lowest layer pauses");
    }

    #[test]
    fn the_current_layer_is_kept_until_the_estimate_is_clearly_below_it() {
        let on_top = [demand(Some(2), Some(2))];
        assert_eq!(choose(1_400_000, &on_top), [Some(2)], "an estimate just under the rate keeps the layer");
        assert_eq!(choose(1_200_000, &on_top), [Some(1)]);
    }

    #[test]
    fn a_consumer_that_receives_video_is_paused_only_far_below_its_lowest_layer() {
        assert_eq!(choose(100_000, &[demand(Some(2), Some(0))]), [Some(0)], "150 k kept at 100 k");
        assert_eq!(choose(40_000, &[demand(Some(2), Some(0))]), [None], "less than 30 %: paused");
        assert_eq!(choose(140_000, &[demand(Some(2), None)]), [None], "a paused one resumes only once it all fits");
        assert_eq!(choose(150_000, &[demand(Some(2), None)]), [Some(0)]);
    }

    #[test]
    fn a_tile_caps_the_layer_and_a_hidden_tile_pauses() {
        assert_eq!(choose(10_000_000, &[demand(Some(0), None)]), [Some(0)]);
        assert_eq!(choose(10_000_000, &[demand(None, Some(2))]), [None]);
    }

    #[test]
    fn layers_that_do_not_flow_are_never_chosen() {
        let mut d = demand(Some(2), Some(2));
        d.rates[2] = 0;
        assert_eq!(choose(10_000_000, &[d]), [Some(1)], "the top layer stopped: the next one down");
        d.rates = [0; MAX_LAYERS];
        assert_eq!(choose(10_000_000, &[d]), [None]);
    }

    #[test]
    fn two_consumers_share_the_budget_lowest_layers_first() {
        let d = [demand(Some(2), None), demand(Some(2), None)];
        assert_eq!(choose(400_000, &d), [Some(0), Some(0)]);
        assert_eq!(choose(900_000, &d), [Some(1), Some(0)], "raised round robin, the first first");
        assert_eq!(choose(1_200_000, &d), [Some(1), Some(1)]);
        assert_eq!(choose(200_000, &d), [Some(0), None], "the first gets the lowest layer, the second waits");
    }

    #[test]
    fn next_step_is_the_cheapest_raise() {
        let d = [demand(Some(2), Some(0)), demand(Some(1), Some(1))];
        let chosen = [Some(LayerId(0)), Some(LayerId(1))];
        assert_eq!(next_step(&d, &chosen), Some(550_000 - 150_000));
        assert_eq!(next_step(&d[1..], &chosen[1..]), None, "at its cap");
    }

    #[test]
    fn hysteresis_goes_down_at_once_and_up_after_the_hold() {
        let t0 = Instant::now();
        let mut h = Hysteresis::default();
        let mut cur = [Some(LayerId(2))];
        assert!(h.apply(t0, &[Some(LayerId(0))], &mut cur));
        assert_eq!(cur, [Some(LayerId(0))], "down at once");
        assert!(!h.apply(t0 + Duration::from_millis(100), &[Some(LayerId(2))], &mut cur));
        assert!(!h.apply(t0 + Duration::from_millis(1000), &[Some(LayerId(2))], &mut cur));
        assert_eq!(cur, [Some(LayerId(0))], "not yet");
        assert!(h.apply(t0 + Duration::from_millis(1700), &[Some(LayerId(1))], &mut cur));
        assert_eq!(cur, [Some(LayerId(1))], "up to what fits now, once the wish held");
    }

    #[test]
    fn a_break_in_the_wish_restarts_the_hold() {
        let t0 = Instant::now();
        let mut h = Hysteresis::default();
        let mut cur = [None];
        h.apply(t0, &[Some(LayerId(0))], &mut cur);
        h.apply(t0 + Duration::from_millis(1000), &[None], &mut cur);
        assert!(!h.apply(t0 + Duration::from_millis(1600), &[Some(LayerId(0))], &mut cur));
        assert_eq!(cur, [None], "the hold started again at 1.6 s");
        assert!(h.apply(t0 + Duration::from_millis(3200), &[Some(LayerId(0))], &mut cur));
        assert_eq!(cur, [Some(LayerId(0))], "resumed");
    }
}
