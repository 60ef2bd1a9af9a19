"""The Python-backend model Triton runs (`TritonPythonModel`): this package's `Predictor`.

It runs inside Triton's Python-backend stub, in the serve environment (`make serve-env`),
and imports numpy, the runtime and `triton_python_backend_utils` only (never TensorFlow).
The model repository's `1/model.py` re-exports the class (`serve.repository`).

config.pbtxt parameters (strings): `artifact` (absolute path of the file), `runtime` (a
registered runtime's name or "auto"), `threads` (intra-op threads; "0": the library's
default), `tile`, `overlap` (the Predictor's sliding window).
"""

from __future__ import annotations

import dataclasses
import json

from retinaunet_deploy.serve import protocol


class TritonPythonModel:
    """Triton's Python-backend interface: initialize, execute (a list of requests that the
    dynamic batcher grouped), finalize."""

    def initialize(self, args: dict) -> None:
        from retinaunet_deploy.runtime.predictor import Predictor

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        threads = int(parameters.get("threads", "0")) or None
        self.predictor = Predictor.from_artifact(
            parameters["artifact"], threads=threads, runtime=parameters.get("runtime", "auto"),
            batch_size=int(config.get("max_batch_size") or 8),
            tile=int(parameters["tile"]), overlap=float(parameters["overlap"]))
        if parameters.get("score_threshold"):   # as `predict --score-threshold`
            self.predictor.detection_config = dataclasses.replace(
                self.predictor.detection_config,
                score_threshold=float(parameters["score_threshold"]))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        images = [pb_utils.get_input_tensor_by_name(r, protocol.INPUT).as_numpy()
                  for r in requests]
        # A request outside the input contract is the client's error (HTTP 400, gRPC
        # INVALID_ARGUMENT); anything else failing is the server's (500, INTERNAL).
        code = pb_utils.TritonError.INVALID_ARG
        try:
            results = protocol.answer(self.predictor, images)
        except Exception as error:  # noqa: BLE001 - every request gets an answer, the server lives
            results = [f"{type(error).__name__}: {error}"] * len(requests)
            code = pb_utils.TritonError.INTERNAL
        responses = []
        for result in results:
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(result, code)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value)
                                    for name, value in result.items()]))
        return responses

    def finalize(self) -> None:
        self.predictor.close()
