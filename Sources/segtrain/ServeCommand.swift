// `segtrain serve`: a trained model behind HTTP (FlyingFox): masks and background removal for
// uploaded images, a health check, and a page to try it in a browser.
//
// Threads: FlyingFox runs each connection as a Swift task. Decoding and encoding (CPU work) are sent
// to Dispatch's global queues so several requests decode at once without holding up the tasks that
// read sockets; the model (one planned activation arena, not thread-safe) runs one image at a time on
// a serial queue, each inference spread over the WorkerPool's threads.
//
// Request bodies: the declared Content-Length is checked before anything is read, and the bytes are
// counted while reading (chunked bodies). A response sent before its request's body was read in full
// (every error before the image is decoded) says `Connection: close` and, once written, reads and
// discards what is left of the body (up to a bound) before closing, so a client still uploading gets
// the JSON error instead of a reset connection.

import ArgumentParser
import FlyingFox
import FlyingSocks
import Foundation
import SegData
import SegEngine
import SegTraining
#if canImport(Glibc)
import Glibc
#endif

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a trained model over HTTP: masks and background removal for uploaded images.",
        discussion: """
            POST /v1/segment: an image in (the body as image/png or image/jpeg, or multipart/form-data \
            with a file field named image), its mask out as PNG at the image's size (0/255 for a binary \
            model, class indices otherwise). POST /v1/remove-background[?background=%23RRGGBB]: the \
            image as RGBA PNG with the background transparent, or as RGB on the colour. GET /healthz: \
            the model as JSON. GET /: a page to try both in a browser. Errors are JSON \
            {"error": "...", "status": N}: 400 not an image or a corrupt one, 404, 405, 413 body over \
            --max-body-bytes, 415 other content types. The model is loaded once; requests are \
            decoded concurrently and inferred one at a time on --threads workers. SIGINT/SIGTERM stop it.
            """)

    @Option(help: "A run folder (its checkpoints/best, else last) or a checkpoint folder.")
    var model: String
    @Option(help: "Address to listen on: an IPv4 or IPv6 address (0.0.0.0: every interface).")
    var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: a free port, printed).")
    var port = 8080
    @Option(help: "Largest request body in bytes; a larger one gets 413.")
    var maxBodyBytes = 20 * 1024 * 1024
    @Option(help: "Worker threads for each inference (default: the CPUs available).")
    var threads: Int?

    func validate() throws {
        if !(0...65535).contains(port) { throw ValidationError("--port must be 0...65535 (got \(port))") }
        if maxBodyBytes < 1 { throw ValidationError("--max-body-bytes must be at least 1 (got \(maxBodyBytes))") }
        if let t = threads, !(1...1024).contains(t) { throw ValidationError("--threads must be 1...1024 (got \(t))") }
    }

    /// The listening address for --host and --port.
    func configuration(logger: any Logging) throws -> HTTPServer.Configuration {
        let address = host == "localhost" ? "127.0.0.1" : host
        // Handlers may wait for the model behind other requests: a generous limit (a timeout is a 500).
        // Replay size 0: bodies over 4 KiB are streamed to the handler, never buffered by FlyingFox.
        let timeout: TimeInterval = 600
        do {
            if address.contains(":") {
                let a = try sockaddr_in6.inet6(ip6: address, port: UInt16(port))
                return HTTPServer.Configuration(address: a, timeout: timeout, sharedRequestReplaySize: 0, logger: logger)
            }
            let a = try sockaddr_in.inet(ip4: address, port: UInt16(port))
            return HTTPServer.Configuration(address: a, timeout: timeout, sharedRequestReplaySize: 0, logger: logger)
        } catch {
            throw UserError("--host \(host): not an IPv4 or IPv6 address")
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)

        let pool = WorkerPool(threads: threads ?? ThreadDefaults.threadsPerRank())
        let predictor: Predictor
        do { predictor = try Predictor(path: model, pool: pool) } catch { throw UserError("\(error)") }
        let state = ServeState()
        let config = try configuration(logger: ServeLogger())
        let service = SegmentService(predictor: predictor, maxBodyBytes: maxBodyBytes)
        let server = HTTPServer(config: config, handler: service)

        // On a stop signal: new requests get 503, running ones finish (10 s at most), then the
        // server closes its sockets.
        let signals = Thread {
            let number = StopSignal.wait()
            state.stop(signal: number)
            service.stopAccepting()
            let deadline = monotonicSeconds() + 10
            while service.running > 0 && monotonicSeconds() < deadline { usleep(10_000) }
            Task.detached { await server.stop(timeout: 0) }
        }
        StopSignal.install()
        signals.start()

        let model = self.model, host = self.host
        Task.detached {
            do { try await server.run() } catch { state.fail(error) }
            state.finish()
        }
        Task.detached {
            guard (try? await server.waitUntilListening(timeout: 60)) != nil,
                  let address = await server.listeningAddress else { return }
            let port: UInt16
            switch address {
            case .ip4(_, let p), .ip6(_, let p): port = p
            case .unix: return
            }
            ServeCommand.disableNagle(listeningOn: port)
            let shown = host.contains(":") ? "[\(host)]" : host
            print("serving \(model) on http://\(shown):\(port)")
            fflush(stdout)
        }
        state.waitUntilFinished()
        if let number = state.stoppedBy {
            fputs("segtrain serve: stopped (\(number == SIGINT ? "SIGINT" : "SIGTERM"))\n", stderr)
            return
        }
        if let error = state.failure {
            let reason: String
            if case .failed(_, _, let message)? = error as? SocketError { reason = message } else { reason = error.localizedDescription }
            throw UserError("cannot listen on \(host):\(port): \(reason)")
        }
    }
}

