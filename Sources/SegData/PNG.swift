// PNG files through libpng's SIMPLIFIED API (png_image_*), which reports errors as return codes
// and a message; the classic API longjmps, which Swift cannot catch. Every failure is an
// `ImageFileError` naming the file and the reason, never a crash. (JPEG files: JPEG.swift.)
//
// Sample values are read as stored, the way PIL and OpenCV read them: the colour-space chunks
// (gAMA, cHRM, sRGB, iCCP) are dropped before decoding, so libpng never gamma-corrects. 16-bit
// samples are scaled to 8 bits (v * 255 / 65535, rounded). Masks (`readMask`) keep palette indices
// and gray values exactly. `read` / `decode` / `readMask` / `decodeMask` / `readClassMask` take a
// PNG or a JPEG, told apart by the first bytes (JPEG.swift). See docs/DATA.md.

import CPNG
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An 8-bit image: `channels` (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) interleaved samples per pixel,
/// rows top to bottom, `pixels.count == width * height * channels`.
public struct Image8: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var channels: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(width >= 1 && height >= 1, "image must be at least 1x1 (got \(width)x\(height))")
        precondition((1...4).contains(channels), "channels must be 1...4 (got \(channels))")
        precondition(pixels.count == width * height * channels,
                     "\(pixels.count) samples for \(width)x\(height)x\(channels)")
        self.width = width; self.height = height; self.channels = channels; self.pixels = pixels
    }

    /// A zero-filled image.
    public init(width: Int, height: Int, channels: Int) {
        self.init(width: width, height: height, channels: channels,
                  pixels: [UInt8](repeating: 0, count: width * height * channels))
    }

    /// Sample `channel` of pixel (x, y).
    @inline(__always) public subscript(x: Int, y: Int, channel: Int) -> UInt8 {
        get { pixels[(y * width + x) * channels + channel] }
        set { pixels[(y * width + x) * channels + channel] = newValue }
    }
}

/// The in-memory layout a caller asks for; the raw value is the channel count.
public enum PixelFormat: Int, Sendable, CaseIterable {
    case gray = 1, grayAlpha = 2, rgb = 3, rgba = 4

    public var channels: Int { rawValue }
    var hasAlpha: Bool { self == .grayAlpha || self == .rgba }
    var hasColor: Bool { self == .rgb || self == .rgba }
}

/// Sizes refused from the header, before any pixel is decoded.
public struct ImageLimits: Sendable {
    /// Largest width or height.
    public var maxSide: Int = 16_384
    /// Largest width * height (256 Mi pixels = 16384 x 16384).
    public var maxPixels: Int = 1 << 28
    /// Largest file read into memory.
    public var maxFileBytes: Int = 1 << 30

    public init() {}
    public init(maxSide: Int, maxPixels: Int, maxFileBytes: Int = 1 << 30) {
        self.maxSide = maxSide; self.maxPixels = maxPixels; self.maxFileBytes = maxFileBytes
    }
}

/// A file that could not be read or written: one line, `<path>: <reason>`.
public struct ImageFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public init(_ path: String, _ reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
}

/// What the IHDR chunk says (parsed by us, validated by libpng).
public struct PNGHeader: Equatable, Sendable {
    public var width: Int, height: Int, bitDepth: Int, colorType: Int
    /// PNG colour types.
    public static let gray = 0, rgb = 2, palette = 3, grayAlpha = 4, rgba = 6
}

public enum ImageFile {
    // libpng's format flags (png.h, stable ABI); combinations are macros Swift does not import.
    static let flagAlpha = UInt32(PNG_FORMAT_FLAG_ALPHA)
    static let flagColor = UInt32(PNG_FORMAT_FLAG_COLOR)
    static let flagLinear = UInt32(PNG_FORMAT_FLAG_LINEAR)
    static let flagColormap = UInt32(PNG_FORMAT_FLAG_COLORMAP)
    static let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    // MARK: Reading images

    /// Reads a PNG of any kind (1-16 bits; gray, gray+alpha, RGB, RGBA, palette) or a JPEG (gray
    /// or colour; see JPEG.swift) as `format`, whatever the file's name.
    /// Colour is converted to gray by libpng (sRGB luminance); gray is replicated to RGB; alpha is
    /// dropped when not asked for (not composited) and is 255 when the file has none.
    public static func read(_ path: String, as format: PixelFormat, limits: ImageLimits = ImageLimits()) throws -> Image8 {
        try decode(readBytes(path, limits: limits), name: path, as: format, limits: limits)
    }

