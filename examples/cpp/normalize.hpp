// The card's `normalization` section applied to raw pixels before padding, exactly as
// retinaunet_deploy/normalization.py `normalize` does for every Python runtime:
//
//   global (in_graph true): y = x; the graph normalises (its `preprocess` layer)
//   zscore: y = (x - mean(x)) / (std(x) if std(x) >= 1e-8 else 1), per image and channel;
//           with nonzero_mask, mean and std over the pixels where any channel is nonzero,
//           and y = 0 elsewhere (nnU-Net's use_mask_for_norm)
//   ct:     y = (min(max(x, clip_low), clip_high) - mean) / std (nnU-Net's CTNormalization)
//
// mean and std are population statistics computed in double, the result stored as float.
// The statistics are of the whole image: normalise before padding and tiling, never a tile.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "image_io.hpp"

namespace retinaunet {

constexpr double NORMALIZE_EPSILON = 1e-8;  // normalization.EPSILON: a constant image

struct Normalization {
    std::string scheme = "global";  // "global", "zscore" or "ct"
    bool in_graph = true;           // the graph normalises: raw pixels go in
    double mean = 0, std = 1;       // ct: of the training foreground (raw units)
    double clip_low = 0, clip_high = 0;  // ct only
    bool nonzero_mask = false;      // zscore only
};

// `image` normalised in place (its pixels become the graph's float input, bits = 32).
inline void normalize(Image& image, const Normalization& n) {
    if (n.in_graph) return;
    const size_t channels = static_cast<size_t>(image.channels);
    const size_t pixels = image.pixels.size() / channels;
    std::vector<float>& v = image.pixels;
    image.bits = 32;
    if (n.scheme == "ct") {
        for (float& x : v)
            x = static_cast<float>((std::min(std::max(static_cast<double>(x), n.clip_low),
                                             n.clip_high) - n.mean) / n.std);
        return;
    }
    std::vector<char> inside(pixels, 1);
    if (n.nonzero_mask)
        for (size_t p = 0; p < pixels; ++p) {
            inside[p] = 0;
            for (size_t c = 0; c < channels; ++c) inside[p] |= v[p * channels + c] != 0.0f;
        }
    for (size_t c = 0; c < channels; ++c) {
        double sum = 0, count = 0;
        for (size_t p = 0; p < pixels; ++p)
            if (inside[p]) { sum += v[p * channels + c]; count += 1; }
        const double mean = count ? sum / count : 0.0;
        double squares = 0;
        for (size_t p = 0; p < pixels; ++p)
            if (inside[p]) {
                const double d = v[p * channels + c] - mean;
                squares += d * d;
            }
        double std = count ? std::sqrt(squares / count) : 1.0;
        if (std < NORMALIZE_EPSILON) std = 1.0;
        for (size_t p = 0; p < pixels; ++p) {
            float& x = v[p * channels + c];
            x = inside[p] ? static_cast<float>((x - mean) / std) : 0.0f;
        }
    }
}

}  // namespace retinaunet
