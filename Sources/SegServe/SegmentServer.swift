// The HTTP server of `segtrain serve`: Hummingbird 2's HTTP/1.1 server (SwiftNIO) on one address,
// with the SegmentService as its responder, the per-connection guards of ConnectionGuard.swift, a
// cap on open connections below the file-descriptor limit, and a graceful stop.
//
// Accepting: at most `maxConnections` connections are open at once (by default the soft
// RLIMIT_NOFILE less 64 for everything else); more wait in the listen backlog until one closes. If
// accept still fails (EMFILE, ENFILE, ENOBUFS), NIO's AcceptBackoffHandler retries after a second
// instead of ending the server.
// Stopping: `stop` makes new requests get 503, waits (up to a bound) for the running ones, then
// closes the listening socket and every connection.

import Foundation
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import SegEngine
#if canImport(Glibc)
import Glibc
#endif

/// The service's limits; every one has a `segtrain serve` flag except the header limit.
public struct ServeLimits: Sendable {
    /// Largest request body in bytes (413 above).
    public var maxBodyBytes = 20 * 1024 * 1024
    /// Largest request line plus headers in bytes (431 above).
    public var maxHeaderBytes = 16 * 1024
    /// Images that may wait for the model behind the one it runs (503 with Retry-After above).
    public var queueDepth = 16
    /// Seconds a connection may sit without a request before it is closed.
    public var idleTimeout = 30.0
    /// Seconds a request may take to arrive in full from its first byte (408 after).
    public var requestTimeout = 60.0
    /// Connections open at once; nil: the file-descriptor limit less a reserve.
    public var maxConnections: Int? = nil

    public init() {}

    /// The soft RLIMIT_NOFILE less 64 descriptors for the process's own files, at least 8.
    public static func connectionsForDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int32.max) else { return 65_536 }
        return max(8, min(65_536, Int(limit.rlim_cur) - 64))
    }
}

/// A failure to listen (the address is taken or not local).
public struct ListenError: Error, CustomStringConvertible {
    public let description: String
}

/// Hummingbird's server with the SegmentService; see the top of the file.
public final class SegmentServer: @unchecked Sendable {
    public let service: SegmentService
    /// The address and port as asked for (port 0: a free one).
    public let host: String, port: Int
    let server: Server<GuardedHTTP1Channel>
    private let bound = AsyncStream<Result<Int, any Error>>.makeStream()
    private var runTask: Task<Void, any Error>?

    /// `host`: an IPv4 or IPv6 address (or localhost); `port` 0: a free one.
    public init(service: SegmentService, host: String, port: Int) {
        self.service = service
        (self.host, self.port) = (host, port)
        let limits = service.limits
        let responder: HTTPChannelHandler.Responder = { request, writer, channel in
            try await service.respond(to: request, writer: writer, channel: channel)
        }
        let connections = limits.maxConnections ?? ServeLimits.connectionsForDescriptorLimit()
        var logger = Logger(label: "segtrain.serve")
        logger.logLevel = .critical
        let continuation = bound.continuation
        server = Server(
            childChannelSetup: GuardedHTTP1Channel(responder: responder, limits: limits),
            configuration: ServerConfiguration(address: .hostname(host == "localhost" ? "127.0.0.1" : host, port: port),
                                               backlog: 256, reuseAddress: true,
                                               availableConnectionsDelegate: MaximumAvailableConnections(connections, logger: logger)),
            onServerRunning: { channel in continuation.yield(.success(channel.localAddress?.port ?? port)) },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger)
    }

    /// Starts listening; returns the port. Throws ListenError when the address cannot be bound.
    public func start() async throws -> Int {
        let continuation = bound.continuation
        let server = self.server
        runTask = Task {
            do {
                try await server.run()
            } catch {
                continuation.yield(.failure(error))
                throw error
            }
        }
        for await result in bound.stream {
            switch result {
            case .success(let port): return port
            case .failure(let error):
                if let io = error as? IOError { throw ListenError(description: String(cString: strerror(io.errnoCode))) }
                throw ListenError(description: "\(error)")
            }
        }
        throw ListenError(description: "the server ended before it listened")
    }

    /// Until the server has stopped (after `stop`) or failed.
    public func wait() async throws {
        try await runTask?.value
    }

    /// New requests get 503; running ones get up to `drainSeconds` to finish; then the listening
    /// socket and the connections are closed.
    public func stop(drainSeconds: Double) async {
        service.stopAccepting()
        let deadline = monotonicSeconds() + drainSeconds
        while service.running > 0 && monotonicSeconds() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        do {
            try await server.shutdownGracefully()
        } catch {
            // Already stopped.
        }
    }
}
