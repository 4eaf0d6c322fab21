//! `vmpi graph`: the system as an SVG picture. Partitions sit on a circle (ranks
//! clockwise from the top); each group is a translucent band joining its members;
//! each channel is a line with an arrow per granted direction, labelled with its
//! rings and quotas; the monitor has a double border, uhyve partitions a dashed one.

use std::f64::consts::PI;
use std::fmt::Write;

use crate::manifest::{Edge, Hypervisor, System, human_bytes};

const W: f64 = 960.0;
const CX: f64 = W / 2.0;
const CY: f64 = 350.0;
const R: f64 = 250.0;
const NODE_W: f64 = 150.0;
const NODE_H: f64 = 46.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pos(rank: usize, n: usize) -> (f64, f64) {
    if n == 1 {
        return (CX, CY);
    }
    let a = -PI / 2.0 + 2.0 * PI * rank as f64 / n as f64;
    (CX + R * a.cos(), CY + R * a.sin())
}

fn rate(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n.is_multiple_of(1_000) => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn edge_label(sys: &System, e: &Edge) -> String {
    let q = &e.quota;
    let mut s = format!(
        "{}→{}: {} ring, {} msg/s, {}/s, burst {}",
        sys.partitions[e.from].name,
        sys.partitions[e.to].name,
        human_bytes(e.ring_bytes),
        rate(q.messages_per_sec),
        human_bytes(q.bytes_per_sec),
        q.burst
    );
    if let Some((lo, hi)) = e.tags {
        let _ = write!(s, ", tags {lo}–{hi}");
    }
    if e.nonblocking {
        s.push_str(", nb");
    }
    s
}

/// Point where the segment from the centre of a node towards `(tx, ty)` leaves the
/// node's box (plus a small gap).
fn clip(x: f64, y: f64, tx: f64, ty: f64) -> (f64, f64) {
    let (dx, dy) = (tx - x, ty - y);
    let sx = if dx.abs() > 1e-9 {
        (NODE_W / 2.0 + 6.0) / dx.abs()
    } else {
        f64::INFINITY
    };
    let sy = if dy.abs() > 1e-9 {
        (NODE_H / 2.0 + 6.0) / dy.abs()
    } else {
        f64::INFINITY
    };
    let s = sx.min(sy).min(1.0);
    (x + dx * s, y + dy * s)
}

/// The SVG document for `sys`.
pub fn svg(sys: &System) -> String {
    let n = sys.partitions.len();
    let channel_rows: usize = sys
        .channels
        .iter()
        .map(|c| 1 + c.dirs.iter().flatten().count())
        .sum();
    let legend_rows = sys.groups.len() + 4 + channel_rows;
    let h = CY + R + 90.0 + 20.0 * legend_rows as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">"#
    );
    o.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
"##,
    );
    let _ = writeln!(
        o,
        r##"<text x="20" y="32" font-size="20" font-weight="bold">vmpi system `{}`</text><text x="20" y="52" font-size="12" fill="#555">{} partitions, {} groups, {} channels; only granted pairs have a channel</text>"##,
        esc(&sys.name),
        n,
        sys.groups.len(),
        sys.channels.len()
    );
    // Groups: fat translucent bands through their members.
    for (gi, g) in sys.groups.iter().enumerate() {
        let color = COLORS[gi % COLORS.len()];
        let width = 70.0 + 14.0 * gi as f64;
        let pts: Vec<String> = g
            .members
            .iter()
            .map(|&r| {
                let (x, y) = pos(r, n);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            o,
            r#"<polygon class="group" data-group="{}" points="{}" fill="{color}" fill-opacity="0.10" stroke="{color}" stroke-opacity="0.22" stroke-width="{width}" stroke-linejoin="round"/>"#,
            esc(&g.name),
            pts.join(" ")
        );
    }
    // Channels.
    for c in &sys.channels {
        let (x1, y1) = pos(c.ends[0], n);
        let (x2, y2) = pos(c.ends[1], n);
        let (ax, ay) = clip(x1, y1, x2, y2);
        let (bx, by) = clip(x2, y2, x1, y1);
        let start = if c.dirs[1].is_some() {
            r#" marker-start="url(#arrow)""#
        } else {
            ""
        };
        let end = if c.dirs[0].is_some() {
            r#" marker-end="url(#arrow)""#
        } else {
            ""
        };
        let _ = writeln!(
            o,
            r##"<line class="channel" data-channel="{}" x1="{ax:.1}" y1="{ay:.1}" x2="{bx:.1}" y2="{by:.1}" stroke="#333" stroke-width="2"{start}{end}/>"##,
            c.index
        );
        let (mx, my) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
        let _ = writeln!(
            o,
            r##"<rect x="{:.1}" y="{:.1}" width="34" height="18" rx="9" fill="white" stroke="#333"/><text x="{mx:.1}" y="{:.1}" font-size="11" font-weight="bold" text-anchor="middle">ch{}</text>"##,
            mx - 17.0,
            my - 9.0,
            my + 4.0,
            c.index
        );
    }
    // Partitions.
    for p in &sys.partitions {
        let (x, y) = pos(p.rank, n);
        let monitor = sys.monitor.partition == Some(p.rank);
        let dash = if p.hypervisor == Hypervisor::Uhyve {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let (fill, stroke_w) = if monitor {
            ("#fff4d6", 4.0)
        } else {
            ("#eef3fb", 2.0)
        };
        let _ = writeln!(
            o,
            r##"<rect class="partition" data-rank="{}" x="{:.1}" y="{:.1}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" stroke="#234" stroke-width="{stroke_w}"{dash}/>"##,
            p.rank,
            x - NODE_W / 2.0,
            y - NODE_H / 2.0
        );
        if monitor {
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{:.1}" width="{}" height="{}" rx="6" fill="none" stroke="#234" stroke-width="1"/>"##,
                x - NODE_W / 2.0 + 5.0,
                y - NODE_H / 2.0 + 5.0,
                NODE_W - 10.0,
                NODE_H - 10.0
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{x:.1}" y="{:.1}" font-size="14" font-weight="bold" text-anchor="middle">{}</text>"#,
            y - 3.0,
            esc(&p.name)
        );
        let role = match (monitor, p.hypervisor) {
            (true, _) => " · monitor",
            (false, Hypervisor::Uhyve) => " · uhyve",
            (false, Hypervisor::Qemu) => "",
        };
        let _ = writeln!(
            o,
            r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#444">rank {} · {}{role}</text>"##,
            y + 13.0,
            p.rank,
            human_bytes(p.memory)
        );
    }
    // Legend.
    let mut ly = CY + R + 70.0;
    let _ = writeln!(
        o,
        r#"<text x="20" y="{ly:.1}" font-size="13" font-weight="bold">Legend</text>"#
    );
    for (gi, g) in sys.groups.iter().enumerate() {
        ly += 20.0;
        let color = COLORS[gi % COLORS.len()];
        let members: Vec<&str> = g
            .members
            .iter()
            .map(|&r| sys.partitions[r].name.as_str())
            .collect();
        let _ = writeln!(
            o,
            r#"<rect x="20" y="{:.1}" width="28" height="12" fill="{color}" fill-opacity="0.35"/><text x="56" y="{ly:.1}" font-size="12">group {} (id {gi}): {}</text>"#,
            ly - 10.0,
            esc(&g.name),
            esc(&members.join(", "))
        );
    }
    ly += 20.0;
    let _ = writeln!(
        o,
        r##"<line x1="20" y1="{:.1}" x2="48" y2="{:.1}" stroke="#333" stroke-width="2" marker-end="url(#arrow)"/><text x="56" y="{ly:.1}" font-size="12">channel: an arrow per direction granted; see the channel table below</text>"##,
        ly - 4.0,
        ly - 4.0
    );
    ly += 20.0;
    let _ = writeln!(
        o,
        r##"<rect x="20" y="{:.1}" width="28" height="12" fill="#fff4d6" stroke="#234" stroke-width="3"/><text x="56" y="{ly:.1}" font-size="12">monitor partition (meters every channel; on flood: {}); dashed border = uhyve</text>"##,
        ly - 10.0,
        sys.monitor.on_flood.name()
    );
    if !sys.channels.is_empty() {
        ly += 28.0;
        let _ = writeln!(
            o,
            r#"<text x="20" y="{ly:.1}" font-size="13" font-weight="bold">Channels (rights table)</text>"#
        );
    }
    for c in &sys.channels {
        ly += 20.0;
        let [a, b] = c.ends.map(|r| esc(&sys.partitions[r].name));
        let _ = writeln!(
            o,
            r#"<text x="20" y="{ly:.1}" font-size="12"><tspan font-weight="bold">ch{}</tspan>  {a} ⇄ {b}: {} shared-memory file, PCI slot {} in {a}, {} in {b}</text>"#,
            c.index,
            human_bytes(c.file_bytes),
            c.slots[0],
            c.slots[1]
        );
        for e in c.dirs.iter().flatten() {
            ly += 20.0;
            let _ = writeln!(
                o,
                r#"<text x="56" y="{ly:.1}" font-size="12">{}</text>"#,
                esc(&edge_label(sys, e))
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(rel: &str) -> System {
        crate::manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
    }

    fn demo() -> System {
        load("tests/data/five.toml")
    }

    #[test]
    fn demo_svg_has_every_element() {
        let sys = demo();
        let s = svg(&sys);
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("class=\"partition\"").count(), 5);
        assert_eq!(s.matches("class=\"group\"").count(), 2);
        assert_eq!(s.matches("class=\"channel\"").count(), 4);
        // client<->names is granted both ways: two arrow heads; names->log one.
        let line = |c: usize| {
            s.lines()
                .find(|l| l.contains(&format!("data-channel=\"{c}\"")))
                .unwrap()
                .to_string()
        };
        assert!(line(0).contains("marker-start") && line(0).contains("marker-end"));
        assert!(!line(2).contains("marker-start") && line(2).contains("marker-end"));
        assert!(
            s.contains("client→store: 256 KiB ring, 20k msg/s, 16 MiB/s, burst 256, nb"),
            "{s}"
        );
        assert!(s.contains("names→log: 16 KiB ring, 1k msg/s, 256 KiB/s, burst 32, tags 0–15"));
        assert!(s.contains("group storage (id 1): client, store"));
        assert!(s.contains("rank 4 · 32 MiB · monitor"));
        assert!(s.contains("ch1</tspan>  client ⇄ store: 2 MiB shared-memory file, PCI slot 2 in client, 1 in store"));
    }

    #[test]
    fn svg_is_well_formed() {
        // Every opened element is closed (self-closing or paired), in order.
        let s = svg(&demo());
        let mut stack = Vec::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find('<') {
            let end = rest[i..].find('>').unwrap() + i;
            let tag = &rest[i + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.to_string()), "closing {name}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    #[test]
    fn checked_in_demo_picture_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.svg");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == svg(&load("demo.toml")),
            "images/demo.svg is stale: run `vmpi graph images/demo.toml -o images/demo.svg`"
        );
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(esc("a<b>&\"c"), "a&lt;b&gt;&amp;&quot;c");
    }
}
