// TFRecord framing, the container of TensorBoard's event files: each record is
//   uint64 LE  length of the data
//   uint32 LE  masked CRC-32C of those 8 length bytes
//   data       (a serialized tensorboard.Event)
//   uint32 LE  masked CRC-32C of the data

/// A record that does not check out (reading back, for tests and diagnostics).
public struct RecordError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum RecordFraming {
    /// Bytes a record adds around its data.
    public static let overhead = 8 + 4 + 4

    /// Appends one framed record holding `data` to `buffer`.
    public static func append(_ data: [UInt8], to buffer: inout [UInt8]) {
        var length = UInt64(data.count).littleEndian
        let lengthCRC = withUnsafeBytes(of: &length) { CRC32C.masked(CRC32C.checksum($0)) }
        withUnsafeBytes(of: &length) { buffer.append(contentsOf: $0) }
        appendLittleEndian(lengthCRC, to: &buffer)
        buffer.append(contentsOf: data)
        appendLittleEndian(CRC32C.masked(CRC32C.checksum(data)), to: &buffer)
    }

    static func appendLittleEndian(_ value: UInt32, to buffer: inout [UInt8]) {
        for shift in stride(from: 0, to: 32, by: 8) { buffer.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    /// The data of every record in `bytes`, checking both CRCs of each; throws at the first record
    /// that is truncated or whose checksum is wrong, naming its byte offset.
    public static func records(in bytes: [UInt8]) throws -> [[UInt8]] {
        func le(_ at: Int, _ count: Int) -> UInt64 {
            (0..<count).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << UInt64(8 * $1) }
        }
        var out: [[UInt8]] = []
        var offset = 0
        while offset < bytes.count {
            guard bytes.count - offset >= 12 else { throw RecordError("record at byte \(offset): truncated header") }
            let length = le(offset, 8)
            let lengthCRC = bytes[offset..<offset + 8].withUnsafeBytes { CRC32C.masked(CRC32C.checksum($0)) }
            guard UInt32(le(offset + 8, 4)) == lengthCRC else { throw RecordError("record at byte \(offset): length CRC mismatch") }
            guard length <= UInt64(bytes.count - offset - 12), Int(length) + 4 <= bytes.count - offset - 12 else {
                throw RecordError("record at byte \(offset): truncated data (\(length) bytes announced)")
            }
            let start = offset + 12, end = start + Int(length)
            let data = Array(bytes[start..<end])
            guard UInt32(le(end, 4)) == CRC32C.masked(CRC32C.checksum(data)) else {
                throw RecordError("record at byte \(offset): data CRC mismatch")
            }
            out.append(data)
            offset = end + 4
        }
        return out
    }
}
