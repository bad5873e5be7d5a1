//! HTTP API target: records become resources of a REST API, described by a
//! declarative mapping file (`--target path/to/mapping.toml`).
//!
//! A record is applied in several **steps**: its parent resource, then each
//! of its child resources (a customer, then its contacts). An API has no
//! transactions, so every step is journaled in the [`Ledger`] before it runs
//! and after it is confirmed, and a record that cannot be applied completely
//! has its completed steps **compensated** (undone) in reverse order before
//! it is reported failed. Recovery ([`Sink::reconcile`]) finishes or
//! compensates records a crash left part-way, and [`Sink::undo`] takes a
//! whole job back, keeping what someone changed since.
//!
//! # The mapping file
//!
//! ```toml
//! # Where the API is (http://, or https:// in builds with the `https`
//! # feature), and how long one call may take (ms).
//! base_url = "http://127.0.0.1:8080/api"
//! timeout_ms = 5000
//! # Records applied at once (each record's steps run one after another).
//! concurrency = 4
//!
//! # Sent with every call. ${NAME} is replaced by the environment variable
//! # NAME when the mapping is loaded, so secrets stay out of the file (and
//! # must be set for `sluice recover` and `sluice undo` too).
//! [headers]
//! Authorization = "Bearer ${CRM_TOKEN}"
//!
//! # How often a compensating or undoing call is tried before the resource
//! # is declared stuck, and the first delay between tries (it doubles).
//! [compensation]
//! attempts = 5
//! base_delay_ms = 200
//!
//! # Records of kind "customers" (the CSV plugin names records after the
//! # file, or its `kind` option).
//! [kinds.customers]
//! # Create or replace: "PUT path" replaces the resource at that URL (its
//! # earlier state is read first, for compensation and undo); it is read,
//! # restored and deleted at that same URL. "POST path" creates a resource
//! # with a server-assigned id, which `id_from` names in the response.
//! create = "PUT /customers/{key}"
//! # Where the id for {id} and the children's {parent_id} is in the create
//! # response: a property ("id"), a dotted path ("data.id") or a JSON
//! # pointer ("/data/id"). Optional for PUT (the id is then the key).
//! # id_from = "id"
//! # Record fields sent as the JSON body (default: every field no child
//! # claims), fields left out, and JSON property names where they differ.
//! fields = ["name", "email", "plan"]
//! exclude = []
//! rename = { plan = "tier" }
//!
//! # Child resources, created after their parent in name then index order.
//! # A record field `contact/email` is property `email` of child `contact`
//! # number 1; `contact[2]/email` of child number 2. Children whose fields
//! # are all empty are skipped.
//! [kinds.customers.children.contact]
//! create = "POST /customers/{parent_id}/contacts"
//! id_from = "id"
//! # POST-created resources need the URL to read (GET) and delete them.
//! read = "/customers/{parent_id}/contacts/{child_id}"
//! delete = "/customers/{parent_id}/contacts/{child_id}"
//! ```
//!
//! Placeholders in paths: `{key}` (the record's key), `{tenant}`, `{id}`
//! (the parent's id, in its read and delete paths), `{parent_id}` and
//! `{child_id}` (in child paths), `{index}` (the child's number), and any
//! other `{name}` is the value of field `name` (the child's own field first,
//! then the record's). Values are percent-encoded. A copy of this example is
//! `tests/data/http/customers.toml`.
//!
//! # The step protocol
//!
//! Every mutating call is one ledger step, numbered per record (0, 1, ...)
//! and carrying the header
//! `Idempotency-Key: sluice-{job}-{part}-{ordinal}-{step}-{nonce}` (the
//! nonce is drawn once per record and journaled, so
//! two data directories never send the same key). A step's ledger data is
//! its request (method, URL, body, key), and for a PUT the before-image read
//! with a GET just before: the resource's body and ETag, or "did not exist".
//!
//! 1. The step is journaled `Intended`, then sent (with a timeout).
//! 2. Success: journaled `Done` with the result (status, the id, the URLs to
//!    read and delete the resource, its ETag).
//! 3. A definite refusal (any 4xx, 429, 503, connection refused: the API did
//!    not act) is journaled as `Compensated` with the failure. Anything else
//!    (a timeout, a reset, another 5xx) leaves the step `Intended`: its
//!    outcome is unknown.
//! 4. On failure, the record's *attempt* is compensated: its steps in
//!    reverse order (children first), each compensation a step of its own
//!    (journaled `Intended` then `Done`, with its own key): DELETE what a
//!    POST or PUT created, PUT the before-image back where a PUT replaced
//!    something. A step whose outcome is unknown is settled first by sending
//!    it again with its key (the API answers as the first time, or acts
//!    now), then compensated. Compensating calls are retried on transient
//!    failures (`[compensation]`); one that cannot succeed marks the step
//!    `Stuck`, and the record's failure message names what remains
//!    (`LEFTOVER: ...`, with the URL). If that was a transient failure the
//!    record is failed as transient, so the engine's retry tries the
//!    clean-up again first; recovery and undo try stuck steps again too.
//! 5. A record applied again (the engine retries a transient or conflict
//!    failure; a crash replays the last batch) starts from its ledger: a
//!    complete attempt is adopted as is, a permanent failure is reported
//!    again without calling the API, leftovers of earlier attempts are
//!    removed first, and a new attempt uses new step numbers, hence new keys.
//!
//! The API must honour `Idempotency-Key` on POST (answer a repeated key
//! with the first answer, without acting again), as payment and most SaaS
//! APIs do: that is what makes settling an unknown outcome safe. PUT and
//! DELETE are idempotent by themselves.
//!
//! **Recovery** ([`Sink::reconcile`]) walks the job's ledger: an attempt a
//! crash interrupted is finished (the step in flight sent again with the
//! same key, then the remaining steps, rebuilt from the record's fields kept
//! in the attempt's first step) or, if that fails, compensated; stuck steps
//! are tried again and reported as leftovers if they still cannot be undone.
//! If the API is unreachable, recovery stops the job (`sluice recover`
//! again later) rather than leave anything half-done.
//!
//! **Undo** walks the ledger newest first. For each record it reads every
//! resource the job left and compares it with what the job wrote (the
//! properties the job sent must still hold the values it sent): if any was
//! changed (or deleted) since, the record is kept whole and reported
//! `kept: changed since import`; otherwise children are deleted, then the
//! parent deleted or its before-image restored, with `If-Match` when the API
//! gave an ETag (a 412 means changed meanwhile: kept). Each undoing call is a
//! step and the undone steps are marked `Undone`, so an interrupted undo
//! resumes where it stopped and never visits a record twice.
//!
//! # Failure classes
//!
//! | what happened | class | code |
//! |---|---|---|
//! | connection refused, no route, DNS | transient | `http-connect` |
//! | no answer within `timeout_ms` | transient | `http-timeout` |
//! | connection reset, broken response | transient | `http-io` |
//! | 408, 425, 429, 500 and every other 5xx (502, 503, 504 ...) | transient | `http-503` ... |
//! | 409 (and 412) | conflict | `http-409` |
//! | every other 4xx (400, 404, 422 ...), 3xx | permanent | `http-422` ... |
//! | a 2xx without the id `id_from` names | permanent | `http-bad-response` |
//! | a path placeholder without a value | permanent | `http-mapping` |
//! | no `[kinds.KIND]` for the record's kind | permanent | `http-no-mapping` |
//!
//! When every record of a batch fails to connect, the whole batch fails with
//! [`SinkError::Transient`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest as _, Sha256};

use super::{
    Batch, FailureClass, Ledger, Outcome, Reconciled, Sink, SinkError, StepRecord, StepState,
    UndoAction, UndoEntry, UndoPage, UndoScope, error_chain,
};
use crate::faults;
use crate::lock;

/// Largest response body read (a before-image, an error message).
const MAX_RESPONSE: usize = 8 << 20;
/// Ledger records read at a time when walking a job.
const WALK_PAGE: usize = 256;

// ---------------------------------------------------------------------------
// The mapping file, as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    base_url: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    compensation: CompensationFile,
    kinds: BTreeMap<String, ResourceFile>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompensationFile {
    attempts: Option<u32>,
    base_delay_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    create: String,
    id_from: Option<String>,
    read: Option<String>,
    delete: Option<String>,
    fields: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    children: BTreeMap<String, ResourceFile>,
}

// ---------------------------------------------------------------------------
// The mapping, checked.

/// How a resource is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateMethod {
    /// Create or replace at a URL the record names.
    Put,
    /// Create in a collection; the server assigns the id.
    Post,
}

/// A path with placeholders.
#[derive(Debug, Clone)]
struct Template {
    raw: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Key,
    Tenant,
    Id,
    ParentId,
    ChildId,
    Index,
    Field(String),
}

/// Where in the mapping a template is, for what it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    ParentCreate,
    ParentAddress,
    ChildCreate,
    ChildAddress,
}

impl Template {
    fn parse(raw: &str, slot: Slot, what: &str) -> Result<Template, String> {
        if !raw.starts_with('/') {
            return Err(format!("{what}: the path {raw:?} must start with '/'"));
        }
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{what}: unclosed '{{' in {raw:?}"))?
                + open;
            let name = rest[open + 1..close].trim();
            let part = match name {
                "" => return Err(format!("{what}: empty placeholder {{}} in {raw:?}")),
                "key" => Part::Key,
                "tenant" => Part::Tenant,
                "id" => Part::Id,
                "parent_id" => Part::ParentId,
                "child_id" => Part::ChildId,
                "index" => Part::Index,
                f => Part::Field(f.to_owned()),
            };
            let allowed = match (&part, slot) {
                (Part::Id, Slot::ParentAddress) => true,
                (Part::Id, _) => false,
                (Part::ParentId | Part::Index, Slot::ChildCreate | Slot::ChildAddress) => true,
                (Part::ParentId | Part::Index, _) => false,
                (Part::ChildId, Slot::ChildAddress) => true,
                (Part::ChildId, _) => false,
                _ => true,
            };
            if !allowed {
                let hint = match slot {
                    Slot::ParentCreate => {
                        "a parent's create path may use {key}, {tenant} and fields"
                    }
                    Slot::ParentAddress => {
                        "a parent's read and delete paths may use {id}, {key}, {tenant} and fields"
                    }
                    Slot::ChildCreate => {
                        "a child's create path may use {parent_id}, {index}, {key}, {tenant} and fields"
                    }
                    Slot::ChildAddress => {
                        "a child's read and delete paths may use {parent_id}, {child_id}, {index}, {key}, {tenant} and fields"
                    }
                };
                return Err(format!(
                    "{what}: placeholder {{{name}}} cannot be used in {raw:?} ({hint})"
                ));
            }
            parts.push(part);
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{what}: stray '}}' in {raw:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Template {
            raw: raw.to_owned(),
            parts,
        })
    }

