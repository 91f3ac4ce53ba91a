//! A short-lived cache of what every post checks: the conversation (church, type, access
//! flags) and its blocked IPs. Posting is the hot path, and these two reads would otherwise
//! cost two database round trips per message. Changes made through this node invalidate
//! at once; changes made on another node are seen within `TTL`.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{ConvAccess, Services};
use crate::auth::access::ContentType;
use crate::error::{AppError, AppResult};

const TTL: Duration = Duration::from_secs(2);
/// Entries beyond this are dropped wholesale rather than evicted one by one: the cache only
/// needs to hold the rooms that are busy right now.
const MAX_ENTRIES: usize = 10_000;

/// A value and when it was read.
type Stamped<V> = (Instant, V);
/// The blocked IPs of one conversation.
type IpSet = Arc<HashSet<String>>;

#[derive(Default)]
pub struct PostCache {
    conversations: Mutex<HashMap<String, Stamped<ConvAccess>>>,
    blocked: Mutex<HashMap<(String, String), Stamped<IpSet>>>,
}

fn fresh<V: Clone>(entry: Option<&(Instant, V)>) -> Option<V> {
    entry
        .filter(|(at, _)| at.elapsed() < TTL)
        .map(|(_, v)| v.clone())
}

impl PostCache {
    pub fn forget_conversation(&self, id: &str) {
        self.conversations.lock().remove(id);
    }

    pub fn forget_blocked(&self, church: &str, conversation: &str) {
        self.blocked
            .lock()
            .remove(&(church.to_string(), conversation.to_string()));
    }

    pub fn forget_all_blocked(&self) {
        self.blocked.lock().clear();
    }
}

impl Services {
    /// Gateway mode keeps no cache: its instances come and go, nothing tells one of them
    /// what another changed, and a frozen instance's clock may not count the time it was
    /// frozen, so "fresh" would mean nothing. Each invocation reads.
    fn caches_off(&self) -> bool {
        self.seam.socketless()
    }

    /// A conversation for a post, from the cache when fresh. Private conversations are never
    /// cached: their access hangs on the participants row, which changes separately.
    pub async fn hot_conversation(&self, id: &str) -> AppResult<ConvAccess> {
        if self.caches_off() {
            return self.load_conversation(id).await;
        }
        let cached = fresh(self.post_cache.conversations.lock().get(id));
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = self.load_conversation(id).await?;
        if super::content_type(&c.conv) != ContentType::PrivateMessage {
            let mut map = self.post_cache.conversations.lock();
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(id.to_string(), (Instant::now(), c.clone()));
        }
        Ok(c)
    }

    /// The conversation, which must be in `church`, or 404.
    pub async fn hot_conversation_in(&self, church: &str, id: &str) -> AppResult<ConvAccess> {
        let c = self.hot_conversation(id).await?;
        if c.conv.church_id != church {
            return Err(AppError::NotFound("Conversation not found"));
        }
        Ok(c)
    }

    /// Whether `ip` is blocked in a conversation.
    pub async fn hot_ip_blocked(
        &self,
        church: &str,
        conversation: &str,
        ip: &str,
    ) -> AppResult<bool> {
        let key = (church.to_string(), conversation.to_string());
        let cached = if self.caches_off() {
            None
        } else {
            fresh(self.post_cache.blocked.lock().get(&key))
        };
        let set = match cached {
            Some(set) => set,
            None => {
                let ips: HashSet<String> = self
                    .store()
                    .blocked_ips(church, conversation)
                    .await?
                    .into_iter()
                    .collect();
                let set = Arc::new(ips);
                let mut map = self.post_cache.blocked.lock();
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
                map.insert(key, (Instant::now(), set.clone()));
                set
            }
        };
        Ok(set.contains(ip))
    }
}
