//! What every benchmark shares: machine facts, the results directory, JSON output and a
//! plain-text table.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::{Value, json};

/// The workspace root (where `target/`, `bench/results/` and `.git` live).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// `bench/results/` unless `CONVEYOR_BENCH_RESULTS` says otherwise.
pub fn results_dir() -> PathBuf {
    match std::env::var_os("CONVEYOR_BENCH_RESULTS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("bench").join("results"),
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `nproc`, the CPU model, the kernel, the date and the git commit this run measured.
pub fn machine() -> Value {
    let nproc = command_output("nproc", &[])
        .and_then(|n| n.parse::<u64>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get() as u64));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string())
        .or_else(|| command_output("uname", &["-r"]));
    let root = workspace_root();
    let root = root.to_string_lossy();
    let commit = command_output("git", &["-C", &root, "rev-parse", "HEAD"]);
    let dirty = command_output("git", &["-C", &root, "status", "--porcelain"]).map(|s| !s.is_empty());
    let mem_total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
    });
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({
        "nproc": nproc,
        "loadavg_1_5_15_at_write": loadavg,
        "cpu_model": cpu_model,
        "kernel": kernel,
        "mem_total_kb": mem_total_kb,
        "date": chrono::Utc::now().to_rfc3339(),
        "git_commit": commit,
        "git_dirty": dirty,
    })
}

/// Writes `bench/results/<name>.json` (machine info added) and returns its path.
pub fn write(name: &str, mut body: Value) -> anyhow::Result<PathBuf> {
    if let Value::Object(map) = &mut body {
        map.insert("benchmark".into(), Value::String(name.into()));
        map.insert("machine".into(), machine());
    }
    let dir = results_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&body)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") }
            })
            .collect();
        println!("  {}", padded.join("  "));
    };
    line(header.to_vec());
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    println!("  {}", "-".repeat(total));
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A number with thousands separators, e.g. `12,345`.
pub fn thousands(n: f64) -> String {
    let rounded = n.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Rounds to `places` decimals for JSON (keeps the files readable).
pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// A unique, lowercase id usable as topic prefix, group and schema name.
pub fn unique_id(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", id.get(..12).unwrap_or("x"))
}

/// A fresh directory under the system temp dir; removed by [`TempDir`]'s drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(unique_id(prefix));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Clock ticks per second for `/proc` CPU times.
fn clock_ticks() -> f64 {
    command_output("getconf", &["CLK_TCK"]).and_then(|t| t.parse::<f64>().ok()).filter(|t| *t > 0.0).unwrap_or(100.0)
}

/// CPU time of a process (user + system, children excluded) and of the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: std::time::Instant,
    process_ticks: Option<u64>,
    machine_total: u64,
    machine_idle: u64,
    machine_iowait: u64,
    machine_steal: u64,
}

/// What happened between two [`CpuSample`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsage {
    /// Percent of one core used by the process.
    pub process_pct: Option<f64>,
    /// Percent of all cores busy (not idle, not iowait).
    pub machine_busy_pct: f64,
    pub machine_iowait_pct: f64,
    /// Time the hypervisor gave to someone else (counted in busy).
    pub machine_steal_pct: f64,
}

impl CpuUsage {
    pub fn to_json(self) -> Value {
        json!({
            "process_pct_of_one_core": self.process_pct.map(|p| round(p, 1)),
            "machine_busy_pct": round(self.machine_busy_pct, 1),
            "machine_iowait_pct": round(self.machine_iowait_pct, 1),
            "machine_steal_pct": round(self.machine_steal_pct, 1),
        })
    }
}

impl CpuSample {
    pub fn take(pid: Option<u32>) -> Self {
        let process_ticks = pid.and_then(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        });
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        // user nice system idle iowait irq softirq steal (guest time is already in user)
        let total = cpu.iter().take(8).sum();
        CpuSample {
            at: std::time::Instant::now(),
            process_ticks,
            machine_total: total,
            machine_idle: cpu.get(3).copied().unwrap_or(0),
            machine_iowait: cpu.get(4).copied().unwrap_or(0),
            machine_steal: cpu.get(7).copied().unwrap_or(0),
        }
    }

    pub fn since(&self, earlier: &CpuSample) -> CpuUsage {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let process_pct = match (self.process_ticks, earlier.process_ticks) {
            (Some(now), Some(then)) => Some(now.saturating_sub(then) as f64 / clock_ticks() / wall * 100.0),
            _ => None,
        };
        let total = self.machine_total.saturating_sub(earlier.machine_total).max(1) as f64;
        let idle = self.machine_idle.saturating_sub(earlier.machine_idle) as f64;
        let iowait = self.machine_iowait.saturating_sub(earlier.machine_iowait) as f64;
        let steal = self.machine_steal.saturating_sub(earlier.machine_steal) as f64;
        CpuUsage {
            process_pct,
            machine_busy_pct: (total - idle - iowait) / total * 100.0,
            machine_iowait_pct: iowait / total * 100.0,
            machine_steal_pct: steal / total * 100.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
