//! Block cache. (Being written.)
