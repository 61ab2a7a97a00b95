//! What a run measured, and the invariants it checked.

use std::fmt;
use std::time::Duration;

use overlay::Event;

use crate::{Params, Sim};

#[derive(Default)]
pub(crate) struct Stats {
    pub messages: u64,
    pub crashes: u64,
    pub leaves: u64,
    /// Boxes starved by crashes so far.
    pub affected: u64,
    pub affected_per_crash: Vec<u64>,
    joins: Vec<Duration>,
    recoveries: Vec<Duration>,
    other_gaps: Vec<Duration>,
    promotions: u64,
    after_joins: Option<Depths>,
    /// The sample while boxes joined where the tree was deepest against the bound
    /// for the boxes alive then: (depth, bound).
    deepest_joining: Option<(usize, usize)>,
    quiet_from: Option<(u64, usize)>,
    loops_seen: u64,
    over_slots_seen: u64,
    samples: u64,
    end: Option<End>,
}

#[derive(Clone, Copy, Default)]
struct Depths {
    max: usize,
    p50: usize,
    attached: usize,
    alive: usize,
}

struct End {
    depths: Depths,
    messages_per_node_minute: f64,
    supernodes: usize,
    over_slots: usize,
    loops: usize,
    unattached_with_capacity: usize,
}

/// The figures of one run.
pub struct Report {
    pub params: Params,
    pub text: String,
    /// Whether every invariant held.
    pub ok: bool,
    pub max_depth: usize,
    pub depth_bound: usize,
    /// Loops among media links, over all samples and at the end.
    pub loops: u64,
    /// Boxes alive at the end, and how many of them play the stream.
    pub alive: usize,
    pub playing: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Stats {
    pub(crate) fn joined(&mut self, d: Duration) {
        self.joins.push(d);
    }

    pub(crate) fn recovered(&mut self, d: Duration, after_crash: bool) {
        if after_crash {
            self.recoveries.push(d);
        } else {
            self.other_gaps.push(d);
        }
    }

    pub(crate) fn event(&mut self, event: &Event) {
        if let Event::Promoted = event {
            self.promotions += 1;
        }
    }

    /// Every 10 s: invariants, and the snapshots the report needs.
    pub(crate) fn sample(&mut self, sim: &Sim) {
        self.samples += 1;
        let (loops, over) = invariants(sim);
        self.loops_seen += loops as u64;
        self.over_slots_seen += over as u64;
        if self.after_joins.is_none() && sim.now >= sim.params.churn_start() {
            self.after_joins = Some(depths(sim));
        }
        if self.after_joins.is_none() {
            let now = depths(sim);
            let sample = (now.max, depth_bound(now.alive));
            let excess = |(d, b): (usize, usize)| d as i64 - b as i64;
            if self
                .deepest_joining
                .is_none_or(|worst| excess(sample) > excess(worst))
            {
                self.deepest_joining = Some(sample);
            }
        }
        if self.quiet_from.is_none() && sim.now >= sim.params.churn_end() {
            self.quiet_from = Some((self.messages, alive(sim)));
        }
    }

    pub(crate) fn finish(&mut self, sim: &Sim) {
        let (loops, over_slots) = invariants(sim);
        let minutes = sim.params.quiet_minutes.max(1) as f64;
        let (from, alive_then) = self.quiet_from.unwrap_or((self.messages, alive(sim)));
        let per_node = (alive_then + alive(sim)) as f64 / 2.0;
        // A slot at the deepest a path may go is no use to anyone.
        let free: usize = sim
            .boxes
            .iter()
            .filter(|b| b.alive && b.has_media && media_depth(sim, b) < overlay::MAX_PATH)
            .map(|b| slots(b).saturating_sub(b.media_children.len()))
            .sum();
        let unattached = sim
            .boxes
            .iter()
            .skip(1)
            .filter(|b| b.alive && !b.has_media)
            .count();
        if std::env::var_os("ASTRAL_SIM_TRACE").is_some() {
            for (i, b) in sim.boxes.iter().enumerate() {
                if b.alive && b.media_children.len() > slots(b) {
                    eprintln!(
                        "over n{i}: slots {} media children {:?} held {:?}",
                        slots(b),
                        b.media_children,
                        b.engine.held()
                    );
                }
            }
            for (i, b) in sim
                .boxes
                .iter()
                .enumerate()
                .filter(|(_, b)| b.alive && !b.has_media)
            {
                eprintln!(
                    "unattached n{i}: link {:?} supernode {:?} held {:?}",
                    b.link,
                    b.engine.supernode_id(),
                    b.engine.held()
                );
            }
        }
        self.end = Some(End {
            depths: depths(sim),
            messages_per_node_minute: (self.messages - from) as f64 / per_node.max(1.0) / minutes,
            supernodes: sim
                .boxes
                .iter()
                .filter(|b| b.alive && b.engine.is_supernode())
                .count(),
            over_slots,
            loops,
            unattached_with_capacity: if free > 0 { unattached } else { 0 },
        });
    }

    pub(crate) fn report(&self, sim: &Sim) -> Report {
        let p = &sim.params;
        let end = self.end.as_ref().expect("finished");
        let n = alive(sim);
        let bound = depth_bound(n);
        let joins = quantiles(&self.joins);
        let rec = quantiles(&self.recoveries);
        let gaps = quantiles(&self.other_gaps);
        let aff = {
            let mut v = self.affected_per_crash.clone();
            v.sort_unstable();
            (
                v.iter().sum::<u64>() as f64 / v.len().max(1) as f64,
                v.last().copied().unwrap_or(0),
            )
        };
        let after = self.after_joins.unwrap_or_default();
        let ok = self.loops_seen == 0
            && end.loops == 0
            && end.over_slots == 0
            && end.unattached_with_capacity == 0;
        let mut t = String::new();
        use std::fmt::Write;
        let _ = writeln!(
            t,
            "overlay simulation: {} boxes + 1 source, {:.0} % two-slot, churn {} %/min for {} min, seed {}",
            p.nodes,
            p.two_slot_share * 100.0,
            p.churn,
            p.churn_minutes,
            p.seed
        );
        let _ = writeln!(
            t,
            "crashes {}, graceful leaves {}, supernodes at the end {} (promotions {})",
            self.crashes, self.leaves, end.supernodes, self.promotions
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "| figure | value | target |");
        let _ = writeln!(t, "|---|---:|---|");
        let _ = writeln!(
            t,
            "| depth after joins, max / p50 | {} / {} | ≤ ⌈log2(N+1)⌉+1 = {} |",
            after.max, after.p50, bound
        );
        if let Some((depth, then)) = self.deepest_joining {
            let _ = writeln!(
                t,
                "| depth while joining, deepest against its bound | {depth} | ≤ {then} (the boxes then) |"
            );
        }
        let _ = writeln!(
            t,
            "| depth at the end, max / p50 | {} / {} | ≤ {} |",
            end.depths.max, end.depths.p50, bound
        );
        let _ = writeln!(
            t,
            "| join time p50 / p95 / max (ms) | {} / {} / {} | |",
            joins.0, joins.1, joins.2
        );
        let _ = writeln!(
            t,
            "| recovery after a crash p50 / p95 / max (ms) | {} / {} / {} | p95 ≤ 1000 |",
            rec.0, rec.1, rec.2
        );
        let _ = writeln!(
            t,
            "| gap on moves and leaves p50 / p95 / max (ms) | {} / {} / {} | |",
            gaps.0, gaps.1, gaps.2
        );
        let _ = writeln!(
            t,
            "| boxes starved per crash, mean / max | {:.1} / {} | |",
            aff.0, aff.1
        );
        let _ = writeln!(
            t,
            "| control messages per box per minute (steady) | {:.2} | ≤ 10 |",
            end.messages_per_node_minute
        );
        let _ = writeln!(
            t,
            "| boxes playing at the end | {} of {} | all, while slots are free |",
            end.depths.attached, end.depths.alive
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "invariants ({} samples): loops {}, boxes over their slots {} (at the end: {} and {}); unattached with free slots at the end: {} — {}",
            self.samples,
            self.loops_seen,
            self.over_slots_seen,
            end.loops,
            end.over_slots,
            end.unattached_with_capacity,
            if ok { "ok" } else { "VIOLATED" }
        );
        Report {
            params: p.clone(),
            text: t,
            ok,
            max_depth: end.depths.max,
            depth_bound: bound,
            loops: self.loops_seen + end.loops as u64,
            alive: end.depths.alive,
            playing: end.depths.attached,
        }
    }
}

fn alive(sim: &Sim) -> usize {
    sim.boxes.iter().skip(1).filter(|b| b.alive).count()
}

fn slots(b: &crate::Box_) -> usize {
    let card = b.engine.card();
    b.engine
        .config()
        .slots(card.max_forwards, card.upload_kbps, crate::KBPS) as usize
}

/// Loops among media links, and boxes forwarding to more children than their slots.
fn invariants(sim: &Sim) -> (usize, usize) {
    let n = sim.boxes.len();
    let mut loops = 0;
    for (i, b) in sim.boxes.iter().enumerate() {
        if !b.alive {
            continue;
        }
        let (mut at, mut steps) = (i, 0);
        while let Some((p, _)) = sim.boxes[at].link {
            at = p;
            steps += 1;
            if steps > n {
                loops += 1;
                break;
            }
        }
    }
    let over = sim
        .boxes
        .iter()
        .filter(|b| b.alive && b.media_children.len() > slots(b))
        .count();
    (loops, over)
}

/// Hops from the source along media links (bounded, should there be a loop).
fn media_depth(sim: &Sim, b: &crate::Box_) -> usize {
    let (mut at, mut d) = (b, 0);
    while let Some((p, _)) = at.link {
        at = &sim.boxes[p];
        d += 1;
        if d > sim.boxes.len() {
            break;
        }
    }
    d
}

/// The tree's depth bound for `n` boxes: ⌈log2(n+1)⌉+1.
fn depth_bound(n: usize) -> usize {
    (((n + 1) as f64).log2().ceil() as usize) + 1
}

fn depths(sim: &Sim) -> Depths {
    let mut all: Vec<usize> = Vec::new();
    for b in sim.boxes.iter().skip(1).filter(|b| b.alive && b.has_media) {
        all.push(media_depth(sim, b));
    }
    all.sort_unstable();
    Depths {
        max: all.last().copied().unwrap_or(0),
        p50: all.get(all.len() / 2).copied().unwrap_or(0),
        attached: all.len(),
        alive: alive(sim),
    }
}

/// p50, p95 and max in milliseconds.
fn quantiles(v: &[Duration]) -> (u64, u64, u64) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    let mut ms: Vec<u64> = v.iter().map(|d| d.as_millis() as u64).collect();
    ms.sort_unstable();
    let q = |f: f64| ms[((ms.len() - 1) as f64 * f).round() as usize];
    (q(0.5), q(0.95), *ms.last().expect("non-empty"))
}
