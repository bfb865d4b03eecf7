//! `inference.GRPCInferenceService` on its own port: the V2 gRPC API plus the Triton calls its
//! clients make (model config, statistics, repository).

use std::collections::HashMap;

use siesta_models::{DataType, Tensor};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::ServeError;
use crate::infer::{InferService, SERVED_VERSION};
use crate::metrics;
use crate::protocol::{InferRequest, RequestedOutput, classification, parse_input_header};

pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::model_infer_request::InferInputTensor;

pub fn service(
    svc: InferService,
    max_message_bytes: usize,
) -> GrpcInferenceServiceServer<GrpcService> {
    GrpcInferenceServiceServer::new(GrpcService { svc })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

pub struct GrpcService {
    svc: InferService,
}

type GrpcResult<T> = Result<Response<T>, Status>;

fn invalid(msg: String) -> Status {
    ServeError::InvalidInput(msg).to_grpc()
}

/// Typed `contents` to little-endian bytes, range-checked for the narrow integer types.
fn contents_to_bytes(input: &InferInputTensor, dt: DataType) -> Result<Vec<u8>, Status> {
    let c = input.contents.clone().unwrap_or_default();
    let name = &input.name;
    macro_rules! narrow {
        ($src:expr, $t:ty) => {
            $src.iter()
                .map(|&v| {
                    <$t>::try_from(v)
                        .map(|x| x.to_le_bytes().to_vec())
                        .map_err(|_| invalid(format!("input '{name}': {v} does not fit {dt}")))
                })
                .collect::<Result<Vec<_>, _>>()?
                .concat()
        };
    }
    macro_rules! le {
        ($src:expr) => {
            $src.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
    }
    Ok(match dt {
        DataType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::I8 => narrow!(c.int_contents, i8),
        DataType::I16 => narrow!(c.int_contents, i16),
        DataType::I32 => le!(c.int_contents),
        DataType::I64 => le!(c.int64_contents),
        DataType::U8 => narrow!(c.uint_contents, u8),
        DataType::U16 => narrow!(c.uint_contents, u16),
        DataType::U32 => le!(c.uint_contents),
        DataType::U64 => le!(c.uint64_contents),
        DataType::F32 => le!(c.fp32_contents),
        DataType::F64 => le!(c.fp64_contents),
        DataType::Bytes => c
            .bytes_contents
            .iter()
            .flat_map(|b| {
                (b.len() as u32)
                    .to_le_bytes()
                    .into_iter()
                    .chain(b.iter().copied())
            })
            .collect(),
        DataType::F16 | DataType::BF16 => {
            return Err(invalid(format!(
                "input '{name}': {dt} must be sent in raw_input_contents"
            )));
        }
    })
}

pub(crate) fn decode_request(req: pb::ModelInferRequest) -> Result<InferRequest, Status> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(invalid(format!(
            "raw_input_contents has {} entries for {} inputs",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raw_contents = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        let (dt, shape) = parse_input_header(&input.name, &input.datatype, &input.shape)
            .map_err(|e| e.to_grpc())?;
        let data = match raw_contents.next() {
            Some(bytes) => bytes,
            None => contents_to_bytes(input, dt)?,
        };
        inputs.push(Tensor::new(&input.name, dt, shape, data).map_err(|e| invalid(e.to_string()))?);
    }
    Ok(InferRequest {
        id: (!req.id.is_empty()).then_some(req.id),
        inputs,
        outputs: req
            .outputs
            .into_iter()
            .map(requested_output)
            .collect::<Result<_, Status>>()?,
        binary_output_default: true,
    })
}

fn requested_output(
    o: pb::model_infer_request::InferRequestedOutputTensor,
) -> Result<RequestedOutput, Status> {
    use pb::infer_parameter::ParameterChoice;
    let classification = match o
        .parameters
        .get(classification::PARAMETER)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(k)) => classification::count_from_i64(&o.name, *k),
        Some(ParameterChoice::Uint64Param(k)) => {
            classification::count_from_i64(&o.name, i64::try_from(*k).unwrap_or(i64::MAX))
        }
        Some(other) => Err(ServeError::InvalidInput(format!(
            "output '{}': parameter '{}' must be an integer, got {other:?}",
            o.name,
            classification::PARAMETER
        ))),
    }
    .map_err(|e| e.to_grpc())?;
    Ok(RequestedOutput {
        name: o.name,
        binary: None,
        classification,
    })
}

fn tensor_meta(
    cfg: &siesta_models::ModelConfig,
    specs: &[siesta_models::TensorSpec],
) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().into(),
            shape: cfg.published_shape(s),
        })
        .collect()
}