    /// `read` for an image that will be shrunk to `atLeast` or smaller: a JPEG is decoded straight
    /// to the smallest of TurboJPEG's scaled sizes (1/8 ... 1) that is still at least that large,
    /// which skips most of the IDCT work. Returns the image and the file's stored size.
    public static func read(_ path: String, as format: PixelFormat, atLeast: (width: Int, height: Int),
                            limits: ImageLimits = ImageLimits()) throws -> (image: Image8, width: Int, height: Int) {
        let bytes = try readBytes(path, limits: limits)
        guard try sniff(bytes, name: path) == .jpeg else {
            let image = try decode(bytes, name: path, as: format, limits: limits)
            return (image, image.width, image.height)
        }
        let stored = try info(bytes: bytes, name: path, limits: limits)
        return (try decodeJPEG(bytes, name: path, as: format, limits: limits, atLeast: atLeast), stored.width, stored.height)
    }

    /// `read` on PNG or JPEG bytes in memory; `name` is used in errors.
    public static func decode(_ bytes: [UInt8], name: String, as format: PixelFormat,
                              limits: ImageLimits = ImageLimits()) throws -> Image8 {
        if try sniff(bytes, name: name) == .jpeg { return try decodeJPEG(bytes, name: name, as: format, limits: limits) }
        let (data, header) = try prepare(bytes, name: name, dropTransparency: false)
        return try withDecoder(data, header: header, name: name, limits: limits) { image in
            let fileFormat = image.format
            if fileFormat & flagLinear != 0 {
                // 16-bit samples: treat as already encoded (no gamma), so libpng only rescales them.
                image.flags |= UInt32(PNG_IMAGE_FLAG_16BIT_sRGB)
            }
            let fileHasAlpha = fileFormat & flagAlpha != 0
            let decodeAlpha = format.hasAlpha || fileHasAlpha
            let decodeFormat = (format.hasColor ? flagColor : 0) | (decodeAlpha ? flagAlpha : 0)
            let decodeChannels = format.channels + (decodeAlpha && !format.hasAlpha ? 1 : 0)
            var decoded = try finish(&image, format: decodeFormat, channels: decodeChannels, name: name)
            if decodeChannels != format.channels { decoded = dropAlpha(decoded) }
            return decoded
        }
    }

    // MARK: Reading masks

    /// Reads a mask keeping its values exactly: palette files give their palette INDICES (the
    /// colours are ignored), gray files their gray values (1/2/4-bit values unscaled: a 2-bit 3
    /// stays 3; 16-bit values must fit 0...255). RGB(A) masks must be gray in disguise (r == g == b).
    /// Transparency is ignored. Returns a 1-channel image.
    /// A JPEG mask is lossy, so it is read as a BINARY mask: 255 where its gray value is >= 128,
    /// else 0 (colour JPEG masks must be gray within a small tolerance); see `readClassMask`.
    public static func readMask(_ path: String, limits: ImageLimits = ImageLimits()) throws -> Image8 {
        try decodeMask(readBytes(path, limits: limits), name: path, limits: limits)
    }

