import ArgumentParser
import SegEngine
import SegInference
import SegModel
import SegTraining

extension Upsampling: ExpressibleByArgument {}
extension Initialization: ExpressibleByArgument {}
extension NormLayer: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension ConvAlgorithm: ExpressibleByArgument {}
extension TestTimeAugmentation: ExpressibleByArgument {}

/// How train and bench run the 3x3 convolutions: the kernel and whether work is cut by image.
struct ConvOptions: ParsableArguments {
    @Option(help: "3x3 convolution kernel: auto (the fastest per layer), gemm (im2col + GEMM, with --deterministic's work split: an image's bits depend on nothing else, --threads included), winograd (F(2x2,3x3)) or winograd4 (F(4x4,3x3)).")
    var conv = ConvAlgorithm.auto
    @Flag(help: "Cut the convolutions' work by image, never by batch size: an encoder model computes each image with the same bits in any rank's share, so N ranks (with --sync-bn for BatchNorm) give the 1-rank gradient within the rounding of the sum over ranks.")
    var deterministic = false

    /// The standard policy with these choices (`gemm` always cuts work by image).
    var policy: ConvPolicy { ConvPolicy(algorithm: conv, perImageWork: deterministic || conv == .gemm) }

    /// For reports: "auto", "auto, deterministic", "gemm".
    var summary: String { conv.rawValue + (deterministic && conv != .gemm ? ", deterministic" : "") }
}

/// The flags every subcommand that builds a model shares.
struct ModelOptions: ParsableArguments {
    @Option(help: "Input image side in pixels (square images).")
    var imageSize = 128
    @Option(help: "Input channels (3 for RGB).")
    var inChannels = 3
    @Option(help: "Output classes: 1 = binary (sigmoid), >= 2 = softmax.")
    var classes = 1
    @Option(help: ArgumentHelp("Model family: unet (default) or deeplabv3plus (segmentation_models_pytorch's DeepLabV3Plus on --encoder, default resnet34; --image-size a multiple of --output-stride).",
                               valueName: "unet|deeplabv3plus"))
    var arch = "unet"
    @Option(help: ArgumentHelp("Encoder: none (the plain UNet below), or resnet18, resnet34, resnet50, mobilenet_v2: segmentation_models_pytorch's Unet on that encoder (its tensor names and decoder 256-128-64-32-16; --image-size a multiple of 32), or DeepLabV3+'s (--arch deeplabv3plus).",
                               discussion: "With an encoder, --base-channels, --depth, --upsample, --head-kernel and --init do not apply, and the norm is the encoder's BatchNorm (--norm group or none is refused)."))
    var encoder: String?
    @Option(help: "DeepLabV3+: the encoder's deepest features at 1/16 or 1/8 of the input (smp's encoder_output_stride; 8 dilates one more stage: slower, finer).")
    var outputStride = 16
    @Option(help: ArgumentHelp("DeepLabV3+: the dilations of ASPP's three 3x3 branches (smp's decoder_atrous_rates).", valueName: "r1,r2,r3"))
    var atrousRates = "12,24,36"
    @Option(help: "DeepLabV3+: dropout probability after ASPP's projection while training (smp's decoder_aspp_dropout; 0 turns it off).")
    var asppDropout: Float = 0.5
    @Option(help: "Channels of the first level; doubled at each level.")
    var baseChannels = 32
    @Option(help: "Encoder levels (each ends in a 2x2 max-pool).")
    var depth = 4
    @Option(help: "Normalisation after every 3x3 convolution: none, batch (BatchNorm: statistics of each rank's images) or group (GroupNorm, 32 groups or the largest count <= 32 dividing the channels: independent of the batch and the rank count). Default none.")
    var norm: NormLayer?
    @Flag(help: ArgumentHelp("Deprecated: the same as --norm batch.", visibility: .hidden))
    var batchnorm = false
    @Option(help: "Decoder upsampling: bilinear or transpose.")
    var upsample = Upsampling.bilinear
    @Option(help: "Head convolution kernel: 3 or 1.")
    var headKernel = 3
    @Option(name: .customLong("init"), help: "Weight initialisation: he-normal or glorot-uniform.")
    var initialization = Initialization.heNormal
    @Option(help: "Seed for initialisation and everything random.")
    var seed: UInt64 = 0
    @Option(help: "Worker threads (default: CPUs available / ranks on this node).")
    var threads: Int?

