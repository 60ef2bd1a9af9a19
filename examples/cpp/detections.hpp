// Detection decoding for C++ apps: anchors, box decoding and per-class NMS, exactly as
// retinaunet_deploy/postprocess.py, model/anchors.py and model/boxes.py define them
// (boxes y1, x1, y2, x2 in input pixels, y2/x2 exclusive). No runtime library, so
// tests/test_cpp_example.py compiles it and checks it against the Python postprocess.
// The model card's settings are read by card.hpp.
#pragma once

#include <algorithm>
#include <cmath>
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

// Greedy NMS within each class (model.boxes.batched_nms): a box is dropped when it
// overlaps a kept, higher-scoring box of its class by IoU > `iou_threshold`. Returns the
// kept boxes by descending score (ties: lower class, then earlier box, first).
inline std::vector<Detection> batched_nms(const std::vector<Detection>& boxes,
                                          float iou_threshold) {
    int classes = 0;
    for (const Detection& box : boxes) classes = std::max(classes, box.cls + 1);
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
                if (!removed[j] && iou(order[i], order[j]) > iou_threshold) removed[j] = true;
        }
    }
    std::stable_sort(kept.begin(), kept.end(),
                     [](const Detection& a, const Detection& b) { return a.score > b.score; });
    return kept;
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
    std::vector<Detection> kept = batched_nms(boxes, config.iou_threshold);
    if (kept.size() > static_cast<size_t>(config.max_detections))
        kept.resize(config.max_detections);
    return kept;
}

}  // namespace retinaunet
