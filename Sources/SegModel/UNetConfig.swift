import SegEngine

public enum Upsampling: String, CaseIterable, Sendable {
    case bilinear, transpose
}

/// The normalisation after every 3x3 convolution of the plain UNet (`--norm`).
/// - none: the convolutions keep their bias (the Keras UNet).
/// - batch: BatchNorm2d (batch statistics in training, running statistics in evaluation); the
///   convolutions then have no bias. Its statistics are each rank's: with few images per rank
///   they are noisy and an N-rank run is not the 1-rank run.
/// - group: GroupNorm with `groupNormGroups(channels:)` groups (32, or the largest count <= 32 that
///   divides the channels) and per-channel weight and bias; no running statistics, nothing depends
///   on the batch, so every rank count computes the same gradient. The convolutions have no bias.
public enum NormLayer: String, CaseIterable, Sendable {
    case none, batch, group
}

public enum Initialization: String, CaseIterable, Sendable {
    case heNormal = "he-normal"
    case glorotUniform = "glorot-uniform"
}

/// The UNet's shape. The defaults are the Keras car-segmentation UNet: 3 input channels, one
/// sigmoid class, 32-64-128-256 channels, no normalisation, bilinear upsampling, 3x3 head —
/// 3,717,121 parameters.
public struct UNetConfig: Equatable, Sendable {
    public var inChannels = 3
    /// 1: one sigmoid output (binary); >= 2: softmax over classes.
    public var classes = 1
    public var baseChannels = 32
    /// Encoder levels, each two 3x3 conv + ReLU followed by a 2x2 max-pool.
    public var depth = 4
    public var norm = NormLayer.none
    public var upsampling = Upsampling.bilinear
    public var headKernel = 3
    public var initialization = Initialization.heNormal
    public var seed: UInt64 = 0

    public init() {}

    /// Channels at encoder level i (0 = full resolution).
    public func channels(level i: Int) -> Int { baseChannels << i }

    /// The smallest image side the model accepts: every pooling must leave at least one pixel.
    public var minimumImageSize: Int { 1 << depth }

    /// A one-line error naming the flag at fault, or nil when the configuration is valid.
    public func validate(imageSize: Int? = nil) -> String? {
        if inChannels < 1 { return "--in-channels must be at least 1 (got \(inChannels))" }
        if classes < 1 { return "--classes must be at least 1 (got \(classes))" }
        if let problem = ModelLimits.problem(inChannels: inChannels, classes: classes) { return problem }
        if baseChannels < 1 { return "--base-channels must be at least 1 (got \(baseChannels))" }
        if depth < 1 { return "--depth must be at least 1 (got \(depth))" }
        if depth > 8 { return "--depth must be at most 8 (got \(depth))" }
        if baseChannels << (depth - 1) > 1 << 16 {
            return "--base-channels \(baseChannels) with --depth \(depth) gives more than 65536 channels"
        }
        if headKernel != 1 && headKernel != 3 { return "--head-kernel must be 1 or 3 (got \(headKernel))" }
        if let size = imageSize {
            if size < minimumImageSize {
                return "--image-size \(size) is too small for --depth \(depth): at least \(minimumImageSize) px are needed"
            }
            if size > 16384 { return "--image-size must be at most 16384 (got \(size))" }
        }
        return nil
    }
}

/// Bounds shared by every model family, checked before anything is allocated (a flag such as
/// `--classes 99999999` otherwise asks for gigabytes of parameters and dies by the OOM killer).
enum ModelLimits {
    /// Masks hold 8-bit class indices (docs/DATA.md), so no data set has more classes.
    static let maximumClasses = 256
    /// Far above any image format's channels (1-4), low enough that the first layer stays small.
    static let maximumInChannels = 4096

    static func problem(inChannels: Int, classes: Int) -> String? {
        if inChannels > maximumInChannels {
            return "--in-channels must be at most \(maximumInChannels) (got \(inChannels))"
        }
        if classes > maximumClasses {
            return "--classes must be at most \(maximumClasses): masks hold 8-bit class indices (got \(classes))"
        }
        return nil
    }
}
