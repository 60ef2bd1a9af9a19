"""The TensorRT backend: run a ``.plan`` engine on the GPU with CUDA Python.

Same contract as the other backends: (N, H, W, C) float32 raw pixels in, a dict
of float32 outputs by name out. Buffers are allocated once for the engine's
largest batch (pinned host memory, so copies are asynchronous DMA); every call
sets the input shape, copies in, runs `execute_async_v3` on the backend's own
CUDA stream, copies out and synchronises before returning.

Before deserialising, the engine's manifest record is checked against this
machine's TensorRT version and GPU (`check_engine_target`): a mismatched engine
is refused with the reason instead of failing inside TensorRT.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import numpy as np

from retinaunet_deploy.card import ModelCard, load_card
from retinaunet_deploy.errors import ArtifactError, InputError
from retinaunet_deploy.runtime.base import BackendBase, Limits


class _Buffer:
    """One I/O tensor: pinned host memory (as a numpy view) and device memory."""

    def __init__(self, runtime, call, dtype: np.dtype, count: int):
        self.dtype = np.dtype(dtype)
        self.nbytes = count * self.dtype.itemsize
        self.host_ptr = call(runtime.cudaMallocHost(self.nbytes))
        self.device_ptr = call(runtime.cudaMalloc(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=self.dtype, count=count)


class TensorRTBackend(BackendBase):
    """A `.plan` engine on CUDA device `device`.

    `limits` come from its optimisation profile (sizes min_size..max_size, tuned for
    opt_batch); `threads` is None (GPU inference: no host thread count applies).
    """

    def __init__(self, path: Path, threads: int | None = None, device: int = 0):
        from retinaunet_deploy import remake
        from retinaunet_deploy.runtime.cuda import (
            check_engine_target,
            cuda_call,
            cudart,
            device_target,
            engine_record,
            recording_logger,
            require_tensorrt,
        )

        del threads  # GPU inference: the host thread count does not apply (threads: None)
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} not found; {remake.missing(self.path)}")
        record = engine_record(self.path)  # a replaced or unrecorded engine: refused first
        trt = require_tensorrt()
        self._rt, self._call = cudart(), cuda_call
        self._call(self._rt.cudaSetDevice(device))
        check_engine_target(self.path, device_target(device), record)
        self._logger = recording_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {self.path}: "
                                f"{self._logger.tail(5)}; "
                                f"{remake.remedy(self.path, 'rebuild it on this machine')}")
        self.context = self.engine.create_execution_context()
        self.stream = self._call(self._rt.cudaStreamCreate())

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names
                            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        if len(self.input_names) != 1:
            raise ArtifactError(f"{self.path} has inputs {self.input_names}; expected one "
                                f"('image'): it was not built from a RetinaUNet ONNX file of "
                                f"this toolkit; {remake.remedy(self.path, 'rebuild it')}")
        self.input_name = self.input_names[0]
        min_shape, opt_shape, max_shape = self.engine.get_tensor_profile_shape(
            self.input_name, 0)
        # `run` cuts larger batches than max_batch into chunks and pads smaller ones up
        # to min_batch; `limits` tell the Predictor the rest.
        self.min_batch, self.opt_batch, self.max_batch = (
            int(min_shape[0]), int(opt_shape[0]), int(max_shape[0]))
        self.min_size = int(max(min_shape[1], min_shape[2]))
        self.max_size = int(min(max_shape[1], max_shape[2]))
        self.channels = int(max_shape[3])
        # Size every buffer for the largest batch: set that shape once to learn outputs'.
        self.context.set_input_shape(self.input_name, tuple(max_shape))
        self._buffers = {}
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            self._buffers[name] = _Buffer(self._rt, self._call, dtype, int(np.prod(shape)))

    @property
    def limits(self) -> Limits:
        """The optimisation profile: the Predictor pads images up to min_size, tiles beyond
        max_size and feeds opt_batch images per call (what TensorRT tuned kernels for)."""
        return Limits(min_size=self.min_size, max_size=self.max_size,
                      preferred_batch=self.opt_batch)

    def card(self) -> ModelCard | None:
        """The run's model card, beside the engine."""
        from retinaunet_deploy.names import CARD

        return load_card(self.path.parent) if (self.path.parent / CARD).exists() else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Any batch size: chunks of at most max_batch, each padded up to min_batch."""
        self._check_open()
        h, w, c = batch.shape[1:]
        if c != self.channels or not (self.min_size <= min(h, w) and max(h, w) <= self.max_size):
            raise InputError(f"{self.path} takes (N, H, W, {self.channels}) with H and W in "
                             f"{self.min_size}..{self.max_size} (its optimisation profile), got "
                             f"{batch.shape}; {self._rebuild_for(h, w)}")
        chunks = []
        for start in range(0, len(batch), self.max_batch):
            chunk = batch[start:start + self.max_batch]
            count = len(chunk)
            if count < self.min_batch:  # the profile starts here: repeat the last image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - count, 0)])
            outputs = self._execute(chunk)
            chunks.append({name: value[:count] for name, value in outputs.items()})
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def _rebuild_for(self, height: int, width: int) -> str:
        """The remedy for an input outside the profile: the build-engine command with
        sizes that take it."""
        from retinaunet_deploy import remake

        command = remake.command_for(self.path) or "retinaunet-deploy build-engine RUN"
        return (f"rebuild it with '{command} --min-size {min(self.min_size, height, width)} "
                f"--max-size {max(self.max_size, height, width)}'")

    def _execute(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One call of the engine on a batch its profile takes."""
        rt, call = self._rt, self._call
        to_device = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not self.context.set_input_shape(self.input_name, batch.shape):
            raise InputError(f"{self.path} refused input shape {batch.shape} (its profile: "
                             f"batch {self.min_batch}..{self.max_batch}, H and W "
                             f"{self.min_size}..{self.max_size}); "
                             f"{self._rebuild_for(*batch.shape[1:3])}")
        source = self._buffers[self.input_name]
        flat = np.ascontiguousarray(batch, dtype=source.dtype).ravel()
        source.host[:flat.size] = flat
        call(rt.cudaMemcpyAsync(source.device_ptr, source.host_ptr, flat.nbytes, to_device,
                                self.stream))
        for name, buffer in self._buffers.items():
            self.context.set_tensor_address(name, int(buffer.device_ptr))
        if not self.context.execute_async_v3(int(self.stream)):
            from retinaunet_deploy import remake

            raise ArtifactError(f"TensorRT failed to run {self.path}: {self._logger.tail(5)}; "
                                f"check that the GPU has free memory (nvidia-smi), or "
                                f"{remake.remedy(self.path, 'rebuild it on this machine')}")
        shapes = {}
        for name in self.output_names:
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            buffer = self._buffers[name]
            nbytes = int(np.prod(shapes[name])) * buffer.dtype.itemsize
            call(rt.cudaMemcpyAsync(buffer.host_ptr, buffer.device_ptr, nbytes, to_host,
                                    self.stream))
        call(rt.cudaStreamSynchronize(self.stream))  # the clock and the caller see finished work
        return {name: self._buffers[name].host[:int(np.prod(shape))].reshape(shape)
                .astype(np.float32, copy=True) for name, shape in shapes.items()}

    def _release(self) -> None:
        """Free device and pinned memory, the stream, the context and the engine (also
        done at garbage collection)."""
        buffers, self._buffers = getattr(self, "_buffers", {}), {}
        for buffer in buffers.values():
            self._rt.cudaFree(buffer.device_ptr)
            self._rt.cudaFreeHost(buffer.host_ptr)
        if getattr(self, "stream", None) is not None:
            self._rt.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = self._runtime = None

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing to report to
            self.close()
