// Detection decoding for C++ apps: anchors, box decoding and per-class NMS, exactly as
// retinaunet_deploy/postprocess.py and export/README.md define them. No TensorRT or CUDA,
// so tests/test_cpp_example.py compiles it and checks it against the Python postprocess.
#pragma once

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace retinaunet {

// The model card's "anchors" and "postprocess" entries.
struct AnchorConfig {
    std::vector<int> strides{4, 8, 16};
    std::vector<double> scales{1.0, 1.2599210498948732, 1.5874010519681994};
    std::vector<double> ratios{0.5, 1.0, 2.0};  // height / width
    double size_factor = 4.0;
};

struct DetectionConfig {
    float score_threshold = 0.05f;
    float iou_threshold = 0.5f;
    int max_detections = 100;
    int pre_nms_top_k = 1000;
};

struct Detection {
    float y1, x1, y2, x2;  // input pixels
    float score;           // sigmoid of the logit
    int cls;               // detection class; with default heads mask class cls + 1
};

// --- A minimal reader for the two entries of model_card.json we need --------------------
// (The card is JSON written by the toolkit; this reads numbers by key inside one object.)

inline std::string json_object(const std::string& text, const std::string& key) {
    const size_t at = text.find("\"" + key + "\"");
    if (at == std::string::npos) throw std::runtime_error("model card has no \"" + key + "\"");
    const size_t open = text.find('{', at);
    int depth = 0;
    for (size_t i = open; i < text.size(); ++i) {
        if (text[i] == '{') ++depth;
        if (text[i] == '}' && --depth == 0) return text.substr(open, i - open + 1);
    }
    throw std::runtime_error("model card: unterminated \"" + key + "\"");
}

inline std::vector<double> json_numbers(const std::string& object, const std::string& key) {
    const size_t at = object.find("\"" + key + "\"");
    if (at == std::string::npos) throw std::runtime_error("model card has no \"" + key + "\"");
    size_t start = object.find_first_not_of(" \t\r\n:", at + key.size() + 2);
    const bool list = object[start] == '[';
    const size_t end = list ? object.find(']', start) : object.find_first_of(",}\n", start);
    std::string body = object.substr(start + (list ? 1 : 0), end - start - (list ? 1 : 0));
    std::replace(body.begin(), body.end(), ',', ' ');
    std::istringstream in(body);
    std::vector<double> values;
    double value;
    while (in >> value) values.push_back(value);
    if (values.empty()) throw std::runtime_error("model card: \"" + key + "\" has no numbers");
    return values;
}

inline std::string read_text(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

// The network's stride (`input.stride`): images are padded to a multiple of it, by
// mirroring (`pad_to_stride`), as in training and in the Python Predictor.
inline int read_stride(const std::string& path) {
    const std::string card = read_text(path);
    return static_cast<int>(json_numbers(json_object(card, "input"), "stride")[0]);
}

inline void read_card(const std::string& path, AnchorConfig& anchors, DetectionConfig& post) {
    const std::string card = read_text(path);
    const std::string a = json_object(card, "anchors"), p = json_object(card, "postprocess");
    anchors.strides.clear();
    for (double s : json_numbers(a, "strides")) anchors.strides.push_back(static_cast<int>(s));
    anchors.scales = json_numbers(a, "scales");
    anchors.ratios = json_numbers(a, "ratios");
    anchors.size_factor = json_numbers(a, "size_factor")[0];
    post.score_threshold = static_cast<float>(json_numbers(p, "score_threshold")[0]);
    post.iou_threshold = static_cast<float>(json_numbers(p, "iou_threshold")[0]);
    post.max_detections = static_cast<int>(json_numbers(p, "max_detections")[0]);
    post.pre_nms_top_k = static_cast<int>(json_numbers(p, "pre_nms_top_k")[0]);
}

// --- Anchors, in the order of the A axis -----------------------------------------------
// Levels by ascending stride; rows top to bottom; columns left to right; then shape
// k = ratio_index * len(scales) + scale_index. Returns A * 4 floats (y1, x1, y2, x2).
inline std::vector<float> generate_anchors(const AnchorConfig& config, int height, int width) {
    std::vector<float> boxes;
    for (int stride : config.strides) {
        std::vector<float> half_h, half_w;
        for (double ratio : config.ratios)
            for (double scale : config.scales) {
                const double size = config.size_factor * stride * scale;
                half_h.push_back(static_cast<float>(size * std::sqrt(ratio)) / 2.0f);
                half_w.push_back(static_cast<float>(size / std::sqrt(ratio)) / 2.0f);
            }
        for (int i = 0; i < height / stride; ++i)
            for (int j = 0; j < width / stride; ++j) {
                const float cy = (static_cast<float>(i) + 0.5f) * static_cast<float>(stride);
                const float cx = (static_cast<float>(j) + 0.5f) * static_cast<float>(stride);
                for (size_t k = 0; k < half_h.size(); ++k) {
                    boxes.insert(boxes.end(), {cy - half_h[k], cx - half_w[k], cy + half_h[k],
                                               cx + half_w[k]});
                }
            }
    }
    return boxes;
}

inline float sigmoid(float x) {
    const float e = std::exp(-std::fabs(x));
    return x >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

inline float iou(const Detection& a, const Detection& b) {
    const float ih = std::max(0.0f, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
    const float iw = std::max(0.0f, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
    const float inter = ih * iw;
    const float area_a = std::max(0.0f, a.y2 - a.y1) * std::max(0.0f, a.x2 - a.x1);
    const float area_b = std::max(0.0f, b.y2 - b.y1) * std::max(0.0f, b.x2 - b.x1);
    const float uni = area_a + area_b - inter;
    return uni > 0 ? inter / std::max(uni, 1e-12f) : 0.0f;
}

// One image: logits (A, C) and deltas (A, 4) -> detections by descending score.
inline std::vector<Detection> decode_detections(const float* logits, const float* deltas,
                                                const std::vector<float>& anchors, int classes,
                                                int height, int width,
                                                const DetectionConfig& config) {
    const size_t count = anchors.size() / 4;
    // Candidates: (anchor, class) pairs scoring above the threshold, by index.
    std::vector<std::pair<size_t, float>> candidates;
    for (size_t i = 0; i < count * classes; ++i) {
        const float score = sigmoid(logits[i]);
        if (score > config.score_threshold) candidates.emplace_back(i, score);
    }
    if (candidates.size() > static_cast<size_t>(config.pre_nms_top_k)) {
        std::stable_sort(candidates.begin(), candidates.end(),
                         [](const auto& a, const auto& b) { return a.second > b.second; });
        candidates.resize(config.pre_nms_top_k);
        std::sort(candidates.begin(), candidates.end());  // back to index order
    }
    const float max_log = std::log(1000.0f / 16.0f);
    std::vector<Detection> boxes;
    for (const auto& [index, score] : candidates) {
        const size_t a = index / classes;
        const float* anchor = &anchors[a * 4];
        const float* d = &deltas[a * 4];
        const float ah = anchor[2] - anchor[0], aw = anchor[3] - anchor[1];
        const float acy = anchor[0] + 0.5f * ah, acx = anchor[1] + 0.5f * aw;
        const float cy = acy + d[0] * 0.1f * ah, cx = acx + d[1] * 0.1f * aw;
        const float h = ah * std::exp(std::min(d[2] * 0.2f, max_log));
        const float w = aw * std::exp(std::min(d[3] * 0.2f, max_log));
        Detection box{std::clamp(cy - h / 2, 0.0f, static_cast<float>(height)),
                      std::clamp(cx - w / 2, 0.0f, static_cast<float>(width)),
                      std::clamp(cy + h / 2, 0.0f, static_cast<float>(height)),
                      std::clamp(cx + w / 2, 0.0f, static_cast<float>(width)), score,
                      static_cast<int>(index % classes)};
        if (box.y2 > box.y1 && box.x2 > box.x1) boxes.push_back(box);  // NaN fails too
    }
    // Greedy NMS within each class, then all kept boxes by descending score.
    std::vector<Detection> kept;
    for (int c = 0; c < classes; ++c) {
        std::vector<Detection> order;
        for (const Detection& box : boxes)
            if (box.cls == c) order.push_back(box);
        std::stable_sort(order.begin(), order.end(),
                         [](const Detection& a, const Detection& b) { return a.score > b.score; });
        std::vector<bool> removed(order.size(), false);
        for (size_t i = 0; i < order.size(); ++i) {
            if (removed[i]) continue;
            kept.push_back(order[i]);
            for (size_t j = i + 1; j < order.size(); ++j)
                if (!removed[j] && iou(order[i], order[j]) > config.iou_threshold)
                    removed[j] = true;
        }
    }
    std::stable_sort(kept.begin(), kept.end(),
                     [](const Detection& a, const Detection& b) { return a.score > b.score; });
    if (kept.size() > static_cast<size_t>(config.max_detections))
        kept.resize(config.max_detections);
    return kept;
}

}  // namespace retinaunet
