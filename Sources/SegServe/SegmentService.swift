// The HTTP API of `segtrain serve` as a responder for Hummingbird's HTTP/1.1 server: the routes
// (`/`, `/healthz`, `/v1/segment`, `/v1/remove-background`), body limits, `100 Continue`, HEAD, and
// the JSON error shape `{"error": "...", "status": N}` for every refusal.
//
// Threads: Hummingbird runs each connection as a Swift task on SwiftNIO's event loops. Decoding and
// encoding (CPU work) are sent to Dispatch's global queues so several requests decode at once without
// holding up the tasks that read sockets; the model (one planned activation arena, not thread-safe)
// runs one image at a time behind the InferenceQueue, which refuses with 503 when it is full.
//
// Request bodies: the declared Content-Length is checked before anything is read (and before
// `100 Continue` is sent), and the bytes are counted while reading (chunked bodies). A response sent
// before its request's body was read in full (every error before the image is decoded) says
// `Connection: close`; once it is written, what is left of the body is read and dropped (up to a
// bound, and within the connection's request timeout) and the connection is closed, so a client still
// uploading gets the JSON error instead of a reset connection.

import Foundation
import HTTPTypes
import HummingbirdCore
import NIOCore
import SegData
import SegEngine
import SegInference

/// A request that gets an error: JSON `{"error": message, "status": code}`.
public struct ServeFailure: Error {
    public let status: HTTPResponse.Status
    public let message: String
    public var headers: HTTPFields
    public init(_ status: HTTPResponse.Status, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }

    /// The JSON body: `{"error": message, "status": code}`, keys sorted.
    public static func json(status: Int, message: String) -> [UInt8] {
        struct Message: Encodable { let error: String; let status: Int }
        return SegmentService.json(Message(error: message, status: status))
    }
}

/// A response before it is written: status, headers (Content-Length is set when written), body.
struct Reply {
    var status: HTTPResponse.Status
    var headers: HTTPFields
    var body: [UInt8]
}

/// The routes; `respond` is Hummingbird's responder.
public final class SegmentService: @unchecked Sendable {
    let predictor: Predictor
    let limits: ServeLimits
    /// Images refused from their header: a side over 16384 or more than 16 Mi pixels.
    let imageLimits: ImageLimits
    let inference: InferenceQueue
    private let lock = NSLock()
    private var requests = 0
    private var stopping = false
    private let health: [UInt8]
    private let page: [UInt8]
    /// One line per request (method, path, status, bytes, milliseconds); nil: none.
    let log: (@Sendable (String) -> Void)?

    public init(predictor: Predictor, limits: ServeLimits, log: (@Sendable (String) -> Void)? = nil) {
        self.predictor = predictor
        self.limits = limits
        self.log = log
        inference = InferenceQueue(depth: limits.queueDepth)
        // 16 Mi pixels (4096 x 4096): a small compressed upload can decode to this much, and the
        // prediction keeps classes x pixels floats while it is resized back.
        var imageLimits = ImageLimits()
        imageLimits.maxSide = 16_384
        imageLimits.maxPixels = 1 << 24
        imageLimits.maxFileBytes = limits.maxBodyBytes
        self.imageLimits = imageLimits
        let d = predictor.description
        struct Health: Encodable {
            let status = "ok"
            let source: String, classes: Int, image_size: Int, channels: Int, max_body_bytes: Int
        }
        health = SegmentService.json(Health(source: predictor.source, classes: d.classes, image_size: d.imageSize,
                                            channels: d.inChannels, max_body_bytes: limits.maxBodyBytes))
        page = Array(ServePage.html(classes: d.classes, imageSize: d.imageSize, maxBodyBytes: limits.maxBodyBytes).utf8)
    }

