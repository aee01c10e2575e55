// JPEG files through libjpeg-turbo's TurboJPEG API (2.x: tjDecompressHeader3, tjDecompress2,
// tjCompress2), which reports errors as return codes and a per-handle message; the libjpeg API
// underneath longjmps, which Swift cannot catch. Every failure is an `ImageFileError` naming the
// file and the reason, never a crash; every handle is destroyed (`defer tjDestroy`).
//
// libjpeg WARNINGS (truncated data, corrupt entropy-coded data, extraneous bytes before a marker)
// are errors here (TJFLAG_STOPONWARNING, and any -1 return is refused), so a truncated file never
// yields a grey-filled image. The header is read first (tjDecompressHeader3) and its dimensions
// checked against `ImageLimits` before the pixel buffer is allocated. CMYK / YCCK files are
// refused. See docs/DATA.md.
//
// `ImageFile.read` / `decode` / `readMask` / `decodeMask` / `readClassMask` dispatch here on the
// magic bytes FF D8 FF (PNG.swift); `info` probes either format's header.

import CTurboJPEG
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The file formats `ImageFile` reads, told apart by content (magic bytes), not by file name.
public enum ImageFormat: String, Sendable, Equatable {
    case png, jpeg
}

/// What a file's header says (`ImageFile.info`): no pixel has been decoded.
public struct ImageInfo: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// The file's own channels: PNG gray 1, gray+alpha 2, RGB 3, RGBA 4, palette 3 (a tRNS chunk
    /// is not looked at); JPEG gray 1, colour (YCbCr or RGB) 3.
    public var channels: Int
    public var format: ImageFormat

    public init(width: Int, height: Int, channels: Int, format: ImageFormat) {
        self.width = width; self.height = height; self.channels = channels; self.format = format
    }
}

/// What tjDecompressHeader3 reports.
struct JPEGHeader {
    var width: Int, height: Int, subsampling: Int32, colorspace: Int32
}

extension ImageFile {
    static let jpegMagic: [UInt8] = [0xFF, 0xD8, 0xFF]
    /// Decoding flags: libjpeg's accurate integer IDCT (its decompression default, named so the
    /// result does not depend on the implementation's default), warnings are errors, and at most
    /// 500 progressive scans (a progressive file with thousands of tiny scans is a known DoS).
    static let jpegDecodeFlags = TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS
    /// libjpeg's JPEG_MAX_DIMENSION: no side of a JPEG can be larger.
    static let jpegMaxSide = 65_500
    /// Colour JPEG masks: largest max(r, g, b) - min(r, g, b) still read as gray.
    static let jpegMaskGrayTolerance = 32
    static let jpegMultiClassMaskReason = "JPEG masks are lossy; multi-class masks must be PNG"

    // MARK: Format dispatch

    /// The format of `bytes` from its first bytes. A file starting like the PNG signature (its
    /// first 4 bytes, or a prefix of it when shorter) is a PNG, so a damaged PNG gets the PNG
    /// errors; FF D8 FF (or a prefix of it) is a JPEG; anything else is refused.
    static func sniff(_ bytes: [UInt8], name: String) throws -> ImageFormat {
        if bytes.isEmpty { throw ImageFileError(name, "empty file") }
        if bytes.starts(with: jpegMagic) || (bytes.count < jpegMagic.count && jpegMagic.starts(with: bytes)) {
            return .jpeg
        }
        if bytes.starts(with: pngSignature.prefix(4)) || (bytes.count < 4 && pngSignature.starts(with: bytes)) {
            return .png
        }
        throw ImageFileError(name, "not a PNG or JPEG file")
    }

    // MARK: Header probe

