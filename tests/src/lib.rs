//! End-to-end tests of bootseer's binaries live in `tests/tests/`; this library holds what they
//! share (paths of the built binaries, fixtures).