extension ServeCommand {
    /// TCP_NODELAY on the listening socket, which the connections it accepts inherit (Linux).
    /// FlyingFox writes a response's header and body separately; with Nagle's algorithm the body
    /// would wait for the client's delayed ACK of the header (40 ms) on a kept-alive connection.
    /// FlyingFox keeps the socket to itself, so it is found among the open descriptors.
    static func disableNagle(listeningOn port: UInt16) {
        for fd in Int32(3)..<Int32(4096) {
            var listening: Int32 = 0, length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 1 else { continue }
            var address = sockaddr_storage()
            var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &size) }
            }
            guard named == 0 else { continue }
            let family = Int32(address.ss_family)
            let boundPort: UInt16 = withUnsafePointer(to: &address) { pointer in
                switch family {
                case AF_INET: return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
                case AF_INET6: return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
                default: return 0
                }
            }
            guard boundPort == port else { continue }
            var on: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            return
        }
    }
}

/// SIGINT and SIGTERM caught with a handler that only posts a semaphore (async-signal-safe), for
/// `wait` on an ordinary thread; a second signal ends the process at once. (Blocking the signals instead would not do: threads started before
/// `main`, such as OpenBLAS's, would still take them and die.)
enum StopSignal {
    private static let semaphore: UnsafeMutablePointer<sem_t> = {
        let s = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
        sem_init(s, 0, 0)
        return s
    }()
    private static let received = UnsafeMutablePointer<sig_atomic_t>.allocate(capacity: 1)

    static func install() {
        _ = semaphore  // initialised here, not in the handler
        received.pointee = 0
        for number in [SIGINT, SIGTERM] {
            signal(number) { number in
                if StopSignal.received.pointee != 0 { _exit(128 + number) }  // a second one: now
                StopSignal.received.pointee = number
                sem_post(StopSignal.semaphore)
            }
        }
    }

    /// Waits for the first stop signal; returns its number.
    static func wait() -> Int32 {
        while sem_wait(semaphore) != 0 {}  // EINTR
        return received.pointee
    }
}

/// How the server's run ended, shared with the signal handlers.
final class ServeState: @unchecked Sendable {
    private let lock = NSLock()
    private let done = DispatchSemaphore(value: 0)
    private var signalNumber: Int32?
    private var error: (any Error)?

    func stop(signal: Int32) { lock.lock(); signalNumber = signal; lock.unlock() }
    var stoppedBy: Int32? { lock.lock(); defer { lock.unlock() }; return signalNumber }
    var failure: (any Error)? { lock.lock(); defer { lock.unlock() }; return error }
    func fail(_ error: any Error) { lock.lock(); self.error = error; lock.unlock() }
    func finish() { done.signal() }
    func waitUntilFinished() { done.wait() }
}

/// FlyingFox's own messages: only a handler's failure (a timeout) is printed. A failure to listen is
/// reported by `run`; a connection's errors (a client hanging up, a request that is not HTTP) are
/// the client's business.
struct ServeLogger: Logging {
    func logDebug(_ debug: @autoclosure () -> String) {}
    func logInfo(_ info: @autoclosure () -> String) {}
    func logWarning(_ warning: @autoclosure () -> String) {}
    func logError(_ error: @autoclosure () -> String) {
        let message = error()
        if message.hasPrefix("handler error") { fputs("segtrain serve: \(message)\n", stderr) }
    }
    func logCritical(_ critical: @autoclosure () -> String) {}
}

// MARK: - Requests

