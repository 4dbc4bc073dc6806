//! `convert`: an image source → a bootseer image in a store.
//!
//! ```text
//!  dir:PATH ─────────────► layer::build::build_from_dir_spooled (common: the one directory walker)
//!  oci:DIR[:TAG] ────────► oci::build_from_layout   ─┐
//!  docker://HOST/REPO:TAG ► registry::build_from_registry ─► oci::build_from_manifest
//!                                                      (layers in order, one BlobWriter each)
//!  (Metadata, data blobs in temp files) ─► layer::build::push_files ─► Store::put_file ─►
//!                                          blobs/<digest>, index
//! ```
//!
//! Bounded memory: a source layer is copied (registry) or read (layout) in chunks into an
//! unlinked temp file under `--tmp-dir` and checked against its digest before it is applied;
//! blocks are compressed on `--threads` threads with a few blocks in flight each and written in
//! order into another unlinked temp file, hashed as written; `put_file` uploads it in pieces.
//! What stays in memory for the whole run is the tree (metadata) alone.
//!
//! This half of fs-image never mounts anything; [`crate::mount`] never converts. Both stand on
//! `bootseer_common::layer` (format, builder, lazy tree), which fs-deps uses too.

pub mod oci;
pub mod registry;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use bootseer_common::layer::progress::ProgressLine;
use bootseer_common::layer::reference::LayerRef;
use bootseer_common::store::{self, OpenOptions};

use std::path::Path;

use bootseer_common::layer::blob::BlobFile;
use bootseer_common::layer::build::{build_from_dir_spooled, push_files};
use bootseer_common::layer::error::{LayerError, Result};
use bootseer_common::layer::format::Metadata;
use bootseer_common::layer::progress::Progress;

pub use bootseer_common::layer::build::{
    BlobReport, ConvertConfig, ConvertReport, build_from_dir, push, push_with,
};

/// Parses a convert source and builds its image: `dir:PATH` (or a bare absolute path),
/// `oci:DIR[:TAG]` or `docker://HOST[:PORT]/REPO:TAG` (also `@sha256:HEX`). Not on a tokio
/// runtime thread: a registry source blocks on its own runtime. The data blobs come back in
/// memory: for tests and small images; [`build_files`] is what `convert` uses.
pub fn build(source: &str, config: &ConvertConfig) -> Result<(Metadata, Vec<Vec<u8>>)> {
    build_with(source, config, &Progress::default())
}

/// [`build`], counting what it does in `progress`.
pub fn build_with(
    source: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<Vec<u8>>)> {
    let (meta, files) = build_files(source, config, progress)?;
    let blobs = files
        .iter()
        .map(|f| f.read_all().map_err(|e| LayerError::io("blob temp file", e)))
        .collect::<Result<_>>()?;
    Ok((meta, blobs))
}

/// [`build_with`], each data blob in an unlinked temp file under `config.tmp_dir()`: memory
/// holds the metadata, one chunk of the layer being read and a few blocks per compression
/// thread, whatever the image's size.
pub fn build_files(
    source: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<BlobFile>)> {
    if let Some(path) = source.strip_prefix("dir:") {
        return build_from_dir_spooled(Path::new(path), config, progress);
    }
    if source.starts_with('/') {
        return build_from_dir_spooled(Path::new(source), config, progress);
    }
    if let Some(spec) = source.strip_prefix("oci:") {
        return oci::build_from_layout(spec, config, progress);
    }
    if source.starts_with("docker://") {
        return registry::build_from_registry(source, config, progress);
    }
    Err(LayerError::Reference {
        reference: source.to_string(),
        reason: "unsupported source: expected dir:PATH, oci:DIR[:TAG] or \
                 docker://HOST[:PORT]/REPO:TAG"
            .into(),
    })
}

/// `convert SOURCE DEST`: returns the report.
pub fn convert(source: &str, dest: &str, config: &ConvertConfig) -> anyhow::Result<ConvertReport> {
    convert_with(source, dest, config, false)
}

/// [`convert`], drawing a progress line on stderr when `show_progress` is set and stderr is a
/// terminal (so never into a pipe, a log file or a test's captured output).
pub fn convert_with(
    source: &str,
    dest: &str,
    config: &ConvertConfig,
    show_progress: bool,
) -> anyhow::Result<ConvertReport> {
    let dest = LayerRef::parse(dest)?;
    let progress = Arc::new(Progress::default());
    // Dropped on every return: an error message then starts on a line of its own.
    let line = (show_progress && std::io::stderr().is_terminal())
        .then(|| ProgressLine::start(progress.clone(), Box::new(std::io::stderr())));
    let (meta, blobs) = build_files(source, config, &progress)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = rt.block_on(async {
        let store = store::open(&dest.store_url, &OpenOptions::default())
            .await
            .with_context(|| format!("opening {}", dest.store_url))?;
        anyhow::Ok(push_files(&store, &dest, &meta, &blobs, &progress, Default::default()).await?)
    })?;
    if let Some(line) = line {
        line.finish();
    }
    Ok(report)
}
