// Exercises image_io.hpp without TensorRT (run by tests/test_cpp_example.py):
//   io_selftest IMAGE.pgm PIXELS_OUT.f32 PROBS.f32 H W K MASK_OUT.pgm
// writes the PGM's pixels as float32 and the argmax mask of PROBS as a PGM;
//   io_selftest pad IMAGE.pgm STRIDE MIN_SIZE PADDED_OUT.f32 CROPPED_OUT.f32
// writes the image padded as the engine takes it ("H W" on stdout) and that padded
// buffer cropped back.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "image_io.hpp"

int pad_mode(char** argv) {
    const retinaunet::Image image = retinaunet::read_pgm(argv[2]);
    const retinaunet::Image padded =
        retinaunet::pad_to_stride(image, std::stoi(argv[3]), std::stoi(argv[4]));
    std::ofstream(argv[5], std::ios::binary)
        .write(reinterpret_cast<const char*>(padded.pixels.data()),
               static_cast<std::streamsize>(padded.pixels.size() * sizeof(float)));
    const std::vector<float> back = retinaunet::crop(padded.pixels.data(), padded.width,
                                                     padded.channels, image.height, image.width);
    std::ofstream(argv[6], std::ios::binary)
        .write(reinterpret_cast<const char*>(back.data()),
               static_cast<std::streamsize>(back.size() * sizeof(float)));
    std::cout << padded.height << " " << padded.width << "\n";
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 7 && std::string(argv[1]) == "pad") {
        try {
            return pad_mode(argv);
        } catch (const std::exception& error) {
            std::cerr << "error: " << error.what() << "\n";
            return 1;
        }
    }
    if (argc != 8) {
        std::cerr << "usage: io_selftest IMAGE.pgm PIXELS_OUT.f32 PROBS.f32 H W K MASK.pgm\n";
        return 2;
    }
    try {
        const retinaunet::Image image = retinaunet::read_pgm(argv[1]);
        std::ofstream pixels(argv[2], std::ios::binary);
        pixels.write(reinterpret_cast<const char*>(image.pixels.data()),
                     static_cast<std::streamsize>(image.pixels.size() * sizeof(float)));
        const int h = std::stoi(argv[4]), w = std::stoi(argv[5]), k = std::stoi(argv[6]);
        const retinaunet::Image probs = retinaunet::read_raw_f32(argv[3], h, w, k);
        retinaunet::write_pgm(argv[7], retinaunet::argmax_mask(probs.pixels.data(), h, w, k), h, w);
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
