// DeepLabV3+ as segmentation_models_pytorch 0.6 builds it (issue #17): smp.DeepLabV3Plus(encoder_name,
// encoder_weights=None, encoder_output_stride=16, decoder_channels=256, decoder_atrous_rates=(12, 24,
// 36), decoder_aspp_separable=True, decoder_aspp_dropout=0.5, classes=K, upsampling=4).
//
// The encoder (ResNetEncoder.swift, MobileNetV2Encoder.swift) runs its last stages dilated so that its
// deepest features are at 1/16 (or 1/8) of the input. The decoder:
//   ASPP on the deepest features, five branches concatenated:
//     convs.0  1x1 conv + BN + ReLU
//     convs.1-3  separable 3x3 at dilation r (depthwise 3x3 dilation r, pointwise 1x1) + BN + ReLU
//     convs.4  image pooling: global average, 1x1 conv + BN + ReLU, bilinear back to the map's size
//              (align_corners=False: from 1 x 1 a broadcast)
//     project  1x1 conv (5C -> C) + BN + ReLU + Dropout(p)
//   aspp.1 separable 3x3 + aspp.2 BN + ReLU, then `up`: bilinear x4 (x2 at output stride 8),
//   align_corners=True, to 1/4 of the input;
//   block1: the encoder's 1/4 features (smp's features[2]) through 1x1 conv to 48 + BN + ReLU;
//   [upsampled ASPP, block1] -> block2: separable 3x3 to C + BN + ReLU.
// The head: 1x1 conv with bias to the classes, bilinear x4 with align_corners=True.
//
// Tensor names: decoder.aspp.0.convs.0.{0,1}, decoder.aspp.0.convs.{1,2,3}.0.{0,1} (depthwise,
// pointwise) and .1 (BN), decoder.aspp.0.convs.4.{1,2}, decoder.aspp.0.project.{0,1},
// decoder.aspp.1.{0,1}, decoder.aspp.2, decoder.block1.{0,1}, decoder.block2.0.{0,1},
// decoder.block2.1, segmentation_head.0. smp initialises the decoder's convolutions (depthwise ones
// included) He uniform over fan_in and the head Glorot uniform.

import SegEngine

public struct DeepLabV3PlusConfig: Equatable, Sendable {
    public var encoder: EncoderKind
    public var inChannels = 3
    /// 1: one sigmoid output (binary); >= 2: softmax over classes.
    public var classes = 1
    /// The encoder's deepest features at 1/outputStride of the input: 16 or 8.
    public var outputStride = 16
    /// The dilations of ASPP's three separable 3x3 branches.
    public var atrousRates = [12, 24, 36]
    /// Dropout after ASPP's projection in training (0: none).
    public var asppDropout: Float = 0.5
    /// ASPP's and the decoder's channels (smp's decoder_channels).
    public var decoderChannels = 256
    /// Seeds the initialisation (torchvision's rules for the encoder, smp's for decoder and head).
    public var seed: UInt64 = 0
    /// Channels of the 1/4 features' projection (48, "proposed by the authors"); smaller in tests.
    var highResChannels = 48
    /// Divides every encoder width (never below 1 channel), as EncoderUNetConfig's; tests only.
    var widthDivisor = 1

    public init(encoder: EncoderKind, inChannels: Int = 3, classes: Int = 1) {
        self.encoder = encoder
        self.inChannels = inChannels
        self.classes = classes
    }

    /// A one-line error naming the flag at fault, or nil when the configuration is valid.
    public func validate(imageSize: Int? = nil) -> String? {
        if inChannels < 1 { return "--in-channels must be at least 1 (got \(inChannels))" }
        if classes < 1 { return "--classes must be at least 1 (got \(classes))" }
        if let problem = ModelLimits.problem(inChannels: inChannels, classes: classes) { return problem }
        if outputStride != 16 && outputStride != 8 { return "--output-stride must be 16 or 8 (got \(outputStride))" }
        if atrousRates.count != 3 || !atrousRates.allSatisfy({ (1...256).contains($0) }) {
            return "--atrous-rates needs three dilations of 1 to 256 (got \(atrousRates.map(String.init).joined(separator: ",")))"
        }
        if !(asppDropout >= 0 && asppDropout < 1) { return "--aspp-dropout must be in [0, 1) (got \(asppDropout))" }
        if !(1...4096).contains(decoderChannels) { return "the decoder needs 1 to 4096 channels (got \(decoderChannels))" }
        if widthDivisor < 1 || highResChannels < 1 { return "the width divisor and the 1/4 projection must be at least 1" }
        if let size = imageSize {
            if size < outputStride || size % outputStride != 0 {
                return "--image-size \(size) does not suit --arch deeplabv3plus --output-stride \(outputStride): "
                    + "it must be a multiple of \(outputStride)"
            }
            if size > 16384 { return "--image-size must be at most 16384 (got \(size))" }
        }
        return nil
    }

