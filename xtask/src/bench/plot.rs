//! PNG strip plots of latency distributions (plotters, bitmap backend, embedded DejaVu font so
//! nothing depends on the fonts installed on the machine).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::stats::summarize;

/// One panel: a title and named rows of samples (milliseconds).
pub struct Panel {
    pub title: String,
    pub rows: Vec<(String, Vec<f64>)>,
}

fn register_fonts() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "invalid embedded font".to_string())?;
        plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold())
            .map_err(|_| "invalid embedded font".to_string())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

const ROW_PX: u32 = 34;
const PANEL_EXTRA_PX: u32 = 90;
const WIDTH: u32 = 1280;
const FLOOR_MS: f64 = 0.05;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draws every panel, stacked, into one PNG. X axis: milliseconds, log scale, shared by all
/// panels; each sample is a dot, the p50 a black bar, the p99 a red bar.
pub fn render(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    register_fonts()?;
    let panels: Vec<&Panel> = panels.iter().filter(|p| !p.rows.is_empty()).collect();
    let all: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.rows.iter().flat_map(|(_, v)| v.iter().copied()))
        .filter(|x| x.is_finite())
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(FLOOR_MS);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (x_lo, x_hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let heights: Vec<u32> = panels
        .iter()
        .map(|p| PANEL_EXTRA_PX + ROW_PX * p.rows.len() as u32)
        .collect();
    let total_h = 50 + heights.iter().sum::<u32>().max(100);
    let root = BitMapBackend::new(path, (WIDTH, total_h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (header, mut rest) = root.split_vertically(50);
    header
        .draw_text(
            title,
            &("sans-serif", 22, FontStyle::Bold).into_text_style(&header),
            (12, 14),
        )
        .map_err(|e| anyhow!("{e}"))?;
    for (panel, h) in panels.iter().zip(heights) {
        let (area, below) = rest.split_vertically(h);
        rest = below;
        draw_panel(&area, panel, x_lo, x_hi)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    x_lo: f64,
    x_hi: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = panel.rows.len();
    let names: Vec<String> = panel.rows.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(230)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), -0.5f64..(n as f64 - 0.5))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .y_labels(n.max(1))
        .y_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[names.len() - 1 - i as usize].clone()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (_, samples)) in panel.rows.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(j, x)| {
                // deterministic jitter so coincident samples stay visible
                let jitter = ((j * 7919) % 21) as f64 / 21.0 * 0.5 - 0.25;
                (x.max(x_lo), y + jitter)
            })
            .collect();
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new(*p, 3, color.mix(0.55).filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(s) = summarize(samples) {
            for (v, c) in [(s.p50, BLACK), (s.p99, RED)] {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(v.max(x_lo), y - 0.4), (v.max(x_lo), y + 0.4)],
                        c.stroke_width(3),
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_png_with_text() {
        let dir = std::env::temp_dir().join(format!("hapod-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let panels = vec![
            Panel {
                title: "force delete".into(),
                rows: vec![
                    ("event".into(), vec![3.0, 4.0, 5.5]),
                    ("labeled".into(), vec![12.0, 15.0, 40.0]),
                ],
            },
            Panel {
                title: "empty".into(),
                rows: vec![],
            },
        ];
        render(&path, "test plot", &panels).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).ok();
    }
}
