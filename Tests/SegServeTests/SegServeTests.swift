import Dispatch
import HTTPTypes
@testable import SegServe
import XCTest

/// SegServe's parts that need no socket, in process: the multipart parser, the header helpers and
/// the bounded inference queue. (The server itself is tested over sockets in ServeTests.)
final class SegServeTests: XCTestCase {
    let boundary = "----b0und4ry"

    func form(_ parts: [(name: String, bytes: [UInt8])], closed: Bool = true) -> [UInt8] {
        var body: [UInt8] = []
        for part in parts {
            body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(part.name)\"; filename=\"x\"\r\nContent-Type: image/png\r\n\r\n".utf8)
            body += part.bytes + [13, 10]
        }
        if closed { body += Array("--\(boundary)--\r\n".utf8) }
        return body
    }

    func testMultipartReturnsTheNamedFieldByteForByte() throws {
        // The file holds CR LF and a fake boundary prefix: only "\r\n--boundary" ends it.
        let file: [UInt8] = [0x89, 0x50, 13, 10, 0x2D, 0x2D, 0x41, 13, 10, 0, 255]
        let body = form([("note", Array("hello".utf8)), ("image", file)])
        XCTAssertEqual(try Multipart.file(named: "image", in: body, boundary: boundary), file)
        XCTAssertEqual(try Multipart.file(named: "note", in: body, boundary: boundary), Array("hello".utf8))
    }

    func testMultipartRefusals() {
        func message(_ body: [UInt8], boundary: String? = nil) -> String {
            do {
                _ = try Multipart.file(named: "image", in: body, boundary: boundary ?? self.boundary)
                return "no error"
            } catch let failure as ServeFailure {
                XCTAssertEqual(failure.status, .badRequest)
                return failure.message
            } catch { return "\(error)" }
        }
        XCTAssertTrue(message(form([("picture", [1, 2, 3])])).contains("without a file field named image"))
        XCTAssertTrue(message(Array("no boundary here".utf8)).contains("without its boundary"))
        var open = Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n".utf8)
        open += [1, 2, 3]
        XCTAssertTrue(message(open).contains("ends inside a part"))
    }

    func testMediaTypeAndQuery() {
        let (type, parameters) = SegmentService.mediaType("Multipart/Form-Data; boundary=\"abc def\"; charset=utf-8")
        XCTAssertEqual(type, "multipart/form-data")
        XCTAssertEqual(parameters["boundary"], "abc def")
        XCTAssertEqual(SegmentService.mediaType(nil).0, "")
        XCTAssertEqual(SegmentService.queryValue("background", in: "x=1&background=%2300ff00"), "#00ff00")
        XCTAssertEqual(SegmentService.queryValue("background", in: "background=a+b"), "a b")
        XCTAssertNil(SegmentService.queryValue("background", in: "backgrounds=1"))
        XCTAssertNil(SegmentService.queryValue("background", in: nil))
    }

    /// Depth 1: one image runs, one waits, the third is refused at once with 503 and Retry-After;
    /// the two admitted finish in order once the model is free.
    func testInferenceQueueRefusesBeyondItsDepth() async throws {
        let queue = InferenceQueue(depth: 1)
        let gate = DispatchSemaphore(value: 0)
        // Opened by the test below, or after 10 s so that a queue that admits the third image fails
        // the test instead of hanging it.
        DispatchQueue.global().asyncAfter(deadline: .now() + 10) { gate.signal() }
        async let first = queue.run { gate.wait(); return 1 }
        while queue.length < 1 { await Task.yield() }
        async let second = queue.run { 2 }
        while queue.length < 2 { await Task.yield() }
        do {
            _ = try await queue.run { 3 }
            XCTFail("a third image was admitted behind --queue-depth 1")
        } catch let failure as ServeFailure {
            XCTAssertEqual(failure.status, .serviceUnavailable)
            XCTAssertTrue(failure.message.contains("queue is full"), failure.message)
            XCTAssertGreaterThanOrEqual(Int(failure.headers[.retryAfter] ?? "") ?? 0, 1)
        }
        gate.signal()
        let results = try await [first, second]
        XCTAssertEqual(results, [1, 2])
        XCTAssertEqual(queue.length, 0)
        let fourth = try await queue.run { 4 }
        XCTAssertEqual(fourth, 4, "the queue takes images again once it has room")
    }
}
