//! The cross-node broker against the real Redis and NATS servers of this machine.
//!
//! Each test body runs once per broker (`name::redis`, `name::nats`), with two separate
//! `connect()` instances standing for two nodes, and a random channel prefix of its own so
//! that tests running side by side on one server never see each other's traffic. A test
//! whose server URL is unset at build time is compiled as ignored (build.rs); run anyway,
//! it fails rather than pass untested. The outage test cuts a TCP proxy of its own, never
//! the real server, which other tests use.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messaging::broker::{self, Broker, BrokerError, Handler};
use tokio::sync::mpsc;

use crate::helpers::{Proxy, WAIT, eventually};
use crate::server_test;

type Inbox = mpsc::UnboundedReceiver<(String, Bytes)>;

/// A handler that forwards every delivery to a channel the test reads.
fn collector() -> (Handler, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |channel: &str, payload: Bytes| {
        let _ = tx.send((channel.to_string(), payload));
    });
    (handler, rx)
}

fn prefix() -> String {
    format!("test-{}-", messaging::ids::new_id())
}

async fn node(url: &str) -> (Arc<dyn Broker>, Inbox) {
    let (handler, inbox) = collector();
    let b = broker::connect(url, handler).await.expect("connect");
    assert!(b.is_connected());
    (b, inbox)
}

async fn next(inbox: &mut Inbox) -> (String, Bytes) {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("timed out waiting for a delivery")
        .expect("handler dropped")
}

/// Waits for `marker` on `channel`, returning everything delivered before it.
async fn until_marker(inbox: &mut Inbox, channel: &str, marker: &str) -> Vec<(String, Bytes)> {
    let mut before = Vec::new();
    loop {
        let (ch, p) = next(inbox).await;
        if ch == channel && &p[..] == marker.as_bytes() {
            return before;
        }
        before.push((ch, p));
    }
}

server_test!(round_trip_between_two_nodes, broker);
async fn round_trip_between_two_nodes(url: &str) {
    let p = prefix();
    let (a, mut a_inbox) = node(url).await;
    let (b, mut b_inbox) = node(url).await;
    let room = format!("{p}room");
    b.subscribe(&room).await.expect("subscribe");
    a.publish(&room, Bytes::from_static(b"hello"));
    let (ch, payload) = next(&mut b_inbox).await;
    assert_eq!((ch.as_str(), &payload[..]), (room.as_str(), &b"hello"[..]));

    // And back, on a channel of A's: the publisher of one is the subscriber of the other.
    let back = format!("{p}back");
    a.subscribe(&back).await.expect("subscribe");
    b.publish(&back, Bytes::from_static(b"hi"));
    let (ch, payload) = next(&mut a_inbox).await;
    assert_eq!((ch.as_str(), &payload[..]), (back.as_str(), &b"hi"[..]));
    // A never subscribed to `room`: nothing of it reached A.
    assert!(a_inbox.try_recv().is_err());
    a.close().await;
    b.close().await;
    assert!(!a.is_connected());
}

server_test!(many_channels_exactly_once_in_order, broker);
async fn many_channels_exactly_once_in_order(url: &str) {
    const CHANNELS: usize = 20;
    const PER_CHANNEL: usize = 100;
    let p = prefix();
    let (a, _a_inbox) = node(url).await;
    let (b, mut b_inbox) = node(url).await;
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("{p}c{i}")).collect();
    for ch in &channels {
        b.subscribe(ch).await.expect("subscribe");
    }
    for seq in 0..PER_CHANNEL {
        for ch in &channels {
            a.publish(ch, Bytes::from(seq.to_string()));
        }
    }
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for _ in 0..CHANNELS * PER_CHANNEL {
        let (ch, payload) = next(&mut b_inbox).await;
        let seq: usize = std::str::from_utf8(&payload)
            .expect("utf-8")
            .parse()
            .expect("a sequence number");
        seen.entry(ch).or_default().push(seq);
    }
    let expected: Vec<usize> = (0..PER_CHANNEL).collect();
    for ch in &channels {
        assert_eq!(seen.get(ch), Some(&expected), "channel {ch}");
    }
    // No duplicate: on every channel, the next thing after the last payload is a marker
    // published after everything.
    for ch in &channels {
        a.publish(ch, Bytes::from_static(b"end"));
    }
    let mut ended = 0;
    while ended < CHANNELS {
        let (ch, payload) = next(&mut b_inbox).await;
        assert_eq!(&payload[..], b"end", "duplicate on {ch}");
        ended += 1;
    }
    a.close().await;
    b.close().await;
}

