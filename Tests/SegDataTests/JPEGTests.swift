import CPNG
import CTurboJPEG
import Foundation
import SegData
import SegEngine
import XCTest

/// JPEG through TurboJPEG: round trips, conversions, the header probe, limits, truncation,
/// content dispatch, mask rules and a fuzz of corrupted PNG and JPEG files.
final class JPEGTests: XCTestCase {
    var folder = ""
    override func setUpWithError() throws { folder = try makeTemporaryFolder("jpeg") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: folder) }

    func save(_ bytes: [UInt8], _ name: String) -> String {
        let path = folder + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    // MARK: Round trips

    func testRoundTripsGrayAndRGBAtOddSizes() throws {
        // Measured at quality 95 (4:4:4) on these smooth images with +-4 noise: mean absolute
        // error per sample 1.11-1.30 gray, 1.83-2.03 RGB (1x1: 0); bound 3.
        for (width, height) in [(1, 1), (17, 9), (64, 48), (3, 131)] {
            for channels in [1, 3] {
                let image = smoothImage(width: width, height: height, channels: channels, seed: UInt64(width * 7 + channels))
                let bytes = try ImageFile.encodeJPEG(image, quality: 95)
                XCTAssertEqual(Array(bytes.prefix(3)), [0xFF, 0xD8, 0xFF])
                let format: PixelFormat = channels == 1 ? .gray : .rgb
                let back = try ImageFile.decode(bytes, name: "mem", as: format)
                XCTAssertEqual([back.width, back.height, back.channels], [width, height, channels])
                let error = meanAbsoluteError(back, image)
                XCTAssertLessThan(error, 3, "\(width)x\(height)x\(channels)")
                print("round trip \(width)x\(height)x\(channels) q95: mean abs error \(error)")

                // Through a file: written atomically (no .partial left), read back identically.
                let path = folder + "/rt-\(width)x\(height)x\(channels).jpg"
                try ImageFile.writeJPEG(image, to: path, quality: 95)
                XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".partial"))
                XCTAssertEqual(try ImageFile.read(path, as: format), back)

                // Lower quality loses more (so the bound above measures something).
                let rough = try ImageFile.decode(ImageFile.encodeJPEG(image, quality: 20), name: "mem", as: format)
                if width * height > 1 { XCTAssertGreaterThan(meanAbsoluteError(rough, image), error) }
            }
        }
    }

    func testAlphaIsDroppedWhenEncoding() throws {
        let rgba = Image8(width: 13, height: 7, channels: 4, pixels: randomBytes(13 * 7 * 4, seed: 4))
        let rgb = dropLastChannel(rgba)
        XCTAssertEqual(try ImageFile.encodeJPEG(rgba, quality: 90), try ImageFile.encodeJPEG(rgb, quality: 90))
        let grayAlpha = Image8(width: 13, height: 7, channels: 2, pixels: randomBytes(13 * 7 * 2, seed: 5))
        XCTAssertEqual(try ImageFile.encodeJPEG(grayAlpha, quality: 90), try ImageFile.encodeJPEG(dropLastChannel(grayAlpha), quality: 90))
        XCTAssertNotEqual(try ImageFile.encodeJPEG(rgb, quality: 90), try ImageFile.encodeJPEG(rgb, quality: 80))
    }

    func testEncoderErrorsNameTheFile() {
        let image = Image8(width: 4, height: 4, channels: 3)
        assertImageError("<memory>", "JPEG quality must be 1...100 (got 0)") { try ImageFile.encodeJPEG(image, quality: 0) }
        assertImageError("<memory>", "JPEG quality must be 1...100 (got 101)") { try ImageFile.encodeJPEG(image, quality: 101) }
        let missing = folder + "/no/such/dir/x.jpg"
        assertImageError(missing, "cannot create: No such file or directory") { try ImageFile.writeJPEG(image, to: missing, quality: 90) }
        let path = folder + "/q.jpg"
        assertImageError(path, "JPEG quality must be 1...100") { try ImageFile.writeJPEG(image, to: path, quality: -3) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".partial"))
    }

    // MARK: Reading as each PixelFormat

    func testColourJPEGReadAsEachFormat() throws {
        let source = smoothImage(width: 40, height: 30, channels: 3, seed: 11)
        let path = save(try ImageFile.encodeJPEG(source, quality: 90), "colour.jpeg")
        let rgb = try ImageFile.read(path, as: .rgb)
        let rgba = try ImageFile.read(path, as: .rgba)
        let gray = try ImageFile.read(path, as: .gray)
        let grayAlpha = try ImageFile.read(path, as: .grayAlpha)
        XCTAssertEqual([rgb.channels, rgba.channels, gray.channels, grayAlpha.channels], [3, 4, 1, 2])
        var worstLuma = 0
        for p in 0..<(40 * 30) {
            XCTAssertEqual(Array(rgba.pixels[(4 * p)..<(4 * p + 3)]), Array(rgb.pixels[(3 * p)..<(3 * p + 3)]), "pixel \(p)")
            XCTAssertEqual(rgba.pixels[4 * p + 3], 255)
            XCTAssertEqual(grayAlpha.pixels[2 * p], gray.pixels[p])
            XCTAssertEqual(grayAlpha.pixels[2 * p + 1], 255)
            // Gray is the JPEG's luma: BT.601 luma of the decoded RGB, up to rounding.
            let luma = (299 * Int(rgb.pixels[3 * p]) + 587 * Int(rgb.pixels[3 * p + 1]) + 114 * Int(rgb.pixels[3 * p + 2]) + 500) / 1000
            worstLuma = max(worstLuma, abs(luma - Int(gray.pixels[p])))
        }
        XCTAssertLessThanOrEqual(worstLuma, 2, "gray read vs luma of the RGB read")
    }

    func testGrayJPEGReadAsEachFormat() throws {
        let source = smoothImage(width: 23, height: 19, channels: 1, seed: 12)
        let path = save(try ImageFile.encodeJPEG(source, quality: 90), "gray.jpg")
        let gray = try ImageFile.read(path, as: .gray)
        XCTAssertLessThan(meanAbsoluteError(gray, source), 2)
        let rgb = try ImageFile.read(path, as: .rgb), rgba = try ImageFile.read(path, as: .rgba)
        let grayAlpha = try ImageFile.read(path, as: .grayAlpha)
        for p in 0..<(23 * 19) {
            let v = gray.pixels[p]
            XCTAssertEqual(Array(rgb.pixels[(3 * p)..<(3 * p + 3)]), [v, v, v])
            XCTAssertEqual(Array(rgba.pixels[(4 * p)..<(4 * p + 4)]), [v, v, v, 255])
            XCTAssertEqual(Array(grayAlpha.pixels[(2 * p)..<(2 * p + 2)]), [v, 255])
        }
    }

    /// Files SegData did not write: 4:2:0 and 4:2:2 subsampling, progressive, written by
    /// TurboJPEG directly.
    func testOtherEncodingsDecode() throws {
        let source = smoothImage(width: 61, height: 37, channels: 3, seed: 13)
        for (subsampling, flags, tag) in [(TJSAMP_420, Int32(0), "4:2:0"), (TJSAMP_422, Int32(0), "4:2:2"),
                                          (TJSAMP_420, TJFLAG_PROGRESSIVE, "progressive 4:2:0"), (TJSAMP_444, TJFLAG_PROGRESSIVE, "progressive 4:4:4")] {
            let bytes = turboEncode(source, pixelFormat: TJPF_RGB, subsampling: subsampling, quality: 92, flags: flags)
            let back = try ImageFile.decode(bytes, name: tag, as: .rgb)
            XCTAssertEqual([back.width, back.height], [61, 37], tag)
            XCTAssertLessThan(meanAbsoluteError(back, source), 3, tag)
            XCTAssertEqual(try ImageFile.info(bytes: bytes, name: tag), ImageInfo(width: 61, height: 37, channels: 3, format: .jpeg), tag)
        }
    }

    func testCMYKJPEGIsRefused() throws {
        let cmyk = Image8(width: 16, height: 8, channels: 4, pixels: randomBytes(16 * 8 * 4, seed: 6))
        let bytes = turboEncode(cmyk, pixelFormat: TJPF_CMYK, subsampling: TJSAMP_444, quality: 90)
        let path = save(bytes, "cmyk.jpg")
        for format in PixelFormat.allCases {
            assertImageError(path, "(Adobe CMYK) JPEGs are not supported") { try ImageFile.read(path, as: format) }
        }
        assertImageError(path, "JPEGs are not supported") { try ImageFile.readMask(path) }
        assertImageError(path, "JPEGs are not supported") { try ImageFile.info(path) }
    }

    // MARK: Content dispatch

    func testFormatIsTakenFromTheContentNotTheName() throws {
        let image = smoothImage(width: 9, height: 5, channels: 3, seed: 14)
        let pngNamedJPEG = save(try ImageFile.encode(image), "really-a-png.jpg")
        XCTAssertEqual(try ImageFile.read(pngNamedJPEG, as: .rgb), image)
        XCTAssertEqual(try ImageFile.info(pngNamedJPEG).format, .png)
        let jpegBytes = try ImageFile.encodeJPEG(image, quality: 90)
        let jpegNamedPNG = save(jpegBytes, "really-a-jpeg.png")
        XCTAssertEqual(try ImageFile.read(jpegNamedPNG, as: .rgb), try ImageFile.decode(jpegBytes, name: "x", as: .rgb))
        XCTAssertEqual(try ImageFile.info(jpegNamedPNG).format, .jpeg)
    }

    func testNonImageFilesAreRefused() throws {
        let files: [(String, [UInt8], String)] = [
            ("text.jpg", Array("hello, this is not an image\n".utf8), "not a PNG or JPEG file"),
            ("random.jpg", randomBytes(300, seed: 9), "not a PNG or JPEG file"),
            ("gif.png", Array("GIF89a".utf8) + [1, 0, 1, 0, 0, 0, 0], "not a PNG or JPEG file"),
            ("bmp.jpg", Array("BM".utf8) + [UInt8](repeating: 0, count: 60), "not a PNG or JPEG file"),
            ("empty.jpg", [], "empty file"),
            ("soi-only.jpg", [0xFF, 0xD8], "not a valid JPEG"),
            ("soi-eoi.jpg", [0xFF, 0xD8, 0xFF, 0xD9], "not a valid JPEG"),
            ("jpeg-magic-then-junk.jpg", [0xFF, 0xD8, 0xFF] + randomBytes(200, seed: 10), "not a valid JPEG"),
        ]
        for (name, bytes, reason) in files {
            let path = save(bytes, name)
            assertImageError(path, reason) { try ImageFile.read(path, as: .rgb) }
            assertImageError(path, reason) { try ImageFile.readMask(path) }
            assertImageError(path, reason) { try ImageFile.readClassMask(path, classes: 1) }
            assertImageError(path, reason) { try ImageFile.info(path) }
        }
        assertImageError(folder, "cannot") { try ImageFile.info(folder) }
        assertImageError(folder + "/missing.jpg", "cannot open: No such file or directory") { try ImageFile.info(folder + "/missing.jpg") }
    }

    // MARK: Header probe

    func testInfoOnEveryPNGColourTypeAndJPEG() throws {
        // Written by libpng: gray, gray+alpha, RGB, RGBA, palette.
        let width = 21, height = 11
        let samples = randomBytes(width * height * 4, seed: 15)
        let formats: [(UInt32, Int)] = [(0, 1), (formatAlpha, 2), (formatColor, 3), (formatColor | formatAlpha, 4)]
        for (format, channels) in formats {
            let path = folder + "/info\(channels).png"
            try samples.withUnsafeBytes { try libpngWrite(path: path, width: width, height: height, format: format, buffer: $0.baseAddress!) }
            XCTAssertEqual(try ImageFile.info(path), ImageInfo(width: width, height: height, channels: channels, format: .png))
            XCTAssertEqual(try ImageFile.read(path, as: .rgba).width, width)
        }
        let palettePath = folder + "/palette.png"
        let indices = samples.prefix(width * height).map { $0 % 5 }
        try indices.withUnsafeBytes {
            try libpngWrite(path: palettePath, width: width, height: height, format: formatColor | formatColormap,
                            buffer: $0.baseAddress!, colormap: randomBytes(15, seed: 16), colormapEntries: 5)
        }
        XCTAssertEqual(try ImageFile.info(palettePath), ImageInfo(width: width, height: height, channels: 3, format: .png))

        // Every valid colour type / bit depth from the header alone: an IHDR and no pixel data,
        // which `info` accepts and decoding refuses.
        let valid: [(Int, [Int], Int)] = [(0, [1, 2, 4, 8, 16], 1), (2, [8, 16], 3), (3, [1, 2, 4, 8], 3), (4, [8, 16], 2), (6, [8, 16], 4)]
        for (colorType, depths, channels) in valid {
            for depth in depths {
                let bytes = pngHeaderOnly(width: 300, height: 7, depth: depth, colorType: colorType)
                let name = "ihdr-\(colorType)-\(depth).png"
                XCTAssertEqual(try ImageFile.info(bytes: bytes, name: name), ImageInfo(width: 300, height: 7, channels: channels, format: .png), name)
                assertImageError(name, "PNG") { try ImageFile.decode(bytes, name: name, as: .rgb) }
            }
        }
        assertImageError("d7", "not a valid PNG: IHDR: bit depth 7 with colour type 2") {
            try ImageFile.info(bytes: pngHeaderOnly(width: 3, height: 3, depth: 7, colorType: 2), name: "d7")
        }
        assertImageError("c5", "not a valid PNG: IHDR: colour type 5") {
            try ImageFile.info(bytes: pngHeaderOnly(width: 3, height: 3, depth: 8, colorType: 5), name: "c5")
        }
        var badCRC = pngHeaderOnly(width: 3, height: 3, depth: 8, colorType: 2)
        badCRC[17] ^= 1
        assertImageError("crc", "not a valid PNG: IHDR: CRC error") { try ImageFile.info(bytes: badCRC, name: "crc") }
        assertImageError("zero", "image is 0x7: zero-sized") { try ImageFile.info(bytes: pngHeaderOnly(width: 0, height: 7, depth: 8, colorType: 0), name: "zero") }
        assertImageError("wide", "image is 100000x7, over the limit") {
            try ImageFile.info(bytes: pngHeaderOnly(width: 100_000, height: 7, depth: 8, colorType: 0), name: "wide")
        }
        assertImageError("short", "not a valid PNG") { try ImageFile.info(bytes: Array(pngHeaderOnly(width: 3, height: 3, depth: 8, colorType: 0).prefix(30)), name: "short") }

        // JPEG: gray and colour.
        for channels in [1, 3] {
            let path = save(try ImageFile.encodeJPEG(smoothImage(width: 33, height: 17, channels: channels, seed: 17), quality: 80), "info\(channels).jpg")
            XCTAssertEqual(try ImageFile.info(path), ImageInfo(width: 33, height: 17, channels: channels, format: .jpeg))
        }
        // The file-size limit applies as in `read`.
        let small = save(try ImageFile.encodeJPEG(Image8(width: 8, height: 8, channels: 1), quality: 80), "small.jpg")
        assertImageError(small, "file larger than the limit of 100 bytes") {
            try ImageFile.info(small, limits: ImageLimits(maxSide: 100, maxPixels: 10_000, maxFileBytes: 100))
        }
    }

    /// A JPEG whose header (here an APP segment of 3 x 60 KB before the frame) passes the first
    /// 64 KiB `info` reads: it reads the rest.
    func testInfoReadsPastLongJPEGHeaders() throws {
        let bytes = try ImageFile.encodeJPEG(smoothImage(width: 12, height: 10, channels: 3, seed: 18), quality: 80)
        var padded = Array(bytes[0..<2])
        for _ in 0..<3 {
            let payload = randomBytes(60_000, seed: 19).map { $0 == 0xFF ? 0 : $0 }
            padded += [0xFF, 0xE9, UInt8((payload.count + 2) >> 8), UInt8((payload.count + 2) & 0xFF)] + payload
        }
        padded += bytes[2...]
        let path = save(padded, "long-header.jpg")
        XCTAssertEqual(try ImageFile.info(path), ImageInfo(width: 12, height: 10, channels: 3, format: .jpeg))
        XCTAssertEqual(try ImageFile.read(path, as: .rgb), try ImageFile.decode(bytes, name: "x", as: .rgb))
    }

    // MARK: Limits

    /// SOF dimensions patched into a small valid JPEG: the limits refuse them from the header,
    /// so the error is "over the limit", not the decoder running out of data. (A JPEG side is a
    /// 16-bit field, so 70000 cannot be stored; libjpeg itself refuses sides above 65500.)
    func testOversizedJPEGHeaderIsRefusedBeforeDecoding() throws {
        let bytes = try ImageFile.encodeJPEG(smoothImage(width: 16, height: 16, channels: 3, seed: 20), quality: 90)
        func patched(width: Int, height: Int) -> [UInt8] {
            var out = bytes
            let sof = startOfFrame(out)!
            out[sof + 5] = UInt8(height >> 8); out[sof + 6] = UInt8(height & 0xFF)
            out[sof + 7] = UInt8(width >> 8); out[sof + 8] = UInt8(width & 0xFF)
            return out
        }
        for (width, height) in [(60_000, 60_000), (20_000, 16), (16, 16_385), (16_384, 16_384 + 1)] {
            let path = save(patched(width: width, height: height), "big-\(width)x\(height).jpg")
            let reason = "image is \(width)x\(height), over the limit (max side 16384"
            for format in PixelFormat.allCases { assertImageError(path, reason) { try ImageFile.read(path, as: format) } }
            assertImageError(path, reason) { try ImageFile.readMask(path) }
            assertImageError(path, reason) { try ImageFile.readClassMask(path, classes: 1) }
            assertImageError(path, reason) { try ImageFile.info(path) }
        }
        // 65535 x 65535: libjpeg's own maximum.
        assertImageError("max", "65500") { try ImageFile.decode(patched(width: 65_535, height: 65_535), name: "max", as: .rgb) }
        // Within the limits the same patch reaches the decoder, which runs out of data: the header
        // check above is what refused the big ones.
        assertImageError("within", "cannot decode JPEG") { try ImageFile.decode(patched(width: 2000, height: 1000), name: "within", as: .rgb) }
        XCTAssertEqual(try ImageFile.info(bytes: patched(width: 2000, height: 1000), name: "within"),
                       ImageInfo(width: 2000, height: 1000, channels: 3, format: .jpeg))
        // The limits are configurable.
        let tight = ImageLimits(maxSide: 15, maxPixels: 1000)
        assertImageError("tight", "image is 16x16, over the limit (max side 15, max 1000 pixels)") {
            try ImageFile.decode(bytes, name: "tight", as: .gray, limits: tight)
        }
        XCTAssertNoThrow(try ImageFile.decode(bytes, name: "ok", as: .gray, limits: ImageLimits(maxSide: 16, maxPixels: 256)))
        assertImageError("pixels", "over the limit") { try ImageFile.decode(bytes, name: "pixels", as: .gray, limits: ImageLimits(maxSide: 16, maxPixels: 255)) }
        assertImageError("info", "over the limit") { try ImageFile.info(bytes: bytes, name: "info", limits: tight) }
    }

    // MARK: Truncation

    /// Every cut of a valid JPEG (baseline and progressive) is an error, never an image: libjpeg
    /// would pad the missing data with grey and only warn.
    func testTruncatedJPEGIsAnErrorAtEveryCut() throws {
        let image = smoothImage(width: 64, height: 48, channels: 3, seed: 21)
        let baseline = try ImageFile.encodeJPEG(image, quality: 90)
        let progressive = turboEncode(image, pixelFormat: TJPF_RGB, subsampling: TJSAMP_420, quality: 90, flags: TJFLAG_PROGRESSIVE)
        var premature = 0
        for (tag, bytes) in [("baseline", baseline), ("progressive", progressive)] {
            XCTAssertNoThrow(try ImageFile.decode(bytes, name: tag, as: .rgb))
            for cut in 1..<bytes.count {
                let name = "\(tag)-cut-\(cut)"
                let short = Array(bytes[0..<cut])
                assertImageError(name, "JPEG") { try ImageFile.decode(short, name: name, as: .rgb) }
                assertImageError(name, "JPEG") { try ImageFile.decode(short, name: name, as: .gray) }
                assertImageError(name, "JPEG") { try ImageFile.decodeMask(short, name: name) }
                do { _ = try ImageFile.decode(short, name: name, as: .rgb) } catch let error as ImageFileError {
                    if error.reason.contains("Premature end of JPEG file") { premature += 1 }
                }
            }
        }
        // Cuts inside the entropy-coded data are libjpeg warnings, stopped.
        XCTAssertGreaterThan(premature, (baseline.count + progressive.count) / 2)
        let path = save(Array(baseline[0..<(baseline.count * 2 / 3)]), "cut.jpg")
        assertImageError(path, "cannot decode JPEG: Premature end of JPEG file") { try ImageFile.read(path, as: .rgb) }
    }

    // MARK: Masks

    func testJPEGMaskRules() throws {
        // A binary mask (0/255 discs) stored as a gray JPEG: read back as 0/255, thresholded at 128.
        let width = 50, height = 40
        var mask = Image8(width: width, height: height, channels: 1)
        for y in 0..<height { for x in 0..<width {
            let inside = (x - 15) * (x - 15) + (y - 20) * (y - 20) < 100 || (x - 38) * (x - 38) + (y - 12) * (y - 12) < 64
            mask[x, y, 0] = inside ? 255 : 0
        } }
        let grayPath = save(try ImageFile.encodeJPEG(mask, quality: 75), "mask.jpg")
        let binary = try ImageFile.readMask(grayPath)
        XCTAssertEqual(binary.channels, 1)
        XCTAssertTrue(binary.pixels.allSatisfy { $0 == 0 || $0 == 255 })
        let raw = try ImageFile.read(grayPath, as: .gray)
        XCTAssertEqual(binary.pixels, raw.pixels.map { $0 >= 128 ? 255 : 0 })
        let wrong = zip(binary.pixels, mask.pixels).filter { $0 != $1 }.count
        XCTAssertLessThanOrEqual(wrong, 0, "quality 75 keeps a 0/255 mask after thresholding")
        XCTAssertEqual(try ImageFile.readClassMask(grayPath, classes: 1).pixels, mask.pixels.map { $0 / 255 })
        XCTAssertEqual(try ImageFile.readClassMask(grayPath, classes: 1, ignoreValue: 255).pixels, mask.pixels.map { $0 / 255 })

        // The threshold: 127 is background, 128 foreground (uniform blocks survive quality 100).
        var steps = Image8(width: 16, height: 8, channels: 1)
        for y in 0..<8 { for x in 0..<16 { steps[x, y, 0] = x < 8 ? 127 : 128 } }
        let stepBytes = try ImageFile.encodeJPEG(steps, quality: 100)
        XCTAssertEqual(try ImageFile.decode(stepBytes, name: "steps", as: .gray), steps)
        XCTAssertEqual(try ImageFile.decodeMask(stepBytes, name: "steps").pixels, steps.pixels.map { $0 >= 128 ? 255 : 0 })
        XCTAssertEqual(try ImageFile.decodeClassMask(stepBytes, name: "steps", classes: 1).pixels, steps.pixels.map { $0 >= 128 ? 1 : 0 })

        // Multi-class masks must be PNG: refused, whatever the values.
        for classes in [2, 3, 255] {
            assertImageError(grayPath, "JPEG masks are lossy; multi-class masks must be PNG") {
                try ImageFile.readClassMask(grayPath, classes: classes, ignoreValue: 255)
            }
        }

        // A colour JPEG of a gray mask is accepted; a coloured mask is refused.
        var rgbMask = Image8(width: width, height: height, channels: 3)
        for p in 0..<(width * height) { for c in 0..<3 { rgbMask.pixels[3 * p + c] = mask.pixels[p] } }
        let rgbPath = save(try ImageFile.encodeJPEG(rgbMask, quality: 90), "rgb-mask.jpg")
        XCTAssertEqual(try ImageFile.readClassMask(rgbPath, classes: 1).pixels, mask.pixels.map { $0 / 255 })
        for p in 0..<(width * height) { rgbMask.pixels[3 * p + 1] = 0; rgbMask.pixels[3 * p + 2] = 0 }  // red on black
        let redPath = save(try ImageFile.encodeJPEG(rgbMask, quality: 90), "red-mask.jpg")
        assertImageError(redPath, "masks must be gray") { try ImageFile.readMask(redPath) }
        assertImageError(redPath, "masks must be gray") { try ImageFile.readClassMask(redPath, classes: 1) }

        // PNG masks are unchanged by the dispatch: multi-class PNG masks still work.
        let three = Image8(width: 4, height: 1, channels: 1, pixels: [0, 1, 2, 1])
        let pngPath = folder + "/three.png"
        try ImageFile.write(three, to: pngPath)
        XCTAssertEqual(try ImageFile.readClassMask(pngPath, classes: 3), three)
    }

    // MARK: Fuzz

    /// 4000 corrupted PNG and 4000 corrupted JPEG files (seeded), from 5 PNG bases (RGB, gray,
    /// RGBA, palette, 16-bit gray) and 4 JPEG bases (4:4:4, gray, 4:2:0, progressive): byte flips
    /// (JPEG: half of them among the markers before the first scan; PNG: chunk CRCs repaired half
    /// the time so zlib and the filters see the damage), truncations, inserted and deleted runs,
    /// zeroed ranges, a run copied elsewhere. Each is fed to `info(bytes:)`, `decode` (a random
    /// format), `decodeMask` and `decodeClassMask` (1 or 3 classes); the first 400 of each format
    /// also through files (`info`, `read`, `readMask`, `readClassMask`). Each call must return a
    /// well-formed image or throw an ImageFileError naming the file on one line (a crash or hang
    /// fails the run); when a decode succeeds, `info` must agree on the size.
    /// Measured: 8000 files, 35200 calls (about 8200 images, 27000 errors) in 0.5-0.6 s, debug
    /// build (SegData itself is always -O), shared 2-core machine.
    func testFuzzedFilesDecodeOrThrow() throws {
        let pngBases = try [
            ImageFile.encode(smoothImage(width: 24, height: 20, channels: 3, seed: 30)),
            ImageFile.encode(smoothImage(width: 17, height: 9, channels: 1, seed: 31)),
            ImageFile.encode(Image8(width: 11, height: 13, channels: 4, pixels: randomBytes(11 * 13 * 4, seed: 32))),
            libpngBytes(width: 19, height: 7, format: formatColor | formatColormap, samples: randomBytes(19 * 7, seed: 33).map { $0 % 6 },
                        colormap: randomBytes(18, seed: 34), entries: 6),
            libpngBytes(width: 9, height: 5, format: formatLinear, samples: randomBytes(9 * 5 * 2, seed: 35)),
        ]
        let colour = smoothImage(width: 40, height: 24, channels: 3, seed: 36)
        let jpegBases = try [
            ImageFile.encodeJPEG(colour, quality: 90),
            ImageFile.encodeJPEG(smoothImage(width: 23, height: 17, channels: 1, seed: 37), quality: 85),
            turboEncode(colour, pixelFormat: TJPF_RGB, subsampling: TJSAMP_420, quality: 80),
            turboEncode(colour, pixelFormat: TJPF_RGB, subsampling: TJSAMP_420, quality: 80, flags: TJFLAG_PROGRESSIVE),
        ]
        let casesPerFormat = 4000, throughFiles = 400
        var rng = SplitMix64(seed: 2025)
        var decoded = 0, refused = 0
        let start = Date()
        for (kind, bases) in [("png", pngBases), ("jpeg", jpegBases)] {
            for round in 0..<casesPerFormat {
                let base = bases[round % bases.count]
                let bytes = mutate(base, png: kind == "png", rng: &rng)
                let name = "fuzz-\(kind)-\(round).\(kind)"
                let format = PixelFormat.allCases[Int(rng.next() % 4)]
                let classes = rng.next() % 2 == 0 ? 1 : 3
                let info = fuzzCall(name, &decoded, &refused) { try ImageFile.info(bytes: bytes, name: name) }
                let calls: [(String, () throws -> Image8)] = [
                    ("decode", { try ImageFile.decode(bytes, name: name, as: format) }),
                    ("decodeMask", { try ImageFile.decodeMask(bytes, name: name) }),
                    ("decodeClassMask", { try ImageFile.decodeClassMask(bytes, name: name, classes: classes) }),
                ]
                for (call, body) in calls {
                    guard let image = fuzzCall(name, &decoded, &refused, body) else { continue }
                    XCTAssertEqual(image.pixels.count, image.width * image.height * image.channels, "\(name) \(call)")
                    XCTAssertEqual(image.channels, call == "decode" ? format.channels : 1, "\(name) \(call)")
                    XCTAssertEqual(info.map { [$0.width, $0.height] }, [image.width, image.height], "\(name) \(call): info disagrees")
                    if call == "decodeClassMask" && classes == 1 { XCTAssertTrue(image.pixels.allSatisfy { $0 <= 1 }, name) }
                    if call != "decode" && kind == "jpeg" {
                        XCTAssertTrue(image.pixels.allSatisfy { $0 == 0 || $0 == (call == "decodeMask" ? 255 : 1) }, name)
                    }
                }
                if round < throughFiles {
                    let path = save(bytes, name)
                    let fromFile = fuzzCall(path, &decoded, &refused) { try ImageFile.info(path) }
                    XCTAssertEqual(fromFile, info, path)
                    for body in [{ try ImageFile.read(path, as: format) }, { try ImageFile.readMask(path) },
                                 { try ImageFile.readClassMask(path, classes: classes) }] {
                        if let image = fuzzCall(path, &decoded, &refused, body) {
                            XCTAssertEqual(image.pixels.count, image.width * image.height * image.channels, path)
                        }
                    }
                    try FileManager.default.removeItem(atPath: path)
                }
            }
        }
        let seconds = Date().timeIntervalSince(start)
        print("fuzz: \(2 * casesPerFormat) corrupted files, \(decoded) successful calls, \(refused) errors, \(String(format: "%.2f", seconds)) s")
        XCTAssertGreaterThan(refused, casesPerFormat)
        XCTAssertGreaterThan(decoded, casesPerFormat / 10)  // mild damage (in pixel data) still decodes
    }

    /// `body`'s value, or nil after checking its error is a one-line ImageFileError naming `name`;
    /// any other error fails the test.
    func fuzzCall<T>(_ name: String, _ decoded: inout Int, _ refused: inout Int, _ body: () throws -> T) -> T? {
        do {
            let value = try body()
            decoded += 1
            return value
        } catch let error as ImageFileError {
            XCTAssertTrue(error.description.hasPrefix(name + ": "), error.description)
            XCTAssertFalse(error.description.contains("\n"), error.description)
            refused += 1
        } catch {
            XCTFail("\(name): not an ImageFileError: \(error)")
        }
        return nil
    }

    func mutate(_ base: [UInt8], png: Bool, rng: inout SplitMix64) -> [UInt8] {
        var bytes = base
        func random(_ n: Int) -> Int { Int(rng.next() % UInt64(max(n, 1))) }
        switch rng.next() % 6 {
        case 0:
            bytes = Array(bytes[0..<random(bytes.count)])
        case 1, 2:
            // JPEG: half the flips among the markers (the first scan starts after them).
            let headerEnd = png ? bytes.count : (startOfScan(bytes) ?? bytes.count)
            for _ in 0..<(1 + random(6)) {
                let end = !png && rng.next() % 2 == 0 ? headerEnd : bytes.count
                let at = (png ? 8 : 2) + random(end - (png ? 8 : 2))
                bytes[at] ^= UInt8(1 + rng.next() % 255)
            }
            if png && rng.next() % 2 == 0 { repairCRCs(&bytes) }
        case 3:
            let at = random(bytes.count)
            if rng.next() % 2 == 0 {
                bytes.insert(contentsOf: randomBytes(1 + random(40), seed: rng.next()), at: at)
            } else {
                bytes.removeSubrange(at..<min(bytes.count, at + 1 + random(40)))
            }
            if png && rng.next() % 2 == 0 { repairCRCs(&bytes) }
        case 4:
            let at = random(bytes.count)
            let end = min(bytes.count, at + 1 + random(64))
            for i in at..<end { bytes[i] = 0 }
            if png && rng.next() % 2 == 0 { repairCRCs(&bytes) }
        default:
            // A run copied over another place (repeats markers and segments).
            let from = random(bytes.count), to = random(bytes.count)
            let n = min(1 + random(32), bytes.count - from, bytes.count - to)
            bytes.replaceSubrange(to..<(to + n), with: bytes[from..<(from + n)])
            if png && rng.next() % 2 == 0 { repairCRCs(&bytes) }
        }
        return bytes
    }
}

