//! One HTTP/1.1 keep-alive connection (hyper's connection-level client), reconnected after
//! an error. Each publisher and each join worker owns one.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Http {
    addr: SocketAddr,
    /// Put before every request's path (e.g. an API Gateway stage, `/dev`).
    prefix: String,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http {
    pub fn new(addr: SocketAddr, token: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            prefix: String::new(),
            host: HeaderValue::from_str(&addr.to_string())?,
            auth: token
                .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
                .transpose()
                .context("token is not a valid header value")?,
            timeout,
            sender: None,
        })
    }

    /// Puts `prefix` before every request's path.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Opens the connection now (so that connection setup is not timed as a request).
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if self.sender.is_none() {
            let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
                .await
                .map_err(|_| anyhow!("connect to {} timed out", self.addr))?
                .with_context(|| format!("connect to {}", self.addr))?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(())
    }

    /// One request; returns the status and the whole body. Any error drops the connection
    /// so the next request opens a fresh one.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let r = tokio::time::timeout(self.timeout, self.request_inner(method, path, body)).await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(anyhow!("request timed out after {:?}", self.timeout)),
        };
        if r.is_err() {
            self.sender = None;
        }
        r
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.connect().await?;
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await?;
        let uri = if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}{path}", self.prefix)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        if let Some(a) = &self.auth {
            req.headers_mut().insert(AUTHORIZATION, a.clone());
        }
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
