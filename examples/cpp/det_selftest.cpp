// Exercises detections.hpp without TensorRT (run by tests/test_cpp_example.py):
//   det_selftest CARD.json LOGITS.f32 DELTAS.f32 N H W C ANCHORS_OUT.f32 DETECTIONS_OUT.txt
// reads the anchor and postprocess settings from the model card, writes the anchors and,
// per detection, one line "image y1 x1 y2 x2 score class"; prints "stride STRIDE".
#include <cstdio>
#include <iostream>

#include "card.hpp"
#include "image_io.hpp"

int main(int argc, char** argv) {
    if (argc != 10) {
        std::cerr << "usage: det_selftest CARD LOGITS DELTAS N H W C ANCHORS_OUT DETS_OUT\n";
        return 2;
    }
    try {
        retinaunet::AnchorConfig anchors_config;
        retinaunet::DetectionConfig post;
        retinaunet::read_card(argv[1], anchors_config, post);
        std::cout << "stride " << retinaunet::read_stride(argv[1]) << "\n";
        const int n = std::stoi(argv[4]), h = std::stoi(argv[5]), w = std::stoi(argv[6]),
                  c = std::stoi(argv[7]);
        const std::vector<float> anchors = retinaunet::generate_anchors(anchors_config, h, w);
        const int a = static_cast<int>(anchors.size() / 4);
        const retinaunet::Image logits = retinaunet::read_raw_f32(argv[2], n, a, c);
        const retinaunet::Image deltas = retinaunet::read_raw_f32(argv[3], n, a, 4);
        std::ofstream(argv[8], std::ios::binary)
            .write(reinterpret_cast<const char*>(anchors.data()),
                   static_cast<std::streamsize>(anchors.size() * sizeof(float)));
        std::ofstream out(argv[9]);
        out.precision(9);
        for (int image = 0; image < n; ++image) {
            const auto found = retinaunet::decode_detections(
                &logits.pixels[static_cast<size_t>(image) * a * c],
                &deltas.pixels[static_cast<size_t>(image) * a * 4], anchors, c, h, w, post);
            for (const auto& d : found)
                out << image << " " << d.y1 << " " << d.x1 << " " << d.y2 << " " << d.x2 << " "
                    << d.score << " " << d.cls << "\n";
        }
    } catch (const std::exception& error) {
        std::cerr << "error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
