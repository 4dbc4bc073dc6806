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
