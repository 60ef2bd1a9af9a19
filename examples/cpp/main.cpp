// retinaunet_infer: run one image through a RetinaUNet TensorRT engine and write its mask.
//
//   retinaunet_infer ENGINE.plan IMAGE.pgm|IMAGE.f32 MASK.pgm [--scale S]
//
// The I/O contract is export/README.md's: input `image` (N, H, W, C) float32 raw
// pixel values (normalisation is inside the engine), output `mask` (N, H, W, K)
// float32 softmax; the class mask is the argmax over K. A .f32 input is raw
// little-endian float32 HWC of the engine's H, W, C. When the engine has detection
// heads (`cls_logits`, `box_deltas`), they are decoded with detections.hpp using the
// anchors and thresholds of model_card.json beside the engine, and printed.
//
// Written to the TensorRT 10/11 name-based API: deserializeCudaEngine,
// setInputShape, setTensorAddress, enqueueV3.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "detections.hpp"
#include "image_io.hpp"

namespace {

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << message << "\n";
    }
};

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

int64_t volume(const nvinfer1::Dims& dims) {
    int64_t v = 1;
    for (int i = 0; i < dims.nbDims; ++i) v *= dims.d[i];
    return v;
}

std::vector<char> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::vector<char> data(static_cast<size_t>(in.tellg()));
    in.seekg(0);
    in.read(data.data(), static_cast<std::streamsize>(data.size()));
    return data;
}

bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4 && argc != 6) {
        std::cerr << "usage: retinaunet_infer ENGINE.plan IMAGE.pgm|IMAGE.f32 MASK.pgm "
                     "[--scale S]\n";
        return 2;
    }
    const std::string engine_path = argv[1], image_path = argv[2], mask_path = argv[3];
    const int scale = argc == 6 ? std::stoi(argv[5]) : 1;
    Logger logger;
    try {
        const std::vector<char> blob = read_file(engine_path);
        std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
        std::unique_ptr<nvinfer1::ICudaEngine> engine(
            runtime->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine)
            throw std::runtime_error(engine_path + ": cannot deserialise; was it built with "
                                     "this TensorRT version for this GPU? Rebuild it with "
                                     "retinaunet-deploy build-engine");
        std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());

        const nvinfer1::Dims input = engine->getTensorShape("image");  // (-1, H, W, C)
        const int height = static_cast<int>(input.d[1]), width = static_cast<int>(input.d[2]),
                  channels = static_cast<int>(input.d[3]);
        const retinaunet::Image image =
            ends_with(image_path, ".f32")
                ? retinaunet::read_raw_f32(image_path, height, width, channels)
                : retinaunet::read_pgm(image_path);
        if (image.height != height || image.width != width || image.channels != channels)
            throw std::runtime_error(image_path + ": image is " + std::to_string(image.height) +
                                     "x" + std::to_string(image.width) + "x" +
                                     std::to_string(image.channels) + ", the engine takes " +
                                     std::to_string(height) + "x" + std::to_string(width) + "x" +
                                     std::to_string(channels));
        if (!context->setInputShape("image", nvinfer1::Dims4{1, height, width, channels}))
            throw std::runtime_error("the engine refused batch 1 (check its build profile)");

        cudaStream_t stream;
        check(cudaStreamCreate(&stream), "cudaStreamCreate");
        std::map<std::string, void*> device;
        std::map<std::string, std::vector<float>> host;
        for (int i = 0; i < engine->getNbIOTensors(); ++i) {
            const char* name = engine->getIOTensorName(i);
            if (engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
                throw std::runtime_error(std::string("tensor ") + name + " is not float32; "
                                         "the contract keeps every I/O tensor float32");
            const int64_t count = volume(context->getTensorShape(name));
            check(cudaMalloc(&device[name], count * sizeof(float)), "cudaMalloc");
            host[name].resize(static_cast<size_t>(count));
            context->setTensorAddress(name, device[name]);
        }
        check(cudaMemcpyAsync(device["image"], image.pixels.data(),
                              image.pixels.size() * sizeof(float), cudaMemcpyHostToDevice,
                              stream), "copy in");
        if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
        for (auto& [name, values] : host) {
            if (name == "image") continue;
            check(cudaMemcpyAsync(values.data(), device[name], values.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream), "copy out");
        }
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

        const nvinfer1::Dims mask_dims = context->getTensorShape("mask");  // (1, H, W, K)
        const int classes = static_cast<int>(mask_dims.d[3]);
        const std::vector<uint8_t> mask =
            retinaunet::argmax_mask(host["mask"].data(), height, width, classes);
        retinaunet::write_pgm(mask_path, mask, height, width, scale);
        std::vector<size_t> counts(classes, 0);
        for (uint8_t value : mask) ++counts[value];
        std::cout << "wrote " << mask_path << " (" << height << "x" << width << "); pixels per "
                  << "class:";
        for (int k = 0; k < classes; ++k) std::cout << " " << k << "=" << counts[k];
        std::cout << "\n";
        if (host.count("cls_logits")) {
            const std::string folder = engine_path.substr(0, engine_path.find_last_of('/') + 1);
            retinaunet::AnchorConfig anchor_config;
            retinaunet::DetectionConfig post;
            retinaunet::read_card(folder + "model_card.json", anchor_config, post);
            const std::vector<float> anchors =
                retinaunet::generate_anchors(anchor_config, height, width);
            const int det_classes =
                static_cast<int>(context->getTensorShape("cls_logits").d[2]);
            for (const auto& d : retinaunet::decode_detections(
                     host["cls_logits"].data(), host["box_deltas"].data(), anchors, det_classes,
                     height, width, post))
                std::cout << "detection: class " << d.cls << " score " << d.score << " box (y1 "
                          << d.y1 << ", x1 " << d.x1 << ", y2 " << d.y2 << ", x2 " << d.x2
                          << ")\n";
        }
        for (auto& [name, pointer] : device) cudaFree(pointer);
        cudaStreamDestroy(stream);
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
