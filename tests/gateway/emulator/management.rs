//! API Gateway's management API for WebSocket connections, under `/{stage}/@connections/{id}`:
//! `POST` sends the body as one frame to that socket, `GET` describes the connection,
//! `DELETE` closes it. Every call must carry a valid AWS Signature Version 4 (service
//! `execute-api`): it is parsed, its scope, date and session token are checked, and the
//! request is signed again with `aws-sigv4` from what came over the wire (method, the path
//! exactly as received, the headers named in `SignedHeaders`, the body, the time in
//! `x-amz-date`) and the signatures compared. Every call is recorded (the latest
//! `record_limit` of them, when the options set one) and shown to the options' `on_call`;
//! faults can be injected per connection.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request};
use serde_json::json;

use super::{AwsCredentials, CallHook, HttpResponse, Record, Shared, lock, respond};

/// The service name SigV4 scopes `@connections` calls to.
pub const SERVICE: &str = "execute-api";
/// API Gateway's limit on one `@connections` POST body (128 KB).
pub const MAX_POST_BYTES: usize = 128 * 1024;

/// A fault injected for calls naming one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status (with API Gateway's error body for it) instead of acting, `times`
    /// times. 410 GoneException, 429 LimitExceededException, 403 ForbiddenException, 413
    /// PayloadTooLargeException; other statuses get a generic error.
    Status(u16, u32),
    /// Wait this long before acting, `times` times (a slow call).
    Delay(Duration, u32),
}

/// Why a call's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigFailure {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not SigV4 as API Gateway reads it.
    Malformed(String),
    /// Another access key id.
    UnknownAccessKey(String),
    /// The credential scope names another region or service, or its date is not the date
    /// of `x-amz-date`.
    WrongScope(String),
    /// `x-amz-date` missing, unparsable, or more than 5 minutes away from now.
    Stale(String),
    /// `x-amz-security-token` missing or another token.
    WrongSessionToken,
    /// The signature computed from the request differs.
    Mismatch { expected: String, got: String },
}

impl SigFailure {
    fn response(&self) -> HttpResponse {
        let (error_type, message) = match self {
            Self::Missing => (
                "MissingAuthenticationTokenException",
                "Missing Authentication Token".to_string(),
            ),
            Self::UnknownAccessKey(_) | Self::WrongSessionToken => (
                "UnrecognizedClientException",
                "The security token included in the request is invalid.".to_string(),
            ),
            Self::Malformed(why) => (
                "IncompleteSignatureException",
                format!("Authorization header requires proper SigV4 fields: {why}"),
            ),
            Self::WrongScope(why) => (
                "InvalidSignatureException",
                format!("Credential should be scoped correctly: {why}"),
            ),
            Self::Stale(why) => (
                "InvalidSignatureException",
                format!("Signature expired: {why}"),
            ),
            Self::Mismatch { .. } => (
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details."
                    .to_string(),
            ),
        };
        error_response(403, error_type, &message)
    }
}

/// One call the management API received.
#[derive(Debug, Clone)]
pub struct Call {
    pub seq: u64,
    pub method: String,
    /// The path as it came over the wire (percent-encoded as the caller encoded it).
    pub raw_path: String,
    /// The connection id, percent-decoded, when the path names one.
    pub connection_id: Option<String>,
    pub status: u16,
    pub received: Instant,
    pub answered: Instant,
    pub body: Bytes,
    /// `None` when the signature was good.
    pub signature: Option<SigFailure>,
    /// The injected fault that decided the answer, if one did.
    pub fault: Option<Fault>,
}

