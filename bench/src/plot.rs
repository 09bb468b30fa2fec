//! `--plot out.svg`: throughput and latency per second of the run, as a hand-written SVG
//! (two stacked panels sharing the time axis; no plotting dependency).

use std::fmt::Write as _;

use crate::stats::{Percentiles, Summary};

const W: f64 = 900.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// The SVG document for `summary`'s per-second series.
pub fn svg(summary: &Summary) -> String {
    let series = &summary.stats.series;
    let secs = series.len().max(1) as f64;
    let ok: Vec<f64> = series.iter().map(|s| s.ok as f64).collect();
    let errors: Vec<f64> = series.iter().map(|s| s.errors as f64).collect();
    let p50: Vec<f64> = series
        .iter()
        .map(|s| Percentiles::of(&s.latency).p50 as f64 / 1000.0)
        .collect();
    let p99: Vec<f64> = series
        .iter()
        .map(|s| Percentiles::of(&s.latency).p99 as f64 / 1000.0)
        .collect();
    let height = TOP + 2.0 * PANEL_H + GAP + 50.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(&format!(
            "{} — {} — {:.0} ok/s, {} errors",
            summary.scenario,
            summary.target,
            summary.throughput(),
            summary.stats.error_count()
        ))
    );
    panel(
        &mut s,
        TOP,
        "requests per second",
        secs,
        &[("ok/s", "#1f77b4", &ok), ("errors/s", "#d62728", &errors)],
    );
    panel(
        &mut s,
        TOP + PANEL_H + GAP,
        "latency (ms)",
        secs,
        &[("p50", "#2ca02c", &p50), ("p99", "#ff7f0e", &p99)],
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text></svg>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        height - 10.0
    );
    s.push('\n');
    s
}

fn panel(s: &mut String, top: f64, title: &str, secs: f64, lines: &[(&str, &str, &[f64])]) {
    let plot_w = W - LEFT - RIGHT;
    let max = lines
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0.0_f64, f64::max);
    let ymax = nice_ceiling(max);
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/><text x="{LEFT}" y="{}" font-weight="bold">{}</text>"##,
        top - 6.0,
        escape(title)
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = top + PANEL_H - PANEL_H * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let ticks = 10.0_f64.min(secs);
    for i in 0..=(ticks as u32) {
        let t = secs * f64::from(i) / ticks;
        let x = LEFT + plot_w * t / secs;
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            top + PANEL_H + 16.0
        );
    }
    for (n, (name, color, values)) in lines.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                // Each second's value sits in the middle of its second.
                let x = LEFT + plot_w * (i as f64 + 0.5) / secs;
                let y = top + PANEL_H - PANEL_H * (v / ymax);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let lx = LEFT + plot_w - 150.0 + 75.0 * n as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            top + 12.0,
            lx + 16.0,
            top + 17.0,
            escape(name)
        );
    }
}

/// 1, 2 or 5 × a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use std::time::Duration;

    #[test]
    fn svg_has_both_panels_and_one_point_per_second() {
        let mut stats = Stats::default();
        for sec in 0..3u64 {
            for _ in 0..10 * (sec + 1) {
                stats.record(
                    Duration::from_millis(sec * 1000 + 5),
                    Duration::from_micros(800),
                    true,
                    None,
                );
            }
        }
        let summary = Summary {
            scenario: "token-secret-jwt".into(),
            target: "http://127.0.0.1:1".into(),
            mode: "closed loop".into(),
            connections: 1,
            threads: 1,
            agents: 1,
            rsa_agents: 0,
            elapsed: Duration::from_secs(3),
            stats,
            notes: vec![],
            pages: None,
        };
        let doc = svg(&summary);
        assert!(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 4);
        let first = doc.split("points=\"").nth(1).unwrap();
        let points = first.split('"').next().unwrap();
        assert_eq!(points.split(' ').count(), 3, "{points}");
        assert!(doc.contains("requests per second") && doc.contains("latency (ms)"));
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(12_000.0), 20_000.0);
        assert_eq!(nice_ceiling(50_000.0), 50_000.0);
        assert_eq!(short(25_000.0), "25.0k");
    }
}