    static func json(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Only strings and integers are encoded here, which cannot fail; if it ever did, the client
        // still gets JSON and the server says why on stderr.
        do {
            return [UInt8](try encoder.encode(value))
        } catch {
            fputs("segtrain serve: error: cannot encode a JSON response: \(error)\n", stderr)
            return Array(#"{"error": "internal error: the response could not be encoded", "status": 500}"#.utf8)
        }
    }

    /// Requests being handled.
    public var running: Int { lock.withLock { requests } }

    /// From now on requests get 503 (and `Connection: close`).
    public func stopAccepting() { lock.withLock { stopping = true } }

    /// Hummingbird's responder: one request, its response written, then (if the body was not read in
    /// full) the rest of the body drained and the connection closed.
    func respond(to request: Request, writer: consuming ResponseWriter, channel: any Channel) async throws {
        let start = monotonicSeconds()
        let refused = lock.withLock { requests += 1; return stopping }
        defer { lock.withLock { requests -= 1 } }
        let body = BodyReader(request)
        let path = request.uri.path
        var reply: Reply
        do {
            if refused { throw ServeFailure(.serviceUnavailable, "the server is stopping") }
            reply = try await route(request, path: path, body: body, writer: writer)
        } catch let failure as ServeFailure {
            reply = errorReply(failure)
        } catch {
            reply = errorReply(ServeFailure(.internalServerError, "\(error)"))
        }
        let closing = refused || !body.complete
        if closing { reply.headers[.connection] = "close" }
        reply.headers[.contentLength] = "\(reply.body.count)"
        var head = HTTPResponse(status: reply.status)
        head.headerFields = reply.headers
        if request.method == .head {
            try await writer.writeResponse(head)
        } else {
            var buffer = ByteBuffer()
            buffer.writeBytes(reply.body)
            try await writer.write(response: head, body: ResponseBody(byteBuffer: buffer))
        }
        if let log {
            let size = body.received > 0 ? " (\(body.received) bytes)" : ""
            let ms = String(format: "%.1f", (monotonicSeconds() - start) * 1000)
            log("\(request.method.rawValue) \(request.head.path ?? "") \(reply.status.code)\(size) \(ms) ms")
        }
        if closing {
            // A client told to wait for `100 Continue` and not given it sends no body: nothing to drain.
            if !body.awaitingContinue { await body.drain(bound: limits.maxBodyBytes + (64 << 20)) }
            try? await channel.close()
        }
    }

    func route(_ request: Request, path: String, body: BodyReader, writer: borrowing ResponseWriter) async throws -> Reply {
        let method = request.method
        func allow(_ allowed: HTTPRequest.Method, _ what: String) throws {
            // HEAD is GET without the body.
            guard method == allowed || (allowed == .get && method == .head) else {
                throw ServeFailure(.methodNotAllowed, what, headers: [.allow: allowed == .get ? "GET, HEAD" : allowed.rawValue])
            }
        }
        switch path {
        case "/", "/index.html":
            try allow(.get, "\(path) takes GET")
            return Reply(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: page)
        case "/healthz":
            try allow(.get, "/healthz takes GET")
            return Reply(status: .ok, headers: [.contentType: "application/json"], body: health)
        case "/v1/segment", "/v1/remove-background":
            try allow(.post, "\(path) takes POST with an image")
            return try await segment(request, body: body, writer: writer, removeBackground: path == "/v1/remove-background")
        default:
            throw ServeFailure(.notFound, "no such path: \(path) (try POST /v1/segment, POST /v1/remove-background, GET /healthz, GET /)")
        }
    }

    func segment(_ request: Request, body: BodyReader, writer: borrowing ResponseWriter, removeBackground: Bool) async throws -> Reply {
        // Cheap checks first, before any of the body is read.
        let (mediaType, parameters) = SegmentService.mediaType(request.headers[.contentType])
        let multipart = mediaType == "multipart/form-data"
        guard multipart || ["image/png", "image/jpeg", "image/jpg"].contains(mediaType) else {
            throw ServeFailure(.unsupportedMediaType, (mediaType.isEmpty ? "no Content-Type" : "Content-Type \(mediaType) is not supported")
                               + "; send the image as image/png or image/jpeg, or as multipart/form-data with a file field named image")
        }
        var colour: (UInt8, UInt8, UInt8)? = nil
        if let text = SegmentService.queryValue("background", in: request.uri.query) {
            guard removeBackground else { throw ServeFailure(.badRequest, "background is a parameter of /v1/remove-background") }
            let hex = text.hasPrefix("#") ? String(text.dropFirst()) : text
            guard let c = PredictionImages.colour("#" + hex) else {
                throw ServeFailure(.badRequest, "background \(text): not a colour #RRGGBB (write # as %23 in the URL)")
            }
            colour = c
        }
        let limit = limits.maxBodyBytes
        if let declared = body.declared, declared > limit { throw BodyReader.tooLarge("of \(declared) bytes", limit: limit) }
        if body.awaitingContinue {
            try await writer.writeInformationalHead(HTTPResponse(status: .continue))
            body.awaitingContinue = false
        }
        var bytes = try await body.read(limit: limit)
        if multipart {
            guard let boundary = parameters["boundary"], !boundary.isEmpty else {
                throw ServeFailure(.badRequest, "multipart/form-data without a boundary")
            }
            bytes = try Multipart.file(named: "image", in: bytes, boundary: boundary)
        }

        // Decode (concurrently with other requests), infer (one at a time, behind a bounded queue),
        // make the PNG (concurrently).
        let format = predictor.pixelFormat, imageLimits = self.imageLimits
        let image: Image8, colours: Image8?
        do {
            (image, colours) = try await SegmentService.offload {
                let image = try ImageFile.decode(bytes, name: "image", as: format, limits: imageLimits)
                // A gray model's cut-out keeps the image's colours.
                let colours = removeBackground && format.channels < 3
                    ? try ImageFile.decode(bytes, name: "image", as: .rgb, limits: imageLimits) : nil
                return (image, colours)
            }
        } catch let error as ImageFileError {
            throw ServeFailure(.badRequest, bytes.isEmpty ? "empty body: no image" : "not a usable image: \(error.reason)")
        }
        let predictor = self.predictor
        let prediction = try await inference.run { predictor.predict([image])[0] }
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
        return Reply(status: .ok, headers: [.contentType: "image/png"], body: png)
    }

    /// `work` on a Dispatch thread, so that CPU work does not hold up Swift's cooperative threads.
    static func offload<T>(_ work: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try work() }) }
        }
    }

    func errorReply(_ failure: ServeFailure) -> Reply {
        var headers = failure.headers
        headers[.contentType] = "application/json"
        return Reply(status: failure.status, headers: headers,
                     body: ServeFailure.json(status: failure.status.code, message: failure.message))
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

    /// The first value of `name` in a query string, percent-decoded (`+` is a space); nil if absent.
    static func queryValue(_ name: String, in query: String?) -> String? {
        guard let query else { return nil }
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(parts[0])
            guard key == name else { continue }
            let raw = parts.count > 1 ? String(parts[1]).replacingOccurrences(of: "+", with: " ") : ""
            return raw.removingPercentEncoding ?? raw
        }
        return nil
    }
}

