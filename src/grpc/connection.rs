//! `messaging.v1.Connection`: protobuf ↔ the rooms of the service layer. Network callers
//! are trusted backends and act as `Caller::System` (§12).
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::pb;
use crate::service::Services;
use crate::service::model::Connection;
use crate::service::rooms::JoinInput;

#[derive(Clone)]
pub struct ConnectionService {
    pub svc: Services,
}

fn list(rows: Vec<Connection>) -> Response<pb::ConnectionList> {
    Response::new(pb::ConnectionList {
        connections: rows.into_iter().map(Into::into).collect(),
    })
}

#[tonic::async_trait]
impl pb::connection_server::Connection for ConnectionService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let items = request
            .into_inner()
            .items
            .into_iter()
            .map(|it| JoinInput {
                church_id: it.church_id,
                conversation_id: it.conversation_id,
                socket_id: it.socket_id,
                display_name: it.display_name,
                person_id: it.person_id,
                ip_address: it.ip_address,
                since: it.since.map(|p| crate::cluster::Position {
                    epoch: p.epoch,
                    seq: p.seq,
                }),
            })
            .collect();
        Ok(list(self.svc.join(&Caller::System, None, items).await?))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let r = request.into_inner();
        let removed = self
            .svc
            .leave(&Caller::System, &r.church_id, &r.room_id, &r.socket_id)
            .await?;
        Ok(Response::new(pb::LeaveReply {
            success: true,
            removed,
        }))
    }

    async fn set_name(
        &self,
        request: Request<pb::SetNameRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let r = request.into_inner();
        Ok(list(
            self.svc
                .set_name(&Caller::System, &r.socket_id, &r.name)
                .await?,
        ))
    }

    async fn list_room(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ConnectionList>, Status> {
        let r = request.into_inner();
        Ok(list(
            self.svc
                .list_room(&Caller::System, &r.church_id, &r.room_id)
                .await?,
        ))
    }

    async fn attendance(
        &self,
        request: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::AttendanceReply>, Status> {
        let r = request.into_inner();
        let a = self
            .svc
            .attendance(&Caller::System, &r.church_id, &r.room_id)
            .await?;
        Ok(Response::new(pb::AttendanceReply {
            conversation_id: a.conversation_id,
            viewers: a
                .viewers
                .into_iter()
                .map(|v| pb::Viewer {
                    id: v.id,
                    display_name: v.display_name,
                })
                .collect(),
            total_viewers: a.total_viewers as u32,
        }))
    }
}
