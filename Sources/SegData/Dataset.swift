// Datasets on disk: which image goes with which mask, in three layouts (see docs/DATA.md):
//   pairs  an images folder and a masks folder, paired by file stem (+ an optional mask suffix);
//   pet    Oxford-IIIT Pet: images/*.jpg with annotations/trimaps/*.png (values 1, 2, 3);
//   list   list files (train.txt, val.txt) naming the pairs.
// The listing is a sorted list of (image, mask) paths relative to the dataset root, so that
// rank 0 alone scans the folders and sends the list to the others (NUL-separated: any file name
// arrives whole).

import SegEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A dataset problem: one line naming the file, folder or flag and the reason.
public struct DatasetError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum DatasetLayout: String, Sendable, CaseIterable {
    case pairs, pet, list
}

/// How mask files' values become class indices.
public enum MaskEncoding: Sendable, Equatable {
    /// 0/255 (or 0/1) binary masks become {0, 1}; indexed and palette masks keep their indices,
    /// which must be below the class count (or the ignore value).
    case classIndices
    /// Oxford-IIIT Pet trimaps, values 1 pet, 2 background, 3 border: classes {0, 1, 2} (the
    /// values minus one) or, `binary`, 1 for the pet and 0 for the rest.
    case petTrimap(binary: Bool)
}

/// Where the files are: what `--data` and the layout flags say.
public struct DatasetOptions: Sendable, Equatable {
    public var layout: DatasetLayout = .pairs
    /// Folders relative to the root (pairs; also list files naming only stems).
    public var imagesDir = "images"
    public var masksDir = "masks"
    /// Appended to an image's stem to name its mask: `0cdf5b5d0ce1_01` -> `0cdf5b5d0ce1_01_mask.png`.
    public var maskSuffix = ""
    /// pet: pet vs the rest instead of pet / background / border.
    public var petBinary = false

    public init() {}

    /// The layout's image and mask folders.
    public var folders: (images: String, masks: String) {
        layout == .pet ? ("images", "annotations/trimaps") : (imagesDir, masksDir)
    }

    public var maskEncoding: MaskEncoding { layout == .pet ? .petTrimap(binary: petBinary) : .classIndices }
}

/// One sample's files, relative to the dataset root (or absolute).
public struct SamplePair: Equatable, Hashable, Sendable {
    public var image: String
    public var mask: String
    public init(image: String, mask: String) { self.image = image; self.mask = mask }
}

/// A list of samples under a root folder.
public struct DatasetListing: Equatable, Sendable {
    public var root: String
    public var pairs: [SamplePair]

    public init(root: String, pairs: [SamplePair]) { self.root = root; self.pairs = pairs }

    public var count: Int { pairs.count }

    /// The full path of a listed file.
    public func path(_ relative: String) -> String {
        relative.hasPrefix("/") || root.isEmpty ? relative : (root.hasSuffix("/") ? root + relative : root + "/" + relative)
    }

    public func imagePath(_ i: Int) -> String { path(pairs[i].image) }
    public func maskPath(_ i: Int) -> String { path(pairs[i].mask) }

    /// The listing as text, one `image<TAB>mask` line per sample: what `hash` is taken of (kept
    /// so that checkpoints' training-list hashes stay comparable). Not a safe transport: a file
    /// name may hold a newline or a tab; rank 0 sends `wire`.
    public var text: String { pairs.map { $0.image + "\t" + $0.mask + "\n" }.joined() }

    /// The listing as rank 0 sends it to the others: every path followed by a NUL, the one byte
    /// no file name can hold (image, mask, image, mask, ...), so names with newlines or tabs
    /// arrive whole.
    public var wire: String { pairs.map { $0.image + "\0" + $0.mask + "\0" }.joined() }

    /// The listing `wire` describes; throws for text that is not one (an odd number of fields).
    public init(root: String, wire: String) throws {
        var fields = wire.split(separator: "\0", omittingEmptySubsequences: false).map(String.init)
        if fields.last == "" { fields.removeLast() }
        guard fields.count % 2 == 0 else {
            throw DatasetError("the file list sent by rank 0 is damaged (\(fields.count) paths, not image/mask pairs)")
        }
        self.root = root
        pairs = stride(from: 0, to: fields.count, by: 2).map { SamplePair(image: fields[$0], mask: fields[$0 + 1]) }
    }

