import Foundation
import SegData
import SegTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `segtrain serve` against clients that are malformed, slow, idle, too large or too many: every
/// refusal is JSON (or, where HTTP allows no answer, a closed connection), limits hold, and the
/// server keeps answering /healthz. Loopback only; each test bounded in count and time.
/// (An extension of ServeTests for its trained model, its Server and its HTTP client.)
extension ServeTests {
    // MARK: Helpers

    /// What a raw exchange got: the response if one came, whether the server closed the connection,
    /// and the seconds from the first byte sent to the end.
    struct Exchange {
        var reply: HTTP.Reply?
        var closed: Bool
        var seconds: Double
        var raw: [UInt8]
    }

    /// Connects, sends `bytes` (in one write, or `pace` seconds per byte), then reads until the
    /// server closes or `timeout` passes; the first response in what came back is parsed.
    func exchange(_ port: Int, _ bytes: [UInt8], pace: Double = 0, timeout: Double = 5) throws -> Exchange {
        let fd = try ServeTests.connect(port)
        defer { close(fd) }
        let start = Date()
        var closed = false, raw: [UInt8] = []
        if pace > 0 {
            for byte in bytes {
                if send(fd, [byte], 1, Int32(MSG_NOSIGNAL)) != 1 { closed = true; break }
                usleep(UInt32(pace * 1e6))
                if ServeTests.readAvailable(fd, into: &raw, wait: 0) { closed = true; break }
                if Date().timeIntervalSince(start) > timeout { break }
            }
        } else {
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        while !closed && Date().timeIntervalSince(start) < timeout {
            closed = ServeTests.readAvailable(fd, into: &raw, wait: 0.05)
        }
        return Exchange(reply: ServeTests.parse(raw), closed: closed, seconds: Date().timeIntervalSince(start), raw: raw)
    }

    static func connect(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HTTP.Failure("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HTTP.Failure("connect: \(reason)")
        }
        return fd
    }

    /// Reads what is there (waiting up to `wait` s for something); true when the peer closed (or reset).
    static func readAvailable(_ fd: Int32, into raw: inout [UInt8], wait: Double) -> Bool {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(wait * 1000)) > 0 else { return false }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { return true }
        raw += chunk[0..<n]
        return false
    }

    /// The first response in `raw` (body by Content-Length), or nil.
    static func parse(_ raw: [UInt8]) -> HTTP.Reply? {
        guard let end = HTTP.find([13, 10, 13, 10], in: raw) else { return nil }
        let head = String(decoding: raw[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusLine = head[0].split(separator: " ")
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = headers["content-length"].flatMap(Int.init) ?? 0
        let body = Array(raw[(end + 4)...].prefix(length))
        return HTTP.Reply(status: status, headers: headers, body: body)
    }

    /// The server answers GET /healthz with 200 within `within` seconds.
    func assertHealthy(_ port: Int, within: Double = 5, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let e = try? exchange(port, Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8), timeout: within)
        XCTAssertEqual(e?.reply?.status, 200, "\(what): /healthz did not answer 200 within \(within) s", file: file, line: line)
    }

    /// Resident memory of a process in KiB (/proc/PID/status VmRSS).
    static func residentKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        return 0
    }

    /// CPU seconds (user + system) a process has used (/proc/PID/stat, 100 ticks a second).
    static func cpuSeconds(_ pid: Int32) -> Double {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / 100
    }

    func head(_ method: String, _ path: String, _ extra: String = "") -> [UInt8] {
        Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(extra)\r\n".utf8)
    }

    // MARK: Tests

