import SegEngine
@testable import SegModel

/// Small models of every family, and the plain UNet with each of its optional ops, for tests that
/// run two plans of one model side by side (InferencePlanTests, TrainingMemoryTests).
struct SmallModel {
    let name: String
    let size: Int
    let batch: Int
    /// An encoder model (one that can be frozen).
    let hasEncoder: Bool
    /// A fresh model, the same weights every call.
    let make: () -> any SegmentationModel

    /// The plain UNet: every norm and upsampling (at 20 px: 20 -> 10 -> 5 -> 2, so the deepest
    /// upsampling (4) is padded to the skip (5)), and base 16 at 64 px (Winograd layers).
    static var plainUNets: [SmallModel] {
        var models: [SmallModel] = []
        for norm in NormLayer.allCases {
            for upsampling in Upsampling.allCases {
                var config = UNetConfig()
                config.baseChannels = 8
                config.depth = 3
                config.norm = norm
                config.upsampling = upsampling
                config.classes = norm == .group ? 3 : 1
                config.seed = 5
                models.append(SmallModel(name: "UNet norm \(norm) upsampling \(upsampling)", size: 20, batch: 2, hasEncoder: false) {
                    UNet(config, pool: WorkerPool(threads: 2))
                })
            }
        }
        var wide = UNetConfig()
        wide.baseChannels = 16
        wide.depth = 2
        models.append(SmallModel(name: "UNet base 16 (Winograd layers)", size: 64, batch: 1, hasEncoder: false) {
            UNet(wide, pool: WorkerPool(threads: 2))
        })
        return models
    }

    /// Encoder UNets (resnet18, resnet50, mobilenet_v2) and DeepLabV3+ (output stride 16 and 8),
    /// narrowed, at 64 px.
    static var graphModels: [SmallModel] {
        var models: [SmallModel] = []
        for encoder in [EncoderKind.resnet18, .resnet50, .mobilenetV2] {
            var config = EncoderUNetConfig(encoder: encoder, classes: 2)
            config.widthDivisor = 16
            config.decoderChannels = [16, 8, 8, 4, 4]
            config.seed = 7
            models.append(SmallModel(name: "encoder UNet \(encoder.rawValue)", size: 64, batch: 2, hasEncoder: true) {
                GraphModel(config, pool: WorkerPool(threads: 2))
            })
        }
        for (encoder, outputStride) in [(EncoderKind.resnet18, 16), (.mobilenetV2, 8)] {
            var config = DeepLabV3PlusConfig(encoder: encoder, classes: 2)
            config.widthDivisor = 16
            config.decoderChannels = 8
            config.highResChannels = 4
            config.outputStride = outputStride
            config.seed = 7
            models.append(SmallModel(name: "DeepLabV3+ \(encoder.rawValue) os \(outputStride)", size: 64, batch: 2,
                                     hasEncoder: false) {
                GraphModel(config, pool: WorkerPool(threads: 2))
            })
        }
        return models
    }
}
