//! API Gateway's management API (`@connections`, §5.5): one signed HTTPS call per frame and
//! connection. Signing is `aws-sigv4`'s (service `execute-api`), with the credentials the
//! Lambda runtime puts in the environment; the HTTP client is reqwest on rustls/ring, the
//! provider the rest of the process already uses.
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters: connection ids end in `=`, and SigV4
/// canonicalizes the path from its encoded form.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What one call answered, as delivery decides on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Done,
    /// 410: the gateway no longer knows the connection.
    Gone,
    /// 429: over the account's rate; worth retrying.
    Throttled,
    /// 413: the frame is over the gateway's limit for that connection.
    TooLarge,
    /// Any other status (403 for a missing permission, 5xx).
    Failed(u16),
}

/// How the management endpoint is reached and calls are signed.
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    /// `https://{api}.execute-api.{region}.amazonaws.com/{stage}`, without a trailing `/`.
    endpoint: String,
    region: String,
    identity: Identity,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// The endpoint is `WS_MANAGEMENT_ENDPOINT` when given, else built from the WebSocket
    /// API's id, the region and the stage, as the original does. Credentials come from the
    /// environment Lambda provides (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`).
    pub fn from_env(
        endpoint: Option<&str>,
        api_id: Option<&str>,
        stage: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or_else(|| anyhow::anyhow!("AWS_REGION is not set"))?;
        let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
        let endpoint = match (nonempty(endpoint), nonempty(api_id), nonempty(stage)) {
            (Some(e), _, _) => e.trim_end_matches('/').to_string(),
            (None, Some(api), Some(stage)) => {
                format!("https://{api}.execute-api.{region}.amazonaws.com/{stage}")
            }
            _ => anyhow::bail!(
                "gateway mode needs WS_MANAGEMENT_ENDPOINT, or WEBSOCKET_API_ID and STAGE, to \
                 reach the sockets"
            ),
        };
        let key = var("AWS_ACCESS_KEY_ID")
            .ok_or_else(|| anyhow::anyhow!("AWS_ACCESS_KEY_ID is not set"))?;
        let secret = var("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| anyhow::anyhow!("AWS_SECRET_ACCESS_KEY is not set"))?;
        Self::new(
            endpoint,
            region,
            Credentials::new(key, secret, var("AWS_SESSION_TOKEN"), None, "environment"),
            timeout,
        )
    }

    /// An endpoint (without a trailing `/`), a region and credentials, given.
    pub fn new(
        endpoint: String,
        region: String,
        credentials: Credentials,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(1024)
            // Below API Gateway's keep-alive, so that an idle connection is dropped here
            // rather than found closed by the next post.
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            identity: credentials.into(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `POST @connections/{id}` with the frame as the body.
    pub async fn post(&self, connection: &str, frame: Bytes) -> Result<Answer, reqwest::Error> {
        self.call(reqwest::Method::POST, connection, frame).await
    }

    /// `GET @connections/{id}`: whether the gateway knows the connection.
    pub async fn get(&self, connection: &str) -> Result<Answer, reqwest::Error> {
        self.call(reqwest::Method::GET, connection, Bytes::new())
            .await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        connection: &str,
        body: Bytes,
    ) -> Result<Answer, reqwest::Error> {
        let url = format!(
            "{}/@connections/{}",
            self.endpoint,
            utf8_percent_encode(connection, PATH_SEGMENT)
        );
        let mut request = self.http.request(method.clone(), &url);
        match self.signature(method.as_str(), &url, &body) {
            Ok(headers) => {
                for (name, value) in headers {
                    request = request.header(name, value);
                }
            }
            // Unsigned, the gateway answers 403: logged and kept like any other failure.
            Err(e) => tracing::warn!(error = %e, "could not sign an @connections call"),
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        let status = request.send().await?.status().as_u16();
        Ok(match status {
            200..=299 => Answer::Done,
            410 => Answer::Gone,
            429 => Answer::Throttled,
            413 => Answer::TooLarge,
            s => Answer::Failed(s),
        })
    }

    /// The SigV4 headers for one call (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` with a session token).
    fn signature(
        &self,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> anyhow::Result<Vec<(String, String)>> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()?
            .into();
        let signable =
            SignableRequest::new(method, url, std::iter::empty(), SignableBody::Bytes(body))?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        Ok(instructions
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        let id = "L0SM9cOFvHcCIhw=";
        assert_eq!(
            utf8_percent_encode(id, PATH_SEGMENT).to_string(),
            "L0SM9cOFvHcCIhw%3D"
        );
        assert_eq!(
            utf8_percent_encode("a/b+c", PATH_SEGMENT).to_string(),
            "a%2Fb%2Bc"
        );
    }
}
