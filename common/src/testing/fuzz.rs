//! A small deterministic fuzzer for the decoders of untrusted input (metadata blobs, traces,
//! index JSON, tar layers, mount options): mutations of valid encodings plus random bytes, from
//! a fixed seed, each input checked for "no panic".
//!
//! ```text
//!  regression cases (files) ─┐
//!  seeds ─► mutate (1–8 stacked edits; splices between seeds) ─► fixup? (re-frame, re-checksum,
//!  random bytes ──────────────────────────────────────────────┘   so inputs get past the frame)
//!        ─► check(input) under catch_unwind ─► a panic: the input is written to
//!           target/fuzz-crashes/NAME-N.bin and the test fails naming it
//! ```
//!
//! The count is [`ITERATIONS_ENV`] (default [`DEFAULT_ITERATIONS`], what CI runs);
//! `scripts/fuzz` runs a release build with a million per decoder. Crashes found are kept as
//! regression files and replayed first, every run.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Environment variable: inputs per decoder.
pub const ITERATIONS_ENV: &str = "BOOTSEER_FUZZ_ITERS";
/// Environment variable: the seed of the input generator (default 0x5eed).
pub const SEED_ENV: &str = "BOOTSEER_FUZZ_SEED";
/// Inputs per decoder when [`ITERATIONS_ENV`] is unset: the issue's floor for CI.
pub const DEFAULT_ITERATIONS: u64 = 10_000;

/// Inputs per decoder for this run.
pub fn iterations() -> u64 {
    std::env::var(ITERATIONS_ENV)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
}

/// What a fuzz run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzReport {
    /// Inputs checked (regression cases included).
    pub inputs: u64,
    /// Inputs the checker counted as accepted (decoded without error).
    pub accepted: u64,
}

/// Values that tend to sit on boundaries: lengths, counts, indexes.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

/// Interesting numbers as JSON text (for text formats).
const INTERESTING_TEXT: [&str; 12] = [
    "0",
    "1",
    "-1",
    "4096",
    "65535",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-9223372036854775808",
];

/// The input generator: a seeded RNG over a set of valid encodings.
#[derive(Debug)]
pub struct Mutator {
    rng: fastrand::Rng,
    seeds: Vec<Vec<u8>>,
}

