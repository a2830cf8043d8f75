//! The process metrics of the Prometheus client conventions, read from `/proc/self` at
//! each scrape: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds` and `process_start_time_seconds`.
//! On a system without `/proc` they are left out.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// The collector; stateless, it reads everything when scraped.
#[derive(Debug)]
pub struct Process;

/// What `/proc/self/stat` says, in the units the metrics use.
struct Stat {
    cpu_seconds: f64,
    start_seconds: f64,
    virtual_bytes: i64,
    resident_bytes: i64,
}

// The kernel's units: USER_HZ ticks (100 on every Linux Settle runs on) and 4 KiB pages.
// Reading them with sysconf would need libc for two constants that do not vary there.
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_BYTES: i64 = 4096;

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses; the fields follow its last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name, field k of proc(5) is at index k - 3.
    let field = |k: usize| fields.get(k - 3).and_then(|f| f.parse::<u64>().ok());
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
        start_seconds: boot as f64 + field(22)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: i64::try_from(field(23)?).ok()?,
        resident_bytes: i64::try_from(field(24)?).ok()? * PAGE_BYTES,
    })
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = stat() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                open_fds().unwrap_or(0),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let start = ConstGauge::new(stat.start_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}