    /// The layers with their parameters (no memory is allocated); the logits are the last tensor.
    func graph() -> LayerGraph {
        var graph = LayerGraph(inChannels: inChannels)
        let features: [Int], d = widthDivisor, s = outputStride
        switch encoder {
        case .resnet18: features = buildResNetEncoder(&graph, blocks: [2, 2, 2, 2], block: .basic, widthDivisor: d, outputStride: s)
        case .resnet34: features = buildResNetEncoder(&graph, blocks: [3, 4, 6, 3], block: .basic, widthDivisor: d, outputStride: s)
        case .resnet50: features = buildResNetEncoder(&graph, blocks: [3, 4, 6, 3], block: .bottleneck, widthDivisor: d, outputStride: s)
        case .mobilenetV2: features = buildMobileNetV2Encoder(&graph, widthDivisor: d, outputStride: s)
        }
        _ = buildDeepLabV3PlusDecoder(&graph, features: features, config: self)
        return graph
    }
}

extension DeepLabV3PlusConfig: LayerGraphFamily {
    var sizeMultiple: Int { outputStride }
}

extension EncoderUNetConfig: LayerGraphFamily {
    var sizeMultiple: Int { Self.sizeMultiple }
}

/// smp's DeepLabV3PlusDecoder and head on the encoder's `features` (finest first: 1/2, 1/4, ...,
/// deepest); returns the logits tensor.
func buildDeepLabV3PlusDecoder(_ graph: inout LayerGraph, features: [Int], config: DeepLabV3PlusConfig) -> Int {
    precondition(features.count == 5, "DeepLabV3+ reads the encoder's 1/4 and deepest features")
    graph.convInit = .heUniformFanIn
    let c = config.decoderChannels, deep = features[4]
    let a = "decoder.aspp.0"
    var y = graph.conv("\(a).convs.0.0", deep, out: c, kernel: 1)
    var branches = [graph.batchNorm("\(a).convs.0.1", y, relu: true)]
    for (i, rate) in config.atrousRates.enumerated() {
        let name = "\(a).convs.\(i + 1)"
        y = graph.depthwise("\(name).0.0", deep, stride: 1, dilation: rate)
        y = graph.conv("\(name).0.1", y, out: c, kernel: 1)
        branches.append(graph.batchNorm("\(name).1", y, relu: true))
    }
    y = graph.globalAveragePool("\(a).convs.4.0", deep)
    y = graph.conv("\(a).convs.4.1", y, out: c, kernel: 1)
    y = graph.batchNorm("\(a).convs.4.2", y, relu: true)
    branches.append(graph.resize("\(a).convs.4.resize", y, to: .like(deep), alignCorners: false))
    y = graph.concat("\(a).concat", branches)
    y = graph.conv("\(a).project.0", y, out: c, kernel: 1)
    y = graph.batchNorm("\(a).project.1", y, relu: true)
    if config.asppDropout > 0 { y = graph.dropout("\(a).project.3", y, probability: config.asppDropout) }
    y = graph.depthwise("decoder.aspp.1.0", y, stride: 1)
    y = graph.conv("decoder.aspp.1.1", y, out: c, kernel: 1)
    y = graph.batchNorm("decoder.aspp.2", y, relu: true)
    y = graph.resize("decoder.up", y, to: .scale(config.outputStride == 16 ? 4 : 2), alignCorners: true)
    var high = graph.conv("decoder.block1.0", features[1], out: config.highResChannels, kernel: 1)
    high = graph.batchNorm("decoder.block1.1", high, relu: true)
    y = graph.concat("decoder.concat", [y, high])
    y = graph.depthwise("decoder.block2.0.0", y, stride: 1)
    y = graph.conv("decoder.block2.0.1", y, out: c, kernel: 1)
    y = graph.batchNorm("decoder.block2.1", y, relu: true)
    y = graph.conv("segmentation_head.0", y, out: config.classes, kernel: 1, bias: true, initRule: .glorotUniform)
    return graph.resize("segmentation_head.1", y, to: .scale(4), alignCorners: true)
}
