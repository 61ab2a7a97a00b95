//! Chaos on a running testbed: for a while, `kill -9` a share of the boxes that
//! forward, at random moments, and start some of them again; let others leave
//! gracefully; cut a supernode's power halfway. Every fault goes on the testbed's record
//! ([`Testbed::faults`]), on the same clock as a [`crate::Sampler`]'s.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::timeline::{probe, Fault};
use crate::Testbed;

#[derive(Debug, Clone)]
pub struct Chaos {
    pub duration: Duration,
    /// Share of the boxes killed with SIGKILL, each while it forwards.
    pub kill_share: f64,
    /// Share of the killed boxes started again, 5 to 20 s later.
    pub restart_share: f64,
    /// Share of the relays' deaths that are power cuts (the link down first, so the
    /// children hear nothing and must notice the silence) rather than `kill -9`
    /// (whose sockets the kernel closes at once).
    pub power_cut_share: f64,
    /// Share of the boxes that leave gracefully (SIGTERM).
    pub leave_share: f64,
    /// One supernode (not the source) loses power halfway through: its link goes
    /// down, then its process dies, so nobody hears it go.
    pub crash_supernode: bool,
    pub seed: u64,
}

impl Chaos {
    /// The run: 5 minutes, 10 % of the relays killed (half come back), 5 %
    /// leave, one supernode loses power.
    pub fn new(duration: Duration) -> Chaos {
        Chaos {
            duration,
            kill_share: 0.10,
            restart_share: 0.5,
            power_cut_share: 0.0,
            leave_share: 0.05,
            crash_supernode: true,
            seed: 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    KillRelay,
    Leave,
    CrashSupernode,
    Restart(usize),
}

impl Testbed {
    /// Runs `plan` to its end, printing each fault as it happens.
    pub fn chaos(&mut self, plan: &Chaos) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(plan.seed);
        let hosts = self.viewers.len();
        let count = |share: f64| ((hosts as f64 * share).round() as usize).max(1);
        let secs = plan.duration.as_secs_f64();
        // Faults fall in the first 85 %, so that the last of them is seen mended.
        let at = |rng: &mut StdRng| Duration::from_secs_f64(rng.gen_range(0.05..0.85) * secs);
        let mut steps: Vec<(Duration, Step)> = Vec::new();
        let kills = count(plan.kill_share);
        for _ in 0..kills {
            steps.push((at(&mut rng), Step::KillRelay));
        }
        for _ in 0..count(plan.leave_share) {
            steps.push((at(&mut rng), Step::Leave));
        }
        if plan.crash_supernode {
            steps.push((plan.duration / 2, Step::CrashSupernode));
        }
        let restarts = (kills as f64 * plan.restart_share).round() as usize;
        let start = Instant::now();
        let mut restarted = 0;
        steps.sort_by_key(|(t, _)| *t);
        while !steps.is_empty() {
            let (when, step) = steps.remove(0);
            std::thread::sleep(when.saturating_sub(start.elapsed()));
            self.reap();
            let t = start.elapsed().as_secs();
            let victim = match step {
                Step::Restart(i) => {
                    let name = self.viewers[i].name.clone();
                    match self.restart(i) {
                        Ok(()) => eprintln!("chaos {t:>3} s: {name} starts again"),
                        Err(e) => eprintln!("chaos {t:>3} s: {name} did not start again: {e:#}"),
                    }
                    continue;
                }
                Step::KillRelay => self.pick(&mut rng, |b| b.forwards > 0),
                Step::CrashSupernode => self.pick(&mut rng, |b| b.is_supernode),
                Step::Leave => self.pick(&mut rng, |_| true),
            };
            let Some(i) = victim else {
                eprintln!("chaos {t:>3} s: no box to {step:?}");
                continue;
            };
            let name = self.viewers[i].name.clone();
            match step {
                Step::Leave => {
                    self.leave(i)?;
                    eprintln!("chaos {t:>3} s: {name} leaves");
                }
                Step::CrashSupernode => {
                    self.cut_power(i, Fault::SupernodeKilled)?;
                    eprintln!("chaos {t:>3} s: power cut at supernode {name}");
                }
                _ => {
                    // No draw when there are no power cuts: a seed's faults stay.
                    if plan.power_cut_share > 0.0 && rng.gen_bool(plan.power_cut_share) {
                        self.cut_power(i, Fault::Killed)?;
                        eprintln!("chaos {t:>3} s: power cut at {name}, a relay");
                    } else {
                        self.kill(i, Fault::Killed);
                        eprintln!("chaos {t:>3} s: kill -9 {name}, a relay");
                    }
                    if restarted < restarts {
                        restarted += 1;
                        let back = when + Duration::from_secs(rng.gen_range(5..=20));
                        if back < plan.duration {
                            steps.push((back, Step::Restart(i)));
                            steps.sort_by_key(|(t, _)| *t);
                        }
                    }
                }
            }
        }
        std::thread::sleep(plan.duration.saturating_sub(start.elapsed()));
        self.reap();
        Ok(())
    }

    /// A running viewer for which `fits` holds, at random.
    fn pick(
        &self,
        rng: &mut StdRng,
        fits: impl Fn(&crate::timeline::BoxState) -> bool,
    ) -> Option<usize> {
        let mut candidates: Vec<usize> = (0..self.viewers.len())
            .filter(|&i| self.viewers[i].pid().is_some())
            .filter(|&i| probe(&self.viewers[i].reader()).is_some_and(|b| fits(&b)))
            .collect();
        candidates.shuffle(rng);
        candidates.first().copied()
    }
}
