// What a trained model is, as kept in every checkpoint's state.json: the architecture family with
// its configuration, the training image size, and the input normalisation. `predict`, `evaluate`,
// `serve` and `resume` rebuild the model from it alone. A new family is a new case of
// `Architecture` (with its coding and `build`), not a fork of every command.
//
// On disk the UNet keeps the flat form older checkpoints have ("inChannels", "classes",
// "baseChannels", ...) plus "architecture": "unet"; a description without "architecture" is a UNet.
// A UNet on an encoder (issue #16) is "architecture": "unet" with "encoder": "resnet34" (...),
// "inChannels", "classes" and "decoderChannels"; one without "encoder" (or with "none") is the plain UNet.
// The plain UNet's normalisation is "norm": "none" | "batch" | "group" (issue #18); checkpoints
// written before it store "batchNorm": true / false, read as "batch" / "none".
// DeepLabV3+ (issue #17) is "architecture": "deeplabv3plus" with "encoder", "inChannels", "classes",
// "outputStride", "atrousRates", "asppDropout" and "decoderChannels" (one number).

import SegEngine

/// The model families segtrain builds.
public enum Architecture: Equatable, Sendable {
    case unet(UNetConfig)
    /// smp's Unet on a ResNet or MobileNetV2 encoder (issue #16).
    case encoderUNet(EncoderUNetConfig)
    /// smp's DeepLabV3Plus (issue #17).
    case deepLabV3Plus(DeepLabV3PlusConfig)

    /// The families' names (--arch, "architecture" in state.json).
    public static let names = ["unet", "deeplabv3plus"]

    /// The family's name in state.json ("architecture") and in messages.
    public var name: String {
        switch self {
        case .unet, .encoderUNet: return "unet"
        case .deepLabV3Plus: return "deeplabv3plus"
        }
    }

    public var inChannels: Int {
        switch self {
        case .unet(let c): return c.inChannels
        case .encoderUNet(let c): return c.inChannels
        case .deepLabV3Plus(let c): return c.inChannels
        }
    }

    public var classes: Int {
        switch self {
        case .unet(let c): return c.classes
        case .encoderUNet(let c): return c.classes
        case .deepLabV3Plus(let c): return c.classes
        }
    }

    /// A one-line reason the configuration cannot be built at `imageSize`, or nil.
    public func problem(imageSize: Int?) -> String? {
        switch self {
        case .unet(let c): return c.validate(imageSize: imageSize)
        case .encoderUNet(let c): return c.validate(imageSize: imageSize)
        case .deepLabV3Plus(let c): return c.validate(imageSize: imageSize)
        }
    }

    /// The model with its parameters initialised from the configuration's seed; `convPolicy`:
    /// the convolution algorithms and chunk sizes (bench's --conv).
    public func build(pool: WorkerPool, convPolicy: ConvPolicy = .standard) -> any SegmentationModel {
        switch self {
        case .unet(let c): return UNet(c, convPolicy: convPolicy, pool: pool)
        case .encoderUNet(let c): return GraphModel(c, convPolicy: convPolicy, pool: pool)
        case .deepLabV3Plus(let c): return GraphModel(c, convPolicy: convPolicy, pool: pool)
        }
    }

    /// Trainable parameters and buffers, before the model exists (for memory checks).
    public var estimatedParameterCounts: (parameters: Double, buffers: Double) {
        switch self {
        case .unet(let c): return c.estimatedParameterCounts
        case .encoderUNet(let c): return c.estimatedParameterCounts
        case .deepLabV3Plus(let c): return c.estimatedParameterCounts
        }
    }

    /// Bytes of activations, their gradients and scratch for one planned batch (an upper bound) of a
    /// model built with `convPolicy` (which sizes the convolutions' scratch).
    public func estimatedActivationBytes(batch: Int, imageSize: Int, threads: Int, convPolicy: ConvPolicy = .standard) -> Double {
        switch self {
        case .unet(let c):
            return c.estimatedActivationBytes(batch: batch, imageSize: imageSize, threads: threads, convPolicy: convPolicy)
        case .encoderUNet(let c):
            return c.estimatedActivationBytes(batch: batch, imageSize: imageSize, threads: threads, convPolicy: convPolicy)
        case .deepLabV3Plus(let c):
            return c.estimatedActivationBytes(batch: batch, imageSize: imageSize, threads: threads, convPolicy: convPolicy)
        }
    }
}

