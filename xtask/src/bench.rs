//! `cargo xtask bench [scenario..]`: run the side-by-side benchmarks and regenerate
//! docs/benchmarks.md from what they print.
//!
//! A scenario is a `harness = false` bench target, `crates/<crate>/benches/<scenario>.rs`,
//! found automatically. It measures ours and its baselines in the same run and ends its output
//! with one JSON line per comparison:
//! `{"scenario", "baseline_name", "metric", "unit", "ours", "baseline", "ratio"}`, where `ratio`
//! is how many times better ours is (> 1: ours is better). Results are kept per scenario in
//! docs/benchmarks.json, so running one scenario updates only its rows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::shell::{cargo, root};

const FIELDS: [&str; 7] = [
    "scenario",
    "baseline_name",
    "metric",
    "unit",
    "ours",
    "baseline",
    "ratio",
];

struct Scenario {
    name: String,
    package: String,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let all = discover()?;
    let selected: Vec<&Scenario> = if args.is_empty() {
        all.iter().collect()
    } else {
        args.iter()
            .map(|name| {
                all.iter().find(|s| &s.name == name).with_context(|| {
                    let known: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
                    format!("unknown scenario `{name}`; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let store_path = root().join("docs").join("benchmarks.json");
    let machine = machine();
    for scenario in selected {
        let rows = run_scenario(scenario)?;
        // Re-read just before writing: another scenario's run may have updated the file while
        // this one ran, and its rows must survive.
        let mut store = load(&store_path)?;
        store.insert(
            scenario.name.clone(),
            json!({
                "command": format!("cargo xtask bench {}", scenario.name),
                "package": scenario.package,
                "machine": machine,
                "date": today(),
                "results": rows,
            }),
        );
        write(
            &store_path,
            &store,
            &root().join("docs").join("benchmarks.md"),
        )?;
    }
    Ok(())
}

/// Every `crates/*/benches/*.rs`.
fn discover() -> Result<Vec<Scenario>> {
    let mut found = Vec::new();
    for krate in std::fs::read_dir(root().join("crates"))? {
        let krate = krate?.path();
        let Ok(benches) = std::fs::read_dir(krate.join("benches")) else {
            continue;
        };
        let package = krate
            .file_name()
            .and_then(|n| n.to_str())
            .context("crate folder name is not UTF-8")?
            .to_string();
        for bench in benches {
            let path = bench?.path();
            if path.extension().is_some_and(|e| e == "rs")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                found.push(Scenario {
                    name: stem.to_string(),
                    package: package.clone(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Run one scenario, echoing its output, and collect its JSON result lines.
fn run_scenario(scenario: &Scenario) -> Result<Vec<Value>> {
    println!("==> bench {} ({})", scenario.name, scenario.package);
    let mut child = cargo()
        .args([
            "bench",
            "--locked",
            "-p",
            &scenario.package,
            "--bench",
            &scenario.name,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo bench")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut rows = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(row) = parse_row(&line, &scenario.name)? {
            rows.push(row);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("bench `{}` failed ({status})", scenario.name);
    }
    if rows.is_empty() {
        bail!("bench `{}` printed no JSON result line", scenario.name);
    }
    Ok(rows)
}

fn parse_row(line: &str, scenario: &str) -> Result<Option<Value>> {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return Ok(None);
    }
    let Ok(Value::Object(row)) = serde_json::from_str::<Value>(trimmed) else {
        return Ok(None);
    };
    if row.get("scenario").and_then(Value::as_str) != Some(scenario) {
        return Ok(None);
    }
    for field in FIELDS {
        if !row.contains_key(field) {
            bail!("result line of `{scenario}` lacks `{field}`: {trimmed}");
        }
    }
    Ok(Some(Value::Object(row)))
}

fn load(path: &Path) -> Result<Map<String, Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str(&text)? {
            Value::Object(map) => Ok(map),
            _ => bail!("{} is not a JSON object", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write(store_path: &Path, store: &Map<String, Value>, md_path: &Path) -> Result<()> {
    std::fs::write(store_path, serde_json::to_string_pretty(store)? + "\n")?;
    std::fs::write(md_path, render(store))?;
    println!("==> wrote {}", md_path.display());
    Ok(())
}

fn render(store: &Map<String, Value>) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench` from docs/benchmarks.json; do not edit by hand.\n\
         Each scenario measures ours and its baselines in the same run on the same machine.\n\
         `ratio` is how many times better ours is than the baseline (> 1: ours is better), \
         whatever the unit. Absolute numbers on shared machines are noise; ratios are the result.\n\n\
         | scenario | baseline | metric | ours | baseline | ratio |\n\
         |---|---|---|---|---|---|\n",
    );
    let sorted: BTreeMap<_, _> = store.iter().collect();
    for (name, entry) in &sorted {
        for row in entry["results"].as_array().into_iter().flatten() {
            let unit = row["unit"].as_str().unwrap_or("");
            out.push_str(&format!(
                "| {name} | {} | {} | {} {unit} | {} {unit} | {} |\n",
                text(&row["baseline_name"]),
                text(&row["metric"]),
                text(&row["ours"]),
                text(&row["baseline"]),
                text(&row["ratio"]),
            ));
        }
    }
    out.push_str("\n## How each scenario ran\n\n| scenario | command | date | machine |\n|---|---|---|---|\n");
    for (name, entry) in &sorted {
        out.push_str(&format!(
            "| {name} | `{}` | {} | {} |\n",
            text(&entry["command"]),
            text(&entry["date"]),
            text(&entry["machine"]),
        ));
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, {rustc}")
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
