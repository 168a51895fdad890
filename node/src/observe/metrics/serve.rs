//! The metrics endpoint's HTTP side: hyper's HTTP/1.1 server, GET (or HEAD) /metrics, 404
//! elsewhere, 405 for other methods, 400 for what does not parse (hyper answers that
//! itself). One request per connection: keep-alive is off, so the connection closes after
//! the response and a scraper reading until EOF is done.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::{encode, snapshot, MetricsError, Sources};

/// Bytes of request head read before giving up on a client (hyper's minimum).
const MAX_REQUEST_HEAD: usize = 8192;
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics listener (at start, so a taken port fails the agent's start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves GET /metrics on `listener` until the agent stops.
pub async fn serve(listener: TcpListener, src: Sources) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics endpoint listening");
    }
    let http = builder();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends pass; do not spin on them.
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let src = src.clone();
        let service = service_fn(move |req| {
            let src = src.clone();
            async move {
                Ok::<_, Infallible>(respond(&req, || async { encode(snapshot(&src).await) }).await)
            }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

/// One request per connection (no keep-alive), its head within [`REQUEST_TIMEOUT`].
fn builder() -> http1::Builder {
    let mut http = http1::Builder::new();
    http.keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    http
}

/// Answers one request; `page` makes the exposition text, and is only called for /metrics.
pub async fn respond<B, F, Fut>(req: &Request<B>, page: F) -> Response<Full<Bytes>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = String>,
{
    let text = "text/plain; charset=utf-8";
    let head_only = req.method() == Method::HEAD;
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            page().await,
            head_only,
        ),
        (&Method::GET | &Method::HEAD, _) => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found; metrics are at /metrics\n".into(),
            head_only,
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "use GET\n".into(),
            false,
        ),
    }
}

/// A response with its length; a HEAD answer keeps the length and drops the body.
fn reply(
    status: StatusCode,
    content_type: &str,
    body: String,
    head_only: bool,
) -> Response<Full<Bytes>> {
    let len = body.len();
    let body = if head_only {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(content_type).expect("a static content type"),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn call(method: Method, uri: &str) -> (StatusCode, String, String, String) {
        let req = Request::builder().method(method).uri(uri).body(()).unwrap();
        let res = respond(&req, || async { "page\n".to_string() }).await;
        let header = |name| {
            res.headers()
                .get(name)
                .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (ty, len) = (header(header::CONTENT_TYPE), header(header::CONTENT_LENGTH));
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        (status, ty, len, body)
    }

    #[tokio::test]
    async fn routes() {
        let (s, ty, len, body) = call(Method::GET, "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            ty,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
        );
        assert_eq!((len.as_str(), body.as_str()), ("5", "page\n"));
        let (s, _, len, body) = call(Method::GET, "/metrics?x=1").await;
        assert_eq!(
            (s, len.as_str(), body.as_str()),
            (StatusCode::OK, "5", "page\n")
        );
        // HEAD: the length of what GET would send, no body.
        let (s, _, len, body) = call(Method::HEAD, "/metrics").await;
        assert_eq!((s, len.as_str(), body.as_str()), (StatusCode::OK, "5", ""));
        let (s, ty, _, body) = call(Method::GET, "/").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(ty, "text/plain; charset=utf-8");
        assert_eq!(body, "not found; metrics are at /metrics\n");
        let (s, _, _, body) = call(Method::HEAD, "/").await;
        assert_eq!((s, body.as_str()), (StatusCode::NOT_FOUND, ""));
        let (s, _, _, body) = call(Method::POST, "/metrics").await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        );
    }

    /// Sends `request` on a fresh connection and reads the answer until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection after its response")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn one_response_per_connection_then_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The same connection setup as serve(), with a fixed page instead of a snapshot.
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service_fn(|req| async move {
                    Ok::<_, Infallible>(respond(&req, || async { "page\n".to_string() }).await)
                });
                tokio::spawn(builder().serve_connection(TokioIo::new(stream), service));
            }
        });
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("content-length: 5\r\n"), "{r}");
        assert!(r.contains("connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\npage\n"), "{r}");
        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("content-length: 5\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");
        let r = exchange(addr, b"GET /metrics SPDY/3\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        let r = exchange(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    }
}
