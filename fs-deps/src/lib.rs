//! `bootseer-deps`: dependency snapshots mounted instead of installed.
//!
//! A training job's setup (`pip install -r requirements.txt`, `apt-get install`, a `setup.sh`)
//! gives the same result on every start of every node. `bootseer-deps run` runs it once,
//! captures what it changed as a snapshot keyed by everything that decides the result, and on
//! every later start mounts the snapshot lazily as an overlay layer instead of installing.
//!
//! ```text
//!  run --store URL --target DIR [--input F] [--env V] -- CMD
//!    key::Manifest (inputs' bytes, env, command, base, platform, salt) ─► key
//!    catalog::Catalog::lookup(key) ─ hit ─► stack: layer daemon (common::layer, FUSE) ─┐
//!                                  ─ miss ─► capture: CMD over overlay(empty upper) on DIR │
//!                                            ─► catalog.publish (layer format, one put) ─┤
//!    stack: overlay(lowerdir = layer-N : … : layer-1 : base(DIR as it was), upper = top) on DIR
//! ```
//!
//! Parts: [`key`] (manifest, key, platform facts, differences), [`catalog`] (snapshots in a
//! store: lookup, publish, list, remove, build lock), [`capture`] (a command over an overlay
//! upper), [`stack`] (state directory, overlay and layer mounts, teardown), [`run`] (the
//! commands). A snapshot is a layer in the format of `bootseer_common::layer`, the one images
//! use, so it is served by the same lazy tree, cache, record and replay; fs-deps never depends
//! on fs-image.

pub mod capture;
pub mod catalog;
pub mod key;
pub mod run;
pub mod stack;
