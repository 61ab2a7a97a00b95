//! The overlay at scale, through the simulation: what must hold whatever the churn.

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
    }
}

#[test]
fn a_thousand_boxes_with_churn_keep_a_loop_free_tree_and_all_play_again() {
    let report = run(&params(1000, 2.0, 1));
    println!("{report}");
    assert_eq!(report.loops, 0, "a loop in the media tree");
    assert_eq!(
        report.playing, report.alive,
        "every box plays once the churn stops"
    );
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let a = run(&params(300, 2.0, 7));
    let b = run(&params(300, 2.0, 7));
    assert_eq!(a.text, b.text);
}