fn config_datatype(dt: DataType) -> i32 {
    pb::DataType::from_str_name(dt.triton_config_name()).map_or(0, |d| d as i32)
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> GrpcResult<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse {
            live: self.svc.registry.live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> GrpcResult<pb::ServerReadyResponse> {
        let ready = !self.svc.lifecycle.is_draining() && self.svc.registry.all_ready();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> GrpcResult<pb::ModelReadyResponse> {
        let r = req.into_inner();
        let ready = match self.svc.model(&r.name, Some(&r.version)) {
            Ok(h) => h.status.state().serves() && !self.svc.lifecycle.is_draining(),
            Err(ServeError::ModelNotReady(_)) => false,
            Err(e) => return Err(e.to_grpc()),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> GrpcResult<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "siesta".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![
                "binary_tensor_data".into(),
                "model_repository".into(),
                "model_configuration".into(),
            ],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> GrpcResult<pb::ModelMetadataResponse> {
        let r = req.into_inner();
        let h = self
            .svc
            .model(&r.name, Some(&r.version))
            .map_err(|e| e.to_grpc())?;
        let cfg = &h.config;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: cfg.name.clone(),
            versions: vec![SERVED_VERSION.into()],
            platform: crate::http::PLATFORM.into(),
            inputs: tensor_meta(cfg, &cfg.inputs),
            outputs: tensor_meta(cfg, &cfg.outputs),
        }))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> GrpcResult<pb::ModelConfigResponse> {
        let r = req.into_inner();
        let h = self
            .svc
            .model(&r.name, Some(&r.version))
            .map_err(|e| e.to_grpc())?;
        let cfg = &h.config;
        let dims = |s: &siesta_models::TensorSpec| {
            if s.shape.is_empty() {
                vec![1]
            } else {
                s.shape.clone()
            }
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(pb::ModelConfig {
                name: cfg.name.clone(),
                platform: crate::http::PLATFORM.into(),
                backend: "siesta".into(),
                max_batch_size: i32::try_from(cfg.max_batch_size).unwrap_or(i32::MAX),
                input: cfg
                    .inputs
                    .iter()
                    .map(|s| pb::ModelInput {
                        name: s.name.clone(),
                        data_type: config_datatype(s.datatype),
                        dims: dims(s),
                    })
                    .collect(),
                output: cfg
                    .outputs
                    .iter()
                    .map(|s| pb::ModelOutput {
                        name: s.name.clone(),
                        data_type: config_datatype(s.datatype),
                        dims: dims(s),
                    })
                    .collect(),
                dynamic_batching: (cfg.max_batch_size > 0).then(|| pb::ModelDynamicBatching {
                    preferred_batch_size: Vec::new(),
                    max_queue_delay_microseconds: cfg.max_queue_delay_us,
                }),
            }),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> GrpcResult<pb::ModelStatisticsResponse> {
        let r = req.into_inner();
        let handles = if r.name.is_empty() {
            self.svc.registry.handles()
        } else {
            vec![
                self.svc
                    .model(&r.name, Some(&r.version))
                    .map_err(|e| e.to_grpc())?,
            ]
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: handles
                .iter()
                .map(|h| pb::ModelStatistics {
                    name: h.name().to_string(),
                    version: SERVED_VERSION.into(),
                    ..Default::default()
                })
                .collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> GrpcResult<pb::ModelInferResponse> {
        let started = Instant::now();
        let r = req.into_inner();
        let (name, version) = (r.model_name.clone(), r.model_version.clone());
        let span = tracing::info_span!("infer", model = %name, replica = %self.svc.replica, protocol = "grpc");
        let result = self
            .svc
            .infer(&name, Some(&version), move |_| {
                decode_request(r).map_err(|s| ServeError::InvalidInput(s.message().to_string()))
            })
            .instrument(span)
            .await;
        let status_code = match &result {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        };
        let label = self.svc.registry.metric_label(&name);
        metrics::request(label, "grpc", status_code, started.elapsed());
        let (resp, _timing) = result.map_err(|e| e.to_grpc())?;
        let mut outputs = Vec::with_capacity(resp.outputs.len());
        let mut raw = Vec::with_capacity(resp.outputs.len());
        for (t, _) in resp.outputs {
            outputs.push(pb::model_infer_response::InferOutputTensor {
                name: t.name,
                datatype: t.datatype.as_str().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            });
            raw.push(t.data);
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: resp.model_name,
            model_version: resp.model_version,
            id: resp.id.unwrap_or_default(),
            parameters: HashMap::new(),
            outputs,
            raw_output_contents: raw,
        }))
    }

    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> GrpcResult<pb::RepositoryIndexResponse> {
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: self
                .svc
                .registry
                .index()
                .into_iter()
                .map(|e| pb::repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state.as_str().into(),
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> GrpcResult<pb::RepositoryModelLoadResponse> {
        self.svc
            .registry
            .request_load(&req.into_inner().model_name)
            .await
            .map_err(|e| e.to_grpc())?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> GrpcResult<pb::RepositoryModelUnloadResponse> {
        self.svc
            .registry
            .request_unload(&req.into_inner().model_name)
            .map_err(|e| e.to_grpc())?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