    fn uses(&self, p: &Part) -> bool {
        self.parts.contains(p)
    }

    /// The path with every placeholder replaced (percent-encoded).
    fn render(&self, v: &Vars<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            let value: String = match part {
                Part::Lit(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::Key => v.key.to_owned(),
                Part::Tenant => v.tenant.to_owned(),
                Part::Id => v.id.ok_or("{id} is not known yet")?.to_owned(),
                Part::ParentId => v
                    .parent_id
                    .ok_or("{parent_id} is not known yet")?
                    .to_owned(),
                Part::ChildId => v.child_id.ok_or("{child_id} is not known yet")?.to_owned(),
                Part::Index => v.index.ok_or("{index} has no value")?.to_string(),
                Part::Field(name) => {
                    let value = v
                        .own
                        .get(name)
                        .or_else(|| v.record.get(name))
                        .ok_or_else(|| format!("the record has no field {name:?}"))?;
                    json_text(value).ok_or_else(|| format!("field {name:?} is empty"))?
                }
            };
            if value.is_empty() {
                return Err(format!("a placeholder of {:?} is empty", self.raw));
            }
            percent_encode(&value, &mut out);
        }
        Ok(out)
    }
}

/// A JSON scalar as path text; `None` for null and empty values.
fn json_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) if s.is_empty() => None,
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Values for placeholders.
struct Vars<'a> {
    tenant: &'a str,
    key: &'a str,
    id: Option<&'a str>,
    parent_id: Option<&'a str>,
    child_id: Option<&'a str>,
    index: Option<u32>,
    own: &'a Map<String, Json>,
    record: &'a Map<String, Json>,
}

/// Where an id is in a create response.
#[derive(Debug, Clone)]
struct IdPath {
    raw: String,
    /// JSON pointer.
    pointer: String,
}

impl IdPath {
    fn parse(raw: &str) -> Result<IdPath, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("id_from is empty".into());
        }
        let pointer = if raw.starts_with('/') {
            raw.to_owned()
        } else {
            raw.split('.')
                .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                .collect()
        };
        Ok(IdPath {
            raw: raw.to_owned(),
            pointer,
        })
    }

    fn find(&self, body: &[u8]) -> Option<String> {
        let json: Json = serde_json::from_slice(body).ok()?;
        json.pointer(&self.pointer).and_then(json_text)
    }
}

/// One kind of resource: a record kind, or a child of one.
#[derive(Debug)]
struct Resource {
    /// `customers` or `customers.contact`, for messages.
    label: String,
    /// The child's name in record fields (`contact`); empty for a parent.
    name: String,
    method: CreateMethod,
    create: Template,
    id_from: Option<IdPath>,
    read: Option<Template>,
    delete: Option<Template>,
    fields: Option<Vec<String>>,
    exclude: BTreeSet<String>,
    rename: BTreeMap<String, String>,
    children: Vec<Resource>,
}

impl Resource {
    fn check(label: String, name: String, f: ResourceFile, child: bool) -> Result<Self, String> {
        let what = format!("[kinds.{label}]");
        let (method, path) = f
            .create
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("{what}: create must be \"PUT /path\" or \"POST /path\""))?;
        let method = match method.trim().to_ascii_uppercase().as_str() {
            "PUT" => CreateMethod::Put,
            "POST" => CreateMethod::Post,
            m => {
                return Err(format!(
                    "{what}: create method {m} is not supported: use PUT (create or replace at a \
                     URL) or POST (create in a collection)"
                ));
            }
        };
        let (create_slot, address_slot) = if child {
            (Slot::ChildCreate, Slot::ChildAddress)
        } else {
            (Slot::ParentCreate, Slot::ParentAddress)
        };
        let create = Template::parse(path.trim(), create_slot, &format!("{what} create"))?;
        let id_from = f.id_from.as_deref().map(IdPath::parse).transpose()?;
        let read = f
            .read
            .as_deref()
            .map(|p| Template::parse(p, address_slot, &format!("{what} read")))
            .transpose()?;
        let delete = f
            .delete
            .as_deref()
            .map(|p| Template::parse(p, address_slot, &format!("{what} delete")))
            .transpose()?;
        let own_id = if child { Part::ChildId } else { Part::Id };
        match method {
            CreateMethod::Put => {
                if read.is_some() || delete.is_some() {
                    return Err(format!(
                        "{what}: a resource created with PUT is read, restored and deleted at its \
                         create URL: remove read and delete"
                    ));
                }
            }
            CreateMethod::Post => {
                let (Some(read), Some(delete), Some(_)) = (&read, &delete, &id_from) else {
                    return Err(format!(
                        "{what}: a resource created with POST needs id_from (where its id is in \
                         the response), read and delete (paths using {})",
                        if child { "{child_id}" } else { "{id}" }
                    ));
                };
                for t in [read, delete] {
                    if !t.uses(&own_id) {
                        return Err(format!(
                            "{what}: the path {:?} must use {} to address the created resource",
                            t.raw,
                            if child { "{child_id}" } else { "{id}" }
                        ));
                    }
                }
            }
        }
        if child && !f.children.is_empty() {
            return Err(format!("{what}: children of children are not supported"));
        }
        let mut children = Vec::new();
        for (cname, cf) in f.children {
            if cname.is_empty() || cname.contains(['/', '[', ']']) {
                return Err(format!(
                    "{what}: child name {cname:?} must be non-empty without '/', '[' or ']'"
                ));
            }
            children.push(Resource::check(
                format!("{label}.children.{cname}"),
                cname,
                cf,
                true,
            )?);
        }
        Ok(Resource {
            label,
            name,
            method,
            create,
            id_from,
            read,
            delete,
            fields: f.fields,
            exclude: f.exclude.into_iter().collect(),
            rename: f.rename,
            children,
        })
    }

    fn child(&self, name: &str) -> Option<&Resource> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The JSON body from the resource's own fields.
    fn body(&self, own: &Map<String, Json>) -> Json {
        let mut body = Map::new();
        let mut put = |name: &str, v: &Json| {
            if self.exclude.contains(name) {
                return;
            }
            let prop = self.rename.get(name).map_or(name, String::as_str);
            body.insert(prop.to_owned(), v.clone());
        };
        match &self.fields {
            Some(names) => {
                for n in names {
                    if let Some(v) = own.get(n) {
                        put(n, v);
                    }
                }
            }
            None => {
                for (n, v) in own {
                    put(n, v);
                }
            }
        }
        Json::Object(body)
    }
}

/// The checked mapping.
#[derive(Debug)]
struct Mapping {
    path: PathBuf,
    /// Without a trailing '/'.
    base: String,
    timeout: Duration,
    concurrency: usize,
    headers: Vec<(HeaderName, HeaderValue)>,
    comp_attempts: u32,
    comp_delay: Duration,
    kinds: BTreeMap<String, Resource>,
}

