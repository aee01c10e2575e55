// What each connection's SwiftNIO pipeline adds to Hummingbird's HTTP/1.1 channel, for clients that
// are slow, malformed or hostile:
//
//   ArrivalHandler (bytes)  ->  HTTP/1.1 decoder (NIO, llhttp: linear, header and URL size limited)
//   -> PersistenceHandler (HTTP/1 heads) -> HTTP types codec -> RequestGuard (request parts)
//   -> Hummingbird's connection state (its quiescing on stop) -> the responder
//
// - HTTP/1.0 without keep-alive (and HTTP/1.1 with `Connection: close`) gets its response and then
//   the close it expects: the version does not survive the HTTP types codec, so PersistenceHandler
//   marks such a request `Connection: close` for Hummingbird, and says `keep-alive` to an HTTP/1.0
//   client that asked for it.
// - A connection with no request on it (no byte since the last response, or since it opened) is
//   closed after the idle timeout.
// - A request must arrive in full (head and body) within the request timeout, counted from its first
//   byte: else 408 as JSON (or, once a response has started, the connection is closed). The idle
//   timeout does not apply meanwhile, so a slow request gets the 408 whichever timeout is shorter.
// - A framing error the decoder finds (header too large: 431; bad or duplicate Content-Length, bad
//   chunk sizes, an unknown method, a request line that is not HTTP/1.x, TLS or HTTP/2 bytes: 400) is
//   answered as JSON and the connection closed, instead of Hummingbird's empty 400.
// All state lives on the connection's event loop; nothing here locks.

import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// Hummingbird's HTTP/1.1 child channel with ArrivalHandler in front of its decoder and RequestGuard
/// behind it (see the top of the file).
struct GuardedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel

    init(responder: @escaping HTTPChannelHandler.Responder, limits: ServeLimits) {
        let requestTimeout = TimeAmount.nanoseconds(Int64(limits.requestTimeout * 1e9))
        let idleTimeout = TimeAmount.nanoseconds(Int64(limits.idleTimeout * 1e9))
        // Hummingbird's own idle timeout is not used: it would close a request that trickles in
        // (its clock runs from the last complete header or body part) before the 408.
        let configuration = HTTP1Channel.Configuration(
            additionalChannelHandlers: [RequestGuard(requestTimeout: requestTimeout, idleTimeout: idleTimeout,
                                                     maxHeaderBytes: limits.maxHeaderBytes)],
            idleTimeout: nil,
            httpDecoderConfiguration: .init(maxHeaderFieldSize: limits.maxHeaderBytes, maxHeaderListSize: limits.maxHeaderBytes,
                                            maxHeaderFieldCount: 200))
        inner = HTTP1Channel(responder: responder, configuration: configuration)
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        do {
            try channel.pipeline.syncOperations.addHandler(ArrivalHandler())
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            let codec = try operations.handler(type: HTTP1ToHTTPServerCodec.self)
            try operations.addHandler(PersistenceHandler(), position: .before(codec))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}

/// Bytes arrived on the connection (sent ahead of them to RequestGuard).
struct BytesArrived {}

/// First in the pipeline: announces each read to RequestGuard, which starts a request's clock.
final class ArrivalHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireUserInboundEventTriggered(BytesArrived())
        context.fireChannelRead(data)
    }
}

/// Between NIO's HTTP/1 codec and the HTTP types codec: a request that does not keep its connection
/// alive (HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`) is marked
/// `Connection: close`, so Hummingbird closes the connection after its response; the response says
/// `Connection: close`, or `keep-alive` to an HTTP/1.0 client that keeps its connection.
final class PersistenceHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// For each request not yet answered in full (pipelining): (HTTP/1.0, keeps the connection).
    private var pending: [(old: Bool, keepAlive: Bool)] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        let keepAlive = head.isKeepAlive
        pending.append((head.version.major == 1 && head.version.minor == 0, keepAlive))
        if !keepAlive {
            head.headers.replaceOrAdd(name: "connection", value: "close")
            context.fireChannelRead(wrapInboundOut(.head(head)))
        } else {
            context.fireChannelRead(data)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.code >= 200:
            if let request = pending.first {
                if !request.keepAlive {
                    head.headers.replaceOrAdd(name: "connection", value: "close")
                } else if request.old {
                    head.headers.replaceOrAdd(name: "connection", value: "keep-alive")
                }
                context.write(wrapOutboundOut(.head(head)), promise: promise)
                return
            }
        case .end:
            if !pending.isEmpty { pending.removeFirst() }
        default:
            break
        }
        context.write(data, promise: promise)
    }
}

