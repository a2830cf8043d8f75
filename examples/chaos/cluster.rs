//! The system under test as processes: two `settled` on one PostgreSQL database and the
//! four shop services, each in its own process on its own database, every one behind a
//! proxy ([`crate::proxy`]). Starting, killing, pausing and restarting them is here; what
//! to do to them, and when, is the schedule's.

use std::{
    fs::File,
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

use crate::{Result, proxy::Proxy};

/// The coordinators' names, as `application_name` in PostgreSQL too.
pub const COORDINATORS: [&str; 2] = ["settled-a", "settled-b"];

/// One process of the cluster, restartable with the same command line.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn new(name: &str, program: PathBuf, args: Vec<String>, port: u16, logs: &Path) -> Process {
        Process {
            name: name.to_owned(),
            port,
            program,
            args,
            log: logs.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts it, appending its output to its log, and waits until its port accepts
    /// connections; returns how long that took.
    pub async fn start(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        self.child = Some(child);
        let deadline = started + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(format!(
                    "{} exited ({status}) at start; see {}",
                    self.name,
                    self.log.display()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not listen within 30 s", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.as_ref().ok_or("not running")?.id();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !sent.success() {
            return Err(format!("kill -{signal} {pid} failed").into());
        }
        Ok(())
    }

    /// Whether it exited on its own (a crash the schedule did not cause).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(format!(
            "{} exited on its own ({status}); see {}",
            self.name,
            self.log.display()
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1 (and, in practice, on 127.0.0.2).
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The executable `name` next to this example (`target/<profile>/examples/chaos` →
/// `target/<profile>/NAME`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("no executable directory")?;
    let dir = if dir.file_name().is_some_and(|n| n == "examples") {
        dir.parent().ok_or("no profile directory")?
    } else {
        dir
    };
    let path = dir.join(name);
    if !path.exists() {
        return Err(format!(
            "{} is missing: build it first (cargo build --workspace [--release])",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// Where the databases are: the coordinator's, and the shop's template (`{service}`).
#[derive(Debug, Clone)]
pub struct Databases {
    pub coordinator: String,
    pub shop: String,
}

/// Every process and every link.
#[derive(Debug)]
pub struct Cluster {
    pub coordinators: Vec<Mutex<Process>>,
    pub participants: Vec<Mutex<Process>>,
    /// The proxy in front of each coordinator (initiator ↔ coordinator links).
    pub coordinator_links: Vec<Proxy>,
    /// The proxy in front of each participant (coordinator ↔ participant links).
    pub participant_links: Vec<Proxy>,
    /// Held by a fault for as long as it lasts, so that faults on one link do not overlap.
    pub link_locks: Vec<Mutex<()>>,
    coordinator_ports: [u16; 2],
}

/// The shop services, one process each.
pub const SERVICES: [&str; 4] = ["inventory", "order", "payment", "points"];

/// Settings of the processes that make faults matter within a short run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lease_ms: u64,
    pub hot_sku: String,
    pub redis: String,
    pub redis_prefix: String,
}

impl Cluster {
    /// Starts the proxies, then the coordinators, then the participants.
    pub async fn start(db: &Databases, settings: &Settings, logs: &Path) -> Result<Cluster> {
        let settled = binary("settled")?;
        let shop = binary("settle-participants")?;
        let coordinator_ports = [free_port()?, free_port()?];
        let participant_ports = [free_port()?, free_port()?, free_port()?, free_port()?];
        let mut coordinator_links = Vec::new();
        for port in coordinator_ports {
            coordinator_links.push(
                Proxy::start(&format!("127.0.0.2:{port}"), format!("127.0.0.1:{port}")).await?,
            );
        }
        let mut participant_links = Vec::new();
        for port in participant_ports {
            participant_links.push(
                Proxy::start(&format!("127.0.0.2:{port}"), format!("127.0.0.1:{port}")).await?,
            );
        }
        let mut coordinators = Vec::new();
        for (name, port) in COORDINATORS.iter().zip(coordinator_ports) {
            let mut args = vec![
                format!("--listen=127.0.0.1:{port}"),
                format!("--database={}?application_name={name}", db.coordinator),
                "--metrics-listen=off".to_owned(),
                "--max-connections=8".to_owned(),
                format!("--lease-ms={}", settings.lease_ms),
                format!("--call-timeout-ms={}", settings.lease_ms / 3),
                "--retry-initial-ms=100".to_owned(),
                "--retry-cap-ms=1000".to_owned(),
                "--recovery-interval-ms=200".to_owned(),
                // Slow rounds are the schedule's doing; only a broken answer may flag.
                "--attention-after-attempts=1000000".to_owned(),
                "--attention-after-secs=86400".to_owned(),
            ];
            for (service, port) in SERVICES.iter().zip(participant_ports) {
                args.push(format!("--participant={service}=http://127.0.0.2:{port}"));
            }
            coordinators.push(Process::new(name, settled.clone(), args, port, logs));
        }
        let mut participants = Vec::new();
        for (service, port) in SERVICES.iter().zip(participant_ports) {
            let mut args = vec![
                format!("--service={service}"),
                format!("--listen=127.0.0.1:{port}"),
                "--advertise-host=127.0.0.2".to_owned(),
                format!(
                    "--database={}",
                    settle_participants::shop::database_url(&db.shop, service)
                ),
                "--metrics-listen=off".to_owned(),
                format!("--coordinator=http://127.0.0.1:{}", coordinator_ports[0]),
            ];
            if *service == "inventory" {
                args.extend([
                    format!("--redis={}", settings.redis),
                    format!("--redis-prefix={}", settings.redis_prefix),
                    format!("--hot-sku={}", settings.hot_sku),
                    "--reconcile-every-ms=500".to_owned(),
                ]);
            }
            participants.push(Process::new(service, shop.clone(), args, port, logs));
        }
        for p in coordinators.iter_mut().chain(participants.iter_mut()) {
            p.start().await?;
        }
        Ok(Cluster {
            coordinators: coordinators.into_iter().map(Mutex::new).collect(),
            participants: participants.into_iter().map(Mutex::new).collect(),
            coordinator_links,
            participant_links,
            link_locks: (0..COORDINATORS.len() + SERVICES.len())
                .map(|_| Mutex::new(()))
                .collect(),
            coordinator_ports,
        })
    }

    /// The initiators' URL of coordinator `i`: through its proxy.
    pub fn coordinator_url(&self, i: usize) -> String {
        format!("http://127.0.0.2:{}", self.coordinator_ports[i])
    }
}