impl Mutator {
    /// A generator over `seeds` (at least one) with the run's seed.
    pub fn new(seeds: Vec<Vec<u8>>) -> Self {
        let seed = std::env::var(SEED_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
        Self { rng: fastrand::Rng::with_seed(seed), seeds }
    }

    /// The RNG, for fixups that need randomness.
    pub fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// The next input: random bytes (1 in 10), else a seed with 1–8 stacked edits.
    pub fn next_input(&mut self) -> Vec<u8> {
        if self.seeds.is_empty() || self.rng.u8(..10) == 0 {
            let len = self.rng.usize(..2048);
            return (0..len).map(|_| self.rng.u8(..)).collect();
        }
        let mut data = self.seeds[self.rng.usize(..self.seeds.len())].clone();
        for _ in 0..self.rng.usize(1..=8) {
            self.mutate(&mut data);
        }
        data
    }

    fn mutate(&mut self, data: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let len = data.len();
        match rng.u8(..12) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                data[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                data[i] = rng.u8(..);
            }
            2 if len > 0 => {
                let i = rng.usize(..len);
                data[i] = [0u8, 0xff, 0x7f, 0x80, b'/', b'.', b'"', b'0'][rng.usize(..8)];
            }
            3 => {
                let at = rng.usize(..=len);
                let n = rng.usize(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                data.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.usize(..len);
                let n = rng.usize(1..=(len - at).min(64));
                data.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.usize(..len);
                let n = rng.usize(1..=(len - at).min(256));
                let copy = data[at..at + n].to_vec();
                let to = rng.usize(..=len);
                data.splice(to..to, copy);
            }
            6 if len > 0 => data.truncate(rng.usize(..len)),
            7 if len >= 8 => {
                // An interesting integer, little-endian, 1/2/4/8 bytes wide.
                let width = [1usize, 2, 4, 8][rng.usize(..4)].min(len);
                let at = rng.usize(..=len - width);
                let v = INTERESTING[rng.usize(..INTERESTING.len())].to_le_bytes();
                data[at..at + width].copy_from_slice(&v[..width]);
            }
            8 => {
                // Splice: our head, another seed's tail.
                let other = &self.seeds[rng.usize(..self.seeds.len())];
                let cut = rng.usize(..=len);
                let from = rng.usize(..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            9 => replace_number(rng, data),
            10 if len > 0 => {
                // A LEB128 varint with every continuation bit set: the longest a reader meets.
                let at = rng.usize(..len);
                let n = rng.usize(1..=11).min(len - at);
                data[at..at + n].fill(0xff);
            }
            _ if len > 1 => {
                let a = rng.usize(..len);
                let b = rng.usize(..len);
                data.swap(a, b);
            }
            _ => data.push(rng.u8(..)),
        }
    }
}

/// Replaces one run of ASCII digits (a JSON number, a tar octal field) with an interesting one.
fn replace_number(rng: &mut fastrand::Rng, data: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[rng.usize(..starts.len())];
    let end = (start..data.len()).find(|&i| !data[i].is_ascii_digit()).unwrap_or(data.len());
    let with = INTERESTING_TEXT[rng.usize(..INTERESTING_TEXT.len())].as_bytes().to_vec();
    data.splice(start..end, with);
}

/// Where crashing inputs are written: `target/fuzz-crashes` of the workspace.
fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes")
}

/// Runs `check` on every regression file under `regressions` (if the directory exists), then on
/// [`iterations`] generated inputs. `fixup`, when it returns true for an input, has repaired its
/// frame (length, checksum) so that the decoder looks past it; it is offered half the inputs.
/// `check` returns whether the decoder accepted the input. A panic in `check` fails the run,
/// naming the input's file.
pub fn run(
    name: &str,
    seeds: Vec<Vec<u8>>,
    regressions: Option<&Path>,
    mut fixup: impl FnMut(&mut Vec<u8>, &mut fastrand::Rng),
    mut check: impl FnMut(&[u8]) -> bool,
) -> FuzzReport {
    let started = Instant::now();
    let mut report = FuzzReport { inputs: 0, accepted: 0 };
    let mut one = |input: &[u8], label: &str, report: &mut FuzzReport| {
        report.inputs += 1;
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(input))) {
            Ok(accepted) => report.accepted += u64::from(accepted),
            Err(_) => {
                let dir = crash_dir();
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("{name}-{label}.bin"));
                let _ = std::fs::write(&path, input);
                panic!(
                    "fuzz {name}: input {label} panicked ({} bytes, saved to {}); keep it as a \
                     regression case once fixed",
                    input.len(),
                    path.display()
                );
            }
        }
    };
    if let Some(dir) = regressions
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for file in files {
            let input = std::fs::read(&file).expect("regression case");
            let label = file.file_name().map(|n| n.to_string_lossy().into_owned());
            one(&input, &label.unwrap_or_default(), &mut report);
        }
    }
    let mut mutator = Mutator::new(seeds);
    for i in 0..iterations() {
        let mut input = mutator.next_input();
        if mutator.rng().bool() {
            fixup(&mut input, mutator.rng());
        }
        one(&input, &i.to_string(), &mut report);
    }
    eprintln!(
        "fuzz {name}: {} inputs, {} accepted, {:.1} s",
        report.inputs,
        report.accepted,
        started.elapsed().as_secs_f64()
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_varied() {
        let seeds = vec![b"{\"a\": 12, \"b\": [1, 2]}".to_vec(), vec![0u8; 64]];
        let mut a = Mutator::new(seeds.clone());
        let mut b = Mutator::new(seeds);
        let xs: Vec<Vec<u8>> = (0..200).map(|_| a.next_input()).collect();
        let ys: Vec<Vec<u8>> = (0..200).map(|_| b.next_input()).collect();
        assert_eq!(xs, ys);
        let distinct: std::collections::HashSet<&Vec<u8>> = xs.iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
    }
}
