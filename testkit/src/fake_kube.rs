//! A FAKE Kubernetes API server, in process (no API server can be installed on the machines
//! these tests run on). It is stateful: it keeps objects by path with resource versions, merges
//! server-side-apply patches into them as the API server would for a single field manager
//! (keeping `spec.replicas` and `status`, which other actors own), serves the Deployment `scale`
//! subresource, LIST (namespaced and cluster-wide, with `labelSelector` equality terms) and
//! WATCH (every change since a resource version, then live, as JSON lines), and counts requests.
//! Tests play the kubelet and the EndpointSlice controller by editing objects in its store.
//! Not modelled: admission, validation, field-manager conflicts, garbage collection by owner,
//! watch expiry (410 Gone), pagination (everything fits in one page).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One change, as a watch sends it.
#[derive(Clone, Debug)]
pub struct Change {
    pub version: u64,
    pub kind: &'static str,
    pub path: String,
    pub object: Value,
}

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<(Method, String)>,
    history: Vec<Change>,
    version: u64,
    next_uid: u64,
}

#[derive(Clone)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Arc::default(),
            changes: broadcast::channel(4096).0,
        }
    }
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
               "message": format!("{path} not found"), "code": 404}),
    )
}

/// JSON merge of `patch` into `into` (objects merge, everything else replaces).
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// What a LIST or WATCH path selects: objects one segment below it, in any namespace when the
/// path has none (`/apis/g/v1/things` also selects `/apis/g/v1/namespaces/ns/things/x`).
fn selects(collection: &str, object_path: &str) -> bool {
    let direct = object_path
        .strip_prefix(collection)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|name| !name.contains('/'));
    if direct || collection.contains("/namespaces/") {
        return direct;
    }
    let Some((api, resource)) = collection.rsplit_once('/') else {
        return false;
    };
    let Some(rest) = object_path.strip_prefix(&format!("{api}/namespaces/")) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    parts.len() == 3 && parts[1] == resource
}

fn is_collection(path: &str) -> bool {
    match path.split_once("/namespaces/") {
        Some((_, rest)) => rest.split('/').count() == 2,
        None => {
            path.split('/').filter(|s| !s.is_empty()).count()
                == if path.starts_with("/api/") { 3 } else { 4 }
        }
    }
}

/// `a=b,c` (equality and existence terms).
fn labels_match(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v.trim_start_matches('=')),
        None => labels.get(term).is_some(),
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            // Percent-decoding of what label selectors use.
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
                .replace("%3d", "=")
                .replace("%2c", ",")
                .replace("%2f", "/")
        })
    })
}

type FakeBody = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, value: Value) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

