// torchvision's ResNet as smp's ResNetEncoder uses it (issue #16): the stem conv1 7x7/2 + bn1 + ReLU,
// maxpool 3x3/2, then layer1..layer4 of BasicBlocks (resnet18, resnet34) or Bottlenecks (resnet50,
// expansion 4), the first block of layer2..4 with stride 2 (in the 3x3 conv) and every block whose
// stride or width changes with a downsample branch (1x1 conv with that stride + BN). No avgpool or fc.
//
// Tensor names, under "encoder.": conv1, bn1, layer{1-4}.{block}.conv{1,2[,3]}, .bn{1,2[,3]},
// .downsample.0 (conv), .downsample.1 (BN).
//
// Output stride 16 or 8 (DeepLabV3+, smp's make_dilated): every convolution of a stage whose stride
// would exceed it (layer4 for 16; layer3 and layer4 for 8) runs at stride 1 with dilation
// stage stride / output stride and padding (k / 2) * dilation, the downsample branch's 1x1 included.

enum ResNetBlock { case basic, bottleneck }

/// The encoder's features for the decoder, from the finest: the stem's output (1/2 of the input,
/// 64 channels), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32), or no coarser than
/// `outputStride`. `widthDivisor` > 1 narrows every width (tests only).
func buildResNetEncoder(_ graph: inout LayerGraph, blocks: [Int], block: ResNetBlock, widthDivisor: Int = 1,
                        outputStride: Int = 32) -> [Int] {
    let p = "encoder"
    graph.convInit = .heNormalFanOut
    var x = graph.conv("\(p).conv1", 0, out: max(1, 64 / widthDivisor), kernel: 7, stride: 2, padding: 3)
    x = graph.batchNorm("\(p).bn1", x, relu: true)
    var features = [x]
    x = graph.maxPool("\(p).maxpool", x)
    let expansion = block == .basic ? 1 : 4
    for (stage, count) in blocks.enumerated() {
        let width = max(1, (64 << stage) / widthDivisor)
        let stageStride = 4 << stage
        let dilation = max(1, stageStride / outputStride)
        for b in 0..<count {
            let name = "\(p).layer\(stage + 1).\(b)"
            let stride = stage > 0 && b == 0 && dilation == 1 ? 2 : 1
            var y: Int
            switch block {
            case .basic:
                y = graph.conv("\(name).conv1", x, out: width, kernel: 3, stride: stride, padding: dilation, dilation: dilation)
                y = graph.batchNorm("\(name).bn1", y, relu: true)
                y = graph.conv("\(name).conv2", y, out: width, kernel: 3, padding: dilation, dilation: dilation)
                y = graph.batchNorm("\(name).bn2", y, relu: false)
            case .bottleneck:
                y = graph.conv("\(name).conv1", x, out: width, kernel: 1)
                y = graph.batchNorm("\(name).bn1", y, relu: true)
                y = graph.conv("\(name).conv2", y, out: width, kernel: 3, stride: stride, padding: dilation, dilation: dilation)
                y = graph.batchNorm("\(name).bn2", y, relu: true)
                y = graph.conv("\(name).conv3", y, out: width * expansion, kernel: 1)
                y = graph.batchNorm("\(name).bn3", y, relu: false)
            }
            // After the main path, as torchvision registers it (the state dict's order).
            var identity = x
            if (stage > 0 && b == 0) || graph.channels[x] != width * expansion {
                let d = graph.conv("\(name).downsample.0", x, out: width * expansion, kernel: 1, stride: stride)
                identity = graph.batchNorm("\(name).downsample.1", d, relu: false)
            }
            x = graph.add("\(name).add", y, identity, relu: true)
        }
        features.append(x)
    }
    return features
}