impl Mapping {
    fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let f: MappingFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let base = f.base_url.trim().trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("base_url {:?} is not a URL: {e}", f.base_url))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if cfg!(feature = "https") => {}
            Some("https") => {
                return Err(format!(
                    "base_url {base:?}: this build of sluice speaks plain HTTP only (build it \
                     with `--features https` for TLS, or put a TLS-terminating proxy in front \
                     of the API)"
                ));
            }
            _ => {
                return Err(format!(
                    "base_url {base:?} must start with http:// or https://"
                ));
            }
        }
        if uri.host().is_none() {
            return Err(format!("base_url {base:?} has no host"));
        }
        if uri.query().is_some() {
            return Err(format!("base_url {base:?} must not have a query"));
        }
        if !(1..=600_000).contains(&f.timeout_ms) {
            return Err(format!(
                "timeout_ms = {} must be between 1 and 600000",
                f.timeout_ms
            ));
        }
        if !(1..=64).contains(&f.concurrency) {
            return Err(format!(
                "concurrency = {} must be between 1 and 64",
                f.concurrency
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in &f.headers {
            let hn = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("[headers]: {name:?} is not a valid header name"))?;
            if hn == "idempotency-key" || hn == "content-type" || hn == "if-match" {
                return Err(format!("[headers]: {name} is set by sluice itself"));
            }
            let expanded = expand_env(value, &env).map_err(|e| format!("[headers] {name}: {e}"))?;
            let hv = HeaderValue::from_str(&expanded)
                .map_err(|_| format!("[headers] {name}: the value is not a valid header value"))?;
            headers.push((hn, hv));
        }
        if f.kinds.is_empty() {
            return Err("no [kinds.KIND] section: map at least one record kind".into());
        }
        let mut kinds = BTreeMap::new();
        for (kind, rf) in f.kinds {
            let r = Resource::check(kind.clone(), String::new(), rf, false)?;
            kinds.insert(kind, r);
        }
        let attempts = f.compensation.attempts.unwrap_or(5);
        if !(1..=100).contains(&attempts) {
            return Err(format!(
                "[compensation] attempts = {attempts} must be between 1 and 100"
            ));
        }
        Ok(Mapping {
            path: path.to_owned(),
            base,
            timeout: Duration::from_millis(f.timeout_ms),
            concurrency: f.concurrency,
            headers,
            comp_attempts: attempts,
            comp_delay: Duration::from_millis(
                f.compensation.base_delay_ms.unwrap_or(200).min(60_000),
            ),
            kinds,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Replace `${NAME}` by environment variables.
fn expand_env(s: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?
            + start;
        let name = &rest[start + 2..end];
        let value = env(name).ok_or_else(|| {
            format!("the environment variable {name} is not set (the mapping refers to it)")
        })?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Planning a record: which resources, with which bodies.

/// One resource of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResRef {
    /// The child's name; none for the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    child: Option<String>,
    /// The child's number (1 ...); 0 for the parent.
    #[serde(default)]
    index: u32,
}

impl ResRef {
    fn parent() -> Self {
        ResRef {
            child: None,
            index: 0,
        }
    }

    fn label(&self, kind: &str, key: &str) -> String {
        match &self.child {
            None => format!("{kind} {key}"),
            Some(c) => format!("{kind} {key} {c}[{}]", self.index),
        }
    }
}

/// What an attempt means to do, kept in its first step so recovery can
/// finish it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    fields: Map<String, Json>,
    resources: Vec<ResRef>,
}

struct Planned {
    res: ResRef,
    own: Map<String, Json>,
    body: Json,
}

/// Split a record's fields between the parent and its children.
/// A field name that addresses a child: `child/prop` or `child[i]/prop`
/// (i from 1) as `(child, i, prop)`.
fn child_field(name: &str) -> Option<(&str, u32, &str)> {
    let (head, prop) = name.split_once('/')?;
    let (child, index) = match head.split_once('[') {
        Some((c, rest)) => (c, rest.strip_suffix(']')?.parse::<u32>().ok()?),
        None => (head, 1),
    };
    (index >= 1 && !prop.is_empty()).then_some((child, index, prop))
}

fn plan_record(r: &Resource, fields: &Map<String, Json>) -> Vec<Planned> {
    let mut own = Map::new();
    let mut kids: BTreeMap<(usize, u32), Map<String, Json>> = BTreeMap::new();
    for (name, value) in fields {
        let claimed = child_field(name).and_then(|(cname, index, prop)| {
            let pos = r.children.iter().position(|c| c.name == cname)?;
            Some((pos, index, prop))
        });
        match claimed {
            Some((pos, index, prop)) => {
                kids.entry((pos, index))
                    .or_default()
                    .insert(prop.to_owned(), value.clone());
            }
            None => {
                own.insert(name.clone(), value.clone());
            }
        }
    }
    let mut out = vec![Planned {
        res: ResRef::parent(),
        body: r.body(&own),
        own,
    }];
    for ((pos, index), own) in kids {
        if own.values().all(|v| json_text(v).is_none()) {
            continue;
        }
        let child = &r.children[pos];
        out.push(Planned {
            res: ResRef {
                child: Some(child.name.clone()),
                index,
            },
            body: child.body(&own),
            own,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Ledger data.

/// A step's data in the ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Data {
    /// Create or replace one resource.
    Apply(Box<ApplyData>),
    /// Take back an apply step (compensation or undo).
    Revert(Box<RevertData>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApplyData {
    attempt: u32,
    tenant: String,
    kind: String,
    key: String,
    res: ResRef,
    method: String,
    url: String,
    body: Json,
    idempotency_key: String,
    nonce: String,
    /// For a PUT: the resource before (body `None`: it did not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<Before>,
    /// On an attempt's first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Before {
    body: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Why {
    Compensate,
    Undo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevertData {
    attempt: u32,
    kind: String,
    key: String,
    /// The apply step taken back.
    of: u32,
    why: Why,
    method: String,
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Json>,
    idempotency_key: String,
    nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    if_match: Option<String>,
}

/// A step's result in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StepResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// The created resource's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// Why the step did not take effect (a definite refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
    /// The revert step that took this one back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reverted_by: Option<u32>,
    /// What undo did: `removed`, `restored`, `gone`, `kept-changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    undo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stuck: Option<Stuck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Failure {
    class: FailureClass,
    code: String,
    message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stuck {
    /// `compensate`, `undo-job` or `undo-unjournaled`.
    during: String,
    error: String,
    class: FailureClass,
    /// Listed among a job's leftovers already.
    #[serde(default)]
    reported: bool,
}

/// One parsed step.
#[derive(Debug, Clone)]
struct Step {
    no: u32,
    state: StepState,
    description: String,
    data: Data,
    result: StepResult,
}

impl Step {
    fn parse(job: u64, part: u32, ordinal: u64, r: &StepRecord) -> Result<Step, SinkError> {
        let bad = |e: &dyn fmt::Display| {
            SinkError::Io(format!(
                "ledger step {} of job {job} record {ordinal} of part {part} is not an HTTP \
                 target step ({e}); was the job's target changed?",
                r.step
            ))
        };
        let data: Data = serde_json::from_value(r.data.clone()).map_err(|e| bad(&e))?;
        let result = match &r.result {
            Some(v) if !v.is_null() => serde_json::from_value(v.clone()).map_err(|e| bad(&e))?,
            _ => StepResult::default(),
        };
        Ok(Step {
            no: r.step,
            state: r.state,
            description: r.description.clone(),
            data,
            result,
        })
    }

    fn apply(&self) -> Option<&ApplyData> {
        match &self.data {
            Data::Apply(a) => Some(a.as_ref()),
            Data::Revert(_) => None,
        }
    }

    /// Where an apply step's resource is read: its create URL for a PUT.
    fn read_url(&self) -> Option<String> {
        let a = self.apply()?;
        self.result
            .read_url
            .clone()
            .or_else(|| (a.method == "PUT").then(|| a.url.clone()))
    }

    fn attempt(&self) -> u32 {
        match &self.data {
            Data::Apply(a) => a.attempt,
            Data::Revert(r) => r.attempt,
        }
    }
}

// ---------------------------------------------------------------------------
// A record's steps, read from and written to the ledger.

/// Identifies a record in messages.
#[derive(Debug, Clone)]
struct Who {
    job: u64,
    part: u32,
    ordinal: u64,
    tenant: String,
    kind: String,
    key: String,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "job {} record {} of part {} ({} {})",
            self.job, self.ordinal, self.part, self.kind, self.key
        )
    }
}

/// The steps of one record, kept in step with the ledger.
struct Book {
    ledger: Arc<dyn Ledger>,
    who: Who,
    steps: BTreeMap<u32, Step>,
}

impl Book {
    fn new(ledger: Arc<dyn Ledger>, who: Who, records: &[StepRecord]) -> Result<Book, SinkError> {
        let steps = Self::parse(&who, records)?;
        Ok(Book { ledger, who, steps })
    }

    fn parse(who: &Who, records: &[StepRecord]) -> Result<BTreeMap<u32, Step>, SinkError> {
        records
            .iter()
            .map(|r| Step::parse(who.job, who.part, who.ordinal, r).map(|s| (s.no, s)))
            .collect()
    }

    /// A book for a record found in the ledger (reconcile, undo).
    fn found(
        ledger: Arc<dyn Ledger>,
        job: u64,
        part: u32,
        ordinal: u64,
        records: &[StepRecord],
    ) -> Result<Option<Book>, SinkError> {
        let mut who = Who {
            job,
            part,
            ordinal,
            tenant: String::new(),
            kind: String::new(),
            key: String::new(),
        };
        let steps = Self::parse(&who, records)?;
        // The identity is in the record's first apply step.
        let Some(a) = steps.values().find_map(Step::apply) else {
            return Ok(None);
        };
        who.tenant = a.tenant.clone();
        who.kind = a.kind.clone();
        who.key = a.key.clone();
        Ok(Some(Book { ledger, who, steps }))
    }

    fn nonce(&self) -> String {
        self.steps
            .values()
            .map(|s| match &s.data {
                Data::Apply(a) => a.nonce.clone(),
                Data::Revert(r) => r.nonce.clone(),
            })
            .next()
            .unwrap_or_else(new_nonce)
    }

    fn next_no(&self) -> u32 {
        self.steps.keys().next_back().map_or(0, |n| n + 1)
    }

    fn key_for(&self, nonce: &str, no: u32) -> String {
        let w = &self.who;
        format!("sluice-{}-{}-{}-{no}-{nonce}", w.job, w.part, w.ordinal)
    }

    /// Journal a step (durable before this returns).
    async fn put(
        &mut self,
        no: u32,
        description: String,
        data: Data,
        state: StepState,
        result: StepResult,
    ) -> Result<(), SinkError> {
        let record = StepRecord {
            step: no,
            description: description.clone(),
            data: serde_json::to_value(&data).expect("step data serializes"),
            state,
            result: Some(serde_json::to_value(&result).expect("step result serializes")),
        };
        let (job, part, ordinal) = (self.who.job, self.who.part, self.who.ordinal);
        on_ledger(&self.ledger, move |l| l.record(job, part, ordinal, &record)).await?;
        self.steps.insert(
            no,
            Step {
                no,
                state,
                description,
                data,
                result,
            },
        );
        Ok(())
    }

    /// Change a step's state and result.
    async fn set(
        &mut self,
        no: u32,
        state: StepState,
        result: StepResult,
    ) -> Result<(), SinkError> {
        let s = self.steps.get(&no).expect("step exists").clone();
        self.put(no, s.description, s.data, state, result).await
    }

    fn attempts(&self) -> BTreeSet<u32> {
        self.steps.values().map(Step::attempt).collect()
    }

    fn applies(&self, attempt: u32) -> impl DoubleEndedIterator<Item = &Step> {
        self.steps
            .values()
            .filter(move |s| s.attempt() == attempt && s.apply().is_some())
    }

    /// The revert step that took `of` back, if one was confirmed.
    fn reverted(&self, of: u32) -> Option<&Step> {
        self.steps.values().find(|s| {
            matches!(&s.data, Data::Revert(r) if r.of == of) && s.state == StepState::Done
        })
    }

    /// The unconfirmed revert step of `of`, if any (to send again).
    fn pending_revert(&self, of: u32) -> Option<&Step> {
        self.steps
            .values()
            .rev()
            .find(|s| matches!(&s.data, Data::Revert(r) if r.of == of))
            .filter(|s| s.state == StepState::Intended)
    }

    /// Whether an apply step's effect is gone (never happened or taken back).
    fn gone(&self, s: &Step) -> bool {
        matches!(s.state, StepState::Compensated | StepState::Undone)
            || self.reverted(s.no).is_some()
    }

    /// An attempt compensation has touched: it is never resumed.
    fn abandoned(&self, attempt: u32) -> bool {
        self.steps.values().any(|s| {
            s.attempt() == attempt
                && (matches!(s.data, Data::Revert(_))
                    || matches!(
                        s.state,
                        StepState::Compensated | StepState::Undone | StepState::Stuck
                    ))
        })
    }

    fn plan_of(&self, attempt: u32) -> Option<&Plan> {
        self.applies(attempt).find_map(|s| s.apply()?.plan.as_ref())
    }

    /// Every planned step of the attempt is done and none was taken back.
    fn complete(&self, attempt: u32) -> bool {
        if self.abandoned(attempt) {
            return false;
        }
        let Some(plan) = self.plan_of(attempt) else {
            return false;
        };
        plan.resources.iter().all(|res| {
            self.applies(attempt)
                .any(|s| s.apply().is_some_and(|a| &a.res == res) && s.state == StepState::Done)
        })
    }

    /// Nothing of the attempt remains on the target.
    fn clean(&self, attempt: u32) -> bool {
        self.applies(attempt).all(|s| self.gone(s))
    }

    /// A permanent refusal recorded in the attempt.
    fn refusal(&self, attempt: u32) -> Option<&Failure> {
        self.applies(attempt)
            .filter_map(|s| s.result.failure.as_ref())
            .find(|f| f.class == FailureClass::Permanent)
    }

    /// Whether recovery has anything to do for this record.
    fn unsettled(&self) -> bool {
        let attempts = self.attempts();
        let latest = attempts.iter().next_back().copied();
        attempts.iter().any(|&a| {
            if Some(a) == latest && !self.abandoned(a) {
                !self.complete(a)
            } else {
                !self.clean(a)
            }
        })
    }
}

/// A random-enough nonce: unique per record across data directories.
fn new_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..6])
}

// ---------------------------------------------------------------------------
// Calls.

/// One request.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    url: String,
    body: Option<Json>,
    idempotency_key: Option<String>,
    if_match: Option<String>,
}

impl Call {
    fn get(url: &str) -> Call {
        Call {
            method: Method::GET,
            url: url.to_owned(),
            body: None,
            idempotency_key: None,
            if_match: None,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// An answer (any status).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Bytes,
    etag: Option<String>,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn json(&self) -> Option<Json> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Why a call failed.
#[derive(Debug, Clone)]
enum CallError {
    /// No connection: the request was not sent.
    Connect(String),
    /// No answer in time: the outcome is unknown.
    Timeout(Duration),
    /// The connection broke: the outcome is unknown.
    Io(String),
    /// The API answered with an error status.
    Status { status: u16, body: String },
    /// A success without what the mapping expects in it.
    BadResponse(String),
    /// A path could not be built from the record.
    Mapping(String),
}

impl CallError {
    fn status(r: &Reply) -> CallError {
        let mut body = String::from_utf8_lossy(&r.body).into_owned();
        if body.len() > 500 {
            let mut cut = 500;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push('…');
        }
        CallError::Status {
            status: r.status,
            body,
        }
    }

    fn class(&self) -> FailureClass {
        match self {
            CallError::Connect(_) | CallError::Timeout(_) | CallError::Io(_) => {
                FailureClass::Transient
            }
            CallError::Status { status, .. } => match status {
                409 | 412 => FailureClass::Conflict,
                408 | 425 | 429 => FailureClass::Transient,
                500..=599 => FailureClass::Transient,
                _ => FailureClass::Permanent,
            },
            CallError::BadResponse(_) | CallError::Mapping(_) => FailureClass::Permanent,
        }
    }

    fn code(&self) -> String {
        match self {
            CallError::Connect(_) => "http-connect".into(),
            CallError::Timeout(_) => "http-timeout".into(),
            CallError::Io(_) => "http-io".into(),
            CallError::Status { status, .. } => format!("http-{status}"),
            CallError::BadResponse(_) => "http-bad-response".into(),
            CallError::Mapping(_) => "http-mapping".into(),
        }
    }

    /// The API certainly did not act on the request.
    fn not_applied(&self) -> bool {
        match self {
            CallError::Connect(_) | CallError::Mapping(_) => true,
            CallError::Status { status, .. } => (400..500).contains(status) || *status == 503,
            CallError::Timeout(_) | CallError::Io(_) | CallError::BadResponse(_) => false,
        }
    }

    fn advice(&self) -> &'static str {
        match self.class() {
            FailureClass::Transient => {
                "the API was unavailable; sluice retries such failures, and if they persist \
                 import the record again later"
            }
            FailureClass::Conflict => {
                "someone else changed the resource at the same time; import the record again"
            }
            _ => match self {
                CallError::Mapping(_) | CallError::BadResponse(_) => {
                    "fix the mapping file or the record, then import the record again"
                }
                _ => {
                    "the API refused the record: fix it (see the API's answer) and import it again"
                }
            },
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "cannot connect: {e}"),
            CallError::Timeout(t) => write!(f, "no answer within {} ms", t.as_millis()),
            CallError::Io(e) => write!(f, "the connection failed: {e}"),
            CallError::Status { status, body } if body.is_empty() => write!(f, "HTTP {status}"),
            CallError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            CallError::BadResponse(e) => write!(f, "unusable answer: {e}"),
            CallError::Mapping(e) => write!(f, "mapping error: {e}"),
        }
    }
}

/// Plain HTTP, or HTTP and HTTPS with the `https` feature.
#[cfg(not(feature = "https"))]
type Connector = HttpConnector;
#[cfg(feature = "https")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The HTTP client.
struct Http {
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Http {
    fn new(m: &Mapping) -> Result<Http, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(m.timeout));
        connector.set_nodelay(true);
        #[cfg(feature = "https")]
        let connector = {
            connector.enforce_http(false);
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| {
                    format!(
                        "cannot load the system's trusted certificates for https:// ({e}); \
                         install the CA certificates (e.g. the ca-certificates package)"
                    )
                })?
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Http {
            client,
            timeout: m.timeout,
            headers: m.headers.clone(),
        })
    }

    async fn send(&self, call: &Call) -> Result<Reply, CallError> {
        let uri: Uri = call
            .url
            .parse()
            .map_err(|e| CallError::Mapping(format!("{} is not a valid URL: {e}", call.url)))?;
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("sluice/", env!("CARGO_PKG_VERSION")),
            );
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        if let Some(k) = &call.idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(tag) = &call.if_match {
            req = req.header(hyper::header::IF_MATCH, tag);
        }
        let body = match &call.body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).expect("JSON serializes"))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| CallError::Mapping(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let detail = error_chain(&e);
                if e.is_connect() {
                    CallError::Connect(detail)
                } else {
                    CallError::Io(detail)
                }
            })?;
            let status = resp.status().as_u16();
            let etag = resp
                .headers()
                .get(hyper::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| CallError::Io(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Reply { status, body, etag })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(self.timeout)),
        }
    }
}

