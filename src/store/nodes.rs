//! Nodes, leases and the sweep (§5.3).
use std::time::Duration;

use sea_orm::{ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter};

use super::Store;
use super::connections::distinct_rooms;
use super::entities::{connections, nodes};

impl Store {
    pub async fn register_node(
        &self,
        id: &str,
        grpc_address: Option<String>,
        now: i64,
        lease: Duration,
    ) -> Result<(), DbErr> {
        let am = nodes::ActiveModel {
            id: Set(id.to_string()),
            grpc_address: Set(grpc_address),
            started_at: Set(now),
            lease_until: Set(now + lease.as_millis() as i64),
        };
        nodes::Entity::insert(am)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The ids of nodes whose lease holds at `now`.
    pub async fn live_nodes(&self, now: i64) -> Result<Vec<String>, DbErr> {
        nodes::Entity::find()
            .filter(nodes::Column::LeaseUntil.gte(now))
            .all(&self.db)
            .await
            .map(|ns| ns.into_iter().map(|n| n.id).collect())
    }

    /// The gRPC address of a node whose lease holds at `now`.
    pub async fn live_node_address(&self, id: &str, now: i64) -> Result<Option<String>, DbErr> {
        Ok(nodes::Entity::find_by_id(id.to_string())
            .filter(nodes::Column::LeaseUntil.gte(now))
            .one(&self.db)
            .await?
            .and_then(|n| n.grpc_address))
    }

    /// Extends the lease; false if the row is gone (another node swept us).
    pub async fn renew_lease(&self, id: &str, now: i64, lease: Duration) -> Result<bool, DbErr> {
        let r = nodes::Entity::update_many()
            .col_expr(
                nodes::Column::LeaseUntil,
                sea_orm::sea_query::Expr::value(now + lease.as_millis() as i64),
            )
            .filter(nodes::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Deletes this node's rows whose socket is not live, the rows of nodes whose lease
    /// expired, and those nodes. Returns the rooms that lost rows.
    ///
    /// `live_sockets` is asked only after this node's rows are read: a socket is registered
    /// before any of its rows is written, so every row read belongs to a socket in that
    /// set unless the socket has ended. Read the other way round, a socket that opened and
    /// joined between the two reads would lose its new row.
    pub async fn sweep(
        &self,
        node_id: &str,
        live_sockets: impl FnOnce() -> std::collections::HashSet<String>,
        now: i64,
    ) -> Result<Vec<(String, String)>, DbErr> {
        let own = connections::Entity::find()
            .filter(connections::Column::NodeId.eq(node_id))
            .all(&self.db)
            .await?;
        let live_sockets = live_sockets();
        let stale: Vec<connections::Model> = own
            .into_iter()
            .filter(|r| !live_sockets.contains(&r.socket_id))
            .collect();
        let mut affected = Vec::new();
        if !stale.is_empty() {
            let ids: Vec<String> = stale.iter().map(|r| r.id.clone()).collect();
            connections::Entity::delete_many()
                .filter(connections::Column::Id.is_in(ids))
                .exec(&self.db)
                .await?;
            affected.extend(stale);
        }
        let expired: Vec<String> = nodes::Entity::find()
            .filter(nodes::Column::LeaseUntil.lt(now))
            .filter(nodes::Column::Id.ne(node_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        if !expired.is_empty() {
            let orphans = connections::Entity::find()
                .filter(connections::Column::NodeId.is_in(expired.clone()))
                .all(&self.db)
                .await?;
            let txn = self.begin_raw().await?;
            connections::Entity::delete_many()
                .filter(connections::Column::NodeId.is_in(expired.clone()))
                .exec(&txn)
                .await?;
            nodes::Entity::delete_many()
                .filter(nodes::Column::Id.is_in(expired))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            affected.extend(orphans);
        }
        Ok(distinct_rooms(affected))
    }

    /// Deletes a node's rows and its `nodes` row; returns the rooms that lost rows.
    pub async fn delete_node(&self, id: &str) -> Result<Vec<(String, String)>, DbErr> {
        let rows = connections::Entity::find()
            .filter(connections::Column::NodeId.eq(id))
            .all(&self.db)
            .await?;
        let txn = self.begin_raw().await?;
        connections::Entity::delete_many()
            .filter(connections::Column::NodeId.eq(id))
            .exec(&txn)
            .await?;
        nodes::Entity::delete_by_id(id.to_string())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(distinct_rooms(rows))
    }
}
