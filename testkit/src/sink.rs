//! A webhook sink for scripts: POST /ok/... answers 204, any other POST 503 (so deliveries to
//! it fail and are dead-lettered), other methods 405. Each request is logged on stderr.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::Error;

async fn answer(req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    eprintln!("{} {}", req.method(), req.uri().path());
    let status = match (req.method(), req.uri().path().starts_with("/ok/")) {
        (&Method::POST, true) => StatusCode::NO_CONTENT,
        (&Method::POST, false) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::METHOD_NOT_ALLOWED,
    };
    // Read the whole body, so a keep-alive connection stays in step.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = status;
    Ok(resp)
}

/// Listens on 127.0.0.1:`port` (0: any free port), calls `bound` with the port, serves forever.
pub async fn serve(port: u16, bound: impl FnOnce(u16)) -> Result<(), Error> {
    let io = |source| Error::Io { what: "binding the sink on", path: format!("127.0.0.1:{port}").into(), source };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(io)?;
    bound(listener.local_addr().map_err(io)?.port());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer));
            let _ = conn.await;
        });
    }
}
