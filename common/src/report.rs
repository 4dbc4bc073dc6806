//! `report`: where the time of one job start went, from the summaries its daemons wrote on many
//! nodes (`bootseer-image report DIR…`, `bootseer-deps report DIR…`).
//!
//! ```text
//!  *.json (any daemon's summary with a "timeline") ─► Mount { host, kind, phases, counters }
//!    per node: wait(kind) = (ready − mount_called) + stalled  (what the start waited on it:
//!                the mount, then the wall time its reads waited on the network)
//!              span = latest (ready | last_stall) − earliest mount_called over its mounts
//!    phases:   mount→ready, mount→first read, mount→replay done, mount→last stall, per kind,
//!              p50 / p90 / max across nodes
//!    shares:   Σ wait(kind) / Σ wait, over all nodes
//!    stragglers: span > 1.5 × median span, with the counters that explain them
//!  ─► text tables | --json | --svg FILE (one row per node, one bar per mount, phases coloured)
//! ```
//!
//! Files without a timeline (a `bootseer-deps run` report, a trace) are skipped and counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::timeline::{FIRST_READ, LAST_STALL, MOUNT_CALLED, READY, REPLAY_DONE, Timeline};

/// The phase row of the wall time reads waited on the network (`Timeline::stalled_ms`).
const READS_WAITED: &str = "reads waited (wall)";

/// A node is a straggler when its start took this many times the median start.
pub const STRAGGLER_FACTOR: f64 = 1.5;

/// Counters that explain a slow mount, read from a summary where present.
const WHY: &[(&str, &[&str])] = &[
    ("blocks on demand", &["cache", "blocks_on_demand"]),
    ("MB on demand", &["cache", "bytes_on_demand"]),
    ("blocks by replay", &["cache", "blocks_replay"]),
    ("replay failures", &["replay_failures"]),
    ("stall s (summed)", &["stall_secs"]),
    ("stripes retried", &["stripes_retried"]),
    ("stripes hedged", &["stripes_hedged"]),
    ("MB from HDFS", &["bytes_fetched"]),
];

/// One daemon's mount, as its summary says.
#[derive(Debug, Clone, Serialize)]
pub struct Mount {
    /// The summary file.
    pub file: PathBuf,
    /// Its timeline.
    pub timeline: Timeline,
    /// Explaining counters (name → value) present in the summary.
    pub counters: BTreeMap<String, f64>,
}

impl Mount {
    fn at(&self, phase: &str) -> Option<f64> {
        self.timeline.at(phase)
    }

    /// Seconds from `mount_called` to `phase`.
    pub fn since_mount(&self, phase: &str) -> Option<f64> {
        Some((self.at(phase)? - self.at(MOUNT_CALLED)?) / 1e3)
    }

    /// The end of what a start waited on this mount: its last stall, or when it was ready.
    fn done(&self) -> Option<f64> {
        match (self.at(READY), self.at(LAST_STALL)) {
            (Some(r), Some(s)) => Some(r.max(s)),
            (r, s) => r.or(s),
        }
    }

    /// Seconds the start waited on this mount: until it was ready, then while its reads waited
    /// on the network (wall time, overlapping reads once). A read that waited late in the job
    /// adds its wait, not the whole time since the mount.
    pub fn wait(&self) -> Option<f64> {
        let called = self.at(MOUNT_CALLED)?;
        let ready = self.at(READY).map_or(0.0, |r| (r - called).max(0.0) / 1e3);
        Some(ready + self.timeline.stalled_ms / 1e3)
    }
}

/// Percentiles of one phase across nodes.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    /// `kind: phase`.
    pub phase: String,
    /// Nodes with this phase.
    pub nodes: usize,
    /// Median seconds.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Slowest.
    pub max: f64,
}

