import Foundation
import SegData
import SegEngine
import XCTest

/// Writes an RGB image and a gray mask of the given sizes as PNG (values from `maskValue(x, y)`).
func writePair(_ root: String, image: String, mask: String, width: Int = 12, height: Int = 10,
               maskWidth: Int? = nil, maskHeight: Int? = nil, maskValue: (Int, Int) -> UInt8 = { x, _ in x < 6 ? 0 : 255 }) throws {
    for path in [image, mask] {
        let folder = (root + "/" + path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }
    var picture = Image8(width: width, height: height, channels: 3)
    for i in picture.pixels.indices { picture.pixels[i] = UInt8(truncatingIfNeeded: i &* 37) }
    try ImageFile.write(picture, to: root + "/" + image)
    let mw = maskWidth ?? width, mh = maskHeight ?? height
    var labels = Image8(width: mw, height: mh, channels: 1)
    for y in 0..<mh { for x in 0..<mw { labels[x, y, 0] = maskValue(x, y) } }
    try ImageFile.write(labels, to: root + "/" + mask)
}

func assertDatasetError(_ expected: [String], file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Any) {
    do {
        _ = try body()
        XCTFail("expected an error containing \(expected)", file: file, line: line)
    } catch {
        let text = "\(error)"
        for part in expected { XCTAssertTrue(text.contains(part), "expected '\(part)' in: \(text)", file: file, line: line) }
        XCTAssertFalse(text.contains("\n"), "not one line: \(text)", file: file, line: line)
    }
}

final class DatasetTests: XCTestCase {
    var root = ""
    override func setUpWithError() throws { root = try makeTemporaryFolder("dataset") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: root) }

    func testPairsLayoutPairsByStemSortedAndSkipsHiddenAndOtherFiles() throws {
        for name in ["b", "a", "c_2"] { try writePair(root, image: "images/\(name).png", mask: "masks/\(name).png") }
        FileManager.default.createFile(atPath: root + "/images/._a.png", contents: Data([0, 1]))  // macOS resource fork
        FileManager.default.createFile(atPath: root + "/images/notes.txt", contents: Data([65]))
        var notes: [String] = []
        let listing = try DatasetScanner.list(root: root, options: DatasetOptions(), notes: { notes.append($0) })
        XCTAssertEqual(listing.pairs, ["a", "b", "c_2"].map { SamplePair(image: "images/\($0).png", mask: "masks/\($0).png") })
        XCTAssertEqual(listing.imagePath(0), root + "/images/a.png")
        XCTAssertTrue(notes.contains { $0.contains("1 file(s) that are not") }, "\(notes)")
        // The text form round-trips and hashes stably.
        let copy = DatasetListing(root: root, text: listing.text)
        XCTAssertEqual(copy, listing)
        XCTAssertEqual(copy.hash, listing.hash)
        XCTAssertNotEqual(listing.removing([1]).hash, listing.hash)
    }

    /// Carvana: train/0cdf5b5d0ce1_01.jpg with train_masks/0cdf5b5d0ce1_01_mask.png.
    func testCarvanaStyleFoldersAndMaskSuffix() throws {
        for name in ["0cdf5b5d0ce1_01", "0cdf5b5d0ce1_02"] {
            try writePair(root, image: "train/\(name).png", mask: "train_masks/\(name)_mask.png")
        }
        var options = DatasetOptions()
        options.imagesDir = "train"
        options.masksDir = "train_masks"
        options.maskSuffix = "_mask"
        let listing = try DatasetScanner.list(root: root, options: options)
        XCTAssertEqual(listing.pairs.map(\.mask), ["train_masks/0cdf5b5d0ce1_01_mask.png", "train_masks/0cdf5b5d0ce1_02_mask.png"])
        options.maskSuffix = ""
        assertDatasetError([root + "/train/0cdf5b5d0ce1_01.png", "no mask", "train_masks/0cdf5b5d0ce1_01"]) {
            try DatasetScanner.list(root: root, options: options)
        }
    }

    func testListingErrors() throws {
        assertDatasetError(["--data", root + "/nope", "No such file"]) {
            try DatasetScanner.list(root: root + "/nope", options: DatasetOptions())
        }
        try FileManager.default.createDirectory(atPath: root + "/images", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/masks", withIntermediateDirectories: true)
        assertDatasetError([root + "/images", "no images"]) { try DatasetScanner.list(root: root, options: DatasetOptions()) }
        try writePair(root, image: "images/a.png", mask: "masks/a.png")
        try writePair(root, image: "images/b.png", mask: "masks/x.png")
        assertDatasetError([root + "/images/b.png", "no mask"]) { try DatasetScanner.list(root: root, options: DatasetOptions()) }
        try writePair(root, image: "images/b.png", mask: "masks/b.png")
        try FileManager.default.copyItem(atPath: root + "/masks/b.png", toPath: root + "/masks/b.jpg")
        assertDatasetError([root + "/images/b.png", "several masks", "b.jpg", "b.png"]) {
            try DatasetScanner.list(root: root, options: DatasetOptions())
        }
        try FileManager.default.removeItem(atPath: root + "/masks")
        assertDatasetError([root + "/masks", "No such file"]) { try DatasetScanner.list(root: root, options: DatasetOptions()) }
    }

    /// Oxford-IIIT Pet: trimap values 1 pet, 2 background, 3 border -> classes 0, 1, 2, or binary pet 1.
    func testPetLayoutAndTrimaps() throws {
        let trimap: (Int, Int) -> UInt8 = { x, _ in UInt8(1 + x % 3) }
        try writePair(root, image: "images/Abyssinian_1.png", mask: "annotations/trimaps/Abyssinian_1.png", maskValue: trimap)
        try writePair(root, image: "images/beagle_7.png", mask: "annotations/trimaps/beagle_7.png", maskValue: trimap)
        var options = DatasetOptions()
        options.layout = .pet
        let listing = try DatasetScanner.list(root: root, options: options)
        XCTAssertEqual(listing.pairs.map(\.mask), ["annotations/trimaps/Abyssinian_1.png", "annotations/trimaps/beagle_7.png"])
        for binary in [false, true] {
            options.petBinary = binary
            var spec = SampleSpec(imageSize: 12, inChannels: 3, classes: binary ? 1 : 3)
            spec.maskEncoding = options.maskEncoding
            let (_, mask) = try FileDataset(listing: listing, spec: spec).decode(0)
            for x in 0..<12 {
                let raw = 1 + x % 3
                XCTAssertEqual(Int(mask[x, 4, 0]), binary ? (raw == 1 ? 1 : 0) : raw - 1)
            }
        }
        try writePair(root, image: "images/bad.png", mask: "annotations/trimaps/bad.png", maskValue: { x, y in x == 3 && y == 2 ? 0 : 1 })
        var spec = SampleSpec(imageSize: 12, inChannels: 3, classes: 3)
        spec.maskEncoding = .petTrimap(binary: false)
        let all = try DatasetScanner.list(root: root, options: options)
        let bad = all.pairs.firstIndex { $0.image == "images/bad.png" }!
        XCTAssertEqual(FileDataset(listing: all, spec: spec).check(bad, full: true),
                       root + "/annotations/trimaps/bad.png: trimap value 0 at (3, 2) is not 1, 2 or 3")
    }

    func testListFiles() throws {
        for name in ["p1", "p2", "p3"] { try writePair(root, image: "images/\(name).png", mask: "masks/\(name).png") }
        let text = """
            # person segmentation: image mask
            images/p2.png masks/p2.png
            images/p1.png,masks/p1.png

            p3
            """
        try text.write(toFile: root + "/train.txt", atomically: true, encoding: .utf8)
        var options = DatasetOptions()
        options.layout = .list
        let listing = try DatasetScanner.list(root: root, listFile: "train.txt", options: options)
        XCTAssertEqual(listing.pairs, [SamplePair(image: "images/p2.png", mask: "masks/p2.png"),
                                       SamplePair(image: "images/p1.png", mask: "masks/p1.png"),
                                       SamplePair(image: "images/p3.png", mask: "masks/p3.png")])
        try "images/p1.png masks/p1.png extra\n".write(toFile: root + "/bad.txt", atomically: true, encoding: .utf8)
        assertDatasetError([root + "/bad.txt:1", "3 fields"]) { try DatasetScanner.list(root: root, listFile: "bad.txt", options: options) }
        try "p1\nq9\n".write(toFile: root + "/missing.txt", atomically: true, encoding: .utf8)
        assertDatasetError([root + "/missing.txt:2", "no image named q9"]) {
            try DatasetScanner.list(root: root, listFile: "missing.txt", options: options)
        }
        try "# nothing\n".write(toFile: root + "/empty.txt", atomically: true, encoding: .utf8)
        assertDatasetError([root + "/empty.txt", "names no samples"]) {
            try DatasetScanner.list(root: root, listFile: "empty.txt", options: options)
        }
        assertDatasetError([root + "/absent.txt", "cannot open"]) {
            try DatasetScanner.list(root: root, listFile: "absent.txt", options: options)
        }
    }

    func testValidationSplitIsDeterministicDisjointAndComplete() {
        let listing = DatasetListing(root: "/d", pairs: (0..<37).map { SamplePair(image: "i\($0)", mask: "m\($0)") })
        let (train, validation) = listing.split(validationFraction: 0.1, seed: 4)
        XCTAssertEqual(validation.count, 4)
        XCTAssertEqual(train.count, 33)
        XCTAssertEqual(Set(train.pairs).union(validation.pairs), Set(listing.pairs))
        XCTAssertTrue(Set(train.pairs).isDisjoint(with: validation.pairs))
        XCTAssertEqual(listing.split(validationFraction: 0.1, seed: 4).validation, validation)
        XCTAssertNotEqual(listing.split(validationFraction: 0.1, seed: 5).validation, validation)
        XCTAssertEqual(listing.split(validationFraction: 0, seed: 4).train, listing)
        XCTAssertEqual(DatasetListing(root: "/d", pairs: Array(listing.pairs.prefix(3))).split(validationFraction: 0.1, seed: 1).validation.count, 1)
    }

    /// The spec's ignore value fills the made-up mask pixels of a training sample (what a rotation
    /// brings in from beyond the edge) and a validation crop's padding; without one, the rotated
    /// mask mirrors and the padding is background.
    func testIgnoreValueFillsAugmentedAndPaddedMaskPixels() throws {
        try writePair(root, image: "images/s.png", mask: "masks/s.png", width: 12, height: 10) { _, _ in 1 }
        let listing = try DatasetScanner.list(root: root, options: DatasetOptions())
        func values(ignore: UInt8?, geometry: SampleSpec.Geometry, size: Int, epochs: [Int?]) throws -> Set<Float> {
            var spec = SampleSpec(imageSize: size, inChannels: 3, classes: 3)
            spec.labels = LabelSpec(classes: 3, ignoreIndex: ignore.map(Int.init))
            spec.geometry = geometry
            var augment = AugmentConfig.none
            augment.rotateProbability = 1
            augment.rotateDegrees = 45
            spec.augment = augment
            let dataset = FileDataset(listing: listing, spec: spec)
            var image = [Float](repeating: 0, count: 3 * size * size), mask = [Float](repeating: 0, count: size * size)
            var seen = Set<Float>()
            for epoch in epochs {
                try dataset.load(0, epoch: epoch, image: &image, mask: &mask)
                seen.formUnion(mask)
            }
            return seen
        }
        let epochs = Array(1...6)
        XCTAssertEqual(try values(ignore: 255, geometry: .resize, size: 8, epochs: epochs), [1, 255])
        XCTAssertEqual(try values(ignore: nil, geometry: .resize, size: 8, epochs: epochs), [1])
        // Validation (no augmentation): a 16 x 16 centre crop of the 12 x 10 sample pads.
        XCTAssertEqual(try values(ignore: 255, geometry: .crop, size: 16, epochs: [nil]), [1, 255])
        XCTAssertEqual(try values(ignore: nil, geometry: .crop, size: 16, epochs: [nil]), [0, 1])
        // Validation without padding: nothing ignored.
        XCTAssertEqual(try values(ignore: 255, geometry: .resize, size: 8, epochs: [nil]), [1])
    }

    func testMaskValueRules() throws {
        func decode(classes: Int, ignore: UInt8? = nil, width: Int = 12, maskWidth: Int? = nil,
                    value: @escaping (Int, Int) -> UInt8) throws -> Image8 {
            try? FileManager.default.removeItem(atPath: root + "/images")
            try? FileManager.default.removeItem(atPath: root + "/masks")
            try writePair(root, image: "images/s.png", mask: "masks/s.png", width: width, maskWidth: maskWidth, maskValue: value)
            var spec = SampleSpec(imageSize: 8, inChannels: 3, classes: classes)
            spec.ignoreValue = ignore
            return try FileDataset(listing: DatasetScanner.list(root: root, options: DatasetOptions()), spec: spec).decode(0).mask
        }
        // 0/255 masks are binary for any class count.
        XCTAssertEqual(Set(try decode(classes: 1) { x, _ in x < 6 ? 0 : 255 }.pixels), [0, 1])
        XCTAssertEqual(Set(try decode(classes: 2) { x, _ in x < 6 ? 0 : 255 }.pixels), [0, 1])
        // Indexed masks keep their values; the ignore value is kept.
        XCTAssertEqual(Set(try decode(classes: 4) { x, _ in UInt8(x % 4) }.pixels), [0, 1, 2, 3])
        XCTAssertEqual(Set(try decode(classes: 3, ignore: 255) { x, _ in x == 0 ? 255 : UInt8(x % 3) }.pixels), [0, 1, 2, 255])
        // A value >= classes names the file, the value and where.
        assertDatasetError([root + "/masks/s.png", "mask value 7 at (7, 0)", "below 4"]) {
            try decode(classes: 4) { x, _ in x == 7 ? 7 : 1 }
        }
        assertDatasetError([root + "/masks/s.png", "mask value 255", "below 3"]) {
            try decode(classes: 3) { x, _ in x < 4 ? 255 : UInt8(x % 3) }
        }
        assertDatasetError([root + "/masks/s.png", "mask is 11x10 but its image", "is 12x10"]) {
            try decode(classes: 1, maskWidth: 11) { _, _ in 0 }
        }
    }
}
