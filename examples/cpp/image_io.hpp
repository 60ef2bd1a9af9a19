// Image I/O for the RetinaUNet C++ example, following export/README.md's contract:
// the engine takes raw pixel values as float32 NHWC; the mask is argmax over the
// last axis of the `mask` output. No TensorRT or CUDA in this file, so it is
// compiled and tested on machines without a GPU (tests/test_cpp_example.py).
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace retinaunet {

struct Image {
    int height = 0;
    int width = 0;
    int channels = 0;
    std::vector<float> pixels;  // row-major HWC, raw pixel values (0..maxval)
    int bits = 32;              // 8 or 16 (an 8/16-bit PGM's pixels), 32 (raw float32)
};

// Next header token of a PNM file, skipping whitespace and '#' comments.
inline std::string pnm_token(std::istream& in) {
    std::string token;
    char c;
    while (in.get(c)) {
        if (c == '#') {
            std::string comment;
            std::getline(in, comment);
        } else if (std::isspace(static_cast<unsigned char>(c))) {
            if (!token.empty()) return token;
        } else {
            token += c;
        }
    }
    return token;
}

// A binary PGM (P5, greyscale, 8-bit or 16-bit big-endian) as float pixel values.
inline Image read_pgm(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    if (pnm_token(in) != "P5") throw std::runtime_error(path + ": not a binary PGM (P5)");
    Image image;
    int maxval = 0;
    try {
        image.width = std::stoi(pnm_token(in));
        image.height = std::stoi(pnm_token(in));
        maxval = std::stoi(pnm_token(in));
    } catch (const std::exception&) {
        throw std::runtime_error(path + ": corrupt PGM header");
    }
    if (image.width <= 0 || image.height <= 0 || maxval <= 0 || maxval > 65535)
        throw std::runtime_error(path + ": bad PGM size or maxval");
    // Other maxvals are ambiguous: readers such as PIL rescale them to 0..255, this app
    // would feed the stored values. Only the two full ranges say what the pixels are.
    if (maxval != 255 && maxval != 65535)
        throw std::runtime_error(path + ": PGM maxval " + std::to_string(maxval) + "; the app "
                                 "reads raw pixel values from 8-bit (maxval 255) or 16-bit "
                                 "(maxval 65535) PGMs: save it with one of those, values "
                                 "unscaled");
    image.channels = 1;
    image.bits = maxval > 255 ? 16 : 8;
    const size_t count = static_cast<size_t>(image.width) * image.height;
    const int bytes = maxval > 255 ? 2 : 1;
    std::vector<unsigned char> raw(count * bytes);
    if (!in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size())))
        throw std::runtime_error(path + ": truncated PGM data");
    image.pixels.resize(count);
    for (size_t i = 0; i < count; ++i)
        image.pixels[i] = bytes == 2 ? static_cast<float>((raw[2 * i] << 8) | raw[2 * i + 1])
                                     : static_cast<float>(raw[i]);
    return image;
}

// Raw little-endian float32 pixels, HWC, of a size the caller knows (the engine's input).
inline Image read_raw_f32(const std::string& path, int height, int width, int channels) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error(path + ": cannot open");
    Image image{height, width, channels, {}, 32};
    const size_t count = static_cast<size_t>(height) * width * channels;
    if (static_cast<size_t>(in.tellg()) != count * sizeof(float)) {
        std::ostringstream message;
        message << path << ": expected " << count * sizeof(float) << " bytes (" << height << "x"
                << width << "x" << channels << " float32), got " << in.tellg();
        throw std::runtime_error(message.str());
    }
    in.seekg(0);
    image.pixels.resize(count);
    in.read(reinterpret_cast<char*>(image.pixels.data()),
            static_cast<std::streamsize>(count * sizeof(float)));
    return image;
}

