//! The HTTP face of the discovery service: `/new`, and under `/<token>` the etcd v2 keys requests
//! the etcd discovery client sends, with etcd's status codes, headers and bodies.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use percent_encoding::percent_decode_str;

use crate::v2::{self, code, DeleteRequest, Event, PutRequest, V2Error};
use crate::{token_url, Discovery, DiscoveryError};

/// The discovery routes, meant to be nested at `/discovery`:
/// `Router::new().nest("/discovery", cairn_discovery::router(discovery))`.
pub fn router<S>(discovery: Discovery) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", any(about))
        .route("/new", get(new_token).post(new_token))
        .route("/{*key}", any(keys))
        .fallback(about)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(
            discovery.clone(),
            etcd_index,
        ))
        .with_state(discovery)
}

const X_ETCD_INDEX: &str = "x-etcd-index";

/// Every answer carries `X-Etcd-Index` (the store index unless the handler set one).
async fn etcd_index(State(d): State<Discovery>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key(X_ETCD_INDEX) {
        resp.headers_mut()
            .insert(X_ETCD_INDEX, HeaderValue::from(d.index()));
    }
    resp
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn v2_error(e: &V2Error) -> Response {
    let mut body = serde_json::to_string(e).expect("errors serialize");
    body.push('\n');
    let status = StatusCode::from_u16(e.status()).expect("valid status");
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(X_ETCD_INDEX),
                HeaderValue::from(e.index),
            ),
        ],
        body,
    )
        .into_response()
}

fn event_response(ev: &Event, index: u64, status: StatusCode) -> Response {
    let mut body = serde_json::to_string(ev).expect("events serialize");
    body.push('\n');
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(X_ETCD_INDEX),
                HeaderValue::from(index),
            ),
        ],
        body,
    )
        .into_response()
}

/// Form values as Go's `Request.ParseForm` orders them: a urlencoded PUT/POST body first, then the query.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(method: &Method, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Form {
        let mut v = Vec::new();
        let urlencoded = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| {
                c.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if (method == Method::PUT || method == Method::POST) && urlencoded {
            v.extend(form_urlencoded::parse(body).into_owned());
        }
        if let Some(q) = uri.query() {
            v.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        Form(v)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// Go's `strconv.ParseBool` of a present field.
    fn bool(&self, k: &str) -> Result<Option<bool>, V2Error> {
        match self.get(k) {
            None => Ok(None),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(_) => Err(V2Error::new(
                code::INVALID_FIELD,
                format!("invalid value for {k:?}"),
                0,
            )),
        }
    }

    fn flag(&self, k: &str) -> Result<bool, V2Error> {
        Ok(self.bool(k)?.unwrap_or(false))
    }

    fn uint(&self, k: &str) -> Result<u64, V2Error> {
        match self.get(k) {
            None => Ok(0),
            Some(s) => s
                .parse()
                .map_err(|_| V2Error::new(code::INDEX_NAN, format!("invalid value for {k:?}"), 0)),
        }
    }
}

/// The mount prefix (`/discovery`) from the original and the nested URI.
fn mount_prefix(original: &Uri, nested: &Uri) -> String {
    let o = original.path();
    o.strip_suffix(nested.path()).unwrap_or("").to_string()
}

/// The discovery root: what lives here.
async fn about(method: Method) -> Response {
    let status = if method == Method::GET || method == Method::HEAD {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    text(
        status,
        "cairn etcd discovery: GET /discovery/new?size=N for a token URL; etcd --discovery=URL uses it\n"
            .into(),
    )
}

/// `GET|POST /new?size=N`: a new token; the body is its URL (no newline, as discovery.etcd.io).
/// The client's address (when the server was started with connect info, as `cairn serve` is) is
/// counted by the per-client token limit (429 beyond); the total limit is 503.
async fn new_token(
    State(d): State<Discovery>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    OriginalUri(original): OriginalUri,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&method, &headers, &uri, &body);
    let size = match form.get("size") {
        None | Some("") => 3,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=u64::from(v2::MAX_CLUSTER_SIZE)).contains(&n) => n,
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "size: expected a whole number from 1 to {}, got {s:?}\n",
                        v2::MAX_CLUSTER_SIZE
                    ),
                )
            }
        },
    };
    let base = match d.public_base() {
        Some(b) => b.to_string(),
        None => {
            let Some(host) = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
            else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "no Host header and no public URL configured: cannot build the token URL\n"
                        .into(),
                );
            };
            format!("http://{host}{}", mount_prefix(&original, &uri))
        }
    };
    let d2 = d.clone();
    let client = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    match tokio::task::spawn_blocking(move || d2.create_for(size, client)).await {
        Ok(Ok(token)) => text(StatusCode::OK, token_url(&base, &token)),
        Ok(Err(e @ DiscoveryError::TooManyTokensForClient { .. })) => {
            tracing::warn!("discovery /new refused: {e}");
            text(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Unable to generate token: {e}\n"),
            )
        }
        Ok(Err(e @ DiscoveryError::TooManyTokens { .. })) => {
            tracing::warn!("discovery /new refused: {e}");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Unable to generate token: {e}\n"),
            )
        }
        Ok(Err(e)) => {
            tracing::error!("creating a discovery token: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Unable to generate token: {e}\n"),
            )
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Unable to generate token: {e}\n"),
        ),
    }
}