// ---------------------------------------------------------------------------
// The sink.

/// An HTTP API as a target. See the [module docs](self).
pub struct HttpSink {
    inner: Arc<Inner>,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("mapping", &self.inner.map.path)
            .field("base_url", &self.inner.map.base)
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: String,
    map: Mapping,
    http: Http,
    /// Where each running undo (job, scope) got to in the ledger: every
    /// record newer than this was undone or needs nothing. Only saves
    /// rereading; a new process starts from the newest record again.
    undo_cursor: std::sync::Mutex<std::collections::HashMap<(u64, String), (u32, u64)>>,
}

impl HttpSink {
    /// Read and check a mapping file. No network access happens here.
    pub fn from_file(path: &Path) -> Result<HttpSink, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the HTTP mapping file {}: {e}", path.display()))?;
        let map = Mapping::parse(path, &text, |n| std::env::var(n).ok()).map_err(|e| {
            format!(
                "HTTP mapping file {}: {e} (the format is described in the docs of \
                 sluice::sink::http)",
                path.display()
            )
        })?;
        let http =
            Http::new(&map).map_err(|e| format!("HTTP mapping file {}: {e}", path.display()))?;
        Ok(HttpSink {
            inner: Arc::new(Inner {
                name: format!("HTTP API {} (mapping {})", map.base, path.display()),
                map,
                http,
                undo_cursor: Default::default(),
            }),
        })
    }
}

/// What happened to one record in apply or recovery.
enum End {
    Applied {
        /// A step had to be finished (recovery).
        finished: bool,
    },
    Failed {
        outcome: Outcome,
        /// Resources that remain, with the class of the last failure.
        leftovers: Vec<Leftover>,
    },
    /// Nothing to do (recovery: all clean).
    Nothing,
}

#[derive(Debug, Clone)]
struct Leftover {
    what: String,
    class: FailureClass,
}

/// How one undone step went.
enum Reverted {
    Done { action: UndoAction },
    Kept,
    Stuck(Leftover),
}

impl Inner {
    fn resource(&self, kind: &str, res: &ResRef) -> Option<&Resource> {
        let parent = self.map.kinds.get(kind)?;
        match &res.child {
            None => Some(parent),
            Some(c) => parent.child(c),
        }
    }

    /// Apply one record, or settle it from the ledger (`fields` none).
    async fn drive(
        &self,
        book: &mut Book,
        fields: Option<&Map<String, Json>>,
    ) -> Result<End, SinkError> {
        let attempts = book.attempts();
        let latest = attempts.iter().next_back().copied();
        // Earlier attempts must leave nothing behind.
        let mut leftovers = Vec::new();
        for &a in &attempts {
            if Some(a) == latest && !book.abandoned(a) {
                continue;
            }
            if !book.clean(a) {
                leftovers.extend(self.revert_attempt(book, a).await?);
            }
        }
        if !leftovers.is_empty() {
            let class = worst(&leftovers);
            let outcome = Outcome::Failed {
                class,
                code: "http-leftover".into(),
                message: format!(
                    "{}: resources of an earlier attempt could not be removed, so the record was \
                     not applied again: {}",
                    book.who,
                    leftover_text(&leftovers)
                ),
            };
            return Ok(End::Failed { outcome, leftovers });
        }
        if let Some(a) = latest
            && !book.abandoned(a)
        {
            if book.complete(a) {
                return Ok(End::Applied { finished: false });
            }
            let Some(plan) = book.plan_of(a).cloned() else {
                // Its first step never got a plan: impossible unless the
                // ledger is from another version; compensate.
                let left = self.revert_attempt(book, a).await?;
                return Ok(self.failed_after_revert(book, left, None));
            };
            return self.run_attempt(book, a, &plan, true).await;
        }
        if let Some(a) = latest
            && let Some(f) = book.refusal(a)
            && fields.is_some()
        {
            // Applied again after a permanent refusal (a replayed batch):
            // the same answer, without asking the API again.
            return Ok(End::Failed {
                outcome: Outcome::Failed {
                    class: f.class,
                    code: f.code.clone(),
                    message: f.message.clone(),
                },
                leftovers: Vec::new(),
            });
        }
        let Some(fields) = fields else {
            return Ok(End::Nothing);
        };
        let plan = Plan {
            fields: fields.clone(),
            resources: Vec::new(),
        };
        self.run_attempt(book, latest.map_or(1, |a| a + 1), &plan, false)
            .await
    }

