//! The testbed's figures as SVG: continuity over time with the faults marked, boxes
//! per depth, and how long boxes went without video when a parent failed.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use testbed::timeline::{Fault, Summary, Timeline};

const SIZE: (u32, u32) = (800, 360);

fn fail(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Writes `continuity.svg`, `depths.svg` and `stalls.svg` into `dir`.
pub fn write(dir: &Path, timeline: &Timeline, summary: &Summary) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    continuity(&dir.join("continuity.svg"), timeline)?;
    depths(&dir.join("depths.svg"), summary)?;
    stalls(&dir.join("stalls.svg"), summary)?;
    Ok(())
}

fn continuity(path: &Path, timeline: &Timeline) -> anyhow::Result<()> {
    let end = timeline.samples.last().map_or(1.0, |s| s.at.as_secs_f64());
    let series: Vec<[Vec<(f64, f64)>; 1]> = [500, 2000]
        .iter()
        .map(|&b| {
            [timeline
                .continuity_over_time(b)
                .into_iter()
                .map(|(t, c)| (t.as_secs_f64(), c))
                .collect()]
        })
        .collect();
    let low = series
        .iter()
        .flat_map(|[s]| s.iter().map(|p| p.1))
        .fold(0.9_f64, f64::min);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Continuity over time, all boxes", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..end, (low - 0.01).max(0.0)..1.001)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("frames on time")
        .draw()
        .map_err(fail)?;
    for e in &timeline.events {
        let color = match e.fault {
            Fault::Killed | Fault::SupernodeKilled => RED.mix(0.5),
            Fault::Left => BLUE.mix(0.4),
            Fault::Restarted => GREEN.mix(0.5),
        };
        let x = e.at.as_secs_f64();
        chart
            .draw_series(LineSeries::new([(x, low - 0.01), (x, 1.001)], color))
            .map_err(fail)?;
    }
    for (i, [points]) in series.into_iter().enumerate() {
        let (color, label) = if i == 0 {
            (BLACK, "0.5 s buffer")
        } else {
            (BLUE, "2 s buffer")
        };
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(fail)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

fn depths(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let deepest = summary.depths.len() as u32;
    let most = summary.depths.iter().copied().max().unwrap_or(1) as u32;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Boxes per depth", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d((1..deepest + 1).into_segmented(), 0..most + 1)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("depth (hops from the source)")
        .y_desc("boxes")
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.mix(0.6).filled())
                .margin(8)
                .data(
                    summary
                        .depths
                        .iter()
                        .enumerate()
                        .map(|(d, &n)| (d as u32 + 1, n as u32)),
                ),
        )
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

/// Stall lengths in 250 ms bins.
fn stalls(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    const BIN_MS: u32 = 250;
    let bins: Vec<u32> = summary
        .stalls
        .iter()
        .map(|s| s.length.as_millis() as u32 / BIN_MS)
        .collect();
    let last = bins.iter().copied().max().unwrap_or(0).max(8) + 1;
    let most = (0..=last)
        .map(|b| bins.iter().filter(|&&x| x == b).count() as u32)
        .max()
        .unwrap_or(1);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Recovery: how long a box went without video",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d((0..last).into_segmented(), 0..most + 1)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(format!("stall, in {BIN_MS} ms steps"))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(b) | SegmentValue::Exact(b) => {
                format!("{:.2}", f64::from(*b * BIN_MS) / 1000.0)
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc("stalls")
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(RED.mix(0.6).filled())
                .margin(4)
                .data(bins.iter().map(|&b| (b, 1))),
        )
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}
