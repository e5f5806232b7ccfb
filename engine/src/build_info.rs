//! What this binary was built from (set by `build.rs`): `conveyor --version` prints it and
//! the `conveyor.build.info` gauge exports it.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short commit hash, `-dirty` when built from a modified tree, or `unknown`.
pub const COMMIT: &str = env!("CONVEYOR_BUILD_COMMIT");
pub const RUSTC: &str = env!("CONVEYOR_BUILD_RUSTC");
/// `0.1.0 (abc1234 2026-12-03)`: version, commit and commit date.
pub const VERSION_LINE: &str = env!("CONVEYOR_VERSION_LINE");