/// A node far above the median.
#[derive(Debug, Clone, Serialize)]
pub struct Straggler {
    /// Host.
    pub host: String,
    /// Its start, seconds.
    pub span: f64,
    /// × the median start.
    pub factor: f64,
    /// The kind it waited on longest.
    pub slowest: String,
    /// Counters of that mount, next to their median over the other nodes.
    pub why: Vec<(String, f64, f64)>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes (hosts) seen.
    pub nodes: usize,
    /// Summaries read.
    pub mounts: usize,
    /// Files skipped (no timeline, unreadable).
    pub skipped: Vec<String>,
    /// Per node: host → start seconds (earliest mount call to last wait).
    pub spans: BTreeMap<String, f64>,
    /// Per phase across nodes.
    pub phases: Vec<PhaseStats>,
    /// Share of waiting per kind (image, deps, ckpt), summed over nodes.
    pub shares: BTreeMap<String, f64>,
    /// Nodes far above the median.
    pub stragglers: Vec<Straggler>,
    /// Every mount read.
    #[serde(skip)]
    pub all: Vec<Mount>,
}

fn lookup(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Reads the summaries in `paths` (files, or directories searched recursively for `*.json`).
pub fn read(paths: &[PathBuf]) -> (Vec<Mount>, Vec<String>) {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files);
    }
    files.sort();
    let mut mounts = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        let parsed = std::fs::read(&f).map_err(|e| e.to_string()).and_then(|d| {
            serde_json::from_slice::<serde_json::Value>(&d).map_err(|e| e.to_string())
        });
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                skipped.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let timeline = v.get("timeline").cloned().map(serde_json::from_value::<Timeline>);
        match timeline {
            Some(Ok(t)) if t.at(MOUNT_CALLED).is_some() => {
                let counters = WHY
                    .iter()
                    .filter_map(|(name, path)| {
                        let mut x = lookup(&v, path)?;
                        if name.starts_with("MB") {
                            x /= 1e6;
                        }
                        Some((name.to_string(), x))
                    })
                    .collect();
                mounts.push(Mount { file: f, timeline: t, counters });
            }
            _ => skipped.push(format!("{}: no timeline", f.display())),
        }
    }
    (mounts, skipped)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                collect(&e.path(), out);
            }
        }
    } else if p.extension().is_some_and(|e| e == "json") {
        out.push(p.to_path_buf());
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

/// Builds the report of `mounts`.
pub fn analyze(mounts: Vec<Mount>, skipped: Vec<String>) -> Report {
    let mut by_host: BTreeMap<String, Vec<&Mount>> = BTreeMap::new();
    for m in &mounts {
        by_host.entry(m.timeline.host.clone()).or_default().push(m);
    }
    let mut spans = BTreeMap::new();
    for (host, ms) in &by_host {
        let start = ms.iter().filter_map(|m| m.at(MOUNT_CALLED)).fold(f64::INFINITY, f64::min);
        let end = ms.iter().filter_map(|m| m.done()).fold(f64::NEG_INFINITY, f64::max);
        if start.is_finite() && end.is_finite() {
            spans.insert(host.clone(), ((end - start) / 1e3).max(0.0));
        }
    }
    let mut kinds: Vec<String> = mounts.iter().map(|m| m.timeline.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    let mut phases = Vec::new();
    for kind in &kinds {
        for (label, phase) in [
            ("mount → ready", Some(READY)),
            ("mount → first read", Some(FIRST_READ)),
            ("mount → replay done", Some(REPLAY_DONE)),
            ("mount → last stall", Some(LAST_STALL)),
            (READS_WAITED, None),
        ] {
            // Per node, the slowest mount of this kind.
            let mut per_node: Vec<f64> = by_host
                .values()
                .filter_map(|ms| {
                    ms.iter()
                        .filter(|m| &m.timeline.kind == kind)
                        .filter_map(|m| match phase {
                            Some(phase) => m.since_mount(phase),
                            None => Some(m.timeline.stalled_ms / 1e3),
                        })
                        .reduce(f64::max)
                })
                .collect();
            if per_node.is_empty() {
                continue;
            }
            per_node.sort_by(f64::total_cmp);
            phases.push(PhaseStats {
                phase: format!("{kind}: {label}"),
                nodes: per_node.len(),
                p50: percentile(&per_node, 0.5),
                p90: percentile(&per_node, 0.9),
                max: *per_node.last().unwrap_or(&0.0),
            });
        }
    }
    let mut spans_sorted: Vec<f64> = spans.values().copied().collect();
    spans_sorted.sort_by(f64::total_cmp);
    if !spans_sorted.is_empty() {
        phases.push(PhaseStats {
            phase: "node start (first mount → last wait)".into(),
            nodes: spans_sorted.len(),
            p50: percentile(&spans_sorted, 0.5),
            p90: percentile(&spans_sorted, 0.9),
            max: *spans_sorted.last().unwrap_or(&0.0),
        });
    }
    let mut waits: BTreeMap<String, f64> = BTreeMap::new();
    for m in &mounts {
        *waits.entry(m.timeline.kind.clone()).or_default() += m.wait().unwrap_or(0.0);
    }
    let total: f64 = waits.values().sum();
    let shares =
        waits.into_iter().map(|(k, w)| (k, if total > 0.0 { w / total } else { 0.0 })).collect();
    let med = median(&spans_sorted);
    let mut stragglers = Vec::new();
    for (host, &span) in &spans {
        if spans.len() < 2 || med <= 0.0 || span <= STRAGGLER_FACTOR * med {
            continue;
        }
        let ms = &by_host[host];
        let Some(slow) =
            ms.iter().max_by(|a, b| a.wait().unwrap_or(0.0).total_cmp(&b.wait().unwrap_or(0.0)))
        else {
            continue;
        };
        let kind = slow.timeline.kind.clone();
        let why = slow
            .counters
            .iter()
            .map(|(name, &v)| {
                let others: Vec<f64> = mounts
                    .iter()
                    .filter(|m| m.timeline.kind == kind && &m.timeline.host != host)
                    .filter_map(|m| m.counters.get(name).copied())
                    .collect();
                (name.clone(), v, median(&others))
            })
            .collect();
        stragglers.push(Straggler {
            host: host.clone(),
            span,
            factor: span / med,
            slowest: kind,
            why,
        });
    }
    Report {
        nodes: by_host.len(),
        mounts: mounts.len(),
        skipped,
        spans,
        phases,
        shares,
        stragglers,
        all: mounts,
    }
}

impl Report {
    /// The tables, as text.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} nodes, {} mounts ({} files skipped)",
            self.nodes,
            self.mounts,
            self.skipped.len()
        );
        let _ = writeln!(
            o,
            "\n{:<44} {:>5} {:>8} {:>8} {:>8}",
            "phase (seconds)", "nodes", "p50", "p90", "max"
        );
        for p in &self.phases {
            let _ = writeln!(
                o,
                "{:<44} {:>5} {:>8.3} {:>8.3} {:>8.3}",
                p.phase, p.nodes, p.p50, p.p90, p.max
            );
        }
        let _ = writeln!(
            o,
            "\nshare of the time starts waited on each filesystem (mount → ready, then reads):"
        );
        for (k, s) in &self.shares {
            let _ = writeln!(o, "  {k:<8} {:>5.1}%", s * 100.0);
        }
        if self.stragglers.is_empty() {
            let _ = writeln!(
                o,
                "\nno stragglers (no node above {STRAGGLER_FACTOR} × the median start)"
            );
        } else {
            let _ = writeln!(o, "\nstragglers (start > {STRAGGLER_FACTOR} × the median):");
            let _ = writeln!(
                o,
                "{:<20} {:>8} {:>7} {:<7} what its slowest mount did (this node / median of the others)",
                "host", "start s", "× med", "waited"
            );
            for s in &self.stragglers {
                let why: Vec<String> = s
                    .why
                    .iter()
                    .filter(|(_, v, m)| v != m)
                    .map(|(n, v, m)| format!("{n} {v:.1} / {m:.1}"))
                    .collect();
                let _ = writeln!(
                    o,
                    "{:<20} {:>8.2} {:>7.2} {:<7} {}",
                    s.host,
                    s.span,
                    s.factor,
                    s.slowest,
                    why.join(", ")
                );
            }
        }
        o
    }

    /// One row per node, one bar per mount: mount→ready grey, ready→first read light, first
    /// read→last stall in the kind's colour; replay done as a tick.
    pub fn svg(&self) -> String {
        let t0 = self.all.iter().filter_map(|m| m.at(MOUNT_CALLED)).fold(f64::INFINITY, f64::min);
        let t1 = self
            .all
            .iter()
            .filter_map(|m| m.done().or(m.at(FIRST_READ)))
            .fold(f64::NEG_INFINITY, f64::max);
        let span = if t0.is_finite() && t1 > t0 { (t1 - t0) / 1e3 } else { 1.0 };
        let mut hosts: Vec<&String> = self.spans.keys().collect();
        hosts.sort();
        let (left, width, row, bar) = (160.0, 800.0, 18.0 * 3.0, 14.0);
        let height = 60.0 + row * hosts.len() as f64 + 40.0;
        let x = |ms: f64| left + (ms - t0) / 1e3 / span * width;
        let colour = |kind: &str| match kind {
            "image" => "#4C78A8",
            "deps" => "#F58518",
            "ckpt" => "#54A24B",
            _ => "#B279A2",
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
            left + width + 40.0
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="20" font-size="14">job start timeline: {} nodes, {span:.2} s</text>"#,
            hosts.len()
        );
        for (i, k) in ["image", "deps", "ckpt"].iter().enumerate() {
            let lx = left + 300.0 + i as f64 * 90.0;
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="41">{k}</text>"#,
                colour(k),
                lx + 16.0
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="30" width="12" height="12" fill="#BBBBBB"/><text x="{}" y="41">mount → ready</text>"##,
            left + 570.0,
            left + 586.0
        );
        for (r, host) in hosts.iter().enumerate() {
            let y0 = 60.0 + r as f64 * row;
            let _ = writeln!(s, r#"<text x="4" y="{}">{host}</text>"#, y0 + bar);
            let mut ms: Vec<&Mount> =
                self.all.iter().filter(|m| &&m.timeline.host == host).collect();
            ms.sort_by(|a, b| a.timeline.kind.cmp(&b.timeline.kind));
            for (j, m) in ms.iter().enumerate() {
                let y = y0 + j as f64 * (bar + 2.0);
                let (Some(called), Some(ready)) = (m.at(MOUNT_CALLED), m.at(READY)) else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    r##"<rect x="{:.1}" y="{y}" width="{:.1}" height="{bar}" fill="#BBBBBB"><title>{} mount → ready {:.3} s</title></rect>"##,
                    x(called),
                    (x(ready) - x(called)).max(1.0),
                    m.timeline.kind,
                    (ready - called) / 1e3
                );
                if let Some(first) = m.at(FIRST_READ) {
                    let end = m.at(LAST_STALL).unwrap_or(first).max(first);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="{bar}" fill="{}"><title>{}: first read → last stall {:.3} s</title></rect>"#,
                        x(first),
                        (x(end) - x(first)).max(2.0),
                        colour(&m.timeline.kind),
                        m.timeline.kind,
                        (end - first) / 1e3
                    );
                }
                if let Some(done) = m.at(REPLAY_DONE) {
                    let _ = writeln!(
                        s,
                        r#"<line x1="{:.1}" x2="{:.1}" y1="{y}" y2="{}" stroke="black" stroke-width="2"><title>replay done</title></line>"#,
                        x(done),
                        x(done),
                        y + bar
                    );
                }
            }
        }
        let axis_y = 60.0 + row * hosts.len() as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{left}" x2="{}" y1="{axis_y}" y2="{axis_y}" stroke="black"/>"#,
            left + width
        );
        for i in 0..=5 {
            let t = span * i as f64 / 5.0;
            let xx = left + width * i as f64 / 5.0;
            let _ = writeln!(
                s,
                r#"<text x="{xx}" y="{}" text-anchor="middle">{t:.2} s</text>"#,
                axis_y + 16.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// What the `report` subcommand of every binary runs: reads `paths`, writes the picture to `svg`
/// when given, and returns the text tables (or the JSON with `json`).
pub fn run(paths: &[PathBuf], json: bool, svg: Option<&Path>) -> anyhow::Result<String> {
    let (mounts, skipped) = read(paths);
    anyhow::ensure!(
        !mounts.is_empty(),
        "no summary with a timeline under {}",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let report = analyze(mounts, skipped);
    if let Some(path) = svg {
        std::fs::write(path, report.svg())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(if json { serde_json::to_string_pretty(&report)? } else { report.text() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Event;

    fn mount(host: &str, kind: &str, called: f64, ready: f64, stall: f64, on_demand: f64) -> Mount {
        // Reads waited for half the time from the first read to the last stall.
        let stalled_ms = (stall - ready - 1.0).max(0.0) / 2.0;
        let ev = |phase: &str, at: f64| Event { phase: phase.into(), unix_ms: at };
        Mount {
            file: PathBuf::from(format!("{host}-{kind}.json")),
            timeline: Timeline {
                host: host.into(),
                kind: kind.into(),
                source: String::new(),
                events: vec![
                    ev(MOUNT_CALLED, called),
                    ev(READY, ready),
                    ev(FIRST_READ, ready + 1.0),
                    ev(LAST_STALL, stall),
                ],
                stalled_ms,
            },
            counters: [("blocks on demand".to_string(), on_demand)].into_iter().collect(),
        }
    }

    #[test]
    fn the_slow_node_is_a_straggler_and_shares_add_up() {
        let mut all = Vec::new();
        for (i, host) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
            let t = 1_000_000.0 + i as f64;
            let slow = *host == "n4";
            all.push(mount(
                host,
                "image",
                t,
                t + 50.0,
                t + if slow { 9_000.0 } else { 1_000.0 },
                if slow { 900.0 } else { 40.0 },
            ));
            all.push(mount(host, "ckpt", t + 10.0, t + 60.0, t + 800.0, 0.0));
        }
        let r = analyze(all, vec![]);
        assert_eq!(r.nodes, 4);
        assert_eq!(r.stragglers.len(), 1, "{}", r.text());
        let s = &r.stragglers[0];
        assert_eq!((s.host.as_str(), s.slowest.as_str()), ("n4", "image"));
        assert!(s.why.iter().any(|(n, v, m)| n == "blocks on demand" && *v == 900.0 && *m == 40.0));
        let total: f64 = r.shares.values().sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(r.shares["image"] > r.shares["ckpt"]);
        // Waits are mount → ready plus stalled: image 50 ms + ~474 ms (three nodes) and
        // 50 + 4474 ms (n4), ckpt 50 + ~369 ms each.
        let image = 3.0 * (0.050 + 0.4745) + (0.050 + 4.4745);
        let ckpt = 4.0 * (0.050 + 0.3695);
        assert!((r.shares["image"] - image / (image + ckpt)).abs() < 1e-3, "{:?}", r.shares);
        let waited = r.phases.iter().find(|p| p.phase == "ckpt: reads waited (wall)");
        assert!(waited.is_some_and(|p| (p.max - 0.3695).abs() < 1e-6), "{:?}", r.phases);
        let svg = r.svg();
        assert!(
            svg.starts_with("<svg") && svg.contains("n4") && svg.trim_end().ends_with("</svg>")
        );
    }
}
