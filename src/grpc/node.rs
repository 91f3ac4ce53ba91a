//! `messaging.v1.Node`: the part of a room call that another node forwards to the node
//! holding the socket (see `cluster::peers`).
use tonic::{Request, Response, Status};

use crate::pb;
use crate::service::Services;
use crate::service::model::Connection;
use crate::service::rooms::NewRow;

#[derive(Clone)]
pub struct NodeService {
    pub svc: Services,
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn join(
        &self,
        request: Request<pb::NodeJoinRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let rows = request
            .into_inner()
            .rows
            .into_iter()
            .map(|r| NewRow {
                church_id: r.church_id,
                room: r.conversation_id,
                socket_id: r.socket_id,
                person_id: r.person_id,
                display_name: r.display_name,
                ip_address: r.ip_address,
            })
            .collect();
        let stored = self.svc.join_local(rows).await?;
        Ok(Response::new(pb::ConnectionList {
            connections: stored.into_iter().map(Into::into).collect(),
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::NodeLeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let row = request
            .into_inner()
            .row
            .ok_or_else(|| Status::invalid_argument("row is required"))?;
        let row = Connection::try_from(row)
            .map_err(|_| Status::invalid_argument("timeJoined is not RFC 3339"))?;
        let removed = self.svc.leave_local(row).await?;
        Ok(Response::new(pb::LeaveReply {
            success: true,
            removed,
        }))
    }

    async fn renamed(
        &self,
        request: Request<pb::NodeRenamedRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let r = request.into_inner();
        self.svc.renamed_local(&r.socket_id, &r.row_ids, &r.name);
        Ok(Response::new(pb::LeaveReply {
            success: true,
            removed: false,
        }))
    }

    async fn holds(
        &self,
        request: Request<pb::HoldsRequest>,
    ) -> Result<Response<pb::HoldsReply>, Status> {
        let id = request.into_inner().socket_id;
        let held = self.svc.hub.socket(&id).is_some_and(|h| h.is_open());
        Ok(Response::new(pb::HoldsReply { held }))
    }
}
