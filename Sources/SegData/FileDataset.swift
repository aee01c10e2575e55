// Turning a dataset listing into training samples: decode an image and its mask, map the mask's
// values to class indices, check that they fit together, resize (or crop), augment and write them
// as floats into a batch. Also the pre-training check of every file (`check`).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SegEngine

/// How samples are made from files: everything but the files themselves.
public struct SampleSpec: Sendable {
    public enum Geometry: String, Sendable, CaseIterable {
        /// Resize the whole image to imageSize x imageSize (antialiased bilinear; masks nearest).
        case resize
        /// Training: a random imageSize x imageSize window (padded when the image is smaller);
        /// validation: the centre window.
        case crop
    }

    public var imageSize: Int
    /// 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA.
    public var inChannels: Int
    /// 1: binary (sigmoid); >= 2: softmax classes.
    public var classes: Int
    /// A mask value kept as is (not a class; the loss and the metrics skip it), e.g. 255. When
    /// set, it also fills what a crop pads and what an augmentation brings in from outside the
    /// mask, so that no made-up pixel is trained on (see `load`).
    public var ignoreValue: UInt8?
    public var maskEncoding: MaskEncoding = .classIndices
    public var geometry: Geometry = .resize
    /// Per-channel normalisation after x / 255: (x - mean) / std; nil: x / 255 only.
    public var mean: [Float]?
    public var std: [Float]?
    /// Training augmentation (validation samples are never augmented).
    public var augment: AugmentConfig = .none
    /// Seeds augmentation and random crops, with the epoch and the sample's index.
    public var seed: UInt64 = 0
    public var limits = ImageLimits()

    public init(imageSize: Int, inChannels: Int, classes: Int) {
        self.imageSize = imageSize; self.inChannels = inChannels; self.classes = classes
    }

    var pixelFormat: PixelFormat { PixelFormat(rawValue: inChannels) ?? .rgb }

    /// The masks' labels (classes and ignore value) as the loss and the metrics take them.
    public var labels: LabelSpec {
        get { LabelSpec(classes: classes, ignoreIndex: ignoreValue.map(Int.init)) }
        set { classes = newValue.classes; ignoreValue = newValue.ignoreValue }
    }
}

/// The samples of one listing (the training set, or the validation set).
public final class FileDataset: @unchecked Sendable {
    public let listing: DatasetListing
    public let spec: SampleSpec
    /// Keep decoded samples (resized in `.resize` geometry, whole in `.crop`) in memory.
    public let caching: Bool
    /// The spec's augmentation, made once (its settings are checked when it is made).
    private let augmenter: Augmenter
    private var cache: [Int: (image: Image8, mask: Image8)] = [:]
    private var cacheLock = pthread_mutex_t()

    public init(listing: DatasetListing, spec: SampleSpec, cache: Bool = false) {
        self.listing = listing
        self.spec = spec
        caching = cache
        augmenter = Augmenter(spec.augment)
        pthread_mutex_init(&cacheLock, nil)
    }

    deinit { pthread_mutex_destroy(&cacheLock) }

    public var count: Int { listing.count }

    // MARK: Decoding

    /// Sample `i`: the image in the spec's pixel format and the mask as class indices, checked to
    /// be the same size as stored; with `.resize` geometry a JPEG image may come at a reduced
    /// scale (see `ImageFile.read(_:as:atLeast:)`). Errors name the file and the reason.
    public func decode(_ i: Int) throws -> (image: Image8, mask: Image8) {
        let imagePath = listing.imagePath(i), maskPath = listing.maskPath(i)
        // Resized anyway: a JPEG may be decoded at a reduced scale (still at least the output size).
        let s = spec.imageSize
        let image: Image8, width: Int, height: Int
        if spec.geometry == .resize {
            (image, width, height) = try ImageFile.read(imagePath, as: spec.pixelFormat, atLeast: (s, s), limits: spec.limits)
        } else {
            image = try ImageFile.read(imagePath, as: spec.pixelFormat, limits: spec.limits)
            (width, height) = (image.width, image.height)
        }
        let mask = try decodeMask(maskPath)
        guard width == mask.width && height == mask.height else {
            throw ImageFileError(maskPath, "mask is \(mask.width)x\(mask.height) but its image \(imagePath) is \(width)x\(height)")
        }
        return (image, mask)
    }

    /// A mask file's values as class indices (see `MaskEncoding`).
    public func decodeMask(_ path: String) throws -> Image8 {
        switch spec.maskEncoding {
        case .classIndices:
            if spec.classes == 1 {
                return try ImageFile.readClassMask(path, classes: 1, ignoreValue: spec.ignoreValue, limits: spec.limits)
            }
            var mask = try ImageFile.readMask(path, limits: spec.limits)
            try FileDataset.mapClassIndices(&mask, classes: spec.classes, ignoreValue: spec.ignoreValue, name: path)
            return mask
        case .petTrimap(let binary):
            var mask = try ImageFile.readMask(path, limits: spec.limits)
            try FileDataset.mapTrimap(&mask, binary: binary, name: path)
            return mask
        }
    }

