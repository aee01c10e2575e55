import CPNG
import Foundation
import SegData
import SegEngine
import XCTest

/// A fresh folder under the system temporary folder, removed by the caller's tearDown.
func makeTemporaryFolder(_ tag: String) throws -> String {
    let path = NSTemporaryDirectory() + "segdata-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
}

/// Writes a PNG with libpng's simplified API directly (not through SegData), so the reader is tested
/// against files it did not write. `format` is a PNG_FORMAT_* combination; `buffer` holds 8-bit
/// samples, or 16-bit ones when `format` has PNG_FORMAT_FLAG_LINEAR.
func libpngWrite(path: String, width: Int, height: Int, format: UInt32, buffer: UnsafeRawPointer,
                 colormap: [UInt8]? = nil, colormapEntries: Int = 0) throws {
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    image.width = UInt32(width)
    image.height = UInt32(height)
    image.format = format
    image.colormap_entries = UInt32(colormapEntries)
    let ok: Int32
    if let colormap {
        ok = colormap.withUnsafeBytes { png_image_write_to_file(&image, path, 0, buffer, 0, $0.baseAddress) }
    } else {
        ok = png_image_write_to_file(&image, path, 0, buffer, 0, nil)
    }
    let message = withUnsafeBytes(of: &image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    png_image_free(&image)
    if ok == 0 { throw ImageFileError(path, "test writer: \(message)") }
}

let formatAlpha = UInt32(PNG_FORMAT_FLAG_ALPHA)
let formatColor = UInt32(PNG_FORMAT_FLAG_COLOR)
let formatLinear = UInt32(PNG_FORMAT_FLAG_LINEAR)
let formatColormap = UInt32(PNG_FORMAT_FLAG_COLORMAP)

/// CRC-32 as PNG chunks use it (ISO 3309, over type and data).
func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}

func bigEndian(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }

/// One PNG chunk with a correct CRC.
func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
    let body = Array(type.utf8) + data
    return bigEndian(UInt32(data.count)) + body + bigEndian(crc32(body[...]))
}

let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

/// Recomputes every PNG chunk's CRC where the chunk structure is still intact (so a corruption
/// reaches zlib and the filters instead of the CRC check).
func repairCRCs(_ bytes: inout [UInt8]) {
    var at = 8
    while at + 12 <= bytes.count {
        let length = Int(bytes[at]) << 24 | Int(bytes[at + 1]) << 16 | Int(bytes[at + 2]) << 8 | Int(bytes[at + 3])
        guard length <= bytes.count - at - 12 else { return }
        let crc = bigEndian(crc32(bytes[(at + 4)..<(at + 8 + length)]))
        bytes.replaceSubrange((at + 8 + length)..<(at + 12 + length), with: crc)
        at += 12 + length
    }
}

/// Asserts that `body` throws an ImageFileError whose one-line description names `path` and
/// contains `reason`.
func assertImageError(_ path: String, _ reason: String, file: StaticString = #filePath, line: UInt = #line,
                      _ body: () throws -> Any) {
    do {
        _ = try body()
        XCTFail("\(path): expected an error containing '\(reason)'", file: file, line: line)
    } catch let error as ImageFileError {
        let text = error.description
        XCTAssertTrue(text.hasPrefix(path + ": "), "error does not name the file: \(text)", file: file, line: line)
        XCTAssertTrue(text.contains(reason), "expected '\(reason)' in: \(text)", file: file, line: line)
        XCTAssertFalse(text.contains("\n"), "error is not one line: \(text)", file: file, line: line)
    } catch {
        XCTFail("\(path): not an ImageFileError: \(error)", file: file, line: line)
    }
}
