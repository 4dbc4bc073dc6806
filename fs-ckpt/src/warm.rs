//! Prefetch at mount (`--prefetch GLOB`, `-o prefetch=GLOB`): the files a job reads as soon as
//! it starts begin to cross the network while the job is still importing its packages.
//!
//! A job's start reads the checkpoint only after seconds of imports; on a link-bound start that
//! idle link is the largest waste left once the image and the dependencies are replayed. The
//! mount knows which files will be read (the operator names them) and in what order:
//!
//! - a `.safetensors` file starts with an 8-byte little-endian length and a JSON header naming
//!   every tensor's byte range; loaders (`safetensors.load_file`, `safe_open(...).keys()`,
//!   `load_state_dict`) read the header and then the tensors **by name, sorted**, which is not
//!   the order the bytes lie in when a writer laid them out by dtype or size. The warm queue
//!   takes the header, then tensors in that order;
//! - any other file is taken from its start.
//!
//! What is queued is bounded by the same budget as one sequential reader's window (half of the
//! cache's part of `--memory`, over all matched files in path order): prefetch that cannot be
//! held would be evicted unread. When the job opens the file, it shares the warmed chunks (the
//! same pinned version), and its own sequential window carries on from there; a chunk it has
//! read is released as for any reader. The pure parts (matching, header parsing, the order)
//! live here; [`crate::fs::CkptFs::warm`] drives them.
//!
//! Without `--prefetch`, the same header serves each handle: [`TensorIndex`] is read when a
//! `.safetensors` file is opened, and [`KeyRun`] follows the handle's reads in name order, so
//! a key-order loader gets the next tensors by name queued instead of the next bytes
//! (`CkptFs::advance_window` drives it; `--no-key-order` turns it off).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::stripe::StripePlan;

/// Largest safetensors header accepted (the format's own limit is 100 MB).
pub const MAX_HEADER: u64 = 100 << 20;

/// Whether `path` (relative to the mount's root, `/`-separated) matches `pattern`: `*` is any
/// run of characters but `/`, `?` one character but `/`, `**` any run including `/`. A pattern
/// without `/` is matched against the file's name alone, at any depth (as in `.gitignore`);
/// `run/**/x` matches `run/a/x` and deeper, not `run/x`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let subject = match pattern.contains('/') {
        true => path,
        false => path.rsplit('/').next().unwrap_or(path),
    };
    matches(pattern.trim_start_matches('/').as_bytes(), subject.as_bytes())
}

/// The key prefix under which every path `pattern` matches lies ([`glob_match`]): its directories
/// before the first wildcard, with a trailing `/` ("" for the whole tree, which a pattern
/// without `/` needs: it matches names at any depth). Listing that prefix finds every match.
pub fn glob_prefix(pattern: &str) -> String {
    if !pattern.contains('/') {
        return String::new();
    }
    let pattern = pattern.trim_start_matches('/');
    let literal = &pattern[..pattern.find(['*', '?']).unwrap_or(pattern.len())];
    literal.rfind('/').map_or(String::new(), |i| literal[..=i].to_string())
}

/// Wildcard matching by dynamic programming over (pattern position, subject position):
/// O(|p| × |s|) whatever the number of stars (plain backtracking is exponential in them).
fn matches(p: &[u8], s: &[u8]) -> bool {
    // ok[j]: p[..i] matches s[..j], for the current i.
    let mut ok = vec![false; s.len() + 1];
    ok[0] = true;
    let mut i = 0;
    while i < p.len() {
        let mut next = vec![false; s.len() + 1];
        let step = match (p[i], p.get(i + 1)) {
            (b'*', Some(b'*')) => {
                // Any run: next[j] = some ok[k], k <= j.
                let mut any = false;
                for j in 0..=s.len() {
                    any |= ok[j];
                    next[j] = any;
                }
                2
            }
            (b'*', _) => {
                // Any run without '/': ok[k] for k <= j with no '/' in s[k..j].
                let mut any = false;
                for j in 0..=s.len() {
                    if j > 0 && s[j - 1] == b'/' {
                        any = false;
                    }
                    any |= ok[j];
                    next[j] = any;
                }
                1
            }
            (c, _) => {
                for j in 1..=s.len() {
                    next[j] =
                        ok[j - 1] && (if c == b'?' { s[j - 1] != b'/' } else { s[j - 1] == c });
                }
                1
            }
        };
        ok = next;
        i += step;
    }
    ok[s.len()]
}

