//! An in-memory REST API for the HTTP target tests, on 127.0.0.1 with a
//! port of its own, that can be told to misbehave.
//!
//! - `POST /a/b` creates `/a/b/{n}` (n counts up from 1) and answers 201
//!   with the body plus `"id": n`; `PUT /a/b` creates (201) or replaces
//!   (200) the resource at that path; `GET` answers the body with an ETag
//!   (`"v{version}"`) or 404; `DELETE` answers 204 or 404. `If-Match` is
//!   checked (412). Nothing cascades, so orphans stay visible.
//! - Mutating calls with an `Idempotency-Key` already seen get the first
//!   answer again without acting a second time.
//! - Faults: 503 for the first N calls (before anything else, as an
//!   overloaded proxy would), answers held back past the client's timeout
//!   (after acting), a 422 for the N-th child create, a 422 for bodies
//!   holding a marked value, and a 403 for every DELETE.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value as Json, json};

/// One resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub body: Json,
    pub version: u64,
}

/// One call, as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    pub body: Option<Json>,
    pub status: u16,
    /// Answered from the idempotency store.
    pub replayed: bool,
}

/// What to do wrong.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The first N calls (of any kind) get 503, without effect.
    pub unavailable_first: u32,
    /// These mutating calls (1-based, counting those acted on) are answered
    /// `slow_for` late, after taking effect.
    pub slow_calls: BTreeSet<u32>,
    pub slow_for: Duration,
    /// The N-th child create (1-based) gets 422, without effect.
    pub fail_child_create: Option<u32>,
    /// Bodies holding this string value get 422, without effect.
    pub reject_value: Option<String>,
    /// Every DELETE gets 403, without effect.
    pub refuse_deletes: bool,
}

#[derive(Debug, Default)]
pub struct State {
    pub resources: BTreeMap<String, Resource>,
    pub log: Vec<Logged>,
    pub faults: Faults,
    /// The parent path of the child create failed on purpose.
    pub failed_child_of: Option<String>,
    next_id: u64,
    calls: u32,
    acted: u32,
    child_creates: u32,
    seen: HashMap<String, (String, String, u16, Json)>,
}

/// A running server; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(faults: Faults) -> Server {
        let state = Arc::new(Mutex::new(State {
            faults,
            ..State::default()
        }));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Server {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put a resource in place, as another client would.
    pub fn put(&self, path: &str, body: Json) {
        let mut s = self.state();
        let version = s.resources.get(path).map_or(1, |r| r.version + 1);
        s.resources
            .insert(path.to_owned(), Resource { body, version });
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reply(status: u16, body: &Json, etag: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(v) = etag {
        r = r.header("etag", format!("\"v{v}\""));
    }
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    r.body(Full::new(bytes)).unwrap()
}

/// A body holds this string value somewhere.
fn holds(body: &Json, value: &str) -> bool {
    match body {
        Json::String(s) => s == value,
        Json::Array(a) => a.iter().any(|v| holds(v, value)),
        Json::Object(o) => o.values().any(|v| holds(v, value)),
        _ => false,
    }
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("idempotency-key");
    let if_match = header("if-match");
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Json> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let (status, answer, etag, delay) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let (status, answer, etag, replayed, delay) = act(
            &mut s,
            &method,
            &path,
            key.as_deref(),
            if_match.as_deref(),
            body.as_ref(),
        );
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            key: key.clone(),
            body: body.clone(),
            status,
            replayed,
        });
        (status, answer, etag, delay)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    reply(status, &answer, etag)
}

type Acted = (u16, Json, Option<u64>, bool, Option<Duration>);

fn act(
    s: &mut State,
    method: &str,
    path: &str,
    key: Option<&str>,
    if_match: Option<&str>,
    body: Option<&Json>,
) -> Acted {
    s.calls += 1;
    if s.calls <= s.faults.unavailable_first {
        return (503, json!({"error": "overloaded"}), None, false, None);
    }
    let mutating = method != "GET";
    if mutating
        && let Some(k) = key
        && let Some((m, p, status, answer)) = s.seen.get(k)
    {
        if m != method || p != path {
            return (
                422,
                json!({"error": "idempotency key reused for another request"}),
                None,
                false,
                None,
            );
        }
        let etag = s.resources.get(path).map(|r| r.version);
        return (*status, answer.clone(), etag, true, None);
    }
    let (status, answer, etag) = execute(s, method, path, if_match, body);
    let mut delay = None;
    if mutating {
        if let Some(k) = key {
            s.seen.insert(
                k.to_owned(),
                (method.to_owned(), path.to_owned(), status, answer.clone()),
            );
        }
        s.acted += 1;
        if s.faults.slow_calls.contains(&s.acted) {
            delay = Some(s.faults.slow_for);
        }
    }
    (status, answer, etag, false, delay)
}

fn execute(
    s: &mut State,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<&Json>,
) -> (u16, Json, Option<u64>) {
    let segments = path.split('/').filter(|p| !p.is_empty()).count();
    let is_child = segments >= 3;
    if matches!(method, "POST" | "PUT") {
        let body = body.cloned().unwrap_or(Json::Null);
        if let Some(v) = &s.faults.reject_value
            && holds(&body, v)
        {
            return (
                422,
                json!({"error": format!("{v} is not acceptable")}),
                None,
            );
        }
        if is_child {
            s.child_creates += 1;
            if s.faults.fail_child_create == Some(s.child_creates) {
                let parent = match method {
                    "POST" => path.rsplit_once('/').map_or("", |(p, _)| p),
                    _ => path
                        .rsplit_once('/')
                        .and_then(|(p, _)| p.rsplit_once('/'))
                        .map_or("", |(p, _)| p),
                };
                s.failed_child_of = Some(parent.to_owned());
                return (422, json!({"error": "this contact is refused"}), None);
            }
        }
    }
    let check = |s: &State| -> Result<(), (u16, Json, Option<u64>)> {
        if let Some(tag) = if_match {
            let current = s.resources.get(path).map(|r| format!("\"v{}\"", r.version));
            if current.as_deref() != Some(tag) {
                return Err((412, json!({"error": "precondition failed"}), None));
            }
        }
        Ok(())
    };
    match method {
        "GET" => match s.resources.get(path) {
            Some(r) => (200, r.body.clone(), Some(r.version)),
            None => (404, json!({"error": "not found"}), None),
        },
        "POST" => {
            s.next_id += 1;
            let id = s.next_id;
            let mut body = body.cloned().unwrap_or_else(|| json!({}));
            body["id"] = json!(id);
            let at = format!("{path}/{id}");
            s.resources.insert(
                at,
                Resource {
                    body: body.clone(),
                    version: 1,
                },
            );
            (201, body, Some(1))
        }
        "PUT" => {
            if let Err(e) = check(s) {
                return e;
            }
            let body = body.cloned().unwrap_or(Json::Null);
            let (status, version) = match s.resources.get(path) {
                Some(r) => (200, r.version + 1),
                None => (201, 1),
            };
            s.resources.insert(
                path.to_owned(),
                Resource {
                    body: body.clone(),
                    version,
                },
            );
            (status, body, Some(version))
        }
        "DELETE" => {
            if s.faults.refuse_deletes {
                return (403, json!({"error": "deleting is not allowed"}), None);
            }
            if !s.resources.contains_key(path) {
                return (404, json!({"error": "not found"}), None);
            }
            if let Err(e) = check(s) {
                return e;
            }
            s.resources.remove(path);
            (204, Json::Null, None)
        }
        _ => (405, json!({"error": "method not allowed"}), None),
    }
}
