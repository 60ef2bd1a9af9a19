// The TensorRT backend: a serialised engine (.plan) from `retinaunet-deploy build-engine`,
// run as retinaunet_deploy/runtime/tensorrt.py runs it. The optimisation profile bounds
// what it takes: images are padded up to its smallest side and tiled beyond its largest
// (`Backend::min_size`, `max_size`), batches are cut to its largest batch and padded up
// to its smallest by repeating the last image, and its opt batch is the tile batch.
// Written to the TensorRT 10/11 name-based API: deserializeCudaEngine, setInputShape,
// setTensorAddress, enqueueV3. The card is the model_card.json beside the engine.
#pragma once

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "predict.hpp"

namespace retinaunet {

class TensorRTLogger : public nvinfer1::ILogger {
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kERROR) std::cerr << "[TensorRT] " << message << "\n";
    }
};

inline void cuda_check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

class TensorRTBackend : public Backend {
public:
    explicit TensorRTBackend(const std::string& engine_path) {
        path = engine_path;
        std::ifstream in(engine_path, std::ios::binary | std::ios::ate);
        if (!in) throw std::runtime_error(engine_path + ": cannot open (no such file, or not readable)");
        std::vector<char> blob(static_cast<size_t>(in.tellg()));
        in.seekg(0);
        in.read(blob.data(), static_cast<std::streamsize>(blob.size()));
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine_)
            throw std::runtime_error(engine_path + ": cannot deserialise; was it built with this "
                                     "TensorRT version for this GPU? Rebuild it with "
                                     "retinaunet-deploy build-engine");
        context_.reset(engine_->createExecutionContext());
        for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
            const char* name = engine_->getIOTensorName(i);
            if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT)
                inputs_.push_back(name);
            else
                outputs_.push_back(name);
        }
        if (inputs_.size() != 1)
            throw std::runtime_error(engine_path + " has " + std::to_string(inputs_.size()) +
                                     " inputs; expected one ('image'): not built from a "
                                     "RetinaUNet ONNX file of this toolkit");
        const char* input = inputs_[0].c_str();
        const nvinfer1::Dims low =
            engine_->getProfileShape(input, 0, nvinfer1::OptProfileSelector::kMIN);
        const nvinfer1::Dims opt =
            engine_->getProfileShape(input, 0, nvinfer1::OptProfileSelector::kOPT);
        const nvinfer1::Dims high =
            engine_->getProfileShape(input, 0, nvinfer1::OptProfileSelector::kMAX);
        min_batch_ = static_cast<int>(low.d[0]);
        max_batch_ = static_cast<int>(high.d[0]);
        preferred_batch = static_cast<int>(opt.d[0]);
        min_size = static_cast<int>(std::max(low.d[1], low.d[2]));
        max_size = static_cast<int>(std::min(high.d[1], high.d[2]));
        channels = static_cast<int>(high.d[3]);
        cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    }

    ~TensorRTBackend() override {
        for (auto& [name, pointer] : device_) cudaFree(pointer);
        if (stream_) cudaStreamDestroy(stream_);
    }

    std::vector<std::string> output_names() const override { return outputs_; }

    Outputs run(const float* batch, int n, int height, int width, int c) override {
        if (c != channels || std::min(height, width) < min_size || std::max(height, width) > max_size)
            throw std::runtime_error(path + " takes (N, H, W, " + std::to_string(channels) +
                                     ") with H and W in " + std::to_string(min_size) + ".." +
                                     std::to_string(max_size) + " (its optimisation profile); "
                                     "rebuild it with build-engine --max-size");
        Outputs merged;
        const size_t image = static_cast<size_t>(height) * width * c;
        for (int start = 0; start < n; start += max_batch_) {
            const int count = std::min(max_batch_, n - start);
            const int rows = std::max(count, min_batch_);  // the profile starts at min_batch
            std::vector<float> chunk(static_cast<size_t>(rows) * image);
            for (int i = 0; i < rows; ++i)
                std::copy_n(batch + static_cast<size_t>(start + std::min(i, count - 1)) * image,
                            image, chunk.begin() + static_cast<size_t>(i) * image);
            Outputs part = execute(chunk, rows, height, width);
            for (auto& [name, tensor] : part) {
                const size_t per = tensor.values.size() / static_cast<size_t>(rows);
                Tensor& out = merged[name];
                if (out.shape.empty()) {
                    out.shape = tensor.shape;
                    out.shape[0] = 0;
                }
                out.shape[0] += count;
                out.values.insert(out.values.end(), tensor.values.begin(),
                                  tensor.values.begin() + static_cast<std::ptrdiff_t>(per * count));
            }
        }
        return merged;
    }

