//! A line chart as hand-written SVG: panels stacked one above another, each
//! with its own y axis, sharing one x axis (seconds). No drawing crate:
//! the demo is an example of the main crate, and a dependency for it would
//! slow every build of the main crate's examples and tests.

use std::fmt::Write;

/// One line of a panel: `(x, y)` points, drawn in `color`.
pub struct Series {
    pub label: &'static str,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// One panel: its title, the unit of its y axis, its lines, and perhaps a
/// dashed horizontal line at a value (a bound) with its label.
pub struct Panel {
    pub title: &'static str,
    pub unit: &'static str,
    pub series: Vec<Series>,
    pub bound: Option<(String, f64)>,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 170.0;
const GAP: f64 = 60.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 50.0;

/// The chart as an SVG document: `title` above the panels, `x_label`
/// under the shared x axis.
pub fn svg(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) - GAP + BOTTOM;
    let x_max = panels
        .iter()
        .flat_map(|panel| &panel.series)
        .flat_map(|series| &series.points)
        .map(|&(x, _)| x)
        .fold(1.0, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="28" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (index, panel) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        draw_panel(&mut out, panel, top, x_max);
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        height - 12.0,
        escape(x_label)
    );
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, top: f64, x_max: f64) {
    let (left, right, bottom) = (LEFT, WIDTH - RIGHT, top + PANEL_HEIGHT);
    let y_top = panel
        .series
        .iter()
        .flat_map(|series| &series.points)
        .map(|&(_, y)| y)
        .chain(panel.bound.as_ref().map(|(_, y)| *y))
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(y_top * 1.05);
    let x = |value: f64| left + value / x_max * (right - left);
    let y = |value: f64| bottom - value / y_max * PANEL_HEIGHT;

    let _ = writeln!(
        out,
        r#"<text x="{left}" y="{}" font-weight="bold">{} ({})</text>"#,
        top - 10.0,
        escape(panel.title),
        escape(panel.unit)
    );
    // Grid and y ticks: five intervals of a round size.
    for step in 0..=5 {
        let value = y_max * f64::from(step) / 5.0;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{0:.1}" x2="{right}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
            y(value),
            left - 6.0,
            y(value) + 4.0,
            tick(value)
        );
    }
    // X ticks: whole seconds, at most about ten.
    let x_step = nice_ceiling(x_max / 10.0).max(1.0);
    let mut at = 0.0;
    while at <= x_max + 1e-9 {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1}" stroke="#333"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(at),
            bottom + 4.0,
            bottom + 17.0,
            tick(at)
        );
        at += x_step;
    }
    let _ = writeln!(
        out,
        r##"<polyline points="{left},{top} {left},{bottom} {right},{bottom}" fill="none" stroke="#333"/>"##
    );
    if let Some((label, value)) = &panel.bound {
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{0:.1}" x2="{right}" y2="{0:.1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{1}" y="{2:.1}" text-anchor="end" fill="#c00">{3}</text>"##,
            y(*value),
            right - 4.0,
            y(*value) - 5.0,
            escape(label)
        );
    }
    for (index, series) in panel.series.iter().enumerate() {
        let points: Vec<String> = series
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            points.join(" "),
            series.color
        );
        // The legend, right-aligned above the panel.
        let legend_x = right - 170.0 * (panel.series.len() - index) as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" y1="{0}" x2="{1}" y2="{0}" stroke="{2}" stroke-width="3"/><text x="{3}" y="{4}">{5}</text>"#,
            top - 14.0,
            legend_x + 18.0,
            series.color,
            legend_x + 23.0,
            top - 10.0,
            escape(series.label)
        );
    }
}

/// The smallest of 1, 2 and 5 times a power of ten that is at least
/// `value` (1 for nothing to show).
fn nice_ceiling(value: f64) -> f64 {
    if !(value > 0.0 && value.is_finite()) {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|&nice| nice >= value * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// A tick's label: short (`1.2M`, `400k`, `0.25`).
fn tick(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
