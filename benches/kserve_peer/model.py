"""The benchmark's peer: KServe's own Python model server (kserve.Model) running Siesta's shipped
MNIST CNN in PyTorch on the CPU, with the same weights (models/mnist/model.safetensors), answering
V1 and V2 (JSON and binary tensors) like Siesta does."""
import argparse
import pathlib
import uuid

import kserve
import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse
from safetensors.torch import load_file

from net import Net

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Mnist(kserve.Model):
    def __init__(self, name, weights):
        super().__init__(name)
        self.weights = weights
        self.net = None

    def load(self):
        self.net = Net()
        self.net.load_state_dict(load_file(self.weights))
        self.net.eval()
        self.ready = True
        return self.ready

    def run(self, x):
        with torch.inference_mode():
            probs = self.net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        return probs, probs.argmax(axis=1).astype(np.int64)

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            probs, classes = self.run(payload.inputs[0].as_numpy())
            outputs = []
            for name, arr, dt in (("probabilities", probs, "FP32"), ("class", classes, "INT64")):
                out = InferOutput(name=name, shape=list(arr.shape), datatype=dt)
                out.set_data_from_numpy(arr, binary_data=payload.use_binary_outputs)
                outputs.append(out)
            return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4()),
                                 use_binary_outputs=payload.use_binary_outputs)
        probs, classes = self.run(np.asarray(payload["instances"], dtype=np.float32))
        return {"predictions": [{"class": int(c), "probabilities": p.tolist()} for p, c in zip(probs, classes)]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--weights", default=str(ROOT / "models/mnist/model.safetensors"))
    parser.add_argument("--torch_threads", type=int, default=1)
    args, _ = parser.parse_known_args()
    # One intra-op thread: with hey on the same 2 cores, more threads spin against each other
    # (see shared/reference/build-notes.md).
    torch.set_num_threads(args.torch_threads)
    model = Mnist(args.model_name, args.weights)
    model.load()
    kserve.ModelServer().start([model])
