//! `messaging.v1.Delivery`: protobuf ↔ the service layer's delivery.
use tonic::{Request, Response, Status};

use crate::pb;
use crate::service::Services;

#[derive(Clone)]
pub struct DeliveryService {
    pub svc: Services,
}

fn reply(n: usize) -> Response<pb::DeliveryReply> {
    Response::new(pb::DeliveryReply {
        delivered: u32::try_from(n).unwrap_or(u32::MAX),
    })
}

#[tonic::async_trait]
impl pb::delivery_server::Delivery for DeliveryService {
    async fn send_conversation_messages(
        &self,
        request: Request<pb::SendConversationMessagesRequest>,
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        let r = request.into_inner();
        let n = self
            .svc
            .deliver_to_room(&r.church_id, &r.conversation_id, &r.action, &r.data)?;
        // Not before the broker has ordered the frame: the caller's next send, through any
        // node, must come after it.
        self.svc.settle().await;
        Ok(reply(n))
    }

    async fn send_to_person(
        &self,
        request: Request<pb::SendToPersonRequest>,
    ) -> Result<Response<pb::DeliveryReply>, Status> {
        let r = request.into_inner();
        let n = self.svc.deliver_to_person(
            &r.church_id,
            &r.person_id,
            &r.conversation_id,
            &r.action,
            &r.data,
        )?;
        self.svc.settle().await;
        Ok(reply(n))
    }
}