    /// classes >= 2: values must be below `classes` (or the ignore value); a 0/255 mask (nothing
    /// else in it) is binary and becomes {0, 1}.
    static func mapClassIndices(_ mask: inout Image8, classes: Int, ignoreValue: UInt8?, name: String) throws {
        if classes >= 256 { return }  // every 8-bit value is a class
        var present = [Bool](repeating: false, count: 256)
        for v in mask.pixels { present[Int(v)] = true }
        let outOfRange = (classes..<256).filter { present[$0] && $0 != ignoreValue.map(Int.init) }
        if outOfRange.isEmpty { return }
        if outOfRange == [255] && (1..<255).allSatisfy({ !present[$0] }) {
            for i in mask.pixels.indices where mask.pixels[i] == 255 { mask.pixels[i] = 1 }
            return
        }
        let v = UInt8(outOfRange[0])
        let at = mask.pixels.firstIndex(of: v)!
        throw ImageFileError(name, "mask value \(v) at (\(at % mask.width), \(at / mask.width)) is not a class index below \(classes)"
                             + (ignoreValue == nil ? "" : " or the ignore value \(ignoreValue!)"))
    }

    /// Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border -> 0, 1, 2; binary: pet 1, rest 0.
    static func mapTrimap(_ mask: inout Image8, binary: Bool, name: String) throws {
        for i in mask.pixels.indices {
            let v = mask.pixels[i]
            guard (1...3).contains(v) else {
                throw ImageFileError(name, "trimap value \(v) at (\(i % mask.width), \(i / mask.width)) is not 1, 2 or 3")
            }
            mask.pixels[i] = binary ? (v == 1 ? 1 : 0) : v - 1
        }
    }

    /// The pre-training check of sample `i`: nil when fine, else the one-line reason (naming the
    /// file). `full` decodes both files (catches corrupt data and mask values); otherwise only the
    /// headers are read (existence, format, dimensions, limits, image and mask sizes).
    public func check(_ i: Int, full: Bool) -> String? {
        do {
            if full {
                _ = try decode(i)
            } else {
                let imagePath = listing.imagePath(i), maskPath = listing.maskPath(i)
                let image = try ImageFile.info(imagePath, limits: spec.limits)
                let mask = try ImageFile.info(maskPath, limits: spec.limits)
                guard image.width == mask.width && image.height == mask.height else {
                    throw ImageFileError(maskPath, "mask is \(mask.width)x\(mask.height) but its image \(imagePath) is \(image.width)x\(image.height)")
                }
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    // MARK: Samples

    /// Sample `i` before augmentation: resized (`.resize`) or whole (`.crop`); from the cache
    /// when caching.
    func base(_ i: Int) throws -> (image: Image8, mask: Image8) {
        if caching {
            pthread_mutex_lock(&cacheLock)
            let hit = cache[i]
            pthread_mutex_unlock(&cacheLock)
            if let hit { return hit }
        }
        var (image, mask) = try decode(i)
        if spec.geometry == .resize {
            let s = spec.imageSize
            // Separately: a JPEG image may already come smaller than its mask (reduced decoding).
            if image.width != s || image.height != s { image = Preprocess.resizeImage(image, width: s, height: s) }
            if mask.width != s || mask.height != s { mask = Preprocess.resizeMask(mask, width: s, height: s) }
        }
        if caching {
            pthread_mutex_lock(&cacheLock)
            cache[i] = (image, mask)
            pthread_mutex_unlock(&cacheLock)
        }
        return (image, mask)
    }

    /// Sample `i` as the model sees it: sized, augmented (for a training `epoch`; nil: validation),
    /// normalised into `image` (Cin planes of S x S floats) and `mask` (S x S class indices).
    /// Made-up mask pixels — a crop's padding, and what a rotation, scaling or shift brings in from
    /// beyond the mask's edge — are the ignore value when there is one (the image pads with 0 and
    /// mirrors at its edges as always); without one, padding is background (0) and the mask
    /// mirrors with the image.
    public func load(_ i: Int, epoch: Int?, image: UnsafeMutablePointer<Float>, mask: UnsafeMutablePointer<Float>) throws {
        var (picture, labels) = try base(i)
        let s = spec.imageSize
        if spec.geometry == .crop {
            let maskFill = spec.ignoreValue ?? 0
            if let epoch {
                (picture, labels) = Preprocess.randomCrop(image: picture, mask: labels, width: s, height: s, seed: spec.seed,
                                                          epoch: epoch, index: i, maskFill: maskFill)
            } else {
                // Validation: the centre window.
                let x = (picture.width - s) / 2, y = (picture.height - s) / 2
                picture = Preprocess.crop(picture, x: x, y: y, width: s, height: s, fill: 0)
                labels = Preprocess.crop(labels, x: x, y: y, width: s, height: s, fill: maskFill)
            }
        }
        if let epoch {
            augmenter.apply(image: &picture, mask: &labels, seed: spec.seed, epoch: epoch, index: i,
                            maskOutside: spec.ignoreValue)
        }
        Preprocess.normalize(picture, into: image, mean: spec.mean, std: spec.std)
        Preprocess.maskToFloat(labels, into: mask)
    }

}
