//! Each node's order of frames per broker channel, with frames held for their write.
//!
//! A post's frames are published *held*, before its database write commits, so that the
//! broker orders them while the database writes instead of after (see `Seam::publish_held`).
//! A node that receives a held frame puts it in the channel's order but delivers it, and
//! anything that arrives behind it on the channel, only once its publisher releases it (the
//! write committed). A withdrawn one (the write failed) is dropped. One whose release never
//! comes (its publisher died, or lost the broker) is dropped at its deadline, so a channel
//! is never blocked for longer than that; the publisher extends the deadline while its write
//! is still running.
//!
//! A channel with nothing held has no entry here: a frame for it is delivered at once.
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::hub::Audience;

/// A held frame's name: its publishing node and that node's number for it.
pub(super) type Key<'a> = (&'a str, u64);

enum Entry {
    Ready(Bytes),
    Held {
        origin: Box<str>,
        id: u64,
        frame: Bytes,
        deadline: Instant,
    },
}

impl Entry {
    fn is(&self, key: Key<'_>) -> bool {
        matches!(self, Entry::Held { origin, id, .. } if **origin == *key.0 && *id == key.1)
    }
}

struct Channel {
    audience: Audience,
    entries: VecDeque<Entry>,
}

impl Channel {
    /// Delivers everything at the head that is not held, and forgets a channel left empty.
    fn drain(&mut self, deliver: &mut dyn FnMut(&Audience, &Bytes)) {
        while let Some(Entry::Ready(_)) = self.entries.front() {
            if let Some(Entry::Ready(frame)) = self.entries.pop_front() {
                deliver(&self.audience, &frame);
            }
        }
    }
}

/// The channels of one node that hold something.
#[derive(Default)]
pub(super) struct Orders {
    channels: HashMap<String, Channel>,
}

impl Orders {
    /// A frame nobody holds: delivered now, or queued behind the channel's held frames.
    pub fn frame(
        &mut self,
        channel: &str,
        audience: &Audience,
        frame: Bytes,
        deliver: &mut dyn FnMut(&Audience, &Bytes),
    ) {
        match self.channels.get_mut(channel) {
            Some(c) => c.entries.push_back(Entry::Ready(frame)),
            None => deliver(audience, &frame),
        }
    }

    /// A held frame: it, and whatever follows it on the channel, waits for its release.
    pub fn hold(
        &mut self,
        channel: &str,
        audience: &Audience,
        key: Key<'_>,
        frame: Bytes,
        deadline: Instant,
    ) {
        let c = self
            .channels
            .entry(channel.to_string())
            .or_insert_with(|| Channel {
                audience: audience.clone(),
                entries: VecDeque::new(),
            });
        c.entries.push_back(Entry::Held {
            origin: key.0.into(),
            id: key.1,
            frame,
            deadline,
        });
    }

    /// The write committed: the frame is delivered in its place. Unknown keys are ignored
    /// (the frame expired, or this node subscribed after it was published).
    pub fn release(
        &mut self,
        channel: &str,
        key: Key<'_>,
        deliver: &mut dyn FnMut(&Audience, &Bytes),
    ) {
        self.resolve(channel, key, true, deliver);
    }

    /// The write failed: the frame is dropped.
    pub fn withdraw(
        &mut self,
        channel: &str,
        key: Key<'_>,
        deliver: &mut dyn FnMut(&Audience, &Bytes),
    ) {
        self.resolve(channel, key, false, deliver);
    }

    fn resolve(
        &mut self,
        channel: &str,
        key: Key<'_>,
        release: bool,
        deliver: &mut dyn FnMut(&Audience, &Bytes),
    ) {
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(at) = c.entries.iter().position(|e| e.is(key)) else {
            return;
        };
        if release {
            if let Some(Entry::Held { frame, .. }) = c.entries.get(at) {
                c.entries[at] = Entry::Ready(frame.clone());
            }
        } else {
            c.entries.remove(at);
        }
        c.drain(deliver);
        if c.entries.is_empty() {
            self.channels.remove(channel);
        }
    }

    /// The write is still running: the frame keeps its place until `deadline`.
    pub fn extend(&mut self, channel: &str, key: Key<'_>, deadline: Instant) {
        if let Some(e) = self
            .channels
            .get_mut(channel)
            .and_then(|c| c.entries.iter_mut().find(|e| e.is(key)))
            && let Entry::Held { deadline: d, .. } = e
        {
            *d = deadline;
        }
    }

