// A TensorBoard event file: `events.out.tfevents.<unix seconds>.<host>.<pid>` in a folder
// (TensorBoard reads every file whose name contains "tfevents"; several in one folder, e.g. from a
// resumed run, make one run, read in name order). The first record is an Event with file_version
// "brain.Event:2", then one Event per step with a Summary of scalars or an image, each a
// TFRecord (RecordFraming). Records collect in memory and reach the file at `flush()` (and when
// 1 MiB is pending); every write error is thrown, naming the file.

import Foundation
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An event file that cannot be made or written; the description names it.
public struct EventFileError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public final class EventFileWriter {
    /// The event file.
    public let path: String
    private var descriptor: Int32
    /// Framed records not yet written.
    private var pending: [UInt8] = []
    /// Pending bytes that trigger a write before `flush()`.
    public var flushThreshold = 1 << 20

    /// The file's name for the given time and host (`pid` keeps two runs in the same second apart).
    public static func fileName(seconds: Int, host: String, pid: Int32) -> String {
        "events.out.tfevents.\(String(format: "%010d", seconds)).\(host).\(pid)"
    }

    /// Creates a new event file in `directory` (which must exist) and writes the file-version record.
    public init(directory: String, wallTime: Double = EventFileWriter.now()) throws {
        var host = [CChar](repeating: 0, count: 256)
        let hostname = gethostname(&host, host.count - 1) == 0 ? String(cString: host) : "localhost"
        path = directory + "/" + EventFileWriter.fileName(seconds: Int(wallTime), host: hostname, pid: getpid())
        descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw EventFileError("\(path): cannot create: \(String(cString: strerror(errno)))") }
        pending.reserveCapacity(64 << 10)
        var first = Tensorboard_Event()
        first.wallTime = wallTime
        first.fileVersion = "brain.Event:2"
        try add(first)
        try flush()
    }

    deinit { if descriptor >= 0 { close(descriptor) } }

    /// Seconds since the Unix epoch (an event's wall_time).
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// One event at `step` holding a scalar (simple_value, float32) for each (tag, value).
    public func addScalars(_ values: [(tag: String, value: Double)], step: Int, wallTime: Double = EventFileWriter.now()) throws {
        var event = Tensorboard_Event()
        event.wallTime = wallTime
        event.step = Int64(step)
        event.summary.value = values.map { tag, value in
            var v = Tensorboard_Summary.Value()
            v.tag = tag
            v.simpleValue = Float(value)
            return v
        }
        try add(event)
    }

    /// One event at `step` holding an image: `encoded` a PNG file's bytes of `width` x `height`
    /// pixels with `channels` (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA).
    public func addImage(tag: String, encoded: [UInt8], width: Int, height: Int, channels: Int, step: Int,
                         wallTime: Double = EventFileWriter.now()) throws {
        var image = Tensorboard_Summary.Image()
        image.width = Int32(clamping: width)
        image.height = Int32(clamping: height)
        image.colorspace = Int32(clamping: channels)
        image.encodedImageString = Data(encoded)
        var value = Tensorboard_Summary.Value()
        value.tag = tag
        value.image = image
        var event = Tensorboard_Event()
        event.wallTime = wallTime
        event.step = Int64(step)
        event.summary.value = [value]
        try add(event)
    }

    private func add(_ event: Tensorboard_Event) throws {
        let data: [UInt8]
        do { data = try event.serializedBytes() } catch {
            throw EventFileError("\(path): cannot encode an event: \(error)")
        }
        RecordFraming.append(data, to: &pending)
        if pending.count >= flushThreshold { try writePending() }
    }

    /// Writes the pending records to the file.
    private func writePending() throws {
        guard descriptor >= 0 else { throw EventFileError("\(path): cannot write: the file is closed") }
        var done = 0
        while done < pending.count {
            let n = pending.withUnsafeBytes { write(descriptor, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw EventFileError("\(path): cannot write: \(String(cString: strerror(n < 0 ? errno : EIO)))") }
            done += n
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Writes the pending records and asks the system to keep them (fsync): what a killed or
    /// crashed run keeps.
    public func flush() throws {
        try writePending()
        guard fsync(descriptor) == 0 else { throw EventFileError("\(path): cannot write: \(String(cString: strerror(errno)))") }
    }

    /// Flushes and closes the file.
    public func finish() throws {
        guard descriptor >= 0 else { return }
        try flush()
        let result = close(descriptor)
        descriptor = -1
        guard result == 0 else { throw EventFileError("\(path): cannot write: \(String(cString: strerror(errno)))") }
    }
}
