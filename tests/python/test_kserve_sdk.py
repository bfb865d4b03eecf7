"""KServe's own Python SDK (REST V1/V2 and gRPC) against the real server, unchanged."""
import asyncio

import numpy as np
from conftest import held_out_digits


def batch_of(n):
    digits = held_out_digits()[:n]
    x = np.stack([img for img, _ in digits]).reshape(n, 1, 28, 28).astype(np.float32)
    return x, np.array([label for _, label in digits])


def test_kserve_sdk_rest_v1_and_v2(siesta):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    x, labels = batch_of(4)

    async def run():
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        base = f"http://{siesta.http}"
        assert await v2.is_server_ready(base)
        assert await v2.is_model_ready(base, "mnist")
        inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        res = await v2.infer(base, InferRequest(model_name="mnist", infer_inputs=[inp]), model_name="mnist")
        out = {o.name: o for o in res.outputs}
        assert list(out["class"].as_numpy()) == list(labels)
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        pred = await v1.infer(base, {"instances": x.tolist()}, model_name="mnist")
        assert [p["class"] for p in pred["predictions"]] == list(labels)
        await v1.close()
        await v2.close()

    asyncio.run(run())


def test_kserve_sdk_grpc(siesta):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    x, labels = batch_of(4)

    async def run():
        client = InferenceGRPCClient(siesta.grpc, retries=2)
        inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        res = await client.infer(InferRequest(model_name="mnist", infer_inputs=[inp]))
        out = {o.name: o for o in res.outputs}
        assert list(out["class"].as_numpy()) == list(labels)
        await client.close()

    asyncio.run(run())


