import Foundation
import SegData
import SegEngine
import XCTest

final class BatchLoaderTests: XCTestCase {
    var root = ""
    override func setUpWithError() throws { root = try makeTemporaryFolder("loader") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: root) }

    func makeDataset(count: Int, augment: Bool, cache: Bool = false) throws -> FileDataset {
        for i in 0..<count {
            try writePair(root, image: "images/s\(i).png", mask: "masks/s\(i).png", width: 20 + i % 3, height: 16,
                          maskValue: { x, y in (x + y + i) % 5 == 0 ? 255 : 0 })
        }
        var spec = SampleSpec(imageSize: 16, inChannels: 3, classes: 1)
        spec.augment = augment ? AugmentConfig() : .none
        spec.seed = 11
        return FileDataset(listing: try DatasetScanner.list(root: root, options: DatasetOptions()), spec: spec, cache: cache)
    }

    /// What `load` gives, sample by sample on this thread: the reference.
    func reference(_ dataset: FileDataset, _ indices: [Int], epoch: Int?) throws -> ([Float], [Float]) {
        let s = dataset.spec.imageSize
        var images = [Float](repeating: 0, count: indices.count * 3 * s * s)
        var masks = [Float](repeating: 0, count: indices.count * s * s)
        for (n, i) in indices.enumerated() {
            try images.withUnsafeMutableBufferPointer { im in
                try masks.withUnsafeMutableBufferPointer { m in
                    try dataset.load(i, epoch: epoch, image: im.baseAddress! + n * 3 * s * s, mask: m.baseAddress! + n * s * s)
                }
            }
        }
        return (images, masks)
    }

    /// Announced batches come back exactly as loading them in place would make them, for 0, 1
    /// and 3 loader threads, across a new schedule dropped half-way, and for unannounced requests.
    func testPrefetchedBatchesEqualDirectLoading() throws {
        let dataset = try makeDataset(count: 11, augment: true)
        let batches = [[3, 1, 4], [10, 5, 9], [2, 6, 0], [8, 7]]
        for threads in [0, 1, 3] {
            let loader = BatchLoader(dataset: dataset, threads: threads, capacity: 3)
            let images = OwnedTensor(Shape(3, 3, 16, 16)), masks = OwnedTensor(Shape(3, 1, 16, 16))
            for epoch in [1, 2] {
                loader.schedule(batches, epoch: epoch)
                for (k, batch) in batches.enumerated() {
                    // Half-way through epoch 2 the trainer stops; a new schedule replaces the rest.
                    if epoch == 2 && k == 2 { break }
                    let im = images.tensor.batchSlice(0, batch.count), m = masks.tensor.batchSlice(0, batch.count)
                    try loader.next(batch, epoch: epoch, images: im, masks: m)
                    let (ri, rm) = try reference(dataset, batch, epoch: epoch)
                    XCTAssertEqual(Array(UnsafeBufferPointer(start: im.data, count: im.count)), ri, "threads \(threads) batch \(k)")
                    XCTAssertEqual(Array(UnsafeBufferPointer(start: m.data, count: m.count)), rm)
                }
            }
            // Validation: no epoch, no augmentation; and one request nobody announced.
            loader.schedule([[0, 1, 2]], epoch: nil)
            try loader.next([0, 1, 2], epoch: nil, images: images.tensor, masks: masks.tensor)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: images.tensor.data, count: images.tensor.count)),
                           try reference(dataset, [0, 1, 2], epoch: nil).0)
            try loader.next([5, 6, 7], epoch: 3, images: images.tensor, masks: masks.tensor)
            XCTAssertEqual(loader.unannouncedBatches, threads == 0 ? 0 : 1, "the unannounced request was loaded in place")
            XCTAssertEqual(Array(UnsafeBufferPointer(start: masks.tensor.data, count: masks.tensor.count)),
                           try reference(dataset, [5, 6, 7], epoch: 3).1)
            if threads > 0 { XCTAssertGreaterThan(loader.statistics().samplesLoaded, 0) }
        }
        // Augmentation depends on the epoch.
        XCTAssertNotEqual(try reference(dataset, [4], epoch: 1).0, try reference(dataset, [4], epoch: 2).0)
        XCTAssertEqual(try reference(dataset, [4], epoch: nil).0, try reference(dataset, [4], epoch: nil).0)
    }

    /// The next epoch's first batch, announced early and loaded, is kept (not loaded again) when
    /// the next epoch's schedule starts with it; results still equal direct loading.
    func testANewScheduleKeepsThePendingBatchesItStartsWith() throws {
        let dataset = try makeDataset(count: 8, augment: true)
        let loader = BatchLoader(dataset: dataset, threads: 1, capacity: 2)
        let images = OwnedTensor(Shape(2, 3, 16, 16)), masks = OwnedTensor(Shape(2, 1, 16, 16))
        func take(_ indices: [Int], _ epoch: Int) throws {
            try loader.next(indices, epoch: epoch, images: images.tensor, masks: masks.tensor)
            let (ri, rm) = try reference(dataset, indices, epoch: epoch)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: images.tensor.data, count: images.tensor.count)), ri)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: masks.tensor.data, count: masks.tensor.count)), rm)
        }
        loader.schedule([.init([0, 1], epoch: 1), .init([2, 3], epoch: 1), .init([4, 5], epoch: 2)])
        try take([0, 1], 1)
        try take([2, 3], 1)
        let deadline = monotonicSeconds() + 10
        while loader.statistics().samplesLoaded < 6 && monotonicSeconds() < deadline { usleep(2000) }
        XCTAssertEqual(loader.statistics().samplesLoaded, 6, "the look-ahead batch was loaded")
        loader.schedule([.init([4, 5], epoch: 2), .init([6, 7], epoch: 2)])
        try take([4, 5], 2)
        try take([6, 7], 2)
        XCTAssertEqual(loader.statistics().samplesLoaded, 8, "the kept batch was not loaded again")
        XCTAssertEqual(loader.unannouncedBatches, 0)
        // A schedule that does not start with the pending batch drops it: [0, 1] is never handed
        // out, [2, 3] is (loaded by the thread, not in place).
        loader.schedule([.init([0, 1], epoch: 3), .init([2, 3], epoch: 3)])
        loader.schedule([.init([2, 3], epoch: 3)])
        try take([2, 3], 3)
        XCTAssertEqual(loader.unannouncedBatches, 0)
        try take([0, 1], 3)
        XCTAssertEqual(loader.unannouncedBatches, 1, "the dropped batch is no longer announced: loaded in place")
    }

    /// --geometry crop: training samples are the seeded random window of image and mask together,
    /// validation samples the centre window; both unresized.
    func testCropGeometry() throws {
        let plain = try makeDataset(count: 3, augment: false)
        var spec = plain.spec
        spec.geometry = .crop
        spec.imageSize = 8
        let dataset = FileDataset(listing: plain.listing, spec: spec)
        let s = 8
        var image = [Float](repeating: 0, count: 3 * s * s), mask = [Float](repeating: 0, count: s * s)
        var expectedImage = image, expectedMask = mask
        for i in 0..<3 {
            let (picture, labels) = try dataset.decode(i)
            for epoch in [2, nil] as [Int?] {
                try dataset.load(i, epoch: epoch, image: &image, mask: &mask)
                let window: (image: Image8, mask: Image8)
                if let epoch {
                    window = Preprocess.randomCrop(image: picture, mask: labels, width: s, height: s, seed: spec.seed, epoch: epoch, index: i)
                } else {
                    let x = (picture.width - s) / 2, y = (picture.height - s) / 2
                    window = (Preprocess.crop(picture, x: x, y: y, width: s, height: s), Preprocess.crop(labels, x: x, y: y, width: s, height: s))
                }
                Preprocess.normalize(window.image, into: &expectedImage)
                Preprocess.maskToFloat(window.mask, into: &expectedMask)
                XCTAssertEqual(image, expectedImage, "sample \(i) epoch \(String(describing: epoch))")
                XCTAssertEqual(mask, expectedMask)
            }
        }
    }

    func testCacheGivesTheSameSamples() throws {
        let plain = try makeDataset(count: 4, augment: true)
        let cached = FileDataset(listing: plain.listing, spec: plain.spec, cache: true)
        for epoch in [1, 2, nil] as [Int?] {
            XCTAssertEqual(try reference(cached, [0, 1, 2, 3], epoch: epoch).0, try reference(plain, [0, 1, 2, 3], epoch: epoch).0)
        }
        // Once cached, the file is not read again.
        try FileManager.default.removeItem(atPath: root + "/images/s2.png")
        XCTAssertNoThrow(try reference(cached, [2], epoch: 5))
        XCTAssertThrowsError(try reference(plain, [2], epoch: 5))
    }

    /// A file that fails to decode while loading ahead is an error of the batch that holds it,
    /// naming the file; the batches before it are fine.
    func testALoadErrorReachesTheCaller() throws {
        let dataset = try makeDataset(count: 6, augment: false)
        FileManager.default.createFile(atPath: root + "/images/s4.png", contents: Data(pngSignature + [1, 2, 3]))
        let bad = dataset.listing.pairs.firstIndex { $0.image == "images/s4.png" }!
        let loader = BatchLoader(dataset: dataset, threads: 2, capacity: 2)
        let images = OwnedTensor(Shape(2, 3, 16, 16)), masks = OwnedTensor(Shape(2, 1, 16, 16))
        let good = (0..<6).filter { $0 != bad }
        loader.schedule([[good[0], good[1]], [bad, good[2]], [good[3], good[4]]], epoch: 1)
        XCTAssertNoThrow(try loader.next([good[0], good[1]], epoch: 1, images: images.tensor, masks: masks.tensor))
        XCTAssertThrowsError(try loader.next([bad, good[2]], epoch: 1, images: images.tensor, masks: masks.tensor)) { error in
            XCTAssertTrue("\(error)".hasPrefix(root + "/images/s4.png: "), "\(error)")
        }
        XCTAssertNoThrow(try loader.next([good[3], good[4]], epoch: 1, images: images.tensor, masks: masks.tensor))
        XCTAssertNotNil(dataset.check(bad, full: true))
        XCTAssertNotNil(dataset.check(bad, full: false))
        XCTAssertNil(dataset.check(good[0], full: true))
    }

    /// 600 samples whose image or mask file is a corrupted or truncated PNG or JPEG go through the
    /// pre-training check and the loader threads: every outcome is a sample or a one-line error
    /// naming one of that sample's files; nothing crashes or hangs.
    func testCorruptedFilesGiveOnlyCleanErrorsThroughTheLoader() throws {
        var picture = Image8(width: 20, height: 14, channels: 3)
        for i in picture.pixels.indices { picture.pixels[i] = UInt8(truncatingIfNeeded: (i * 7) ^ (i >> 3)) }
        var labels = Image8(width: 20, height: 14, channels: 1)
        for i in labels.pixels.indices { labels.pixels[i] = i % 3 == 0 ? 255 : 0 }
        let bases = [try ImageFile.encode(picture), try ImageFile.encodeJPEG(picture, quality: 90)]
        let maskBase = try ImageFile.encode(labels)
        try FileManager.default.createDirectory(atPath: root + "/images", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/masks", withIntermediateDirectories: true)
        var rng = SplitMix64(seed: 77)
        func corrupt(_ base: [UInt8]) -> [UInt8] {
            var bytes = base
            switch rng.next() % 4 {
            case 0: bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))
            case 1: for _ in 0..<(1 + rng.next() % 8) { bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(1 + rng.next() % 255) }
            case 2:
                let start = Int(rng.next() % UInt64(bytes.count)), length = Int(rng.next() % 64)
                for k in start..<min(bytes.count, start + length) { bytes[k] = 0 }
            default:
                let at = Int(rng.next() % UInt64(bytes.count))
                bytes.insert(contentsOf: randomBytes(Int(1 + rng.next() % 16), seed: rng.next()), at: at)
            }
            if bytes.starts(with: pngSignature), rng.next() % 2 == 0 { repairCRCs(&bytes) }
            return bytes
        }
        let count = 600
        for n in 0..<count {
            let name = String(format: "f%04d", n)
            let jpeg = n % 2 == 1
            let corruptMask = n % 3 == 2
            let image = corruptMask ? bases[n % 2] : corrupt(bases[n % 2])
            try Data(image).write(to: URL(fileURLWithPath: root + "/images/\(name).\(jpeg ? "jpg" : "png")"))
            try Data(corruptMask ? corrupt(maskBase) : maskBase).write(to: URL(fileURLWithPath: root + "/masks/\(name).png"))
        }
        var spec = SampleSpec(imageSize: 16, inChannels: 3, classes: 1)
        spec.seed = 5
        let dataset = FileDataset(listing: try DatasetScanner.list(root: root, options: DatasetOptions()), spec: spec)
        XCTAssertEqual(dataset.count, count)
        func assertNamesItsSample(_ text: String, _ i: Int) {
            XCTAssertTrue(text.hasPrefix(dataset.listing.imagePath(i) + ": ") || text.hasPrefix(dataset.listing.maskPath(i) + ": "),
                          "sample \(i): \(text)")
            XCTAssertFalse(text.contains("\n"), text)
        }
        var valid: [Int] = []
        for i in 0..<count {
            for full in [false, true] {
                if let reason = dataset.check(i, full: full) { assertNamesItsSample(reason, i) } else if full { valid.append(i) }
            }
        }
        // Every sample through the loader threads, one per batch so each outcome is its own.
        let loader = BatchLoader(dataset: dataset, threads: 2, capacity: 1)
        let images = OwnedTensor(Shape(1, 3, 16, 16)), masks = OwnedTensor(Shape(1, 1, 16, 16))
        loader.schedule((0..<count).map { [$0] }, epoch: 1)
        var loaded: [Int] = []
        for i in 0..<count {
            do {
                try loader.next([i], epoch: 1, images: images.tensor, masks: masks.tensor)
                loaded.append(i)
                XCTAssertTrue((0..<masks.tensor.count).allSatisfy { masks.tensor[$0] == 0 || masks.tensor[$0] == 1 })
            } catch {
                XCTAssertTrue(error is ImageFileError, "sample \(i): \(type(of: error)) \(error)")
                assertNamesItsSample("\(error)", i)
            }
        }
        // The full check and the loader agree on which samples are good; some of each kind exist.
        XCTAssertEqual(loaded, valid)
        XCTAssertGreaterThan(valid.count, 10)
        XCTAssertLessThan(valid.count, count - 100)
    }
}
