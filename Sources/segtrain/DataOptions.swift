import ArgumentParser
import Foundation
import SegData
import SegDistributed
import SegEngine
import SegTraining
#if canImport(Glibc)
import Glibc
#endif

extension DatasetLayout: ExpressibleByArgument {}
extension SampleSpec.Geometry: ExpressibleByArgument {}
extension SyntheticSet: ExpressibleByArgument {}

enum ScanDepth: String, ExpressibleByArgument, CaseIterable {
    case full, header
}

/// How a dataset folder is laid out (`train`, `bench`, `evaluate`).
struct LayoutOptions: ParsableArguments {
    @Option(help: "Dataset layout: pairs (images + masks folders), pet (Oxford-IIIT Pet), list (a list file).")
    var layout: DatasetLayout?
    @Option(help: "pairs/list: the images folder, relative to --data.")
    var imagesDir = "images"
    @Option(help: "pairs/list: the masks folder, relative to --data.")
    var masksDir = "masks"
    @Option(help: "pairs/list: appended to an image's stem to name its mask (e.g. _mask).")
    var maskSuffix = ""
    @Flag(help: "pet: pet vs the rest (1 class) instead of pet/background/border (3 classes).")
    var petBinary = false

    func datasetOptions(layout: DatasetLayout) -> DatasetOptions {
        var o = DatasetOptions()
        o.layout = layout
        o.imagesDir = imagesDir
        o.masksDir = masksDir
        o.maskSuffix = maskSuffix
        o.petBinary = petBinary
        return o
    }
}

/// Where the training data is and how samples are made from it (`train`, `bench`).
struct DataOptions: ParsableArguments {
    @Option(help: "Dataset folder (default: the built-in synthetic dataset).")
    var data: String?
    @OptionGroup var files: LayoutOptions
    @Option(help: "list: file naming the training pairs (relative to --data).")
    var trainList: String?
    @Option(help: "list: file naming the validation pairs.")
    var valList: String?
    @Option(help: "Fraction of --data held out for validation, chosen from --seed (default 0.1; 0: none).")
    var valSplit: Double?
    @Option(help: "A separate validation dataset folder, in the same layout.")
    var valData: String?
    @Option(help: "resize: the whole image to --image-size; crop: a random --image-size window (validation: the centre).")
    var geometry = SampleSpec.Geometry.resize
    @Option(help: "Per-channel mean subtracted after x/255, e.g. 0.485,0.456,0.406, or 'imagenet' (with --std).")
    var mean: String?
    @Option(help: "Per-channel standard deviation, e.g. 0.229,0.224,0.225, or 'imagenet'.")
    var std: String?
    @Option(help: "A mask value that is no class, e.g. 255: those pixels count in neither the loss (value, gradient, pixel counts) nor the metrics, and pad crops and augmented masks.")
    var ignoreIndex: Int?
    @Option(help: "Names of the classes, comma-separated (multi-class runs): metrics.csv's per-class columns val_iou_NAME and val_dice_NAME, and confusion.csv (default: the class indices).")
    var classNames: String?
    @Flag(help: "Turn every augmentation off.")
    var noAugment = false
    @Option(help: ArgumentHelp("Augmentation settings as JSON, inline or a .json file; keys not given keep their defaults.",
                               discussion: "Keys (docs/DATA.md): hflipProbability, vflipProbability, rotateProbability, "
                                   + "rotateDegrees, scaleProbability, scaleMin, scaleMax, shiftProbability, shiftFraction, "
                                   + "brightnessContrastProbability, brightnessLimit, contrastLimit, grayscaleProbability, "
                                   + "channelShuffleProbability, blurProbability, blurSigmaMin, blurSigmaMax."))
    var augment: String?
    @Flag(help: "Keep decoded, resized samples in memory after the first epoch.")
    var cache = false
    @Flag(help: "Leave out invalid files (a warning each) instead of stopping with an error.")
    var skipInvalid = false
    @Option(help: "Before training, check every file: full (decode all) or header (sizes only).")
    var scan = ScanDepth.full
    @Option(help: "Threads decoding and augmenting the next batches (default 2, 0: none).")
    var loaderThreads = 2

    var layoutValue: DatasetLayout { files.layout ?? (trainList != nil ? .list : .pairs) }
    var petBinary: Bool { files.petBinary }

