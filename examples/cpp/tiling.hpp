// Sliding-window layout for images too large to run whole, exactly as
// retinaunet_deploy/runtime/tiling.py lays it out: tiles of one size, stride multiples
// placed on stride multiples, neighbours overlapping by at least `overlap` x tile; mask
// probabilities blended with Gaussian weights (sigma = tile / 8, as nnU-Net does); each
// tile's detections kept where the box centre lies in the tile's core (the part of the
// image closer to its centre than to its neighbours'), then one NMS over all of them.
// No runtime library: predict.hpp runs a backend over it.
#pragma once

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "detections.hpp"

namespace retinaunet {

// Tile length and start offsets covering `length` (a stride multiple) along one axis
// (tiling.axis_layout). Python's round() rounds halves to even; so does nearbyint.
inline std::pair<int, std::vector<int>> axis_layout(int length, int tile, double overlap,
                                                    int stride) {
    if (length <= tile) return {length, {0}};
    if (!(overlap >= 0 && overlap < 1))
        throw std::runtime_error("--overlap must be in [0, 1), got " + std::to_string(overlap));
    int count = static_cast<int>(std::ceil((length - overlap * tile) / ((1 - overlap) * tile)));
    int size = std::min(
        tile, stride * static_cast<int>(std::ceil(
                           static_cast<double>(length) / (count - overlap * (count - 1)) / stride)));
    while (true) {
        std::set<int> unique;
        for (int i = 0; i < count; ++i)
            unique.insert(static_cast<int>(std::nearbyint(
                              static_cast<double>(length - size) * i / (count - 1) / stride)) *
                          stride);
        const std::vector<int> starts(unique.begin(), unique.end());
        int widest = 0;
        for (size_t i = 1; i < starts.size(); ++i) widest = std::max(widest, starts[i] - starts[i - 1]);
        if (widest <= std::max(static_cast<double>(stride), size * (1 - overlap))) return {size, starts};
        if (size + stride <= tile)
            size += stride;
        else
            ++count;
    }
}

// Per tile along one axis, the [lo, hi) part of the image it owns (tiling.core_bounds).
inline std::vector<std::pair<double, double>> core_bounds(const std::vector<int>& starts, int size,
                                                          int length) {
    std::vector<double> centres;
    for (int s : starts) centres.push_back(s + size / 2.0);
    std::vector<std::pair<double, double>> bounds;
    for (size_t i = 0; i < starts.size(); ++i) {
        const double lo = i == 0 ? 0.0 : (centres[i - 1] + centres[i]) / 2;
        const double hi = i + 1 == starts.size() ? static_cast<double>(length)
                                                 : (centres[i] + centres[i + 1]) / 2;
        bounds.emplace_back(lo, hi);
    }
    return bounds;
}

struct Tile {
    int top, left;                     // origin in the padded image
    double y_lo, y_hi, x_lo, x_hi;     // the core it owns
};

struct TileLayout {
    int height, width;                 // the padded image
    int tile_h, tile_w;                // every tile
    std::vector<Tile> tiles;           // rows first
};

// The tiles of a padded (height, width) image; one tile when it is no larger than `tile`.
inline TileLayout tile_layout(int height, int width, int tile, double overlap, int stride) {
    const auto [tile_h, tops] = axis_layout(height, tile, overlap, stride);
    const auto [tile_w, lefts] = axis_layout(width, tile, overlap, stride);
    const auto rows = core_bounds(tops, tile_h, height), cols = core_bounds(lefts, tile_w, width);
    TileLayout layout{height, width, tile_h, tile_w, {}};
    for (size_t i = 0; i < tops.size(); ++i)
        for (size_t j = 0; j < lefts.size(); ++j)
            layout.tiles.push_back({tops[i], lefts[j], rows[i].first, rows[i].second,
                                    cols[j].first, cols[j].second});
    return layout;
}

// (height, width) Gaussian centred on the tile, peak 1, floored at 1e-3, float32
// (tiling.gaussian_weights: computed in double, then rounded, as numpy does).
inline std::vector<float> gaussian_weights(int height, int width, double sigma_fraction = 0.125) {
    auto axis = [&](int n) {
        std::vector<double> values(n);
        const double sigma = sigma_fraction * n;
        for (int i = 0; i < n; ++i) {
            const double x = i - (n - 1) / 2.0;
            values[i] = std::exp(-(x * x) / (2 * sigma * sigma));
        }
        return values;
    };
    const std::vector<double> ay = axis(height), ax = axis(width);
    const double peak = *std::max_element(ay.begin(), ay.end()) *
                        *std::max_element(ax.begin(), ax.end());
    std::vector<float> weights(static_cast<size_t>(height) * width);
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x)
            weights[static_cast<size_t>(y) * width + x] =
                static_cast<float>(std::max(ay[y] * ax[x] / peak, 1e-3));
    return weights;
}

// One image's detections from its tiles' (tile coordinates) detections
// (tiling.merge_tile_detections): shifted to the image, kept where the box centre lies
// in the tile's core, clipped to the (height, width) image (empty boxes dropped), one per-class NMS,
// capped.
inline std::vector<Detection> merge_tile_detections(
    const std::vector<std::vector<Detection>>& per_tile, const TileLayout& layout, int height,
    int width, float iou_threshold, int max_detections) {
    std::vector<Detection> owned;
    for (size_t t = 0; t < per_tile.size(); ++t) {
        const Tile& tile = layout.tiles[t];
        const float top = static_cast<float>(tile.top), left = static_cast<float>(tile.left);
        for (Detection d : per_tile[t]) {
            d.y1 += top; d.y2 += top; d.x1 += left; d.x2 += left;
            const double cy = (d.y1 + d.y2) / 2, cx = (d.x1 + d.x2) / 2;  // float32, as numpy
            if (!(cy >= tile.y_lo && cy < tile.y_hi && cx >= tile.x_lo && cx < tile.x_hi))
                continue;
            d.y1 = std::clamp(d.y1, 0.0f, static_cast<float>(height));
            d.y2 = std::clamp(d.y2, 0.0f, static_cast<float>(height));
            d.x1 = std::clamp(d.x1, 0.0f, static_cast<float>(width));
            d.x2 = std::clamp(d.x2, 0.0f, static_cast<float>(width));
            // A box in the padding beyond the image is empty once clipped: dropped.
            if (d.y2 > d.y1 && d.x2 > d.x1) owned.push_back(d);
        }
    }
    std::vector<Detection> kept = batched_nms(owned, iou_threshold);
    if (kept.size() > static_cast<size_t>(max_detections)) kept.resize(max_detections);
    return kept;
}

}  // namespace retinaunet
