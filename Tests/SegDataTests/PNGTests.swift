import CPNG
import Foundation
import SegData
import SegEngine
import XCTest

final class PNGTests: XCTestCase {
    var folder = ""
    override func setUpWithError() throws { folder = try makeTemporaryFolder("png") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: folder) }

    func randomImage(width: Int, height: Int, channels: Int, seed: UInt64) -> Image8 {
        Image8(width: width, height: height, channels: channels, pixels: randomBytes(width * height * channels, seed: seed))
    }

    func testRoundTripsEveryFormatExactly() throws {
        for format in PixelFormat.allCases {
            // Odd sizes: no row padding assumptions; random samples: every value, alpha 0 included.
            let image = randomImage(width: 37, height: 23, channels: format.channels, seed: UInt64(format.rawValue))
            let path = folder + "/rt\(format.channels).png"
            try ImageFile.write(image, to: path)
            let back = try ImageFile.read(path, as: format)
            XCTAssertEqual(back, image, "\(format)")
            XCTAssertEqual(try ImageFile.decode(ImageFile.encode(image), name: "mem", as: format), image, "\(format) in memory")
        }
    }

    func testConversionsBetweenFormats() throws {
        var rgba = randomImage(width: 16, height: 9, channels: 4, seed: 7)
        for p in 0..<(16 * 9) where p % 3 == 0 {  // some gray pixels, to check RGB -> gray on them
            rgba.pixels[4 * p + 1] = rgba.pixels[4 * p]; rgba.pixels[4 * p + 2] = rgba.pixels[4 * p]
        }
        let path = folder + "/rgba.png"
        try ImageFile.write(rgba, to: path)

        // Alpha dropped, not composited: colours unchanged even where alpha is 0.
        let rgb = try ImageFile.read(path, as: .rgb)
        for p in 0..<(16 * 9) { for c in 0..<3 { XCTAssertEqual(rgb.pixels[3 * p + c], rgba.pixels[4 * p + c]) } }
        // Gray pixels stay their value in a gray read.
        let gray = try ImageFile.read(path, as: .gray)
        XCTAssertEqual(gray.channels, 1)
        for p in 0..<(16 * 9) where p % 3 == 0 { XCTAssertEqual(gray.pixels[p], rgba.pixels[4 * p], "pixel \(p)") }

        // Gray file read as RGBA: replicated, opaque.
        let g = randomImage(width: 5, height: 4, channels: 1, seed: 8)
        try ImageFile.write(g, to: folder + "/g.png")
        let g4 = try ImageFile.read(folder + "/g.png", as: .rgba)
        for p in 0..<20 { XCTAssertEqual(Array(g4.pixels[(4 * p)..<(4 * p + 4)]), [g.pixels[p], g.pixels[p], g.pixels[p], 255]) }
    }

    /// 16-bit files written by libpng (linear): 8-bit reads give round(v * 255 / 65535); masks keep
    /// 16-bit values that fit 0...255 exactly and refuse larger ones.
    func testSixteenBitFiles() throws {
        let width = 64, height = 3
        var gray = [UInt16](repeating: 0, count: width * height)
        var rng = SplitMix64(seed: 16)
        for i in gray.indices { gray[i] = UInt16(truncatingIfNeeded: rng.next()) }
        gray[0] = 0; gray[1] = 65535; gray[2] = 257 * 128; gray[3] = 128; gray[4] = 32767
        let path = folder + "/g16.png"
        try gray.withUnsafeBytes { try libpngWrite(path: path, width: width, height: height, format: formatLinear, buffer: $0.baseAddress!) }
        let back = try ImageFile.read(path, as: .gray)
        for i in gray.indices {
            XCTAssertEqual(Int(back.pixels[i]), (Int(gray[i]) * 255 + 32767) / 65535, "sample \(i) = \(gray[i])")
        }

        var rgb = [UInt16](repeating: 0, count: width * height * 3)
        for i in rgb.indices { rgb[i] = UInt16(truncatingIfNeeded: rng.next()) }
        let rgbPath = folder + "/rgb16.png"
        try rgb.withUnsafeBytes {
            try libpngWrite(path: rgbPath, width: width, height: height, format: formatLinear | formatColor, buffer: $0.baseAddress!)
        }
        let rgbBack = try ImageFile.read(rgbPath, as: .rgb)
        for i in rgb.indices { XCTAssertEqual(Int(rgbBack.pixels[i]), (Int(rgb[i]) * 255 + 32767) / 65535, "sample \(i)") }

        // A 16-bit mask of class indices.
        let classes = (0..<(width * height)).map { UInt16($0 % 7 == 0 ? 255 : $0 % 5) }
        let maskPath = folder + "/m16.png"
        try classes.withUnsafeBytes { try libpngWrite(path: maskPath, width: width, height: height, format: formatLinear, buffer: $0.baseAddress!) }
        XCTAssertEqual(try ImageFile.readMask(maskPath).pixels, classes.map { UInt8($0) })
        assertImageError(path, "does not fit 0...255") { try ImageFile.readMask(path) }
    }

    /// Palette files written by libpng (PLTE, 1/2/4/8-bit indices): images get the palette
    /// colours, masks the indices, whatever the colours are.
    func testPaletteFilesKeepIndicesAsMasks() throws {
        for entries in [2, 4, 11, 200] {
            let width = 29, height = 13
            var rng = SplitMix64(seed: UInt64(entries))
            let colormap = (0..<(3 * entries)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let indices = (0..<(width * height)).map { _ in UInt8(rng.next() % UInt64(entries)) }
            let path = folder + "/pal\(entries).png"
            try indices.withUnsafeBytes {
                try libpngWrite(path: path, width: width, height: height, format: formatColor | formatColormap,
                                buffer: $0.baseAddress!, colormap: colormap, colormapEntries: entries)
            }
            let mask = try ImageFile.readMask(path)
            XCTAssertEqual(mask.channels, 1)
            XCTAssertEqual(mask.pixels, indices, "\(entries) entries")
            let image = try ImageFile.read(path, as: .rgb)
            for p in 0..<(width * height) {
                let i = Int(indices[p])
                XCTAssertEqual(Array(image.pixels[(3 * p)..<(3 * p + 3)]), Array(colormap[(3 * i)..<(3 * i + 3)]), "\(entries) entries, pixel \(p)")
            }
        }
    }

    func testGrayMaskKeepsValuesAndClassMapping() throws {
        let values = Image8(width: 256, height: 2, channels: 1, pixels: (0..<512).map { UInt8($0 % 256) })
        let path = folder + "/gray.png"
        try ImageFile.write(values, to: path)
        XCTAssertEqual(try ImageFile.readMask(path), values)

        // Binary: 0/255 (as `segtrain synth` writes) -> {0, 1}.
        let binary = Image8(width: 4, height: 1, channels: 1, pixels: [0, 255, 0, 255])
        try ImageFile.write(binary, to: folder + "/bin.png")
        XCTAssertEqual(try ImageFile.readClassMask(folder + "/bin.png", classes: 1).pixels, [0, 1, 0, 1])
        // Multi-class: values must be class indices (or the ignore value).
        let three = Image8(width: 4, height: 1, channels: 1, pixels: [0, 1, 2, 255])
        try ImageFile.write(three, to: folder + "/three.png")
        XCTAssertEqual(try ImageFile.readClassMask(folder + "/three.png", classes: 3, ignoreValue: 255).pixels, [0, 1, 2, 255])
        assertImageError(folder + "/three.png", "mask value 255 at (3, 0)") { try ImageFile.readClassMask(folder + "/three.png", classes: 3) }

        // Masks must be gray or palette: an RGB mask whose pixels are not gray is refused.
        try ImageFile.write(randomImage(width: 3, height: 3, channels: 3, seed: 1), to: folder + "/colour.png")
        assertImageError(folder + "/colour.png", "masks must be gray or palette") { try ImageFile.readMask(folder + "/colour.png") }
    }
}