    /// Width, height and channel count of a PNG or JPEG from its header only (PNG: the IHDR
    /// chunk; JPEG: tjDecompressHeader3, which reads the markers up to the first scan), with the
    /// same refusals as `read` makes before decoding: empty, not PNG/JPEG, malformed header,
    /// zero-sized, over `limits` (sides, pixels, file bytes), CMYK JPEG. It does not prove the
    /// pixels decode. Reads the first 64 KiB of the file (all of it if a JPEG's header is longer).
    public static func info(_ path: String, limits: ImageLimits = ImageLimits()) throws -> ImageInfo {
        let (prefix, fileSize) = try readPrefix(path, count: 1 << 16)
        if fileSize > limits.maxFileBytes {
            throw ImageFileError(path, "file larger than the limit of \(limits.maxFileBytes) bytes")
        }
        do {
            return try info(bytes: prefix, name: path, limits: limits)
        } catch let error as ImageFileError where prefix.count < fileSize {
            // A JPEG whose markers before the first scan (EXIF, ICC profile...) pass 64 KiB.
            guard (try? sniff(prefix, name: path)) == .jpeg else { throw error }
            return try info(bytes: readBytes(path, limits: limits), name: path, limits: limits)
        }
    }

    /// `info` on the bytes of a file (or its beginning); `name` is used in errors.
    public static func info(bytes: [UInt8], name: String, limits: ImageLimits = ImageLimits()) throws -> ImageInfo {
        switch try sniff(bytes, name: name) {
        case .png:
            let header = try pngHeader(bytes, name: name)
            try checkLimits(width: header.width, height: header.height, limits: limits, name: name)
            let channels = [PNGHeader.gray: 1, PNGHeader.grayAlpha: 2, PNGHeader.rgb: 3,
                            PNGHeader.rgba: 4, PNGHeader.palette: 3][header.colorType] ?? 0
            return ImageInfo(width: header.width, height: header.height, channels: channels, format: .png)
        case .jpeg:
            return try withJPEGDecoder(bytes, name: name, limits: limits) { _, _, header in
                try refuseCMYK(header, name: name)
                return ImageInfo(width: header.width, height: header.height,
                          channels: header.colorspace == Int32(TJCS_GRAY.rawValue) ? 1 : 3, format: .jpeg)
            }
        }
    }

    /// The IHDR of PNG bytes, validated as libpng would (first chunk, length 13, CRC, the
    /// bit depth / colour type combinations, compression, filter and interlace methods).
    static func pngHeader(_ bytes: [UInt8], name: String) throws -> PNGHeader {
        if bytes.count < 8 || Array(bytes[0..<8]) != pngSignature {
            throw ImageFileError(name, "not a PNG file (bad signature)")
        }
        func be32(_ i: Int) -> Int {
            Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
        }
        guard bytes.count >= 33, be32(8) == 13, Array(bytes[12..<16]) == Array("IHDR".utf8) else {
            throw ImageFileError(name, "not a valid PNG: no IHDR chunk after the signature")
        }
        guard crc32(bytes[12..<29]) == UInt32(be32(29)) else {
            throw ImageFileError(name, "not a valid PNG: IHDR: CRC error")
        }
        let header = PNGHeader(width: be32(16), height: be32(20), bitDepth: Int(bytes[24]), colorType: Int(bytes[25]))
        let depths: [Int: [Int]] = [PNGHeader.gray: [1, 2, 4, 8, 16], PNGHeader.rgb: [8, 16], PNGHeader.palette: [1, 2, 4, 8],
                                    PNGHeader.grayAlpha: [8, 16], PNGHeader.rgba: [8, 16]]
        guard let allowed = depths[header.colorType] else {
            throw ImageFileError(name, "not a valid PNG: IHDR: colour type \(header.colorType)")
        }
        guard allowed.contains(header.bitDepth) else {
            throw ImageFileError(name, "not a valid PNG: IHDR: bit depth \(header.bitDepth) with colour type \(header.colorType)")
        }
        guard bytes[26] == 0, bytes[27] == 0, bytes[28] <= 1 else {
            throw ImageFileError(name, "not a valid PNG: IHDR: compression \(bytes[26]), filter \(bytes[27]), interlace \(bytes[28])")
        }
        return header
    }

