//! Line charts as hand-written SVG: panels stacked over a shared x axis, each with its own y
//! axis, tick labels and polylines, and one legend on top. Enough for training curves without
//! a plotting dependency; the file opens in any browser.

use std::fmt::Write;

/// One curve: (x, y) points; non-finite points are left out.
pub struct Series {
    pub name: String,
    /// An SVG colour, e.g. `#1f77b4`.
    pub color: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title and the curves drawn against its own y axis.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 190.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// Room for the title and the legend.
const TOP: f64 = 64.0;
/// Room under each panel for its x tick labels (and the panel title above the next).
const GAP: f64 = 52.0;

/// Up to about `target` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let (lo, hi) = if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label: few digits, no trailing noise from the float steps.
fn label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s.trim_start_matches(['-', '0', '.']).is_empty() {
        s[1..].to_string()
    } else {
        s
    }
}

/// Text escaped for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn finite(s: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    s.points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// The smallest and largest of `values` (None when there are none).
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The whole figure: `title` on top, a legend of every series, the panels stacked with the x
/// axis (`x_label`) shared.
pub fn chart(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP);
    let plot_w = WIDTH - LEFT - RIGHT;
    let xs = range(
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| finite(s).map(|(x, _)| x)),
    )
    .unwrap_or((0.0, 1.0));
    let x_ticks = ticks(xs.0, xs.1, 8);
    let (x_lo, x_hi) = (
        x_ticks.first().copied().unwrap_or(xs.0),
        x_ticks.last().copied().unwrap_or(xs.1),
    );
    let x_step = x_ticks.get(1).map_or(1.0, |t| t - x_lo);
    let px = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo).max(1e-12) * plot_w;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    legend(&mut out, panels);
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP) + 16.0;
        let bottom = top + PANEL_HEIGHT - 16.0;
        let ys = range(panel.series.iter().flat_map(|s| finite(s).map(|(_, y)| y)))
            .unwrap_or((0.0, 1.0));
        let y_ticks = ticks(ys.0, ys.1, 4);
        let (y_lo, y_hi) = (
            y_ticks.first().copied().unwrap_or(ys.0),
            y_ticks.last().copied().unwrap_or(ys.1),
        );
        let y_step = y_ticks.get(1).map_or(1.0, |t| t - y_lo);
        let py = |y: f64| bottom - (y - y_lo) / (y_hi - y_lo).max(1e-12) * (bottom - top);
        let _ = writeln!(
            out,
            r#"<g class="panel"><text x="{LEFT}" y="{}" font-size="12" font-weight="bold">{}</text>"#,
            top - 6.0,
            escape(&panel.title)
        );
        // Grid lines and y tick labels.
        for &t in &y_ticks {
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.2}" x2="{}" y2="{y:.2}" stroke="#e4e4e4"/><text x="{}" y="{:.2}" text-anchor="end" class="ytick">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                py(t) + 4.0,
                label(t, y_step),
                y = py(t),
            );
        }
        for &t in &x_ticks {
            let _ = writeln!(
                out,
                r#"<line x1="{x:.2}" y1="{bottom}" x2="{x:.2}" y2="{}" stroke="black"/><text x="{x:.2}" y="{}" text-anchor="middle" class="xtick">{}</text>"#,
                bottom + 4.0,
                bottom + 16.0,
                label(t, x_step),
                x = px(t),
            );
        }
        // The axes.
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="black"/><line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/>"#,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            bottom + 30.0,
            escape(x_label)
        );
        for s in &panel.series {
            let points: Vec<String> = finite(s)
                .map(|(x, y)| format!("{:.2},{:.2}", px(x), py(y)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                r#"<polyline data-series="{}" fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
                escape(&s.name),
                escape(&s.color),
                points.join(" ")
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

/// One row of legend entries (a short line in the series' colour and its name) under the title.
fn legend(out: &mut String, panels: &[Panel]) {
    let _ = writeln!(out, r#"<g class="legend">"#);
    let mut x = LEFT;
    for s in panels.iter().flat_map(|p| &p.series) {
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="40" x2="{}" y2="40" stroke="{}" stroke-width="3"/><text x="{}" y="44">{}</text>"#,
            x + 18.0,
            escape(&s.color),
            x + 24.0,
            escape(&s.name)
        );
        // Room for the name at about 6.5 px a character.
        x += 40.0 + 6.5 * s.name.chars().count() as f64;
    }
    out.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color: "#123456".into(),
            points,
        }
    }

    /// Tag names in order with their kind, from a well-formed-XML check: every element closed
    /// in order (self-closing or by its end tag), attributes quoted.
    fn elements(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else {
                let name = tag.split_whitespace().next().unwrap().trim_end_matches('/');
                seen.push(name.to_string());
                if !tag.ends_with('/') {
                    stack.push(name.to_string());
                }
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
        seen
    }

    fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
        let key = format!(" {name}=\"");
        let at = tag.find(&key).unwrap() + key.len();
        &tag[at..at + tag[at..].find('"').unwrap()]
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(-0.13, 0.42, 4);
        assert!(t[0] <= -0.13 && *t.last().unwrap() >= 0.42, "{t:?}");
        assert!(t.len() <= 8, "{t:?}");
        // A flat series still gets an axis.
        let t = ticks(3.0, 3.0, 4);
        assert!(
            t.len() >= 2 && t[0] < 3.0 && *t.last().unwrap() > 3.0,
            "{t:?}"
        );
        assert!(ticks(f64::NAN, 1.0, 4).is_empty());
        assert_eq!(label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(label(-0.0, 0.5), "0.0");
        assert_eq!(label(40.0, 20.0), "40");
    }

    #[test]
    fn a_chart_has_its_panels_series_axes_and_legend() {
        let panels = [
            Panel {
                title: "score".into(),
                series: vec![
                    series(
                        "reward <model>",
                        (1..=5).map(|i| (i as f64, i as f64)).collect(),
                    ),
                    series(
                        "gold",
                        vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 1.5), (5.0, 2.0)],
                    ),
                ],
            },
            Panel {
                title: "KL".into(),
                series: vec![series("kl", vec![(1.0, 0.0), (5.0, 0.0)])],
            },
            Panel {
                title: "entropy".into(),
                series: vec![series("empty", vec![])],
            },
        ];
        let svg = chart("PPO & co", "update", &panels);
        let tags = elements(&svg);
        assert_eq!(tags[0], "svg");
        assert_eq!(tags.iter().filter(|t| *t == "g").count(), 4);
        // One polyline per series with points; the NaN point is left out, the empty series too.
        let polylines: Vec<&str> = svg.lines().filter(|l| l.starts_with("<polyline")).collect();
        assert_eq!(polylines.len(), 3);
        let counts: Vec<usize> = polylines
            .iter()
            .map(|l| attr(l, "points").split(' ').count())
            .collect();
        assert_eq!(counts, [5, 3, 2]);
        assert_eq!(attr(polylines[0], "data-series"), "reward &lt;model&gt;");
        // Every point lies inside the figure.
        let height: f64 = attr(svg.lines().next().unwrap(), "height").parse().unwrap();
        for l in &polylines {
            for p in attr(l, "points").split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{p}");
                assert!((0.0..=height).contains(&y), "{p}");
            }
        }
        // The rising series goes up the page: its last point is above its first.
        let ys: Vec<f64> = attr(polylines[0], "points")
            .split(' ')
            .map(|p| p.split_once(',').unwrap().1.parse().unwrap())
            .collect();
        assert!(ys[4] < ys[0]);
        // The legend names every series, the empty one included; titles and labels are there.
        for name in ["reward &lt;model&gt;", "gold", "kl", "empty"] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name}");
        }
        assert!(svg.contains(">PPO &amp; co</text>"));
        assert_eq!(svg.matches(">update</text>").count(), 3);
        // Updates 1…5 in steps of 0.5; y from 0.5 to 5 in steps of 2.
        assert!(svg.contains(r#"class="xtick">5.0</text>"#));
        assert!(svg.contains(r#"class="ytick">4</text>"#));
    }
}