    /// `readMask` on PNG or JPEG bytes in memory; `name` is used in errors.
    public static func decodeMask(_ bytes: [UInt8], name: String, limits: ImageLimits = ImageLimits()) throws -> Image8 {
        if try sniff(bytes, name: name) == .jpeg { return try decodeJPEGMask(bytes, name: name, limits: limits) }
        let (data, header) = try prepare(bytes, name: name, dropTransparency: true)
        return try withDecoder(data, header: header, name: name, limits: limits) { image in
            guard let header else { throw ImageFileError(name, "not a valid PNG: IHDR chunk missing") }
            let width = Int(image.width), height = Int(image.height)
            switch header.colorType {
            case PNGHeader.palette:
                // PNG_FORMAT_RGB_COLORMAP: libpng hands back the file's own indices and palette.
                let entries = Int(image.colormap_entries)
                var colormap = [UInt8](repeating: 0, count: 3 * max(entries, 256))
                let out = try colormap.withUnsafeMutableBytes { map in
                    try finish(&image, format: flagColor | flagColormap, channels: 1, name: name, colormap: map.baseAddress)
                }
                return out
            case PNGHeader.gray, PNGHeader.grayAlpha, PNGHeader.rgb, PNGHeader.rgba:
                let color = header.colorType == PNGHeader.rgb || header.colorType == PNGHeader.rgba
                let alpha = header.colorType == PNGHeader.grayAlpha || header.colorType == PNGHeader.rgba
                let channels = (color ? 3 : 1) + (alpha ? 1 : 0)
                let format = (color ? flagColor : 0) | (alpha ? flagAlpha : 0)
                if header.bitDepth <= 8 && channels == 1 {
                    // Gray, the common case: the samples are the mask (1/2/4-bit values unscaled).
                    var raw = try finish(&image, format: format, channels: 1, name: name)
                    if header.bitDepth < 8 {
                        let scale = UInt8(255 / ((1 << header.bitDepth) - 1))
                        raw.pixels.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] /= scale } }
                    }
                    return raw
                }
                // One channel out of the samples as decoded (8-bit here: the gray < 8-bit case
                // returned above), with no wider copy of them.
                func single<S: BinaryInteger>(_ values: [S]) throws -> Image8 {
                    var mask = [UInt8](repeating: 0, count: width * height)
                    for p in 0..<(width * height) {
                        let v = Int(values[p * channels])
                        if color && (Int(values[p * channels + 1]) != v || Int(values[p * channels + 2]) != v) {
                            throw ImageFileError(name, "colour mask: pixel (\(p % width), \(p / width)) is "
                                + "(\(v), \(values[p * channels + 1]), \(values[p * channels + 2])); masks must be gray or palette")
                        }
                        if v > 255 {
                            throw ImageFileError(name, "16-bit mask value \(v) at (\(p % width), \(p / width)) does not fit 0...255")
                        }
                        mask[p] = UInt8(v)
                    }
                    return Image8(width: width, height: height, channels: 1, pixels: mask)
                }
                if header.bitDepth == 16 {
                    if alpha {
                        throw ImageFileError(name, "16-bit masks with an alpha channel are not supported (libpng premultiplies them)")
                    }
                    // Linear 16-bit in (no gAMA after stripping), linear 16-bit out: unchanged.
                    return try single(try finish16(&image, format: format | flagLinear, channels: channels, name: name))
                }
                return try single(try finish(&image, format: format, channels: channels, name: name).pixels)
            default:
                throw ImageFileError(name, "not a valid PNG: colour type \(header.colorType)")
            }
        }
    }

    /// Reads a mask as class indices. `classes == 1` (binary): 0 is background, any other value
    /// (1, or 255 as `segtrain synth` writes) is class 1. `classes >= 2`: values must be below
    /// `classes`, or equal `ignoreValue` (kept as is, for a loss's ignore index).
    /// JPEG masks (lossy) are accepted only when `classes == 1`: gray value >= 128 is 1, else 0
    /// (no pixel is `ignoreValue`); `classes >= 2` refuses them before decoding.
    public static func readClassMask(_ path: String, classes: Int, ignoreValue: UInt8? = nil,
                                     limits: ImageLimits = ImageLimits()) throws -> Image8 {
        try decodeClassMask(readBytes(path, limits: limits), name: path, classes: classes,
                            ignoreValue: ignoreValue, limits: limits)
    }

    /// `readClassMask` on PNG or JPEG bytes in memory; `name` is used in errors.
    public static func decodeClassMask(_ bytes: [UInt8], name: String, classes: Int, ignoreValue: UInt8? = nil,
                                       limits: ImageLimits = ImageLimits()) throws -> Image8 {
        precondition(classes >= 1, "classes must be at least 1 (got \(classes))")
        if try sniff(bytes, name: name) == .jpeg {
            if classes >= 2 { throw ImageFileError(name, jpegMultiClassMaskReason) }
            return try decodeJPEGMask(bytes, name: name, foreground: 1, limits: limits)
        }
        var mask = try decodeMask(bytes, name: name, limits: limits)
        try toClassIndices(&mask, classes: classes, ignoreValue: ignoreValue, name: name)
        return mask
    }

    /// Maps raw mask values to class indices in place (see `readClassMask`).
    public static func toClassIndices(_ mask: inout Image8, classes: Int, ignoreValue: UInt8? = nil, name: String) throws {
        precondition(mask.channels == 1 && classes >= 1)
        if classes == 1 {
            for i in mask.pixels.indices where mask.pixels[i] != 0 && mask.pixels[i] != ignoreValue { mask.pixels[i] = 1 }
            return
        }
        for (i, v) in mask.pixels.enumerated() where Int(v) >= classes && v != ignoreValue {
            throw ImageFileError(name, "mask value \(v) at (\(i % mask.width), \(i / mask.width)) is not a class index below \(classes)")
        }
    }

    // MARK: Writing

    /// Writes an 8-bit PNG: gray (1 channel), gray+alpha (2), RGB (3) or RGBA (4). The file is
    /// written under a temporary name and renamed, so a reader never sees half a file.
    /// (JPEG: `writeJPEG`.)
    public static func write(_ image: Image8, to path: String) throws {
        let temporary = path + ".partial"
        guard let file = fopen(temporary, "wb") else {
            throw ImageFileError(path, "cannot create: \(String(cString: strerror(errno)))")
        }
        var png = pngImage(for: image)
        let ok = image.pixels.withUnsafeBytes { png_image_write_to_stdio(&png, file, 0, $0.baseAddress, 0, nil) }
        let message = ok == 0 ? libpngMessage(&png) : ""
        png_image_free(&png)
        let closed = fclose(file)
        let closeError = String(cString: strerror(errno))
        if ok == 0 || closed != 0 {
            unlink(temporary)
            throw ImageFileError(path, ok == 0 ? "cannot write PNG: \(message)" : "cannot write: \(closeError)")
        }
        if rename(temporary, path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw ImageFileError(path, "cannot write: \(reason)")
        }
    }

    /// The PNG bytes of `image` (as `write` would store them).
    public static func encode(_ image: Image8) throws -> [UInt8] {
        var png = pngImage(for: image)
        // Stored blocks cost 5 bytes per 64 KiB; rows add a filter byte; chunks ~100 bytes.
        var capacity = image.pixels.count + image.height + image.pixels.count / 8192 + 4096
        for _ in 0..<2 {
            var bytes = [UInt8](repeating: 0, count: capacity)
            var size = capacity
            let ok = bytes.withUnsafeMutableBytes { out in
                image.pixels.withUnsafeBytes { png_image_write_to_memory(&png, out.baseAddress, &size, 0, $0.baseAddress, 0, nil) }
            }
            if ok != 0 { png_image_free(&png); return Array(bytes[0..<size]) }
            if size <= capacity { break }  // a real error, not a short buffer
            capacity = size
            png = pngImage(for: image)
        }
        let message = libpngMessage(&png)
        png_image_free(&png)
        throw ImageFileError("<memory>", "cannot encode PNG: \(message)")
    }

    // MARK: Internals

    static func pngImage(for image: Image8) -> png_image {
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        png.width = UInt32(image.width)
        png.height = UInt32(image.height)
        png.format = (image.channels >= 3 ? flagColor : 0) | (image.channels % 2 == 0 ? flagAlpha : 0)
        return png
    }

    static func libpngMessage(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The whole file, refused when larger than `limits.maxFileBytes`.
    static func readBytes(_ path: String, limits: ImageLimits) throws -> [UInt8] {
        guard let file = fopen(path, "rb") else {
            throw ImageFileError(path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if bytes.count > limits.maxFileBytes {
                throw ImageFileError(path, "file larger than the limit of \(limits.maxFileBytes) bytes")
            }
            if n < chunk.count {
                if ferror(file) != 0 { throw ImageFileError(path, "cannot read: \(String(cString: strerror(errno)))") }
                break
            }
        }
        return bytes
    }

    /// CRC-32 of PNG chunks (ISO 3309), over type and data.
    static let crcTable: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }

    /// Checks the signature, parses IHDR (when its CRC is right; otherwise libpng reports it) and removes the chunks that would make libpng change
    /// sample values: gAMA, cHRM, sRGB, iCCP (and tRNS, bKGD for masks). Malformed chunk
    /// structure is left for libpng to report.
    static func prepare(_ bytes: [UInt8], name: String, dropTransparency: Bool) throws -> ([UInt8], PNGHeader?) {
        if bytes.isEmpty { throw ImageFileError(name, "empty file") }
        if bytes.count < 8 || Array(bytes[0..<8]) != pngSignature {
            throw ImageFileError(name, "not a PNG file (bad signature)")
        }
        var dropped: Set<String> = ["gAMA", "cHRM", "sRGB", "iCCP"]
        if dropTransparency { dropped.formUnion(["tRNS", "bKGD"]) }
        var out = Array(bytes[0..<8])
        out.reserveCapacity(bytes.count)
        var header: PNGHeader? = nil
        var at = 8
        func be32(_ i: Int) -> Int {
            Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
        }
        while at + 12 <= bytes.count {
            let length = be32(at)
            let end = at + 12 + length
            if length > 0x7FFF_FFFF || end > bytes.count { break }
            let type = String(decoding: bytes[(at + 4)..<(at + 8)], as: UTF8.self)
            if type == "IHDR" && at == 8 && length == 13 && crc32(bytes[(at + 4)..<(at + 21)]) == UInt32(be32(at + 21)) {
                header = PNGHeader(width: be32(at + 8), height: be32(at + 12),
                                   bitDepth: Int(bytes[at + 16]), colorType: Int(bytes[at + 17]))
            }
            if !dropped.contains(type) { out.append(contentsOf: bytes[at..<end]) }
            at = end
            if type == "IEND" { break }
        }
        if at < bytes.count { out.append(contentsOf: bytes[at...]) }
        return (out, header)
    }

    /// Checks the size limits on the stored IHDR, runs png_image_begin_read_from_memory, checks
    /// them again on what libpng read, then `body` (which calls
    /// `finish`). The image is always freed.
    static func withDecoder(_ data: [UInt8], header: PNGHeader?, name: String, limits: ImageLimits,
                            _ body: (inout png_image) throws -> Image8) throws -> Image8 {
        // The IHDR as stored, before libpng reads further (it stops at the first IDAT).
        if let header { try checkLimits(width: header.width, height: header.height, limits: limits, name: name) }
        return try data.withUnsafeBytes { raw in
            var image = png_image()
            image.version = UInt32(PNG_IMAGE_VERSION)
            defer { png_image_free(&image) }
            if png_image_begin_read_from_memory(&image, raw.baseAddress, raw.count) == 0 {
                throw ImageFileError(name, "not a valid PNG: \(libpngMessage(&image))")
            }
            try checkLimits(width: Int(image.width), height: Int(image.height), limits: limits, name: name)
            return try body(&image)
        }
    }

    static func checkLimits(width: Int, height: Int, limits: ImageLimits, name: String) throws {
        if width < 1 || height < 1 { throw ImageFileError(name, "image is \(width)x\(height): zero-sized") }
        if width > limits.maxSide || height > limits.maxSide || width * height > limits.maxPixels {
            throw ImageFileError(name, "image is \(width)x\(height), over the limit (max side \(limits.maxSide), "
                                 + "max \(limits.maxPixels) pixels)")
        }
    }

    /// png_image_finish_read into an 8-bit buffer of `channels` samples per pixel.
    static func finish(_ image: inout png_image, format: UInt32, channels: Int, name: String,
                       colormap: UnsafeMutableRawPointer? = nil) throws -> Image8 {
        image.format = format
        let width = Int(image.width), height = Int(image.height)
        let count = width * height * channels
        var failure: String? = nil
        let pixels = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            buffer.initialize(repeating: 0)  // also the composition target libpng may read
            if png_image_finish_read(&image, nil, buffer.baseAddress, 0, colormap) == 0 {
                failure = libpngMessage(&image)
            }
            initialized = count
        }
        if let failure { throw ImageFileError(name, "cannot decode PNG: \(failure)") }
        return Image8(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// png_image_finish_read into a 16-bit buffer; returns the samples widened to Int.
    static func finish16(_ image: inout png_image, format: UInt32, channels: Int, name: String) throws -> [Int] {
        image.format = format
        let count = Int(image.width) * Int(image.height) * channels
        var samples = [UInt16](repeating: 0, count: count)
        let ok = samples.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
        if ok == 0 { throw ImageFileError(name, "cannot decode PNG: \(libpngMessage(&image))") }
        return samples.map(Int.init)
    }

    static func dropAlpha(_ image: Image8) -> Image8 {
        let keep = image.channels - 1
        var out = [UInt8](repeating: 0, count: image.width * image.height * keep)
        for p in 0..<(image.width * image.height) {
            for c in 0..<keep { out[p * keep + c] = image.pixels[p * image.channels + c] }
        }
        return Image8(width: image.width, height: image.height, channels: keep, pixels: out)
    }
}
