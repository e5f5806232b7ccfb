//! Request facts the layers hand to handlers: the client's address, the body limit, the
//! request id, and path parameters as sent.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use http::request::Parts;
use tower_http::request_id::RequestId;

use crate::error::ApiError;

/// The id the request-id layer gave this request; the records it writes carry it.
pub fn request_id(req: &Request) -> String {
    let id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
    id.unwrap_or_default().to_string()
}

/// The connection's peer, set by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// `http.body_limit_bytes`, for the 413's message (the limit layer enforces it).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Path parameters exactly as sent, not percent-decoded (as the front end always read
/// them): one `String`, or `(String, String)` for two.
pub struct RawPath<T>(pub T);

/// Builds a [`RawPath`] value from the parameters in template order.
pub trait FromParams: Sized {
    fn from_params(params: Vec<String>) -> Option<Self>;
}

impl FromParams for String {
    fn from_params(params: Vec<String>) -> Option<Self> {
        params.into_iter().next()
    }
}

impl FromParams for (String, String) {
    fn from_params(params: Vec<String>) -> Option<Self> {
        let mut it = params.into_iter();
        Some((it.next()?, it.next()?))
    }
}

/// The values of `template`'s `{name}` and `{*rest}` segments in `path`.
fn params(template: &str, path: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut segments = path.split('/');
    for part in template.split('/') {
        if part.starts_with("{*") {
            values.push(segments.by_ref().collect::<Vec<_>>().join("/"));
            break;
        }
        let segment = segments.next().unwrap_or_default();
        if part.starts_with('{') {
            values.push(segment.to_string());
        }
    }
    values
}

impl<S: Send + Sync, T: FromParams> FromRequestParts<S> for RawPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let template = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or_default();
        T::from_params(params(template, parts.uri.path()))
            .map(RawPath)
            .ok_or_else(|| ApiError::Internal(format!("no path parameters in {template}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::params;

    #[test]
    fn parameters_are_read_by_position_and_left_encoded() {
        assert_eq!(params("/resource/{id}", "/resource/device%20123"), ["device%20123"]);
        assert_eq!(params("/workflows/{id}/runs/{run_id}", "/workflows/w/runs/r"), ["w", "r"]);
        assert_eq!(params("/docs/{*path}", "/docs/a/b.css"), ["a/b.css"]);
        assert!(params("/health", "/health").is_empty());
    }
}
