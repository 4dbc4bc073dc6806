//! Fuzzing tar layer application, the part of `convert` that reads untrusted layer bytes (issue
//! 10 item 9). `BOOTSEER_FUZZ_ITERS` inputs (10,000 by default; `scripts/fuzz` runs a million
//! in a release build), each applied alone and over a fixed lower layer (so whiteouts, opaque
//! markers and hardlinks meet entries below them); none may panic, and what converts must
//! encode into metadata that decodes. Crashes found are kept under
//! `tests/fuzz_regressions/tar/` and replayed first.

use std::path::Path;

use bootseer_common::layer::format::Metadata;
use bootseer_common::testing::fuzz;
use bootseer_image::convert::ConvertConfig;
use bootseer_image::convert::oci::apply_tar_layers;

/// One tar entry for a seed.
struct E<'a> {
    path: &'a str,
    kind: tar::EntryType,
    data: &'a [u8],
    link: &'a str,
    pax: &'a [(&'a str, &'a [u8])],
}

fn e<'a>(path: &'a str, kind: tar::EntryType, data: &'a [u8], link: &'a str) -> E<'a> {
    E { path, kind, data, link, pax: &[] }
}

/// A layer from `entries`; `gnu` picks GNU headers (long names as GNU records), else ustar.
fn layer(entries: &[E<'_>], gnu: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        if !entry.pax.is_empty() {
            b.append_pax_extensions(entry.pax.iter().copied()).expect("pax");
        }
        let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
        h.set_entry_type(entry.kind);
        h.set_mode(if entry.kind == tar::EntryType::Directory { 0o755 } else { 0o4755 });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(entry.data.len() as u64);
        if entry.kind == tar::EntryType::Char {
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
        }
        if entry.path.starts_with('/') {
            // The tar crate refuses absolute names; umoci writes them. Set the bytes directly.
            let name = &mut h.as_old_mut().name;
            name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
            h.set_cksum();
            b.append(&h, entry.data).expect("append absolute");
        } else if entry.link.is_empty() {
            b.append_data(&mut h, entry.path, entry.data).expect("append");
        } else {
            b.append_link(&mut h, entry.path, entry.link).expect("append link");
        }
    }
    b.into_inner().expect("tar")
}

fn lower() -> Vec<u8> {
    use tar::EntryType as T;
    layer(
        &[
            e("etc/", T::Directory, b"", ""),
            e("etc/passwd", T::Regular, b"root:x:0:0::/root:/bin/sh\n", ""),
            e("usr/lib/python3/", T::Directory, b"", ""),
            e("usr/lib/python3/os.py", T::Regular, &[b'x'; 5000], ""),
            e("var/cache/old", T::Regular, b"old", ""),
        ],
        false,
    )
}

fn seeds() -> Vec<Vec<u8>> {
    use tar::EntryType as T;
    let long = format!("deep/{}/file", "d".repeat(150));
    let big = vec![0x5au8; 70_000];
    vec![
        layer(
            &[
                e("bin/", T::Directory, b"", ""),
                e("bin/sh", T::Regular, b"#!/bin/sh\n", ""),
                e("bin/bash", T::Link, b"", "bin/sh"),
                e("bin/dash", T::Symlink, b"", "/bin/sh"),
                e("etc/.wh.passwd", T::Regular, b"", ""),
                e("usr/lib/python3/.wh..wh..opq", T::Regular, b"", ""),
                e("usr/lib/python3/new.py", T::Regular, &big, ""),
                e("dev/null", T::Char, b"", ""),
                e("run/fifo", T::Fifo, b"", ""),
            ],
            false,
        ),
        layer(
            &[
                e("/", T::Directory, b"", ""),
                e("/abs/name", T::Regular, b"rooted", ""),
                e(&long, T::Regular, b"long name", ""),
                e("var/cache/", T::Directory, b"", ""),
                e("var/cache/.wh.old", T::Regular, b"", ""),
                e("h", T::Link, b"", "etc/passwd"),
            ],
            true,
        ),
        layer(
            &[E {
                path: "with/pax",
                kind: T::Regular,
                data: b"pax data",
                link: "",
                pax: &[
                    ("mtime", b"1700000000.123456789"),
                    ("SCHILY.xattr.user.k", b"value"),
                    ("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0, 0, 0, 0]),
                    ("uid", b"123456"),
                    ("gid", b"654321"),
                ],
            }],
            false,
        ),
        lower(),
    ]
}

/// Recomputes the checksum of every block that looks like a tar header, so a mutated header is
/// read rather than refused for its checksum.
fn fix_checksums(data: &mut [u8]) {
    for block in data.chunks_exact_mut(512) {
        if &block[257..262] == b"ustar" {
            block[148..156].fill(b' ');
            let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
            let field = format!("{sum:06o}\0 ");
            block[148..156].copy_from_slice(field.as_bytes());
        }
    }
}

#[test]
fn tar_layers_never_panic() {
    let config = ConvertConfig { block_size: 4096, level: 1, ..ConvertConfig::default() };
    let lower = lower();
    let check = |layers: &[&[u8]]| match apply_tar_layers(layers, &config) {
        Ok((meta, blobs)) => {
            assert_eq!(blobs.len(), layers.len());
            let back = Metadata::decode(&meta.encode().expect("encode")).expect("decode");
            assert_eq!(back, meta, "converted metadata does not round-trip");
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };
    for seed in seeds() {
        assert!(check(&[&lower, &seed]), "a seed layer does not convert");
    }
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/tar");
    let report = fuzz::run(
        "tar",
        seeds(),
        Some(&regressions),
        |input, _| fix_checksums(input),
        |input| {
            let alone = check(&[input]);
            let over = check(&[&lower, input]);
            alone || over
        },
    );
    assert!(report.accepted > 0, "no generated layer converted: the fuzzer stays shallow");
}