/// Splits `/<token>/<rest>` into the token and the key relative to it (percent-decoded, empty
/// and `.` components dropped as `path.Clean` does; `..` refused so a key cannot leave its token).
fn split_key(path: &str) -> Result<(String, String), V2Error> {
    let mut parts = Vec::new();
    for raw in path.split('/') {
        let comp = percent_decode_str(raw).decode_utf8().map_err(|_| {
            V2Error::new(
                code::INVALID_FORM,
                format!("key component {raw:?} is not UTF-8"),
                0,
            )
        })?;
        match comp.as_ref() {
            "" | "." => {}
            ".." => {
                return Err(V2Error::new(
                    code::INVALID_FORM,
                    "key must not contain \"..\" components",
                    0,
                ))
            }
            c if c.contains('/') => {
                return Err(V2Error::new(
                    code::INVALID_FORM,
                    format!("key component {c:?} contains an encoded \"/\""),
                    0,
                ))
            }
            c => parts.push(c.to_string()),
        }
    }
    let mut it = parts.into_iter();
    let token = it.next().unwrap_or_default();
    Ok((token, it.collect::<Vec<_>>().join("/")))
}

/// The v2 keys API under `/<token>`.
async fn keys(
    State(d): State<Discovery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match keys_inner(&d, &method, &uri, &headers, &body).await {
        Ok(r) => r,
        Err(mut e) => {
            if e.index == 0 {
                e.index = d.index();
            }
            v2_error(&e)
        }
    }
}

