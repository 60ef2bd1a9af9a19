// What the Python Predictor (retinaunet_deploy/runtime/predictor.py) does around a
// backend, for any backend: check the image against the card's input contract, pad it
// at the bottom and right to the stride by mirroring (data.patches.pad_to), run it whole
// or, beyond the tile size, as a sliding window (tiling.hpp), decode the detection heads
// (detections.hpp) with the card's caps scaled to the image size (Predictor.config_for),
// and crop back to the image. An end-to-end file (`*.e2e.onnx`, outputs num_detections,
// detection_boxes, detection_scores, detection_classes, labels) needs no decoding: its
// detections and class mask are read as they come out of the graph.
//
// A backend (OpenVINO, TensorRT) only runs the graph: `Backend::run` takes an
// (n, h, w, c) float32 batch: raw pixels when the graph normalises, else the card's
// normalization applied first (normalize.hpp), as the Python Predictor does; it
// returns every output by name, converted to float32 values with their shape.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "card.hpp"
#include "detections.hpp"
#include "image_io.hpp"
#include "tiling.hpp"

namespace retinaunet {

struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> values;  // row-major; int32 and uint8 outputs converted exactly
};
using Outputs = std::map<std::string, Tensor>;

class Backend {
public:
    virtual ~Backend() = default;
    // Outputs of one (n, height, width, channels) float32 batch.
    virtual Outputs run(const float* batch, int n, int height, int width, int channels) = 0;
    // The output names of the graph (known before anything runs).
    virtual std::vector<std::string> output_names() const = 0;
    std::string path;          // the model file, for messages
    int channels = 0;          // the input's channel count, 0 when the graph leaves it open
    int min_size = 0;          // smallest height/width it runs (an engine's profile), 0: none
    int max_size = 0;          // largest height/width it runs whole, 0: no limit
    int preferred_batch = 0;   // images per call it was tuned for, 0: none
    std::string embedded_card; // the card the file carries (ONNX metadata), "" when none
};

constexpr int DEFAULT_TILE = 1024;          // Predictor's DEFAULT_TILE
constexpr double DEFAULT_OVERLAP = 0.25;    // Predictor's DEFAULT_OVERLAP
constexpr long TILE_BATCH_PIXELS = 1L << 20; // tiling.TILE_BATCH_PIXELS

struct Result {
    int height = 0, width = 0;        // the image's own size: mask and boxes are in it
    int run_height = 0, run_width = 0; // the padded size it ran at
    size_t tiles = 1;
    int classes = 0;                  // mask classes K
    std::vector<uint8_t> mask;        // (height, width) class indices
    bool has_detections = false;      // false for a model without detection heads
    std::vector<Detection> detections;
};

class Predictor {
public:
    Predictor(Backend& backend, const Card& card, int tile = DEFAULT_TILE,
              double overlap = DEFAULT_OVERLAP)
        : backend_(backend), card_(card), overlap_(overlap) {
        // An engine's profile bounds the tile and the smallest input, as in Python.
        tile_ = backend.max_size ? std::min(tile, backend.max_size) : tile;
        if (tile_ < card.stride || tile_ % card.stride)
            throw std::runtime_error("--tile " + std::to_string(tile_) + " must be a positive "
                                     "multiple of the stride " + std::to_string(card.stride) +
                                     " (" + card.source + ")");
        if (!(overlap >= 0 && overlap < 1))
            throw std::runtime_error("--overlap must be in [0, 1), got " + std::to_string(overlap));
        min_input_ = std::max(card.stride, backend.min_size);
        batch_ = backend.preferred_batch ? backend.preferred_batch : 8;
        const std::vector<std::string> names = backend.output_names();
        auto has = [&](const char* name) {
            return std::find(names.begin(), names.end(), name) != names.end();
        };
        end_to_end_ = has("num_detections");
        const char* required_plain[] = {"mask"};
        const char* required_e2e[] = {"num_detections", "detection_boxes", "detection_scores",
                                      "detection_classes", "labels"};
        for (const char* name : required_plain)
            if (!end_to_end_ && !has(name))
                throw std::runtime_error(backend.path + " has no `" + name + "` output: not a "
                                         "RetinaUNet file of this toolkit (export/README.md)");
        for (const char* name : required_e2e)
            if (end_to_end_ && !has(name))
                throw std::runtime_error(backend.path + " has num_detections but no `" +
                                         std::string(name) + "` output: a damaged end-to-end "
                                         "file; write it again with retinaunet-deploy export");
        heads_ = !end_to_end_ && has("cls_logits");
        if (heads_ != (!end_to_end_ && has("box_deltas")))
            throw std::runtime_error(backend.path + " has one of cls_logits/box_deltas only");
        if (heads_ && !card.has_anchors)
            throw std::runtime_error(mismatch("the model has detection heads, the card has no "
                                              "anchors"));
        if (backend.channels && backend.channels != card.channels)
            throw std::runtime_error(mismatch("the card says " + std::to_string(card.channels) +
                                              " input channel(s), the model takes " +
                                              std::to_string(backend.channels)));
    }

