// retinaunet_infer: one image through a RetinaUNet model file, on the CPU (OpenVINO) or
// an NVIDIA GPU (TensorRT), with the Python Predictor's pre- and post-processing.
//
//   retinaunet_infer MODEL IMAGE MASK_OUT [--card model_card.json] [--tile N]
//                    [--overlap F] [--json DETECTIONS.json] [--threads N]
//                    [--scale S] [--shape HxWxC]
//
// MODEL picks the backend by its suffix: .onnx runs on OpenVINO (model.onnx in fp32 with
// the f32 precision hint, the Q/DQ model.int8.onnx in int8, an end-to-end *.e2e.onnx with
// its detections read from the graph), .plan on TensorRT. IMAGE is an 8- or 16-bit binary
// PGM, or raw little-endian float32 pixels (HWC) with --shape. The image is checked against
// the card's input contract, padded at the bottom and right to the stride by mirroring,
// run whole or (beyond --tile, default 1024) as a sliding window with --overlap (default
// 0.25), and cropped back (predict.hpp). MASK_OUT gets the class mask as an 8-bit PGM
// (values times --scale, default 1); --json gets
//   {"height": H, "width": W, "detections": [{"box": [y1, x1, y2, x2], "score": s,
//     "class": c}, ...]}
// in image pixels. The card: --card, else the one an .onnx file carries in its metadata,
// else model_card.json beside MODEL. Every error is one line on stderr and exit code 1
// (2 for a command line it cannot parse).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "card.hpp"
#include "image_io.hpp"
#include "json.hpp"
#include "predict.hpp"
#ifdef RETINAUNET_WITH_OPENVINO
#include "openvino_backend.hpp"
#endif
#ifdef RETINAUNET_WITH_TENSORRT
#include "tensorrt_backend.hpp"
#endif