    public init(root: String, text: String) {
        self.root = root
        pairs = text.split(separator: "\n").map { line in
            let fields = line.split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false)
            return SamplePair(image: String(fields[0]), mask: fields.count > 1 ? String(fields[1]) : "")
        }
    }

    /// FNV-1a 64 of `text`: equal listings, equal hashes (checked across ranks, kept in checkpoints).
    public var hash: UInt64 { FNV1a.hash(text) }

    /// The listing without the samples at `indices`.
    public func removing(_ indices: Set<Int>) -> DatasetListing {
        DatasetListing(root: root, pairs: pairs.enumerated().filter { !indices.contains($0.offset) }.map(\.element))
    }

    /// A deterministic split into (train, validation): `fraction` of the samples (rounded, at
    /// least one when fraction > 0 and there are two or more) chosen by a permutation from `seed`
    /// go to validation; both keep the listing's order.
    public func split(validationFraction fraction: Double, seed: UInt64) -> (train: DatasetListing, validation: DatasetListing) {
        guard fraction > 0, count >= 2 else { return (self, DatasetListing(root: root, pairs: [])) }
        let n = min(count - 1, max(1, Int((fraction * Double(count)).rounded())))
        var order = Array(0..<count)
        var rng = SplitMix64(seed: seed ^ 0x5641_4C53_504C_4954)  // "VALSPLIT"
        for i in stride(from: count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let validation = Set(order.prefix(n))
        return (removing(validation), DatasetListing(root: root, pairs: validation.sorted().map { pairs[$0] }))
    }
}


public enum DatasetScanner {
    /// Image file extensions looked at (case-insensitive); other files are not samples.
    public static let imageExtensions = ["png", "jpg", "jpeg"]

    /// The training and validation listings of a run: `trainList` (list layout) or every sample
    /// under `root`; validation from `valList`, a separate `valData` folder, or a `valSplit`
    /// fraction (default 0.1) held out by `seed`.
    public static func trainAndValidation(root: String, options: DatasetOptions, trainList: String?, valList: String?,
                                          valData: String?, valSplit: Double?, seed: UInt64,
                                          notes: ((String) -> Void)? = nil) throws -> (DatasetListing, DatasetListing) {
        let train: DatasetListing
        if options.layout == .list {
            train = try list(root: root, listFile: trainList ?? "", options: options)
            if let valList { return (train, try list(root: valData ?? root, listFile: valList, options: options)) }
        } else {
            train = try list(root: root, options: options, notes: notes)
        }
        if let valData { return (train, try list(root: valData, options: options, notes: notes)) }
        return train.split(validationFraction: valSplit ?? 0.1, seed: seed)
    }

    /// Lists the dataset under `root` (layouts pairs and pet): every image of the images folder,
    /// sorted, with its mask. Errors: a missing or empty folder, an image without a mask, an image
    /// with two candidate masks. Hidden files (`.name`, e.g. macOS `._` files) are skipped.
    /// `notes` receives what was skipped (non-image files, masks without an image).
    public static func list(root: String, options: DatasetOptions, notes: ((String) -> Void)? = nil) throws -> DatasetListing {
        let (imagesDir, masksDir) = options.folders
        try requireFolder(root, what: "--data")
        let images = try imageFiles(in: root, folder: imagesDir, notes: notes)
        if images.isEmpty { throw DatasetError("\(join(root, imagesDir)): no images (.png, .jpg, .jpeg) in the folder") }
        let masks = try imageFiles(in: root, folder: masksDir, notes: nil)
        var masksByStem: [String: [String]] = [:]
        for m in masks { masksByStem[stem(m), default: []].append(m) }
        var pairs: [SamplePair] = []
        var used = Set<String>()
        for image in images {
            let key = stem(image) + options.maskSuffix
            guard let candidates = masksByStem[key] else {
                throw DatasetError("\(join(root, join(imagesDir, image))): no mask (looked for \(join(root, join(masksDir, key))).png/.jpg/.jpeg)")
            }
            guard candidates.count == 1 else {
                throw DatasetError("\(join(root, join(imagesDir, image))): several masks match: " + candidates.sorted().joined(separator: ", "))
            }
            used.insert(candidates[0])
            pairs.append(SamplePair(image: join(imagesDir, image), mask: join(masksDir, candidates[0])))
        }
        let orphans = masks.count - used.count
        if orphans > 0 { notes?("\(join(root, masksDir)): \(orphans) mask(s) without an image, not used") }
        return DatasetListing(root: root, pairs: pairs)
    }

