//! The request path every protocol shares: admission, validation, batching, output selection.

use std::sync::Arc;
use std::time::Duration;

use siesta_models::ModelConfig;

use crate::error::{Result, ServeError};
use crate::handle::{Admission, ModelHandle};
use crate::idle::ServerLifecycle;
use crate::protocol::{
    InferRequest, InferResponse, check_requested_outputs, select_outputs, validate_inputs,
};
use crate::registry::ModelRegistry;
use crate::worker::Timing;

pub const SERVED_VERSION: &str = "1";

#[derive(Clone)]
pub struct InferService {
    pub registry: Arc<ModelRegistry>,
    pub lifecycle: Arc<ServerLifecycle>,
    pub request_timeout: Duration,
    /// Which replica this server is, for logs and spans (`--replica-id`).
    pub replica: Arc<str>,
}

impl InferService {
    /// The ready model `name` (at `version`, when one is named).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelHandle>> {
        let handle = self.registry.get(name)?;
        check_version(name, version)?;
        Ok(handle)
    }

    /// Takes a slot in the model's queue, or answers 429 at once. REST handlers admit before
    /// they read a body: an overloaded replica refuses a 64 MiB request without reading it.
    pub fn admit(&self, name: &str, version: Option<&str>) -> Result<Admitted> {
        // No draining check here: a request the server accepted before SIGTERM is finished,
        // and graceful shutdown stops new connections.
        let handle = self.model(name, version)?;
        let admission = handle.admit()?;
        Ok(Admitted {
            handle,
            admission,
            request_timeout: self.request_timeout,
        })
    }

    /// Admits and runs one request whose body is already read (gRPC: tonic reads the message).
    pub async fn infer(
        &self,
        name: &str,
        version: Option<&str>,
        parse: impl FnOnce(&ModelConfig) -> Result<InferRequest>,
    ) -> Result<(InferResponse, Timing)> {
        self.admit(name, version)?.infer(parse).await
    }
}

/// A request holding a slot in its model's queue.
pub struct Admitted {
    handle: Arc<ModelHandle>,
    admission: Admission,
    request_timeout: Duration,
}

impl Admitted {
    /// Runs the request through the model's queue. `parse` turns the protocol body into an
    /// [`InferRequest`] once the model's metadata is known.
    pub async fn infer(
        self,
        parse: impl FnOnce(&ModelConfig) -> Result<InferRequest>,
    ) -> Result<(InferResponse, Timing)> {
        let Admitted {
            handle,
            admission,
            request_timeout,
        } = self;
        let request = parse(&handle.config)?;
        check_requested_outputs(&handle.config, &request.outputs)?;
        let (inputs, rows) = validate_inputs(&handle.config, request.inputs)?;
        let out = tokio::time::timeout(request_timeout, handle.infer(&admission, inputs, rows))
            .await
            .map_err(|_| ServeError::Timeout(request_timeout.as_millis() as u64))??;
        let outputs = select_outputs(
            &request.outputs,
            request.binary_output_default,
            out.outputs,
            &handle.config.labels,
        )?;
        Ok((
            InferResponse {
                config: handle.config.clone(),
                model_name: handle.config.name.clone(),
                model_version: SERVED_VERSION.into(),
                id: request.id,
                outputs,
            },
            out.timing,
        ))
    }
}

pub fn check_version(name: &str, version: Option<&str>) -> Result<()> {
    match version {
        None | Some("") | Some(SERVED_VERSION) => Ok(()),
        Some(v) => Err(ServeError::VersionNotFound {
            name: name.to_string(),
            version: v.to_string(),
        }),
    }
}