// MARK: Helpers

/// A smooth colour field with a light texture (what photographs look like to a JPEG encoder),
/// a function of the seed.
func smoothImage(width: Int, height: Int, channels: Int, seed: UInt64) -> Image8 {
    var rng = SplitMix64(seed: seed)
    let phase = (0..<channels).map { _ in Double(rng.next() % 1000) / 100 }
    var image = Image8(width: width, height: height, channels: channels)
    for y in 0..<height { for x in 0..<width { for c in 0..<channels {
        let wave = 100 * sin(Double(x) * 0.11 + phase[c]) * cos(Double(y) * 0.07 - phase[c])
        let texture = Double(rng.next() % 9) - 4
        image[x, y, c] = UInt8(max(0, min(255, (128 + wave + texture).rounded())))
    } } }
    return image
}

func meanAbsoluteError(_ a: Image8, _ b: Image8) -> Double {
    precondition(a.pixels.count == b.pixels.count)
    return Double(zip(a.pixels, b.pixels).reduce(0) { $0 + abs(Int($1.0) - Int($1.1)) }) / Double(a.pixels.count)
}

func dropLastChannel(_ image: Image8) -> Image8 {
    let keep = image.channels - 1
    var pixels: [UInt8] = []
    for p in 0..<(image.width * image.height) { pixels += image.pixels[(p * image.channels)..<(p * image.channels + keep)] }
    return Image8(width: image.width, height: image.height, channels: keep, pixels: pixels)
}

