//! Nodes, leases and the sweep (§5.3). A node registers with a lease, renews it every
//! sweep interval, and sweeps: its own rows whose socket it no longer holds, and the rows
//! of nodes whose lease ran out. A node that finds itself swept (it was paused past its
//! lease) registers again and writes back the rows of the sockets it still holds.
use super::Services;
use crate::error::AppResult;

impl Services {
    /// Inserts this node's `nodes` row.
    pub async fn register_node(&self, grpc_address: Option<String>) -> AppResult<()> {
        self.store()
            .register_node(
                &self.node_id,
                grpc_address,
                crate::time::now_ms(),
                self.config.lease(),
            )
            .await?;
        Ok(())
    }

    /// One lease renewal and sweep.
    pub async fn sweep_round(&self) {
        let now = crate::time::now_ms();
        let lease = self.config.lease();
        match self.store().renew_lease(&self.node_id, now, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(node = %self.node_id, "this node was swept by another; registering again");
                metrics::counter!("messaging_node_reregistered_total").increment(1);
                if let Err(e) = self.reregister(now).await {
                    tracing::warn!(error = %e, "could not register again");
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        let live = || {
            self.hub
                .sockets()
                .iter()
                .map(|h| h.id.to_string())
                .collect()
        };
        if !self.seam.crosses_nodes() {
            self.warn_if_not_alone(now).await;
        }
        match self.store().sweep(&self.node_id, live, now).await {
            Ok(rooms) => {
                for (church, room) in rooms {
                    self.room_changed(&church, &room, false);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }

    /// Without a broker, frames reach only this node's sockets: say so when other live nodes
    /// share the database (once per change of their number, and as a gauge).
    async fn warn_if_not_alone(&self, now: i64) {
        let Ok(nodes) = self.store().live_nodes(now).await else {
            return;
        };
        let others = nodes.iter().filter(|n| **n != *self.node_id).count();
        metrics::gauge!("messaging_other_nodes_without_broker").set(others as f64);
        let before = self
            .others_seen
            .swap(others, std::sync::atomic::Ordering::Relaxed);
        if others > 0 && others != before {
            tracing::warn!(
                others,
                "other nodes share this database, but without BROKER_URL frames reach only \
                 this node's sockets: set BROKER_URL (redis:// or nats://) on every node"
            );
        }
    }

    /// Registers again and writes back the rows of every socket still held, each under its
    /// membership lock so that a concurrent join or leave of that socket is not undone.
    async fn reregister(&self, now: i64) -> AppResult<()> {
        self.store()
            .register_node(&self.node_id, None, now, self.config.lease())
            .await?;
        let mut rooms = std::collections::BTreeSet::new();
        for h in self.hub.sockets() {
            let _guard = h.membership.lock().await;
            if !h.is_open() {
                continue;
            }
            let rows = self.rows.socket_rows(&h.id);
            self.store().restore_rows(&self.node_id, &rows).await?;
            rooms.extend(rows.into_iter().map(|r| (r.church_id, r.conversation_id)));
        }
        for (church, room) in rooms {
            self.room_changed(&church, &room, false);
        }
        Ok(())
    }

    /// At shutdown: deletes this node's rows and `nodes` row, and tells the rooms.
    pub async fn remove_node(&self) -> AppResult<()> {
        let rooms = self.store().delete_node(&self.node_id).await?;
        for (church, room) in rooms {
            self.room_changed(&church, &room, false);
        }
        Ok(())
    }
}