    /// HEAD gets GET's status and headers and no body, so a pipelined next response is intact;
    /// HEAD where GET is not allowed gets the 405's headers and no body.
    func testHeadIsAnsweredWithoutABody() throws {
        let server = try startServer()
        let get = try HTTP.request(server.port, "GET", "/healthz")
        var e = try exchange(server.port, head("HEAD", "/healthz", "Connection: close\r\n"), timeout: 3)
        XCTAssertEqual(e.reply?.status, 200)
        XCTAssertEqual(e.reply?.headers["content-length"], "\(get.body.count)")
        let headBytes = try XCTUnwrap(HTTP.find([13, 10, 13, 10], in: e.raw)) + 4
        XCTAssertEqual(e.raw.count, headBytes, "HEAD got a body: \(String(decoding: e.raw, as: UTF8.self))")
        // Pipelined: HEAD on a POST route (405), then GET /healthz on the same connection.
        e = try exchange(server.port, head("HEAD", "/v1/segment") + head("GET", "/healthz", "Connection: close\r\n"), timeout: 3)
        let text = String(decoding: e.raw, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 405 "), text)
        let second = try XCTUnwrap(text.range(of: "\r\n\r\n")?.upperBound, text)
        XCTAssertTrue(text[second...].hasPrefix("HTTP/1.1 200 "), "the response after HEAD's is corrupt: \(text)")
        XCTAssertTrue(text.hasSuffix("\"status\":\"ok\"}"), text)
    }

    /// HTTP/1.0: without keep-alive the connection is closed after the response (a client such as
    /// ab waits for the close); with `Connection: keep-alive` it stays open and the response says so.
    func testHTTP10ConnectionsCloseUnlessKeptAlive() throws {
        let server = try startServer()
        var e = try exchange(server.port, Array("GET /healthz HTTP/1.0\r\n\r\n".utf8), timeout: 3)
        XCTAssertEqual(e.reply?.status, 200)
        XCTAssertTrue(e.closed && e.seconds < 1, "HTTP/1.0 without keep-alive: not closed at once (\(e.seconds) s)")
        e = try exchange(server.port, Array("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n".utf8), timeout: 3)
        let text = String(decoding: e.raw, as: UTF8.self)
        XCTAssertEqual(e.reply?.headers["connection"], "keep-alive", text)
        XCTAssertTrue(text.contains("<!DOCTYPE html>"), "the second request on the kept connection: \(text)")
        XCTAssertTrue(e.closed && e.seconds < 1, "HTTP/1.0: not closed after the second response (\(e.seconds) s)")
    }

    /// `Expect: 100-continue`: `100 Continue` at once when the request passes the checks (so a
    /// client such as curl need not wait a second before sending a body over 1 MiB); a final answer
    /// instead when it does not (413 from the declared length, 404, 415).
    func testExpectContinue() throws {
        let server = try startServer(["--max-body-bytes", "4000000"])
        let png = try bytes(inputs[2].path)
        let connection = try HTTP.Connection(port: server.port)
        try connection.send(Array("POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: \(png.count)\r\nExpect: 100-continue\r\n\r\n".utf8))
        let fd = connection.fd
        var raw: [UInt8] = []
        let start = Date()
        while HTTP.find([13, 10, 13, 10], in: raw) == nil && Date().timeIntervalSince(start) < 2 {
            if ServeTests.readAvailable(fd, into: &raw, wait: 0.05) { break }
        }
        let interim = String(decoding: raw, as: UTF8.self)
        XCTAssertTrue(interim.hasPrefix("HTTP/1.1 100 Continue\r\n"), "no 100 Continue within 2 s: \(interim)")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
        try connection.send(png)
        let reply = try connection.readResponse()
        XCTAssertEqual(reply.status, 200, reply.text)

        for (request, status) in [
            ("POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n", 413),
            ("POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n", 404),
            ("POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n", 415),
        ] {
            let e = try exchange(server.port, Array(request.utf8), timeout: 3)
            let reply = try XCTUnwrap(e.reply, String(decoding: e.raw, as: UTF8.self))
            XCTAssertEqual(reply.status, status, "\(request): \(reply.text)")
            XCTAssertFalse(String(decoding: e.raw, as: UTF8.self).contains("100 Continue"), request)
            XCTAssertTrue(e.closed && e.seconds < 1, "\(request): the connection was not closed at once (\(e.seconds) s)")
        }
    }

    /// Framing the decoder refuses gets a JSON 400 (or 431) and a closed connection; an odd method
    /// on a known path gets 405, on an unknown one 404; HTTP/0.9 gets the request timeout's 408.
    func testMalformedFramingGetsJSONErrors() throws {
        let server = try startServer(["--request-timeout", "1"])
        let cases: [(String, [UInt8], Int, String)] = [
            ("negative Content-Length", head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: -5\r\n"), 400, "Content-Length"),
            ("non-numeric Content-Length", head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: 12abc\r\n"), 400, "Content-Length"),
            ("conflicting Content-Lengths", head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: 5\r\nContent-Length: 7\r\n") + Array("abcdefg".utf8),
             400, "more than one Content-Length"),
            ("Content-Length with chunked", head("POST", "/v1/segment", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + Array("0\r\n\r\n".utf8), 400, "Transfer-Encoding with Content-Length"),
            ("bad chunk size", head("POST", "/v1/segment", "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n") + Array("zz\r\nhello\r\n".utf8), 400, "chunk size"),
            ("garbage request line", Array("\u{01}\u{02}hello there\r\n\r\n".utf8), 400, "malformed"),
            ("unknown method", head("FROB", "/healthz"), 400, "malformed"),
            ("HTTP/2 preface", Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8), 400, "HTTP/1"),
            ("TLS ClientHello", [0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03] + [UInt8](repeating: 7, count: 32), 400, "malformed"),
            ("space in a header name", head("GET", "/healthz", "Bad Header: 1\r\n"), 400, "malformed"),
            ("HTTP/0.9", Array("GET /\r\n".utf8), 408, "--request-timeout"),
            ("PATCH on /healthz", head("PATCH", "/healthz", "Connection: close\r\n"), 405, "GET"),
            ("OPTIONS on /v1/segment", head("OPTIONS", "/v1/segment", "Connection: close\r\n"), 405, "POST"),
            ("PROPFIND on /nowhere", head("PROPFIND", "/nowhere", "Connection: close\r\n"), 404, "/nowhere"),
        ]
        for (what, bytes, status, message) in cases {
            let e = try exchange(server.port, bytes, timeout: 4)
            let reply = try XCTUnwrap(e.reply, "\(what): no response (\(e.closed ? "closed" : "open")): \(String(decoding: e.raw, as: UTF8.self))")
            try checkError(reply, status: status, contains: message, what)
            XCTAssertTrue(e.closed, "\(what): the connection stayed open")
            XCTAssertLessThan(e.seconds, 3, what)
        }
        assertHealthy(server.port, "after the malformed requests")
    }

    /// A 1 MB header: a prompt 431 (or a closed connection), a few milliseconds of the server's CPU
    /// (the decoder is linear and stops at the 16 KiB limit), and the server carries on.
    func testHugeHeaderIsRefusedPromptly() throws {
        let server = try startServer()
        let pid = server.process.processIdentifier
        let cpuBefore = ServeTests.cpuSeconds(pid)
        for (what, bytes) in [("1 MB header", head("GET", "/healthz", "X-Big: " + String(repeating: "a", count: 1 << 20) + "\r\n")),
                              ("1 MB URL", Array("GET /\(String(repeating: "b", count: 1 << 20)) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)),
                              ("20,000 small headers", head("GET", "/healthz", String(repeating: "X-A: b\r\n", count: 20_000)))] {
            let e = try exchange(server.port, bytes, timeout: 5)
            XCTAssertLessThan(e.seconds, 2, what)
            XCTAssertTrue(e.closed, "\(what): the connection stayed open")
            if let reply = e.reply { try checkError(reply, status: 431, contains: "16384 bytes", what) }
        }
        usleep(300_000)
        let cpu = ServeTests.cpuSeconds(pid) - cpuBefore
        XCTAssertLessThan(cpu, 0.5, "the server used \(cpu) s of CPU on three oversized heads")
        assertHealthy(server.port, "after the oversized heads")
    }

    /// A client that sends its head or its body a byte every 100 ms gets 408 as JSON when
    /// --request-timeout runs out; the server answers others meanwhile.
    func testSlowClientsGetRequestTimeout() throws {
        let server = try startServer(["--request-timeout", "1.5"])
        let png = try bytes(inputs[2].path)
        final class Box: @unchecked Sendable { var exchanges: [Exchange?] = [nil, nil] }
        let box = Box()
        let slowHead = head("GET", "/healthz", "X-Slow: " + String(repeating: "s", count: 200) + "\r\n")
        let slowBody = head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: \(png.count)\r\n") + png
        let group = DispatchGroup()
        for (k, request) in [slowHead, slowBody].enumerated() {
            group.enter()
            Thread {
                box.exchanges[k] = try? self.exchange(server.port, request, pace: 0.1, timeout: 6)
                group.leave()
            }.start()
        }
        usleep(500_000)
        assertHealthy(server.port, within: 1, "while two clients trickle")
        XCTAssertEqual(group.wait(timeout: .now() + 15), .success)
        for (k, what) in ["slow head", "slow body"].enumerated() {
            let e = try XCTUnwrap(box.exchanges[k], what)
            let reply = try XCTUnwrap(e.reply, "\(what): no response: \(String(decoding: e.raw, as: UTF8.self))")
            try checkError(reply, status: 408, contains: "1.5 s", what)
            XCTAssertTrue(e.closed, what)
            XCTAssertLessThan(e.seconds, 3.5, what)
        }
    }

    /// --queue-depth 0, ten images at once: while the model runs one image, the next gets 503 with Retry-After (JSON);
    /// every request gets 200 or 503, and all get 200 once the burst is over.
    func testFullInferenceQueueGets503() throws {
        let server = try startServer(["--queue-depth", "0"])
        // 1000 x 1000 gray noise: the model's input is small, but resizing the probabilities back
        // to a million pixels keeps the model busy for a while.
        var noise = Image8(width: 1000, height: 1000, channels: 1)
        var x: UInt32 = 99
        for i in noise.pixels.indices { x = x &* 1_103_515_245 &+ 12345; noise.pixels[i] = UInt8(truncatingIfNeeded: x >> 16) }
        let png = try ImageFile.encode(noise)
        final class Box: @unchecked Sendable { let lock = NSLock(); var replies: [HTTP.Reply] = []; var errors: [String] = [] }
        let box = Box()
        let group = DispatchGroup()
        let go = DispatchSemaphore(value: 0)
        for _ in 0..<10 {
            group.enter()
            Thread {
                go.wait()
                do {
                    let r = try HTTP.request(server.port, "POST", "/v1/segment", contentType: "image/png", body: png)
                    box.lock.withLock { box.replies.append(r) }
                } catch { box.lock.withLock { box.errors.append("\(error)") } }
                group.leave()
            }.start()
        }
        for _ in 0..<10 { go.signal() }
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(box.errors, [])
        let busy = box.replies.filter { $0.status == 503 }
        XCTAssertEqual(box.replies.filter { $0.status == 200 }.count + busy.count, 10, box.replies.map(\.text).joined(separator: "\n"))
        XCTAssertGreaterThan(busy.count, 0, "ten images at once behind --queue-depth 0: none was refused")
        XCTAssertLessThan(busy.count, 10, "all ten refused")
        for reply in busy {
            try checkError(reply, status: 503, contains: "queue is full")
            XCTAssertGreaterThanOrEqual(Int(reply.headers["retry-after"] ?? "") ?? 0, 1, "Retry-After: \(reply.headers)")
        }
        XCTAssertEqual(try HTTP.request(server.port, "POST", "/v1/segment", contentType: "image/png", body: png).status, 200)
    }

    /// 1,100 idle connections under `ulimit -n 1024`, more than the server has descriptors for: it
    /// stays up (connections beyond its cap wait in the backlog; an EMFILE on accept is retried),
    /// closes idle ones after --idle-timeout, and answers /healthz once they are gone.
    func testManyIdleConnectionsUnderDescriptorLimit() throws {
        let server = try Server(binary: "/bin/sh", arguments: ["-c", "ulimit -n 1024 && exec \"$0\" \"$@\"", ServeTests.binary,
                                                               "serve", "--model", model, "--port", "0", "--threads", "1", "--idle-timeout", "2"])
        addTeardownBlock { server.kill() }
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        for _ in 0..<1_100 {
            guard let fd = try? ServeTests.connect(server.port) else { break }
            sockets.append(fd)
        }
        XCTAssertEqual(sockets.count, 1_100, "connections made")
        usleep(1_000_000)
        XCTAssertTrue(server.process.isRunning, "the server ended with 1,100 idle connections open: \(server.stderr)")
        for fd in sockets { close(fd) }
        sockets = []
        assertHealthy(server.port, within: 10, "after 1,100 idle connections")
        XCTAssertTrue(server.process.isRunning, server.stderr)
        // Idle connections are closed by the server after --idle-timeout.
        let idle = try ServeTests.connect(server.port)
        defer { close(idle) }
        var raw: [UInt8] = []
        let start = Date()
        var closed = false
        while !closed && Date().timeIntervalSince(start) < 6 { closed = ServeTests.readAvailable(idle, into: &raw, wait: 0.1) }
        XCTAssertTrue(closed, "an idle connection was still open after 6 s (--idle-timeout 2)")
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 1.5)
    }

    /// Accept failing with EMFILE is retried (after a second), never fatal: the running server's
    /// descriptor limit is lowered (prlimit) to 4 above what it has open, below its connection cap,
    /// and 20 clients connect. FlyingFox ended with "cannot listen ...: Too many open files".
    func testAcceptFailuresAreRetried() throws {
        let prlimit = "/usr/bin/prlimit"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: prlimit), "no \(prlimit) (util-linux)")
        let server = try startServer()
        let pid = server.process.processIdentifier
        func descriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0 }
        let open = descriptors()
        let limit = try run(prlimit, ["--pid", "\(pid)", "--nofile=\(open + 4):\(open + 4)"], timeout: 10)
        XCTAssertEqual(limit.status, 0, "prlimit failed: \(limit.stderr)")
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        for _ in 0..<20 { sockets.append(try ServeTests.connect(server.port)) }
        usleep(2_500_000)  // accepts fail with EMFILE and are retried
        XCTAssertGreaterThanOrEqual(descriptors(), open + 3, "the server never reached its descriptor limit")
        XCTAssertTrue(server.process.isRunning, "the server ended on EMFILE: \(server.stderr)")
        for fd in sockets { close(fd) }
        sockets = []
        assertHealthy(server.port, within: 10, "after accepts failed with EMFILE")
    }

    /// The load and abuse test: two identical phases of concurrent valid requests, slow and idle
    /// clients, oversized heads and bodies and malformed framing. /healthz answers throughout (every
    /// 100 ms, each within 2 s), every valid request gets 200, and the server's resident memory after
    /// the second phase is within 16 MiB of that after the first.
    func testLoadAndAbuse() throws {
        let server = try startServer(["--max-body-bytes", "200000", "--request-timeout", "1", "--idle-timeout", "1", "--queue-depth", "64"])
        let pid = server.process.processIdentifier
        let port = server.port
        let pngs = try inputs.map { (try bytes($0.path), $0.type) }
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var ok = 0, failures: [String] = [], health: [Double] = [], healthFailures = 0
            /// Abuse that got something other than a JSON 4xx and a closed connection within 2 s.
            var badRefusals: [String] = []
            /// Slow clients answered 408.
            var timedOut = 0
        }
        let abuse: [[UInt8]] = [
            head("GET", "/healthz", "X-Big: " + String(repeating: "h", count: 100_000) + "\r\n"),
            head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: 300000\r\n") + [UInt8](repeating: 1, count: 300_000),
            head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: -1\r\n"),
            head("POST", "/v1/segment", "Content-Type: image/png\r\nContent-Length: 3\r\nContent-Length: 4\r\n") + [1, 2, 3, 4],
            Array("not http at all\r\n\r\n".utf8),
            Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8),
            [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03] + [UInt8](repeating: 0x42, count: 64),
        ]

