// The OpenVINO backend: an ONNX file of the toolkit (model.onnx, the Q/DQ model.int8.onnx,
// or an end-to-end *.e2e.onnx) compiled for the CPU, as retinaunet_deploy/runtime/
// openvino.py compiles it: the f32 inference precision hint (OpenVINO's CPU plugin
// otherwise runs float files in bf16 on CPUs with AVX512_BF16 or AMX, a different variant
// with its own gate; a Q/DQ file still runs its quantised convolutions in int8), the
// LATENCY performance hint, and the thread count asked for (0: OpenVINO's default).
#pragma once

#include <openvino/openvino.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "predict.hpp"

namespace retinaunet {

// An OpenVINO exception as one line: its message lines without the "Exception from
// src/...cpp:NN:" location lines, joined, at most `limit` characters.
inline std::string openvino_reason(const std::string& text, size_t limit = 240) {
    std::string reason, line;
    std::istringstream lines(text);
    while (std::getline(lines, line)) {
        if (line.empty() || line.rfind("Exception from ", 0) == 0) continue;
        while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
        reason += (reason.empty() ? "" : " ") + line;
    }
    if (reason.empty()) reason = "no reason given";
    return reason.size() > limit ? reason.substr(0, limit) + "..." : reason;
}

// Silences this process's stderr while alive: the ONNX parser inside OpenVINO logs
// through absl to stderr on a file it cannot parse; the app reports that in its own line.
class QuietStderr {
public:
    QuietStderr() {
        std::fflush(stderr);
        saved_ = dup(2);
        const int null = open("/dev/null", O_WRONLY);
        if (saved_ >= 0 && null >= 0) dup2(null, 2);
        if (null >= 0) close(null);
    }
    ~QuietStderr() {
        std::fflush(stderr);
        if (saved_ >= 0) {
            dup2(saved_, 2);
            close(saved_);
        }
    }
    QuietStderr(const QuietStderr&) = delete;
    QuietStderr& operator=(const QuietStderr&) = delete;

private:
    int saved_ = -1;
};

class OpenVINOBackend : public Backend {
public:
    OpenVINOBackend(const std::string& model_path, int threads) {
        path = model_path;
        if (!std::ifstream(model_path))
            throw std::runtime_error(model_path + ": cannot open (no such file, or not readable)");
        std::shared_ptr<ov::Model> model;
        std::string failure;
        {
            QuietStderr quiet;
            try {
                model = core_.read_model(model_path);
            } catch (const std::exception& error) {
                failure = openvino_reason(error.what());
            }
        }
        if (!model)
            throw std::runtime_error(model_path + ": OpenVINO cannot read it as ONNX (" + failure +
                                     "); use a file written by retinaunet-deploy export or "
                                     "calibrate");
        if (model->inputs().size() != 1)
            throw std::runtime_error(model_path + " has " + std::to_string(model->inputs().size()) +
                                     " inputs; expected one ('image'): not a RetinaUNet file of "
                                     "this toolkit");
        const ov::PartialShape shape = model->input().get_partial_shape();
        if (shape.rank().is_static() && shape.rank().get_length() == 4 && shape[3].is_static())
            channels = static_cast<int>(shape[3].get_length());
        // The card export puts in the file's metadata (the Python backends read it too).
        if (model->has_rt_info("framework", "model_card"))
            embedded_card = model->get_rt_info<std::string>("framework", "model_card");
        ov::AnyMap config{ov::hint::inference_precision(ov::element::f32),
                          ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
        if (threads > 0) config.emplace(ov::inference_num_threads(threads));
        try {
            compiled_ = core_.compile_model(model, "CPU", config);
        } catch (const std::exception& error) {
            throw std::runtime_error("OpenVINO cannot compile " + model_path + " (" +
                                     openvino_reason(error.what()) + ")");
        }
        request_ = compiled_.create_infer_request();
        this->threads = compiled_.get_property(ov::inference_num_threads);
    }

    std::vector<std::string> output_names() const override {
        std::vector<std::string> names;
        for (const auto& output : compiled_.outputs()) names.push_back(output.get_any_name());
        return names;
    }

    Outputs run(const float* batch, int n, int height, int width, int c) override {
        ov::Tensor input(ov::element::f32,
                         ov::Shape{static_cast<size_t>(n), static_cast<size_t>(height),
                                   static_cast<size_t>(width), static_cast<size_t>(c)},
                         const_cast<float*>(batch));
        request_.set_input_tensor(input);
        request_.infer();
        Outputs outputs;
        for (const auto& port : compiled_.outputs()) {
            const ov::Tensor tensor = request_.get_tensor(port);
            Tensor& out = outputs[port.get_any_name()];
            for (size_t d : tensor.get_shape()) out.shape.push_back(static_cast<int64_t>(d));
            const size_t count = tensor.get_size();
            out.values.resize(count);
            const ov::element::Type type = tensor.get_element_type();
            if (type == ov::element::f32) {
                const float* data = tensor.data<const float>();
                std::copy(data, data + count, out.values.begin());
            } else if (type == ov::element::i32) {
                const int32_t* data = tensor.data<const int32_t>();
                std::copy(data, data + count, out.values.begin());
            } else if (type == ov::element::i64) {
                const int64_t* data = tensor.data<const int64_t>();
                for (size_t i = 0; i < count; ++i) out.values[i] = static_cast<float>(data[i]);
            } else if (type == ov::element::u8) {
                const uint8_t* data = tensor.data<const uint8_t>();
                std::copy(data, data + count, out.values.begin());
            } else {
                throw std::runtime_error(path + ": output " + port.get_any_name() + " is " +
                                         type.get_type_name() + "; the contract's outputs are "
                                         "float32, int32 or uint8");
            }
        }
        return outputs;
    }

    int threads = 0;  // INFERENCE_NUM_THREADS read back from the compiled model

private:
    ov::Core core_;
    ov::CompiledModel compiled_;
    ov::InferRequest request_;
};

}  // namespace retinaunet
