import Foundation
import SegData
import SegTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `segtrain serve` run as a subprocess and called over real sockets on 127.0.0.1 with a small
/// HTTP/1.1 client (below), so that every byte on the wire is the test's: raw, multipart and
/// chunked bodies, a Content-Length without its body, bad requests of every kind.
final class ServeTests: SegtrainTestCase {
    /// Trained once for the whole class: a binary model on 32 px synthetic data.
    static var folder = ""
    static var trained = false

    var folder: String { ServeTests.folder }
    var model: String { ServeTests.folder + "/run" }

    override func setUpWithError() throws {
        try super.setUpWithError()
        if ServeTests.trained { return }
        ServeTests.folder = NSTemporaryDirectory() + "segtrain-serve-\(UUID().uuidString)"
        var r = try segtrain(["synth", "--out", folder + "/data", "--count", "20", "--size", "32", "--classes", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try segtrain(["train", "--data", folder + "/data", "--out", model, "--epochs", "2", "--image-size", "32",
                          "--base-channels", "4", "--depth", "2", "--batch-size", "4", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        // Inputs of several sizes and formats: JPEG 50x50, gray PNG 37x29, RGBA PNG 20x45.
        _ = try writeMixedInputs(to: folder + "/inputs")
        ServeTests.trained = true
    }

    override class func tearDown() {
        if !folder.isEmpty { try? FileManager.default.removeItem(atPath: folder) }
    }

    /// The inputs: (path, Content-Type, width, height).
    var inputs: [(path: String, type: String, width: Int, height: Int)] {
        let images = folder + "/inputs/images/"
        return [(images + "00000.jpg", "image/jpeg", 50, 50), (images + "00001.jpg", "image/jpeg", 50, 50),
                (images + "gray.png", "image/png", 37, 29), (images + "rgba.png", "image/png", 20, 45)]
    }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    // MARK: The server

    /// Starts `segtrain serve` on a free port; it is killed when the test ends, however it ends.
    func startServer(_ extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> Server {
        let server = try Server(binary: ServeTests.binary, arguments: ["serve", "--model", model, "--port", "0", "--threads", "1"] + extra)
        addTeardownBlock { server.kill() }
        return server
    }

    // MARK: Tests

    func testHealthAndPage() throws {
        let server = try startServer()
        XCTAssertTrue(server.stdout.hasPrefix("serving \(model) on http://127.0.0.1:\(server.port)"), server.stdout)
        let health = try HTTP.request(server.port, "GET", "/healthz")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.headers["content-type"], "application/json")
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(health.body)) as? [String: Any])
        XCTAssertEqual(json["status"] as? String, "ok")
        XCTAssertEqual(json["classes"] as? Int, 1)
        XCTAssertEqual(json["image_size"] as? Int, 32)
        XCTAssertEqual(json["channels"] as? Int, 3)
        XCTAssertTrue((json["source"] as? String ?? "").hasPrefix(model + "/checkpoints/"), "\(json)")

        let page = try HTTP.request(server.port, "GET", "/")
        XCTAssertEqual(page.status, 200)
        XCTAssertEqual(page.headers["content-type"], "text/html; charset=utf-8")
        let html = page.text
        XCTAssertTrue(html.hasPrefix("<!DOCTYPE html>"))
        // A plain form that works without JavaScript: the file posted as multipart to /v1/segment.
        for piece in ["<form", "action=\"/v1/segment\"", "method=\"post\"", "enctype=\"multipart/form-data\"",
                      "type=\"file\"", "name=\"image\"", "type=\"submit\"", "/v1/remove-background", "</html>"] {
            XCTAssertTrue(html.contains(piece), piece)
        }
    }

    /// /v1/segment's masks are `segtrain predict --mask`'s, pixel for pixel, for a raw body and a
    /// multipart one; JPEG and PNG of several sizes.
    func testSegmentEqualsPredict() throws {
        let server = try startServer()
        for input in inputs {
            let r = try segtrain(["predict", "--model", model, "--input", input.path, "--output", folder + "/expected.png", "--mask", "--threads", "1"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let expected = try ImageFile.readMask(folder + "/expected.png")
            let raw = try HTTP.request(server.port, "POST", "/v1/segment", contentType: input.type, body: bytes(input.path))
            XCTAssertEqual(raw.status, 200, raw.text)
            XCTAssertEqual(raw.headers["content-type"], "image/png")
            let mask = try ImageFile.decodeMask(raw.body, name: "response")
            XCTAssertEqual([mask.width, mask.height], [input.width, input.height], input.path)
            XCTAssertEqual(mask, expected, input.path)
            XCTAssertTrue(mask.pixels.allSatisfy { $0 == 0 || $0 == 255 }, "binary masks are 0/255")

            let (type, body) = HTTP.multipart(file: try bytes(input.path), field: "image", fileType: input.type)
            let form = try HTTP.request(server.port, "POST", "/v1/segment", contentType: type, body: body)
            XCTAssertEqual(form.status, 200, form.text)
            XCTAssertEqual(try ImageFile.decodeMask(form.body, name: "response"), expected, "multipart: \(input.path)")
        }
    }

    /// The cut-out: the image's colours with alpha == the mask; on ?background=%2300ff00, green
    /// wherever the mask is 0.
    func testRemoveBackground() throws {
        let server = try startServer()
        var front = 0, back = 0
        for input in inputs {
            let body = try bytes(input.path)
            let image = try ImageFile.decode(body, name: input.path, as: .rgb)
            let maskReply = try HTTP.request(server.port, "POST", "/v1/segment", contentType: input.type, body: body)
            XCTAssertEqual(maskReply.status, 200, maskReply.text)
            let mask = try ImageFile.decodeMask(maskReply.body, name: "mask")

            let cut = try HTTP.request(server.port, "POST", "/v1/remove-background", contentType: input.type, body: body)
            XCTAssertEqual(cut.status, 200, cut.text)
            XCTAssertEqual(cut.headers["content-type"], "image/png")
            let cutout = try ImageFile.decode(cut.body, name: "cutout", as: .rgba)
            XCTAssertEqual([cutout.width, cutout.height], [input.width, input.height])

            let green = try HTTP.request(server.port, "POST", "/v1/remove-background?background=%2300ff00", contentType: input.type, body: body)
            XCTAssertEqual(green.status, 200, green.text)
            let composite = try ImageFile.decode(green.body, name: "composite", as: .rgb)
            XCTAssertEqual([composite.width, composite.height], [input.width, input.height])
            // Wrong pixels counted, the first one named.
            var wrong: [String: (count: Int, first: Int)] = [:]
            func check(_ ok: Bool, _ what: String, _ p: Int) { if !ok { wrong[what, default: (0, p)].count += 1 } }
            for p in 0..<(input.width * input.height) {
                check(cutout.pixels[4 * p + 3] == mask.pixels[p], "cut-out alpha is not the mask", p)
                let colour = Array(image.pixels[(3 * p)..<(3 * p + 3)])
                check(Array(cutout.pixels[(4 * p)..<(4 * p + 3)]) == colour, "cut-out colour is not the image's", p)
                let expected: [UInt8] = mask.pixels[p] == 255 ? colour : [0, 255, 0]
                check(Array(composite.pixels[(3 * p)..<(3 * p + 3)]) == expected, "composite is not the image on green", p)
                if mask.pixels[p] == 255 { front += 1 } else { back += 1 }
            }
            for (what, (count, first)) in wrong.sorted(by: { $0.key < $1.key }) {
                XCTFail("\(input.path): \(what) at \(count) pixel(s), the first (\(first % input.width), \(first / input.width))")
            }
        }
        XCTAssertGreaterThan(front, 0, "no foreground anywhere: the checks above saw only background")
        XCTAssertGreaterThan(back, 0, "no background anywhere: the green checks above saw nothing")
    }

    /// Every bad request gets its 4xx and a JSON body {"error": "...", "status": N}; none names a
    /// file on the server.
    func testBadRequestsGetJSONErrors() throws {
        let server = try startServer()
        let png = try bytes(inputs[2].path)
        let (formType, formWithoutImage) = HTTP.multipart(file: png, field: "picture", fileType: "image/png")
        let cases: [(String, String, String?, [UInt8], Int, String)] = [
            ("POST", "/v1/segment", "text/plain", Array("hello".utf8), 415, "Content-Type text/plain"),
            ("POST", "/v1/remove-background", "application/json", Array("{}".utf8), 415, "Content-Type application/json"),
            ("POST", "/v1/segment", nil, png, 415, "no Content-Type"),
            ("POST", "/v1/segment", "image/png", Array("this is not an image at all".utf8), 400, "not a PNG or JPEG"),
            ("POST", "/v1/segment", "image/png", Array(png.prefix(png.count / 2)), 400, "not a usable image"),
            ("POST", "/v1/segment", "image/jpeg", Array(try bytes(inputs[0].path).prefix(300)), 400, "not a usable image"),
            ("POST", "/v1/segment", "image/png", [], 400, "empty body"),
            ("POST", "/v1/segment", formType, formWithoutImage, 400, "without a file field named image"),
            ("POST", "/v1/remove-background?background=green", "image/png", png, 400, "background green"),
            ("POST", "/v1/segment?background=%2300ff00", "image/png", png, 400, "background"),
            ("GET", "/nowhere", nil, [], 404, "/nowhere"),
            ("POST", "/v2/segment", "image/png", png, 404, "/v2/segment"),
            ("GET", "/v1/segment", nil, [], 405, "POST"),
            ("PUT", "/v1/remove-background", "image/png", png, 405, "POST"),
            ("POST", "/healthz", "image/png", png, 405, "GET"),
            ("DELETE", "/", nil, [], 405, "GET"),
        ]
        for (method, path, type, body, status, message) in cases {
            let reply = try HTTP.request(server.port, method, path, contentType: type, body: body)
            let what = "\(method) \(path) (\(type ?? "no type"))"
            XCTAssertEqual(reply.status, status, "\(what): \(reply.text)")
            try checkError(reply, status: status, contains: message, what)
            if status == 405 { XCTAssertNotNil(reply.headers["allow"], what) }
        }
        // The server is still well.
        XCTAssertEqual(try HTTP.request(server.port, "POST", "/v1/segment", contentType: "image/png", body: png).status, 200)
    }

    /// --max-body-bytes: a body declared too large is refused before it is sent; one that is too
    /// large is refused whether its length is declared or not (chunked); the server carries on.
    func testOversizedBodiesGet413() throws {
        let server = try startServer(["--max-body-bytes", "2000"])
        let large = try bytes(inputs[0].path)  // a JPEG of a few KB
        XCTAssertGreaterThan(large.count, 2000)

        // Declared and sent.
        var reply = try HTTP.request(server.port, "POST", "/v1/segment", contentType: "image/jpeg", body: large)
        try checkError(reply, status: 413, contains: "\(large.count) bytes is larger than the limit of 2000 bytes")

        // Declared, never sent: the answer comes from the headers alone.
        let connection = try HTTP.Connection(port: server.port)
        try connection.send(Array("POST /v1/remove-background HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n".utf8))
        reply = try connection.readResponse()
        try checkError(reply, status: 413, contains: "1000000000 bytes")
        XCTAssertEqual(reply.headers["connection"], "close")

        // Chunked, so no length is declared: counted while reading.
        var chunked = Array("POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        for start in stride(from: 0, to: large.count, by: 700) {
            let piece = large[start..<min(start + 700, large.count)]
            chunked += Array(String(piece.count, radix: 16).utf8) + [13, 10] + piece + [13, 10]
        }
        chunked += Array("0\r\n\r\n".utf8)
        let streaming = try HTTP.Connection(port: server.port)
        try streaming.send(chunked)
        try checkError(try streaming.readResponse(), status: 413, contains: "larger than the limit of 2000 bytes")

        // Multipart counts as a whole.
        let (type, form) = HTTP.multipart(file: large, field: "image", fileType: "image/jpeg")
        try checkError(try HTTP.request(server.port, "POST", "/v1/segment", contentType: type, body: form), status: 413, contains: "2000")

        // Within the limit, chunked or not, all is well.
        var small = Image8(width: 24, height: 20, channels: 3)
        for i in small.pixels.indices { small.pixels[i] = UInt8(truncatingIfNeeded: i / 5) }
        let png = try ImageFile.encode(small)
        XCTAssertLessThan(png.count, 2000)
        reply = try HTTP.request(server.port, "POST", "/v1/segment", contentType: "image/png", body: png)
        XCTAssertEqual(reply.status, 200, reply.text)
        let half = png.count / 2
        let parts = [Array(png[..<half]), Array(png[half...])]
        var body = Array("POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".utf8)
        for part in parts { body += Array(String(part.count, radix: 16).utf8) + [13, 10] + part + [13, 10] }
        body += Array("0\r\n\r\n".utf8)
        let ok = try HTTP.Connection(port: server.port)
        try ok.send(body)
        let chunkedReply = try ok.readResponse()
        XCTAssertEqual(chunkedReply.status, 200, chunkedReply.text)
        XCTAssertEqual(chunkedReply.body, reply.body)
    }

    /// 8 requests at once, masks and cut-outs mixed: all answered, each as when asked alone.
    func testConcurrentRequests() throws {
        let server = try startServer()
        var jobs: [(path: String, body: [UInt8], type: String)] = []
        for (k, input) in inputs.enumerated() {
            jobs.append((k % 2 == 0 ? "/v1/segment" : "/v1/remove-background", try bytes(input.path), input.type))
            jobs.append((k % 2 == 0 ? "/v1/remove-background?background=%23102030" : "/v1/segment", try bytes(input.path), input.type))
        }
        let expected = try jobs.map { job -> [UInt8] in
            let reply = try HTTP.request(server.port, "POST", job.path, contentType: job.type, body: job.body)
            XCTAssertEqual(reply.status, 200, reply.text)
            return reply.body
        }
        final class Replies: @unchecked Sendable {
            let lock = NSLock()
            var list: [Result<HTTP.Reply, any Error>?]
            init(_ count: Int) { list = Array(repeating: nil, count: count) }
        }
        let replies = Replies(jobs.count)
        let group = DispatchGroup()
        let start = DispatchSemaphore(value: 0)
        for (k, job) in jobs.enumerated() {
            group.enter()
            Thread {
                start.wait()
                let result = Result { try HTTP.request(server.port, "POST", job.path, contentType: job.type, body: job.body) }
                replies.lock.withLock { replies.list[k] = result }
                group.leave()
            }.start()
        }
        for _ in jobs { start.signal() }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success, "the requests did not all finish")
        for (k, job) in jobs.enumerated() {
            let reply = try XCTUnwrap(replies.lock.withLock { replies.list[k] }).get()
            XCTAssertEqual(reply.status, 200, "\(job.path): \(reply.text)")
            XCTAssertEqual(reply.body, expected[k], "\(job.path) #\(k) differs from the same request alone")
        }
    }

    /// Several requests on one kept-alive connection.
    func testKeepAlive() throws {
        let server = try startServer()
        let png = try bytes(inputs[2].path)
        let connection = try HTTP.Connection(port: server.port)
        for path in ["/healthz", "/v1/segment", "/v1/remove-background", "/healthz"] {
            let body = path == "/healthz" ? [] : png
            try connection.send(HTTP.requestBytes(path == "/healthz" ? "GET" : "POST", path, contentType: body.isEmpty ? nil : "image/png",
                                                  body: body, close: false))
            XCTAssertEqual(try connection.readResponse().status, 200, path)
        }
    }

    /// SIGTERM (and SIGINT): exit 0 within seconds, the port closed.
    func testStopsOnSignals() throws {
        for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
            let server = try startServer()
            XCTAssertEqual(try HTTP.request(server.port, "GET", "/healthz").status, 200)
            let status = try XCTUnwrap(server.stop(signal: number, within: 10), "still running 10 s after \(name)")
            XCTAssertEqual(status, 0, server.stderr)
            XCTAssertTrue(server.stderr.contains("stopped (\(name))"), server.stderr)
            XCTAssertThrowsError(try HTTP.Connection(port: server.port), "port \(server.port) still open after \(name)")
        }
    }

    /// A stop signal while a request is running: that request still gets its answer, a new one
    /// gets 503, then the server exits 0.
    func testStopLetsRunningRequestsFinish() throws {
        let server = try startServer()
        var noise = Image8(width: 64, height: 64, channels: 3)
        var x: UInt32 = 12345
        for i in noise.pixels.indices { x = x &* 1_103_515_245 &+ 12345; noise.pixels[i] = UInt8(truncatingIfNeeded: x >> 16) }
        let png = try ImageFile.encode(noise)
        XCTAssertGreaterThan(png.count, 8192, "a body large enough to arrive in more than one read")
        let running = try HTTP.Connection(port: server.port)
        let request = HTTP.requestBytes("POST", "/v1/segment", contentType: "image/png", body: png, close: true)
        let split = request.count - png.count / 2
        try running.send(Array(request[..<split]))  // the handler is now waiting for the rest
        usleep(300_000)
        kill(server.process.processIdentifier, SIGTERM)
        usleep(300_000)
        try checkError(try HTTP.request(server.port, "GET", "/healthz"), status: 503, contains: "stopping")
        try running.send(Array(request[split...]))
        let reply = try running.readResponse()
        XCTAssertEqual(reply.status, 200, reply.text)
        let mask = try ImageFile.decodeMask(reply.body, name: "mask")
        XCTAssertEqual([mask.width, mask.height], [64, 64])
        XCTAssertEqual(server.exitStatus(within: 10), 0, server.stderr)
        XCTAssertTrue(server.stderr.contains("stopped (SIGTERM)"), server.stderr)
    }

    func testBadFlags() throws {
        let cases: [([String], String)] = [
            (["--model", folder + "/nothing"], folder + "/nothing: not a checkpoint"),
            (["--model", model, "--host", "example.org"], "--host example.org"),
            (["--model", model, "--port", "70000"], "--port"),
            (["--model", model, "--max-body-bytes", "0"], "--max-body-bytes"),
            (["--model", model, "--queue-depth", "100001"], "--queue-depth"),
            (["--model", model, "--idle-timeout", "0"], "--idle-timeout"),
            (["--model", model, "--request-timeout", "nan"], "--request-timeout"),
        ]
        for (arguments, expected) in cases {
            let r = try segtrain(["serve"] + arguments)
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            XCTAssertTrue(r.stderr.contains(expected), "\(arguments): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        }
        // A port in use.
        let server = try startServer()
        let r = try segtrain(["serve", "--model", model, "--port", "\(server.port)"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("cannot listen on 127.0.0.1:\(server.port)"), r.stderr)
    }

    /// `{"error": "...", "status": N}` with N the HTTP status, naming no server path.
    func checkError(_ reply: HTTP.Reply, status: Int, contains message: String, _ what: String = "",
                    file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(reply.status, status, "\(what): \(reply.text)", file: file, line: line)
        XCTAssertEqual(reply.headers["content-type"], "application/json", what, file: file, line: line)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(reply.body)) as? [String: Any], "\(what): \(reply.text)",
                                 file: file, line: line)
        XCTAssertEqual(Set(json.keys), ["error", "status"], what, file: file, line: line)
        XCTAssertEqual(json["status"] as? Int, status, what, file: file, line: line)
        let error = json["error"] as? String ?? ""
        XCTAssertTrue(error.contains(message), "\(what): \(error)", file: file, line: line)
        XCTAssertFalse(error.contains(folder), "\(what): \(error)", file: file, line: line)
    }
}

/// `segtrain serve` as a subprocess (SegTestSupport's `RunningProcess`): started, its port read from
/// the line it prints, and stopped.
final class Server: @unchecked Sendable {
    let running: RunningProcess
    var process: Process { running.process }
    private(set) var port = 0

    init(binary: String, arguments: [String]) throws {
        running = try RunningProcess(binary, arguments)
        // "serving MODEL on http://127.0.0.1:PORT"
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && process.isRunning {
            if let line = stdout.split(separator: "\n").first(where: { $0.hasPrefix("serving ") }),
               let colon = line.lastIndex(of: ":"), let p = Int(line[line.index(after: colon)...]) {
                port = p
                return
            }
            usleep(20_000)
        }
        let output = "\(stdout) \(stderr)"
        kill()
        throw HTTP.Failure("segtrain serve did not start listening: \(output)")
    }

    var stdout: String { running.stdout }
    var stderr: String { running.stderr }

    /// Sends `signal`; the exit status once the process has ended, nil if it outlives `within` seconds.
    func stop(signal: Int32, within seconds: Double) -> Int32? { running.signal(signal, within: seconds) }

    /// The exit status once the process has ended, nil if it outlives `within` seconds.
    func exitStatus(within seconds: Double) -> Int32? {
        running.waitForExit(within: seconds) ? process.terminationStatus : nil
    }

    /// SIGTERM, then SIGKILL after 5 s; the files removed.
    func kill() {
        running.stop()
        running.removeFiles()
    }
}

/// A minimal HTTP/1.1 client over a blocking socket, with a 20 s timeout on every read and write.
enum HTTP {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    struct Reply {
        let status: Int
        /// Lower-case names.
        let headers: [String: String]
        let body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// One request on its own connection (`Connection: close`).
    static func request(_ port: Int, _ method: String, _ path: String, contentType: String? = nil, body: [UInt8] = []) throws -> Reply {
        let connection = try Connection(port: port)
        try connection.send(requestBytes(method, path, contentType: contentType, body: body, close: true))
        return try connection.readResponse()
    }

    static func requestBytes(_ method: String, _ path: String, contentType: String?, body: [UInt8], close: Bool) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if close { head += "Connection: close\r\n" }
        if let contentType { head += "Content-Type: \(contentType)\r\n" }
        if !body.isEmpty || method == "POST" || method == "PUT" { head += "Content-Length: \(body.count)\r\n" }
        return Array((head + "\r\n").utf8) + body
    }

    /// A multipart/form-data body as a browser's form sends it: a text field, then the file.
    static func multipart(file: [UInt8], field: String, fileType: String) -> (type: String, body: [UInt8]) {
        let boundary = "----segtrainTestBoundary7MA4YWxkTrZu0gW"
        var body = Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".utf8)
        body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(field)\"; filename=\"upload\"\r\nContent-Type: \(fileType)\r\n\r\n".utf8)
        body += file
        body += Array("\r\n--\(boundary)--\r\n".utf8)
        return ("multipart/form-data; boundary=\(boundary)", body)
    }

    final class Connection {
        let fd: Int32
        private var buffer: [UInt8] = []

        init(port: Int) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure("socket: \(String(cString: strerror(errno)))") }
            var timeout = timeval(tv_sec: 20, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if rc != 0 {
                let reason = String(cString: strerror(errno))
                close(fd)
                throw Failure("connect to 127.0.0.1:\(port): \(reason)")
            }
        }

        deinit { close(fd) }

        func send(_ bytes: [UInt8]) throws {
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { throw Failure("send: \(String(cString: strerror(errno)))") }
                sent += n
            }
        }

        /// More bytes into the buffer; false at the end of the stream.
        private func fill() throws -> Bool {
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { throw Failure("recv: \(String(cString: strerror(errno)))") }
            buffer += chunk[0..<n]
            return n > 0
        }

        func readResponse() throws -> Reply {
            let separator: [UInt8] = [13, 10, 13, 10]
            var end: Int? = nil
            while end == nil {
                if let at = HTTP.find(separator, in: buffer) { end = at; break }
                guard try fill() else { throw Failure("connection closed before a response: \(String(decoding: buffer, as: UTF8.self))") }
            }
            let head = String(decoding: buffer[..<end!], as: UTF8.self).components(separatedBy: "\r\n")
            buffer.removeFirst(end! + 4)
            let statusLine = head[0].split(separator: " ")
            guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else {
                throw Failure("not an HTTP response: \(head[0])")
            }
            var headers: [String: String] = [:]
            for line in head.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            if let length = headers["content-length"].flatMap(Int.init) {
                while buffer.count < length {
                    guard try fill() else { throw Failure("connection closed inside a body") }
                }
                let body = Array(buffer[..<length])
                buffer.removeFirst(length)
                return Reply(status: status, headers: headers, body: body)
            }
            while try fill() {}
            defer { buffer = [] }
            return Reply(status: status, headers: headers, body: buffer)
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
        return nil
    }
}
