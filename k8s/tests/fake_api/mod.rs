//! A FAKE Kubernetes API server, in process (no API server can be installed on the machines
//! these tests run on). It is stateful: it keeps the objects the controller applies, by path,
//! merges server-side-apply patches into them as the API server would for a single field
//! manager (keeping `spec.replicas` and `status`, which other actors own), answers GET, DELETE
//! and status patches, and counts requests. Tests play the autoscaler and the kubelet by
//! editing objects in its store. Watches are not served: the tests drive `reconcile` directly.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Value>,
    pub requests: Vec<(Method, String)>,
    next_uid: u64,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
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
                let (status, value) = api.handle(&parts.method, parts.uri.path(), &bytes);
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(value.to_string())))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "default")
    }

    fn handle(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        let mut st = self.state.lock().unwrap();
        st.requests.push((method.clone(), path.to_string()));
        let (object_path, status_sub) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        match *method {
            Method::GET => match st.objects.get(&object_path) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => not_found(path),
            },
            Method::DELETE => match st.objects.remove(&object_path) {
                Some(v) => (StatusCode::OK, v),
                None => not_found(path),
            },
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(body).expect("patch body is JSON");
                if status_sub {
                    let Some(obj) = st.objects.get_mut(&object_path) else {
                        return not_found(path);
                    };
                    obj["status"] = patch["status"].clone();
                    return (StatusCode::OK, obj.clone());
                }
                st.next_uid += 1;
                let uid = format!("uid-{}", st.next_uid);
                let is_deployment = object_path.contains("/deployments/");
                let obj = st.objects.entry(object_path).or_insert_with(|| {
                    let mut v = json!({"metadata": {"uid": uid, "generation": 1}});
                    if is_deployment {
                        // The API server's default for a Deployment applied without replicas.
                        v["spec"] = json!({"replicas": 1});
                        v["status"] = json!({"replicas": 0});
                    }
                    v
                });
                merge(obj, &patch);
                (StatusCode::OK, obj.clone())
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"kind": "Status", "code": 405}),
            ),
        }
    }

    /// Puts an object in the store as if a user had applied it.
    pub fn insert(&self, path: &str, value: Value) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(path.to_string(), value);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Edits an object in place (the autoscaler scaling, the kubelet reporting readiness).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        f(st.objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("no {path}")));
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }
}
