// retinaunet_infer: run one image through a RetinaUNet TensorRT engine and write its mask.
//
//   retinaunet_infer ENGINE.plan IMAGE.pgm|IMAGE.f32 MASK.pgm [--scale S] [--shape HxWxC]
//
// The I/O contract is export/README.md's: input `image` (N, H, W, C) float32 raw
// pixel values (normalisation is inside the engine) of any H and W that are multiples
// of the stride, output `mask` (N, H, W, K) float32 softmax; the class mask is the
// argmax over K. Any image size is taken: it is padded at the bottom and right to the
// stride (and the engine profile's minimum) by mirroring the image there, run,
// and the outputs cropped back, as the Python Predictor does. (Images beyond the
// profile's maximum need the Predictor's tiling, or an engine built with a larger
// --max-size.) A .f32 input is raw little-endian float32 HWC; give its --shape. When
// the engine has detection heads (`cls_logits`, `box_deltas`), they are decoded with
// detections.hpp using the anchors and thresholds of model_card.json beside the engine
// (anchors of the padded size, boxes clipped to the image), and printed.
//
// Written to the TensorRT 10/11 name-based API: deserializeCudaEngine,
// setInputShape, setTensorAddress, enqueueV3.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
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
    if (argc < 4 || argc % 2) {
        std::cerr << "usage: retinaunet_infer ENGINE.plan IMAGE.pgm|IMAGE.f32 MASK.pgm "
                     "[--scale S] [--shape HxWxC]\n";
        return 2;
    }
    const std::string engine_path = argv[1], image_path = argv[2], mask_path = argv[3];
    Logger logger;
    try {
        int scale = 1, raw_h = 0, raw_w = 0, raw_c = 0;
        for (int i = 4; i < argc; i += 2) {
            const std::string flag = argv[i], value = argv[i + 1];
            if (flag == "--scale") {
                scale = std::stoi(value);
            } else if (flag == "--shape") {
                if (std::sscanf(value.c_str(), "%dx%dx%d", &raw_h, &raw_w, &raw_c) != 3)
                    throw std::runtime_error("--shape takes HxWxC, got " + value);
            } else {
                throw std::runtime_error("unknown option " + flag + " (--scale, --shape)");
            }
        }
        const std::string folder = engine_path.substr(0, engine_path.find_last_of('/') + 1);
        const std::string card_path = folder + "model_card.json";
        const int stride = retinaunet::read_stride(card_path);

        const std::vector<char> blob = read_file(engine_path);
        std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
        std::unique_ptr<nvinfer1::ICudaEngine> engine(
            runtime->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine)
            throw std::runtime_error(engine_path + ": cannot deserialise; was it built with "
                                     "this TensorRT version for this GPU? Rebuild it with "
                                     "retinaunet-deploy build-engine");
        std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());

        // The optimisation profile bounds the height and width the engine takes.
        const nvinfer1::Dims low =
            engine->getProfileShape("image", 0, nvinfer1::OptProfileSelector::kMIN);
        const nvinfer1::Dims high =
            engine->getProfileShape("image", 0, nvinfer1::OptProfileSelector::kMAX);
        const int channels = static_cast<int>(high.d[3]);
        if (ends_with(image_path, ".f32") && raw_h <= 0)
            throw std::runtime_error(image_path + ": a raw .f32 image needs --shape HxWxC");
        const retinaunet::Image image =
            ends_with(image_path, ".f32")
                ? retinaunet::read_raw_f32(image_path, raw_h, raw_w, raw_c)
                : retinaunet::read_pgm(image_path);
        if (image.channels != channels)
            throw std::runtime_error(image_path + ": image has " +
                                     std::to_string(image.channels) + " channel(s), the engine "
                                     "takes " + std::to_string(channels));
        const int min_side = static_cast<int>(std::max(low.d[1], low.d[2]));
        const retinaunet::Image padded =
            retinaunet::pad_to_stride(image, stride, min_side);
        if (padded.height > high.d[1] || padded.width > high.d[2])
            throw std::runtime_error(image_path + ": padded to " + std::to_string(padded.height) +
                                     "x" + std::to_string(padded.width) + ", beyond the engine's "
                                     "profile maximum " + std::to_string(high.d[1]) + "x" +
                                     std::to_string(high.d[2]) + "; tile it (Python Predictor) "
                                     "or rebuild with build-engine --max-size");
        const int height = image.height, width = image.width;
        if (!context->setInputShape("image",
                                    nvinfer1::Dims4{1, padded.height, padded.width, channels}))
            throw std::runtime_error("the engine refused the input shape (check its profile)");

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
        // Every output the decoding reads must exist: an engine without one would leave
        // an empty buffer to read.
        if (!host.count("mask")) throw std::runtime_error(engine_path + ": no `mask` output");
        if (host.count("cls_logits") != host.count("box_deltas"))
            throw std::runtime_error(engine_path + ": has one of cls_logits/box_deltas only");
        check(cudaMemcpyAsync(device["image"], padded.pixels.data(),
                              padded.pixels.size() * sizeof(float), cudaMemcpyHostToDevice,
                              stream), "copy in");
        if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
        for (auto& [name, values] : host) {
            if (name == "image") continue;
            check(cudaMemcpyAsync(values.data(), device[name], values.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream), "copy out");
        }
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

        const nvinfer1::Dims mask_dims = context->getTensorShape("mask");  // (1, H', W', K)
        const int classes = static_cast<int>(mask_dims.d[3]);
        const std::vector<uint8_t> padded_mask = retinaunet::argmax_mask(
            host["mask"].data(), padded.height, padded.width, classes);
        const std::vector<uint8_t> mask =
            retinaunet::crop(padded_mask.data(), padded.width, 1, height, width);
        retinaunet::write_pgm(mask_path, mask, height, width, scale);
        std::vector<size_t> counts(classes, 0);
        for (uint8_t value : mask) ++counts[value];
        std::cout << "wrote " << mask_path << " (" << height << "x" << width << ", run at "
                  << padded.height << "x" << padded.width << "); pixels per class:";
        for (int k = 0; k < classes; ++k) std::cout << " " << k << "=" << counts[k];
        std::cout << "\n";
        if (host.count("cls_logits")) {
            retinaunet::AnchorConfig anchor_config;
            retinaunet::DetectionConfig post;
            retinaunet::read_card(card_path, anchor_config, post);
            const std::vector<float> anchors =
                retinaunet::generate_anchors(anchor_config, padded.height, padded.width);
            const nvinfer1::Dims cls_dims = context->getTensorShape("cls_logits");
            if (static_cast<int64_t>(anchors.size() / 4) != cls_dims.d[1])
                throw std::runtime_error(card_path + " gives " +
                                         std::to_string(anchors.size() / 4) + " anchors but the "
                                         "engine outputs " + std::to_string(cls_dims.d[1]) +
                                         "; the card does not belong to this engine");
            const int det_classes = static_cast<int>(cls_dims.d[2]);
            // Boxes are clipped to the image itself, not the padding.
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