/// A request's body, read at most once, with its size checked.
final class BodyReader: @unchecked Sendable {
    private var iterator: RequestBody.AsyncIterator
    /// The Content-Length (nil: chunked, or none).
    let declared: Int?
    private(set) var received = 0
    /// Every byte has been read (or there is no body).
    private(set) var complete: Bool
    /// The client sent `Expect: 100-continue` and has not been told to go on yet.
    var awaitingContinue: Bool

    init(_ request: Request) {
        iterator = request.body.makeAsyncIterator()
        declared = request.headers[.contentLength].flatMap { Int($0) }
        let chunked = request.headers[.transferEncoding] != nil
        complete = !chunked && (declared ?? 0) == 0
        awaitingContinue = !complete && request.headers[.expect]?.lowercased() == "100-continue"
    }

    static func tooLarge(_ size: String, limit: Int) -> ServeFailure {
        ServeFailure(.contentTooLarge, "request body \(size) is larger than the limit of \(limit) bytes (--max-body-bytes)")
    }

    /// The whole body, or 413 when the declared size or the bytes received pass `limit`.
    func read(limit: Int) async throws -> [UInt8] {
        if let declared, declared > limit { throw BodyReader.tooLarge("of \(declared) bytes", limit: limit) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(declared ?? 0)
        do {
            while let chunk = try await iterator.next() {
                received += chunk.readableBytes
                if received > limit { throw BodyReader.tooLarge("(\(received) bytes so far)", limit: limit) }
                bytes.append(contentsOf: chunk.readableBytesView)
            }
        } catch let failure as ServeFailure {
            throw failure
        } catch {
            throw ServeFailure(.badRequest, "the request body ended early or is malformed")
        }
        if let declared, received < declared { throw ServeFailure(.badRequest, "the request body ended early (\(received) of \(declared) bytes)") }
        complete = true
        return bytes
    }

    /// Reads and drops the rest of the body unless that would pass `bound` bytes in all.
    func drain(bound: Int) async {
        if complete { return }
        if let declared, declared > bound { return }
        do {
            while received <= bound, let chunk = try await iterator.next() { received += chunk.readableBytes }
        } catch {
            // The connection is closed next anyway.
        }
    }
}

/// The model's one-at-a-time queue with a bound: at most `depth` images wait while one is inferred;
/// one more gets 503 with `Retry-After` (seconds, from the mean inference time) at once.
public final class InferenceQueue: @unchecked Sendable {
    /// Images that may wait behind the running one.
    public let depth: Int
    private let queue = DispatchQueue(label: "segserve.inference")
    private let lock = NSLock()
    private var admitted = 0
    /// Mean seconds per inference (exponential average), for Retry-After.
    private var meanSeconds = 0.05

    public init(depth: Int) { self.depth = depth }

    /// Images admitted (waiting or running).
    public var length: Int { lock.withLock { admitted } }

    /// `work` on the model's queue after those before it, or 503 when `depth` are already waiting.
    public func run<T>(_ work: @escaping () -> T) async throws -> T {
        let retryAfter: Int? = lock.withLock {
            if admitted > depth { return max(1, Int((Double(admitted) * meanSeconds).rounded(.up))) }
            admitted += 1
            return nil
        }
        if let retryAfter {
            throw ServeFailure(.serviceUnavailable, "the inference queue is full (\(depth) waiting); retry after \(retryAfter) s",
                               headers: [.retryAfter: "\(retryAfter)"])
        }
        return await withCheckedContinuation { continuation in
            queue.async {
                let start = monotonicSeconds()
                let result = work()
                let seconds = monotonicSeconds() - start
                self.lock.withLock {
                    self.admitted -= 1
                    self.meanSeconds = 0.8 * self.meanSeconds + 0.2 * seconds
                }
                continuation.resume(returning: result)
            }
        }
    }
}