    bool end_to_end() const { return end_to_end_; }
    int tile() const { return tile_; }

    // The card's postprocess, its per-image counts scaled to an input of this size
    // (Predictor.config_for: an image k times the training patch's area holds about k
    // times the objects).
    DetectionConfig config_for(int height, int width) const {
        const double area = static_cast<double>(height) * width;
        const int factor = std::max(1, static_cast<int>(std::ceil(
                                           area / (static_cast<double>(card_.patch_size) *
                                                   card_.patch_size))));
        DetectionConfig config = card_.post;
        config.max_detections = card_.post.max_detections * factor;
        config.pre_nms_top_k = std::max(card_.post.pre_nms_top_k * factor, config.max_detections);
        return config;
    }

    // The image against the card's input contract (Predictor.check_input), one line each.
    void check(const Image& image, const std::string& path) const {
        if (std::min(image.height, image.width) < card_.stride)
            throw std::runtime_error(path + ": image size " + std::to_string(image.height) + "x" +
                                     std::to_string(image.width) + " is smaller than one "
                                     "network stride (" + std::to_string(card_.stride) +
                                     " px); use a larger image");
        if (image.channels != card_.channels)
            throw std::runtime_error(path + ": image has " + std::to_string(image.channels) +
                                     " channel(s), the model takes " +
                                     std::to_string(card_.channels) + "; save it with " +
                                     std::to_string(card_.channels) + " channel(s)");
        const std::string& dtype = card_.pixel_dtype;
        if (!card_.normalization.in_graph) {
            // normalization.check_unbounded_dtype: a ct model takes Hounsfield units (signed),
            // not an unsigned PGM's stored values; zscore is scale-free.
            if (image.bits != 32 && card_.normalization.scheme == "ct" && card_.pixel_bits == 0)
                throw std::runtime_error(path + ": an unsigned " + std::to_string(image.bits) +
                                         "-bit image, the model takes " + dtype + " values in "
                                         "the units it was trained on (ct); give them as raw "
                                         "float32 (.f32 with --shape)");
            for (size_t i = 0; i < image.pixels.size(); ++i)
                if (!std::isfinite(image.pixels[i]))
                    throw std::runtime_error(path + ": pixel value " + json_float(image.pixels[i]) +
                                             " at row " + std::to_string(i / image.channels / image.width) +
                                             ", column " + std::to_string(i / image.channels % image.width) +
                                             "; replace NaN and Inf before prediction");
            return;
        }
        if (image.bits != 32 && image.bits != card_.pixel_bits)
            throw std::runtime_error(path + (image.bits == 8 ? ": an " : ": a ") +
                                     std::to_string(image.bits) + "-bit image, "
                                     "the model was trained on " + dtype + " pixels (0.." +
                                     pixel_max() + "); save it as " +
                                     (card_.pixel_bits == 8 ? "an " : "a ") +
                                     std::to_string(card_.pixel_bits) + "-bit PGM");
        for (size_t i = 0; i < image.pixels.size(); ++i) {
            const float v = image.pixels[i];
            if (!std::isfinite(v) || v < 0 || v > card_.pixel_max) {
                const size_t pixel = i / image.channels;
                throw std::runtime_error(
                    path + ": pixel value " + json_float(v) + " at row " +
                    std::to_string(pixel / image.width) + ", column " +
                    std::to_string(pixel % image.width) + " is outside [0, " + pixel_max() +
                    "]; the model takes raw " + dtype + " pixel values (as it was trained)");
            }
        }
    }

