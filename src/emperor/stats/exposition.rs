//! Prometheus's text exposition format (version 0.0.4), written by hand: it is a few lines per
//! sample, and the emperor's figures are snapshots assembled per request, not the long-lived counters
//! and registries that the client crates are built around.
//!
//! What the format asks for, and what this module makes sure of whatever a vassal is called (vassal
//! names come from tenants' file names, socket paths from their files):
//! - a family's `# HELP` and `# TYPE` lines come once, before its samples, and all its samples are
//!   together ([`Exposition`] gathers samples per family and writes the families in one go);
//! - label values escape `\`, `"` and newline (`\\`, `\"`, `\n`), HELP text `\` and newline;
//! - a histogram has one `_bucket` sample per bound with cumulative counts, the last one `le="+Inf"`
//!   equal to `_count`, then `_sum` and `_count`;
//! - values are Go-float syntax: integers as integers, `NaN`, `+Inf`, `-Inf`.

use std::fmt::Write;
use std::time::Duration;

/// A metric family: its name, its type and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// Upper bounds of the histogram buckets, as written in `le` and in microseconds: cold starts range
/// from a few milliseconds (a process) to a minute (an image that loads a large app).
pub const BUCKETS: [(&str, u64); 13] = [
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.25", 250_000),
    ("0.5", 500_000),
    ("1", 1_000_000),
    ("2.5", 2_500_000),
    ("5", 5_000_000),
    ("10", 10_000_000),
    ("30", 30_000_000),
    ("60", 60_000_000),
];

/// Durations counted into [`BUCKETS`] (each count is the bucket's own, not cumulative; one above the
/// last bound is only in `count`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS.iter().position(|(_, bound)| us <= *bound) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last.
    fn cumulative(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let mut total = 0;
        BUCKETS
            .iter()
            .zip(self.buckets)
            .map(move |((le, _), n)| {
                total += n;
                (*le, total)
            })
            .chain(std::iter::once(("+Inf", self.count)))
    }
}

/// A document being assembled: samples go to their family in any order, and [`Exposition::render`]
/// writes the families in the order given to [`Exposition::new`].
pub struct Exposition {
    families: Vec<(Def, String)>,
}

/// Label names and values of one sample. Names are this program's own (`[a-z_]+`); values are escaped.
pub type Labels<'a> = [(&'a str, &'a str)];

impl Exposition {
    /// Every family the document has, in the order written; one without samples is written with its
    /// HELP and TYPE only, so that the document's shape does not depend on what runs.
    pub fn new(defs: &[&Def]) -> Exposition {
        Exposition {
            families: defs.iter().map(|d| (**d, String::new())).collect(),
        }
    }

    fn samples(&mut self, def: &Def) -> &mut String {
        let at = self
            .families
            .iter()
            .position(|(d, _)| d.name == def.name)
            .unwrap_or_else(|| {
                // A family missing from `new`'s list is a bug of this program; it still gets written.
                debug_assert!(false, "{} is not in the list of families", def.name);
                self.families.push((*def, String::new()));
                self.families.len() - 1
            });
        &mut self.families[at].1
    }

    /// One sample of a gauge or counter.
    pub fn add(&mut self, def: &Def, labels: &Labels<'_>, value: f64) {
        let out = self.samples(def);
        sample(out, def.name, "", labels, None, value);
    }

    /// A histogram's samples: buckets, sum (seconds) and count.
    pub fn histogram(&mut self, def: &Def, labels: &Labels<'_>, h: &Histogram) {
        let out = self.samples(def);
        for (le, n) in h.cumulative() {
            sample(out, def.name, "_bucket", labels, Some(le), n as f64);
        }
        sample(out, def.name, "_sum", labels, None, h.sum_us as f64 / 1e6);
        sample(out, def.name, "_count", labels, None, h.count as f64);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.families.iter().map(|(_, s)| s.len() + 200).sum());
        for (def, samples) in &self.families {
            let _ = writeln!(out, "# HELP {} {}", def.name, escape_help(def.help));
            let _ = writeln!(out, "# TYPE {} {}", def.name, def.kind.name());
            out.push_str(samples);
        }
        out
    }
}

fn sample(out: &mut String, name: &str, suffix: &str, labels: &Labels<'_>, le: Option<&str>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (k, v)) in all.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(k);
        out.push_str("=\"");
        escape_label(out, v);
        out.push('"');
    }
    if !labels.is_empty() || le.is_some() {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A value as Go's `strconv.ParseFloat` reads it.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Def = Def {
        name: "t_gauge",
        kind: Kind::Gauge,
        help: "A gauge.",
    };
    const H: Def = Def {
        name: "t_seconds",
        kind: Kind::Histogram,
        help: "Times \\ with a\nnewline.",
    };

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new(&[&G]);
        e.add(&G, &[("vassal", "a\"b\\c\nd}e,f=g.ini"), ("state", "running")], 1.0);
        e.add(&G, &[], 0.5);
        assert_eq!(
            e.render(),
            "# HELP t_gauge A gauge.\n# TYPE t_gauge gauge\n\
             t_gauge{vassal=\"a\\\"b\\\\c\\nd}e,f=g.ini\",state=\"running\"} 1\nt_gauge 0.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::default();
        for ms in [3, 5, 7, 200, 200, 61_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut e = Exposition::new(&[&G, &H]);
        e.histogram(&H, &[("vassal", "a.ini")], &h);
        let text = e.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP t_gauge A gauge.");
        assert_eq!(lines[2], "# HELP t_seconds Times \\\\ with a\\nnewline.");
        assert_eq!(lines[3], "# TYPE t_seconds histogram");
        let want = [
            ("0.005", 2),
            ("0.01", 3),
            ("0.025", 3),
            ("0.05", 3),
            ("0.1", 3),
            ("0.25", 5),
            ("0.5", 5),
            ("1", 5),
            ("2.5", 5),
            ("5", 5),
            ("10", 5),
            ("30", 5),
            ("60", 5),
            ("+Inf", 6),
        ];
        for (i, (le, n)) in want.iter().enumerate() {
            assert_eq!(
                lines[4 + i],
                format!("t_seconds_bucket{{vassal=\"a.ini\",le=\"{le}\"}} {n}")
            );
        }
        assert_eq!(lines[4 + want.len()], "t_seconds_sum{vassal=\"a.ini\"} 61.415");
        assert_eq!(lines[5 + want.len()], "t_seconds_count{vassal=\"a.ini\"} 6");
        assert_eq!(lines.len(), 6 + want.len());
        // An empty histogram still has every bucket, at 0.
        let mut e = Exposition::new(&[&H]);
        e.histogram(&H, &[], &Histogram::default());
        assert!(
            e.render()
                .contains("t_seconds_bucket{le=\"+Inf\"} 0\nt_seconds_sum 0\nt_seconds_count 0\n")
        );
    }

    #[test]
    fn families_stay_together_whatever_the_order_of_samples() {
        let mut e = Exposition::new(&[&G, &H]);
        e.add(&G, &[("v", "1")], 1.0);
        e.histogram(&H, &[("v", "1")], &Histogram::default());
        e.add(&G, &[("v", "2")], 2.0);
        let text = e.render();
        let g: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("t_gauge"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(g, [2, 3]);
    }

    #[test]
    fn numbers_as_go_reads_them() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(42.0), "42");
        assert_eq!(number(-3.0), "-3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1.7e9), "1700000000");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(1e300).parse::<f64>().unwrap(), 1e300);
    }
}