    /// Lists the samples a list file names, one per line (blank lines and `#` comments skipped):
    /// `image mask` (two paths relative to `root`, or absolute; separated by a tab, else a comma,
    /// else spaces), or one name (a file name or stem in the images folder, paired as in layout
    /// pairs). Keeps the file's order.
    public static func list(root: String, listFile: String, options: DatasetOptions) throws -> DatasetListing {
        try requireFolder(root, what: "--data")
        let listPath = listFile.hasPrefix("/") ? listFile : join(root, listFile)
        let text = try readTextFile(listPath)
        let (imagesDir, masksDir) = options.folders
        var pairs: [SamplePair] = []
        var masksByStem: [String: [String]]? = nil
        var imagesByStem: [String: [String]]? = nil
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw[...]
            let trimmed = line.trimmingSpaces
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let separator: Character? = trimmed.contains("\t") ? "\t" : (trimmed.contains(",") ? "," : nil)
            let fields = (separator.map { trimmed.split(separator: $0) } ?? trimmed.split(whereSeparator: { $0 == " " }))
                .map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
            let at = "\(listPath):\(number + 1)"
            switch fields.count {
            case 2:
                pairs.append(SamplePair(image: fields[0], mask: fields[1]))
            case 1:
                if imagesByStem == nil {
                    imagesByStem = Dictionary(grouping: try imageFiles(in: root, folder: imagesDir, notes: nil), by: stem)
                    masksByStem = Dictionary(grouping: try imageFiles(in: root, folder: masksDir, notes: nil), by: stem)
                }
                let name = fields[0]
                let images = imagesByStem![stem(name)] ?? []
                let image = images.contains(name) ? name : (images.count == 1 ? images[0] : nil)
                guard let image else {
                    throw DatasetError("\(at): \(images.isEmpty ? "no image" : "several images") named \(name) in \(join(root, imagesDir))")
                }
                let masks = masksByStem![stem(image) + options.maskSuffix] ?? []
                guard masks.count == 1 else {
                    throw DatasetError("\(at): \(masks.isEmpty ? "no mask" : "several masks") for \(image) in \(join(root, masksDir))")
                }
                pairs.append(SamplePair(image: join(imagesDir, image), mask: join(masksDir, masks[0])))
            default:
                throw DatasetError("\(at): expected `image mask` or one name, got \(fields.count) fields")
            }
        }
        if pairs.isEmpty { throw DatasetError("\(listPath): the list names no samples") }
        return DatasetListing(root: root, pairs: pairs)
    }

    // MARK: Helpers

    static func join(_ a: String, _ b: String) -> String {
        if a.isEmpty || b.hasPrefix("/") { return b }
        if b.isEmpty || b == "." { return a }
        return a.hasSuffix("/") ? a + b : a + "/" + b
    }

    /// The file name without its last extension.
    public static func stem(_ name: String) -> String {
        let base = name.split(separator: "/").last.map(String.init) ?? name
        guard let dot = base.lastIndex(of: "."), dot != base.startIndex else { return base }
        return String(base[..<dot])
    }

    static func isImageName(_ name: String) -> Bool {
        guard let dot = name.lastIndex(of: ".") else { return false }
        return imageExtensions.contains(name[name.index(after: dot)...].lowercased())
    }

    static func requireFolder(_ path: String, what: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw DatasetError("\(what) \(path): \(String(cString: strerror(errno)))")
        }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { throw DatasetError("\(what) \(path): not a folder") }
    }

    /// Image file names (not paths) in `root/folder`, sorted bytewise; hidden files skipped.
    public static func imageFiles(in root: String, folder: String, notes: ((String) -> Void)?) throws -> [String] {
        let path = join(root, folder)
        try requireFolder(path, what: "folder")
        guard let dir = opendir(path) else {
            throw DatasetError("\(path): cannot list: \(String(cString: strerror(errno)))")
        }
        defer { closedir(dir) }
        var names: [String] = []
        var others = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix(".") { continue }
            if isImageName(name) { names.append(name) } else { others += 1 }
        }
        if others > 0 { notes?("\(path): \(others) file(s) that are not .png/.jpg/.jpeg, not used") }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" }) else { return "" }
        let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" })!
        return String(String.UnicodeScalarView(scalars[first...last]))
    }
}