/// The idle and request timeouts and the JSON answers to framing errors (see the top of the file).
final class RequestGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    enum Phase {
        /// Between requests.
        case idle
        /// A request's bytes are arriving; its clock runs.
        case receiving
        /// The request is in; the responder has it.
        case handling
    }

    let requestTimeout: TimeAmount
    let idleTimeout: TimeAmount
    let maxHeaderBytes: Int
    private var phase = Phase.idle
    /// A final response's head is written and its end not yet.
    private var responseOpen = false
    /// A response was written in full while its request was still arriving (an early refusal).
    private var answeredEarly = false
    /// The connection is being closed by this handler.
    private var closing = false
    private var timer: Scheduled<Void>?

    init(requestTimeout: TimeAmount, idleTimeout: TimeAmount, maxHeaderBytes: Int) {
        self.requestTimeout = requestTimeout
        self.idleTimeout = idleTimeout
        self.maxHeaderBytes = maxHeaderBytes
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is BytesArrived {
            if phase == .idle { begin(context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            if phase == .idle { begin(context) }
        case .body:
            break
        case .end:
            phase = .handling
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let response):
            if response.status.code >= 200 { responseOpen = true }
        case .body:
            break
        case .end:
            responseOpen = false
            if phase == .handling {
                phase = .idle
                waitIdle(context)
            } else if phase == .receiving {
                answeredEarly = true
            }
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let parse = error as? HTTPParserError {
            let (status, message) = RequestGuard.describe(parse, maxHeaderBytes: maxHeaderBytes)
            refuse(context, status: status, message: message)
            return
        }
        if error is HTTP1TypeConversionError {
            refuse(context, status: .badRequest, message: "malformed request: \(error)")
            return
        }
        context.fireErrorCaught(error)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive && phase == .idle { waitIdle(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if phase == .idle && timer == nil { waitIdle(context) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    /// No request on the connection: it is closed if none begins within the idle timeout.
    private func waitIdle(_ context: ChannelHandlerContext) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: idleTimeout) { [self] in
            timer = nil
            guard phase == .idle, !closing else { return }
            closing = true
            context.close(promise: nil)
        }
    }

    /// A request's first bytes: its clock starts.
    private func begin(_ context: ChannelHandlerContext) {
        phase = .receiving
        answeredEarly = false
        timer?.cancel()
        let seconds = Double(requestTimeout.nanoseconds) / 1e9
        let shown = seconds == seconds.rounded() ? "\(Int(seconds))" : "\(seconds)"
        timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: requestTimeout) { [self] in
            timer = nil
            guard phase == .receiving else { return }
            refuse(context, status: .requestTimeout,
                   message: "the request did not arrive in full within \(shown) s (--request-timeout)")
        }
    }

    /// The JSON error and `Connection: close`, then the connection closed; if a response has already
    /// begun (or been sent) on this request, only the close.
    private func refuse(_ context: ChannelHandlerContext, status: HTTPResponse.Status, message: String) {
        if closing { return }
        closing = true
        timer?.cancel()
        timer = nil
        phase = .handling
        if responseOpen || answeredEarly {
            context.close(promise: nil)
            return
        }
        responseOpen = true
        let json = ServeFailure.json(status: status.code, message: message)
        var head = HTTPResponse(status: status)
        head.headerFields = [.contentType: "application/json", .contentLength: "\(json.count)", .connection: "close"]
        var buffer = context.channel.allocator.buffer(capacity: json.count)
        buffer.writeBytes(json)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(buffer)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }

    /// The status and message for a decoder error.
    static func describe(_ error: HTTPParserError, maxHeaderBytes: Int) -> (HTTPResponse.Status, String) {
        switch error {
        case .headerOverflow:
            return (.requestHeaderFieldsTooLarge,
                    "the request line and headers are larger than the limit of \(maxHeaderBytes) bytes or 200 fields")
        case .invalidContentLength:
            return (.badRequest, "malformed request: Content-Length is not a non-negative number")
        case .unexpectedContentLength:
            return (.badRequest, "malformed request: more than one Content-Length, or Content-Length with Transfer-Encoding")
        case .invalidChunkSize:
            return (.badRequest, "malformed request: a chunk size is not a hexadecimal number")
        case .invalidMethod:
            return (.badRequest, "malformed request: not an HTTP/1.x request line (unknown method)")
        case .invalidVersion, .paused:
            return (.badRequest, "malformed request: not an HTTP/1.x request (this server speaks HTTP/1.1 without TLS)")
        case .invalidURL:
            return (.badRequest, "malformed request: the request target is not a URL path")
        case .invalidHeaderToken, .lfExpected, .invalidConstant, .strictModeAssertion:
            return (.badRequest, "malformed request: the request line or a header is not valid HTTP/1.1")
        case .unknown:
            // llhttp's other framing errors: a Transfer-Encoding it cannot frame (or one beside
            // Content-Length), a missing CR.
            return (.badRequest, "malformed request: the framing is not valid HTTP/1.1 (Transfer-Encoding with Content-Length, or line endings)")
        default:
            return (.badRequest, "malformed request: \(error)")
        }
    }
}