/// The header's length from a safetensors file's first 8 bytes, checked against the file's
/// length and [`MAX_HEADER`].
pub fn header_len(first: &[u8], file_len: u64) -> Result<u64, String> {
    let bytes: [u8; 8] = first.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        format!("{} bytes, shorter than a safetensors length prefix", first.len())
    })?;
    let len = u64::from_le_bytes(bytes);
    if len > MAX_HEADER || len > file_len.saturating_sub(8) {
        return Err(format!("header length {len} does not fit a file of {file_len} bytes"));
    }
    Ok(len)
}

/// The tensors of a safetensors header (`json`, the bytes after the length prefix), as
/// absolute byte ranges of the file, **sorted by name** (the order loaders read them). Every
/// range is checked to lie within the file; `__metadata__` is skipped.
pub fn tensor_ranges(json: &[u8], file_len: u64) -> Result<Vec<(String, Range<u64>)>, String> {
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let base = 8 + json.len() as u64;
    let mut out = Vec::with_capacity(header.len());
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = entry
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| format!("tensor {name:?} has no data_offsets [start, end]"))?;
        let (start, end) = (offsets.0.saturating_add(base), offsets.1.saturating_add(base));
        if offsets.0 > offsets.1 || end > file_len {
            return Err(format!(
                "tensor {name:?} at {}..{} lies outside the file's {} data bytes",
                offsets.0,
                offsets.1,
                file_len.saturating_sub(base)
            ));
        }
        out.push((name, start..end));
    }
    Ok(out)
}

/// Chunk indices of `plan` to warm, in the order they will be wanted, from `ranges` (byte
/// ranges in read order), each chunk once, until `budget` bytes are taken. Returns the chunks
/// and the bytes they hold.
pub fn chunks_in_order(ranges: &[Range<u64>], plan: &StripePlan, budget: u64) -> (Vec<u64>, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut out, mut taken) = (Vec::new(), 0u64);
    for r in ranges {
        for i in plan.covering(r.clone()) {
            if !seen.insert(i) {
                continue;
            }
            let chunk = plan.range(i);
            let bytes = chunk.end - chunk.start;
            if taken + bytes > budget {
                return (out, taken);
            }
            taken += bytes;
            out.push(i);
        }
    }
    (out, taken)
}

/// A safetensors file's tensors as one handle's reads meet them: in name order (the order
/// loaders read them), and found by byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorIndex {
    /// Where the header (length prefix and JSON) ends.
    header_end: u64,
    /// Tensor byte ranges in name order.
    by_name: Vec<Range<u64>>,
    /// (start, end, name index) of the non-empty tensors, sorted by start.
    by_start: Vec<(u64, u64, usize)>,
}

impl TensorIndex {
    /// The index of a file whose header ends at `header_end`, of `tensors` (as
    /// [`tensor_ranges`] returns them: sorted by name).
    pub fn new(header_end: u64, tensors: &[(String, Range<u64>)]) -> Self {
        let by_name: Vec<Range<u64>> = tensors.iter().map(|(_, r)| r.clone()).collect();
        let mut by_start: Vec<(u64, u64, usize)> = by_name
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(k, r)| (r.start, r.end, k))
            .collect();
        by_start.sort_unstable();
        Self { header_end, by_name, by_start }
    }

    /// The order loaders read the file in: the header, then each tensor by name.
    pub fn read_order(&self) -> Vec<Range<u64>> {
        std::iter::once(0..self.header_end).chain(self.by_name.iter().cloned()).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the file has no tensors.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Where the first tensor in the file starts (the end of the header, but for padding).
    pub fn data_start(&self) -> u64 {
        self.by_start.first().map_or(0, |&(start, _, _)| start)
    }

    /// The first tensor start after byte `offset`: where a run from there first crosses into
    /// another tensor.
    pub fn first_start_after(&self, offset: u64) -> Option<u64> {
        let after = self.by_start.partition_point(|&(start, _, _)| start <= offset);
        self.by_start.get(after).map(|&(start, _, _)| start)
    }

    /// The tensor a read beginning at `offset` is the start of, if any: one whose first byte
    /// lies in `offset..offset + slack` (the kernel rounds a pread's offset down to its page).
    /// A read that begins in the header is the header's, even when the first tensor starts
    /// within its last page: a loader reads the header first, and that read says nothing about
    /// the tensor after it.
    pub fn begun_at(&self, offset: u64, slack: u64) -> Option<usize> {
        if offset < self.header_end {
            return None;
        }
        let first = self.by_start.partition_point(|&(start, _, _)| start < offset);
        let &(start, _, k) = self.by_start.get(first)?;
        (start < offset.saturating_add(slack)).then_some(k)
    }

    /// The bytes of the `k`-th tensor by name.
    pub fn range(&self, k: usize) -> Range<u64> {
        self.by_name.get(k).cloned().unwrap_or(0..0)
    }

    /// The name index of the tensor holding byte `offset` (none in the header or a gap).
    pub fn at(&self, offset: u64) -> Option<usize> {
        let after = self.by_start.partition_point(|&(start, _, _)| start <= offset);
        let &(_, end, k) = self.by_start.get(after.checked_sub(1)?)?;
        (offset < end).then_some(k)
    }
}

