//! Direct invocations (§5.5): `{"method":"messaging.v1.Delivery/SendConversationMessages",
//! "request":{…}}` runs the very gRPC method it names, request and reply in protobuf's JSON
//! mapping, so that other backends reach the `Delivery` and `Connection` services where no
//! gRPC port is open. Errors are `{"error":{"code":"<gRPC code name>","message":"…"}}`.
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::{Code, Request, Response, Status};

use crate::grpc::{ConnectionService, DeliveryService};
use crate::pb::connection_server::Connection as _;
use crate::pb::delivery_server::Delivery as _;

/// The shape of a direct invocation: a `method` naming a gRPC method in full.
#[derive(serde::Deserialize)]
pub struct Invocation {
    pub method: String,
    #[serde(default)]
    pub request: Value,
}

impl Invocation {
    /// A pass-through event that is a direct invocation (it names a `method`).
    pub fn parse(event: &Value) -> Option<Self> {
        event.get("method")?.as_str()?;
        serde_json::from_value(event.clone()).ok()
    }
}

/// Runs the method; the reply (or the error) as JSON.
pub async fn call(
    delivery: &DeliveryService,
    connection: &ConnectionService,
    inv: Invocation,
) -> Value {
    let result = match inv.method.trim_start_matches('/') {
        "messaging.v1.Delivery/SendConversationMessages" => {
            run(inv.request, |r| delivery.send_conversation_messages(r)).await
        }
        "messaging.v1.Delivery/SendToPerson" => {
            run(inv.request, |r| delivery.send_to_person(r)).await
        }
        "messaging.v1.Connection/Join" => run(inv.request, |r| connection.join(r)).await,
        "messaging.v1.Connection/Leave" => run(inv.request, |r| connection.leave(r)).await,
        "messaging.v1.Connection/SetName" => run(inv.request, |r| connection.set_name(r)).await,
        "messaging.v1.Connection/ListRoom" => run(inv.request, |r| connection.list_room(r)).await,
        "messaging.v1.Connection/Attendance" => {
            run(inv.request, |r| connection.attendance(r)).await
        }
        other => Err(Status::unimplemented(format!(
            "unknown method {other:?}: expected messaging.v1.Delivery/… or messaging.v1.Connection/…"
        ))),
    };
    match result {
        Ok(reply) => reply,
        Err(status) => error(&status),
    }
}

async fn run<Req, Rep, F, Fut>(request: Value, method: F) -> Result<Value, Status>
where
    Req: DeserializeOwned,
    Rep: Serialize,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Rep>, Status>>,
{
    let request = if request.is_null() {
        json!({})
    } else {
        request
    };
    let req: Req = serde_json::from_value(request)
        .map_err(|e| Status::invalid_argument(format!("request: {e}")))?;
    let reply = method(Request::new(req)).await?.into_inner();
    serde_json::to_value(reply).map_err(|e| Status::internal(e.to_string()))
}

/// `{"error":{"code","message"}}` with gRPC's canonical code name.
pub fn error(status: &Status) -> Value {
    json!({"error": {"code": code_name(status.code()), "message": status.message()}})
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn requests_read_protobuf_json() {
        let r: pb::SendConversationMessagesRequest = serde_json::from_value(json!({
            "churchId": "C", "conversationId": "R", "action": "message", "data": "{}"
        }))
        .expect("camelCase");
        assert_eq!((r.church_id.as_str(), r.action.as_str()), ("C", "message"));
        let r: pb::SendConversationMessagesRequest =
            serde_json::from_value(json!({"church_id": "C"})).expect("proto names too");
        assert_eq!(r.church_id, "C");
        let reply = serde_json::to_value(pb::DeliveryReply { delivered: 3 }).expect("reply");
        assert_eq!(reply, json!({"delivered": 3}));
    }

    #[test]
    fn errors_name_the_code() {
        assert_eq!(
            error(&Status::invalid_argument("x")),
            json!({"error": {"code": "INVALID_ARGUMENT", "message": "x"}})
        );
    }
}
