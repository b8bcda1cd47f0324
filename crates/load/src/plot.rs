//! The picture of a run, as SVG (plotters' SVG backend: no fonts, no system libraries, no
//! browser): three panels over the same time axis.
//!
//! 1. offered vs served requests per second, per 100 ms bucket;
//! 2. reserve p50 and p99 latency per bucket (by intended send time, log scale);
//! 3. the available stock of the run's deals, sampled every 100 ms.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::limits::exact_f64;
use crate::recorder::{us_to_ms, SeriesPoint};
use crate::report::RunReport;

const WIDTH_PX: u32 = 1_100;
const HEIGHT_PX: u32 = 960;
const FONT: &str = "sans-serif";
const OFFERED: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const SERVED: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const P50: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const P99: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const STOCK: RGBColor = RGBColor(0x94, 0x67, 0xbd);

fn err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the plot: {e}")
}

/// Writes the three-panel SVG of `report` to `path`.
pub fn write_svg(report: &RunReport, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    draw(report, &root)?;
    root.present().map_err(|e| format!("cannot write --plot {}: {e}", path.display()))
}

fn draw<DB: DrawingBackend>(r: &RunReport, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let mode = if r.mode == "closed_loop" {
        "CLOSED loop: latency from actual send (coordinated omission not corrected)"
    } else {
        "open loop: latency from intended send time"
    };
    let title = format!("livestock-load: {}", r.profile);
    let (header, body) = root.split_vertically(62);
    header.draw(&Text::new(title, (16, 8), (FONT, 24).into_font())).map_err(err)?;
    let subtitle = format!(
        "{mode}; {} deal(s), {} units, {} viewers; verification {}",
        r.deals,
        r.stock_units,
        r.viewers,
        if r.verification.passed { "PASS" } else { "FAIL" }
    );
    header
        .draw(&Text::new(subtitle, (16, 36), (FONT, 17).into_font().color(&RGBColor(80, 80, 80))))
        .map_err(err)?;
    let panels = body.split_evenly((3, 1));

    let series = &r.measured.series;
    let stock = &r.measured.stock;
    let t_max_s = series
        .last()
        .map(|p| p.t_ms / 1e3 + 0.1)
        .into_iter()
        .chain(stock.last().map(|p| p.t_ms / 1e3))
        .fold(0.1_f64, f64::max);

    // 1. Offered vs served.
    let rate_max =
        series.iter().flat_map(|p| [p.offered_per_s, p.served_per_s]).fold(1.0_f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("all requests (reserve, confirm, release) per second, 100 ms buckets", (FONT, 19))
        .margin(10)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max_s, 0.0..rate_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("req/s")
        .label_style((FONT, 14))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    // Offered is drawn wide and under served, so it shows where the two lines coincide.
    for (name, color, width, field) in [
        ("offered", OFFERED, 5, (|p: &SeriesPoint| p.offered_per_s) as fn(&SeriesPoint) -> f64),
        ("served", SERVED, 2, |p: &SeriesPoint| p.served_per_s),
    ] {
        let points: Vec<(f64, f64)> = series.iter().map(|p| (p.t_ms / 1e3, field(p))).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    legend(&mut chart)?;

    // 2. Reserve latency, log scale.
    let ms = |us: u64| us_to_ms(us.max(1));
    let lat_max = series.iter().filter_map(|p| p.reserve_p99_us).map(ms).fold(1.0_f64, f64::max);
    let lat_min = series.iter().filter_map(|p| p.reserve_p50_us).map(ms).fold(lat_max, f64::min);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            "reserve latency by intended send time, per 100 ms bucket (ms, log scale)",
            (FONT, 19),
        )
        .margin(10)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max_s, (lat_min * 0.8..lat_max * 1.25).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .label_style((FONT, 14))
        .y_label_formatter(&|v| match *v {
            v if v >= 10.0 => format!("{v:.0}"),
            v if v >= 1.0 => format!("{v:.1}"),
            v => format!("{v:.2}"),
        })
        .draw()
        .map_err(err)?;
    for (name, color, pick) in [
        ("p50", P50, (|p: &SeriesPoint| p.reserve_p50_us) as fn(&SeriesPoint) -> Option<u64>),
        ("p99", P99, |p: &SeriesPoint| p.reserve_p99_us),
    ] {
        let points: Vec<(f64, f64)> =
            series.iter().filter_map(|p| Some((p.t_ms / 1e3, ms(pick(p)?)))).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart)?;

    // 3. The stock burning down.
    let units_max = exact_f64(stock.iter().map(|p| p.available).max().unwrap_or(0).max(1)) * 1.1;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("available stock, polled every 100 ms", (FONT, 19))
        .margin(10)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max_s, 0.0..units_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("units")
        .label_style((FONT, 14))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    let points: Vec<(f64, f64)> =
        stock.iter().map(|p| (p.t_ms / 1e3, exact_f64(p.available))).collect();
    chart
        .draw_series(LineSeries::new(points, STOCK.stroke_width(2)))
        .map_err(err)?
        .label("available")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], STOCK.stroke_width(2)));
    if let Some(t_ms) = r.sell_out.hot_deal_ms {
        let x = t_ms / 1e3;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, units_max)],
                BLACK.mix(0.5).stroke_width(1),
            )))
            .map_err(err)?
            .label(format!("hot deal sold out ({t_ms:.0} ms)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    }
    legend(&mut chart)?;
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}
