// --encoder-weights: an ImageNet classification checkpoint in torchvision's naming (conv1, bn1,
// layer1.0.conv1, ... for ResNets; features.N... for MobileNetV2), as safetensors
// (scripts/convert-weights.py makes one from a .pth), loaded into an encoder UNet's encoder. smp's
// encoders are torchvision's networks without the classifier, so tensor X of the file is
// "encoder.X" of the model; the classifier (fc.*, classifier.*) is ignored. Every encoder tensor
// must be in the file with its shape, and the file may hold nothing else. A first convolution of
// 3 input channels is adapted to --in-channels as smp's patch_first_conv does: summed over the
// channels for 1, else repeated channel by channel and scaled by 3 / C.

import SegEngine

public enum EncoderWeights {
    /// The classifier's tensors a classification checkpoint holds beside the encoder.
    static let classifierPrefixes = ["fc.", "classifier."]
    /// The encoders' first convolutions (torchvision names), adapted to other input channels.
    static let firstConvolutions = ["conv1.weight", "features.0.0.weight"]

    /// Loads `path` into the store's "encoder.*" tensors; returns how many were loaded. Errors
    /// name the file and the tensor (missing, unexpected, of another shape or type).
    @discardableResult
    public static func load(_ path: String, into store: ParameterStore) throws -> Int {
        let encoder = Safetensors.items(of: store, gradients: false).filter { $0.name.hasPrefix("encoder.") }
        guard !encoder.isEmpty else { throw SafetensorsError(path, "the model has no encoder (give --encoder)") }
        let file = try SafetensorsFile(path: path)
        let names = Set(encoder.map { String($0.name.dropFirst("encoder.".count)) })
        if let extra = file.entries.keys.sorted().first(where: { key in
            !names.contains(key) && !classifierPrefixes.contains { key.hasPrefix($0) }
        }) {
            throw SafetensorsError(path, "unexpected tensor \(extra): not a torchvision checkpoint of this --encoder")
        }
        for item in encoder {
            let name = String(item.name.dropFirst("encoder.".count))
            if firstConvolutions.contains(name), let entry = file.entries[name], entry.shape.count == 4,
               entry.shape[1] == 3, item.shape.count == 4, item.shape[1] != 3, Array(entry.shape[2...]) == Array(item.shape[2...]),
               entry.shape[0] == item.shape[0] {
                try readAdapted(file, name, into: item.values, rgb: entry.shape)
            } else {
                try file.read(name, into: item.values, shape: item.shape)
            }
        }
        return encoder.count
    }

    /// The first convolution's RGB weights (O, 3, k, k) into (O, C, k, k): C = 1 sums the three
    /// input channels; C > 1 takes channel i from RGB channel i mod 3, scaled by 3 / C.
    static func readAdapted(_ file: SafetensorsFile, _ name: String, into destination: Tensor, rgb shape: [Int]) throws {
        let rgb = OwnedTensor(Shape(shape[0], 3, shape[2], shape[3]))
        try file.read(name, into: rgb.tensor, shape: shape)
        let c = destination.c, plane = shape[2] * shape[3]
        for o in 0..<shape[0] {
            for i in 0..<c {
                let out = destination.plane(o, i)
                for p in 0..<plane {
                    out[p] = c == 1 ? rgb.tensor.plane(o, 0)[p] + rgb.tensor.plane(o, 1)[p] + rgb.tensor.plane(o, 2)[p]
                        : rgb.tensor.plane(o, i % 3)[p] * (3 / Float(c))
                }
            }
        }
    }
}
