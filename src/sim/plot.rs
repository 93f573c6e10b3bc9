//! Regret plots (PNG and SVG, log-x) and the regret CSV.

use std::io::Write;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::run::{quantile, RegretCurve};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
    #[error("nothing to plot")]
    Empty,
}

/// The bundled font (DejaVu Sans, see fonts/LICENSE-DejaVu.txt), so that PNG text renders
/// without system font libraries.
static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
static REGISTER_FONT: Once = Once::new();

/// Distinct, readable series colours (matplotlib's tab10).
const SERIES_COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

fn register_font() {
    REGISTER_FONT.call_once(|| {
        // The bytes are a valid TrueType font, checked by the plot test.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Writes `regret.csv` with columns policy,t,mean,se.
pub fn write_regret_csv(path: &Path, curves: &[RegretCurve]) -> Result<(), PlotError> {
    let io = |source| PlotError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(w, "policy,t,mean,se").map_err(io)?;
    for c in curves {
        for i in 0..c.t.len() {
            writeln!(w, "{},{},{:.4},{:.4}", c.policy, c.t[i], c.mean[i], c.se[i]).map_err(io)?;
        }
    }
    w.flush().map_err(io)
}

/// Writes `per_run.csv`: one row per run (its index and seed) with each policy's regret at the
/// horizon, a column per policy.
pub fn write_per_run_csv(
    path: &Path,
    curves: &[RegretCurve],
    seeds: &[u64],
) -> Result<(), PlotError> {
    let io = |source| PlotError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let names: Vec<&str> = curves.iter().map(|c| c.policy.as_str()).collect();
    writeln!(w, "run,seed,{}", names.join(",")).map_err(io)?;
    for (r, seed) in seeds.iter().enumerate() {
        write!(w, "{r},{seed}").map_err(io)?;
        for c in curves {
            write!(w, ",{:.1}", c.per_run.get(r).copied().unwrap_or(f64::NAN)).map_err(io)?;
        }
        writeln!(w).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Draws each run's regret at the horizon (log-y) as `stem.png` and `stem.svg`: runs on the x
/// axis ordered by the first policy's regret, a dot per policy and run, and each policy's
/// median (dashed) and 90th percentile (dotted).
pub fn plot_per_run(
    dir: &Path,
    stem: &str,
    title: &str,
    curves: &[RegretCurve],
) -> Result<(), PlotError> {
    save_png_and_svg(dir, stem, &PerRunFigure { title, curves })
}

fn draw_per_run<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[RegretCurve],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let first = curves
        .first()
        .filter(|c| !c.per_run.is_empty())
        .ok_or_else(|| PlotError::Empty.to_string())?;
    let mut order: Vec<usize> = (0..first.per_run.len()).collect();
    order.sort_by(|&a, &b| first.per_run[a].total_cmp(&first.per_run[b]));
    let values = curves.iter().flat_map(|c| c.per_run.iter().copied());
    let smallest = values.clone().filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
    let low = if smallest < f64::MAX {
        smallest * 0.5
    } else {
        1.0
    };
    let high = values.fold(low * 2.0, f64::max) * 1.25;
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let runs = order.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..runs - 0.5, (low..high).log_scale())
        .map_err(|e| err(&e))?;
    let first_name = first.policy.clone();
    chart
        .configure_mesh()
        .x_desc(format!("run, ordered by the regret of {first_name}"))
        .y_desc("regret at the horizon (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, c) in curves.iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()].to_rgba();
        let points: Vec<(f64, f64)> = order
            .iter()
            .enumerate()
            .filter_map(|(x, &r)| Some((x as f64, *c.per_run.get(r)?)))
            .map(|(x, y)| (x, y.max(low)))
            .collect();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| err(&e))?
            .label(c.policy.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        let median = quantile(&c.per_run, 0.5).max(low);
        let p90 = quantile(&c.per_run, 0.9).max(low);
        let line = |y: f64| vec![(-0.5, y), (runs - 0.5, y)];
        chart
            .draw_series(DashedLineSeries::new(
                line(median),
                8,
                5,
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                line(p90),
                2,
                4,
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// A reference line on the plot (the Lai–Robbins bound).
pub struct Reference {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws the curves (mean with a 95% band) and the reference line as `stem.png` and
/// `stem.svg` under `dir`.
pub fn plot_regret(
    dir: &Path,
    stem: &str,
    title: &str,
    curves: &[RegretCurve],
    reference: Option<&Reference>,
) -> Result<(), PlotError> {
    save_png_and_svg(
        dir,
        stem,
        &RegretFigure {
            title,
            curves,
            reference,
        },
    )
}

/// A figure that draws itself on any backend.
trait Figure {
    fn draw_on<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>;
}

struct RegretFigure<'a> {
    title: &'a str,
    curves: &'a [RegretCurve],
    reference: Option<&'a Reference>,
}

impl Figure for RegretFigure<'_> {
    fn draw_on<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw(root, self.title, self.curves, self.reference)
    }
}

struct PerRunFigure<'a> {
    title: &'a str,
    curves: &'a [RegretCurve],
}

impl Figure for PerRunFigure<'_> {
    fn draw_on<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_per_run(root, self.title, self.curves)
    }
}

/// Draws `figure` as `stem.png` and `stem.svg` under `dir`, 1000 × 640.
fn save_png_and_svg(dir: &Path, stem: &str, figure: &impl Figure) -> Result<(), PlotError> {
    register_font();
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let size = (1000, 640);
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |message| PlotError::Draw { path, message }
    };
    figure
        .draw_on(BitMapBackend::new(&png, size).into_drawing_area())
        .map_err(failed(&png))?;
    figure
        .draw_on(SVGBackend::new(&svg, size).into_drawing_area())
        .map_err(failed(&svg))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curves: &[RegretCurve],
    reference: Option<&Reference>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let horizon = curves
        .iter()
        .filter_map(|c| c.t.last())
        .max()
        .copied()
        .ok_or_else(|| PlotError::Empty.to_string())?;
    let top = curves
        .iter()
        .flat_map(|c| c.mean.iter().zip(&c.se).map(|(m, s)| m + 1.96 * s))
        .chain(reference.iter().flat_map(|r| r.points.iter().map(|p| p.1)))
        .fold(1.0f64, f64::max)
        * 1.05;
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..horizon as f64).log_scale(), 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("decisions t (log scale)")
        .y_desc("cumulative expected regret")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, c) in curves.iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()].to_rgba();
        let upper = c.t.iter().zip(&c.mean).zip(&c.se);
        let band: Vec<(f64, f64)> = upper
            .clone()
            .map(|((&t, m), s)| (t as f64, m + 1.96 * s))
            .chain(
                upper
                    .rev()
                    .map(|((&t, m), s)| (t as f64, (m - 1.96 * s).max(0.0))),
            )
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.2).filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(
                c.t.iter().zip(&c.mean).map(|(&t, &m)| (t as f64, m)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(c.policy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if let Some(r) = reference {
        chart
            .draw_series(LineSeries::new(
                r.points.iter().copied(),
                BLACK.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(r.label.clone())
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
