//! A Prometheus scrape for tests: a plain HTTP/1.0 GET of `/metrics` over a `TcpStream`, and a
//! parser of the text exposition format into `name{labels}` → value.
//!
//! ```text
//!  scrape(addr) ─► "GET /metrics" ─► body ─► Scrape::parse: each sample line
//!     `fuse_read_latency_count{origin="memory"} 12` ─► Sample { name, labels (sorted), value }
//!     (`# HELP`/`# TYPE` lines kept as help/type by name)
//! ```
//!
//! Independent of the exporter's code: it reads what a Prometheus server would.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with any `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// `# TYPE name kind` lines.
    pub types: BTreeMap<String, String>,
    /// `# HELP name text` lines.
    pub help: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the text format. Errors name the first line that is not a comment or sample.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    out.types.insert(name.into(), kind.into());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some((name, help)) = rest.split_once(' ') {
                    out.help.insert(name.into(), help.into());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            out.samples.push(parse_sample(line)?);
        }
        Ok(out)
    }

    /// The sum of the samples named `name` whose labels include every pair in `labels` (0 when
    /// none match: a counter not yet incremented is absent from a scrape).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let bad = || anyhow::anyhow!("not a sample line: {line:?}");
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').ok_or_else(bad)?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]).ok_or_else(bad)?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ').ok_or_else(bad)?;
            (name, BTreeMap::new(), rest)
        }
    };
    // A value, then an optional timestamp.
    let value = rest.split_whitespace().next().ok_or_else(bad)?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| bad())?,
    };
    Ok(Sample { name: name.into(), labels, value })
}

/// `k="v",k2="v\"2"` → map; `None` if malformed.
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

/// GETs `http://addr/metrics` and parses the body. Errors: no connection, a non-200 status, or
/// a body that is not the text format.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bootseer\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response)?;
    let (head, body) =
        response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP header end"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.split_whitespace().nth(1) == Some("200"), "scrape: {status}");
    Scrape::parse(body)
}

/// A TCP port on 127.0.0.1 nobody listens on now (bound, then released: the caller binds it
/// again soon after).
pub fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_parses() {
        let text = "# HELP cache_miss Block lookups that had to fetch\n\
                    # TYPE cache_miss counter\n\
                    cache_miss{priority=\"demand\"} 3\n\
                    cache_miss{priority=\"background\"} 4\n\
                    fuse_read_latency_bucket{origin=\"memory\",le=\"+Inf\"} 7\n\
                    store_read_bytes 1024 1700000000\n\
                    odd{v=\"a\\\"b,c\"} 1.5\n";
        let s = Scrape::parse(text).expect("parse");
        assert_eq!(s.sum("cache_miss", &[]), 7.0);
        assert_eq!(s.sum("cache_miss", &[("priority", "demand")]), 3.0);
        assert_eq!(s.sum("fuse_read_latency_bucket", &[("le", "+Inf")]), 7.0);
        assert_eq!(s.sum("store_read_bytes", &[]), 1024.0);
        assert_eq!(s.sum("odd", &[("v", "a\"b,c")]), 1.5);
        assert_eq!(s.types.get("cache_miss").map(String::as_str), Some("counter"));
        assert!(s.help.contains_key("cache_miss"));
        assert!(Scrape::parse("garbage").is_err());
    }
}