/// A request that gets an error: JSON `{"error": message, "status": code}`.
struct ServeFailure: Error {
    let status: HTTPStatusCode
    let message: String
    var headers: HTTPHeaders = [:]
    init(_ status: HTTPStatusCode, _ message: String, headers: HTTPHeaders = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }
}

/// The routes: `/`, `/healthz`, `/v1/segment`, `/v1/remove-background`.
final class SegmentService: HTTPHandler, @unchecked Sendable {
    let predictor: Predictor
    let maxBodyBytes: Int
    /// Images refused from their header: a side over 16384 or more than 16 Mi pixels.
    let limits: ImageLimits
    private let inference = DispatchQueue(label: "segtrain.serve.inference")
    private let lock = NSLock()
    private var requests = 0
    private var stopping = false
    private let health: Data
    private let page: Data

    init(predictor: Predictor, maxBodyBytes: Int) {
        self.predictor = predictor
        self.maxBodyBytes = maxBodyBytes
        // 16 Mi pixels (4096 x 4096): a small compressed upload can decode to this much, and the
        // prediction keeps classes x pixels floats while it is resized back.
        limits = ImageLimits(maxSide: 16_384, maxPixels: 1 << 24, maxFileBytes: maxBodyBytes)
        let d = predictor.description
        struct Health: Encodable {
            let status = "ok"
            let source: String, classes: Int, image_size: Int, channels: Int, max_body_bytes: Int
        }
        health = SegmentService.json(Health(source: predictor.source, classes: d.classes, image_size: d.imageSize,
                                            channels: d.inChannels, max_body_bytes: maxBodyBytes))
        page = Data(ServePage.html(classes: d.classes, imageSize: d.imageSize, maxBodyBytes: maxBodyBytes).utf8)
    }

    static func json(_ value: some Encodable) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    /// Requests being handled.
    var running: Int { lock.withLock { requests } }

    /// From now on requests get 503.
    func stopAccepting() { lock.withLock { stopping = true } }

    func handleRequest(_ request: HTTPRequest) async throws -> HTTPResponse {
        let start = monotonicSeconds()
        let refused = lock.withLock { requests += 1; return stopping }
        defer { lock.withLock { requests -= 1 } }
        let body = RequestBody(request.bodySequence)
        var response: HTTPResponse
        do {
            if refused { throw ServeFailure(.serviceUnavailable, "the server is stopping") }
            response = try await respond(to: request, body: body)
        } catch let failure as ServeFailure {
            response = errorResponse(failure, body: body)
        } catch {
            response = errorResponse(ServeFailure(.internalServerError, "\(error)"), body: body)
        }
        let size = body.received > 0 ? " (\(body.received) bytes)" : ""
        fputs("\(request.method.rawValue) \(request.path) \(response.statusCode.code)\(size) \(fixed((monotonicSeconds() - start) * 1000, 1)) ms\n", stderr)
        return response
    }

