//! Traces: the first access of each block after a mount, and the replay planner. (Being written.)