    /// Run (or resume) an attempt's steps; compensate it on failure.
    async fn run_attempt(
        &self,
        book: &mut Book,
        attempt: u32,
        plan: &Plan,
        resume: bool,
    ) -> Result<End, SinkError> {
        let who = book.who.clone();
        let Some(parent) = self.map.kinds.get(&who.kind) else {
            let e = CallError::Mapping(format!(
                "the mapping file {} has no [kinds.{}] section",
                self.map.path.display(),
                who.kind
            ));
            if resume {
                let left = self.revert_attempt(book, attempt).await?;
                return Ok(self.failed_after_revert(book, left, Some((&e, "resume"))));
            }
            return Ok(End::Failed {
                outcome: Outcome::Failed {
                    class: FailureClass::Permanent,
                    code: "http-no-mapping".into(),
                    message: format!(
                        "{who}: no mapping for records of kind {:?}: add a [kinds.{}] section to {}, \
                         then import the record again",
                        who.kind,
                        who.kind,
                        self.map.path.display()
                    ),
                },
                leftovers: Vec::new(),
            });
        };
        let planned = plan_record(parent, &plan.fields);
        let resources: Vec<ResRef> = planned.iter().map(|p| p.res.clone()).collect();
        if resume && resources != plan.resources {
            // The mapping changed since the attempt started: take it back.
            let e = CallError::Mapping(format!(
                "the mapping file {} changed since this record was started (it now makes other \
                 resources of it)",
                self.map.path.display()
            ));
            let left = self.revert_attempt(book, attempt).await?;
            return Ok(self.failed_after_revert(book, left, Some((&e, "resume"))));
        }
        let plan = Plan {
            fields: plan.fields.clone(),
            resources,
        };
        let mut finished = false;
        let mut parent_id: Option<String> = None;
        for (i, p) in planned.iter().enumerate() {
            let existing = book
                .applies(attempt)
                .find(|s| s.apply().is_some_and(|a| a.res == p.res))
                .map(|s| (s.no, s.state));
            let resource = match &p.res.child {
                None => parent,
                Some(c) => parent.child(c).expect("planned children are mapped"),
            };
            let step = match existing {
                Some((no, StepState::Done)) => Ok(no),
                Some((no, _)) => {
                    finished = true;
                    self.resend(book, no, resource).await?.map(|()| no)
                }
                None => {
                    finished |= resume;
                    self.fresh(
                        book,
                        attempt,
                        resource,
                        p,
                        &plan,
                        i == 0,
                        parent_id.as_deref(),
                    )
                    .await?
                }
            };
            match step {
                Ok(no) => {
                    if p.res.child.is_none() {
                        parent_id = book.steps[&no].result.id.clone();
                    }
                    faults::point("http.between-steps");
                }
                Err((e, call)) => {
                    let left = self.revert_attempt(book, attempt).await?;
                    return Ok(self.failed_after_revert(book, left, Some((&e, &call))));
                }
            }
        }
        Ok(End::Applied { finished })
    }

    /// The outcome of a failed attempt whose compensation ran.
    fn failed_after_revert(
        &self,
        book: &Book,
        leftovers: Vec<Leftover>,
        cause: Option<(&CallError, &str)>,
    ) -> End {
        let (class, code, what) = match cause {
            Some((e, call)) => (
                e.class(),
                e.code(),
                format!("{call} failed: {e}; {}", e.advice()),
            ),
            None => (
                FailureClass::Permanent,
                "http-ledger".into(),
                "its ledger steps have no plan".into(),
            ),
        };
        // Leftovers a transient failure kept in place: the engine's retry
        // of the record removes them first (and then reports the original
        // refusal again without asking the API).
        let class = if worst(&leftovers) == FailureClass::Transient && !leftovers.is_empty() {
            FailureClass::Transient
        } else {
            class
        };
        let latest = book.attempts().into_iter().next_back();
        let touched = latest.is_some_and(|a| {
            book.applies(a)
                .any(|s| s.result.reverted_by.is_some() || s.state == StepState::Stuck)
        });
        let after = if !leftovers.is_empty() {
            String::new()
        } else if touched {
            "Everything it had created or changed was taken back.".to_owned()
        } else {
            "Nothing of it was applied.".to_owned()
        };
        let after = if leftovers.is_empty() {
            after
        } else {
            format!(
                "LEFTOVER: {}; sluice tries again when the record is retried, recovered or \
                 undone, else remove or restore it by hand.",
                leftover_text(&leftovers)
            )
        };
        End::Failed {
            outcome: Outcome::Failed {
                class,
                code,
                message: format!("{}: {what}. {after}", book.who),
            },
            leftovers,
        }
    }

    /// Take a new step: read the before-image of a PUT, journal, send.
    /// `Ok(Err(..))` is a failed step (the attempt is compensated by the
    /// caller); `Err` a ledger failure.
    #[allow(clippy::too_many_arguments)]
    async fn fresh(
        &self,
        book: &mut Book,
        attempt: u32,
        r: &Resource,
        p: &Planned,
        plan: &Plan,
        first: bool,
        parent_id: Option<&str>,
    ) -> Result<Result<u32, (CallError, String)>, SinkError> {
        let who = book.who.clone();
        let vars = Vars {
            tenant: &who.tenant,
            key: &who.key,
            id: None,
            parent_id,
            child_id: None,
            index: p.res.child.as_ref().map(|_| p.res.index),
            own: &p.own,
            record: &plan.fields,
        };
        let label = p.res.label(&who.kind, &who.key);
        let path = match r.create.render(&vars) {
            Ok(path) => path,
            Err(e) => {
                let e = CallError::Mapping(format!("[kinds.{}] create: {e}", r.label));
                return Ok(Err((e, format!("creating {label}"))));
            }
        };
        let url = self.map.url(&path);
        let method = match r.method {
            CreateMethod::Put => Method::PUT,
            CreateMethod::Post => Method::POST,
        };
        let before = match r.method {
            CreateMethod::Post => None,
            CreateMethod::Put => match self.http.send(&Call::get(&url)).await {
                Ok(reply) if reply.ok() => match reply.json() {
                    Some(body) => Some(Before {
                        body: Some(body),
                        etag: reply.etag,
                    }),
                    None => {
                        let e = CallError::BadResponse(format!(
                            "GET {url} answered with a body that is not JSON"
                        ));
                        return Ok(Err((e, format!("reading {label} before replacing it"))));
                    }
                },
                Ok(reply) if matches!(reply.status, 404 | 410) => Some(Before {
                    body: None,
                    etag: None,
                }),
                Ok(reply) => {
                    return Ok(Err((
                        CallError::status(&reply),
                        format!("reading {label} before replacing it (GET {url})"),
                    )));
                }
                Err(e) => {
                    return Ok(Err((
                        e,
                        format!("reading {label} before replacing it (GET {url})"),
                    )));
                }
            },
        };
        let no = book.next_no();
        let nonce = book.nonce();
        let data = ApplyData {
            attempt,
            tenant: who.tenant.clone(),
            kind: who.kind.clone(),
            key: who.key.clone(),
            res: p.res.clone(),
            method: method.to_string(),
            url: url.clone(),
            body: p.body.clone(),
            idempotency_key: book.key_for(&nonce, no),
            nonce,
            before,
            plan: first.then(|| plan.clone()),
        };
        let description = format!("create {label} ({method} {url})");
        book.put(
            no,
            description,
            Data::Apply(Box::new(data)),
            StepState::Intended,
            StepResult::default(),
        )
        .await?;
        faults::point("http.after-intended");
        match self.send_apply(book, no, r).await? {
            Ok(()) => Ok(Ok(no)),
            Err(e) => Ok(Err((e, format!("{method} {url} ({label})")))),
        }
    }

    /// Send an unconfirmed apply step again with its key.
    async fn resend(
        &self,
        book: &mut Book,
        no: u32,
        r: &Resource,
    ) -> Result<Result<(), (CallError, String)>, SinkError> {
        let a = book.steps[&no].apply().expect("an apply step").clone();
        match self.send_apply(book, no, r).await? {
            Ok(()) => Ok(Ok(())),
            Err(e) => Ok(Err((
                e,
                format!("{} {} ({})", a.method, a.url, a.res.label(&a.kind, &a.key)),
            ))),
        }
    }