private:
    TensorRTLogger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    std::vector<std::string> inputs_, outputs_;
    int min_batch_ = 1, max_batch_ = 1;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, void*> device_;
    std::map<std::string, size_t> capacity_;

    static size_t element_size(nvinfer1::DataType type) {
        switch (type) {
            case nvinfer1::DataType::kFLOAT:
            case nvinfer1::DataType::kINT32: return 4;
            case nvinfer1::DataType::kINT64: return 8;
            case nvinfer1::DataType::kUINT8: return 1;
            default: return 0;
        }
    }

    void* buffer(const std::string& name, size_t bytes) {
        if (capacity_[name] < bytes) {
            if (device_.count(name)) cudaFree(device_[name]);
            cuda_check(cudaMalloc(&device_[name], bytes), "cudaMalloc");
            capacity_[name] = bytes;
        }
        return device_[name];
    }

    Outputs execute(const std::vector<float>& chunk, int rows, int height, int width) {
        const char* input = inputs_[0].c_str();
        if (!context_->setInputShape(input, nvinfer1::Dims4{rows, height, width, channels}))
            throw std::runtime_error(path + ": the engine refused the input shape (check its "
                                     "profile)");
        void* in = buffer(inputs_[0], chunk.size() * sizeof(float));
        context_->setTensorAddress(input, in);
        cuda_check(cudaMemcpyAsync(in, chunk.data(), chunk.size() * sizeof(float),
                                   cudaMemcpyHostToDevice, stream_), "copy in");
        std::map<std::string, std::vector<uint8_t>> host;
        Outputs outputs;
        for (const std::string& name : outputs_) {
            const nvinfer1::DataType type = engine_->getTensorDataType(name.c_str());
            if (!element_size(type))
                throw std::runtime_error(path + ": output " + name + " has a data type this app "
                                         "does not read (float32, int32, int64, uint8)");
            const nvinfer1::Dims dims = context_->getTensorShape(name.c_str());
            Tensor& out = outputs[name];
            size_t count = 1;
            for (int i = 0; i < dims.nbDims; ++i) {
                out.shape.push_back(dims.d[i]);
                count *= static_cast<size_t>(dims.d[i]);
            }
            out.values.resize(count);
            host[name].resize(count * element_size(type));
            context_->setTensorAddress(name.c_str(), buffer(name, host[name].size()));
        }
        if (!context_->enqueueV3(stream_)) throw std::runtime_error(path + ": enqueueV3 failed");
        for (const std::string& name : outputs_)
            cuda_check(cudaMemcpyAsync(host[name].data(), device_[name], host[name].size(),
                                       cudaMemcpyDeviceToHost, stream_), "copy out");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        for (const std::string& name : outputs_) {
            const nvinfer1::DataType type = engine_->getTensorDataType(name.c_str());
            std::vector<float>& values = outputs[name].values;
            const uint8_t* raw = host[name].data();
            for (size_t i = 0; i < values.size(); ++i) {
                if (type == nvinfer1::DataType::kFLOAT) {
                    float v;
                    std::memcpy(&v, raw + 4 * i, 4);
                    values[i] = v;
                } else if (type == nvinfer1::DataType::kINT32) {
                    int32_t v;
                    std::memcpy(&v, raw + 4 * i, 4);
                    values[i] = static_cast<float>(v);
                } else if (type == nvinfer1::DataType::kINT64) {
                    int64_t v;
                    std::memcpy(&v, raw + 8 * i, 8);
                    values[i] = static_cast<float>(v);
                } else {
                    values[i] = raw[i];
                }
            }
        }
        return outputs;
    }
};

}  // namespace retinaunet