impl FakeApi {
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if parts.method == Method::GET
                    && query(&parts.uri, "watch").as_deref() == Some("true")
                {
                    return Ok::<_, Infallible>(api.watch(&parts.uri));
                }
                let (status, value) = api.handle(&parts.method, &parts.uri, &bytes);
                Ok(json_response(status, value))
            }
        });
        Client::new(service, "default")
    }

    /// Every change after `resourceVersion` that the path and selector select, then live ones.
    fn watch(&self, uri: &http::Uri) -> Response<FakeBody> {
        let collection = uri.path().to_string();
        let selector = query(uri, "labelSelector");
        let since: u64 = query(uri, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (backlog, mut live) = {
            let mut st = self.state.lock().unwrap();
            st.requests.push((Method::GET, uri.to_string()));
            let backlog: Vec<Change> = st
                .history
                .iter()
                .filter(|c| c.version > since)
                .cloned()
                .collect();
            // Subscribed under the lock: no change falls between the backlog and the live feed.
            (backlog, self.changes.subscribe())
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let line = move |c: &Change| -> Option<Bytes> {
            (selects(&collection, &c.path) && labels_match(selector.as_deref(), &c.object))
                .then(|| Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object}))))
        };
        tokio::spawn(async move {
            for c in &backlog {
                if let Some(b) = line(c)
                    && tx.send(b).is_err()
                {
                    return;
                }
            }
            let mut last = backlog.last().map_or(since, |c| c.version);
            loop {
                match live.recv().await {
                    Ok(c) if c.version > last => {
                        last = c.version;
                        if let Some(b) = line(&c)
                            && tx.send(b).is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        panic!("the fake's watch fell behind; raise the broadcast capacity")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(frames).boxed())
            .unwrap()
    }

    fn handle(&self, method: &Method, uri: &http::Uri, body: &[u8]) -> (StatusCode, Value) {
        let path = uri.path();
        let mut st = self.state.lock().unwrap();
        st.requests.push((method.clone(), path.to_string()));
        if *method == Method::GET && is_collection(path) {
            let selector = query(uri, "labelSelector");
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|(p, o)| selects(path, p) && labels_match(selector.as_deref(), o))
                .map(|(_, o)| o.clone())
                .collect();
            // A collection path that selects nothing is an empty list, as for a real API server.
            return (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List",
                       "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
            );
        }
        if let Some(deployment) = path.strip_suffix("/scale") {
            return self.scale(&mut st, method, deployment, body);
        }
        let (object_path, status_sub) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        match *method {
            Method::GET => match st.objects.get(path) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => not_found(path),
            },
            Method::DELETE => match st.objects.remove(&object_path) {
                Some(v) => {
                    self.record(&mut st, "DELETED", &object_path, v.clone());
                    (StatusCode::OK, v)
                }
                None => not_found(path),
            },
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(body).expect("patch body is JSON");
                if status_sub {
                    let Some(obj) = st.objects.get_mut(&object_path) else {
                        return not_found(path);
                    };
                    if obj["status"] == patch["status"] {
                        // A no-op write changes nothing and tells no watch, as in Kubernetes.
                        return (StatusCode::OK, obj.clone());
                    }
                    obj["status"] = patch["status"].clone();
                    let obj = obj.clone();
                    return (
                        StatusCode::OK,
                        self.record(&mut st, "MODIFIED", &object_path, obj),
                    );
                }
                st.next_uid += 1;
                let uid = format!("uid-{}", st.next_uid);
                let is_deployment = object_path.contains("/deployments/");
                let existed = st.objects.contains_key(&object_path);
                let obj = st.objects.entry(object_path.clone()).or_insert_with(|| {
                    let mut v = json!({"metadata": {"uid": uid, "generation": 1}});
                    if is_deployment {
                        // The API server's default for a Deployment applied without replicas.
                        v["spec"] = json!({"replicas": 1});
                        v["status"] = json!({"replicas": 0});
                    }
                    v
                });
                let before = obj.clone();
                merge(obj, &patch);
                if existed && *obj == before {
                    return (StatusCode::OK, before);
                }
                let obj = obj.clone();
                let kind = if existed { "MODIFIED" } else { "ADDED" };
                (
                    StatusCode::OK,
                    self.record(&mut st, kind, &object_path, obj),
                )
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"kind": "Status", "code": 405}),
            ),
        }
    }

    /// The Deployment `scale` subresource (autoscaling/v1 Scale).
    fn scale(
        &self,
        st: &mut State,
        method: &Method,
        deployment: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let Some(obj) = st.objects.get_mut(deployment) else {
            return not_found(deployment);
        };
        if *method == Method::PATCH {
            let patch: Value = serde_json::from_slice(body).expect("patch body is JSON");
            if let Some(n) = patch["spec"]["replicas"].as_u64() {
                obj["spec"]["replicas"] = json!(n);
            }
        } else if *method != Method::GET {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"kind": "Status", "code": 405}),
            );
        }
        let obj = obj.clone();
        let obj = if *method == Method::PATCH {
            self.record(st, "MODIFIED", deployment, obj)
        } else {
            obj
        };
        let scale = json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
                         "resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": {"replicas": obj["spec"]["replicas"]},
            "status": {"replicas": obj["status"]["replicas"].as_u64().unwrap_or(0)},
        });
        (StatusCode::OK, scale)
    }

    /// Stamps a new resource version on the object and tells the watches.
    fn record(&self, st: &mut State, kind: &'static str, path: &str, mut object: Value) -> Value {
        st.version += 1;
        object["metadata"]["resourceVersion"] = json!(st.version.to_string());
        if kind != "DELETED"
            && let Some(stored) = st.objects.get_mut(path)
        {
            stored["metadata"]["resourceVersion"] = json!(st.version.to_string());
        }
        let change = Change {
            version: st.version,
            kind,
            path: path.to_string(),
            object: object.clone(),
        };
        st.history.push(change.clone());
        let _ = self.changes.send(change);
        object
    }

    /// Puts an object in the store as if a user (or a kubelet) had created or replaced it.
    pub fn insert(&self, path: &str, value: Value) {
        let mut st = self.state.lock().unwrap();
        let kind = if st.objects.contains_key(path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(path.to_string(), value.clone());
        self.record(&mut st, kind, path, value);
    }

    pub fn remove(&self, path: &str) -> Option<Value> {
        let mut st = self.state.lock().unwrap();
        let v = st.objects.remove(path)?;
        self.record(&mut st, "DELETED", path, v.clone());
        Some(v)
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Edits an object in place (the autoscaler scaling, the kubelet reporting readiness).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        let obj = st
            .objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("no {path}"));
        f(obj);
        let obj = obj.clone();
        self.record(&mut st, "MODIFIED", path, obj);
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// A feed of every change from now on (the tests' kubelet reacts to Deployment scaling).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
