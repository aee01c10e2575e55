// The safetensors format (the checkpoint format, readable by PyTorch's safetensors.torch.load_file):
// an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
// range, then the raw little-endian data. Tensors keep the model's names and PyTorch's layouts.
// Values are F32, except BatchNorm's batch counters ("*.num_batches_tracked"), which PyTorch keeps
// as int64 scalars: the store holds each as one float (exact up to 2^24) and the file as I64 with
// shape [], so a state dict loads with strict=True on either side.

import SegEngine
import Foundation

public enum Safetensors {
    /// A tensor to write: its name, its shape as PyTorch sees it, and its values.
    public struct Item {
        public let name: String
        public let shape: [Int]
        public let values: Tensor
        /// Written as int64 (a batch counter) instead of float32.
        public let isInteger: Bool
        public init(name: String, shape: [Int], values: Tensor, isInteger: Bool = false) {
            precondition(shape.reduce(1, *) == values.count, "\(name): shape \(shape) for \(values.count) values")
            self.name = name
            self.shape = shape
            self.values = values
            self.isInteger = isInteger
        }
    }

    /// The name ending of PyTorch's BatchNorm batch counters (int64 scalars).
    public static let batchCounterSuffix = "num_batches_tracked"

    /// PyTorch's shape of a store entry: vectors (C, 1, 1, 1) are 1-D.
    public static func torchShape(_ shape: Shape) -> [Int] {
        shape.c == 1 && shape.h == 1 && shape.w == 1 ? [shape.n] : [shape.n, shape.c, shape.h, shape.w]
    }

    /// The parameters' values (and buffers, e.g. BN running statistics), or with `gradients` the
    /// parameters' gradients, under the model's tensor names.
    public static func items(of store: ParameterStore, gradients: Bool) -> [Item] {
        store.entries.indices.compactMap { i in
            let e = store.entries[i]
            if gradients && e.kind == .buffer { return nil }
            if e.kind == .buffer && e.name.hasSuffix(".\(batchCounterSuffix)") && e.shape.count == 1 {
                return Item(name: e.name, shape: [], values: store.value(i), isInteger: true)
            }
            return Item(name: e.name, shape: torchShape(e.shape), values: gradients ? store.gradient(i) : store.value(i))
        }
    }

    /// The file's bytes. `metadata` becomes the header's `__metadata__` (string values).
    public static func encode(_ items: [Item], metadata: [String: String] = [:]) -> [UInt8] {
        var entries: [String] = []
        if !metadata.isEmpty {
            let fields = metadata.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\(quoted($0.value))" }
            entries.append("\"__metadata__\":{\(fields.joined(separator: ","))}")
        }
        var offset = 0
        for item in items {
            let bytes = item.values.count * (item.isInteger ? 8 : 4)
            entries.append("\(quoted(item.name)):{\"dtype\":\"\(item.isInteger ? "I64" : "F32")\",\"shape\":[\(item.shape.map(String.init).joined(separator: ","))],"
                           + "\"data_offsets\":[\(offset),\(offset + bytes)]}")
            offset += bytes
        }
        var header = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        while header.count % 8 != 0 { header.append(0x20) }  // data 8-byte aligned, as the reference writer does
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + offset)
        var length = UInt64(header.count).littleEndian
        withUnsafeBytes(of: &length) { out.append(contentsOf: $0) }
        out.append(contentsOf: header)
        for item in items {
            for i in 0..<item.values.count {
                if item.isInteger {
                    var count = Int64(item.values[i]).littleEndian
                    withUnsafeBytes(of: &count) { out.append(contentsOf: $0) }
                    continue
                }
                var bits = item.values[i].bitPattern.littleEndian
                withUnsafeBytes(of: &bits) { out.append(contentsOf: $0) }
            }
        }
        return out
    }

    /// JSON string literal (names are ASCII identifiers with dots; escaped anyway).
    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// A safetensors file read and checked: the header is bounds-checked before any tensor data is
/// touched (length within the file, JSON object, F32 dtype, non-negative shape, offsets inside the
/// data and matching the shape, no overlaps).
public struct SafetensorsFile {
    public struct Entry {
        public let shape: [Int]
        let range: Range<Int>
        /// I64 (read as floats, exact up to 2^24) rather than F32.
        public let isInteger: Bool
    }
    public let path: String
    public let metadata: [String: String]
    public let entries: [String: Entry]
    private let bytes: [UInt8]
    private let dataStart: Int