    var unetConfig: UNetConfig {
        var c = UNetConfig()
        c.inChannels = inChannels
        c.classes = classes
        c.baseChannels = baseChannels
        c.depth = depth
        c.norm = norm ?? (batchnorm ? .batch : .none)
        c.upsampling = upsample
        c.headKernel = headKernel
        c.initialization = initialization
        c.seed = seed
        return c
    }

    /// The encoder's name: --encoder, or the family's default (none for unet, resnet34 for
    /// deeplabv3plus, as smp's).
    var encoderName: String { encoder ?? (arch == "deeplabv3plus" ? EncoderKind.resnet34.rawValue : "none") }

    /// The model has a pretrained-style encoder ("encoder." tensors).
    var hasEncoder: Bool { encoderName != "none" }

    /// --atrous-rates as numbers (nil when they cannot be read).
    var atrousRateValues: [Int]? {
        let parts = atrousRates.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.filter { $0 != " " }) }
        return parts.contains(nil) ? nil : parts.map { $0! }
    }

    /// The model family and its configuration these flags describe.
    var architecture: Architecture {
        guard let kind = EncoderKind(rawValue: encoderName) else { return .unet(unetConfig) }
        if arch == "deeplabv3plus" {
            var d = DeepLabV3PlusConfig(encoder: kind, inChannels: inChannels, classes: classes)
            d.outputStride = outputStride
            d.atrousRates = atrousRateValues ?? []
            d.asppDropout = asppDropout
            d.seed = seed
            return .deepLabV3Plus(d)
        }
        var c = EncoderUNetConfig(encoder: kind, inChannels: inChannels, classes: classes)
        c.seed = seed
        return .encoderUNet(c)
    }

    func validate() throws {
        if let message = ThreadDefaults.problem(threads: threads) { throw ValidationError(message) }
        if imageSize < 1 { throw ValidationError("--image-size must be positive (got \(imageSize))") }
        if !Architecture.names.contains(arch) {
            throw ValidationError("--arch \(arch): not " + Architecture.names.joined(separator: " or "))
        }
        let encoders = EncoderKind.allCases.map(\.rawValue).joined(separator: ", ")
        if arch == "deeplabv3plus" && encoderName == "none" {
            throw ValidationError("--arch deeplabv3plus needs an encoder: --encoder \(encoders) (default resnet34)")
        }
        if encoderName != "none" && EncoderKind(rawValue: encoderName) == nil {
            throw ValidationError("--encoder \(encoderName): not " + (arch == "unet" ? "none, " : "") + encoders)
        }
        if arch == "deeplabv3plus" && atrousRateValues == nil {
            throw ValidationError("--atrous-rates \(atrousRates): not three whole numbers separated by commas")
        }
        if let norm, batchnorm && norm != .batch {
            throw ValidationError("--batchnorm (the old spelling of --norm batch) contradicts --norm \(norm.rawValue): give --norm alone")
        }
        if let norm, norm != .batch, hasEncoder {
            throw ValidationError("--norm \(norm.rawValue) does not apply with --encoder \(encoderName): its pretrained layers are BatchNorm (--norm batch, or leave --norm out)")
        }
        if let message = architecture.problem(imageSize: imageSize) { throw ValidationError(message) }
    }

    var threadCount: Int { threads ?? ThreadDefaults.threadsPerRank() }
}

/// Loss and optimizer flags.
struct TrainingOptions: ParsableArguments {
    @Flag(help: "SyncBatchNorm: BatchNorm's training statistics over every rank's batch (summed in the forward and backward passes), so that an N-rank step equals the 1-rank step; for models with BatchNorm (--norm batch, --encoder).")
    var syncBn = false
    @Option(help: "Loss: bce, dice, bce+dice, ce, weighted-ce, focal, tversky, focal-tversky, lovasz, or a weighted sum such as ce:1,dice:0.5 (default: bce for 1 class, ce otherwise).")
    var loss: String?
    @Option(help: "Class weights w0,w1,... (one per class) for ce (PyTorch's weight) and focal (alpha per class); with --classes 1 one value, BCE's pos_weight.")
    var classWeights: String?
    @Option(help: "Focal loss gamma (0: plain bce / ce).")
    var focalGamma = 2.0
    @Option(help: "Binary focal loss alpha: weight of the foreground, 1 - alpha of the background (default: none).")
    var focalAlpha: Double?
    @Option(help: "Tversky alpha, the weight of false positives.")
    var tverskyAlpha = 0.3
    @Option(help: "Tversky beta, the weight of false negatives.")
    var tverskyBeta = 0.7
    @Option(help: "Focal Tversky exponent: (1 - Tversky index)^gamma per class.")
    var tverskyGamma = 0.75
    @Option(help: "Optimizer: sgd, adam, adamw, radam.")
    var optimizer = OptimizerKind.adam
    @Option(help: "Learning rate.")
    var lr: Float = 1e-3
    @Option(help: "Weight decay (L2 for sgd/adam/radam, decoupled for adamw).")
    var weightDecay: Float = 0
    @Option(help: "SGD momentum.")
    var momentum: Float = 0.9
    @Flag(help: "Nesterov momentum for SGD.")
    var nesterov = false
    @Option(help: "Clip gradients to this global L2 norm.")
    var clipNorm: Float?
    @Option(help: "Images per step, over all ranks (the global batch).")
    var batchSize = 8
    @Option(help: "Images per step on each rank (PyTorch DDP's per-process batch): the global batch is this x ranks; overrides --batch-size.")
    var batchPerRank: Int?
    @Option(help: "Under mpirun: sum gradients in buckets of this many MiB while backward runs (0: one sum after backward).")
    var bucketMb = 1.0

