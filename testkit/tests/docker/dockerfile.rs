//! docker/Dockerfile against the workspace: what it copies, builds, installs and runs.

use std::path::Path;

use crate::report::Report;
use crate::workspace::Workspace;

pub const DOCKERFILE: &str = "docker/Dockerfile";

/// One instruction: its stage (index of the FROM above it), keyword (upper case), arguments.
#[derive(Debug, Clone)]
pub struct Instruction {
    pub stage: usize,
    pub keyword: String,
    pub args: String,
}

#[derive(Debug, Default)]
pub struct Dockerfile {
    pub instructions: Vec<Instruction>,
    /// (image, alias) per FROM.
    pub stages: Vec<(String, Option<String>)>,
}

impl Dockerfile {
    /// Joins continuation lines, skips comments and blank lines.
    pub fn parse(text: &str) -> Dockerfile {
        let mut df = Dockerfile::default();
        let mut buf = String::new();
        for line in text.lines() {
            if buf.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
                continue;
            }
            if !buf.is_empty() && line.trim_start().starts_with('#') {
                continue;
            }
            if let Some(head) = line.trim_end().strip_suffix('\\') {
                buf.push_str(head);
                buf.push(' ');
                continue;
            }
            buf.push_str(line);
            let full = std::mem::take(&mut buf);
            let (kw, args) = full.trim().split_once(char::is_whitespace).unwrap_or((full.trim(), ""));
            let keyword = kw.to_uppercase();
            let args = args.trim().to_string();
            if keyword == "FROM" {
                let parts: Vec<&str> = args.split_whitespace().collect();
                let alias = (parts.len() >= 3 && parts[1].eq_ignore_ascii_case("AS")).then(|| parts[2].to_string());
                df.stages.push((parts.first().unwrap_or(&"").to_string(), alias));
            }
            df.instructions.push(Instruction { stage: df.stages.len().saturating_sub(1), keyword, args });
        }
        df
    }

    fn final_stage(&self) -> usize {
        self.stages.len().saturating_sub(1)
    }

    /// The arguments of `keyword` instructions in the final stage.
    pub fn final_args(&self, keyword: &str) -> Vec<&str> {
        let last = self.final_stage();
        self.instructions.iter().filter(|i| i.stage == last && i.keyword == keyword).map(|i| i.args.as_str()).collect()
    }

    /// The final stage's EXPOSEd ports (without /tcp).
    pub fn exposed(&self) -> Vec<String> {
        self.final_args("EXPOSE")
            .iter()
            .flat_map(|a| a.split_whitespace())
            .map(|p| p.split('/').next().unwrap_or(p).to_string())
            .collect()
    }

    fn runs(&self) -> String {
        self.instructions.iter().filter(|i| i.keyword == "RUN").map(|i| i.args.as_str()).collect::<Vec<_>>().join(" ")
    }
}

/// Words of a shell-form instruction, or the strings of an exec-form (JSON array) one.
fn words(args: &str) -> Vec<String> {
    if args.trim_start().starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(args)
    {
        return v;
    }
    args.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string()).collect()
}

/// `.dockerignore` patterns as Docker matches them (a path, or a `*`/`**` glob).
fn ignored(path: &str, pattern: &str) -> bool {
    glob(pattern.as_bytes(), path.as_bytes()) || path.starts_with(&format!("{pattern}/"))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
            let rest = p.get(2..).unwrap_or_default();
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        (Some(b'*'), _) => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| glob(&p[1..], &s[i..])),
        (Some(a), Some(b)) if a == b || *a == b'?' => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.is_empty() { ".".to_string() } else { parts.join("/") }
}