// Source index of pixel `i` of an axis of `n` pixels padded by mirroring: itself inside
// the image, beyond it reflected about the last and first pixel in turn, the edge pixel
// not repeated (numpy's "reflect"; n = 3 reads 0 1 2 1 0 1 2 ...).
inline int mirror_index(int i, int n) {
    if (n == 1) return 0;
    const int period = 2 * (n - 1), k = i % period;
    return k < n ? k : period - k;
}

// Pad at the bottom and right to (height, width) (each at least the image's) by
// mirroring the image there (numpy's "reflect": data.patches.pad_to, the one border
// padding of the toolkit, which the Python Predictor and training use).
inline Image pad_to(const Image& image, int height, int width) {
    Image out{std::max(height, image.height), std::max(width, image.width), image.channels, {},
              image.bits};
    out.pixels.resize(static_cast<size_t>(out.height) * out.width * out.channels);
    const size_t c = static_cast<size_t>(image.channels);
    for (int y = 0; y < out.height; ++y) {
        const size_t row = static_cast<size_t>(mirror_index(y, image.height)) * image.width;
        for (int x = 0; x < out.width; ++x)
            std::copy_n(image.pixels.begin() + (row + mirror_index(x, image.width)) * c, c,
                        out.pixels.begin() + (static_cast<size_t>(y) * out.width + x) * c);
    }
    return out;
}

// Pad at the bottom and right to a multiple of `stride`, and to at least `min_size` a
// side, by mirroring (`pad_to`): what the Python Predictor does before running.
inline Image pad_to_stride(const Image& image, int stride, int min_size) {
    auto padded_side = [&](int side) {
        return std::max(min_size, (side + stride - 1) / stride * stride);
    };
    return pad_to(image, padded_side(image.height), padded_side(image.width));
}

// The top-left (height, width) of a row-major (padded_height, padded_width, k) buffer:
// outputs of a padded input cropped back to the image.
template <typename T>
std::vector<T> crop(const T* data, int padded_width, int k, int height, int width) {
    std::vector<T> out(static_cast<size_t>(height) * width * k);
    for (int y = 0; y < height; ++y)
        std::copy_n(data + static_cast<size_t>(y) * padded_width * k,
                    static_cast<size_t>(width) * k, out.begin() + static_cast<size_t>(y) * width * k);
    return out;
}

// Class index per pixel: argmax over the last axis of (H, W, classes) probabilities.
inline std::vector<uint8_t> argmax_mask(const float* probabilities, int height, int width,
                                        int classes) {
    std::vector<uint8_t> mask(static_cast<size_t>(height) * width);
    for (size_t p = 0; p < mask.size(); ++p) {
        const float* row = probabilities + p * classes;
        int best = 0;
        for (int k = 1; k < classes; ++k)
            if (row[k] > row[best]) best = k;  // ties keep the lower class, as numpy does
        mask[p] = static_cast<uint8_t>(best);
    }
    return mask;
}

// Write `text` to `path` whole or not at all: a temporary file beside it, renamed over
// it once complete (a crash leaves the old file or none, never half of one).
inline void write_atomically(const std::string& path, const std::string& text) {
    const std::string temporary = path + ".partial";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) throw std::runtime_error(path + ": cannot write (check the folder exists and "
                                           "is writable)");
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        out.flush();
        if (!out) {
            std::remove(temporary.c_str());
            throw std::runtime_error(path + ": write failed (disk full?)");
        }
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
        std::remove(temporary.c_str());
        throw std::runtime_error(path + ": cannot write (rename failed)");
    }
}

// An 8-bit binary PGM; `scale` multiplies values so class indices are visible (0 keeps them).
inline void write_pgm(const std::string& path, const std::vector<uint8_t>& mask, int height,
                      int width, int scale = 1) {
    std::string text = "P5\n" + std::to_string(width) + " " + std::to_string(height) + "\n255\n";
    text.reserve(text.size() + mask.size());
    for (uint8_t value : mask) text.push_back(static_cast<char>(std::min(255, value * scale)));
    write_atomically(path, text);
}

}  // namespace retinaunet