/// JPEG bytes written by TurboJPEG directly (not through SegData), so the reader is tested on
/// encodings it does not write: chroma subsampling, progressive, CMYK.
func turboEncode(_ image: Image8, pixelFormat: TJPF, subsampling: TJSAMP, quality: Int, flags: Int32 = 0) -> [UInt8] {
    let handle = tjInitCompress()!
    defer { tjDestroy(handle) }
    var output: UnsafeMutablePointer<UInt8>? = nil
    var size: UInt = 0
    defer { tjFree(output) }
    let status = image.pixels.withUnsafeBufferPointer {
        tjCompress2(handle, $0.baseAddress, Int32(image.width), 0, Int32(image.height), Int32(pixelFormat.rawValue),
                    &output, &size, Int32(subsampling.rawValue), Int32(quality), flags)
    }
    precondition(status == 0, String(cString: tjGetErrorStr2(handle)))
    return Array(UnsafeBufferPointer(start: output!, count: Int(size)))
}

/// PNG bytes written by libpng directly (through a temporary file).
func libpngBytes(width: Int, height: Int, format: UInt32, samples: [UInt8], colormap: [UInt8]? = nil, entries: Int = 0) throws -> [UInt8] {
    let path = NSTemporaryDirectory() + "segdata-libpng-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).png"
    defer { try? FileManager.default.removeItem(atPath: path) }
    try samples.withUnsafeBytes {
        try libpngWrite(path: path, width: width, height: height, format: format, buffer: $0.baseAddress!,
                        colormap: colormap, colormapEntries: entries)
    }
    return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// A PNG signature, an IHDR with a correct CRC and an IEND: a header without pixel data.
func pngHeaderOnly(width: Int, height: Int, depth: Int, colorType: Int) -> [UInt8] {
    pngSignature + chunk("IHDR", bigEndian(UInt32(width)) + bigEndian(UInt32(height)) + [UInt8(depth), UInt8(colorType), 0, 0, 0])
        + chunk("IEND", [])
}

/// Offset of the first marker segment of `type` (the FF byte), walking the segments after SOI.
func jpegSegment(_ bytes: [UInt8], where matches: (UInt8) -> Bool) -> Int? {
    var at = 2
    while at + 4 <= bytes.count && bytes[at] == 0xFF {
        if matches(bytes[at + 1]) { return at }
        at += 2 + (Int(bytes[at + 2]) << 8 | Int(bytes[at + 3]))
    }
    return nil
}

/// The SOFn marker (C0-CF except DHT C4, JPG C8, DAC CC).
func startOfFrame(_ bytes: [UInt8]) -> Int? {
    jpegSegment(bytes) { (0xC0...0xCF).contains($0) && ![0xC4, 0xC8, 0xCC].contains($0) }
}

func startOfScan(_ bytes: [UInt8]) -> Int? { jpegSegment(bytes) { $0 == 0xDA } }
