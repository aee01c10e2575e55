// CRC-32C against published vectors, TFRecord framing against bytes TensorBoard's own writer
// produced, and the event file read back record by record and decoded.

import Foundation
import XCTest
@testable import SegTensorBoard

final class CRC32CTests: XCTestCase {
    func testKnownVectors() {
        // The check value of CRC-32C (Castagnoli), and RFC 3720 (iSCSI) appendix B.4's vectors.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([]), 0)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }), 0x113F_DB5C)
    }

    func testMaskRoundTrips() {
        for crc: UInt32 in [0, 1, 0xE306_9283, 0xFFFF_FFFF, 0x8000_0000] {
            XCTAssertEqual(CRC32C.unmasked(CRC32C.masked(crc)), crc)
        }
        // ((0 >> 15) | (0 << 17)) + 0xa282ead8
        XCTAssertEqual(CRC32C.masked(0), 0xA282_EAD8)
    }
}

final class RecordFramingTests: XCTestCase {
    /// Bytes of tensorboard 2.21's RecordWriter (tensorboard.summary.writer.record_writer) for
    /// these payloads: `w = RecordWriter(io.BytesIO()); w.write(data)`.
    static let reference: [(data: [UInt8], record: [UInt8])] = [
        (Array("123456789".utf8),
         [9, 0, 0, 0, 0, 0, 0, 0, 55, 249, 113, 57, 49, 50, 51, 52, 53, 54, 55, 56, 57, 229, 176, 138, 199]),
        ([], [0, 0, 0, 0, 0, 0, 0, 0, 41, 3, 152, 7, 216, 234, 130, 162]),
    ]

    func testFramingMatchesTensorBoardsWriter() {
        for (data, record) in RecordFramingTests.reference {
            var buffer: [UInt8] = []
            RecordFraming.append(data, to: &buffer)
            XCTAssertEqual(buffer, record, "record of \(data.count) bytes")
        }
    }

    func testRecordsReadBackAndDamageIsFound() throws {
        let payloads: [[UInt8]] = [Array("123456789".utf8), [], (0..<300).map { UInt8($0 % 251) }]
        var buffer: [UInt8] = []
        for p in payloads { RecordFraming.append(p, to: &buffer) }
        XCTAssertEqual(buffer.count, payloads.reduce(0) { $0 + $1.count + RecordFraming.overhead })
        XCTAssertEqual(try RecordFraming.records(in: buffer), payloads)
        // A flipped data byte, a flipped length byte, a truncated file: each refused.
        var damaged = buffer
        damaged[14] ^= 1
        XCTAssertThrowsError(try RecordFraming.records(in: damaged)) { XCTAssert("\($0)".contains("data CRC")) }
        damaged = buffer
        damaged[0] ^= 1
        XCTAssertThrowsError(try RecordFraming.records(in: damaged)) { XCTAssert("\($0)".contains("length CRC")) }
        XCTAssertThrowsError(try RecordFraming.records(in: Array(buffer.dropLast(1)))) { XCTAssert("\($0)".contains("truncated")) }
    }
}

final class EventFileWriterTests: XCTestCase {
    private var folder = ""

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "segtrain-tb-\(getpid())-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: folder)
    }

    func testFileHoldsVersionScalarsAndImage() throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let writer = try EventFileWriter(directory: folder, wallTime: 1_700_000_000.25)
        XCTAssert((writer.path as NSString).lastPathComponent.hasPrefix("events.out.tfevents.1700000000."))
        try writer.addScalars([("a/x", 0.5), ("a/y", 1e-3)], step: 7, wallTime: 1_700_000_001)
        try writer.addImage(tag: "img", encoded: [137, 80, 78, 71], width: 3, height: 2, channels: 3, step: 9)
        try writer.finish()
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: writer.path)))
        let events = try RecordFraming.records(in: bytes).map { try Tensorboard_Event(serializedBytes: $0) }
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[0].fileVersion, "brain.Event:2")
        XCTAssertEqual(events[0].wallTime, 1_700_000_000.25)
        XCTAssertEqual(events[1].step, 7)
        XCTAssertEqual(events[1].wallTime, 1_700_000_001)
        XCTAssertEqual(events[1].summary.value.map(\.tag), ["a/x", "a/y"])
        XCTAssertEqual(events[1].summary.value.map(\.simpleValue), [0.5, Float(1e-3)])
        XCTAssertEqual(events[2].step, 9)
        let image = events[2].summary.value[0].image
        XCTAssertEqual(events[2].summary.value[0].tag, "img")
        XCTAssertEqual([image.width, image.height, image.colorspace], [3, 2, 3])
        XCTAssertEqual([UInt8](image.encodedImageString), [137, 80, 78, 71])
    }

    func testPendingRecordsReachTheFileAtFlush() throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let writer = try EventFileWriter(directory: folder)
        let size = { (try? FileManager.default.attributesOfItem(atPath: writer.path)[.size] as? Int) ?? -1 }
        let afterVersion = size()
        XCTAssertGreaterThan(afterVersion, RecordFraming.overhead)
        try writer.addScalars([("s", 1)], step: 1)
        XCTAssertEqual(size(), afterVersion, "written before flush")
        try writer.flush()
        XCTAssertGreaterThan(size(), afterVersion)
    }

    func testAFileThatCannotBeMadeIsNamed() throws {
        XCTAssertThrowsError(try EventFileWriter(directory: folder + "/missing")) { error in
            let text = "\(error)"
            XCTAssert(text.hasPrefix(folder + "/missing/events.out.tfevents.") && text.hasSuffix(": cannot create: No such file or directory"),
                      text)
        }
    }
}
