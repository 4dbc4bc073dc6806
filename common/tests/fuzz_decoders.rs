//! Fuzzing the decoders of untrusted input in `common` (issue 10 item 9): the metadata blob,
//! the trace, the image index JSON, and mount options in both calling forms. Each test runs
//! `BOOTSEER_FUZZ_ITERS` generated inputs (10,000 by default; `scripts/fuzz` runs a million in
//! a release build) and asserts that none panics; inputs that decode are also put through what
//! a mount does with them next, so a decoder that lets a bad value through is caught too.
//! Crashes found are kept under `tests/fuzz_regressions/<decoder>/` and replayed first.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bootseer_common::cache::{BlockCache, CacheConfig};
use bootseer_common::layer::build::{ConvertConfig, build_from_dir};
use bootseer_common::layer::format::{Descriptor, HEADER_LEN, Index, MAGIC, Metadata, media};
use bootseer_common::layer::fs::LayerFs;
use bootseer_common::mount::{MountArgs, options};
use bootseer_common::testing::fuzz;
use bootseer_common::testing::mem::MemStore;
use bootseer_common::trace::{BlobEntry, Record, Trace};

fn regressions(decoder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(decoder)
}

/// Frames a metadata JSON body the way `Metadata::encode` does (magic, version, length, crc).
fn frame_metadata(json: &[u8]) -> Vec<u8> {
    let body = zstd::bulk::compress(json, 1).expect("compress");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&bootseer_common::layer::format::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A small tree with every kind of entry, converted: the metadata seed.
fn sample_metadata() -> Metadata {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/deep/er")).expect("mkdir");
    std::fs::write(root.join("etc/hostname"), b"fuzz\n").expect("write");
    std::fs::write(root.join("etc/deep/er/big"), vec![7u8; 9000]).expect("write");
    std::fs::write(root.join("empty"), b"").expect("write");
    std::fs::hard_link(root.join("etc/hostname"), root.join("hard")).expect("link");
    std::os::unix::fs::symlink("../etc/hostname", root.join("etc/link")).expect("symlink");
    let _ = xattr::set(root.join("etc/hostname"), "user.k", b"v");
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644))
        .expect("mkfifo");
    let config = ConvertConfig { block_size: 4096, ..ConvertConfig::default() };
    build_from_dir(root, &config).expect("build").0
}

/// What a mount does with decoded metadata: build the tree and ask every inode what the kernel
/// would ask. A decoder that let an out-of-range index through panics here.
fn exercise(meta: Metadata, rt: &tokio::runtime::Runtime) {
    let cache = BlockCache::new(
        CacheConfig { memory_bytes: 1 << 20, ..CacheConfig::default() },
        rt.handle().clone(),
    )
    .expect("cache");
    let n = meta.inodes.len() as u64;
    let Ok(fs) = LayerFs::new(meta, Arc::new(MemStore::new()), cache, None) else { return };
    for ino in 1..=n.min(4096) {
        let _ = fs.getattr(ino);
        if let Ok(entries) = fs.readdir(ino) {
            for e in entries.iter().take(64) {
                let _ = fs.lookup(ino, &e.name);
            }
        }
        let _ = fs.readlink(ino);
        let _ = fs.listxattr(ino);
    }
    let _ = fs.getattr(0);
    let _ = fs.getattr(n + 1);
}

#[test]
fn metadata_decode_never_panics() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let meta = sample_metadata();
    let blob = meta.encode().expect("encode");
    let json = serde_json::to_vec(&meta).expect("json");
    let pretty = serde_json::to_vec_pretty(&meta).expect("json");
    // Seeds: framed blobs (the frame is fuzzed) and JSON bodies (framed fresh per input, so the
    // JSON and `validate` are fuzzed behind a correct frame).
    let seeds = vec![blob, json, pretty];
    let report = fuzz::run(
        "metadata",
        seeds,
        Some(&regressions("metadata")),
        |input, _| {
            // Repair a framed input's length and checksum.
            if input.len() >= HEADER_LEN && input[..8] == MAGIC {
                let body_len = (input.len() - HEADER_LEN) as u64;
                input[12..20].copy_from_slice(&body_len.to_le_bytes());
                let crc = crc32fast::hash(&input[HEADER_LEN..]);
                input[20..24].copy_from_slice(&crc.to_le_bytes());
            }
        },
        |input| {
            let framed;
            let data = if input.starts_with(&MAGIC) {
                input
            } else {
                framed = frame_metadata(input);
                &framed[..]
            };
            match Metadata::decode(data) {
                Ok(meta) => {
                    exercise(meta, &rt);
                    true
                }
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        },
    );
    assert!(report.inputs >= fuzz::iterations());
    assert!(report.accepted > 0, "no generated metadata decoded: the fuzzer stays shallow");
}

fn sample_traces() -> Vec<Trace> {
    let blobs = vec![
        BlobEntry { id: format!("sha256:{}", "ab".repeat(32)), block_size: 4096, block_count: 50 },
        BlobEntry {
            id: format!("sha256:{}", "cd".repeat(32)),
            block_size: 1 << 20,
            block_count: 3,
        },
    ];
    let files = vec!["/usr/lib/python3/site.py".to_string(), "/etc/hostname".to_string()];
    let records = (0..40u64)
        .map(|i| Record {
            blob: (i % 7 == 0) as u32,
            block: if i % 7 == 0 { i % 3 } else { (i * 13) % 50 },
            at_us: i * 997,
            file: (i % 2) as u32,
            seen: 1 + (i % 3) as u32,
        })
        .fold(Vec::<Record>::new(), |mut acc, r| {
            if !acc.iter().any(|x| x.blob == r.blob && x.block == r.block) {
                acc.push(r);
            }
            acc
        });
    vec![
        Trace { recordings: 3, blobs, files, records },
        Trace { recordings: 1, ..Trace::default() },
    ]
}