    func respond(to request: HTTPRequest, body: RequestBody) async throws -> HTTPResponse {
        switch request.path {
        case "/", "/index.html":
            guard request.method == .GET else { throw ServeFailure(.methodNotAllowed, "\(request.path) takes GET", headers: [HTTPHeader("Allow"): "GET"]) }
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: page)
        case "/healthz":
            guard request.method == .GET else { throw ServeFailure(.methodNotAllowed, "/healthz takes GET", headers: [HTTPHeader("Allow"): "GET"]) }
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "application/json"], body: health)
        case "/v1/segment", "/v1/remove-background":
            guard request.method == .POST else {
                throw ServeFailure(.methodNotAllowed, "\(request.path) takes POST with an image", headers: [HTTPHeader("Allow"): "POST"])
            }
            return try await segment(request, body: body, removeBackground: request.path == "/v1/remove-background")
        default:
            throw ServeFailure(.notFound, "no such path: \(request.path) (try POST /v1/segment, POST /v1/remove-background, GET /healthz, GET /)")
        }
    }

    func segment(_ request: HTTPRequest, body: RequestBody, removeBackground: Bool) async throws -> HTTPResponse {
        // Cheap checks first, before any of the body is read.
        let (mediaType, parameters) = SegmentService.mediaType(request.headers[.contentType])
        let multipart = mediaType == "multipart/form-data"
        guard multipart || ["image/png", "image/jpeg", "image/jpg"].contains(mediaType) else {
            throw ServeFailure(.unsupportedMediaType, (mediaType.isEmpty ? "no Content-Type" : "Content-Type \(mediaType) is not supported")
                               + "; send the image as image/png or image/jpeg, or as multipart/form-data with a file field named image")
        }
        var colour: (UInt8, UInt8, UInt8)? = nil
        if let text = request.query["background"] {
            guard removeBackground else { throw ServeFailure(.badRequest, "background is a parameter of /v1/remove-background") }
            let hex = text.hasPrefix("#") ? String(text.dropFirst()) : text
            guard let c = PredictionImages.colour("#" + hex) else {
                throw ServeFailure(.badRequest, "background \(text): not a colour #RRGGBB (write # as %23 in the URL)")
            }
            colour = c
        }
        var bytes = try await body.read(limit: maxBodyBytes)
        if multipart {
            guard let boundary = parameters["boundary"], !boundary.isEmpty else {
                throw ServeFailure(.badRequest, "multipart/form-data without a boundary")
            }
            bytes = try Multipart.file(named: "image", in: bytes, boundary: boundary)
        }

        // Decode (concurrently with other requests), infer (one at a time), make the PNG (concurrently).
        let format = predictor.pixelFormat, limits = self.limits
        let image: Image8, colours: Image8?
        do {
            (image, colours) = try await SegmentService.offload {
                let image = try ImageFile.decode(bytes, name: "image", as: format, limits: limits)
                // A gray model's cut-out keeps the image's colours.
                let colours = removeBackground && format.channels < 3
                    ? try ImageFile.decode(bytes, name: "image", as: .rgb, limits: limits) : nil
                return (image, colours)
            }
        } catch let error as ImageFileError {
            throw ServeFailure(.badRequest, bytes.isEmpty ? "empty body: no image" : "not a usable image: \(error.reason)")
        }
        let prediction = await predict(image)
        let classes = predictor.description.classes
        let png = try await SegmentService.offload { () throws -> [UInt8] in
            let labels = prediction.labels
            let output: Image8
            if !removeBackground {
                output = PredictionImages.mask(labels, classes: classes)
            } else if let colour {
                output = PredictionImages.composite(colours ?? image, labels: labels,
                                                    behind: PredictionImages.solid(colour, width: image.width, height: image.height))
            } else {
                output = PredictionImages.cutout(colours ?? image, labels: labels)
            }
            return try ImageFile.encode(output)
        }
        return HTTPResponse(statusCode: .ok, headers: [.contentType: "image/png"], body: Data(png))
    }

    /// The model on one image, after the inferences queued before it.
    func predict(_ image: Image8) async -> Prediction {
        await withCheckedContinuation { continuation in
            inference.async { continuation.resume(returning: self.predictor.predict([image])[0]) }
        }
    }

    /// `work` on a Dispatch thread, so that CPU work does not hold up Swift's cooperative threads.
    static func offload<T>(_ work: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try work() }) }
        }
    }

    func errorResponse(_ failure: ServeFailure, body: RequestBody) -> HTTPResponse {
        struct Message: Encodable { let error: String; let status: Int }
        let json = SegmentService.json(Message(error: failure.message, status: failure.status.code))
        var headers = failure.headers
        headers[.contentType] = "application/json"
        if body.complete { return HTTPResponse(statusCode: failure.status, headers: headers, body: json) }
        // The rest of the body is still on its way: read and dropped after the response (see the top).
        headers[.connection] = "close"
        let drained = DrainAfter(bytes: [UInt8](json), body: body, bound: maxBodyBytes + (64 << 20))
        return HTTPResponse(statusCode: failure.status, headers: headers,
                            body: HTTPBodySequence(from: drained, count: json.count, suggestedBufferSize: max(json.count, 1)))
    }

    /// `type/subtype` in lower case, and the parameters (`boundary=...`; quotes removed).
    static func mediaType(_ header: String?) -> (String, [String: String]) {
        guard let header else { return ("", [:]) }
        let parts = header.split(separator: ";")
        let type = parts.first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        var parameters: [String: String] = [:]
        for part in parts.dropFirst() {
            let pair = part.split(separator: "=", maxSplits: 1)
            guard pair.count == 2 else { continue }
            var value = pair[1].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            parameters[pair[0].trimmingCharacters(in: .whitespaces).lowercased()] = value
        }
        return (type, parameters)
    }
}

/// A request's body, read at most once, with its size checked.
final class RequestBody: @unchecked Sendable {
    private var iterator: HTTPBodySequence.Iterator
    /// The Content-Length (nil: chunked).
    let declared: Int?
    private(set) var received = 0
    /// Every byte has been read.
    private(set) var complete: Bool

    init(_ sequence: HTTPBodySequence) {
        iterator = sequence.makeAsyncIterator()
        declared = sequence.count
        complete = sequence.count == 0
    }

