//! A scenario's results: latency series (one per peer and metric) and
//! single figures (memory, counts), printed as a markdown table and as one
//! JSON line (`KILN_BENCH_JSON {...}`) that `tools/bench` saves next to the
//! log and `kiln-bench chart` draws.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::stats::{summarize, Summary};

/// The prefix of the JSON line on stdout.
pub const JSON_PREFIX: &str = "KILN_BENCH_JSON ";

/// Samples of one measure, for one peer.
#[derive(Debug, Clone)]
pub struct Series {
    /// Scenario (`fanout-10`, `warm`, `restore`...).
    pub scenario: String,
    /// Who was measured (`kiln`, `firecracker`, `kiln clones`...).
    pub peer: String,
    /// What was timed (`spawn -> agent ready`...).
    pub metric: String,
    /// Counted samples (warm-up excluded).
    pub samples: Vec<Duration>,
    /// Attempts that failed.
    pub failures: usize,
    /// Index of the series this one's p50 is compared with.
    pub base: Option<usize>,
}

impl Series {
    /// A series with no samples yet.
    pub fn new(scenario: &str, peer: &str, metric: &str) -> Self {
        Series {
            scenario: scenario.into(),
            peer: peer.into(),
            metric: metric.into(),
            samples: Vec::new(),
            failures: 0,
            base: None,
        }
    }

    /// Compared with series `base` in the ratio column.
    pub fn against(mut self, base: usize) -> Self {
        self.base = Some(base);
        self
    }
}

/// One number that is not a latency sample (memory, counts).
#[derive(Debug, Clone)]
pub struct Figure {
    /// What it is.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit (`MiB`, `VMs`, `x`...).
    pub unit: &'static str,
}

/// Everything one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Scenario name (the subcommand).
    pub scenario: String,
    /// How it ran (n, sizes, memory...).
    pub params: Value,
    /// Latency series.
    pub series: Vec<Series>,
    /// Other numbers.
    pub figures: Vec<Figure>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "n": s.n,
        "min_ms": ms(s.min),
        "p50_ms": ms(s.p50),
        "p95_ms": ms(s.p95),
        "p99_ms": ms(s.p99),
        "max_ms": ms(s.max),
    })
}

impl Results {
    /// Empty results of `scenario`.
    pub fn new(scenario: &str, params: Value) -> Self {
        Results {
            scenario: scenario.into(),
            params,
            ..Results::default()
        }
    }

    /// Adds a series; returns its index (for [`Series::against`]).
    pub fn push(&mut self, series: Series) -> usize {
        self.series.push(series);
        self.series.len() - 1
    }

    /// Adds a figure.
    pub fn figure(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
        });
    }

    /// The p50 ratio of series `i` against its base, if both have samples.
    fn ratio(&self, i: usize) -> Option<f64> {
        let base = summarize(&self.series.get(self.series[i].base?)?.samples)?;
        let mine = summarize(&self.series[i].samples)?;
        Some(mine.p50.as_secs_f64() / base.p50.as_secs_f64().max(f64::MIN_POSITIVE))
    }

    /// The markdown table of the series, then one line per figure.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | peer | metric | n | failed | min ms | p50 ms | p95 ms | p99 ms | max ms | p50 ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (i, s) in self.series.iter().enumerate() {
            let ratio = match (self.ratio(i), s.base) {
                (Some(r), Some(b)) => format!("{r:.3}x of #{}", b + 1),
                _ => "-".into(),
            };
            let cells = summarize(&s.samples).map_or_else(
                || "- | - | - | - | -".to_string(),
                |m| {
                    format!(
                        "{:.1} | {:.1} | {:.1} | {:.1} | {:.1}",
                        ms(m.min),
                        ms(m.p50),
                        ms(m.p95),
                        ms(m.p99),
                        ms(m.max)
                    )
                },
            );
            let _ = writeln!(
                out,
                "| #{} {} | {} | {} | {} | {} | {cells} | {ratio} |",
                i + 1,
                s.scenario,
                s.peer,
                s.metric,
                s.samples.len(),
                s.failures
            );
        }
        for f in &self.figures {
            let _ = writeln!(out, "- {}: {:.2} {}", f.name, f.value, f.unit);
        }
        out
    }

    /// The results as JSON (samples in ms, with their summary).
    pub fn to_json(&self) -> Value {
        let series: Vec<Value> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "scenario": s.scenario,
                    "peer": s.peer,
                    "metric": s.metric,
                    "failures": s.failures,
                    "samples_ms": s.samples.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                    "summary": summarize(&s.samples).map(|m| summary_json(&m)),
                    "p50_ratio_to": s.base,
                    "p50_ratio": self.ratio(i),
                })
            })
            .collect();
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| json!({"name": f.name, "value": f.value, "unit": f.unit}))
            .collect();
        json!({
            "scenario": self.scenario,
            "params": self.params,
            "series": series,
            "figures": figures,
        })
    }

    /// Prints the table and the JSON line.
    pub fn print(&self) {
        print!("{}", self.table());
        self.print_json();
    }

    /// Prints the JSON line only (for scenarios with tables of their own).
    pub fn print_json(&self) {
        println!("{JSON_PREFIX}{}", self.to_json());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_vec(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn table_and_json_carry_ratios_and_failures() {
        let mut r = Results::new("restore", json!({"n": 3}));
        let mut cold = Series::new("restore", "kiln", "cold boot -> ready");
        cold.samples = ms_vec(&[1000, 2000, 3000]);
        let base = r.push(cold);
        let mut warm = Series::new("restore", "kiln", "restore -> ready").against(base);
        warm.samples = ms_vec(&[100, 200, 300]);
        warm.failures = 1;
        r.push(warm);
        r.figure("own RSS per clone", 3.5, "MiB");
        let table = r.table();
        assert!(table.contains("| #2 restore | kiln | restore -> ready | 3 | 1 |"));
        assert!(table.contains("0.100x of #1"), "{table}");
        assert!(table.contains("- own RSS per clone: 3.50 MiB"));
        let j = r.to_json();
        assert_eq!(j["series"][1]["samples_ms"][2], 300.0);
        assert_eq!(j["series"][1]["failures"], 1);
        assert_eq!(j["series"][1]["summary"]["p50_ms"], 200.0);
        assert!((j["series"][1]["p50_ratio"].as_f64().unwrap_or(0.0) - 0.1).abs() < 1e-9);
        assert_eq!(j["series"][0]["p50_ratio"], Value::Null);
    }

    #[test]
    fn empty_series_print_dashes() {
        let mut r = Results::new("x", Value::Null);
        r.push(Series::new("x", "kiln", "m"));
        assert!(r.table().contains("| 0 | 0 | - | - | - | - | - | - |"));
        assert_eq!(r.to_json()["series"][0]["summary"], Value::Null);
    }
}