    Result predict(const Image& image) {
        Result result;
        result.height = image.height;
        result.width = image.width;
        result.run_height = padded_side(image.height);
        result.run_width = padded_side(image.width);
        // The card's normalization (normalize.hpp) on the whole image, before padding, as
        // the Python Predictor does; a no-op for models that normalise in their graph.
        const Image* source = &image;
        Image normalized;
        if (!card_.normalization.in_graph) {
            normalized = image;
            normalize(normalized, card_.normalization);
            source = &normalized;
        }
        const Image padded = pad_to(*source, result.run_height, result.run_width);
        if (fits_whole(image.height, image.width))
            whole(padded, result);
        else
            tiled(padded, result);
        return result;
    }

private:
    Backend& backend_;
    Card card_;
    int tile_ = DEFAULT_TILE, min_input_ = 16, batch_ = 8;
    double overlap_ = DEFAULT_OVERLAP;
    bool end_to_end_ = false, heads_ = false, scale_warned_ = false;

    std::string pixel_max() const {
        return std::to_string(static_cast<long>(card_.pixel_max));
    }
    std::string mismatch(const std::string& what) const {
        return card_.source + " does not match " + backend_.path + ": " + what +
               "; pass the model_card.json of the run that wrote the model (--card)";
    }
    int ceil_stride(int side) const { return (side + card_.stride - 1) / card_.stride * card_.stride; }
    int padded_side(int side) const { return std::max(min_input_, ceil_stride(side)); }
    bool fits_whole(int height, int width) const {
        return std::max(ceil_stride(height), ceil_stride(width)) <= tile_;
    }

    const Tensor& output(const Outputs& outputs, const std::string& name) const {
        const auto it = outputs.find(name);
        if (it == outputs.end()) throw std::runtime_error(backend_.path + ": no `" + name + "` output");
        return it->second;
    }

    // Outputs' shapes against the card: mask classes, detection classes, anchors.
    void check_outputs(const Outputs& outputs, int height, int width) const {
        if (end_to_end_) return;
        const Tensor& mask = output(outputs, "mask");
        if (mask.shape.size() != 4 || mask.shape[1] != height || mask.shape[2] != width)
            throw std::runtime_error(backend_.path + ": `mask` is not (N, H, W, K) of the input");
        if (mask.shape[3] != card_.classes)
            throw std::runtime_error(mismatch("the card has " + std::to_string(card_.classes) +
                                              " classes, the model's mask " +
                                              std::to_string(mask.shape[3])));
        if (!heads_) return;
        const Tensor& logits = output(outputs, "cls_logits");
        const size_t anchors = generate_anchors(card_.anchors, height, width).size() / 4;
        if (logits.shape.size() != 3 || static_cast<size_t>(logits.shape[1]) != anchors)
            throw std::runtime_error(mismatch("the card's anchors give " + std::to_string(anchors) +
                                              " anchors at " + std::to_string(height) + "x" +
                                              std::to_string(width) + ", the model outputs " +
                                              (logits.shape.size() == 3
                                                   ? std::to_string(logits.shape[1]) : "?")));
        if (card_.det_classes && logits.shape[2] != card_.det_classes)
            throw std::runtime_error(mismatch("the card has " + std::to_string(card_.det_classes) +
                                              " detection classes, the model's heads " +
                                              std::to_string(logits.shape[2])));
    }

    Outputs run(const std::vector<float>& batch, int n, int height, int width) {
        if (end_to_end_ && !scale_warned_ &&
            static_cast<long>(height) * width > static_cast<long>(card_.patch_size) * card_.patch_size) {
            // runtime/e2e.py scale_warning: the graph's caps are the card's, for patch-size
            // inputs; the plain file's Predictor scales them with the area.
            scale_warned_ = true;
            std::cerr << "warning: " << backend_.path << ": its graph keeps at most "
                      << card_.post.max_detections << " detections of its top "
                      << card_.post.pre_nms_top_k << " candidates per call, the card's caps for "
                      << card_.patch_size << "x" << card_.patch_size << " inputs; on " << height
                      << "x" << width << " inputs it may keep fewer than the plain .onnx file "
                      << "(which scales them): run it with --tile " << card_.patch_size
                      << ", or use the plain file\n";
        }
        Outputs outputs = backend_.run(batch.data(), n, height, width, card_.channels);
        check_outputs(outputs, height, width);
        return outputs;
    }

