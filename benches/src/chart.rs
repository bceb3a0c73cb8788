//! `kiln-bench chart`: an SVG of box plots, one row per series (scenario,
//! peer, metric) of one or more results files (JSON lines, as
//! `tools/bench` saves them), on a shared logarithmic time axis. Box: p25
//! to p75; line: p50; whiskers: min to max; tick: p95.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::results::JSON_PREFIX;

/// `kiln-bench chart` arguments.
#[derive(clap::Args)]
pub struct ChartArgs {
    /// Results files (JSON lines; `KILN_BENCH_JSON ` prefixes allowed).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where the SVG goes.
    #[arg(long, short)]
    output: PathBuf,
}

const LABEL_W: f64 = 420.0;
const PLOT_W: f64 = 520.0;
const ROW_H: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;

/// One row: its label and sorted samples, ms.
struct Row {
    label: String,
    samples: Vec<f64>,
}

/// Every series with samples in the JSON lines of `text`.
fn rows(text: &str) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.strip_prefix(JSON_PREFIX.trim_end()).unwrap_or(line);
        let v: Value = serde_json::from_str(line.trim()).context("a results line")?;
        for s in v["series"].as_array().into_iter().flatten() {
            let mut samples: Vec<f64> = s["samples_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .filter(|x| *x > 0.0)
                .collect();
            if samples.is_empty() {
                continue;
            }
            samples.sort_by(f64::total_cmp);
            let text = |k: &str| s[k].as_str().unwrap_or("?").to_string();
            out.push(Row {
                label: format!(
                    "{} | {} | {}",
                    text("scenario"),
                    text("peer"),
                    text("metric")
                ),
                samples,
            });
        }
    }
    Ok(out)
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document for `rows`.
fn svg(rows: &[Row]) -> String {
    let lo = rows
        .iter()
        .map(|r| r.samples[0])
        .fold(f64::INFINITY, f64::min);
    let hi = rows
        .iter()
        .filter_map(|r| r.samples.last().copied())
        .fold(0.0, f64::max);
    let (d0, d1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |ms: f64| LABEL_W + (ms.log10() - d0) / (d1 - d0) * PLOT_W;
    let height = TOP + BOTTOM + ROW_H * rows.len() as f64;
    let width = LABEL_W + PLOT_W + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="13">kiln-bench: box p25-p75, line p50, whiskers min-max, tick p95 (ms, log scale)</text>"#
    );
    let mut decade = d0;
    while decade <= d1 {
        let ms = 10f64.powf(decade);
        let gx = x(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{ms}</text>"##,
            height - BOTTOM,
            height - BOTTOM + 14.0
        );
        decade += 1.0;
    }
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64 + ROW_H / 2.0;
        let s = &r.samples;
        let (min, q1, p50, q3, p95, max) = (
            s[0],
            pct(s, 25.0),
            pct(s, 50.0),
            pct(s, 75.0),
            pct(s, 95.0),
            s[s.len() - 1],
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{} (n={})</text>"##,
            LABEL_W - 8.0,
            y + 4.0,
            escape(&r.label),
            s.len()
        );
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#555"/><rect x="{:.1}" y="{:.1}" width="{:.1}" height="12" fill="#9cc3e6" stroke="#2a5d8a"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#c0392b" stroke-width="2"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555"/>"##,
            x(min),
            x(max),
            x(q1),
            y - 6.0,
            (x(q3) - x(q1)).max(1.0),
            x(p50),
            y - 7.0,
            x(p50),
            y + 7.0,
            x(p95),
            y - 4.0,
            x(p95),
            y + 4.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Draws the chart.
pub fn run(args: ChartArgs) -> Result<()> {
    let mut all = Vec::new();
    for input in &args.inputs {
        let text = std::fs::read_to_string(input)
            .with_context(|| format!("reading {}", input.display()))?;
        all.extend(rows(&text).with_context(|| format!("in {}", input.display()))?);
    }
    if all.is_empty() {
        bail!("no series with samples in the inputs");
    }
    std::fs::write(&args.output, svg(&all))
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"KILN_BENCH_JSON {"scenario":"restore","series":[{"scenario":"restore","peer":"kiln","metric":"restore -> ready","samples_ms":[300.0,100.0,200.0]},{"scenario":"restore","peer":"fc","metric":"a<b","samples_ms":[]}]}"#;

    #[test]
    fn rows_skip_empty_series_and_sort_samples() {
        let rows = rows(&format!("{LINE}\n\n")).expect("parses");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].label, "restore | kiln | restore -> ready");
        assert_eq!(rows[0].samples, vec![100.0, 200.0, 300.0]);
    }

    #[test]
    fn svg_has_one_box_per_row_and_decade_labels() {
        let mut r = rows(LINE).expect("parses");
        r.push(Row {
            label: "x <y>".into(),
            samples: vec![5.0],
        });
        let doc = svg(&r);
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("fill=\"#9cc3e6\"").count(), 2);
        assert!(doc.contains("x &lt;y&gt; (n=1)"));
        assert!(doc.contains(">1000</text>") && doc.contains(">1</text>"));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(rows("{not json").is_err());
    }
}
