//! The service's own timing histograms (`GET /metrics`, Prometheus text), read from every
//! node at publish start and after the drain, so that a report says where a publish's time
//! went on the server: the whole request, its database write, the broker acknowledgement.
//! A target without `/metrics` (the floor) simply has none.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};

use crate::http::Http;

/// `series` (name and labels, `_sum`/`_count` removed) → (sum of seconds, count), summed
/// over the nodes.
pub type Snapshot = BTreeMap<String, (f64, f64)>;

/// Adds the `*_seconds_sum` and `*_seconds_count` series of one exposition to `into`.
pub fn parse(text: &str, into: &mut Snapshot) {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match key.find('{') {
            Some(i) => key.split_at(i),
            None => (key, ""),
        };
        let (base, is_sum) = if let Some(b) = name.strip_suffix("_sum") {
            (b, true)
        } else if let Some(b) = name.strip_suffix("_count") {
            (b, false)
        } else {
            continue;
        };
        if !base.ends_with("_seconds") {
            continue;
        }
        let entry = into.entry(format!("{base}{labels}")).or_default();
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
}

/// Every node's `/metrics`, summed; None when no node answered 200.
pub async fn scrape(nodes: &[SocketAddr], timeout: Duration) -> Option<Snapshot> {
    let mut out = Snapshot::new();
    let mut any = false;
    for &addr in nodes {
        let Ok(mut http) = Http::new(addr, None, timeout) else {
            continue;
        };
        if let Ok((200, body)) = http.request(Method::GET, "/metrics", Bytes::new()).await {
            parse(&String::from_utf8_lossy(&body), &mut out);
            any = true;
        }
    }
    any.then_some(out)
}

/// Each series that moved between the two snapshots: its count and mean in ms.
pub fn window(before: &Snapshot, after: &Snapshot) -> Value {
    let mut out = serde_json::Map::new();
    for (series, &(sum, count)) in after {
        let (s0, c0) = before.get(series).copied().unwrap_or_default();
        let n = count - c0;
        if n >= 1.0 {
            let mean_ms = (sum - s0) / n * 1000.0;
            out.insert(
                series.clone(),
                json!({"count": n as u64, "mean_ms": (mean_ms * 1000.0).round() / 1000.0}),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"# TYPE messaging_message_write_seconds summary
messaging_message_write_seconds{quantile="0.5"} 0.0005
messaging_message_write_seconds_sum 2.5
messaging_message_write_seconds_count 2000
messaging_http_request_seconds_sum{route="/messaging/messages/send"} 3.0
messaging_http_request_seconds_count{route="/messaging/messages/send"} 2000
messaging_sockets_open 333
messaging_broker_published_total 4000
"#;

    #[test]
    fn sums_histograms_over_nodes_and_ignores_the_rest() {
        let mut s = Snapshot::new();
        parse(NODE, &mut s);
        parse(NODE, &mut s);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s["messaging_message_write_seconds"], (5.0, 4000.0));
        assert_eq!(
            s[r#"messaging_http_request_seconds{route="/messaging/messages/send"}"#],
            (6.0, 4000.0)
        );
    }

    #[test]
    fn window_reports_the_mean_of_what_happened_in_between() {
        let mut before = Snapshot::new();
        before.insert("a_seconds".into(), (1.0, 1000.0));
        before.insert("idle_seconds".into(), (1.0, 10.0));
        let mut after = before.clone();
        after.insert("a_seconds".into(), (1.5, 2000.0));
        after.insert("new_seconds".into(), (0.002, 2.0));
        let w = window(&before, &after);
        assert_eq!(w["a_seconds"], json!({"count": 1000, "mean_ms": 0.5}));
        assert_eq!(w["new_seconds"], json!({"count": 2, "mean_ms": 1.0}));
        assert!(w.get("idle_seconds").is_none(), "{w}");
    }
}