    // Per image of a batch: detections of the heads, boxes clipped to (clip_h, clip_w),
    // the card's caps scaled to that size.
    std::vector<std::vector<Detection>> decode(const Outputs& outputs, int height, int width,
                                               int clip_h, int clip_w) {
        const Tensor& logits = output(outputs, "cls_logits");
        const Tensor& deltas = output(outputs, "box_deltas");
        const std::vector<float> anchors = generate_anchors(card_.anchors, height, width);
        const size_t a = anchors.size() / 4, c = static_cast<size_t>(logits.shape[2]);
        const DetectionConfig config = config_for(clip_h, clip_w);
        std::vector<std::vector<Detection>> found;
        for (int64_t i = 0; i < logits.shape[0]; ++i)
            found.push_back(decode_detections(&logits.values[i * a * c], &deltas.values[i * a * 4],
                                              anchors, static_cast<int>(c), clip_h, clip_w,
                                              config));
        return found;
    }

    // An end-to-end file's detections of image `i` (runtime/e2e.py `detections`): the
    // first num_detections rows, clipped to (clip_h, clip_w) (the graph clipped them to
    // its input, which may include padding), empty boxes and those at or under the card's
    // score threshold dropped. No decoding: anchors, deltas and NMS ran in the graph.
    std::vector<Detection> read_end_to_end(const Outputs& outputs, int64_t i, int clip_h,
                                           int clip_w) const {
        const Tensor& num = output(outputs, "num_detections");
        const Tensor& boxes = output(outputs, "detection_boxes");
        const Tensor& scores = output(outputs, "detection_scores");
        const Tensor& classes = output(outputs, "detection_classes");
        const int64_t m = scores.shape.at(1);
        const int64_t count = std::min<int64_t>(static_cast<int64_t>(num.values.at(i)), m);
        std::vector<Detection> found;
        for (int64_t k = 0; k < count; ++k) {
            const float* b = &boxes.values[(i * m + k) * 4];
            Detection d{b[0], b[1], b[2], b[3], scores.values[i * m + k],
                        static_cast<int>(classes.values[i * m + k])};
            clip(d, clip_h, clip_w);
            if (d.y2 > d.y1 && d.x2 > d.x1 && d.score > card_.post.score_threshold)
                found.push_back(d);
        }
        return found;
    }

    void whole(const Image& padded, Result& result) {
        const int ph = padded.height, pw = padded.width;
        const Outputs outputs = run(padded.pixels, 1, ph, pw);
        if (end_to_end_) {
            const Tensor& labels = output(outputs, "labels");
            std::vector<uint8_t> mask(static_cast<size_t>(ph) * pw);
            for (size_t p = 0; p < mask.size(); ++p) mask[p] = static_cast<uint8_t>(labels.values[p]);
            result.mask = crop(mask.data(), pw, 1, result.height, result.width);
            result.classes = card_.classes;
            result.has_detections = true;
            result.detections = read_end_to_end(outputs, 0, result.height, result.width);
            const size_t cap = static_cast<size_t>(config_for(result.height, result.width).max_detections);
            if (result.detections.size() > cap) result.detections.resize(cap);
            return;
        }
        const Tensor& mask = output(outputs, "mask");
        result.classes = static_cast<int>(mask.shape[3]);
        const std::vector<uint8_t> full = argmax_mask(mask.values.data(), ph, pw, result.classes);
        result.mask = crop(full.data(), pw, 1, result.height, result.width);
        if (heads_) {
            result.has_detections = true;
            result.detections = decode(outputs, ph, pw, result.height, result.width)[0];
        }
    }

    static void clip(Detection& d, int height, int width) {
        d.y1 = std::clamp(d.y1, 0.0f, static_cast<float>(height));
        d.y2 = std::clamp(d.y2, 0.0f, static_cast<float>(height));
        d.x1 = std::clamp(d.x1, 0.0f, static_cast<float>(width));
        d.x2 = std::clamp(d.x2, 0.0f, static_cast<float>(width));
    }