server_test!(settled_publishes_of_two_nodes_arrive_in_that_order, broker);
async fn settled_publishes_of_two_nodes_arrive_in_that_order(url: &str) {
    // Two publishers taking turns, each waiting for the other's publish to be settled: every
    // subscriber, the publishers' own connections included, sees them in turn order.
    let p = prefix();
    let (a, mut a_inbox) = node(url).await;
    let (b, mut b_inbox) = node(url).await;
    let (c, mut c_inbox) = node(url).await;
    let room = format!("{p}room");
    for n in [&a, &b, &c] {
        n.subscribe(&room).await.expect("subscribe");
    }
    const TURNS: u32 = 300;
    for i in 0..TURNS {
        let by = if i % 2 == 0 { &a } else { &b };
        assert!(by.publish(&room, Bytes::from(i.to_string())), "not taken");
        if let Some(settled) = by.settled() {
            tokio::time::timeout(WAIT, settled)
                .await
                .expect("settled in time");
        }
        assert!(by.settled().is_none(), "nothing more to wait for");
    }
    for inbox in [&mut a_inbox, &mut b_inbox, &mut c_inbox] {
        let mut got = Vec::new();
        while got.len() < TURNS as usize {
            let (ch, payload) = next(inbox).await;
            assert_eq!(ch, room);
            got.push(
                std::str::from_utf8(&payload)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(got, (0..TURNS).collect::<Vec<_>>());
    }
    a.close().await;
    b.close().await;
    c.close().await;
}

server_test!(unsubscribe_stops_delivery, broker);
async fn unsubscribe_stops_delivery(url: &str) {
    // Markers go on the same channel as what they vouch for: order is only promised per
    // channel (a NATS node receives each channel on a task of its own).
    let p = prefix();
    let (a, _a_inbox) = node(url).await;
    let (b, mut b_inbox) = node(url).await;
    let (room, other) = (format!("{p}room"), format!("{p}other"));
    // Subscribing twice is one subscription: one delivery per payload.
    b.subscribe(&room).await.expect("subscribe");
    b.subscribe(&room).await.expect("subscribe again");
    b.subscribe(&other).await.expect("subscribe");
    a.publish(&room, Bytes::from_static(b"one"));
    a.publish(&room, Bytes::from_static(b"mark1"));
    let before = until_marker(&mut b_inbox, &room, "mark1").await;
    assert_eq!(before, vec![(room.clone(), Bytes::from_static(b"one"))]);

    b.unsubscribe(&room).await;
    b.unsubscribe(&room).await;
    a.publish(&room, Bytes::from_static(b"two"));
    // A's publishes reach the server in order: once `other` is through, so is "two".
    a.publish(&other, Bytes::from_static(b"mark2"));
    until_marker(&mut b_inbox, &other, "mark2").await;

    // Subscribed again: the next payload arrives, and "two" never did.
    b.subscribe(&room)
        .await
        .expect("subscribe after unsubscribe");
    a.publish(&room, Bytes::from_static(b"three"));
    let before = until_marker(&mut b_inbox, &room, "three").await;
    assert!(before.is_empty(), "delivered after unsubscribe: {before:?}");
    a.close().await;
    b.close().await;
}

server_test!(subscribe_ok_means_next_publish_arrives, broker);
async fn subscribe_ok_means_next_publish_arrives(url: &str) {
    let p = prefix();
    let (a, _a_inbox) = node(url).await;
    let (b, mut b_inbox) = node(url).await;
    // Many fresh channels: a subscription confirmed late would lose the payload sent at once.
    for i in 0..50 {
        let ch = format!("{p}fresh{i}");
        b.subscribe(&ch).await.expect("subscribe");
        a.publish(&ch, Bytes::from(format!("p{i}")));
        let (got, payload) = next(&mut b_inbox).await;
        assert_eq!(
            (got.as_str(), &payload[..]),
            (ch.as_str(), format!("p{i}").as_bytes())
        );
    }
    a.close().await;
    b.close().await;
}

server_test!(a_channel_nobody_holds_costs_nothing, broker);
async fn a_channel_nobody_holds_costs_nothing(url: &str) {
    let p = prefix();
    let (a, mut a_inbox) = node(url).await;
    let (b, mut b_inbox) = node(url).await;
    // `publish` is not async: it cannot wait on the network. Each payload is taken (queued
    // for the broker), none refused for want of a subscriber.
    for i in 0..1000 {
        assert!(
            a.publish(&format!("{p}nobody{}", i % 10), Bytes::from_static(b"x")),
            "payload {i} not taken"
        );
    }
    // Still connected, still delivering, and none of it surfaced anywhere.
    let live = format!("{p}live");
    b.subscribe(&live).await.expect("subscribe");
    a.publish(&live, Bytes::from_static(b"ok"));
    let before = until_marker(&mut b_inbox, &live, "ok").await;
    assert!(before.is_empty(), "{before:?}");
    assert!(a.is_connected() && b.is_connected());
    assert!(a_inbox.try_recv().is_err());
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn other_urls_are_refused() {
    for url in [
        "memory://x",
        "http://127.0.0.1:6379",
        "rediss://127.0.0.1:6379",
        "",
        "nats",
    ] {
        let (handler, _inbox) = collector();
        match broker::connect(url, handler).await {
            Err(BrokerError::BadUrl(_)) => {}
            Err(e) => panic!("{url:?}: {e}"),
            Ok(_) => panic!("{url:?} accepted"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_broker_fails_quickly() {
    // A port nothing listens on: bind one, then free it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for scheme in ["redis", "nats"] {
        let (handler, _inbox) = collector();
        // A refused port is answered at once; what could hang is a connect that retried
        // instead of reporting it. WAIT bounds the wait for the answer, not its speed.
        let result = tokio::time::timeout(
            WAIT,
            broker::connect(&format!("{scheme}://127.0.0.1:{port}"), handler),
        )
        .await
        .unwrap_or_else(|_| panic!("{scheme}: connect still waiting after {WAIT:?}"));
        assert!(
            matches!(result, Err(BrokerError::Unreachable(_))),
            "{scheme}: {:?}",
            result.err()
        );
    }
}

server_test!(outage_drops_then_resumes_within_5s, broker);
async fn outage_drops_then_resumes_within_5s(url: &str) {
    let (scheme, rest) = url.split_once("://").expect("scheme://host:port");
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let proxy = Proxy::start(hostport.to_string()).await;
    let via_proxy = if path.is_empty() {
        format!("{scheme}://{}", proxy.addr)
    } else {
        format!("{scheme}://{}/{path}", proxy.addr)
    };
    let p = prefix();
    // A goes through the proxy; B talks to the server directly and stays up throughout.
    let (a, mut a_inbox) = node(&via_proxy).await;
    let (b, mut b_inbox) = node(url).await;
    let (to_a, to_b, late) = (format!("{p}to-a"), format!("{p}to-b"), format!("{p}late"));
    a.subscribe(&to_a).await.expect("subscribe");
    b.subscribe(&to_b).await.expect("subscribe");
    b.publish(&to_a, Bytes::from_static(b"before"));
    assert_eq!(&next(&mut a_inbox).await.1[..], b"before");

    proxy.cut();
    eventually("A to notice the outage", || async { !a.is_connected() }).await;
    assert!(b.is_connected());
    // Publishing during the outage neither blocks (`publish` is not async) nor queues for
    // later: each payload is refused at once, left to the caller.
    for i in 0..20_000 {
        assert!(
            !a.publish(&to_b, Bytes::from(format!("during{i}"))),
            "payload {i} taken during the outage"
        );
    }
    // Subscribing during the outage fails, but is remembered.
    assert!(matches!(
        a.subscribe(&late).await,
        Err(BrokerError::Unreachable(_))
    ));

    // An outage long enough for the reconnect backoff to reach its ceiling (1 s), so the
    // measured resume time is the worst case, not the first quick retry: the delays before
    // attempts go 0, 50, 100, 200, 400, 800 ms, then 1 s, so by the eighth attempt refused
    // (one connection each) A waits its longest between attempts.
    eventually("A's reconnect backoff at its ceiling", || {
        let refused = proxy.refused.load(Ordering::Relaxed);
        async move { refused >= 8 }
    })
    .await;
    proxy.restore();
    // The issue asks for delivery to resume within 5 s of the broker's return, so this bound
    // on the clock is the requirement itself, measured here and nowhere else. The design
    // resumes within the backoff ceiling (1 s; `backoff_is_capped_at_one_second` checks it
    // without a clock), which leaves 4 s for a loaded machine.
    let restored = Instant::now();
    // B publishes on A's existing subscription until it gets through (each given 50 ms).
    let mut i = 0u32;
    let resumed = loop {
        b.publish(&to_a, Bytes::from(format!("after{i}")));
        i += 1;
        match tokio::time::timeout(Duration::from_millis(50), a_inbox.recv()).await {
            Ok(Some((ch, payload))) => break (ch, payload),
            Ok(None) => panic!("handler dropped"),
            Err(_) => assert!(
                restored.elapsed() < Duration::from_secs(5),
                "delivery did not resume within 5 s of the broker's return"
            ),
        }
    };
    let took = restored.elapsed();
    eprintln!("{scheme}: delivery resumed {took:?} after the broker returned");
    assert_eq!(resumed.0, to_a);
    assert!(resumed.1.starts_with(b"after"), "{:?}", resumed.1);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(a.is_connected());
    assert!(
        proxy.accepted.load(Ordering::Relaxed) >= 2,
        "A reconnected through the proxy"
    );

    // The subscription made during the outage was made again on reconnect.
    b.publish(&late, Bytes::from_static(b"late"));
    let before = until_marker(&mut a_inbox, &late, "late").await;
    assert!(before.iter().all(|(ch, _)| ch == &to_a), "{before:?}");
    // A publishes again, and nothing it published during the outage shows up first.
    a.publish(&to_b, Bytes::from_static(b"back"));
    let before = until_marker(&mut b_inbox, &to_b, "back").await;
    assert!(
        before.is_empty(),
        "published during the outage: {}",
        before.len()
    );
    a.close().await;
    b.close().await;
}
