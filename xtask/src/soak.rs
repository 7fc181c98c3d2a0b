//! `cargo xtask soak --minutes N`: run `demo --serve`, drive the page's polling against it, and
//! report the dashboard process's RSS, file descriptors, connections and latency per minute;
//! fail if RSS drifts more than the allowed share after the warm-up.
//!
//! The driver is std only (xtask keeps its two dependencies): one thread per polled path, each
//! with its own keep-alive HTTP/1.1 connection, like a browser's, and a job submitted every 5 s.
//! Figures come from `/proc/<pid>` of the demo process (Linux).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::{cargo, root, step};

/// The page's polling interval the soak drives (the page's own minimum is 2 s; the soak
/// compresses time by polling faster).
const TICK: Duration = Duration::from_millis(250);
/// One job submitted this often (the user clicking "Submit a job").
const JOB_EVERY: Duration = Duration::from_secs(5);
/// RSS sampled this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Options of one soak run.
#[derive(Debug, Clone)]
pub(crate) struct Soak {
    pub(crate) minutes: f64,
    pub(crate) release: bool,
    /// Fail when RSS at the end exceeds RSS after the warm-up by more than this fraction.
    pub(crate) max_drift: f64,
    /// Build the demo first; `false` uses the binary already in the target directory (the
    /// one `cargo test --workspace` just built for the dashboard's suites).
    pub(crate) build: bool,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut soak = Soak {
        minutes: 10.0,
        release: true,
        max_drift: 0.10,
        build: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => {
                soak.minutes = args
                    .next()
                    .context("--minutes needs a value")?
                    .parse()
                    .context("--minutes takes a number")?;
            }
            "--debug" => soak.release = false,
            "--max-drift-percent" => {
                let pct: f64 = args
                    .next()
                    .context("--max-drift-percent needs a value")?
                    .parse()
                    .context("--max-drift-percent takes a number")?;
                soak.max_drift = pct / 100.0;
            }
            other => bail!(
                "unknown argument `{other}`\nusage: cargo xtask soak [--minutes N] [--debug] [--max-drift-percent P]"
            ),
        }
    }
    if soak.minutes.is_nan() || soak.minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    crate::setup::ensure_installed()?;
    run_soak(&soak)
}

/// One sample of the demo process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
    established: usize,
    close_wait: usize,
}

#[derive(Debug, Default)]
struct Window {
    latencies_ms: Vec<f64>,
    failures: usize,
}

pub(crate) fn run_soak(soak: &Soak) -> Result<()> {
    if soak.build {
        let mut build = cargo();
        build.args(["build", "--locked", "-p", "dashboard", "--bin", "demo"]);
        if soak.release {
            build.arg("--release");
        }
        step(
            "cargo build -p dashboard --bin demo (for the soak)",
            &mut build,
        )?;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let binary = target
        .join(if soak.release { "release" } else { "debug" })
        .join("demo");
    println!(
        "==> soak: {} min against `demo --serve` ({}), polling every {} ms, a job every {} s",
        soak.minutes,
        if soak.release { "release" } else { "debug" },
        TICK.as_millis(),
        JOB_EVERY.as_secs()
    );
    let mut child = Command::new(&binary)
        .args(["--serve", "--pooled", "--latency-ms", "0-0"])
        .env("TESTKIT_AZURITE_BIN", crate::setup::azurite_blob())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build -p dashboard --bin demo)",
                binary.display()
            )
        })?;
    let outcome = drive(soak, &mut child);
    stop(&mut child);
    outcome
}

