import Foundation
import SegData
import SegEngine
import XCTest

/// Broken files give one-line errors naming the file; nothing crashes or hangs.
final class BadFileTests: XCTestCase {
    var folder = ""
    override func setUpWithError() throws { folder = try makeTemporaryFolder("bad") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: folder) }

    func validPNG() throws -> [UInt8] {
        var image = Image8(width: 24, height: 20, channels: 3)
        for y in 0..<20 { for x in 0..<24 { image[x, y, 0] = UInt8(x * 10); image[x, y, 1] = UInt8(y * 12); image[x, y, 2] = UInt8((x ^ y) * 7) } }
        return try ImageFile.encode(image)
    }

    func save(_ bytes: [UInt8], _ name: String) -> String {
        let path = folder + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    /// Every reader on `path` fails with `reason`.
    func assertAllReadersFail(_ path: String, _ reason: String, line: UInt = #line) {
        assertImageError(path, reason, line: line) { try ImageFile.read(path, as: .rgb) }
        assertImageError(path, reason, line: line) { try ImageFile.read(path, as: .gray) }
        assertImageError(path, reason, line: line) { try ImageFile.readMask(path) }
    }

    func testBrokenFilesGiveErrorsNamingTheFile() throws {
        let good = try validPNG()
        assertAllReadersFail(save(Array(good[0..<(good.count / 2)]), "truncated.png"), "cannot decode PNG")
        assertAllReadersFail(save(randomBytes(500, seed: 3), "random.png"), "not a PNG or JPEG file")
        assertAllReadersFail(save([], "empty.png"), "empty file")
        assertAllReadersFail(save(Array(good[0..<5]), "short.png"), "not a PNG file")
        assertAllReadersFail(folder + "/missing.png", "cannot open: No such file or directory")
        assertAllReadersFail(folder, "cannot")  // a folder, not a file

        // Signature, then an IHDR whose CRC does not match.
        var corrupt = pngSignature + chunk("IHDR", bigEndian(24) + bigEndian(20) + [8, 2, 0, 0, 0]) + Array(good[33...])
        corrupt[20] ^= 0x40  // width byte, CRC unchanged
        assertAllReadersFail(save(corrupt, "corrupt-header.png"), "not a valid PNG: IHDR: CRC error")
        // An IHDR with impossible values (bit depth 7) and a correct CRC.
        let badDepth = pngSignature + chunk("IHDR", bigEndian(24) + bigEndian(20) + [7, 2, 0, 0, 0]) + chunk("IEND", [])
        assertAllReadersFail(save(badDepth, "bad-depth.png"), "not a valid PNG")
    }

    func testOversizedHeaderIsRefusedBeforeDecoding() throws {
        // Width 100000 with a correct CRC and no pixel data: refused from the header alone.
        let wide = pngSignature + chunk("IHDR", bigEndian(100_000) + bigEndian(1) + [8, 0, 0, 0, 0]) + chunk("IEND", [])
        let path = save(wide, "wide.png")
        assertAllReadersFail(path, "image is 100000x1, over the limit (max side 16384")
        // 16384 x 16385: one row too many.
        let big = pngSignature + chunk("IHDR", bigEndian(16_384) + bigEndian(16_385) + [8, 2, 0, 0, 0]) + chunk("IEND", [])
        assertAllReadersFail(save(big, "big.png"), "over the limit")
        // The limits are configurable.
        let image = Image8(width: 32, height: 8, channels: 1)
        try ImageFile.write(image, to: folder + "/small.png")
        let tight = ImageLimits(maxSide: 16, maxPixels: 1000)
        assertImageError(folder + "/small.png", "image is 32x8, over the limit (max side 16, max 1000 pixels)") {
            try ImageFile.read(folder + "/small.png", as: .gray, limits: tight)
        }
        XCTAssertNoThrow(try ImageFile.read(folder + "/small.png", as: .gray, limits: ImageLimits(maxSide: 32, maxPixels: 256)))
        assertImageError(folder + "/small.png", "over the limit") {
            try ImageFile.read(folder + "/small.png", as: .gray, limits: ImageLimits(maxSide: 32, maxPixels: 255))
        }
    }

    func testWriteErrorsNameTheFile() {
        let image = Image8(width: 2, height: 2, channels: 3)
        assertImageError(folder + "/no/such/dir/x.png", "cannot create: No such file or directory") {
            try ImageFile.write(image, to: folder + "/no/such/dir/x.png")
        }
    }

    /// 300 seeded corruptions of a valid file (byte flips, with the chunk CRC repaired half the
    /// time so zlib and the filters see the damage; truncations; inserted and deleted runs).
    /// Each must decode or throw an ImageFileError naming the file.
    func testFuzzedFilesDecodeOrThrow() throws {
        let good = try validPNG()
        var rng = SplitMix64(seed: 2024)
        var decoded = 0, refused = 0
        for round in 0..<300 {
            var bytes = good
            switch rng.next() % 4 {
            case 0:
                bytes = Array(bytes[0..<Int(rng.next() % UInt64(bytes.count))])
            case 1, 2:
                for _ in 0..<(1 + Int(rng.next() % 6)) {
                    let at = 8 + Int(rng.next() % UInt64(bytes.count - 8))
                    bytes[at] ^= UInt8(1 + rng.next() % 255)
                }
                if rng.next() % 2 == 0 { repairCRCs(&bytes) }
            default:
                let at = Int(rng.next() % UInt64(bytes.count))
                if rng.next() % 2 == 0 {
                    bytes.insert(contentsOf: randomBytes(1 + Int(rng.next() % 40), seed: rng.next()), at: at)
                } else {
                    bytes.removeSubrange(at..<min(bytes.count, at + 1 + Int(rng.next() % 40)))
                }
            }
            let name = "fuzz-\(round).png"
            for mask in [false, true] {
                do {
                    let image = mask ? try ImageFile.decodeMask(bytes, name: name) : try ImageFile.decode(bytes, name: name, as: .rgb)
                    XCTAssertEqual(image.pixels.count, image.width * image.height * image.channels)
                    decoded += 1
                } catch let error as ImageFileError {
                    XCTAssertTrue(error.description.hasPrefix(name + ": "), error.description)
                    XCTAssertFalse(error.description.contains("\n"))
                    refused += 1
                }
            }
        }
        print("fuzz: \(decoded) decodes, \(refused) errors")
        XCTAssertGreaterThan(refused, 100)
    }
}