/// A handle's run through a safetensors file in name order, which decides its key-order
/// prefetch: a loader (`load_file`, `load_state_dict`) reads tensor after tensor **by name**,
/// so its reads jump about the file, and a window ahead in bytes would fetch what it does
/// not read next. Two steps in name order that jump in bytes make it a key-order reader
/// (one could be chance; a reader in byte order, reading on into the next tensor by name
/// wherever it lies, never takes any).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyRun {
    /// Name index of the tensor the run is in.
    current: Option<usize>,
    /// Steps to the next tensor by name that jumped in bytes.
    jumps: u32,
    /// Bytes the run has read.
    pub bytes: u64,
    /// Tensors before this name index are queued (or read) in this run.
    pub queued: usize,
}

/// What a read did to a [`KeyRun`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStep {
    /// The read is in the run's tensor or the next one by name.
    Continues,
    /// The read is elsewhere but continues the handle's byte run (read-ahead spilling into
    /// the tensor that lies next in the file): the key run is left as it was.
    Spill,
    /// The read starts a new run (the old one is over).
    Restarts,
    /// The read is outside every tensor (the header, a gap).
    Outside,
}

impl KeyRun {
    /// Notes a read of `[offset, end)`; `in_byte_run`: it continues the handle's byte run.
    pub fn step(
        &mut self,
        index: &TensorIndex,
        offset: u64,
        end: u64,
        in_byte_run: bool,
    ) -> KeyStep {
        let Some(k) = index.at(offset) else { return KeyStep::Outside };
        match self.current {
            Some(c) if k == c => {}
            Some(c) if k == c + 1 => {
                // A reader in byte order meets the next tensor by name too, now and then,
                // by reading on: only a read that left the byte run to get there counts.
                if !in_byte_run {
                    self.jumps = self.jumps.saturating_add(1);
                }
                self.current = Some(k);
            }
            _ if in_byte_run && self.current.is_some() => return KeyStep::Spill,
            _ => {
                *self = KeyRun { current: Some(k), jumps: 0, bytes: 0, queued: k };
                self.bytes = end - offset;
                return KeyStep::Restarts;
            }
        }
        self.bytes = self.bytes.saturating_add(end - offset);
        KeyStep::Continues
    }

    /// Whether the run is a key-order loader's (see the type's doc).
    pub fn is_key_order(&self) -> bool {
        self.jumps >= 2
    }