    /// Send apply step `no` (journaled `Intended`) and journal its outcome.
    async fn send_apply(
        &self,
        book: &mut Book,
        no: u32,
        r: &Resource,
    ) -> Result<Result<(), CallError>, SinkError> {
        let a = book.steps[&no].apply().expect("an apply step").clone();
        let call = Call {
            method: a.method.parse().unwrap_or(Method::PUT),
            url: a.url.clone(),
            body: Some(a.body.clone()),
            idempotency_key: Some(a.idempotency_key.clone()),
            if_match: None,
        };
        let reply = self.http.send(&call).await;
        faults::point("http.after-call");
        let e = match reply {
            Ok(reply) if reply.ok() => {
                let who = book.who.clone();
                let id = match (&r.id_from, r.method) {
                    (Some(path), _) => match path.find(&reply.body) {
                        Some(id) => Some(id),
                        None => {
                            let e = CallError::BadResponse(format!(
                                "the answer to {call} has no id at {:?} (id_from of [kinds.{}])",
                                path.raw, r.label
                            ));
                            // Created, but it cannot be addressed.
                            let stuck = r.method == CreateMethod::Post;
                            let result = StepResult {
                                status: Some(reply.status),
                                stuck: stuck.then(|| Stuck {
                                    during: "apply".into(),
                                    error: format!(
                                        "{e}: the resource was created by {call} but its URL is \
                                         unknown"
                                    ),
                                    class: FailureClass::Permanent,
                                    reported: false,
                                }),
                                ..StepResult::default()
                            };
                            let state = if stuck {
                                StepState::Stuck
                            } else {
                                StepState::Done
                            };
                            book.set(no, state, result).await?;
                            return Ok(Err(e));
                        }
                    },
                    (None, _) if a.res.child.is_none() => Some(who.key.clone()),
                    (None, _) => Some(a.res.index.to_string()),
                };
                let (read_url, delete_url) = match r.method {
                    CreateMethod::Put => (a.url.clone(), a.url.clone()),
                    CreateMethod::Post => {
                        let plan_fields = book
                            .plan_of(a.attempt)
                            .map(|p| p.fields.clone())
                            .unwrap_or_default();
                        let parent_id = self.parent_id(book, a.attempt);
                        let own = child_fields(&plan_fields, &a.res).unwrap_or_default();
                        let (pid, cid, oid) = match &a.res.child {
                            None => (None, None, id.as_deref()),
                            Some(_) => (parent_id.as_deref(), id.as_deref(), None),
                        };
                        let vars = Vars {
                            tenant: &who.tenant,
                            key: &who.key,
                            id: oid,
                            parent_id: pid,
                            child_id: cid,
                            index: a.res.child.as_ref().map(|_| a.res.index),
                            own: &own,
                            record: &plan_fields,
                        };
                        let read = r.read.as_ref().expect("checked").render(&vars);
                        let delete = r.delete.as_ref().expect("checked").render(&vars);
                        match (read, delete) {
                            (Ok(read), Ok(delete)) => (self.map.url(&read), self.map.url(&delete)),
                            (Err(e), _) | (_, Err(e)) => {
                                let e = CallError::Mapping(format!(
                                    "[kinds.{}] read/delete: {e}",
                                    r.label
                                ));
                                let result = StepResult {
                                    status: Some(reply.status),
                                    id,
                                    stuck: Some(Stuck {
                                        during: "apply".into(),
                                        error: format!(
                                            "{e}: the resource was created by {call} but its URL \
                                             cannot be built"
                                        ),
                                        class: FailureClass::Permanent,
                                        reported: false,
                                    }),
                                    ..StepResult::default()
                                };
                                book.set(no, StepState::Stuck, result).await?;
                                return Ok(Err(e));
                            }
                        }
                    }
                };
                let result = StepResult {
                    status: Some(reply.status),
                    id,
                    read_url: Some(read_url),
                    delete_url: Some(delete_url),
                    etag: reply.etag,
                    ..StepResult::default()
                };
                book.set(no, StepState::Done, result).await?;
                return Ok(Ok(()));
            }
            Ok(reply) => CallError::status(&reply),
            Err(e) => e,
        };
        if e.not_applied() {
            let who = &book.who;
            let failure = Failure {
                class: e.class(),
                code: e.code(),
                message: format!(
                    "{who}: {call} ({}) failed: {e}; {}",
                    a.res.label(&a.kind, &a.key),
                    e.advice()
                ),
            };
            let result = StepResult {
                failure: Some(failure),
                status: match &e {
                    CallError::Status { status, .. } => Some(*status),
                    _ => None,
                },
                ..StepResult::default()
            };
            book.set(no, StepState::Compensated, result).await?;
        }
        Ok(Err(e))
    }

    /// The parent's id in an attempt.
    fn parent_id(&self, book: &Book, attempt: u32) -> Option<String> {
        book.applies(attempt)
            .find(|s| {
                s.apply().is_some_and(|a| a.res.child.is_none()) && s.state != StepState::Intended
            })
            .and_then(|s| s.result.id.clone())
    }

    /// Compensate an attempt: its live steps, newest first. Returns what
    /// could not be taken back.
    async fn revert_attempt(
        &self,
        book: &mut Book,
        attempt: u32,
    ) -> Result<Vec<Leftover>, SinkError> {
        let live: Vec<u32> = book
            .applies(attempt)
            .rev()
            .filter(|s| !book.gone(s))
            .map(|s| s.no)
            .collect();
        let mut left = Vec::new();
        for (i, no) in live.into_iter().enumerate() {
            if i > 0 {
                faults::point("http.mid-compensation");
            }
            match self
                .revert_step(book, no, Why::Compensate, None, "compensate")
                .await?
            {
                Reverted::Done { .. } | Reverted::Kept => {}
                Reverted::Stuck(l) => left.push(l),
            }
        }
        Ok(left)
    }

    /// Take one apply step back: settle an unknown outcome, then DELETE or
    /// PUT the before-image, retrying transient failures.
    async fn revert_step(
        &self,
        book: &mut Book,
        no: u32,
        why: Why,
        if_match: Option<String>,
        during: &str,
    ) -> Result<Reverted, SinkError> {
        let step = book.steps[&no].clone();
        let a = step.apply().expect("an apply step").clone();
        let label = a.res.label(&a.kind, &a.key);
        let resource = self.resource(&a.kind, &a.res);
        // Settle an unknown outcome of a POST: send it again with its key.
        if step.state == StepState::Intended && a.method == "POST" {
            let Some(r) = resource else {
                return self
                    .stuck(
                        book,
                        no,
                        during,
                        FailureClass::Permanent,
                        format!(
                            "{label} may have been created by POST {} but the mapping no longer \
                         describes it, so it cannot be found",
                            a.url
                        ),
                    )
                    .await;
            };
            let mut tries = 0;
            loop {
                tries += 1;
                match self.send_apply(book, no, r).await? {
                    Ok(()) => break,
                    Err(_) if book.steps[&no].state == StepState::Compensated => {
                        // It was never applied.
                        return Ok(Reverted::Done {
                            action: UndoAction::Unchanged,
                        });
                    }
                    Err(e)
                        if e.class() == FailureClass::Transient
                            && tries < self.map.comp_attempts =>
                    {
                        tokio::time::sleep(self.backoff(tries)).await;
                    }
                    Err(e) => {
                        if book.steps[&no].state == StepState::Stuck {
                            let s = book.steps[&no].result.stuck.clone().expect("stuck info");
                            return Ok(Reverted::Stuck(Leftover {
                                what: format!("{label}: {}", s.error),
                                class: s.class,
                            }));
                        }
                        return self
                            .stuck(book, no, during, e.class(), format!(
                                "{label} may have been created by POST {} (outcome unknown: the \
                                 call was interrupted) and sending it again failed: {e}",
                                a.url
                            ))
                            .await;
                    }
                }
            }
        }
        let step = book.steps[&no].clone();
        let restore = a.before.as_ref().and_then(|b| b.body.clone());
        // The revert call: resend an unconfirmed one, or journal a new one.
        let rno = match book.pending_revert(no) {
            Some(r) => r.no,
            None => {
                let Some(delete_url) = step
                    .result
                    .delete_url
                    .clone()
                    .or_else(|| (a.method == "PUT").then(|| a.url.clone()))
                else {
                    return self
                        .stuck(
                            book,
                            no,
                            during,
                            FailureClass::Permanent,
                            format!(
                                "{label} was created by {} {} but its URL is unknown",
                                a.method, a.url
                            ),
                        )
                        .await;
                };
                let (method, url, body) = match &restore {
                    Some(b) => (Method::PUT, a.url.clone(), Some(b.clone())),
                    None => (Method::DELETE, delete_url, None),
                };
                let rno = book.next_no();
                let nonce = book.nonce();
                let verb = match why {
                    Why::Compensate => "compensate",
                    Why::Undo => "undo",
                };
                let action = if restore.is_some() {
                    "restore"
                } else {
                    "delete"
                };
                let data = RevertData {
                    attempt: a.attempt,
                    kind: a.kind.clone(),
                    key: a.key.clone(),
                    of: no,
                    why,
                    method: method.to_string(),
                    url: url.clone(),
                    body,
                    idempotency_key: book.key_for(&nonce, rno),
                    nonce,
                    if_match: if_match.clone(),
                };
                book.put(
                    rno,
                    format!("{verb} step {no}: {action} {label} ({method} {url})"),
                    Data::Revert(Box::new(data)),
                    StepState::Intended,
                    StepResult::default(),
                )
                .await?;
                rno
            }
        };
        let Data::Revert(r) = book.steps[&rno].data.clone() else {
            unreachable!("a revert step")
        };
        let call = Call {
            method: r.method.parse().unwrap_or(Method::DELETE),
            url: r.url.clone(),
            body: r.body.clone(),
            idempotency_key: Some(r.idempotency_key.clone()),
            if_match: r.if_match.clone(),
        };
        let mut tries = 0;
        let err = loop {
            tries += 1;
            let e = match self.http.send(&call).await {
                Ok(reply)
                    if reply.ok()
                        || (call.method == Method::DELETE && matches!(reply.status, 404 | 410)) =>
                {
                    let gone = !reply.ok();
                    book.set(
                        rno,
                        StepState::Done,
                        StepResult {
                            status: Some(reply.status),
                            ..StepResult::default()
                        },
                    )
                    .await?;
                    let action = if gone {
                        UndoAction::Unchanged
                    } else if call.method == Method::PUT {
                        UndoAction::Restored
                    } else {
                        UndoAction::Removed
                    };
                    let mut result = step.result.clone();
                    result.reverted_by = Some(rno);
                    result.stuck = None;
                    let state = match why {
                        Why::Compensate => StepState::Compensated,
                        Why::Undo => {
                            result.undo = Some(
                                match action {
                                    UndoAction::Restored => "restored",
                                    UndoAction::Removed => "removed",
                                    _ => "gone",
                                }
                                .into(),
                            );
                            StepState::Undone
                        }
                    };
                    book.set(no, state, result).await?;
                    return Ok(Reverted::Done { action });
                }
                Ok(reply) if reply.status == 412 && why == Why::Undo => {
                    book.set(
                        rno,
                        StepState::Done,
                        StepResult {
                            status: Some(412),
                            ..StepResult::default()
                        },
                    )
                    .await?;
                    let mut result = step.result.clone();
                    result.undo = Some("kept-changed".into());
                    book.set(no, StepState::Undone, result).await?;
                    return Ok(Reverted::Kept);
                }
                Ok(reply) => CallError::status(&reply),
                Err(e) => e,
            };
            if e.class() == FailureClass::Transient && tries < self.map.comp_attempts {
                tokio::time::sleep(self.backoff(tries)).await;
                continue;
            }
            break e;
        };
        book.set(
            rno,
            StepState::Stuck,
            StepResult {
                status: match &err {
                    CallError::Status { status, .. } => Some(*status),
                    _ => None,
                },
                ..StepResult::default()
            },
        )
        .await?;
        let what = if restore.is_some() {
            format!(
                "{label} at {} was replaced and its earlier state could not be put back \
                 ({call}: {err})",
                a.url
            )
        } else {
            format!("{label} at {} could not be deleted ({call}: {err})", r.url)
        };
        self.stuck(book, no, during, err.class(), what).await
    }