    /// Drops the held frames at the head of each channel whose deadline has passed, and
    /// delivers what was waiting behind them. Returns how many were dropped.
    pub fn expire(&mut self, now: Instant, deliver: &mut dyn FnMut(&Audience, &Bytes)) -> usize {
        let mut dropped = 0;
        self.channels.retain(|_, c| {
            while let Some(Entry::Held { deadline, .. }) = c.entries.front() {
                if *deadline > now {
                    break;
                }
                c.entries.pop_front();
                dropped += 1;
                c.drain(deliver);
            }
            !c.entries.is_empty()
        });
        dropped
    }

    /// The node stopped receiving the channel: whatever it held there is dropped.
    pub fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// Whether anything is held (for the sweeper).
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(
        orders: &mut Orders,
        f: impl FnOnce(&mut Orders, &mut dyn FnMut(&Audience, &Bytes)),
    ) -> Vec<String> {
        let mut got = Vec::new();
        f(orders, &mut |_, b| {
            got.push(String::from_utf8_lossy(b).into_owned())
        });
        got
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn frames_wait_behind_a_held_one_until_its_release() {
        let a = Audience::room("c", "r");
        let later = Instant::now() + Duration::from_secs(60);
        let mut o = Orders::default();
        assert_eq!(run(&mut o, |o, d| o.frame("ch", &a, b("0"), d)), ["0"]);
        o.hold("ch", &a, ("n1", 1), b("1"), later);
        o.hold("ch", &a, ("n2", 1), b("2"), later);
        assert!(run(&mut o, |o, d| o.frame("ch", &a, b("3"), d)).is_empty());
        // Released out of order: 2 waits for 1, and 3 for both.
        assert!(run(&mut o, |o, d| o.release("ch", ("n2", 1), d)).is_empty());
        assert_eq!(
            run(&mut o, |o, d| o.release("ch", ("n1", 1), d)),
            ["1", "2", "3"]
        );
        assert!(o.is_empty(), "an empty channel is forgotten");
        assert_eq!(run(&mut o, |o, d| o.frame("ch", &a, b("4"), d)), ["4"]);
    }

    #[test]
    fn a_withdrawn_frame_is_never_delivered_and_frees_the_channel() {
        let a = Audience::room("c", "r");
        let later = Instant::now() + Duration::from_secs(60);
        let mut o = Orders::default();
        o.hold("ch", &a, ("n1", 7), b("bad"), later);
        o.frame("ch", &a, b("next"), &mut |_, _| panic!("held back"));
        assert_eq!(run(&mut o, |o, d| o.withdraw("ch", ("n1", 7), d)), ["next"]);
        // A late release of the same key, or one of a key never seen, does nothing.
        assert!(run(&mut o, |o, d| o.release("ch", ("n1", 7), d)).is_empty());
        assert!(run(&mut o, |o, d| o.release("other", ("n1", 8), d)).is_empty());
        assert!(o.is_empty());
    }

    #[test]
    fn channels_are_independent() {
        let (a, x) = (Audience::room("c", "a"), Audience::room("c", "x"));
        let later = Instant::now() + Duration::from_secs(60);
        let mut o = Orders::default();
        o.hold("a", &a, ("n1", 1), b("a1"), later);
        assert_eq!(run(&mut o, |o, d| o.frame("x", &x, b("x1"), d)), ["x1"]);
        assert_eq!(run(&mut o, |o, d| o.release("a", ("n1", 1), d)), ["a1"]);
    }

    #[test]
    fn an_unreleased_frame_expires_at_its_deadline_unless_extended() {
        let a = Audience::room("c", "r");
        let now = Instant::now();
        let mut o = Orders::default();
        o.hold(
            "ch",
            &a,
            ("dead", 1),
            b("lost"),
            now + Duration::from_secs(2),
        );
        o.hold(
            "ch",
            &a,
            ("live", 1),
            b("slow"),
            now + Duration::from_secs(2),
        );
        o.frame("ch", &a, b("after"), &mut |_, _| panic!("held back"));
        o.extend("ch", ("live", 1), now + Duration::from_secs(4));
        assert!(run(&mut o, |o, d| assert_eq!(o.expire(now, d), 0)).is_empty());
        // At 3 s the first is gone; the extended one still holds the rest back.
        let at3 = now + Duration::from_secs(3);
        assert!(run(&mut o, |o, d| assert_eq!(o.expire(at3, d), 1)).is_empty());
        assert_eq!(
            run(&mut o, |o, d| o.release("ch", ("live", 1), d)),
            ["slow", "after"]
        );
        assert!(o.is_empty());
    }

    #[test]
    fn forgetting_a_channel_drops_what_it_held() {
        let a = Audience::room("c", "r");
        let mut o = Orders::default();
        o.hold("ch", &a, ("n", 1), b("x"), Instant::now());
        o.forget("ch");
        assert!(o.is_empty());
        assert!(run(&mut o, |o, d| o.release("ch", ("n", 1), d)).is_empty());
    }
}
