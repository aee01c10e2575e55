import XCTest
import Foundation
import SegEngine
@testable import SegModel

final class SafetensorsTests: XCTestCase {
    private func sampleFile() -> (bytes: [UInt8], a: OwnedTensor, b: OwnedTensor) {
        let a = OwnedTensor(Shape(2, 3, 1, 1), [1, -2, 3.5, 4, 5, 6])
        let b = OwnedTensor(.vector(3), [0.25, -0, .greatestFiniteMagnitude])
        let bytes = Safetensors.encode([Safetensors.Item(name: "a.weight", shape: [2, 3], values: a.tensor),
                                        Safetensors.Item(name: "b", shape: [3], values: b.tensor)],
                                       metadata: ["format": "pt"])
        return (bytes, a, b)
    }

    func testRoundTripAndLayout() throws {
        let (bytes, a, b) = sampleFile()
        let headerLength = Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        XCTAssertEqual((8 + headerLength) % 8, 0, "data starts 8-byte aligned")
        XCTAssertEqual(bytes.count, 8 + headerLength + 4 * 9)
        let file = try SafetensorsFile(bytes: bytes, name: "x")
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(file.entries["a.weight"]?.shape, [2, 3])
        let ra = OwnedTensor(a.shape), rb = OwnedTensor(b.shape)
        try file.read("a.weight", into: ra.tensor, shape: [2, 3])
        try file.read("b", into: rb.tensor, shape: [3])
        XCTAssertEqual(ra.tensor.toArray(), a.tensor.toArray())
        XCTAssertEqual(rb.tensor.toArray().map(\.bitPattern), b.tensor.toArray().map(\.bitPattern))
        XCTAssertThrowsError(try file.read("a.weight", into: ra.tensor, shape: [3, 2])) {
            XCTAssertTrue("\($0)".contains("has shape [2, 3], expected [3, 2]"), "\($0)")
        }
    }

    /// Every malformed file is refused with a message naming it, before any data is read.
    func testMalformedFilesAreRefused() throws {
        let (good, _, _) = sampleFile()
        /// A file with this JSON header followed by 8 data bytes.
        func header(_ json: String) -> [UInt8] {
            let h = Array(json.utf8)
            var out: [UInt8] = []
            var n = UInt64(h.count).littleEndian
            withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
            return out + h + [UInt8](repeating: 0, count: 8)
        }
        let cases: [(String, [UInt8], String)] = [
            ("empty", [], "truncated"),
            ("truncated header", Array(good.prefix(20)), "truncated"),
            ("truncated data", Array(good.dropLast(4)), "outside"),
            ("huge header length", [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f] + Array(good.dropFirst(8)), "exceeds"),
            ("not JSON", header("{nope"), "not valid JSON"),
            ("not an object", header("[1, 2]"), "not a JSON object"),
            ("wrong dtype", header(#"{"t":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#), "dtype F16"),
            ("size mismatch", header(#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#), "bytes for shape"),
            ("negative shape", header(#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#), "bad shape"),
            ("offsets outside", header(#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#), "outside"),
            ("overlap", header(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"u":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#), "overlap"),
        ]
        for (what, bytes, expected) in cases {
            XCTAssertThrowsError(try SafetensorsFile(bytes: bytes, name: "bad.safetensors"), what) { error in
                XCTAssertTrue("\(error)".hasPrefix("bad.safetensors: "), "\(what): \(error)")
                XCTAssertTrue("\(error)".contains(expected), "\(what): \(error)")
            }
        }
        XCTAssertThrowsError(try SafetensorsFile(path: "/nonexistent/model.safetensors")) {
            XCTAssertEqual("\($0)", "/nonexistent/model.safetensors: no such file")
        }
    }
}