    /// Mark apply step `no` stuck.
    async fn stuck(
        &self,
        book: &mut Book,
        no: u32,
        during: &str,
        class: FailureClass,
        error: String,
    ) -> Result<Reverted, SinkError> {
        let mut result = book.steps[&no].result.clone();
        let reported = result.stuck.as_ref().is_some_and(|s| s.reported);
        result.stuck = Some(Stuck {
            during: during.to_owned(),
            error: error.clone(),
            class,
            reported,
        });
        book.set(no, StepState::Stuck, result).await?;
        Ok(Reverted::Stuck(Leftover { what: error, class }))
    }

    fn backoff(&self, tries: u32) -> Duration {
        self.map
            .comp_delay
            .saturating_mul(1 << tries.saturating_sub(1).min(10))
            .min(Duration::from_secs(30))
    }

    /// Apply one batch item.
    async fn apply_item(
        &self,
        batch: &Batch,
        index: usize,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Outcome, SinkError> {
        let item = &batch.items[index];
        let who = Who {
            job: batch.job,
            part: batch.part,
            ordinal: item.ordinal,
            tenant: batch.tenant.clone(),
            kind: item.kind.clone(),
            key: item.key.clone(),
        };
        let (job, part, ordinal) = (who.job, who.part, who.ordinal);
        let steps = on_ledger(&ledger, move |l| l.steps(job, part, ordinal)).await?;
        let mut book = Book::new(ledger, who, &steps)?;
        let fields = item.record.fields_json();
        Ok(match self.drive(&mut book, Some(&fields)).await? {
            End::Applied { .. } => Outcome::Applied,
            End::Failed { outcome, .. } => outcome,
            End::Nothing => unreachable!("a record with fields is applied or fails"),
        })
    }

    /// Undo one record found in the ledger. `None` if nothing of it is
    /// left to undo.
    async fn undo_record(
        &self,
        book: &mut Book,
        scope: &UndoScope,
    ) -> Result<Option<UndoEntry>, SinkError> {
        let during = match scope {
            UndoScope::Job => "undo-job",
            UndoScope::Unjournaled(_) => "undo-unjournaled",
        };
        let skip = |s: &Stuck| s.during == "undo-job" || s.during == during;
        // Live steps, newest first: children before their parent.
        let live: Vec<u32> = book
            .steps
            .values()
            .rev()
            .filter(|s| s.apply().is_some() && !book.gone(s))
            .filter(|s| !(s.state == StepState::Stuck && s.result.stuck.as_ref().is_some_and(skip)))
            .map(|s| s.no)
            .collect();
        if live.is_empty() {
            return Ok(None);
        }
        let who = book.who.clone();
        let entry = |action, message: Option<String>| UndoEntry {
            part: who.part,
            ordinal: who.ordinal,
            kind: who.kind.clone(),
            key: who.key.clone(),
            action,
            message,
        };
        // Is everything still as the job left it?
        let mut changed = Vec::new();
        let mut gone = BTreeSet::new();
        let mut etags: BTreeMap<u32, Option<String>> = BTreeMap::new();
        for &no in &live {
            let s = &book.steps[&no];
            if s.state == StepState::Intended {
                continue; // outcome unknown: taken back below
            }
            let a = s.apply().expect("apply step");
            let label = a.res.label(&a.kind, &a.key);
            let Some(url) = s.read_url() else {
                continue;
            };
            match self.http.send(&Call::get(&url)).await {
                Ok(reply) if reply.ok() => {
                    let current = reply.json().unwrap_or(Json::Null);
                    if written_still_holds(&a.body, &current) {
                        etags.insert(no, reply.etag);
                    } else {
                        changed.push(format!("{label} ({url}) was changed"));
                    }
                }
                Ok(reply) if matches!(reply.status, 404 | 410) => {
                    if a.before.as_ref().is_some_and(|b| b.body.is_some()) {
                        changed.push(format!("{label} ({url}) was deleted"));
                    } else {
                        gone.insert(no);
                    }
                }
                Ok(reply) => {
                    let e = CallError::status(&reply);
                    if e.class() == FailureClass::Permanent {
                        return self.undo_failed(book, &live, during, format!(
                            "cannot read {label} to see whether it changed since the import (GET {url}: {e})"
                        ), &entry).await;
                    }
                    return Err(self.undo_unavailable(&who, &format!("GET {url}"), &e));
                }
                Err(e) => return Err(self.undo_unavailable(&who, &format!("GET {url}"), &e)),
            }
        }
        if !changed.is_empty() {
            for &no in &live {
                let mut result = book.steps[&no].result.clone();
                result.undo = Some("kept-changed".into());
                book.set(no, StepState::Undone, result).await?;
            }
            return Ok(Some(entry(
                UndoAction::KeptChanged,
                Some(format!(
                    "{}; the record was kept as it is (nothing of it removed)",
                    changed.join("; ")
                )),
            )));
        }
        let mut actions = Vec::new();
        for (i, &no) in live.iter().enumerate() {
            if i > 0 {
                faults::point("http.mid-undo");
            }
            if gone.contains(&no) {
                let mut result = book.steps[&no].result.clone();
                result.undo = Some("gone".into());
                book.set(no, StepState::Undone, result).await?;
                actions.push(UndoAction::Unchanged);
                continue;
            }
            let mut tag = etags.get(&no).cloned().flatten();
            let mut changed_now = false;
            if i > 0 && book.steps[&no].state != StepState::Intended {
                // Taking back the steps before may have changed this one's
                // ETag (a parent's representation may list its children):
                // read it again just before.
                let s = &book.steps[&no];
                let a = s.apply().expect("apply step");
                if let Some(url) = s.read_url()
                    && let Ok(reply) = self.http.send(&Call::get(&url)).await
                    && reply.ok()
                {
                    changed_now =
                        !written_still_holds(&a.body, &reply.json().unwrap_or(Json::Null));
                    tag = reply.etag;
                }
            }
            let reverted = if changed_now {
                Reverted::Kept
            } else {
                self.revert_step(book, no, Why::Undo, tag, during).await?
            };
            match reverted {
                Reverted::Done { action } => actions.push(action),
                Reverted::Kept => {
                    let rest: Vec<u32> = live[i + usize::from(!changed_now)..].to_vec();
                    for no in rest {
                        let mut result = book.steps[&no].result.clone();
                        result.undo = Some("kept-changed".into());
                        book.set(no, StepState::Undone, result).await?;
                    }
                    let s = book.steps[&live[i]].apply().expect("apply").clone();
                    return Ok(Some(entry(
                        UndoAction::KeptChanged,
                        Some(format!(
                            "{} was changed while being undone; it and what remains of the record \
                             were kept",
                            s.res.label(&s.kind, &s.key)
                        )),
                    )));
                }
                Reverted::Stuck(l) if l.class == FailureClass::Permanent => {
                    let rest: Vec<u32> = live[i + 1..].to_vec();
                    return self.undo_failed(book, &rest, during, l.what, &entry).await;
                }
                Reverted::Stuck(l) => {
                    return Err(SinkError::Transient(format!(
                        "undoing {who}: {}; the undo stopped here and resumes where it stopped \
                         when run again once the API at {} answers",
                        l.what, self.map.base
                    )));
                }
            }
        }
        let action = if actions.contains(&UndoAction::Restored) {
            UndoAction::Restored
        } else if actions.contains(&UndoAction::Removed) {
            UndoAction::Removed
        } else {
            UndoAction::Unchanged
        };
        Ok(Some(entry(action, None)))
    }

    async fn undo_failed(
        &self,
        book: &mut Book,
        rest: &[u32],
        during: &str,
        why: String,
        entry: &impl Fn(UndoAction, Option<String>) -> UndoEntry,
    ) -> Result<Option<UndoEntry>, SinkError> {
        for &no in rest {
            if book.steps[&no].state != StepState::Stuck {
                self.stuck(
                    book,
                    no,
                    during,
                    FailureClass::Permanent,
                    format!("not undone: {why}"),
                )
                .await?;
            }
        }
        Ok(Some(entry(
            UndoAction::Failed,
            Some(format!(
                "{why}; the record's resources remain on {}: remove or restore them by hand",
                self.map.base
            )),
        )))
    }

    fn undo_unavailable(&self, who: &Who, call: &str, e: &CallError) -> SinkError {
        SinkError::Transient(format!(
            "undoing {who}: {call} failed: {e}; the undo stopped and resumes where it stopped \
             when run again once the API at {} answers",
            self.map.base
        ))
    }
}

/// Run one ledger call on a blocking thread: the ledger is a redb file.
async fn on_ledger<T: Send + 'static>(
    ledger: &Arc<dyn Ledger>,
    call: impl FnOnce(&dyn Ledger) -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || call(&*ledger))
        .await
        .map_err(|e| SinkError::Io(format!("ledger task failed: {e}")))?
}

