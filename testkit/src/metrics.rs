//! Scraping `/metrics` as Prometheus does: one plain HTTP/1.1 GET over a real socket, the
//! text format parsed into samples keyed by name and labels exactly as the format spells
//! them (`settle_transactions_begun_total{mode="tcc"}`), so that tests assert on the names
//! that operators' dashboards and alerts use.

use std::{collections::HashMap, net::SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every sample of one scrape. Panics, as tests want, unless the answer is a 200 in the
/// Prometheus text format.
pub async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: settle\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("sample");
            (key.to_owned(), value.parse().expect("value"))
        })
        .collect()
}

/// A sample's value; a counter not yet exported reads as zero.
pub fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// Waits until `key` at `addr` reads at least `at_least`, failing the test after 10 s.
pub async fn wait_for_value(addr: SocketAddr, key: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while value(&scrape(addr).await, key) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reached {at_least}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The metrics address in `settled`'s second line of stdout (`settled metrics on
/// http://ADDR/metrics`), the one place outside `settled` that reads that line.
pub fn settled_metrics_addr(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("settled metrics on http://")?
        .strip_suffix("/metrics")?
        .parse()
        .ok()
}
