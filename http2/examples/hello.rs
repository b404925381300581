//! A trivial HTTP/2 server on one thread, with our server or the h2 crate's, to compare what
//! each costs per request (`bash benches/http2-server.sh` runs both under callgrind with h2load).
//!
//!   cargo run --release -p pillion-http2 --example hello -- ours|h2
//!
//! Prints the address it listens on (127.0.0.1, a port the OS picks); answers every request
//! with "hello" and two headers.

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;
use tokio::net::TcpListener;

fn response<T>() -> Response<T>
where
    T: From<Bytes>,
{
    let mut resp = Response::new(T::from(Bytes::from_static(b"hello")));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    resp.headers_mut()
        .insert("content-length", HeaderValue::from_static("5"));
    resp
}

fn main() -> std::io::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "ours".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (io, _) = listener.accept().await?;
            io.set_nodelay(true)?;
            if which == "h2" {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(io).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let resp = response::<Bytes>();
                            let (parts, body) = resp.into_parts();
                            if let Ok(mut send) =
                                respond.send_response(Response::from_parts(parts, ()), false)
                            {
                                let _ = send.send_data(body, true);
                            }
                        });
                    }
                });
            } else {
                tokio::spawn(pillion_http2::server::serve(
                    io,
                    pillion_http2::Config::default(),
                    None,
                    |_req| async { response::<Full<Bytes>>() },
                    std::future::pending(),
                ));
            }
        }
    })
}