namespace {

const char* USAGE =
    "usage: retinaunet_infer MODEL.onnx|MODEL.plan IMAGE.pgm|IMAGE.f32 MASK_OUT.pgm "
    "[--card model_card.json] [--tile N] [--overlap F] [--json DETECTIONS.json] "
    "[--threads N] [--score-threshold S] [--scale S] [--shape HxWxC]\n";

// What apps keep by default, as `predict` and `serve` (retinaunet_deploy.postprocess
// APP_SCORE_THRESHOLD): the card's own score_threshold (0.05) is for evaluation.
constexpr double APP_SCORE_THRESHOLD = 0.5;

bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Options {
    std::string model, image, mask, card, json;
    int tile = retinaunet::DEFAULT_TILE, threads = 0, scale = 1;
    double overlap = retinaunet::DEFAULT_OVERLAP;
    double score_threshold = APP_SCORE_THRESHOLD;
    int raw_h = 0, raw_w = 0, raw_c = 0;
};

int integer(const std::string& flag, const std::string& value) {
    size_t used = 0;
    int number = 0;
    try {
        number = std::stoi(value, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != value.size()) throw std::invalid_argument(flag + " takes an integer, got " + value);
    return number;
}

Options parse(int argc, char** argv) {
    Options options;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg.rfind("--", 0) != 0) {
            positional.push_back(arg);
            continue;
        }
        if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
        const std::string value = argv[++i];
        if (arg == "--card") options.card = value;
        else if (arg == "--json") options.json = value;
        else if (arg == "--tile") options.tile = integer(arg, value);
        else if (arg == "--threads") options.threads = integer(arg, value);
        else if (arg == "--scale") options.scale = integer(arg, value);
        else if (arg == "--overlap" || arg == "--score-threshold") {
            size_t used = 0;
            double number = 0;
            try {
                number = std::stod(value, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != value.size()) throw std::invalid_argument(arg + " takes a number, got " + value);
            (arg == "--overlap" ? options.overlap : options.score_threshold) = number;
        } else if (arg == "--shape") {
            if (std::sscanf(value.c_str(), "%dx%dx%d", &options.raw_h, &options.raw_w,
                            &options.raw_c) != 3 || options.raw_h <= 0 || options.raw_w <= 0 ||
                options.raw_c <= 0)
                throw std::invalid_argument("--shape takes HxWxC (positive), got " + value);
        } else {
            throw std::invalid_argument("unknown option " + arg);
        }
    }
    if (positional.size() != 3)
        throw std::invalid_argument("expected MODEL IMAGE MASK_OUT, got " +
                                    std::to_string(positional.size()) + " argument(s)");
    options.model = positional[0];
    options.image = positional[1];
    options.mask = positional[2];
    if (options.threads < 0) throw std::invalid_argument("--threads must be 0 or more");
    if (!(options.score_threshold >= 0 && options.score_threshold <= 1))
        throw std::invalid_argument("--score-threshold must be in [0, 1]");
    return options;
}

std::unique_ptr<retinaunet::Backend> open_backend(const Options& options) {
    const std::string& model = options.model;
    if (ends_with(model, ".onnx")) {
#ifdef RETINAUNET_WITH_OPENVINO
        return std::make_unique<retinaunet::OpenVINOBackend>(model, options.threads);
#else
        throw std::runtime_error(model + ": this build has no OpenVINO backend (CMake did not "
                                 "find OpenVINO); build with -DOpenVINO_DIR=... as "
                                 "examples/cpp/README.md says");
#endif
    }
    if (ends_with(model, ".plan")) {
#ifdef RETINAUNET_WITH_TENSORRT
        return std::make_unique<retinaunet::TensorRTBackend>(model);
#else
        throw std::runtime_error(model + ": this build has no TensorRT backend (CMake did not "
                                 "find TensorRT and CUDA); build on a machine with them, or "
                                 "run the .onnx file on OpenVINO");
#endif
    }
    throw std::runtime_error(model + ": unknown model file type; give an .onnx file (OpenVINO, "
                             "CPU) or a .plan engine (TensorRT, GPU)");
}

retinaunet::Card card_for(const Options& options, const retinaunet::Backend& backend) {
    if (!options.card.empty()) return retinaunet::load_card(options.card);
    if (!backend.embedded_card.empty())
        return retinaunet::parse_card(backend.embedded_card,
                                      options.model + " (its embedded model card)");
    const std::string folder = options.model.substr(0, options.model.find_last_of('/') + 1);
    const std::string beside = folder + "model_card.json";
    if (!std::ifstream(beside))
        throw std::runtime_error(options.model + " has no model card (none in the file, no " +
                                 beside + "); pass --card RUN_DIR/model_card.json");
    return retinaunet::load_card(beside);
}

std::string detections_json(const retinaunet::Result& result) {
    std::ostringstream out;
    out << "{\"height\": " << result.height << ", \"width\": " << result.width
        << ", \"detections\": [";
    for (size_t i = 0; i < result.detections.size(); ++i) {
        const retinaunet::Detection& d = result.detections[i];
        out << (i ? ", " : "") << "{\"box\": [" << retinaunet::json_float(d.y1) << ", "
            << retinaunet::json_float(d.x1) << ", " << retinaunet::json_float(d.y2) << ", "
            << retinaunet::json_float(d.x2) << "], \"score\": " << retinaunet::json_float(d.score)
            << ", \"class\": " << d.cls << "}";
    }
    out << "]}\n";
    return out.str();
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    try {
        options = parse(argc, argv);
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n" << USAGE;
        return 2;
    }
    try {
        retinaunet::Image image;
        if (ends_with(options.image, ".f32")) {
            if (options.raw_h <= 0)
                throw std::runtime_error(options.image + ": a raw .f32 image needs --shape HxWxC");
            image = retinaunet::read_raw_f32(options.image, options.raw_h, options.raw_w,
                                             options.raw_c);
        } else {
            image = retinaunet::read_pgm(options.image);
        }
        const auto start = std::chrono::steady_clock::now();
        std::unique_ptr<retinaunet::Backend> backend = open_backend(options);
        const auto loaded = std::chrono::steady_clock::now();
        const retinaunet::Card card = card_for(options, *backend);
        retinaunet::Predictor predictor(*backend, card, options.tile, options.overlap);
        predictor.check(image, options.image);
        retinaunet::Result result = predictor.predict(image);
        // Keep what `predict --score-threshold` keeps: scores above it (the decode's own
        // test, `score > threshold`; dropping after NMS keeps the same boxes, as a box
        // never suppresses one that scores higher).
        std::vector<retinaunet::Detection>& found = result.detections;
        found.erase(std::remove_if(found.begin(), found.end(),
                                   [&](const retinaunet::Detection& d) {
                                       return !(d.score > options.score_threshold);
                                   }),
                    found.end());
        const auto done = std::chrono::steady_clock::now();
        auto ms = [](auto a, auto b) {
            return std::chrono::duration<double, std::milli>(b - a).count();
        };

        retinaunet::write_pgm(options.mask, result.mask, result.height, result.width,
                              options.scale);
        if (!options.json.empty())
            retinaunet::write_atomically(options.json, detections_json(result));
        std::vector<size_t> counts(static_cast<size_t>(std::max(result.classes, 1)), 0);
        for (uint8_t value : result.mask)
            if (value < counts.size()) ++counts[value];
        std::cout << "wrote " << options.mask << " (" << result.height << "x" << result.width
                  << ", run at " << result.run_height << "x" << result.run_width << " in "
                  << result.tiles << " tile(s)" << (predictor.end_to_end() ? ", end-to-end" : "")
                  << "); pixels per class:";
        for (size_t k = 0; k < counts.size(); ++k) std::cout << " " << k << "=" << counts[k];
        std::cout << "\nmodel loaded in " << ms(start, loaded) << " ms, image predicted in "
                  << ms(loaded, done) << " ms (pre- and post-processing included)\n";
        for (const retinaunet::Detection& d : result.detections)
            std::cout << "detection: class " << d.cls << " score " << d.score << " box (y1 " << d.y1
                      << ", x1 " << d.x1 << ", y2 " << d.y2 << ", x2 " << d.x2 << ")\n";
    } catch (const std::exception& error) {
        std::string message = error.what();
        std::replace(message.begin(), message.end(), '\n', ' ');
        std::cerr << "error: " << message << "\n";
        return 1;
    }
    return 0;
}