    /// The whole body, or 413 when the declared size or the bytes received pass `limit`.
    func read(limit: Int) async throws -> [UInt8] {
        func tooLarge(_ size: String) -> ServeFailure {
            ServeFailure(.payloadTooLarge, "request body \(size) is larger than the limit of \(limit) bytes (--max-body-bytes)")
        }
        if let declared, declared > limit { throw tooLarge("of \(declared) bytes") }
        var bytes = [UInt8]()
        bytes.reserveCapacity(declared ?? 0)
        do {
            while let chunk = try await iterator.next() {
                received += chunk.count
                if received > limit { throw tooLarge("(\(received) bytes so far)") }
                bytes.append(contentsOf: chunk)
            }
        } catch let failure as ServeFailure {
            throw failure
        } catch {
            throw ServeFailure(.badRequest, "the request body ended early or is malformed")
        }
        complete = true
        return bytes
    }

    /// Reads and drops the rest of the body unless that would pass `bound` bytes in all.
    func drain(bound: Int) async {
        if complete { return }
        if let declared, declared > bound { return }
        while received <= bound, let chunk = try? await iterator.next() {
            received += chunk.count
        }
    }
}

/// A response body: `bytes`, then (once they are written) the rest of the request's body drained
/// and the connection closed.
struct DrainAfter: AsyncBufferedSequence, Sendable {
    typealias Element = UInt8
    let bytes: [UInt8]
    let body: RequestBody
    let bound: Int

    func makeAsyncIterator() -> Iterator { Iterator(bytes: bytes, body: body, bound: bound) }

    struct Iterator: AsyncBufferedIteratorProtocol {
        let bytes: [UInt8]
        let body: RequestBody
        let bound: Int
        var offset = 0

        mutating func next() async throws -> UInt8? {
            guard let one = try await nextBuffer(suggested: 1) else { return nil }
            return one.first
        }

        mutating func nextBuffer(suggested count: Int) async throws -> ArraySlice<UInt8>? {
            if offset < bytes.count {
                let end = Swift.min(bytes.count, offset + Swift.max(count, 1))
                defer { offset = end }
                return bytes[offset..<end]
            }
            await body.drain(bound: bound)
            // An error once every byte of the response is written: FlyingFox closes the connection.
            throw Closing()
        }
    }

    struct Closing: Error {}
}

/// The one file of a multipart/form-data body (RFC 7578).
enum Multipart {
    static func file(named field: String, in body: [UInt8], boundary: String) throws -> [UInt8] {
        let delimiter = Array("--\(boundary)".utf8)
        let separator = Array("\r\n\r\n".utf8)
        let next = Array("\r\n--\(boundary)".utf8)
        guard var at = find(delimiter, in: body, from: 0) else {
            throw ServeFailure(.badRequest, "multipart/form-data body without its boundary")
        }
        at += delimiter.count
        while at + 2 <= body.count, !(body[at] == 0x2D && body[at + 1] == 0x2D) {  // "--": the last one
            guard let headersEnd = find(separator, in: body, from: at) else { break }
            let headers = String(decoding: body[at..<headersEnd], as: UTF8.self)
            let start = headersEnd + separator.count
            guard let end = find(next, in: body, from: start) else {
                throw ServeFailure(.badRequest, "multipart/form-data body ends inside a part")
            }
            if name(headers) == field { return Array(body[start..<end]) }
            at = end + next.count
        }
        throw ServeFailure(.badRequest, "multipart/form-data body without a file field named \(field)")
    }

    /// The `name` of a part's Content-Disposition.
    static func name(_ headers: String) -> String? {
        for line in headers.split(separator: "\r\n") where line.lowercased().hasPrefix("content-disposition:") {
            for parameter in line.split(separator: ";").dropFirst() {
                let pair = parameter.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, pair[0].trimmingCharacters(in: .whitespaces).lowercased() == "name" else { continue }
                let value = pair[1].trimmingCharacters(in: .whitespaces)
                return value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") ? String(value.dropFirst().dropLast()) : value
            }
        }
        return nil
    }

    /// Where `needle` first occurs in `haystack` at or after `from`.
    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, haystack.count - from >= needle.count else { return nil }
        return haystack.withUnsafeBufferPointer { h in
            needle.withUnsafeBufferPointer { n in
                var i = from
                let last = h.count - n.count
                while i <= last {
                    guard let hit = memchr(h.baseAddress! + i, Int32(n[0]), last - i + 1) else { return nil }
                    i = h.baseAddress!.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                    if memcmp(h.baseAddress! + i, n.baseAddress!, n.count) == 0 { return i }
                    i += 1
                }
                return nil
            }
        }
    }
}