/// Ask the demo to stop (SIGINT: it drops Azurite and the servers), then make sure.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn drive(soak: &Soak, child: &mut Child) -> Result<()> {
    let stdout = child.stdout.take().context("the demo's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (base, key) = loop {
        let line = lines
            .next()
            .context("the demo exited before serving")?
            .context("reading the demo's output")?;
        if let Some((url, key)) = line.trim().split_once("/#key=") {
            break (url.to_string(), key.to_string());
        }
    };
    // Keep draining the demo's output so it never blocks on a full pipe.
    thread::spawn(move || for _ in lines.by_ref() {});
    let host = base.trim_start_matches("http://").to_string();
    let port: u16 = host
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the demo's URL has no port")?;
    let pid = child.id();
    println!("    dashboard at {base} (pid {pid})");

    let mut client = Client::new(&host, &key);
    let (_, body) = client.request("GET", "/api/warmup", None)?;
    let clusters: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)?["clusters"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut paths: Vec<String> = [
        "/api/me",
        "/api/monitor/aks",
        "/api/monitor/jobs",
        "/api/monitor/storage",
        "/api/blast/jobs?limit=8",
        "/api/inspector?limit=50",
        // The page's metrics card (no key needed; the header is ignored).
        "/metrics",
    ]
    .iter()
    .map(|p| (*p).to_string())
    .collect();
    paths.extend(clusters.iter().map(|c| format!("/api/warmup/{c}")));
    println!(
        "    {} GETs per tick (the page's), {} clusters",
        paths.len(),
        clusters.len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(Mutex::new(Window::default()));
    let mut workers = Vec::new();
    for path in paths.clone() {
        let (stop, window, host, key) = (stop.clone(), window.clone(), host.clone(), key.clone());
        workers.push(thread::spawn(move || {
            let mut client = Client::new(&host, &key);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = matches!(client.request("GET", &path, None), Ok((200, _)));
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                {
                    let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
                    w.latencies_ms.push(ms);
                    if !ok {
                        w.failures += 1;
                    }
                }
                thread::sleep(TICK.saturating_sub(started.elapsed()));
            }
        }));
    }
    {
        let (stop, window, host, key) = (stop.clone(), window.clone(), host.clone(), key.clone());
        workers.push(thread::spawn(move || {
            let mut client = Client::new(&host, &key);
            while !stop.load(Ordering::Relaxed) {
                let ok = matches!(
                    client.request("POST", "/api/blast/jobs", Some(r#"{"database":"orders"}"#)),
                    Ok((202, _))
                );
                if !ok {
                    window.lock().unwrap_or_else(|e| e.into_inner()).failures += 1;
                }
                let until = Instant::now() + JOB_EVERY;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }));
    }

    let total = Duration::from_secs_f64(soak.minutes * 60.0);
    let warmup = Duration::from_secs(60).min(total / 3);
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut minute_end = Duration::from_secs(60).min(total);
    let (mut all_requests, mut all_failures) = (0usize, 0usize);
    println!(
        "    {:>6} {:>9} {:>6} {:>8} {:>8} {:>8} {:>5} {:>6} {:>10}",
        "minute", "requests", "failed", "p50 ms", "p99 ms", "RSS MB", "fds", "estab", "close_wait"
    );
    while started.elapsed() < total {
        thread::sleep(SAMPLE_EVERY.min(total.saturating_sub(started.elapsed())));
        let at = started.elapsed();
        let sample = sample(pid, port, at)?;
        samples.push(sample);
        if at >= minute_end || at >= total {
            let w = std::mem::take(&mut *window.lock().unwrap_or_else(|e| e.into_inner()));
            let mut lat = w.latencies_ms;
            lat.sort_by(f64::total_cmp);
            all_requests += lat.len();
            all_failures += w.failures;
            println!(
                "    {:>6.1} {:>9} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>5} {:>6} {:>10}",
                at.as_secs_f64() / 60.0,
                lat.len(),
                w.failures,
                percentile(&lat, 50.0),
                percentile(&lat, 99.0),
                sample.rss_kb as f64 / 1024.0,
                sample.fds,
                sample.established,
                sample.close_wait
            );
            minute_end += Duration::from_secs(60);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }

    let median_rss = |from: Duration, to: Duration| {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| s.rss_kb)
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let window_len = Duration::from_secs(30).min(total / 4);
    let baseline = median_rss(warmup, warmup + window_len).context("no sample after warm-up")?;
    let end = median_rss(total.saturating_sub(window_len), total).context("no final sample")?;
    let drift = (end as f64 - baseline as f64) / baseline as f64;
    println!(
        "==> soak: {all_requests} requests, {all_failures} failed; RSS after {:.0} s warm-up {:.1} MB, at the end {:.1} MB ({:+.1} %, limit {:.0} %)",
        warmup.as_secs_f64(),
        baseline as f64 / 1024.0,
        end as f64 / 1024.0,
        drift * 100.0,
        soak.max_drift * 100.0
    );
    if all_failures > 0 {
        bail!("soak: {all_failures} requests failed");
    }
    if drift > soak.max_drift {
        bail!(
            "soak: RSS drifted {:+.1} % after warm-up (limit {:.0} %)",
            drift * 100.0,
            soak.max_drift * 100.0
        );
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// RSS and fds of `pid` from /proc, and TCP connections on the dashboard's `port`.
fn sample(pid: u32, port: u16, at: Duration) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/<pid>/status (the soak needs Linux; did the demo exit?)")?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let (mut established, mut close_wait) = (0, 0);
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match *state {
                "01" => established += 1,
                "08" => close_wait += 1,
                _ => {}
            }
        }
    }
    Ok(Sample {
        at,
        rss_kb,
        fds,
        established,
        close_wait,
    })
}

/// A minimal keep-alive HTTP/1.1 client (Content-Length and chunked bodies).
struct Client {
    host: String,
    key: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(host: &str, key: &str) -> Self {
        Self {
            host: host.to_string(),
            key: key.to_string(),
            conn: None,
        }
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Vec<u8>)> {
        let outcome = self.try_request(method, path, body);
        if outcome.is_err() {
            self.conn = None; // reconnect next time
        }
        outcome
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.host)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().context("connection")?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            self.key,
            body.len()
        );
        conn.get_mut().write_all(head.as_bytes())?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "content-length" => length = value.parse().ok(),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .context("bad chunk size")?;
                if size == 0 {
                    line.clear();
                    conn.read_line(&mut line)?;
                    break;
                }
                let start = out.len();
                out.resize(start + size, 0);
                conn.read_exact(&mut out[start..])?;
                line.clear();
                conn.read_line(&mut line)?;
            }
        } else if let Some(length) = length {
            out.resize(length, 0);
            conn.read_exact(&mut out)?;
        } else {
            conn.read_to_end(&mut out)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}