    /// Up to `count` bytes from the start of the file, and the file's size.
    static func readPrefix(_ path: String, count: Int) throws -> ([UInt8], Int) {
        guard let file = fopen(path, "rb") else {
            throw ImageFileError(path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var status = stat()
        if fstat(fileno(file), &status) != 0 {
            throw ImageFileError(path, "cannot read: \(String(cString: strerror(errno)))")
        }
        if status.st_mode & S_IFMT == S_IFDIR { throw ImageFileError(path, "cannot read: Is a directory") }
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { fread($0.baseAddress, 1, count, file) }
        if n < count && ferror(file) != 0 {
            throw ImageFileError(path, "cannot read: \(String(cString: strerror(errno)))")
        }
        bytes.removeSubrange(n...)
        return (bytes, max(Int(status.st_size), n))
    }

    // MARK: Decoding

    /// A JPEG as `format`: gray is libjpeg's luma (Y) of a colour file; gray files are replicated
    /// to RGB; alpha, when asked for, is 255.
    static func decodeJPEG(_ bytes: [UInt8], name: String, as format: PixelFormat, limits: ImageLimits,
                           atLeast: (width: Int, height: Int)? = nil) throws -> Image8 {
        try withJPEGDecoder(bytes, name: name, limits: limits) { handle, source, stored in
            try refuseCMYK(stored, name: name)
            var header = stored
            if let atLeast { (header.width, header.height) = scaledSize(stored, atLeast: atLeast) }
            switch format {
            case .gray: return try jpegPixels(handle, source, header, TJPF_GRAY, channels: 1, name: name)
            case .rgb: return try jpegPixels(handle, source, header, TJPF_RGB, channels: 3, name: name)
            case .rgba: return try jpegPixels(handle, source, header, TJPF_RGBA, channels: 4, name: name)  // libjpeg-turbo sets A = 0xFF
            case .grayAlpha:
                let gray = try jpegPixels(handle, source, header, TJPF_GRAY, channels: 1, name: name)
                var pixels = [UInt8](repeating: 255, count: gray.pixels.count * 2)
                for (p, v) in gray.pixels.enumerated() { pixels[2 * p] = v }
                return Image8(width: gray.width, height: gray.height, channels: 2, pixels: pixels)
            }
        }
    }

    /// A JPEG mask, binary: 255 where the gray value (gray files: the sample; colour files: the
    /// mean of R, G and B, which must be within `jpegMaskGrayTolerance` of each other) is >= 128,
    /// else 0 (the 0/255 `segtrain synth` stores binary masks as). `foreground` is the value stored.
    static func decodeJPEGMask(_ bytes: [UInt8], name: String, foreground: UInt8 = 255, limits: ImageLimits) throws -> Image8 {
        try withJPEGDecoder(bytes, name: name, limits: limits) { handle, source, header in
            try refuseCMYK(header, name: name)
            if header.colorspace == Int32(TJCS_GRAY.rawValue) {
                var mask = try jpegPixels(handle, source, header, TJPF_GRAY, channels: 1, name: name)
                for i in mask.pixels.indices { mask.pixels[i] = mask.pixels[i] >= 128 ? foreground : 0 }
                return mask
            }
            let rgb = try jpegPixels(handle, source, header, TJPF_RGB, channels: 3, name: name)
            var mask = [UInt8](repeating: 0, count: rgb.width * rgb.height)
            for p in mask.indices {
                let r = Int(rgb.pixels[3 * p]), g = Int(rgb.pixels[3 * p + 1]), b = Int(rgb.pixels[3 * p + 2])
                if max(r, g, b) - min(r, g, b) > jpegMaskGrayTolerance {
                    throw ImageFileError(name, "colour mask: pixel (\(p % rgb.width), \(p / rgb.width)) is (\(r), \(g), \(b)); "
                        + "masks must be gray (JPEG: channels within \(jpegMaskGrayTolerance) of each other)")
                }
                mask[p] = r + g + b >= 3 * 128 ? foreground : 0
            }
            return Image8(width: rgb.width, height: rgb.height, channels: 1, pixels: mask)
        }
    }

    /// The smallest size TurboJPEG can decode to directly (its scaling factors, 1/8 to 1: an IDCT
    /// of fewer coefficients, far cheaper than decoding in full and shrinking) that is still at
    /// least `atLeast` in both dimensions; the stored size when no factor below 1 qualifies.
    static func scaledSize(_ header: JPEGHeader, atLeast: (width: Int, height: Int)) -> (Int, Int) {
        var count: Int32 = 0
        guard let factors = tjGetScalingFactors(&count) else { return (header.width, header.height) }
        var best = (header.width, header.height)
        for k in 0..<Int(count) {
            let f = factors[k]
            guard f.num > 0, f.denom > 0, f.num < f.denom else { continue }
            let w = (header.width * Int(f.num) + Int(f.denom) - 1) / Int(f.denom)
            let h = (header.height * Int(f.num) + Int(f.denom) - 1) / Int(f.denom)
            if w >= atLeast.width && h >= atLeast.height && w * h < best.0 * best.1 { best = (w, h) }
        }
        return best
    }

    static func refuseCMYK(_ header: JPEGHeader, name: String) throws {
        if header.colorspace == Int32(TJCS_CMYK.rawValue) || header.colorspace == Int32(TJCS_YCCK.rawValue) {
            let kind = header.colorspace == Int32(TJCS_CMYK.rawValue) ? "CMYK" : "YCCK (Adobe CMYK)"
            throw ImageFileError(name, "\(kind) JPEGs are not supported (converting ink to RGB needs a colour profile); convert the file to RGB")
        }
    }

    /// A TurboJPEG decompressor on `bytes` whose header has been read and checked against
    /// `limits` (and libjpeg's own maximum side), handed to `body`; destroyed afterwards.
    static func withJPEGDecoder<T>(_ bytes: [UInt8], name: String, limits: ImageLimits,
                                   _ body: (tjhandle, UnsafeBufferPointer<UInt8>, JPEGHeader) throws -> T) throws -> T {
        guard let handle = tjInitDecompress() else {
            throw ImageFileError(name, "cannot start the JPEG decoder: \(turboMessage(nil))")
        }
        defer { tjDestroy(handle) }
        return try bytes.withUnsafeBufferPointer { source in
            var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = -1, colorspace: Int32 = -1
            if tjDecompressHeader3(handle, source.baseAddress, UInt(source.count), &width, &height, &subsampling, &colorspace) != 0 {
                throw ImageFileError(name, "not a valid JPEG: \(turboError(handle))")
            }
            // An EOI before any frame (a tables-only datastream, or data cut before the frame, for
            // which libjpeg supplies the EOI) succeeds and leaves the sizes alone.
            if width == 0 && height == 0 {
                throw ImageFileError(name, "not a valid JPEG: no image (the data ends before the first frame)")
            }
            let header = JPEGHeader(width: Int(width), height: Int(height), subsampling: subsampling, colorspace: colorspace)
            try checkLimits(width: header.width, height: header.height, limits: limits, name: name)
            return try body(handle, source, header)
        }
    }

    /// tjDecompress2 of the whole image, unscaled, into `channels` samples per pixel. Any -1
    /// return (fatal error, or a warning stopped by TJFLAG_STOPONWARNING) is an error.
    static func jpegPixels(_ handle: tjhandle, _ source: UnsafeBufferPointer<UInt8>, _ header: JPEGHeader,
                           _ pixelFormat: TJPF, channels: Int, name: String) throws -> Image8 {
        let count = header.width * header.height * channels
        var failure: String? = nil
        let pixels = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            let status = tjDecompress2(handle, source.baseAddress, UInt(source.count), buffer.baseAddress,
                                       Int32(header.width), 0, Int32(header.height), Int32(truncatingIfNeeded: pixelFormat.rawValue), jpegDecodeFlags)
            if status != 0 {
                failure = turboError(handle)
                initialized = 0
            } else {
                initialized = count
            }
        }
        if let failure { throw ImageFileError(name, "cannot decode JPEG: \(failure)") }
        return Image8(width: header.width, height: header.height, channels: channels, pixels: pixels)
    }

    /// The last error of `handle`, marked when it was a libjpeg warning (which libjpeg would
    /// have let pass, e.g. with the missing data filled in).
    static func turboError(_ handle: tjhandle) -> String {
        let warning = tjGetErrorCode(handle) == Int32(TJERR_WARNING.rawValue)
        return turboMessage(handle) + (warning ? " (libjpeg warning, treated as an error)" : "")
    }

    /// TurboJPEG's last message for `handle` (NULL: the last global one), on one line.
    static func turboMessage(_ handle: tjhandle?) -> String {
        guard let text = tjGetErrorStr2(handle) else { return "unknown error" }
        let message = String(cString: text).split(whereSeparator: \.isNewline).joined(separator: " ")
        return message.isEmpty ? "unknown error" : message
    }

    // MARK: Encoding

    /// The JPEG bytes of `image` at `quality` (1...100; 90-95 keeps training images close to the
    /// original): gray (1 channel) as a gray JPEG, RGB (3) as YCbCr without chroma subsampling
    /// (4:4:4). Gray+alpha and RGBA are written without their alpha.
    public static func encodeJPEG(_ image: Image8, quality: Int) throws -> [UInt8] {
        try encodeJPEG(image, quality: quality, name: "<memory>")
    }

    /// Writes `encodeJPEG(image, quality:)` to `path`: under `path.partial`, then renamed, so a
    /// reader never sees half a file.
    public static func writeJPEG(_ image: Image8, to path: String, quality: Int) throws {
        try writeAtomically(encodeJPEG(image, quality: quality, name: path), to: path)
    }

    /// `chroma420`: RGB with 4:2:0 chroma subsampling (what cameras write; `segtrain bench --jpeg-decode`).
    static func encodeJPEG(_ image: Image8, quality: Int, name: String, chroma420: Bool = false) throws -> [UInt8] {
        guard (1...100).contains(quality) else {
            throw ImageFileError(name, "JPEG quality must be 1...100 (got \(quality))")
        }
        guard image.width <= jpegMaxSide && image.height <= jpegMaxSide else {
            throw ImageFileError(name, "image is \(image.width)x\(image.height); a JPEG side is at most \(jpegMaxSide)")
        }
        let gray = image.channels <= 2
        // Gray+alpha: the gray samples alone (no TurboJPEG format skips every other byte).
        let samples = image.channels == 2 ? stride(from: 0, to: image.pixels.count, by: 2).map { image.pixels[$0] } : image.pixels
        let pixelFormat = gray ? TJPF_GRAY : image.channels == 4 ? TJPF_RGBX : TJPF_RGB  // RGBX: the 4th byte is ignored
        let subsampling = gray ? TJSAMP_GRAY : chroma420 ? TJSAMP_420 : TJSAMP_444
        guard let handle = tjInitCompress() else {
            throw ImageFileError(name, "cannot start the JPEG encoder: \(turboMessage(nil))")
        }
        defer { tjDestroy(handle) }
        var output: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        defer { tjFree(output) }
        let status = samples.withUnsafeBufferPointer {
            tjCompress2(handle, $0.baseAddress, Int32(image.width), 0, Int32(image.height), Int32(truncatingIfNeeded: pixelFormat.rawValue),
                        &output, &size, Int32(truncatingIfNeeded: subsampling.rawValue), Int32(quality), TJFLAG_ACCURATEDCT)
        }
        guard status == 0, let output else {
            throw ImageFileError(name, "cannot encode JPEG: \(turboMessage(handle))")
        }
        return Array(UnsafeBufferPointer(start: output, count: Int(size)))
    }

    /// Writes `bytes` to `path.partial`, then renames it to `path`; nothing is left behind on failure.
    static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let temporary = path + ".partial"
        guard let file = fopen(temporary, "wb") else {
            throw ImageFileError(path, "cannot create: \(String(cString: strerror(errno)))")
        }
        let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        let writeError = String(cString: strerror(errno))
        let closed = fclose(file)
        let closeError = String(cString: strerror(errno))
        if written != bytes.count || closed != 0 {
            unlink(temporary)
            throw ImageFileError(path, "cannot write: \(written != bytes.count ? writeError : closeError)")
        }
        if rename(temporary, path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw ImageFileError(path, "cannot write: \(reason)")
        }
    }
}
