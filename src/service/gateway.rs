//! What gateway mode (§5.5) asks of the domain beyond the ordinary calls: a connection that
//! API Gateway reports closed, the scheduled sweep, and the end of every invocation, where
//! the attendance the invocation made due is sent and every post has finished (Lambda
//! freezes the process once it replies, so nothing may be left for later).
use std::time::Duration;

use super::Services;
use crate::cluster::Drained;
use crate::error::AppResult;

/// Rounds of attendance at the end of one invocation: a post answered `410` prunes rows and
/// makes its rooms' attendance due again, and each round can only prune rows still there.
const MAX_ROUNDS: usize = 8;

impl Services {
    /// `$disconnect` of a connection: its rows go, and attendance becomes due in its rooms.
    pub async fn connection_gone(&self, connection: &str) -> AppResult<usize> {
        let rooms = self.store().delete_socket_rows(connection).await?;
        for (church, room) in &rooms {
            self.room_changed(church, room, false);
        }
        Ok(rooms.len())
    }

    /// The scheduled sweep: rows joined longer ago than a connection can live are deleted,
    /// and attendance becomes due in their rooms. Returns the rooms swept.
    pub async fn sweep_joined_before(&self, max_age: Duration) -> AppResult<usize> {
        let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let before = crate::time::now_ms().saturating_sub(age);
        let rooms = self.store().delete_rows_joined_before(before).await?;
        for (church, room) in &rooms {
            self.room_changed(church, room, false);
        }
        Ok(rooms.len())
    }

    /// Waits until every frame published so far has been posted, and makes attendance due
    /// in the rooms whose rows a `410` pruned. What the posts came to, for a caller that must
    /// know whether (or how often) its frame reached a socket.
    pub async fn drain_published(&self) -> Drained {
        let drained = self.seam.drain().await;
        for (church, room) in &drained.pruned {
            self.room_changed(church, room, false);
        }
        drained
    }

    /// The end of an invocation: sends the attendance it made due, once per room, and waits
    /// until every frame has been posted. Returns the rows posted toward.
    pub async fn finish_invocation(&self) -> usize {
        let mut posts = 0;
        for _ in 0..MAX_ROUNDS {
            for (key, audience) in self.due_attendance() {
                self.flush_attendance(key, audience).await;
            }
            let drained = self.drain_published().await;
            posts += drained.posts;
            if drained.pruned.is_empty() {
                return posts;
            }
        }
        // What is still due is sent by the next invocation that touches the room.
        tracing::warn!("attendance still due after {MAX_ROUNDS} rounds of pruned connections");
        posts
    }
}