fn number_after(text: &str, flag: &str) -> Option<u32> {
    let rest = text.split(flag).nth(1)?;
    let rest = rest.trim_start_matches([' ', '=']);
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn version_of(image: &str) -> Option<(u32, u32)> {
    let v = image.strip_prefix("rust:")?;
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The build's layering: dependencies built from the manifests alone (so a source change
/// reuses that layer), then the sources, touched so that cargo rebuilds the stubs' crates,
/// and the commit passed in only after the dependency layer.
pub fn check_layering(report: &mut Report, ws: &Workspace, df: &Dockerfile) {
    let builds: Vec<usize> = df
        .instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "RUN" && i.args.contains("cargo build"))
        .map(|(n, _)| n)
        .collect();
    let (Some(&deps), Some(&last)) = (builds.first(), builds.last()) else { return };
    if !report.check(
        builds.len() >= 2 && df.instructions[deps].stage == df.instructions[last].stage,
        "the builder compiles dependencies in a layer before the sources (two cargo builds)",
        format!("{} cargo build(s)", builds.len()),
    ) {
        return;
    }
    let copies = |range: std::ops::Range<usize>| -> Vec<String> {
        df.instructions[range]
            .iter()
            .filter(|i| i.keyword == "COPY" && !i.args.contains("--from"))
            .flat_map(|i| {
                let w = words(&i.args);
                let srcs: Vec<String> = w.iter().filter(|w| !w.starts_with("--")).cloned().collect();
                srcs.split_last().map(|(_, s)| s.to_vec()).unwrap_or_default()
            })
            .map(|s| normalize(&s))
            .collect()
    };
    let before = copies(0..deps);
    let sources: Vec<&String> =
        before.iter().filter(|s| !(s.ends_with("Cargo.toml") || s.ends_with("Cargo.lock"))).collect();
    report.check(
        sources.is_empty(),
        "only manifests and Cargo.lock are copied before the dependency build",
        format!("also {sources:?}: any change to them rebuilds every dependency"),
    );
    for m in ws.members.iter().map(|m| format!("{m}/Cargo.toml")).chain(["Cargo.toml".into(), "Cargo.lock".into()]) {
        report.check(before.contains(&m), format!("{m} is copied before the dependency build"), "");
    }
    let after = copies(deps + 1..last);
    for m in &ws.members {
        report.check(
            after.iter().any(|c| *c == *m || m.starts_with(&format!("{c}/"))),
            format!("member {m}'s sources are copied after the dependency build"),
            "",
        );
    }
    let refresh = df.instructions[deps + 1..=last].iter().any(|i| i.keyword == "RUN" && i.args.contains("touch"));
    report.check(
        refresh,
        "the sources are touched before the final build",
        "COPY keeps their times, older than the stubs' artifacts: cargo would ship the stubs",
    );
    let arg = df.instructions.iter().position(|i| i.keyword == "ARG" && i.args.starts_with("CONVEYOR_BUILD_COMMIT"));
    report.check(
        arg.is_some_and(|a| a > deps && a < last),
        "ARG CONVEYOR_BUILD_COMMIT is declared between the dependency build and the final build",
        format!("at instruction {arg:?}; builds at {deps} and {last}"),
    );
}

pub fn check(report: &mut Report, ws: &Workspace, df: &Dockerfile, dockerignore: &str) {
    check_layering(report, ws, df);
    let root = ws.root.as_path();
    report.check(df.stages.len() >= 2, "Dockerfile is multi-stage", format!("{} FROM line(s)", df.stages.len()));
    let builder = df.stages.first().map(|s| s.0.clone()).unwrap_or_default();
    match (ws.rust_version.as_deref(), version_of(&builder)) {
        (Some(want), Some(have)) => {
            let mut w = want.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
            let want_t = (w.next().unwrap_or(0), w.next().unwrap_or(0));
            report.check(have >= want_t, format!("builder {builder} satisfies rust-version {want}"), "");
        }
        _ => report.fail(format!("builder image {builder:?} is a versioned rust:X.Y image")),
    }
    let suite = |img: &str| ["bookworm", "bullseye", "trixie"].into_iter().find(|s| img.contains(s));
    let runtime = df.stages.last().map(|s| s.0.clone()).unwrap_or_default();
    report.check(
        suite(&builder).is_some() && suite(&builder) == suite(&runtime),
        format!("builder and runtime share a Debian release ({builder} / {runtime})"),
        "the binary would be linked against another glibc/libssl",
    );

    // COPY sources exist and are not excluded by .dockerignore.
    let ignore: Vec<String> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let mut copied = std::collections::BTreeSet::new();
    let mut from_builder = Vec::new(); // (from, sources, dest)
    for i in df.instructions.iter().filter(|i| i.keyword == "COPY" || i.keyword == "ADD") {
        let w = words(&i.args);
        let (flags, rest): (Vec<&String>, Vec<&String>) = w.iter().partition(|w| w.starts_with("--"));
        let Some((dest, srcs)) = rest.split_last() else { continue };
        if let Some(from) = flags.iter().find_map(|f| f.strip_prefix("--from=")) {
            from_builder.push((
                from.to_string(),
                srcs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                dest.to_string(),
            ));
            continue;
        }
        for src in srcs {
            let norm = normalize(src);
            report.check(
                root.join(&norm).exists(),
                format!("COPY source {src} exists in the repo"),
                "it is missing, so docker build would fail",
            );
            for pat in &ignore {
                if ignored(&norm, pat) {
                    report.fail(format!("COPY source {src} is excluded by .dockerignore pattern {pat:?}"));
                }
            }
            copied.insert(norm);
        }
    }
    // A path is copied when it or a folder above it is (`COPY domains domains` brings each
    // member under domains/).
    let is_copied = |p: &str| {
        let p = normalize(p);
        copied.contains(".") || copied.iter().any(|c| p == *c || p.starts_with(&format!("{c}/")))
    };
    for f in ["Cargo.toml", "Cargo.lock"] {
        report.check(is_copied(f), format!("Dockerfile copies {f}"), "");
    }
    for m in &ws.members {
        report.check(
            is_copied(m),
            format!("Dockerfile copies workspace member {m}"),
            "cargo cannot load the workspace without it",
        );
    }

    // The cargo build: --locked, --release, a package that exists, and the binary it makes.
    let runs = df.runs();
    let build = runs.split("cargo build").nth(1).map(|r| r.split(['&', ';', '|']).next().unwrap_or("").to_string());
    let mut package = None;
    if report.check(build.is_some(), "Dockerfile runs cargo build", "") {
        let flags: Vec<&str> = build.as_deref().unwrap_or("").split_whitespace().collect();
        report.check(flags.contains(&"--locked"), "cargo build uses --locked", "");
        report.check(flags.contains(&"--release"), "cargo build uses --release", "");
        let pkg = flags.iter().enumerate().find_map(|(n, f)| match *f {
            "-p" | "--package" => flags.get(n + 1).map(|p| p.to_string()),
            f => f.strip_prefix("--package=").or_else(|| f.strip_prefix("-p=")).map(str::to_string),
        });
        if report.check(pkg.is_some(), "cargo build names a package with -p", "")
            && let Some(pkg) = pkg
        {
            report.check(
                ws.packages.contains_key(&pkg),
                format!("package {pkg} is a workspace member"),
                format!("members define {:?}", ws.packages.keys().collect::<Vec<_>>()),
            );
            package = Some(pkg);
        }
    }
    let bins = package.as_ref().and_then(|p| ws.packages.get(p)).map(|(_, b)| b.clone()).unwrap_or_default();
    let aliases: Vec<&str> = df.stages.iter().filter_map(|s| s.1.as_deref()).collect();
    let binary_copies: Vec<_> = from_builder
        .iter()
        .filter(|(from, _, _)| aliases.contains(&from.as_str()) || from.chars().all(|c| c.is_ascii_digit()))
        .collect();
    if report.check(!binary_copies.is_empty(), "runtime stage copies the binary from the builder stage", "") {
        for (_, srcs, dest) in binary_copies {
            for src in srcs {
                let name = Path::new(src).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                report.check(
                    bins.contains(&name),
                    format!("copied binary {src} is built by package {}", package.as_deref().unwrap_or("?")),
                    format!("its bins are {bins:?}"),
                );
                report.check(name == "conveyor", format!("copied binary is named conveyor ({name})"), "");
                report.check(src.contains("/release/"), format!("copied binary {src} is the release build"), "");
            }
            let d = dest.trim_end_matches('/');
            report.check(d.ends_with("/conveyor") || d.ends_with("/bin"), format!("binary installed as {dest}"), "");
        }
    }
    let entry: Vec<String> = df.final_args("ENTRYPOINT").iter().flat_map(|a| words(a)).collect();
    report.check(
        entry.first().is_some_and(|e| e == "conveyor"),
        "ENTRYPOINT runs conveyor",
        format!("ENTRYPOINT is {entry:?}"),
    );

    // The config file is copied where CMD points.
    let cmd: Vec<String> = df.final_args("CMD").iter().flat_map(|a| words(a)).collect();
    let config = cmd.iter().position(|w| w == "--config").and_then(|n| cmd.get(n + 1));
    let config_dests: Vec<String> = df
        .final_args("COPY")
        .iter()
        .filter(|a| a.contains("config.toml") && !a.contains("--from"))
        .filter_map(|a| words(a).last().cloned())
        .collect();
    if report.check(config.is_some(), "CMD passes --config", "")
        && let Some(config) = config
    {
        report.check(
            config_dests.contains(config),
            format!("--config {config} is the config.toml COPY destination"),
            format!("config.toml is copied to {config_dests:?}"),
        );
    }

    // Runtime hygiene.
    let hc = df.final_args("HEALTHCHECK");
    report.check(
        hc.last().is_some_and(|h| !h.to_uppercase().starts_with("NONE")),
        "runtime stage has a HEALTHCHECK",
        "",
    );
    report.check(df.exposed().iter().any(|p| p == "8000"), "runtime stage EXPOSEs 8000", "");
    let users = df.final_args("USER");
    if report.check(!users.is_empty(), "runtime stage sets USER", "") {
        let user_spec = users.last().copied().unwrap_or("");
        let user = user_spec.split(':').next().unwrap_or("");
        let uid = if user.chars().all(|c| c.is_ascii_digit()) && !user.is_empty() {
            user.parse::<u32>().ok()
        } else if user == "root" {
            Some(0)
        } else {
            runs.split("useradd")
                .skip(1)
                .find(|seg| seg.split(['&', ';']).next().is_some_and(|s| s.contains(user)))
                .and_then(|seg| number_after(seg, "--uid"))
        };
        report.check(uid.is_some_and(|u| u != 0), format!("USER {user_spec} is a non-root uid ({uid:?})"), "");
        if let Some(uid) = uid.filter(|u| *u != 0) {
            let created = runs
                .split("useradd")
                .skip(1)
                .any(|seg| number_after(seg.split(['&', ';']).next().unwrap_or(""), "--uid") == Some(uid));
            report.check(created, format!("uid {uid} is created with useradd in the image"), "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(root: &Path) -> Workspace {
        let mut r = Report::default();
        Workspace::load(root, &mut r)
    }

    fn run(text: &str) -> Report {
        let root = crate::repo_root();
        let mut r = Report::default();
        check(&mut r, &ws(&root), &Dockerfile::parse(text), "target/\n");
        r
    }

    fn real() -> String {
        std::fs::read_to_string(crate::repo_root().join(DOCKERFILE)).unwrap_or_default()
    }

    #[test]
    fn the_real_dockerfile_passes() {
        run(&real()).assert_clean();
    }

    #[test]
    fn a_missing_member_copy_fails() {
        let r = run(&real().replace("COPY http http\n", ""));
        assert!(r.failed("copies workspace member http"), "{:?}", r.failures);
    }

    #[test]
    fn a_build_without_a_dependency_layer_or_untouched_sources_fails() {
        let text = real();
        let deps_start = text.find("COPY config/Cargo.toml").unwrap();
        let sources = text.find("COPY engine engine").unwrap();
        let flat = format!("{}{}", &text[..deps_start], &text[sources..]);
        let r = run(&flat);
        assert!(r.failed("dependencies in a layer before the sources"), "{:?}", r.failures);
        let r = run(&text.replace(
            "RUN find engine http config actors domains bench testkit -name '*.rs' -exec touch {} + \\\n    && cargo",
            "RUN cargo",
        ));
        assert!(r.failed("touched before the final build"), "{:?}", r.failures);
        let r = run(&text.replace("COPY http/Cargo.toml http/\n", "COPY http http\n"));
        assert!(r.failed("http/Cargo.toml is copied before") && r.failed("only manifests"), "{:?}", r.failures);
        let r = run(&text.replace("ARG CONVEYOR_BUILD_COMMIT=unknown\n", ""));
        assert!(r.failed("ARG CONVEYOR_BUILD_COMMIT"), "{:?}", r.failures);
    }

    #[test]
    fn a_folder_above_members_copies_them() {
        let mut r = Report::default();
        let mut w = ws(&crate::repo_root());
        w.members.push("testkit/tests".to_string());
        check(&mut r, &w, &Dockerfile::parse(&real()), "");
        assert!(!r.failed("copies workspace member testkit/tests"), "{:?}", r.failures);
    }

    #[test]
    fn a_copy_of_a_missing_path_or_an_ignored_one_fails() {
        let r = run(&real().replace("COPY http http", "COPY nowhere nowhere\nCOPY target target"));
        assert!(r.failed("COPY source nowhere exists"), "{:?}", r.failures);
        assert!(r.failed("excluded by .dockerignore"), "{:?}", r.failures);
    }

    #[test]
    fn an_unlocked_build_of_an_unknown_package_fails() {
        let r = run(&real().replace("--locked -p conveyor-engine", "-p conveyor-nope"));
        assert!(r.failed("uses --locked") && r.failed("conveyor-nope is a workspace member"), "{:?}", r.failures);
    }

    #[test]
    fn root_user_and_wrong_config_path_fail() {
        let r = run(&real()
            .replace("USER 10001:10001", "USER root")
            .replace("/etc/conveyor/config.toml\"]", "/etc/x.toml\"]"));
        assert!(r.failed("non-root uid") && r.failed("COPY destination"), "{:?}", r.failures);
    }

    #[test]
    fn an_old_builder_or_mixed_debian_releases_fail() {
        let r = run(&real().replace("rust:1.95-bookworm", "rust:1.70-bullseye"));
        assert!(r.failed("satisfies rust-version") && r.failed("share a Debian release"), "{:?}", r.failures);
    }

    #[test]
    fn globs_match_like_dockerignore() {
        assert!(ignored("target", "target") && ignored("target/x", "target"));
        assert!(ignored("a/b/c.tmp", "**/*.tmp") && ignored("c.tmp", "**/*.tmp"));
        assert!(!ignored("targets", "target") && !ignored("a/c.tmpx", "**/*.tmp"));
    }
}
