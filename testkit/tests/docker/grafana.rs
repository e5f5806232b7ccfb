//! Grafana's provisioning (datasources, dashboard providers) and how compose runs Grafana.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::compose::{Compose, DASHBOARD, DS_FILE, Mount, PROVIDER_FILE, compose_rel};
use crate::report::{Report, items, text};

/// What the dashboard check needs from Grafana's provisioning.
pub struct Grafana {
    pub datasource_uids: BTreeSet<String>,
}

pub fn check(report: &mut Report, c: &Compose, root: &Path, dsdoc: &Value, provdoc: &Value) -> Grafana {
    let genv = c.env("grafana");
    let get = |k: &str| genv.get(k).cloned().flatten();
    let mounts: Vec<Mount> = c
        .mounts("grafana")
        .into_iter()
        .filter(|m| m.bind)
        .map(|m| Mount { source: compose_rel(&m.source), ..m })
        .collect();
    report.check(c.ports("grafana").iter().any(|p| p.ends_with("3000:3000")), "grafana publishes 3000:3000", "");
    report.check(
        get("GF_AUTH_ANONYMOUS_ENABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        "grafana allows anonymous viewers (local use)",
        "",
    );
    let role = get("GF_AUTH_ANONYMOUS_ORG_ROLE").unwrap_or_else(|| "Viewer".into());
    report.check(role == "Viewer", "anonymous grafana users are only Viewers", format!("role {role:?}"));
    let pw = get("GF_SECURITY_ADMIN_PASSWORD").unwrap_or_default();
    let default_from_env =
        pw.strip_prefix("${").and_then(|r| r.strip_suffix('}')).and_then(|r| r.split_once(":-")).is_some_and(
            |(var, default)| {
                !var.is_empty()
                    && var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    && !var.starts_with(|c: char| c.is_ascii_digit())
                    && !default.is_empty()
                    && !default.contains('}')
            },
        );
    report.check(
        default_from_env,
        "grafana admin password comes from an env var with a default (${VAR:-default})",
        format!("got {pw:?}"),
    );
    let prov_target = get("GF_PATHS_PROVISIONING").unwrap_or_else(|| "/etc/grafana/provisioning".into());
    let prov_dir = mounts.iter().find(|m| m.target == prov_target).map(|m| m.source.clone());
    report.check(
        prov_dir.is_some(),
        format!("grafana mounts a provisioning folder at {prov_target}"),
        format!("mounts {mounts:?}"),
    );
    let container_to_repo = |p: &str| -> Option<String> {
        mounts.iter().find_map(|m| {
            let dst = m.target.trim_end_matches('/');
            if p == dst {
                Some(m.source.clone())
            } else {
                p.strip_prefix(&format!("{dst}/")).map(|rest| format!("{}/{rest}", m.source))
            }
        })
    };

    // Datasources.
    let in_prov = |file: &str, sub: &str| prov_dir.as_ref().is_none_or(|d| format!("{d}/{sub}") == file);
    report.check(
        in_prov(DS_FILE, "datasources/prometheus.yml"),
        format!("{DS_FILE} is inside the mounted provisioning folder"),
        "",
    );
    report.check(dsdoc["apiVersion"] == 1, format!("{DS_FILE} has apiVersion: 1"), "");
    let datasource_uids: BTreeSet<String> =
        items(&dsdoc["datasources"]).iter().filter_map(|d| d["uid"].as_str().map(str::to_string)).collect();
    let prom_ds: Vec<&Value> = items(&dsdoc["datasources"]).iter().filter(|d| d["type"] == "prometheus").collect();
    if report.check(prom_ds.len() == 1, format!("{DS_FILE} defines one Prometheus datasource"), "") {
        let d = prom_ds[0];
        report.check(
            d["uid"] == "prometheus",
            "the Prometheus datasource has uid prometheus",
            format!("uid {}", d["uid"]),
        );
        let url = text(&d["url"]);
        let hostport = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .map(|r| r.trim_end_matches('/'))
            .filter(|r| !r.contains('/'));
        let (host, port) = match hostport.map(|h| h.split_once(':').unwrap_or((h, "80"))) {
            Some((h, p)) => (Some(h.to_string()), p.to_string()),
            None => (None, String::new()),
        };
        let services = c.services();
        let known = host.as_ref().is_some_and(|h| services.contains(h));
        report.check(known, format!("datasource url {url} names a compose service"), format!("services {services:?}"));
        if let Some(h) = host.filter(|_| known) {
            let want = c.container_port(&h, "9090");
            report.check(port == want, format!("datasource url port {port} is {h}'s container port"), "");
        }
        report.check(
            d["access"].as_str().unwrap_or("proxy") == "proxy",
            "datasource access is proxy (the browser cannot resolve compose names)",
            "",
        );
    }

    // Dashboard providers.
    report.check(
        in_prov(PROVIDER_FILE, "dashboards/conveyor.yml"),
        format!("{PROVIDER_FILE} is inside the mounted provisioning folder"),
        "",
    );
    report.check(provdoc["apiVersion"] == 1, format!("{PROVIDER_FILE} has apiVersion: 1"), "");
    let mut dashboard_files = Vec::new();
    for pr in items(&provdoc["providers"]) {
        report.check(pr["type"] == "file", format!("dashboard provider {} is a file provider", pr["name"]), "");
        let p = text(&pr["options"]["path"]);
        let repo_dir = container_to_repo(&p);
        let is_dir = repo_dir.as_ref().is_some_and(|d| root.join(d).is_dir());
        if report.check(
            is_dir,
            format!("dashboard provider path {p} is a mounted folder ({repo_dir:?})"),
            format!("grafana mounts {mounts:?}"),
        ) && let Some(dir) = repo_dir
        {
            let mut files: Vec<String> = std::fs::read_dir(root.join(&dir))
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .filter(|f| f.ends_with(".json"))
                        .map(|f| format!("{dir}/{f}"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            dashboard_files.extend(files);
        }
    }
    report.check(
        dashboard_files.iter().any(|f| f == DASHBOARD),
        format!("{DASHBOARD} is loaded by a dashboard provider"),
        format!("found {dashboard_files:?}"),
    );
    if let Some(home) = get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let file = container_to_repo(&home);
        report.check(
            file.as_ref().is_some_and(|f| dashboard_files.contains(f)),
            format!("grafana home dashboard {home} is a provisioned dashboard file"),
            "",
        );
    }
    Grafana { datasource_uids }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{load_yaml, real};
    use serde_json::json;

    #[test]
    fn grafana_admin_anonymous_and_a_wrong_datasource_url_fail() {
        let root = crate::repo_root();
        let (mut c, _) = real();
        let env = &mut c.doc["services"]["grafana"]["environment"];
        env["GF_AUTH_ANONYMOUS_ORG_ROLE"] = json!("Admin");
        env["GF_SECURITY_ADMIN_PASSWORD"] = json!("admin");
        let mut ds = load_yaml(&root, DS_FILE);
        ds["datasources"][0]["url"] = json!("http://prom:9090");
        let mut r = Report::default();
        check(&mut r, &c, &root, &ds, &load_yaml(&root, PROVIDER_FILE));
        assert!(r.failed("only Viewers") && r.failed("${VAR:-default}"), "{:?}", r.failures);
        assert!(r.failed("names a compose service"), "{:?}", r.failures);
    }

    #[test]
    fn a_dashboard_folder_not_mounted_fails() {
        let root = crate::repo_root();
        let (c, _) = real();
        let mut prov = load_yaml(&root, PROVIDER_FILE);
        prov["providers"][0]["options"]["path"] = json!("/var/lib/elsewhere");
        let mut r = Report::default();
        check(&mut r, &c, &root, &load_yaml(&root, DS_FILE), &prov);
        assert!(r.failed("is a mounted folder") && r.failed("is loaded by a dashboard provider"), "{:?}", r.failures);
    }
}
