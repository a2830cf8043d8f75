//! The coordinator under test as a process concern: in this process, or `settled` as a
//! child (`--external`) — found next to this executable or built with cargo, started on a
//! free port, its logs drained, killed at the end — and what `/proc` says about a
//! process's CPU time and resident memory.
//!
//! It does not know the workloads or the numbers a report shows; it only starts, samples
//! and stops. The `/proc` readings make `--external` figures Linux-only; elsewhere they are
//! absent, not wrong.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use settle_coordinator::{Config, Coordinator, Running, Security};
use settle_testkit::Pki;

use crate::{Args, CLIENT, COORDINATOR, Result};

/// The coordinator under test.
pub enum CoordinatorHandle {
    InProcess(Running),
    External(Settled),
}

impl CoordinatorHandle {
    /// Starts the coordinator on `store` as `args` say, over mutual TLS with certificates
    /// from `pki` when given; returns it and its URL.
    pub async fn start(
        args: &Args,
        store: &str,
        pki: Option<&Pki>,
    ) -> Result<(CoordinatorHandle, String)> {
        if args.external {
            let settled = Settled::start(args, store, pki)?;
            let url = settled.url.clone();
            Ok((CoordinatorHandle::External(settled), url))
        } else {
            let mut config = Config {
                database: store.to_owned(),
                ..Config::default()
            };
            if let Some(n) = args.max_connections {
                config.max_connections = n;
            }
            if let Some(pki) = pki {
                config.security = Security {
                    tls: Some(pki.server(COORDINATOR)),
                    participant_tls: Some(pki.client(Some(COORDINATOR))),
                    grants: vec![format!("{CLIENT}=*").parse()?],
                    ..Security::default()
                };
            }
            let running = Coordinator::open(config)
                .await?
                .spawn("127.0.0.1:0".parse()?)
                .await?;
            let url = running.url();
            Ok((CoordinatorHandle::InProcess(running), url))
        }
    }

    /// CPU seconds used so far by the process that runs the coordinator.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match self {
            CoordinatorHandle::InProcess(_) => None,
            CoordinatorHandle::External(settled) => {
                proc_cpu_seconds(&format!("/proc/{}/stat", settled.child.id()))
            }
        }
    }

    /// The external coordinator's metrics endpoint.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        match self {
            CoordinatorHandle::InProcess(_) => None,
            CoordinatorHandle::External(settled) => settled.metrics,
        }
    }

    pub fn resources(&self) -> Option<Memory> {
        match self {
            CoordinatorHandle::InProcess(_) => None,
            CoordinatorHandle::External(settled) => {
                proc_memory(&format!("/proc/{}/status", settled.child.id()))
            }
        }
    }

    pub async fn stop(self) -> Result<()> {
        match self {
            CoordinatorHandle::InProcess(running) => Ok(running.stop().await?),
            CoordinatorHandle::External(mut settled) => {
                settled.stop();
                Ok(())
            }
        }
    }
}

/// `settled` as a child process, killed on drop.
pub struct Settled {
    child: Child,
    url: String,
    metrics: Option<SocketAddr>,
}

impl Settled {
    fn start(args: &Args, store: &str, pki: Option<&Pki>) -> Result<Settled> {
        let binary = match &args.settled {
            Some(path) => path.clone(),
            None => find_settled()?,
        };
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--database", store])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", &args.settled_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(n) = args.max_connections {
            command.args(["--max-connections", &n.to_string()]);
        }
        if let Some(pki) = pki {
            let issued = pki.issue(COORDINATOR);
            command
                .arg("--tls-cert")
                .arg(&issued.cert)
                .arg("--tls-key")
                .arg(&issued.key)
                .arg("--tls-client-ca")
                .arg(pki.ca())
                .arg("--tls-ca")
                .arg(pki.ca())
                .arg(format!("--allow-register={CLIENT}=*"));
        }
        command.args(&args.settled_args);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("settled has no stdout")?;
        let mut settled = Settled {
            child,
            url: String::new(),
            metrics: None,
        };
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        lines.read_line(&mut first)?;
        let addr = first
            .trim()
            .strip_prefix("settled listening on ")
            .ok_or_else(|| format!("settled did not start; it said {first:?}"))?;
        let scheme = if pki.is_some() { "https" } else { "http" };
        settled.url = format!("{scheme}://{}", addr.parse::<SocketAddr>()?);
        let mut second = String::new();
        lines.read_line(&mut second)?;
        settled.metrics = settle_testkit::settled_metrics_addr(&second);
        // Keep draining its stdout (logs) so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
                eprint!("settled: {line}");
                line.clear();
            }
        });
        Ok(settled)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Settled {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `settled` next to this executable (`target/<profile>/examples/bench` →
/// `target/<profile>/settled`), built with cargo when missing.
fn find_settled() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let examples = exe.parent().ok_or("no executable directory")?;
    let profile_dir = if examples.file_name().is_some_and(|n| n == "examples") {
        examples.parent().ok_or("no profile directory")?
    } else {
        examples
    };
    let settled = profile_dir.join("settled");
    if settled.exists() {
        return Ok(settled);
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    eprintln!("{} is missing; building it with cargo", settled.display());
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "settle-coordinator",
        "--bin",
        "settled",
    ]);
    if release {
        cargo.arg("--release");
    }
    if !cargo.status()?.success() || !settled.exists() {
        return Err(format!("could not build {}", settled.display()).into());
    }
    Ok(settled)
}

/// utime + stime of a process from `/proc/PID/stat`, in seconds.
pub fn proc_cpu_seconds(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of the file; index 0 here is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// The kernel's clock tick (USER_HZ): `getconf CLK_TCK`, 100 on Linux.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub peak_rss_kb: u64,
    pub rss_kb: u64,
}

fn proc_memory(status: &str) -> Option<Memory> {
    let text = std::fs::read_to_string(status).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Memory {
        peak_rss_kb: field("VmHWM:")?,
        rss_kb: field("VmRSS:")?,
    })
}