#[test]
fn trace_decode_never_panics() {
    let seeds: Vec<Vec<u8>> = sample_traces().iter().map(Trace::encode).collect();
    for (seed, trace) in seeds.iter().zip(sample_traces()) {
        assert_eq!(Trace::decode(seed).expect("seed decodes"), trace);
    }
    let report = fuzz::run(
        "trace",
        seeds,
        Some(&regressions("trace")),
        |input, _| {
            // Repair the length field and the trailing CRC-32.
            if input.len() >= 24 {
                let body = (input.len() - 24) as u64;
                input[12..20].copy_from_slice(&body.to_le_bytes());
                let end = input.len() - 4;
                let crc = crc32fast::hash(&input[..end]);
                input[end..].copy_from_slice(&crc.to_le_bytes());
            }
        },
        |input| match Trace::decode(input) {
            Ok(trace) => {
                // What a mount does with a stored trace: summarise, show, merge, re-encode.
                let _ = trace.summary();
                let _ = trace.to_string();
                let merged = Trace::merge([&trace, &trace], 1 << 16);
                assert!(merged.validate().is_ok(), "a merge of a valid trace is invalid");
                assert_eq!(Trace::decode(&trace.encode()).as_ref(), Ok(&trace), "round trip");
                true
            }
            Err(e) => {
                let _ = e.to_string();
                false
            }
        },
    );
    assert!(report.accepted > 0, "no generated trace decoded: the fuzzer stays shallow");
}

#[test]
fn index_decode_never_panics() {
    let desc = |media_type: &str, data: &[u8]| Descriptor {
        media_type: media_type.into(),
        digest: bootseer_common::digest::Digest::of(data).to_string(),
        size: data.len() as u64,
    };
    let mut index =
        Index::new(media::ARTIFACT, vec![desc(media::METADATA, b"m"), desc(media::BLOB, b"b")]);
    index.annotations.insert("org.bootseer.key".into(), "{\"inputs\": [1, 2]}".into());
    let trace_index = Index::new(media::TRACE_ARTIFACT, vec![desc(media::TRACE, b"t")]);
    let seeds = vec![
        serde_json::to_vec(&index).expect("json"),
        serde_json::to_vec_pretty(&trace_index).expect("json"),
    ];
    let report = fuzz::run(
        "index",
        seeds,
        Some(&regressions("index")),
        |_, _| {},
        |input| {
            let a = Index::decode(input, media::ARTIFACT);
            let b = Index::decode(input, media::TRACE_ARTIFACT);
            if let Ok(i) = a.as_ref().or(b.as_ref()) {
                let _ = serde_json::to_vec(i);
            }
            a.is_ok() || b.is_ok()
        },
    );
    assert!(report.accepted > 0, "no generated index decoded: the fuzzer stays shallow");
}

/// Splits an input into argv words at NUL bytes (words may be any bytes, as argv may be).
fn argv(input: &[u8]) -> Vec<OsString> {
    input.split(|&b| b == 0).map(|w| OsString::from_vec(w.to_vec())).collect()
}

#[test]
fn mount_options_never_panic() {
    let own = bootseer_common::layer::serve::LAYER_KEYS;
    let seeds: Vec<Vec<u8>> = [
        "file:///s/img:v1\0/mnt\0-o\0ro,suid,dev,allow_other,cache_dir=/c,threads=4,read_ahead=1M",
        "docker://reg:5000/r:t\0/m\0-n\0-oro,x-systemd.after=network.target,nofail,_netdev,dev,suid",
        "src\0/m\0-o\0trace=replay,memory=1G,cache_size=10G,workload=w,trace_window=30,log=/l,pidfile=/p",
        "src\0/m\0-o\0nosuid,nodev,noexec,summary=/s.json,foreground,read_ahead=128k,dev",
        "a\0b\0-v\0-s\0-o\0=,,=,a=b=c,threads=99999999999999999999,read_ahead=18446744073709551615G",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let report = fuzz::run(
        "mount-options",
        seeds,
        Some(&regressions("mount-options")),
        |_, _| {},
        |input| {
            let args = argv(input);
            let helper = MountArgs::parse_helper(&args);
            let text = String::from_utf8_lossy(input).replace('\0', ",");
            let direct = options::parse(&options::split_all(&[text]), own);
            let mut accepted = direct.is_ok();
            if let Some(h) = helper {
                let _ = h.option("cache_dir");
                if let Ok(parsed) = options::parse(&h.options, own) {
                    let mut session = bootseer_common::layer::session::SessionConfig::default();
                    accepted = parsed.own.iter().all(|(k, v)| {
                        bootseer_common::layer::serve::apply_layer_option(&mut session, k, v)
                            .is_ok()
                    });
                    let mut config = bootseer_common::mount::MountConfig::default();
                    config.apply(&parsed);
                    let _ = config.fuser_config();
                }
            }
            accepted
        },
    );
    assert!(report.accepted > 0);
}
