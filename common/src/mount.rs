//! FUSE mount plumbing shared by the three binaries. (Being written.)
