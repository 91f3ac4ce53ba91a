//! Calls to the node holding a socket (gRPC `messaging.v1.Node`): the room calls that must
//! run where the socket is (join, leave, rename), so that any node serves any call.
use std::time::Duration;

use super::brokered::Cluster;
use crate::error::{AppError, AppResult};
use crate::pb;
use crate::store::NewRow;
use crate::store::entities::connections;

impl Cluster {
    /// A gRPC client of another node's `Node` service (connections are kept per node).
    async fn peer(
        &self,
        node: &str,
    ) -> AppResult<pb::node_client::NodeClient<tonic::transport::Channel>> {
        let cached = self.peers.lock().get(node).cloned();
        let channel = match cached {
            Some(c) => c,
            None => {
                let address = self
                    .store
                    .live_node_address(node, crate::time::now_ms())
                    .await?
                    .ok_or(AppError::NotFound("Socket not found"))?;
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| AppError::Internal(format!("node {node} address: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10));
                let c = endpoint.connect_lazy();
                self.peers.lock().insert(node.to_string(), c.clone());
                c
            }
        };
        Ok(pb::node_client::NodeClient::new(channel))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.grpc_token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// A failed call to another node: `NOT_FOUND` is the holder's `Socket not found`;
    /// anything else means the node is unreachable and its connection is dropped.
    fn peer_error(&self, node: &str, s: tonic::Status) -> AppError {
        if s.code() == tonic::Code::NotFound {
            return AppError::NotFound("Socket not found");
        }
        self.peers.lock().remove(node);
        AppError::Internal(format!("node {node}: {}", s.message()))
    }

    /// The node holding `socket_id`, asked of every other live node at once.
    pub(super) async fn locate_holder(&self, socket_id: &str) -> AppResult<Option<String>> {
        let now = crate::time::now_ms();
        let nodes = self.store.live_nodes(now).await?;
        let asks = nodes
            .into_iter()
            .filter(|n| *n != self.inbox.node_id)
            .map(|node| async move {
                let mut client = self.peer(&node).await.ok()?;
                let req = self.request(pb::HoldsRequest {
                    socket_id: socket_id.to_string(),
                });
                match client.holds(req).await {
                    Ok(r) => r.into_inner().held.then_some(node),
                    Err(s) => {
                        let _ = self.peer_error(&node, s);
                        None
                    }
                }
            });
        Ok(futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next())
    }

    pub(super) async fn join_on(
        &self,
        node: &str,
        rows: Vec<NewRow>,
    ) -> AppResult<Vec<connections::Model>> {
        let req = self.request(pb::NodeJoinRequest {
            rows: rows
                .into_iter()
                .map(|r| pb::NewConnection {
                    church_id: r.church_id,
                    conversation_id: r.room,
                    socket_id: r.socket_id,
                    person_id: r.person_id,
                    display_name: r.display_name,
                    ip_address: r.ip_address,
                })
                .collect(),
        });
        let reply = self
            .peer(node)
            .await?
            .join(req)
            .await
            .map_err(|s| self.peer_error(node, s))?;
        reply
            .into_inner()
            .connections
            .into_iter()
            .map(|r| {
                connections::Model::try_from(r)
                    .map_err(|_| AppError::Internal(format!("node {node} sent an unreadable row")))
            })
            .collect()
    }

    pub(super) async fn leave_on(&self, node: &str, row: connections::Model) -> AppResult<bool> {
        let req = self.request(pb::NodeLeaveRequest {
            row: Some(row.into()),
        });
        let reply = self
            .peer(node)
            .await?
            .leave(req)
            .await
            .map_err(|s| self.peer_error(node, s))?;
        Ok(reply.into_inner().removed)
    }

    pub(super) async fn renamed_on(
        &self,
        node: &str,
        socket: &str,
        ids: &[String],
        name: &str,
    ) -> AppResult<()> {
        let req = self.request(pb::NodeRenamedRequest {
            socket_id: socket.to_string(),
            row_ids: ids.to_vec(),
            name: name.to_string(),
        });
        self.peer(node)
            .await?
            .renamed(req)
            .await
            .map_err(|s| self.peer_error(node, s))?;
        Ok(())
    }
}

/// The node wire's rows are the stored rows: a holder answers a join with what it wrote,
/// and a leave names the row it is to delete.
impl From<connections::Model> for pb::ConnectionRow {
    fn from(r: connections::Model) -> Self {
        Self {
            id: r.id,
            church_id: r.church_id,
            conversation_id: r.conversation_id,
            person_id: r.person_id,
            display_name: r.display_name,
            time_joined: crate::time::format_ms(r.time_joined),
            socket_id: r.socket_id,
            ip_address: r.ip_address,
            node_id: r.node_id,
            position: None,
        }
    }
}

/// A row as another node sent it; fails on an unreadable `timeJoined`.
impl TryFrom<pb::ConnectionRow> for connections::Model {
    type Error = chrono::ParseError;

    fn try_from(r: pb::ConnectionRow) -> Result<Self, Self::Error> {
        let time_joined = chrono::DateTime::parse_from_rfc3339(&r.time_joined)?;
        Ok(Self {
            anonymous_number: r
                .display_name
                .as_deref()
                .and_then(crate::store::anonymous_number),
            id: r.id,
            church_id: r.church_id,
            conversation_id: r.conversation_id,
            person_id: r.person_id,
            display_name: r.display_name,
            time_joined: time_joined.timestamp_millis(),
            socket_id: r.socket_id,
            ip_address: r.ip_address,
            node_id: r.node_id,
        })
    }
}
