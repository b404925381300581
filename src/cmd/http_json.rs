//! One request to an admin port (JSON, or a proxy's metrics text) (the control plane's or a proxy's), for the subcommands
//! that read or command the running mesh.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// `method http://{addr}{path}`; the answer's status and JSON body. An error says why there
/// was no JSON answer within `timeout`.
pub async fn call(
    addr: &str,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(http::StatusCode, Value), String> {
    let (status, body) = raw(addr, method, path, token, timeout).await?;
    let value = serde_json::from_slice(&body)
        .map_err(|_| format!("{status}: {}", String::from_utf8_lossy(&body).trim()))?;
    Ok((status, value))
}

/// `GET` of a text document (a proxy's `/metrics`), expecting success.
pub async fn get_text(addr: &str, path: &str, timeout: Duration) -> Result<String, String> {
    match raw(addr, http::Method::GET, path, None, timeout).await? {
        (s, body) if s.is_success() => Ok(String::from_utf8_lossy(&body).into_owned()),
        (s, body) => Err(format!("{s}: {}", String::from_utf8_lossy(&body).trim())),
    }
}

async fn raw(
    addr: &str,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let answer = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("no answer in {timeout:?}"))?
}

/// `GET`, expecting success.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<Value, String> {
    match call(addr, http::Method::GET, path, None, timeout).await? {
        (s, v) if s.is_success() => Ok(v),
        (s, v) => Err(format!(
            "{s}: {}",
            v["error"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_string)
        )),
    }
}
