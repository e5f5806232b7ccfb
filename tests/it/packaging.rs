//! What the binary says about itself: `--version` with the commit, completion scripts and
//! the manual page from the same command tree, and `conveyor_build_info` in `/metrics`.

use std::process::Command;

use crate::harness::{Backend, Daemon, Opts, command};

fn run(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Opts::new();
    opts.backend = Backend::Embedded;
    let out = command(&opts, dir.path()).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the binary was built from a git checkout of this repository with the commit read
/// from git (not given by `CONVEYOR_BUILD_COMMIT`, as the Docker build does).
fn from_git() -> bool {
    std::env::var_os("CONVEYOR_BUILD_COMMIT").is_none()
        && Command::new("git").args(["-C", REPO, "rev-parse", "HEAD"]).output().is_ok_and(|o| o.status.success())
}

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `conveyor 0.1.0 (abc1234 2026-12-03)` → the commit, after checking the version.
fn commit_of(version_line: &str) -> String {
    let line = version_line.trim();
    let rest = line.strip_prefix(&format!("conveyor {} (", env!("CARGO_PKG_VERSION"))).unwrap_or_else(|| {
        panic!("{line:?} starts with the name and version {}", env!("CARGO_PKG_VERSION"));
    });
    let commit = rest.split([' ', ')']).next().unwrap_or_default().to_string();
    assert!(!commit.is_empty(), "{line:?} names a commit");
    if from_git() {
        // Built from this repository: the commit is one of its objects.
        let hash = commit.strip_suffix("-dirty").unwrap_or(&commit);
        assert!(hash.len() >= 7 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?} names a commit");
        let known = Command::new("git").args(["-C", REPO, "cat-file", "-e", &format!("{hash}^{{commit}}")]).output();
        assert!(known.as_ref().is_ok_and(|o| o.status.success()), "{hash} is a commit of this repository: {known:?}");
    }
    commit
}

/// The subcommands `--help` lists (so new ones are covered without editing this test).
fn subcommands() -> Vec<String> {
    let help = run(&["--help"]);
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|name| name != "help")
        .collect();
    for expected in ["serve", "migrate", "config", "dlq", "user", "token", "completions", "man"] {
        assert!(listed.iter().any(|n| n == expected), "--help lists {expected}: {help}");
    }
    listed
}

#[test]
fn version_names_the_commit_and_completions_and_man_cover_every_subcommand() {
    let commit = commit_of(&run(&["--version"]));
    let names = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(script.contains("conveyor"), "{shell}: {script}");
        for name in &names {
            assert!(script.contains(name.as_str()), "the {shell} script completes {name}");
        }
    }
    let page = run(&["man"]);
    assert!(page.starts_with(".ie") || page.contains(".TH conveyor 1"), "roff: {page}");
    assert!(page.contains(&commit.replace('-', "\\-")), "the page carries the version line");
    for name in &names {
        assert!(page.contains(&format!("conveyor\\-{}", name.replace('-', "\\-"))), "the man page names {name}");
    }
    let refused = {
        let dir = tempfile::tempdir().unwrap();
        command(&Opts::new(), dir.path()).args(["completions", "tcsh"]).output().unwrap()
    };
    assert!(!refused.status.success(), "an unknown shell is refused");
}

#[tokio::test]
async fn build_info_is_exported_with_the_version_and_commit() {
    let commit = commit_of(&run(&["--version"]));
    let d = Daemon::start(Opts::new()).await;
    let text = d.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("conveyor_build_info{"))
        .unwrap_or_else(|| panic!("no conveyor_build_info in /metrics:\n{text}"));
    assert!(line.contains(&format!("commit=\"{commit}\"")), "{line}");
    assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
    assert!(line.contains("rustc=\"1."), "{line}");
    assert!(line.ends_with(" 1"), "the gauge is 1: {line}");
}