        func phase(_ tally: Tally) {
            let group = DispatchGroup()
            let stop = Date().addingTimeInterval(4)
            // Valid requests: 3 clients on kept-alive connections.
            for c in 0..<3 {
                group.enter()
                Thread {
                    defer { group.leave() }
                    guard let connection = try? HTTP.Connection(port: port) else { tally.lock.withLock { tally.failures.append("connect") }; return }
                    var k = c
                    while Date() < stop {
                        let (body, type) = pngs[k % pngs.count]
                        k += 1
                        let path = k % 2 == 0 ? "/v1/segment" : "/v1/remove-background"
                        do {
                            try connection.send(HTTP.requestBytes("POST", path, contentType: type, body: body, close: false))
                            let r = try connection.readResponse()
                            tally.lock.withLock { if r.status == 200 { tally.ok += 1 } else { tally.failures.append("\(r.status) \(r.text)") } }
                        } catch { tally.lock.withLock { tally.failures.append("\(error)") }; return }
                    }
                }.start()
            }
            // Slow clients (a byte per 100 ms), idle clients, abuse.
            for k in 0..<2 {
                group.enter()
                Thread {
                    defer { group.leave() }
                    let e = try? self.exchange(port, self.head("GET", "/healthz", "X-Slow-\(k): " + String(repeating: "z", count: 40) + "\r\n"),
                                               pace: 0.1, timeout: 3)
                    if e?.reply?.status == 408 { tally.lock.withLock { tally.timedOut += 1 } }
                }.start()
            }
            group.enter()
            Thread {
                defer { group.leave() }
                let idle = (0..<50).compactMap { _ in try? ServeTests.connect(port) }
                while Date() < stop { usleep(100_000) }
                for fd in idle { close(fd) }
            }.start()
            group.enter()
            Thread {
                defer { group.leave() }
                var k = 0
                while Date() < stop {
                    let e = try? self.exchange(port, abuse[k % abuse.count], timeout: 2)
                    let refused = e.map { e in
                        e.closed && (e.reply.map { (400..<500).contains($0.status) && $0.headers["content-type"] == "application/json" } ?? true)
                    } ?? false
                    if !refused {
                        let what = "abuse #\(k % abuse.count): \(e.map { String(decoding: $0.raw.prefix(80), as: UTF8.self) } ?? "no connection")"
                        tally.lock.withLock { tally.badRefusals.append(what) }
                    }
                    k += 1
                }
            }.start()
            // /healthz every 100 ms.
            while Date() < stop {
                let e = try? exchange(port, Array("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8), timeout: 2)
                tally.lock.withLock {
                    if e?.reply?.status == 200 { tally.health.append(e!.seconds) } else { tally.healthFailures += 1 }
                }
                usleep(100_000)
            }
            XCTAssertEqual(group.wait(timeout: .now() + 15), .success, "a phase's clients did not finish")
        }

        let first = Tally(), second = Tally()
        phase(first)
        usleep(1_500_000)  // the idle timeout closes what is left
        let afterFirst = ServeTests.residentKiB(pid)
        phase(second)
        usleep(1_500_000)
        let afterSecond = ServeTests.residentKiB(pid)
        for (name, tally) in [("first", first), ("second", second)] {
            XCTAssertEqual(tally.failures, [], "\(name) phase: valid requests failed")
            XCTAssertGreaterThan(tally.ok, 20, "\(name) phase: valid requests answered")
            XCTAssertEqual(tally.healthFailures, 0, "\(name) phase: /healthz did not answer 200 within 2 s")
            XCTAssertGreaterThan(tally.health.count, 10, "\(name) phase: /healthz probes")
            XCTAssertEqual(tally.badRefusals, [], "\(name) phase: abuse not refused with a JSON 4xx and a close within 2 s")
            XCTAssertEqual(tally.timedOut, 2, "\(name) phase: slow clients answered 408")
        }
        XCTAssertGreaterThan(afterFirst, 0, "VmRSS not read")
        XCTAssertLessThan(afterSecond - afterFirst, 16 * 1024,
                          "resident memory grew from \(afterFirst) KiB to \(afterSecond) KiB between two identical phases")
        print("load and abuse: \(first.ok) + \(second.ok) valid requests, /healthz max \(String(format: "%.3f", (first.health + second.health).max() ?? 0)) s, VmRSS \(afterFirst) -> \(afterSecond) KiB")
        XCTAssertTrue(server.process.isRunning, server.stderr)
    }
}