/// A state.json model description that cannot be read (an unknown family or setting).
public struct ModelDescriptionError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What a model needs to be rebuilt and fed as in training; kept in every checkpoint's state.json.
public struct ModelDescription: Equatable, Sendable {
    public var architecture: Architecture
    public var imageSize: Int
    /// Per-channel normalisation after x / 255 (nil: x / 255 only).
    public var mean: [Float]?
    public var std: [Float]?
    /// The mask value training ignored (`--ignore-index`); `evaluate` skips it too unless told
    /// otherwise. nil (also in older checkpoints): none.
    public var ignoreIndex: Int?
    /// The classes' names (`--class-names`, multi-class models): evaluate's columns and the
    /// report use them. nil (also in older checkpoints): the class indices.
    public var classNames: [String]?

    public init(_ architecture: Architecture, imageSize: Int, mean: [Float]? = nil, std: [Float]? = nil) {
        self.architecture = architecture
        self.imageSize = imageSize
        self.mean = mean
        self.std = std
    }

    public var inChannels: Int { architecture.inChannels }
    public var classes: Int { architecture.classes }

    /// Why the model cannot be built or fed as described (a damaged or hand-edited state.json), or nil.
    public var problem: String? {
        if let problem = architecture.problem(imageSize: imageSize) { return problem }
        if !(1...4).contains(inChannels) { return "model input has \(inChannels) channels; images have 1 to 4" }
        if !(1...255).contains(classes) { return "model has \(classes) classes; masks hold 1 to 255" }
        if (mean == nil) != (std == nil) { return "mean and std must be given together" }
        for (name, values) in [("mean", mean), ("std", std)] {
            if let values, values.count != inChannels || !values.allSatisfy(\.isFinite) {
                return "\(name) has \(values.count) values for \(inChannels) channels (or one not finite)"
            }
        }
        if let std, !std.allSatisfy({ $0 > 0 }) { return "std values must be positive" }
        return nil
    }

    /// The command-line flags that make this model, with their values ("--arch" first): a resumed
    /// run must give the same.
    public var flagValues: [(flag: String, value: String)] {
        var values = [("--arch", architecture.name), ("--image-size", "\(imageSize)")]
        switch architecture {
        case .unet(let u):
            values += [("--in-channels", "\(u.inChannels)"), ("--classes", "\(u.classes)"),
                       ("--base-channels", "\(u.baseChannels)"), ("--depth", "\(u.depth)"),
                       ("--norm", u.norm.rawValue), ("--upsample", u.upsampling.rawValue),
                       ("--head-kernel", "\(u.headKernel)")]
        case .encoderUNet(let e):
            values += [("--encoder", e.encoder.rawValue), ("--in-channels", "\(e.inChannels)"),
                       ("--classes", "\(e.classes)")]
        case .deepLabV3Plus(let d):
            values += [("--encoder", d.encoder.rawValue), ("--in-channels", "\(d.inChannels)"),
                       ("--classes", "\(d.classes)"), ("--output-stride", "\(d.outputStride)"),
                       ("--atrous-rates", d.atrousRates.map(String.init).joined(separator: ",")),
                       ("--aspp-dropout", "\(d.asppDropout)")]
        }
        return values
    }

    /// Bytes to build the model and run one image through it (parameters, their gradients, buffers
    /// and one image's activations): what `predict` needs at least.
    public func estimatedBytesForOneImage(threads: Int) -> Double {
        let counts = architecture.estimatedParameterCounts
        return (counts.parameters * 2 + counts.buffers) * 4
            + architecture.estimatedActivationBytes(batch: 1, imageSize: imageSize, threads: threads)
    }
}

