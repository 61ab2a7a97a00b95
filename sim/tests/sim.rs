//! The overlay at scale, through the simulation: what must hold whatever the churn.
//! (The workspace builds `overlay` and `sim` optimized even in tests, so that ten
//! thousand boxes take seconds.)

use proptest::prelude::*;
use sim::{run, Params};

fn params(nodes: usize, churn: f64, seed: u64) -> Params {
    Params {
        nodes,
        churn,
        seed,
        two_slot_share: 0.25,
        max_children: 100,
        churn_minutes: 2,
        quiet_minutes: 2,
        join_secs: None,
    }
}

/// Ten thousand boxes joining, crashing and leaving: no loop ever, and once the churn
/// stops every box plays, none forwarding more than its slots. The report is printed
/// (`cargo test -p astral-sim -- --nocapture`).
#[test]
fn ten_thousand_boxes_with_churn_keep_their_invariants() {
    let report = run(&params(10_000, 1.0, 1));
    println!("{report}");
    assert_eq!(report.loops, 0, "a loop in the media tree");
    assert_eq!(
        report.playing, report.alive,
        "every box plays once the churn stops"
    );
    assert!(report.ok, "an invariant failed:\n{report}");
}

/// A flash crowd: a thousand boxes join within one minute, and no box leaves. Every
/// one plays, and the tree stays within the depth bound.
#[test]
fn a_flash_crowd_of_a_thousand_all_play_within_the_depth_bound() {
    let report = run(&Params {
        join_secs: Some(60),
        churn_minutes: 0,
        quiet_minutes: 1,
        ..params(1000, 0.0, 3)
    });
    println!("{report}");
    assert_eq!(report.playing, report.alive, "{report}");
    assert!(
        report.max_depth <= report.depth_bound,
        "depth {} over {}\n{report}",
        report.max_depth,
        report.depth_bound
    );
    assert!(report.ok, "an invariant failed:\n{report}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let a = run(&params(300, 2.0, 7));
    let b = run(&params(300, 2.0, 7));
    assert_eq!(a.text, b.text);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Small networks of any shape (size, churn, share of two-slot boxes, supernode
    /// cap): searches end, no loop forms, no box ends over its slots, and every box
    /// is attached at quiescence while capacity exists.
    #[test]
    fn any_small_network_settles_into_a_loop_free_tree(
        nodes in 5usize..150,
        churn in 0.0f64..8.0,
        two_slot_share in 0.0f64..1.0,
        max_children in 2usize..30,
        seed in any::<u64>(),
    ) {
        let report = run(&Params {
            nodes,
            churn,
            seed,
            two_slot_share,
            max_children,
            churn_minutes: 2,
            quiet_minutes: 2,
            join_secs: None,
        });
        prop_assert!(report.ok, "{}", report.text);
    }
}
