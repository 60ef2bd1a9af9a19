# retinaunet-deploy: every target that needs Python depends on the venv, so
# `make demo` and `make test` work on a fresh clone with nothing installed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/retinaunet-deploy
RUN    ?= export/default
BENCH  ?= bench/default
CPP_BUILD ?= build/cpp
# An unpacked TensorRT tar for the C++ app's TensorRT backend (empty: CMake searches the
# system paths of NVIDIA's packages; pip's tensorrt wheel has no C++ headers).
TENSORRT_ROOT ?=

.PHONY: install serve-env test demo export bench cpp gpu-check clean

# The stamp is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The served model's own environment (`retinaunet-deploy serve`): Triton's Python-backend
# stub returns empty tensors under numpy 2, which TensorFlow needs in $(VENV); so the model
# runs in a venv with numpy 1.26 and the runtimes only (no TensorFlow, no copy of this
# package: the server links the checkout's). Its Python must be 3.11, the version of the
# stub Triton is given.
SERVE_PYTHON ?= python3.11
SERVE_ENV    := .serve-env
# The runtimes pinned to the versions tested in $(VENV), so served and in-process results
# agree bit for bit (their wheels run under numpy 1.26 too).
SERVE_PINS   := numpy==1.26.4 onnx==1.23.2 onnxruntime==1.31.1 openvino==2026.4.1

$(SERVE_ENV)/.installed: Makefile
	rm -rf $(SERVE_ENV)
	$(SERVE_PYTHON) -m venv $(SERVE_ENV)
	$(SERVE_ENV)/bin/python -m pip install --quiet $(SERVE_PINS)
	touch $@

serve-env: $(SERVE_ENV)/.installed

test: install serve-env
	$(BIN)/python -m pytest -q

# The main job: a trained, exported, quantised and benchmarked model on the
# embedded synthetic data.
demo: export bench

# Train the small preset on the embedded synthetic data when the run has no model
# yet (delete $(RUN)/model.keras to retrain), export it to ONNX with parity, make
# the FP16 and calibrated INT8 variants, and check them against TensorRT's rules.
export: install
	@if [ -f $(RUN)/model.keras ]; then \
		echo "$(RUN)/model.keras exists: not retraining (delete it to retrain)"; \
	else \
		$(CLI) train --data synthetic --preset small --size 128 --out $(RUN); \
	fi
	$(CLI) export $(RUN)
	$(CLI) calibrate $(RUN)
	$(CLI) check-trt $(RUN)/model.onnx $(RUN)/model.fp16.onnx $(RUN)/model.int8.onnx

# Every variant of the run, side by side against the Keras float model.
bench: install
	$(CLI) bench $(RUN) --out $(BENCH)

# The C++ app (examples/cpp/README.md) into $(CPP_BUILD): its OpenVINO backend from the
# venv's openvino wheel (headers, libraries, CMake config; found through its RPATH, no
# LD_LIBRARY_PATH), its TensorRT backend where TensorRT and CUDA are found.
cpp: install
	cmake -S examples/cpp -B $(CPP_BUILD) \
		-DOpenVINO_DIR="$$($(BIN)/python -c 'import openvino, os; print(os.path.dirname(openvino.__file__) + "/cmake")')" \
		$(if $(TENSORRT_ROOT),-DTENSORRT_ROOT=$(TENSORRT_ROOT)) $(CPP_CMAKE_FLAGS)
	cmake --build $(CPP_BUILD) -j

# On a machine with an NVIDIA GPU: the TensorRT extra, fp16 and int8 engines for the
# demo run, the C++ app on both engines against the Python Predictor (make cpp with
# TensorRT required), the GPU tests and the bench's GPU rows. Elsewhere: one line saying so.
gpu-check: install
	@$(BIN)/python -c "import sys; from retinaunet_deploy.runtime.providers import cuda_device_count; sys.exit(0 if cuda_device_count() else 'gpu-check: no NVIDIA GPU answers on this machine (the CUDA driver reports no device); run make gpu-check where one does')"
	$(BIN)/python -m pip install --quiet -e '.[tensorrt]'
	@if [ ! -f $(RUN)/model.int8.onnx ]; then $(MAKE) export; fi
	$(CLI) build-engine $(RUN) --precision fp16
	$(CLI) build-engine $(RUN) --precision int8
	$(MAKE) cpp CPP_CMAKE_FLAGS=-DREQUIRE_TENSORRT=ON
	for precision in fp16 int8; do \
		$(BIN)/python examples/cpp/compare_with_python.py $(CPP_BUILD)/retinaunet_infer \
			$(RUN)/model.$$precision.plan $(RUN) $(CPP_BUILD)/gpu-check/$$precision || exit 1; \
	done
	$(BIN)/python -m pytest -q tests/gpu
	$(CLI) bench $(RUN) --out bench/gpu --backends keras,onnxruntime,tensorrt --no-size-sweep

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