    func validate(classes: Int, inChannels: Int) throws {
        if let message = labels(classes: classes).validate() { throw ValidationError(message) }
        if let text = classNames {
            let names = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if classes < 2 { throw ValidationError("--class-names is for multi-class runs (--classes 2 or more)") }
            if names.count != classes { throw ValidationError("--class-names has \(names.count) names for \(classes) classes") }
            if let bad = names.first(where: { $0.isEmpty || !$0.allSatisfy { $0.isLetter || $0.isNumber || "_-.".contains($0) } }) {
                throw ValidationError("--class-names: '\(bad)' is not a name of letters, digits, '_', '-' or '.'")
            }
            if Set(names).count != names.count { throw ValidationError("--class-names: a name appears twice") }
        }
        guard data != nil else {
            for (flag, set) in [("--layout", files.layout != nil), ("--train-list", trainList != nil), ("--val-list", valList != nil),
                                ("--val-split", valSplit != nil), ("--val-data", valData != nil), ("--cache", cache),
                                ("--skip-invalid", skipInvalid), ("--mean", mean != nil), ("--std", std != nil),
                                ("--augment", augment != nil)] where set {
                throw ValidationError("\(flag) needs --data (without it, training uses the built-in synthetic dataset)")
            }
            return
        }
        if classes > 255 { throw ValidationError("--classes must be at most 255 with --data (masks are 8-bit; got \(classes))") }
        if let s = valSplit, !(s >= 0 && s < 1) { throw ValidationError("--val-split must be in [0, 1) (got \(s))") }
        if valSplit != nil && (valData != nil || valList != nil) {
            throw ValidationError("--val-split and \(valData != nil ? "--val-data" : "--val-list") both choose the validation set; give one")
        }
        if layoutValue == .list && trainList == nil { throw ValidationError("--layout list needs --train-list FILE") }
        if layoutValue != .list && (trainList != nil || valList != nil) {
            throw ValidationError("--train-list/--val-list need --layout list (got --layout \(layoutValue.rawValue))")
        }
        if layoutValue == .pet {
            let expected = petBinary ? 1 : 3
            if classes != expected {
                throw ValidationError("--layout pet\(petBinary ? " --pet-binary" : "") has \(expected) class(es): pass --classes \(expected) (got \(classes))")
            }
        } else if petBinary {
            throw ValidationError("--pet-binary needs --layout pet")
        }
        if !(1...4).contains(inChannels) { throw ValidationError("--in-channels must be 1...4 with --data (got \(inChannels))") }
        _ = try normalization(channels: inChannels)
        if augment != nil && noAugment { throw ValidationError("--augment and --no-augment contradict each other") }
        _ = try augmentConfig()
        if loaderThreads < 0 || loaderThreads > 64 { throw ValidationError("--loader-threads must be 0...64 (got \(loaderThreads))") }
    }

    /// (mean, std) per channel, or nil for x / 255 only. `imagenetByDefault` (--encoder-weights):
    /// without --mean/--std, a 3-channel dataset gets ImageNet's, which the weights were trained with.
    func normalization(channels: Int, imagenetByDefault: Bool = false) throws -> (mean: [Float], std: [Float])? {
        if imagenetByDefault && mean == nil && std == nil && data != nil && channels == 3 {
            return (Normalization.imagenetMean, Normalization.imagenetStd)
        }
        do { return try Normalization.parse(mean: mean, std: std, channels: channels) } catch {
            throw ValidationError("\(error)")
        }
    }

    /// --augment's settings over the defaults; .none with --no-augment.
    func augmentConfig() throws -> AugmentConfig {
        if noAugment { return .none }
        guard let augment else { return .default }
        do { return try AugmentConfig.parse(augment) } catch { throw ValidationError("--augment: \(error)") }
    }

    var datasetOptions: DatasetOptions { files.datasetOptions(layout: layoutValue) }

    /// --class-names as a list, or nil.
    var classNameList: [String]? { classNames.map { $0.split(separator: ",").map(String.init) } }

    /// The one label spec of the run: the loss, the metrics and the samples take it.
    func labels(classes: Int) -> LabelSpec { LabelSpec(classes: classes, ignoreIndex: ignoreIndex) }

    func spec(imageSize: Int, inChannels: Int, classes: Int, seed: UInt64, imagenetByDefault: Bool = false) throws -> SampleSpec {
        var spec = SampleSpec(imageSize: imageSize, inChannels: inChannels, classes: classes)
        spec.labels = labels(classes: classes)
        spec.maskEncoding = datasetOptions.maskEncoding
        spec.geometry = geometry
        if let n = try normalization(channels: inChannels, imagenetByDefault: imagenetByDefault) { spec.mean = n.mean; spec.std = n.std }
        spec.augment = try augmentConfig()
        spec.seed = seed
        return spec
    }
}

/// The training and validation listings every rank agrees on, every file checked.
struct LoadedData {
    var train: DatasetListing
    var validation: DatasetListing
}

extension DataOptions {
    /// Rank 0 lists the dataset and every rank receives and checks the lists and the files
    /// (`SharedListing`). Errors reach every rank as `SharedError`.
    func load(root: String, collectives: Collectives, pool: WorkerPool, spec: SampleSpec, seed: UInt64) throws -> LoadedData {
        let received = try SharedListing.receive(roots: [root, validationRoot(root)], collectives: collectives) {
            let (train, validation) = try listings(root: root, seed: seed)
            return [train, validation]
        }
        let checked = try SharedListing.checkFiles(received, spec: spec, full: scan == .full, skipInvalid: skipInvalid,
                                                   collectives: collectives, pool: pool) {
            fputs("segtrain: warning: skipped: \($0)\n", stderr)
        }
        if checked.skipped > 0 && collectives.rank == 0 {
            print("--skip-invalid: left out \(checked.skipped) of \(received[0].count + received[1].count) samples")
        }
        if checked.listings[0].count == 0 { throw SharedError(description: "--data \(root): no valid training samples left") }
        return LoadedData(train: checked.listings[0], validation: checked.listings[1])
    }

    func validationRoot(_ root: String) -> String { valData ?? root }

    /// Rank 0's listing of the training and validation samples.
    func listings(root: String, seed: UInt64) throws -> (DatasetListing, DatasetListing) {
        try DatasetScanner.trainAndValidation(root: root, options: datasetOptions, trainList: trainList, valList: valList,
                                              valData: valData, valSplit: valSplit, seed: seed,
                                              notes: { print("note: \($0)") })
    }
}