extension ModelDescription: Codable {
    private enum Key: String, CodingKey {
        case architecture, imageSize, mean, std, ignoreIndex, classNames
        case inChannels, classes, baseChannels, depth, norm, batchNorm, upsampling, headKernel
        case encoder, decoderChannels
        case outputStride, atrousRates, asppDropout
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        imageSize = try c.decode(Int.self, forKey: .imageSize)
        mean = try c.decodeIfPresent([Float].self, forKey: .mean)
        std = try c.decodeIfPresent([Float].self, forKey: .std)
        ignoreIndex = try c.decodeIfPresent(Int.self, forKey: .ignoreIndex)
        let family = try c.decodeIfPresent(String.self, forKey: .architecture) ?? "unet"
        let encoderName = try c.decodeIfPresent(String.self, forKey: .encoder) ?? "none"
        func encoder() throws -> EncoderKind {
            guard let encoder = EncoderKind(rawValue: encoderName) else {
                throw ModelDescriptionError("unknown encoder \(encoderName) (this segtrain builds: "
                    + (family == "unet" ? "none, " : "") + EncoderKind.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            }
            return encoder
        }
        switch family {
        case "deeplabv3plus":
            var d = DeepLabV3PlusConfig(encoder: try encoder())
            d.inChannels = try c.decode(Int.self, forKey: .inChannels)
            d.classes = try c.decode(Int.self, forKey: .classes)
            d.outputStride = try c.decode(Int.self, forKey: .outputStride)
            d.atrousRates = try c.decode([Int].self, forKey: .atrousRates)
            d.asppDropout = try c.decode(Float.self, forKey: .asppDropout)
            d.decoderChannels = try c.decode(Int.self, forKey: .decoderChannels)
            architecture = .deepLabV3Plus(d)
        case "unet" where encoderName != "none":
            var e = EncoderUNetConfig(encoder: try encoder())
            e.inChannels = try c.decode(Int.self, forKey: .inChannels)
            e.classes = try c.decode(Int.self, forKey: .classes)
            e.decoderChannels = try c.decodeIfPresent([Int].self, forKey: .decoderChannels) ?? e.decoderChannels
            architecture = .encoderUNet(e)
        case "unet":
            var u = UNetConfig()
            u.inChannels = try c.decode(Int.self, forKey: .inChannels)
            u.classes = try c.decode(Int.self, forKey: .classes)
            u.baseChannels = try c.decode(Int.self, forKey: .baseChannels)
            u.depth = try c.decode(Int.self, forKey: .depth)
            if let name = try c.decodeIfPresent(String.self, forKey: .norm) {
                guard let norm = NormLayer(rawValue: name) else {
                    throw ModelDescriptionError("unknown norm \(name) (none, batch or group)")
                }
                u.norm = norm
            } else {
                u.norm = try c.decode(Bool.self, forKey: .batchNorm) ? .batch : .none  // before --norm
            }
            let upsampling = try c.decode(String.self, forKey: .upsampling)
            guard let up = Upsampling(rawValue: upsampling) else {
                throw ModelDescriptionError("unknown upsampling \(upsampling) (bilinear or transpose)")
            }
            u.upsampling = up
            u.headKernel = try c.decode(Int.self, forKey: .headKernel)
            architecture = .unet(u)
        default:
            throw ModelDescriptionError("unknown architecture \(family) (this segtrain builds: "
                                        + Architecture.names.joined(separator: ", ") + ")")
        }
        classNames = try c.decodeIfPresent([String].self, forKey: .classNames)
        if let names = classNames, names.count != architecture.classes {
            throw ModelDescriptionError("\(names.count) class names for \(architecture.classes) classes")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(architecture.name, forKey: .architecture)
        try c.encode(imageSize, forKey: .imageSize)
        try c.encodeIfPresent(mean, forKey: .mean)
        try c.encodeIfPresent(std, forKey: .std)
        try c.encodeIfPresent(ignoreIndex, forKey: .ignoreIndex)
        try c.encodeIfPresent(classNames, forKey: .classNames)
        switch architecture {
        case .unet(let u):
            try c.encode(u.inChannels, forKey: .inChannels)
            try c.encode(u.classes, forKey: .classes)
            try c.encode(u.baseChannels, forKey: .baseChannels)
            try c.encode(u.depth, forKey: .depth)
            try c.encode(u.norm.rawValue, forKey: .norm)
            try c.encode(u.upsampling.rawValue, forKey: .upsampling)
            try c.encode(u.headKernel, forKey: .headKernel)
        case .encoderUNet(let e):
            try c.encode(e.encoder.rawValue, forKey: .encoder)
            try c.encode(e.inChannels, forKey: .inChannels)
            try c.encode(e.classes, forKey: .classes)
            try c.encode(e.decoderChannels, forKey: .decoderChannels)
        case .deepLabV3Plus(let d):
            try c.encode(d.encoder.rawValue, forKey: .encoder)
            try c.encode(d.inChannels, forKey: .inChannels)
            try c.encode(d.classes, forKey: .classes)
            try c.encode(d.outputStride, forKey: .outputStride)
            try c.encode(d.atrousRates, forKey: .atrousRates)
            try c.encode(d.asppDropout, forKey: .asppDropout)
            try c.encode(d.decoderChannels, forKey: .decoderChannels)
        }
    }
}