impl Call {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The management API's state: the verifier, the faults to inject, the record of calls.
pub struct Management {
    pub verifier: Verifier,
    faults: Mutex<HashMap<(String, String), VecDeque<Fault>>>,
    calls: Mutex<Record<Call>>,
    on_call: Option<CallHook>,
    bad_signatures: AtomicUsize,
    post_delay: Mutex<Duration>,
}

impl Management {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            faults: Mutex::new(HashMap::new()),
            calls: Mutex::new(Record::new(None)),
            on_call: None,
            bad_signatures: AtomicUsize::new(0),
            post_delay: Mutex::new(Duration::ZERO),
        }
    }

    /// Keeps only the latest `limit` calls (`None`: every one), and shows each call to
    /// `on_call`.
    pub fn recording(mut self, limit: Option<usize>, on_call: Option<CallHook>) -> Self {
        self.calls = Mutex::new(Record::new(limit));
        self.on_call = on_call;
        self
    }

    /// Queues `fault` for the next calls with `method` naming `connection_id`.
    pub fn inject(&self, method: &str, connection_id: &str, fault: Fault) {
        lock(&self.faults)
            .entry((method.to_ascii_uppercase(), connection_id.to_string()))
            .or_default()
            .push_back(fault);
    }

    /// Every POST waits this long before it is handled.
    pub fn set_post_delay(&self, delay: Duration) {
        *lock(&self.post_delay) = delay;
    }

    /// The calls kept, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).to_vec()
    }

    pub fn bad_signatures(&self) -> usize {
        self.bad_signatures.load(Ordering::SeqCst)
    }

    /// Takes one use of the first fault queued for (method, connection).
    fn take_fault(&self, method: &str, connection_id: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let key = (method.to_string(), connection_id.to_string());
        let queue = faults.get_mut(&key)?;
        let front = queue.front_mut()?;
        let taken = match front {
            Fault::Status(status, times) => {
                *times = times.saturating_sub(1);
                (Fault::Status(*status, 1), *times == 0)
            }
            Fault::Delay(delay, times) => {
                *times = times.saturating_sub(1);
                (Fault::Delay(*delay, 1), *times == 0)
            }
        };
        if taken.1 {
            queue.pop_front();
        }
        if queue.is_empty() {
            faults.remove(&key);
        }
        Some(taken.0)
    }
}

/// API Gateway's JSON error: `{"message": …}` with `x-amzn-ErrorType`.
pub fn error_response(status: u16, error_type: &str, message: &str) -> HttpResponse {
    let request_id = super::events::uuid();
    respond(
        status,
        &[
            ("content-type", "application/json"),
            ("x-amzn-errortype", error_type),
            ("x-amzn-requestid", &request_id),
        ],
        json!({ "message": message }).to_string(),
    )
}

fn fault_response(status: u16) -> HttpResponse {
    match status {
        410 => error_response(410, "GoneException", "GoneException"),
        429 => error_response(429, "LimitExceededException", "LimitExceededException"),
        403 => error_response(403, "ForbiddenException", "Forbidden"),
        413 => error_response(413, "PayloadTooLargeException", "Message too long"),
        400..=499 => error_response(status, "BadRequestException", "Injected client error"),
        _ => error_response(
            status,
            "InternalServerErrorException",
            "Injected server error",
        ),
    }
}

