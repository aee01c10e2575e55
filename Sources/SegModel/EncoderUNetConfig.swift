// The configuration of a UNet on a pretrained-style encoder (issue #16), as segmentation_models_pytorch
// 0.6 builds it: smp.Unet(encoder_name, encoder_weights=None, in_channels=3, classes=K) with the
// default decoder (channels 256-128-64-32-16, BatchNorm, nearest upsampling) and 3x3 head.
// Parameter counts with one class: resnet18 14,328,209; resnet34 24,436,369; resnet50 32,521,105;
// mobilenet_v2 6,628,945 (smp's own, checked by EncoderUNetTests).

import SegEngine

/// The encoders segtrain builds, by smp's encoder names.
public enum EncoderKind: String, CaseIterable, Sendable {
    case resnet18, resnet34, resnet50
    case mobilenetV2 = "mobilenet_v2"
}

public struct EncoderUNetConfig: Equatable, Sendable {
    public var encoder: EncoderKind
    public var inChannels = 3
    /// 1: one sigmoid output (binary); >= 2: softmax over classes.
    public var classes = 1
    /// Output channels of the five decoder blocks, deepest first (smp's decoder_channels).
    public var decoderChannels = [256, 128, 64, 32, 16]
    /// Seeds the initialisation (torchvision's rules for the encoder, smp's for decoder and head).
    public var seed: UInt64 = 0
    /// Divides every encoder width (never below 1 channel): the same wiring with far fewer weights,
    /// for the finite-difference tests. smp's models are 1; not stored in descriptions.
    var widthDivisor = 1

    public init(encoder: EncoderKind, inChannels: Int = 3, classes: Int = 1) {
        self.encoder = encoder
        self.inChannels = inChannels
        self.classes = classes
    }

    /// The encoder downsamples 5 times: image sides must be multiples of 32 (smp refuses others too).
    public static let sizeMultiple = 32

    /// A one-line error naming the flag at fault, or nil when the configuration is valid.
    public func validate(imageSize: Int? = nil) -> String? {
        if inChannels < 1 { return "--in-channels must be at least 1 (got \(inChannels))" }
        if classes < 1 { return "--classes must be at least 1 (got \(classes))" }
        if let problem = ModelLimits.problem(inChannels: inChannels, classes: classes) { return problem }
        if widthDivisor < 1 { return "the width divisor must be at least 1 (got \(widthDivisor))" }
        if decoderChannels.count != 5 || !decoderChannels.allSatisfy({ (1...4096).contains($0) }) {
            return "the decoder needs 5 block widths of 1 to 4096 channels (got \(decoderChannels))"
        }
        if let size = imageSize {
            if size < EncoderUNetConfig.sizeMultiple || size % EncoderUNetConfig.sizeMultiple != 0 {
                return "--image-size \(size) does not suit --encoder \(encoder.rawValue): it must be a multiple of 32"
            }
            if size > 16384 { return "--image-size must be at most 16384 (got \(size))" }
        }
        return nil
    }

    /// The layers with their parameters (no memory is allocated); the logits are the last tensor.
    func graph() -> LayerGraph {
        var graph = LayerGraph(inChannels: inChannels)
        let features: [Int], d = widthDivisor
        switch encoder {
        case .resnet18: features = buildResNetEncoder(&graph, blocks: [2, 2, 2, 2], block: .basic, widthDivisor: d)
        case .resnet34: features = buildResNetEncoder(&graph, blocks: [3, 4, 6, 3], block: .basic, widthDivisor: d)
        case .resnet50: features = buildResNetEncoder(&graph, blocks: [3, 4, 6, 3], block: .bottleneck, widthDivisor: d)
        case .mobilenetV2: features = buildMobileNetV2Encoder(&graph, widthDivisor: d)
        }
        _ = buildUNetDecoder(&graph, features: features, channels: decoderChannels, classes: classes)
        return graph
    }
}
