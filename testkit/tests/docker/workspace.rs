//! The workspace as Cargo sees it: members, their packages and binaries, the rust-version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::report::Report;

pub struct Workspace {
    pub root: PathBuf,
    pub members: Vec<String>,
    pub rust_version: Option<String>,
    /// Package name -> (member directory, its binaries).
    pub packages: BTreeMap<String, (String, Vec<String>)>,
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Workspace {
    pub fn load(root: &Path, report: &mut Report) -> Workspace {
        let ws = read_toml(&root.join("Cargo.toml"));
        let workspace = ws.get("workspace");
        let members: Vec<String> = workspace
            .and_then(|w| w.get("members"))
            .and_then(|m| m.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let rust_version = workspace
            .and_then(|w| w.get("package"))
            .and_then(|p| p.get("rust-version"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let mut packages = BTreeMap::new();
        for member in &members {
            let manifest_path = root.join(member).join("Cargo.toml");
            if !manifest_path.is_file() {
                report.fail(format!("workspace member {member} has no {member}/Cargo.toml"));
                continue;
            }
            let manifest = read_toml(&manifest_path);
            let Some(name) = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) else {
                continue;
            };
            let mut bins: Vec<String> = manifest
                .get("bin")
                .and_then(|b| b.as_array())
                .map(|a| a.iter().filter_map(|b| b.get("name")?.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if bins.is_empty() && root.join(member).join("src/main.rs").is_file() {
                bins.push(name.to_string());
            }
            packages.insert(name.to_string(), (member.clone(), bins));
        }
        Workspace { root: root.to_path_buf(), members, rust_version, packages }
    }

    /// Every `.rs` file under the members' `src/`, as (path relative to the root, text).
    pub fn sources(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = self.members.iter().map(|m| self.root.join(m).join("src")).collect();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && let Ok(text) = std::fs::read_to_string(&path)
                {
                    let rel = path.strip_prefix(&self.root).unwrap_or(&path).display().to_string();
                    out.push((rel, text));
                }
            }
        }
        out.sort();
        out
    }
}