/// Splits `/{stage}/@connections/{id}` (the `@` possibly encoded) into the decoded id.
fn connection_id(stage: &str, raw_path: &str) -> Option<String> {
    let mut parts = raw_path.splitn(4, '/');
    let (empty, s, conns, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !empty.is_empty() || s != stage || id.is_empty() || id.contains('/') {
        return None;
    }
    if conns != "@connections" && !conns.eq_ignore_ascii_case("%40connections") {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(id)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// Serves one management API call.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> HttpResponse {
    let received = Instant::now();
    let method = req.method().as_str().to_ascii_uppercase();
    let raw_path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| raw_path.clone());
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let connection_id = connection_id(&shared.api.stage, &raw_path);
    let mgmt = &shared.management;
    let mut fault = None;
    let signature = mgmt
        .verifier
        .verify(&method, &path_and_query, &headers, &body)
        .err();
    let response = if let Some(failure) = &signature {
        mgmt.bad_signatures.fetch_add(1, Ordering::SeqCst);
        failure.response()
    } else if let Some(id) = &connection_id {
        if method == "POST" {
            let delay = *lock(&mgmt.post_delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        // One use of one fault per call, in the order they were injected.
        fault = mgmt.take_fault(&method, id);
        match &fault {
            Some(Fault::Status(status, _)) => fault_response(*status),
            Some(Fault::Delay(delay, _)) => {
                tokio::time::sleep(*delay).await;
                act(&shared, &method, id, body.clone()).await
            }
            None => act(&shared, &method, id, body.clone()).await,
        }
    } else {
        error_response(404, "NotFoundException", "Not Found")
    };
    let call = Call {
        seq: 0,
        method,
        raw_path,
        connection_id,
        status: response.status().as_u16(),
        received,
        answered: Instant::now(),
        body,
        signature,
        fault,
    };
    let call = {
        let mut calls = lock(&mgmt.calls);
        let seq = calls.next_seq() as u64;
        let call = Call { seq, ..call };
        calls.push(call.clone());
        call
    };
    if let Some(hook) = &mgmt.on_call {
        (hook.0)(&call);
    }
    shared.bump();
    response
}

async fn act(shared: &Shared, method: &str, id: &str, body: Bytes) -> HttpResponse {
    let gone = || error_response(410, "GoneException", "GoneException");
    match method {
        "POST" => {
            if body.len() > MAX_POST_BYTES {
                return error_response(413, "PayloadTooLargeException", "Message too long");
            }
            match shared.sockets.send(id, body) {
                None => gone(),
                Some(written) => {
                    // Answered once the frame is written to the client's socket (or, for a
                    // client that does not read, once it has waited a while in its queue).
                    match tokio::time::timeout(Duration::from_secs(2), written).await {
                        Ok(Ok(false)) | Ok(Err(_)) => gone(),
                        Ok(Ok(true)) | Err(_) => {
                            let request_id = super::events::uuid();
                            respond(200, &[("x-amzn-requestid", &request_id)], Bytes::new())
                        }
                    }
                }
            }
        }
        "GET" => match shared.sockets.info(id) {
            None => gone(),
            Some(info) => respond(
                200,
                &[("content-type", "application/json")],
                json!({
                    "ConnectedAt": info.connected_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    "Identity": {"SourceIp": info.source_ip, "UserAgent": info.user_agent},
                    "LastActiveAt": info.last_active_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                })
                .to_string(),
            ),
        },
        "DELETE" => {
            if shared.sockets.close(id, 1000, "") {
                respond(204, &[], Bytes::new())
            } else {
                gone()
            }
        }
        _ => error_response(404, "NotFoundException", "Not Found"),
    }
}

/// Checks SigV4 signatures the way API Gateway does, for one set of credentials.
pub struct Verifier {
    pub credentials: AwsCredentials,
    /// How far `x-amz-date` may be from now (AWS: 5 minutes).
    pub max_skew: Duration,
}

struct Authorization {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

fn parse_authorization(value: &str) -> Result<Authorization, SigFailure> {
    let malformed = |why: &str| SigFailure::Malformed(why.to_string());
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| malformed("algorithm is not AWS4-HMAC-SHA256"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(malformed("unknown field"));
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope[..] else {
        return Err(malformed(
            "Credential is not KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if terminator != "aws4_request" {
        return Err(malformed("Credential does not end in aws4_request"));
    }
    let signed_headers: Vec<String> = signed_headers
        .ok_or_else(|| malformed("no SignedHeaders"))?
        .split(';')
        .map(str::to_string)
        .collect();
    Ok(Authorization {
        access_key: access_key.into(),
        date: date.into(),
        region: region.into(),
        service: service.into(),
        signed_headers,
        signature: signature.ok_or_else(|| malformed("no Signature"))?.into(),
    })
}

impl Verifier {
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SigFailure> {
        let creds = &self.credentials;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let auth = parse_authorization(header("authorization").ok_or(SigFailure::Missing)?)?;
        if auth.access_key != creds.access_key_id {
            return Err(SigFailure::UnknownAccessKey(auth.access_key));
        }
        if auth.region != creds.region {
            return Err(SigFailure::WrongScope(format!("region {}", auth.region)));
        }
        if auth.service != SERVICE {
            return Err(SigFailure::WrongScope(format!("service {}", auth.service)));
        }
        let amz_date =
            header("x-amz-date").ok_or_else(|| SigFailure::Stale("no x-amz-date".into()))?;
        let signed_at = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
            .map_err(|_| {
                SigFailure::Stale(format!("x-amz-date {amz_date} is not YYYYMMDDTHHMMSSZ"))
            })?
            .and_utc();
        if !amz_date.starts_with(&auth.date) {
            return Err(SigFailure::WrongScope(format!(
                "date {} is not the date of x-amz-date {amz_date}",
                auth.date
            )));
        }
        let skew = (chrono::Utc::now() - signed_at).abs();
        if skew > chrono::Duration::from_std(self.max_skew).unwrap_or(chrono::Duration::MAX) {
            return Err(SigFailure::Stale(format!(
                "{amz_date} is {}s away from now",
                skew.num_seconds()
            )));
        }
        if header("x-amz-security-token") != Some(creds.session_token.as_str()) {
            return Err(SigFailure::WrongSessionToken);
        }
        for required in ["host", "x-amz-date"] {
            if !auth.signed_headers.iter().any(|h| h == required) {
                return Err(SigFailure::Malformed(format!("{required} is not signed")));
            }
        }
        let host = header("host").ok_or_else(|| SigFailure::Malformed("no Host header".into()))?;
        let mut signed: Vec<(&str, &str)> = Vec::new();
        for name in &auth.signed_headers {
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                return Err(SigFailure::Malformed(format!(
                    "signed header {name} is absent"
                )));
            }
            signed.extend(values.into_iter().map(|v| (name.as_str(), v)));
        }
        // Exactly the headers the caller signed: none excluded, nothing added but what the
        // signer itself adds (x-amz-date, the session token, both already among them).
        let mut settings = SigningSettings::default();
        settings.excluded_headers = None;
        let expected = signature(
            creds,
            method,
            &format!("http://{host}{path_and_query}"),
            signed,
            body,
            settings,
            SystemTime::from(signed_at),
        )
        .map_err(|e| SigFailure::Malformed(e.to_string()))?;
        if expected != auth.signature {
            return Err(SigFailure::Mismatch {
                expected,
                got: auth.signature,
            });
        }
        Ok(())
    }
}

fn signing_output(
    creds: &AwsCredentials,
    method: &str,
    url: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    settings: SigningSettings,
    time: SystemTime,
) -> anyhow::Result<aws_sigv4::SigningOutput<aws_sigv4::http_request::SigningInstructions>> {
    let identity: Identity = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        Some(creds.session_token.clone()),
        None,
        "gateway-emulator",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&creds.region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()?
        .into();
    let request =
        SignableRequest::new(method, url, headers.into_iter(), SignableBody::Bytes(body))?;
    Ok(sign(request, &params)?)
}

fn signature(
    creds: &AwsCredentials,
    method: &str,
    url: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    settings: SigningSettings,
    time: SystemTime,
) -> anyhow::Result<String> {
    Ok(
        signing_output(creds, method, url, headers, body, settings, time)?
            .signature()
            .to_string(),
    )
}

/// Signs a request as an AWS client would (`aws_sigv4::http_request::sign`): returns the
/// headers to add (`authorization`, `x-amz-date`, `x-amz-security-token`). `url` must be
/// the URL sent, already percent-encoded.
pub fn sign_headers(
    creds: &AwsCredentials,
    method: &str,
    url: &str,
    body: &[u8],
    settings: SigningSettings,
    time: SystemTime,
) -> anyhow::Result<Vec<(String, String)>> {
    let (instructions, _) =
        signing_output(creds, method, url, Vec::new(), body, settings, time)?.into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}
