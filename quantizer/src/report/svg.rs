//! The per-layer error chart, hand-written SVG (no plotting crate): x = layer, grouped bars of
//! the weights' relative RMSE (%) per tensor class, with the SNR it corresponds to on the right
//! axis (SNR = −20·log10(relative RMSE)). Each layer's bars sit in one
//! `<g class="layer" data-layer="i">`, and every bar carries a `<title>` tooltip with its value.

use super::{per_layer, QualityReport};
use std::fmt::Write;

const COLORS: [(&str, &str); 6] = [
    ("attn_qkv", "#1f77b4"),
    ("attn_o", "#ff7f0e"),
    ("ffn_gate_up", "#2ca02c"),
    ("ffn_down", "#d62728"),
    ("embedding", "#9467bd"),
    ("other", "#7f7f7f"),
];

const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 50.0;
const PLOT_H: f64 = 300.0;
const BAR_W: f64 = 6.0;
const GAP: f64 = 6.0;

/// The chart as a standalone SVG document.
pub fn render_svg(r: &QualityReport) -> String {
    let pl = per_layer(r);
    let nc = pl.classes.len().max(1);
    let group_w = nc as f64 * BAR_W + GAP;
    let plot_w = (pl.rows.len() as f64 * group_w).max(480.0);
    let (w, h) = (LEFT + plot_w + RIGHT, TOP + PLOT_H + BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="11">"#
    );
    let title = format!("Per-layer weight error: {} ({} recipe)", r.model, r.recipe);
    let _ = writeln!(s, "<title>{}</title>", esc(&title));
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    if pl.rows.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}">No per-layer tensors in this report.</text>"#,
            TOP + PLOT_H / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }

    // Y scale: relative RMSE in percent, from 0 to a round maximum.
    let max = (pl.rows.iter())
        .flat_map(|r| r.rel_rmse.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b * 100.0));
    let ymax = nice_ceil(max);
    let y = |v: f64| TOP + PLOT_H - v / ymax * PLOT_H;

    // Grid, left ticks (relative RMSE %) and right ticks (the SNR each corresponds to).
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            fmt_tick(v)
        );
        let snr = if v > 0.0 {
            format!("{:.1}", -20.0 * (v / 100.0).log10())
        } else {
            "∞".into()
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{snr}</text>"#,
            LEFT + plot_w + 6.0,
            yy + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#000"/>"##,
        TOP + PLOT_H
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/>"##,
        TOP + PLOT_H,
        LEFT + plot_w,
        TOP + PLOT_H
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">relative RMSE of the weights (%)</text>"#,
        TOP + PLOT_H / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({:.1},{:.1}) rotate(90)" text-anchor="middle">SNR (dB)</text>"#,
        w - 14.0,
        TOP + PLOT_H / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">layer</text>"#,
        LEFT + plot_w / 2.0,
        h - 12.0
    );

    // Bars, one group per layer.
    let label_every = if pl.rows.len() <= 32 { 1 } else { 5 };
    for (gi, row) in pl.rows.iter().enumerate() {
        let x0 = LEFT + gi as f64 * group_w + GAP / 2.0;
        let _ = writeln!(s, r#"<g class="layer" data-layer="{}">"#, row.layer);
        for (ci, v) in row.rel_rmse.iter().enumerate() {
            let Some(v) = v else { continue };
            let pct = v * 100.0;
            let top = y(pct);
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{top:.1}" width="{BAR_W}" height="{:.1}" fill="{}"><title>layer {} {}: {:.3} % ({:.1} dB)</title></rect>"#,
                x0 + ci as f64 * BAR_W,
                (TOP + PLOT_H - top).max(0.0),
                color(pl.classes[ci]),
                row.layer,
                pl.classes[ci],
                pct,
                -20.0 * v.log10()
            );
        }
        s.push_str("</g>\n");
        if gi % label_every == 0 || gi + 1 == pl.rows.len() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x0 + nc as f64 * BAR_W / 2.0,
                TOP + PLOT_H + 16.0,
                row.layer
            );
        }
    }

    // Legend, above the plot.
    let mut lx = LEFT;
    for c in &pl.classes {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="34" width="10" height="10" fill="{}"/><text x="{:.1}" y="43">{c}</text>"#,
            color(c),
            lx + 14.0
        );
        lx += 24.0 + 7.0 * c.len() as f64;
    }
    let _ = writeln!(
        s,
        r##"<text x="{lx:.1}" y="43" fill="#555">(parameter-weighted mean per class and layer; norms omitted)</text>"##
    );
    s.push_str("</svg>\n");
    s
}

fn color(class: &str) -> &'static str {
    COLORS
        .iter()
        .find(|(c, _)| *c == class)
        .map_or("#7f7f7f", |(_, col)| col)
}

/// The smallest of 1, 2, 2.5, 5 x 10^k that is >= v (1 for v <= 0).
fn nice_ceil(v: f64) -> f64 {
    if !(v > 0.0) || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_ceil(3.2), 5.0);
        assert_eq!(nice_ceil(0.012), 0.02);
        assert_eq!(nice_ceil(10.0), 10.0);
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(fmt_tick(0.5), "0.5");
        assert_eq!(fmt_tick(2.0), "2");
    }
}
