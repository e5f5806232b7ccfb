//! Stamps the binary with the commit it was built from: `conveyor --version` and the
//! `conveyor_build_info` metric read `CONVEYOR_BUILD_COMMIT`, `CONVEYOR_BUILD_DATE` and
//! `CONVEYOR_BUILD_RUSTC` from here.
//!
//! The commit is, in order: the `CONVEYOR_BUILD_COMMIT` environment variable (builds
//! without `.git`, e.g. the Docker image), `git rev-parse --short HEAD` with `-dirty` when
//! tracked files differ from it, or `unknown`. The script reruns only when HEAD, the branch
//! it points to, the index or those variables change, not on every build; so an edit not
//! yet staged does not add `-dirty` until one of them changes.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn env(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Reruns when what HEAD names moves: HEAD itself, its branch (loose or packed) and the index.
fn watch_git() {
    let mut paths = vec!["HEAD".to_string(), "index".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(branch);
    }
    for path in paths {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]) {
            let file = PathBuf::from(file);
            if file.exists() {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
    }
}

fn commit_from_git() -> Option<(String, Option<String>)> {
    let short = git(&["rev-parse", "--short=7", "HEAD"])?;
    watch_git();
    // `git diff --quiet` exits 1 when tracked files differ from HEAD.
    let dirty = Command::new("git").args(["diff", "--quiet", "HEAD", "--"]).status().is_ok_and(|s| s.code() == Some(1));
    let date = git(&["log", "-1", "--format=%cs", "HEAD"]);
    Some((if dirty { format!("{short}-dirty") } else { short }, date))
}

fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        // "rustc 1.95.0 (hash date)" → "1.95.0"
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let (commit, date) = match env("CONVEYOR_BUILD_COMMIT") {
        Some(commit) => (commit, env("CONVEYOR_BUILD_DATE")),
        None => commit_from_git().unwrap_or_else(|| ("unknown".into(), env("CONVEYOR_BUILD_DATE"))),
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let line = match &date {
        Some(date) => format!("{version} ({commit} {date})"),
        None => format!("{version} ({commit})"),
    };
    println!("cargo:rustc-env=CONVEYOR_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=CONVEYOR_BUILD_DATE={}", date.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rustc-env=CONVEYOR_BUILD_RUSTC={}", rustc_version());
    println!("cargo:rustc-env=CONVEYOR_VERSION_LINE={line}");
}