async fn keys_inner(
    d: &Discovery,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, V2Error> {
    if ![Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(method) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, PUT, DELETE"),
        );
        return Ok(r);
    }
    let form = Form::parse(method, headers, uri, body);
    let (token, rel) = split_key(uri.path())?;
    let prev_index = form.uint("prevIndex")?;
    let wait_index = form.uint("waitIndex")?;
    let recursive = form.flag("recursive")?;
    let sorted = form.flag("sorted")?;
    let wait = form.flag("wait")?;
    let dir = form.flag("dir")?;
    form.flag("quorum")?;
    let stream = form.flag("stream")?;
    if wait && method != Method::GET {
        return Err(V2Error::new(
            code::INVALID_FIELD,
            "\"wait\" can only be used with GET requests",
            0,
        ));
    }
    let prev_value = form.get("prevValue").map(str::to_string);
    if prev_value.as_deref() == Some("") {
        return Err(V2Error::new(
            code::PREV_VALUE_REQUIRED,
            "\"prevValue\" cannot be empty",
            0,
        ));
    }
    form.flag("noValueOnSuccess")?;
    if form.get("ttl").is_some_and(|t| !t.is_empty()) {
        if form.uint("ttl").is_err() {
            return Err(V2Error::new(code::TTL_NAN, "invalid value for \"ttl\"", 0));
        }
        return Err(V2Error::new(
            code::INVALID_FIELD,
            "\"ttl\" is not supported by the cairn discovery service",
            0,
        ));
    }
    let prev_exist = form
        .bool("prevExist")
        .map_err(|_| V2Error::new(code::INVALID_FIELD, "invalid value for prevExist", 0))?;
    if form.get("refresh").is_some() {
        return Err(V2Error::new(
            code::INVALID_FIELD,
            "\"refresh\" is not supported by the cairn discovery service",
            0,
        ));
    }
    if stream {
        return Err(V2Error::new(
            code::INVALID_FIELD,
            "\"stream\" is not supported by the cairn discovery service",
            0,
        ));
    }
    if token.is_empty() {
        return Err(V2Error::new(code::KEY_NOT_FOUND, v2::KEY_PREFIX, 0));
    }

    if *method == Method::GET && wait {
        let waiter = d.watch(&token, &rel, recursive, wait_index)?;
        let start = waiter.start_index();
        let d2 = d.clone();
        // Headers go out now; the body comes with the change (or empty after the timeout or at
        // shutdown, which the etcd client answers by waiting again).
        let body = futures_util::stream::once(async move {
            match d2.wait_event(waiter).await {
                Some(ev) => {
                    let mut s = serde_json::to_string(&ev).expect("events serialize");
                    s.push('\n');
                    Ok::<_, std::convert::Infallible>(Bytes::from(s))
                }
                None => Ok(Bytes::new()),
            }
        });
        let mut r = Response::new(Body::from_stream(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(X_ETCD_INDEX, HeaderValue::from(start));
        return Ok(r);
    }
    match *method {
        Method::GET | Method::HEAD => {
            let (ev, index) = d.get(&token, &rel, recursive, sorted)?;
            Ok(event_response(&ev, index, StatusCode::OK))
        }
        Method::PUT => {
            let req = PutRequest {
                value: form.get("value").unwrap_or("").to_string(),
                dir,
                prev_exist,
                prev_value,
                prev_index,
            };
            let d2 = d.clone();
            let (ev, index) = tokio::task::spawn_blocking(move || d2.put(&token, &rel, &req))
                .await
                .map_err(|e| V2Error::new(code::RAFT_INTERNAL, e.to_string(), 0))??;
            let status = if ev.is_created() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(event_response(&ev, index, status))
        }
        _ => {
            let req = DeleteRequest {
                dir,
                recursive,
                prev_value,
                prev_index,
            };
            let d2 = d.clone();
            let (ev, index) = tokio::task::spawn_blocking(move || d2.delete(&token, &rel, &req))
                .await
                .map_err(|e| V2Error::new(code::RAFT_INTERNAL, e.to_string(), 0))??;
            Ok(event_response(&ev, index, StatusCode::OK))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_cleans_and_refuses_escape() {
        assert_eq!(
            split_key("/abc/_config/size").unwrap(),
            ("abc".into(), "_config/size".into())
        );
        assert_eq!(
            split_key("/abc//x/./y/").unwrap(),
            ("abc".into(), "x/y".into())
        );
        assert_eq!(split_key("/abc").unwrap(), ("abc".into(), String::new()));
        assert_eq!(
            split_key("/abc/a%20b").unwrap(),
            ("abc".into(), "a b".into())
        );
        assert_eq!(split_key("/abc/../def").unwrap_err().code, 210);
        assert_eq!(split_key("/abc/a%2Fb").unwrap_err().code, 210);
    }

    #[test]
    fn form_precedence_and_bools() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let uri: Uri = "/t/k?value=q&prevExist=false".parse().unwrap();
        let f = Form::parse(&Method::PUT, &h, &uri, b"value=a%3Db+c");
        assert_eq!(f.get("value"), Some("a=b c"));
        assert_eq!(f.bool("prevExist").unwrap(), Some(false));
        let f = Form::parse(&Method::GET, &h, &uri, b"value=body");
        assert_eq!(f.get("value"), Some("q"));
        let uri: Uri = "/t?wait=yes&waitIndex=x".parse().unwrap();
        let f = Form::parse(&Method::GET, &h, &uri, b"");
        assert_eq!(f.bool("wait").unwrap_err().code, 209);
        assert_eq!(f.uint("waitIndex").unwrap_err().code, 203);
    }

    #[test]
    fn prefix_of_nested_router() {
        let o: Uri = "/discovery/new?size=3".parse().unwrap();
        let n: Uri = "/new?size=3".parse().unwrap();
        assert_eq!(mount_prefix(&o, &n), "/discovery");
    }
}