    /// The largest header accepted (the reference implementation's limit is 100 MB).
    public static let maximumHeaderBytes = 100_000_000

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SafetensorsError(path, FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file")
        }
        try self.init(bytes: [UInt8](data), name: path)
    }

    public init(bytes: [UInt8], name: String) throws {
        path = name
        self.bytes = bytes
        guard bytes.count >= 8 else { throw SafetensorsError(name, "truncated: \(bytes.count) bytes, no header length") }
        var length: UInt64 = 0
        for i in 0..<8 { length |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard length <= UInt64(SafetensorsFile.maximumHeaderBytes) else {
            throw SafetensorsError(name, "header length \(length) exceeds \(SafetensorsFile.maximumHeaderBytes) bytes")
        }
        guard Int(length) <= bytes.count - 8 else {
            throw SafetensorsError(name, "truncated: header of \(length) bytes but only \(bytes.count - 8) follow")
        }
        dataStart = 8 + Int(length)
        let dataCount = bytes.count - dataStart
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(bytes[8..<dataStart]))
        } catch {
            throw SafetensorsError(name, "header is not valid JSON")
        }
        guard let header = json as? [String: Any] else { throw SafetensorsError(name, "header is not a JSON object") }
        var metadata: [String: String] = [:]
        var entries: [String: Entry] = [:]
        for (key, value) in header {
            if key == "__metadata__" {
                guard let m = value as? [String: String] else { throw SafetensorsError(name, "__metadata__ is not a map of strings") }
                metadata = m
                continue
            }
            guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2 else {
                throw SafetensorsError(name, "tensor \(key): malformed entry")
            }
            guard dtype == "F32" || dtype == "I64" else {
                throw SafetensorsError(name, "tensor \(key): dtype \(dtype), expected F32 (or I64 for a batch counter)")
            }
            guard shape.allSatisfy({ $0 >= 0 }), shape.count <= 8 else { throw SafetensorsError(name, "tensor \(key): bad shape \(shape)") }
            let (elements, overflow) = shape.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d); return (p, acc.1 || o)
            }
            guard !overflow, offsets[0] >= 0, offsets[0] <= offsets[1], offsets[1] <= dataCount else {
                throw SafetensorsError(name, "tensor \(key): data offsets \(offsets) outside the \(dataCount) data bytes")
            }
            let elementBytes = dtype == "I64" ? 8 : 4
            guard offsets[1] - offsets[0] == elementBytes * elements else {
                throw SafetensorsError(name, "tensor \(key): \(offsets[1] - offsets[0]) bytes for shape \(shape) of \(dtype)")
            }
            entries[key] = Entry(shape: shape, range: offsets[0]..<offsets[1], isInteger: dtype == "I64")
        }
        let ranges = entries.values.map(\.range).filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        for (a, b) in zip(ranges, ranges.dropFirst()) where a.overlaps(b) {
            throw SafetensorsError(name, "tensors overlap at bytes \(b.lowerBound)")
        }
        self.metadata = metadata
        self.entries = entries
    }

    /// Copies tensor `name` into `destination`, whose PyTorch shape must be `shape`.
    public func read(_ name: String, into destination: Tensor, shape: [Int]) throws {
        guard let entry = entries[name] else { throw SafetensorsError(path, "tensor \(name) is missing") }
        guard entry.shape == shape else { throw SafetensorsError(path, "tensor \(name) has shape \(entry.shape), expected \(shape)") }
        let base = dataStart + entry.range.lowerBound
        if entry.isInteger {
            precondition(destination.count * 8 == entry.range.count)
            for i in 0..<destination.count {
                var value: UInt64 = 0
                for b in 0..<8 { value |= UInt64(bytes[base + 8 * i + b]) << (8 * UInt64(b)) }
                // A count beyond 2^24 rounds; PyTorch uses it only when BatchNorm's momentum is None.
                destination[i] = Float(Int64(bitPattern: value))
            }
            return
        }
        precondition(destination.count * 4 == entry.range.count)
        for i in 0..<destination.count {
            let o = base + 4 * i
            let bits = UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
            destination[i] = Float(bitPattern: bits)
        }
    }

    /// Reads every item (by name and shape) and refuses tensors the file has beyond them.
    public func read(into items: [Safetensors.Item]) throws {
        let expected = Set(items.map(\.name))
        if let extra = entries.keys.sorted().first(where: { !expected.contains($0) }) {
            throw SafetensorsError(path, "unexpected tensor \(extra) (a different model?)")
        }
        for item in items { try read(item.name, into: item.values, shape: item.shape) }
    }
}

public struct SafetensorsError: Error, CustomStringConvertible {
    public let description: String
    init(_ path: String, _ reason: String) { description = "\(path): \(reason)" }
}
