// The model card (model_card.json, or the copy an ONNX file carries in its metadata) as
// the C++ example reads it: the input contract, the class lists, the anchors and the
// postprocess thresholds (retinaunet_deploy/card.py writes it; export/README.md).
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "detections.hpp"
#include "json.hpp"
#include "normalize.hpp"

namespace retinaunet {

struct Card {
    std::string source;         // where it was read from, for messages
    int channels = 1;           // input.channels
    int stride = 16;            // input.stride: H and W of a run are multiples of it
    int patch_size = 128;       // input.patch_size: the size the postprocess caps are set for
    int pixel_bits = 8;         // 8 (uint8), 16 (uint16), 0 (signed or float: raw .f32 input)
    std::string pixel_dtype = "uint8";  // input.pixel_dtype
    double pixel_max = 255;     // input.pixel_max
    int classes = 0;            // mask classes K (len(class_names))
    int det_classes = 0;        // detection classes C (len(det_class_names))
    Normalization normalization;  // the card's normalization (normalize.hpp)
    bool has_anchors = false;   // a model with detection heads
    AnchorConfig anchors;
    DetectionConfig post;
};

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open (no such file, or not readable)");
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

// Parse a card's JSON text; `source` names it in every error.
inline Card parse_card(const std::string& text, const std::string& source) {
    const Json root = parse_json(text, source);
    Card card;
    card.source = source;
    const std::string where = source;
    const Json& input = root.at("input", where);
    const std::string in = where + " input";
    card.channels = static_cast<int>(input.at("channels", in).as_number(in + ".channels"));
    card.stride = static_cast<int>(input.at("stride", in).as_number(in + ".stride"));
    card.patch_size = static_cast<int>(input.at("patch_size", in).as_number(in + ".patch_size"));
    const std::string dtype = input.at("pixel_dtype", in).as_string(in + ".pixel_dtype");
    card.pixel_dtype = dtype;
    card.pixel_bits = dtype == "uint8" ? 8 : dtype == "uint16" ? 16 : 0;
    card.pixel_max = input.at("pixel_max", in).as_number(in + ".pixel_max");
    if (card.channels < 1 || card.stride < 1 || card.patch_size < 1)
        throw std::runtime_error(where + ": input channels, stride and patch_size must be "
                                 "positive");
    if (root.has("normalization")) {
        const Json& n = root.at("normalization", where);
        const std::string nw = where + " normalization";
        Normalization& norm = card.normalization;
        if (n.has("scheme")) norm.scheme = n.at("scheme", nw).as_string(nw + ".scheme");
        if (norm.scheme != "global" && norm.scheme != "zscore" && norm.scheme != "ct")
            throw std::runtime_error(where + ": normalization scheme " + norm.scheme +
                                     " is not one this app applies (global, zscore, ct)");
        norm.in_graph = norm.scheme == "global";
        if (n.has("in_graph")) {
            const Json& flag = n.at("in_graph", nw);
            if (flag.type != Json::Type::Bool || flag.boolean != norm.in_graph)
                throw std::runtime_error(where + ": normalization.in_graph must be " +
                                         (norm.in_graph ? "true" : "false") + " for scheme " +
                                         norm.scheme);
        }
        if (norm.scheme == "ct") {
            norm.mean = n.at("mean", nw).as_number(nw + ".mean");
            norm.std = n.at("std", nw).as_number(nw + ".std");
            norm.clip_low = n.at("clip_low", nw).as_number(nw + ".clip_low");
            norm.clip_high = n.at("clip_high", nw).as_number(nw + ".clip_high");
            if (!(norm.std > 0) || norm.clip_low > norm.clip_high)
                throw std::runtime_error(where + ": a ct normalization needs std > 0 and "
                                         "clip_low <= clip_high");
        }
        norm.nonzero_mask = n.has("nonzero_mask") && n.at("nonzero_mask", nw).type ==
                            Json::Type::Bool && n.at("nonzero_mask", nw).boolean;
    }
    if (card.pixel_bits == 0 && card.normalization.in_graph)
        throw std::runtime_error(where + ": pixel_dtype " + dtype + " is not one this app reads "
                                 "for a model that normalises in its graph (uint8, uint16)");
    card.classes = static_cast<int>(root.at("class_names", where).as_array(where).size());
    if (root.has("det_class_names"))
        card.det_classes = static_cast<int>(root.at("det_class_names", where).as_array(where).size());
    if (root.has("anchors")) {
        const Json& a = root.at("anchors", where);
        const std::string aw = where + " anchors";
        card.has_anchors = true;
        card.anchors.strides.clear();
        for (const Json& s : a.at("strides", aw).as_array(aw + ".strides"))
            card.anchors.strides.push_back(static_cast<int>(s.as_number(aw + ".strides")));
        card.anchors.scales.clear();
        for (const Json& s : a.at("scales", aw).as_array(aw + ".scales"))
            card.anchors.scales.push_back(s.as_number(aw + ".scales"));
        card.anchors.ratios.clear();
        for (const Json& s : a.at("ratios", aw).as_array(aw + ".ratios"))
            card.anchors.ratios.push_back(s.as_number(aw + ".ratios"));
        card.anchors.size_factor = a.at("size_factor", aw).as_number(aw + ".size_factor");
    }
    if (root.has("postprocess")) {
        const Json& p = root.at("postprocess", where);
        const std::string pw = where + " postprocess";
        card.post.score_threshold =
            static_cast<float>(p.at("score_threshold", pw).as_number(pw + ".score_threshold"));
        card.post.iou_threshold =
            static_cast<float>(p.at("iou_threshold", pw).as_number(pw + ".iou_threshold"));
        card.post.max_detections =
            static_cast<int>(p.at("max_detections", pw).as_number(pw + ".max_detections"));
        card.post.pre_nms_top_k =
            static_cast<int>(p.at("pre_nms_top_k", pw).as_number(pw + ".pre_nms_top_k"));
    }
    return card;
}

inline Card load_card(const std::string& path) { return parse_card(read_text(path), path); }

// The two entries the decoding self-test reads (kept for apps that only decode).
inline int read_stride(const std::string& path) { return load_card(path).stride; }

inline void read_card(const std::string& path, AnchorConfig& anchors, DetectionConfig& post) {
    const Card card = load_card(path);
    anchors = card.anchors;
    post = card.post;
}

}  // namespace retinaunet
