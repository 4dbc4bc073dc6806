//! `bootseer-image`: a container image mounted lazily over FUSE, with hot-block record and
//! replay.
//!
//! ```text
//!  convert: dir: | oci: | docker:// ──► convert ──► layer::format::{Metadata, data blobs, Index} ──► Store
//!  mount:   Store ──► layer::LayerSession ──► layer::LayerFs ──► layer::LayerFuse ──► kernel
//! ```
//!
//! fs-image is split by lifecycle: [`convert`] (OCI layouts and registries, tar layers, with
//! [`convert::oci`] and [`convert::registry`]) never mounts; [`mount`] (the binary's mount and
//! trace commands, on the lifecycle in `bootseer_common::mount`) never converts. The format, the
//! directory builder and the lazy tree are `bootseer_common::layer`, shared with fs-deps.

pub mod convert;
pub mod mount;

pub use bootseer_common::layer::{
    LayerError, LayerFs, LayerFuse, LayerRef, LayerSession, MountSummary, SessionConfig, TraceMode,
    format,
};
