// Running a `SegmentServer` in the foreground until SIGINT/SIGTERM: the server runs on Swift tasks,
// the calling thread waits for its end (or a failure to listen), and a signal thread drains it.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension SegmentServer {
    /// Starts the server and blocks until it ends. On SIGINT or SIGTERM new requests get 503,
    /// running ones finish (30 s at most; one still arriving then has until its request timeout,
    /// when RequestGuard answers 408), then the server closes its sockets and the signal's number
    /// is returned. `listening` gets the bound port. A failure to listen or serve throws.
    public func serveUntilStopped(listening: @escaping @Sendable (Int) -> Void) throws -> Int32? {
        let outcome = ServeOutcome()
        StopSignal.install()
        let server = self
        Task.detached {
            do {
                listening(try await server.start())
                try await server.wait()
            } catch let error as ListenError {
                outcome.fail("cannot listen on \(server.host):\(server.port): \(error)")
            } catch {
                outcome.fail("\(error)")
            }
            outcome.finish()
        }
        Thread {
            let number = StopSignal.wait()
            outcome.stop(signal: number)
            Task.detached { await server.stop(drainSeconds: 30) }
        }.start()
        outcome.waitUntilFinished()
        if let number = outcome.stoppedBy { return number }
        if let failure = outcome.failure { throw ServeError(failure) }
        return nil
    }

    /// An IPv4 or IPv6 address in numeric form.
    public static func isAddress(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}

public struct ServeError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// SIGINT and SIGTERM caught with a handler that only posts a semaphore (async-signal-safe), for
/// `wait` on an ordinary thread; a second signal ends the process at once. (Blocking the signals
/// instead would not do: threads started before `main`, such as OpenBLAS's, would still take them
/// and die.)
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

/// How the server's run ended, shared with the signal thread.
final class ServeOutcome: @unchecked Sendable {
    private let lock = NSLock()
    private let done = DispatchSemaphore(value: 0)
    private var signalNumber: Int32?
    private var message: String?

    func stop(signal: Int32) { lock.lock(); signalNumber = signal; lock.unlock() }
    var stoppedBy: Int32? { lock.lock(); defer { lock.unlock() }; return signalNumber }
    var failure: String? { lock.lock(); defer { lock.unlock() }; return message }
    func fail(_ message: String) { lock.lock(); self.message = message; lock.unlock() }
    func finish() { done.signal() }
    func waitUntilFinished() { done.wait() }
}
