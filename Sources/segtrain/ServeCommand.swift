// `segtrain serve`: a trained model behind HTTP (the SegServe library: Hummingbird 2 on SwiftNIO):
// masks and background removal for uploaded images, a health check, and a page to try it in a
// browser. This file parses the flags, loads the model, starts the server and stops it on a signal.

import ArgumentParser
import Foundation
import SegData
import SegEngine
import SegInference
import SegServe
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
            the model as JSON. GET /: a page to try both in a browser (HEAD works wherever GET does). \
            Errors are JSON {"error": "...", "status": N}: 400 not an image, a corrupt one or a malformed \
            request, 404, 405, 408 a request not in within --request-timeout, 413 body over \
            --max-body-bytes, 415 other content types, 431 request line and headers over 16 KiB, 503 \
            the inference queue full (with Retry-After) or the server stopping. The model is loaded \
            once; requests are decoded concurrently and inferred one at a time on --threads workers, \
            with at most --queue-depth waiting. Open connections are capped below the file-descriptor \
            limit. SIGINT/SIGTERM: new requests get 503, running ones finish, then the server exits 0.
            """)

    @Option(help: "A run folder (its checkpoints/best, else last) or a checkpoint folder.")
    var model: String
    @Option(help: "Address to listen on: an IPv4 or IPv6 address (0.0.0.0: every interface).")
    var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: a free port, printed).")
    var port = 8080
    @Option(help: "Largest request body in bytes; a larger one gets 413.")
    var maxBodyBytes = 20 * 1024 * 1024
    @Option(help: "Images that may wait for the model behind the one it runs; one more gets 503 with Retry-After.")
    var queueDepth = 16
    @Option(help: "Seconds a connection may sit without a request before it is closed.")
    var idleTimeout = 30.0
    @Option(help: "Seconds a request may take to arrive in full (head and body) from its first byte; then 408.")
    var requestTimeout = 60.0
    @Option(help: "Test-time augmentation: none, or flip (the mean over the image and its left-right and top-bottom mirror images; 3x the time).")
    var tta = TestTimeAugmentation.none
    @Option(help: "Worker threads for each inference (default: the CPUs available).")
    var threads: Int?

    func validate() throws {
        if !(0...65535).contains(port) { throw ValidationError("--port must be 0...65535 (got \(port))") }
        if maxBodyBytes < 1 { throw ValidationError("--max-body-bytes must be at least 1 (got \(maxBodyBytes))") }
        if !(0...100_000).contains(queueDepth) { throw ValidationError("--queue-depth must be 0...100000 (got \(queueDepth))") }
        if !(idleTimeout >= 0.1 && idleTimeout <= 86_400) { throw ValidationError("--idle-timeout must be 0.1...86400 seconds (got \(idleTimeout))") }
        if !(requestTimeout >= 0.1 && requestTimeout <= 86_400) {
            throw ValidationError("--request-timeout must be 0.1...86400 seconds (got \(requestTimeout))")
        }
        if let message = ThreadDefaults.problem(threads: threads) { throw ValidationError(message) }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        guard SegmentServer.isAddress(host == "localhost" ? "127.0.0.1" : host) else {
            throw UserError("--host \(host): not an IPv4 or IPv6 address")
        }
        let pool = WorkerPool(threads: threads ?? ThreadDefaults.threadsPerRank())
        let predictor: Predictor
        do { predictor = try Predictor(path: model, pool: pool) } catch { throw UserError("\(error)") }
        predictor.tta = tta
        var limits = ServeLimits()
        limits.maxBodyBytes = maxBodyBytes
        limits.queueDepth = queueDepth
        limits.idleTimeout = idleTimeout
        limits.requestTimeout = requestTimeout
        let service = SegmentService(predictor: predictor, limits: limits, log: { line in fputs(line + "\n", stderr) })
        let server = SegmentServer(service: service, host: host, port: port)
        let model = self.model, shown = host.contains(":") ? "[\(host)]" : host
        let stoppedBy: Int32?
        do {
            stoppedBy = try server.serveUntilStopped { bound in
                print("serving \(model) on http://\(shown):\(bound)")
                fflush(stdout)
            }
        } catch { throw UserError("\(error)") }
        if let number = stoppedBy { fputs("segtrain serve: stopped (\(number == SIGINT ? "SIGINT" : "SIGTERM"))\n", stderr) }
    }
}