    // Predictor._tiled / tiling.sliding_window: tiles of the padded image in calls of at
    // most `batch_` tiles (fewer past TILE_BATCH_PIXELS), mask probabilities blended with
    // Gaussian weights in float32 in tile order, per-tile detections merged.
    void tiled(const Image& padded, Result& result) {
        const int ph = padded.height, pw = padded.width, c = padded.channels;
        const TileLayout layout = tile_layout(ph, pw, tile_, overlap_, card_.stride);
        const int th = layout.tile_h, tw = layout.tile_w;
        result.tiles = layout.tiles.size();
        const std::vector<float> weights = gaussian_weights(th, tw);
        const size_t per_call = std::max<size_t>(
            1, std::min<size_t>(batch_, static_cast<size_t>(TILE_BATCH_PIXELS / (static_cast<long>(th) * tw))));
        std::vector<float> total, norm;
        std::vector<uint8_t> labels;   // end-to-end: each pixel from the tile owning it
        std::vector<std::vector<Detection>> per_tile;
        const size_t tile_pixels = static_cast<size_t>(th) * tw;
        for (size_t first = 0; first < layout.tiles.size(); first += per_call) {
            const size_t n = std::min(per_call, layout.tiles.size() - first);
            std::vector<float> batch(n * tile_pixels * c);
            for (size_t t = 0; t < n; ++t) {
                const Tile& tile = layout.tiles[first + t];
                for (int y = 0; y < th; ++y)
                    std::copy_n(padded.pixels.begin() +
                                    (static_cast<size_t>(tile.top + y) * pw + tile.left) * c,
                                static_cast<size_t>(tw) * c,
                                batch.begin() + (t * tile_pixels + static_cast<size_t>(y) * tw) * c);
            }
            const Outputs outputs = run(batch, static_cast<int>(n), th, tw);
            if (end_to_end_) {
                if (labels.empty()) labels.assign(static_cast<size_t>(ph) * pw, 0);
                const Tensor& tile_labels = output(outputs, "labels");
                for (size_t t = 0; t < n; ++t) {
                    const Tile& tile = layout.tiles[first + t];
                    for (int y = 0; y < th; ++y)
                        for (int x = 0; x < tw; ++x) {
                            const double cy = tile.top + y + 0.5, cx = tile.left + x + 0.5;
                            if (cy >= tile.y_lo && cy < tile.y_hi && cx >= tile.x_lo && cx < tile.x_hi)
                                labels[static_cast<size_t>(tile.top + y) * pw + tile.left + x] =
                                    static_cast<uint8_t>(tile_labels.values[t * tile_pixels +
                                                                            static_cast<size_t>(y) * tw + x]);
                        }
                    per_tile.push_back(read_end_to_end(outputs, static_cast<int64_t>(t), th, tw));
                }
                continue;
            }
            const Tensor& mask = output(outputs, "mask");
            const int k = static_cast<int>(mask.shape[3]);
            if (total.empty()) {
                total.assign(static_cast<size_t>(ph) * pw * k, 0.0f);
                norm.assign(static_cast<size_t>(ph) * pw, 0.0f);
                result.classes = k;
            }
            for (size_t t = 0; t < n; ++t) {
                const Tile& tile = layout.tiles[first + t];
                const float* probs = &mask.values[t * tile_pixels * k];
                for (int y = 0; y < th; ++y)
                    for (int x = 0; x < tw; ++x) {
                        const size_t at = static_cast<size_t>(tile.top + y) * pw + tile.left + x;
                        const float w = weights[static_cast<size_t>(y) * tw + x];
                        const float* p = probs + (static_cast<size_t>(y) * tw + x) * k;
                        for (int j = 0; j < k; ++j) total[at * k + j] += p[j] * w;
                        norm[at] += w;
                    }
            }
            if (heads_)
                for (auto& found : decode(outputs, th, tw, th, tw)) per_tile.push_back(std::move(found));
        }
        std::vector<uint8_t> full;
        if (end_to_end_) {
            full = std::move(labels);
            result.classes = card_.classes;
        } else {
            const int k = result.classes;
            for (size_t p = 0; p < norm.size(); ++p)
                for (int j = 0; j < k; ++j) total[p * k + j] = total[p * k + j] / norm[p];
            full = argmax_mask(total.data(), ph, pw, k);
        }
        result.mask = crop(full.data(), pw, 1, result.height, result.width);
        if (end_to_end_ || heads_) {
            result.has_detections = true;
            result.detections = merge_tile_detections(
                per_tile, layout, result.height, result.width, card_.post.iou_threshold,
                config_for(result.height, result.width).max_detections);
        }
    }
};

}  // namespace retinaunet