/// Whether every property the job wrote still has the value it wrote.
fn written_still_holds(written: &Json, current: &Json) -> bool {
    match (written, current) {
        (Json::Object(w), Json::Object(c)) => w.iter().all(|(k, v)| c.get(k) == Some(v)),
        (w, c) => w == c,
    }
}

/// A child's own fields from a record's fields.
fn child_fields(fields: &Map<String, Json>, res: &ResRef) -> Option<Map<String, Json>> {
    let name = res.child.as_ref()?;
    let mut out = Map::new();
    for (f, v) in fields {
        if let Some((child, index, prop)) = child_field(f)
            && child == name
            && index == res.index
        {
            out.insert(prop.to_owned(), v.clone());
        }
    }
    Some(out)
}

fn worst(leftovers: &[Leftover]) -> FailureClass {
    if leftovers.iter().any(|l| l.class == FailureClass::Transient) {
        FailureClass::Transient
    } else {
        FailureClass::Permanent
    }
}

fn leftover_text(leftovers: &[Leftover]) -> String {
    leftovers
        .iter()
        .map(|l| l.what.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

#[async_trait::async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn apply(
        &self,
        batch: Arc<Batch>,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Vec<Outcome>, SinkError> {
        let n = batch.items.len();
        let gate = Arc::new(tokio::sync::Semaphore::new(self.inner.map.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            // Records start in batch order, `concurrency` at a time.
            let permit = gate.clone().acquire_owned().await.expect("never closed");
            let (inner, batch, ledger) = (self.inner.clone(), batch.clone(), ledger.clone());
            tasks.spawn(async move {
                let _permit = permit;
                (i, inner.apply_item(&batch, i, ledger).await)
            });
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, Ok(o))) => outcomes[i] = Some(o),
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error
                        .get_or_insert(SinkError::Io(format!("an HTTP apply task failed: {e}")));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every task reported"))
            .collect();
        let unreachable = outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Failed { code, .. } if code == "http-connect"));
        if n > 0 && unreachable {
            let detail = match &outcomes[0] {
                Outcome::Failed { message, .. } => message.clone(),
                Outcome::Applied => String::new(),
            };
            return Err(SinkError::Transient(format!(
                "cannot connect to the API at {} for any record of the batch ({detail})",
                self.inner.map.base
            )));
        }
        Ok(outcomes)
    }

    async fn reconcile(&self, job: u64, ledger: Arc<dyn Ledger>) -> Result<Reconciled, SinkError> {
        let inner = &self.inner;
        let mut out = Reconciled::default();
        let mut cursor = None;
        loop {
            let page = on_ledger(&ledger, move |l| l.records(job, cursor, WALK_PAGE)).await?;
            if page.is_empty() {
                break;
            }
            for (part, ordinal, steps) in page {
                cursor = Some((part, ordinal));
                let Some(mut book) = Book::found(ledger.clone(), job, part, ordinal, &steps)?
                else {
                    continue;
                };
                if !book.unsettled() {
                    continue;
                }
                match inner.drive(&mut book, None).await? {
                    End::Applied { finished: true } => out.finished += 1,
                    End::Applied { finished: false } | End::Nothing => out.compensated += 1,
                    End::Failed { outcome, leftovers } => {
                        if leftovers.is_empty() {
                            out.compensated += 1;
                            continue;
                        }
                        if worst(&leftovers) == FailureClass::Transient {
                            let message = match outcome {
                                Outcome::Failed { message, .. } => message,
                                Outcome::Applied => String::new(),
                            };
                            return Err(SinkError::Transient(format!(
                                "recovering job {job}: {message}; run `sluice recover` again once \
                                 the API at {} answers",
                                inner.map.base
                            )));
                        }
                        // Report each stuck resource once.
                        for no in book.steps.keys().copied().collect::<Vec<_>>() {
                            let s = &book.steps[&no];
                            if s.state == StepState::Stuck
                                && let Some(st) = s.result.stuck.clone()
                                && !st.reported
                            {
                                out.leftovers.push(format!("{}: {}", book.who, st.error));
                                let mut result = s.result.clone();
                                result.stuck = Some(Stuck {
                                    reported: true,
                                    ..st
                                });
                                book.set(no, StepState::Stuck, result).await?;
                            }
                        }
                    }
                }
            }
        }
        if out.finished + out.compensated > 0 || !out.leftovers.is_empty() {
            tracing::info!(
                job,
                finished = out.finished,
                compensated = out.compensated,
                leftovers = out.leftovers.len(),
                "reconciled records a crash left part-way on the HTTP target"
            );
        }
        Ok(out)
    }

    async fn undo(
        &self,
        job: u64,
        scope: &UndoScope,
        limit: usize,
        ledger: Arc<dyn Ledger>,
    ) -> Result<UndoPage, SinkError> {
        let mut page = UndoPage::default();
        let memo = (job, format!("{scope:?}"));
        let cursors = &self.inner.undo_cursor;
        let mut cursor = lock(cursors).get(&memo).copied();
        loop {
            let records = on_ledger(&ledger, move |l| l.records(job, cursor, WALK_PAGE)).await?;
            if records.is_empty() {
                page.done = true;
                lock(cursors).remove(&memo);
                return Ok(page);
            }
            for (part, ordinal, steps) in records {
                if scope.covers(part, ordinal)
                    && let Some(mut book) = Book::found(ledger.clone(), job, part, ordinal, &steps)?
                {
                    if page.entries.len() >= limit {
                        // Something may be left: the next page looks.
                        if let Some(c) = cursor {
                            lock(cursors).insert(memo, c);
                        }
                        return Ok(page);
                    }
                    if let Some(e) = self.inner.undo_record(&mut book, scope).await? {
                        page.entries.push(e);
                    }
                }
                cursor = Some((part, ordinal));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(text: &str) -> Result<Mapping, String> {
        Mapping::parse(Path::new("m.toml"), text, |n| {
            (n == "TOKEN").then(|| "s3cret".to_owned())
        })
    }

    const GOOD: &str = r#"
        base_url = "http://127.0.0.1:9/api/"
        timeout_ms = 100
        [headers]
        Authorization = "Bearer ${TOKEN}"
        [kinds.customers]
        create = "POST /customers"
        id_from = "data.id"
        read = "/customers/{id}"
        delete = "/customers/{id}"
        rename = { name = "full_name" }
        exclude = ["secret"]
        [kinds.customers.children.contact]
        create = "PUT /customers/{parent_id}/contacts/{index}"
    "#;

    #[test]
    fn a_mapping_is_checked_and_expanded() {
        let m = mapping(GOOD).unwrap();
        assert_eq!(m.base, "http://127.0.0.1:9/api");
        assert_eq!(m.headers[0].1, "Bearer s3cret");
        let c = &m.kinds["customers"];
        assert_eq!(c.id_from.as_ref().unwrap().pointer, "/data/id");
        assert_eq!(c.children[0].method, CreateMethod::Put);
    }

    #[test]
    fn mapping_mistakes_are_named() {
        let cases = [
            (GOOD.replace("${TOKEN}", "${NOPE}"), "NOPE is not set"),
            (GOOD.replace("http://", "ftp://"), "must start with http://"),
            (GOOD.replace("id_from = \"data.id\"", ""), "needs id_from"),
            (
                GOOD.replace(
                    "/customers/{id}\"\n        delete",
                    "/customers\"\n        delete",
                ),
                "must use {id}",
            ),
            (
                GOOD.replace("POST /customers\"", "POST /customers/{id}\""),
                "cannot be used",
            ),
            (
                GOOD.replace("PATCH", "x")
                    .replace("POST /customers\"", "PATCH /customers\""),
                "not supported",
            ),
            (
                GOOD.replace("timeout_ms = 100", "timeout_ms = 100\nbogus = 1"),
                "unknown field",
            ),
            (
                GOOD.replace("{index}\"", "{index}\"\n        read = \"/x\""),
                "remove read and delete",
            ),
        ];
        for (text, want) in cases {
            let err = mapping(&text).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn records_are_split_into_parent_and_children() {
        let m = mapping(GOOD).unwrap();
        let fields: Map<String, Json> = serde_json::from_str(
            r#"{"id":"C-1","name":"Ann","secret":"x","contact/email":"a@x","contact[2]/email":"",
                "contact[3]/email":"c@x","other/thing":"y"}"#,
        )
        .unwrap();
        let p = plan_record(&m.kinds["customers"], &fields);
        assert_eq!(p.len(), 3, "contact 2 is empty and skipped");
        assert_eq!(
            p[0].body,
            serde_json::json!({"id":"C-1","full_name":"Ann","other/thing":"y"})
        );
        assert_eq!(p[1].res.index, 1);
        assert_eq!(p[2].res.index, 3);
        assert_eq!(p[2].body, serde_json::json!({"email":"c@x"}));
        let t = Template::parse("/c/{parent_id}/x/{email}", Slot::ChildCreate, "t").unwrap();
        let vars = Vars {
            tenant: "t",
            key: "k",
            id: None,
            parent_id: Some("a b/c"),
            child_id: None,
            index: Some(3),
            own: &p[2].own,
            record: &fields,
        };
        assert_eq!(t.render(&vars).unwrap(), "/c/a%20b%2Fc/x/c%40x");
        assert_eq!(child_fields(&fields, &p[2].res).unwrap(), p[2].own);
    }

    #[test]
    fn failures_are_classified() {
        let s = |status| CallError::Status {
            status,
            body: String::new(),
        };
        for (e, class, applied) in [
            (s(503), FailureClass::Transient, false),
            (s(502), FailureClass::Transient, true),
            (s(504), FailureClass::Transient, true),
            (s(500), FailureClass::Transient, true),
            (s(429), FailureClass::Transient, false),
            (s(409), FailureClass::Conflict, false),
            (s(422), FailureClass::Permanent, false),
            (s(400), FailureClass::Permanent, false),
            (
                CallError::Timeout(Duration::from_millis(5)),
                FailureClass::Transient,
                true,
            ),
            (
                CallError::Connect("refused".into()),
                FailureClass::Transient,
                false,
            ),
        ] {
            assert_eq!(e.class(), class, "{e}");
            assert_eq!(!e.not_applied(), applied, "{e}");
        }
        assert_eq!(s(422).code(), "http-422");
    }
}
