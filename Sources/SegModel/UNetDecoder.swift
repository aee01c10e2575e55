// smp 0.6's UnetDecoder with its defaults (issue #16) and the segmentation head: five blocks, block i
// upsamples its input x2 (nearest), concatenates [upsampled, skip] (the encoder feature of that
// resolution; the last block has none), then conv1 and conv2, each Conv2d 3x3 (no bias) + BN + ReLU.
// The head is a 3x3 Conv2d with bias to the classes, no activation.
//
// Tensor names: decoder.blocks.{i}.conv{1,2}.0.weight (conv), decoder.blocks.{i}.conv{1,2}.1.* (BN),
// segmentation_head.0.{weight,bias}.

/// The decoder and head on the encoder's `features` (finest first, as the encoder builders return
/// them); returns the logits tensor.
func buildUNetDecoder(_ graph: inout LayerGraph, features: [Int], channels: [Int], classes: Int) -> Int {
    precondition(channels.count == features.count, "one decoder block per encoder feature")
    graph.convInit = .heUniformFanIn
    let skips = Array(features.dropLast().reversed())
    var x = features[features.count - 1]
    for (i, out) in channels.enumerated() {
        let name = "decoder.blocks.\(i)"
        x = graph.upsampleNearest("\(name).upsample", x)
        if i < skips.count { x = graph.concat("\(name).concat", [x, skips[i]]) }
        for conv in ["conv1", "conv2"] {
            x = graph.conv("\(name).\(conv).0", x, out: out, kernel: 3, padding: 1)
            x = graph.batchNorm("\(name).\(conv).1", x, relu: true)
        }
    }
    return graph.conv("segmentation_head.0", x, out: classes, kernel: 3, padding: 1, bias: true,
                      initRule: .glorotUniform)
}