    /// These options with the global batch fixed for `ranks` ranks (--batch-per-rank).
    func resolved(ranks: Int) -> TrainingOptions {
        var copy = self
        if let b = batchPerRank { copy.batchSize = b * ranks }
        return copy
    }

    /// Applies --bucket-mb to a data-parallel step.
    /// --sync-bn needs a model with BatchNorm.
    func validateSyncBn(_ model: ModelOptions) throws {
        if syncBn && !model.hasEncoder && model.unetConfig.norm != .batch {
            throw ValidationError("--sync-bn synchronises BatchNorm, but this model has none: add --norm batch or use --encoder")
        }
    }

    func configure(_ step: DataParallelStep) {
        step.overlap = bucketMb > 0
        step.bucketFloats = max(1, Int(bucketMb * 1024 * 1024 / 4))
    }

    /// The loss these flags describe (--loss, --class-weights, --focal-*, --tversky-*); a one-line
    /// error naming the flag for a value that cannot be read (`validate` reports the rest).
    func lossConfig(classes: Int) throws -> LossConfig {
        var components = [LossComponent(classes == 1 ? .bce : .ce, 1)]
        if let loss {
            switch LossConfig.parseComponents(loss) {
            case .success(let parsed): components = parsed
            case .failure(let error): throw ValidationError(error.description)
            }
        }
        var config = LossConfig(components: components)
        if let text = classWeights {
            config.classWeights = try text.split(separator: ",", omittingEmptySubsequences: false).map {
                guard let value = Double(String($0.filter { $0 != " " })) else {
                    throw ValidationError("--class-weights: '\($0)' is not a number (write w0,w1,...)")
                }
                return value
            }
        }
        config.focalGamma = focalGamma
        config.focalAlpha = focalAlpha
        (config.tverskyAlpha, config.tverskyBeta, config.tverskyGamma) = (tverskyAlpha, tverskyBeta, tverskyGamma)
        return config
    }

    var optimizerConfig: OptimizerConfig {
        var c = OptimizerConfig(kind: optimizer)
        c.momentum = momentum
        c.nesterov = nesterov
        c.weightDecay = weightDecay
        c.clipNorm = clipNorm
        return c
    }

    func validate(classes: Int) throws {
        // Upper bounds keep the arithmetic on them exact; what fits in memory is checked later.
        if !(1...(1 << 24)).contains(batchSize) { throw ValidationError("--batch-size must be 1...\(1 << 24) (got \(batchSize))") }
        if let b = batchPerRank, !(1...(1 << 24)).contains(b) {
            throw ValidationError("--batch-per-rank must be 1...\(1 << 24) (got \(b))")
        }
        if !(bucketMb >= 0) || bucketMb > 4096 { throw ValidationError("--bucket-mb must be in 0...4096 (got \(bucketMb))") }
        if !(lr > 0) || !lr.isFinite { throw ValidationError("--lr must be a positive number (got \(lr))") }
        if weightDecay < 0 || !weightDecay.isFinite { throw ValidationError("--weight-decay must be >= 0 (got \(weightDecay))") }
        if let c = clipNorm, !(c > 0) { throw ValidationError("--clip-norm must be positive (got \(c))") }
        if let message = OptimizerConfig.validate(optimizerConfig, learningRate: lr) { throw ValidationError(message) }
        if let message = LossFunction.validate(try lossConfig(classes: classes), classes: classes) {
            throw ValidationError(message)
        }
    }
}
