//! Process metrics read from `/proc/self` at each scrape: CPU seconds, resident memory, open
//! file descriptors, start time. Registered under the registry's prefix
//! (`pillion_process_cpu_seconds_total`, ...).

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports CPU times in clock ticks of 1/100 s (`USER_HZ`, fixed for user space).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub struct ProcessCollector {
    start_time: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        // Close enough: the collector is made as the process starts.
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        ProcessCollector { start_time }
    }
}

/// User plus system CPU seconds, from `/proc/self/stat` (fields 14 and 15).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident memory in bytes, from `VmRSS` in `/proc/self/status`.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            let m = ConstCounter::new(cpu);
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent",
                None,
                m.metric_type(),
            )?)?;
        }
        if let Some(rss) = resident_bytes() {
            let m = ConstGauge::new(rss);
            m.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size",
                None,
                m.metric_type(),
            )?)?;
        }
        if let Some(fds) = open_fds() {
            let m = ConstGauge::new(fds);
            m.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                m.metric_type(),
            )?)?;
        }
        let m = ConstGauge::new(self.start_time);
        m.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch",
            None,
            m.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds().is_some_and(|c| c >= 0.0));
        assert!(resident_bytes().is_some_and(|r| r > 0));
        assert!(open_fds().is_some_and(|n| n > 0));
        let mut registry = prometheus_client::registry::Registry::with_prefix("pillion");
        registry.register_collector(Box::new(ProcessCollector::default()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for name in [
            "pillion_process_cpu_seconds_total ",
            "pillion_process_resident_memory_bytes ",
            "pillion_process_open_fds ",
            "pillion_process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }
}