    /// The name index of the run's tensor.
    pub fn current(&self) -> Option<usize> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_and_paths() {
        assert!(glob_match("*.safetensors", "model-00001-of-00003.safetensors"));
        assert!(glob_match("*.safetensors", "run/step-100/model.safetensors"));
        assert!(!glob_match("*.safetensors", "model.safetensors.index.json"));
        assert!(glob_match("run/*/model.bin", "run/step-1/model.bin"));
        assert!(!glob_match("run/*/model.bin", "run/a/b/model.bin"));
        assert!(glob_match("run/**/model.bin", "run/a/b/model.bin"));
        assert!(glob_match("/run/**", "run/a/b"));
        assert!(glob_match("shard-?.pt", "x/shard-3.pt"));
        assert!(!glob_match("shard-?.pt", "shard-10.pt"));
        for (pattern, prefix) in [
            ("*.safetensors", ""),
            ("run/step-100/*.bin", "run/step-100/"),
            ("/run/x.bin", "run/"),
            ("run/**/x", "run/"),
            ("ru*/x", ""),
            ("run/s?/x", "run/"),
        ] {
            assert_eq!(glob_prefix(pattern), prefix, "{pattern}");
        }
        // Every match of a pattern lies under its prefix.
        for (pattern, path) in [("run/**/x", "run/a/b/x"), ("/run/x.bin", "run/x.bin")] {
            assert!(glob_match(pattern, path) && path.starts_with(&glob_prefix(pattern)));
        }
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("", "anything"));
        assert!(glob_match("a*/b", "abc/b") && !glob_match("a*b", "a/b"));
        // Many stars against a long name: polynomial, not exponential.
        let long = "a".repeat(255);
        assert!(!glob_match("*a*a*a*a*a*a*a*a*b", &long));
        assert!(glob_match("*a*a*a*a*a*a*a*a*", &long));
    }

    fn header(entries: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        map.insert("__metadata__".into(), serde_json::json!({"format": "np"}));
        for (name, a, b) in entries {
            map.insert(
                (*name).into(),
                serde_json::json!({"dtype": "F32", "shape": [b.saturating_sub(*a) / 4], "data_offsets": [a, b]}),
            );
        }
        serde_json::to_vec(&map).expect("json")
    }

    #[test]
    fn tensors_come_sorted_by_name_with_file_offsets() {
        let json = header(&[("b", 0, 40), ("a", 40, 48), ("c", 48, 48)]);
        let base = 8 + json.len() as u64;
        let got = tensor_ranges(&json, base + 48).expect("valid");
        let want = vec![
            ("a".to_string(), base + 40..base + 48),
            ("b".to_string(), base..base + 40),
            ("c".to_string(), base + 48..base + 48),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let json = header(&[("a", 0, 40)]);
        let base = 8 + json.len() as u64;
        assert!(tensor_ranges(&json, base + 39).is_err_and(|e| e.contains("outside")));
        assert!(tensor_ranges(b"[1,2]", 100).is_err());
        assert!(
            tensor_ranges(br#"{"a":{"dtype":"F32"}}"#, 100)
                .is_err_and(|e| e.contains("data_offsets"))
        );
        assert!(tensor_ranges(&header(&[("a", 9, 4)]), 1 << 20).is_err());
        assert!(header_len(&[1, 2, 3], 100).is_err());
        assert!(header_len(&u64::MAX.to_le_bytes(), 1 << 40).is_err());
        assert!(header_len(&93u64.to_le_bytes(), 100).is_err());
        assert_eq!(header_len(&92u64.to_le_bytes(), 100), Ok(92));
    }

    /// Tensors a (0..100), b (100..200), c (200..300) lie in that byte order; by name the
    /// index lists them as the names given.
    fn index(names_by_start: &[&str]) -> TensorIndex {
        let mut t: Vec<(String, Range<u64>)> = names_by_start
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), 100 * i as u64 + 100..100 * i as u64 + 200))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        TensorIndex::new(100, &t)
    }

    #[test]
    fn a_tensor_is_found_by_its_bytes() {
        let idx = index(&["c", "a", "d", "b"]);
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.range(0), 200..300, "a lies second");
        assert_eq!(idx.at(99), None, "the header");
        assert_eq!(idx.data_start(), 100);
        let order = idx.read_order();
        assert_eq!(order[..3], [0..100, 200..300, 400..500], "header, then a, b by name");
        assert_eq!(idx.first_start_after(0), Some(100), "from the header");
        assert_eq!(idx.first_start_after(100), Some(200));
        assert_eq!(idx.first_start_after(399), Some(400));
        assert_eq!(idx.first_start_after(400), None);
        assert_eq!(idx.at(100), Some(2), "c, third by name, lies first");
        assert_eq!(idx.at(299), Some(0));
        assert_eq!(idx.at(499), Some(1), "b lies last");
        assert_eq!(idx.at(500), None, "past the last tensor");
    }

    #[test]
    fn a_read_begun_at_a_tensors_first_page_is_that_tensors_but_the_headers_is_not() {
        // Tensors at 100..200 (c), 200..300 (a), 300..400 (d), 400..500 (b); the header ends at
        // 100, inside the page the first tensor starts in.
        let idx = index(&["c", "a", "d", "b"]);
        assert_eq!(idx.begun_at(0, 4096), None, "the header's read, not c's");
        assert_eq!(idx.begun_at(99, 4096), None, "still the header");
        assert_eq!(idx.begun_at(100, 4096), Some(2), "c at its first byte");
        assert_eq!(idx.begun_at(150, 4096), Some(0), "a, the next start, within the slack");
        assert_eq!(idx.begun_at(150, 40), None, "a is 50 bytes on: past a 40-byte slack");
        assert_eq!(idx.begun_at(150, 51), Some(0));
        assert_eq!(idx.begun_at(400, 1), Some(1), "b at its first byte");
        assert_eq!(idx.begun_at(401, 4096), None, "no tensor starts after b's first byte");
    }

    #[test]
    fn name_order_is_told_from_byte_order_and_spills() {
        // Name order a, b, c, d lies at 200, 400, 100, 300: every step jumps in bytes.
        let idx = index(&["c", "a", "d", "b"]);
        let mut run = KeyRun::default();
        assert_eq!(run.step(&idx, 0, 100, false), KeyStep::Outside);
        assert_eq!(run.step(&idx, 200, 250, false), KeyStep::Restarts);
        assert_eq!(run.step(&idx, 250, 300, true), KeyStep::Continues);
        // Read-ahead past a's end into d (what lies next in bytes) is a spill.
        assert_eq!(run.step(&idx, 300, 340, true), KeyStep::Spill);
        assert!(!run.is_key_order());
        assert_eq!(run.step(&idx, 400, 500, false), KeyStep::Continues, "b");
        assert!(!run.is_key_order(), "one jump could be chance");
        assert_eq!(run.step(&idx, 100, 200, false), KeyStep::Continues, "c");
        assert!(run.is_key_order());
        assert_eq!(run.bytes, 50 + 50 + 100 + 100);
        // A jump to a tensor out of turn starts again.
        assert_eq!(run.step(&idx, 400, 450, false), KeyStep::Restarts);
        assert!(!run.is_key_order());
        assert_eq!((run.current(), run.queued, run.bytes), (Some(1), 1, 50));
        // A reader in byte order never takes a jump, whichever order the names lie in: it
        // meets a, b, c in turn as it reads on, with x and y between them or not.
        let layouts: [&[&str]; 3] =
            [&["a", "b", "c", "d"], &["a", "x", "b", "y", "c"], &["c", "a", "d", "b"]];
        for names in layouts {
            let idx = index(names);
            let mut run = KeyRun::default();
            let end = 100 * (names.len() as u64 + 1);
            for start in (100..end).step_by(50) {
                run.step(&idx, start, start + 50, start > 100);
            }
            assert!(!run.is_key_order(), "{names:?}");
        }
    }

    #[test]
    fn chunks_follow_the_ranges_order_once_each_within_the_budget() {
        // Chunks of 10 bytes, a file of 95: the last chunk holds 5.
        let plan = StripePlan::new(95, 1000, 10);
        let (chunks, bytes) = chunks_in_order(&[0..5, 60..95, 3..25], &plan, 1000);
        assert_eq!(chunks, vec![0, 6, 7, 8, 9, 1, 2]);
        assert_eq!(bytes, 65);
        let (chunks, bytes) = chunks_in_order(&[60..95, 0..30], &plan, 40);
        assert_eq!((chunks, bytes), (vec![6, 7, 8, 9], 35));
        assert_eq!(chunks_in_order(&[50..50, 200..300], &plan, 100), (vec![], 0));
        // Blocks of 25: chunks 0..10, 10..20, 20..25, then 25..35 (index 3).
        let plan = StripePlan::new(60, 25, 10);
        let straddling = [22..27, 27..27];
        assert_eq!(chunks_in_order(&straddling, &plan, 100), (vec![2, 3], 15));
    }
}
