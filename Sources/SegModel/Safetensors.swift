// The safetensors format (the checkpoint format, readable by PyTorch's safetensors.torch.load_file):
// an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
// range, then the raw little-endian data. Tensors keep the model's names and PyTorch's layouts.

import SegEngine

public enum Safetensors {
    /// A tensor to write: its name, its shape as PyTorch sees it, and its values.
    public struct Item {
        public let name: String
        public let shape: [Int]
        public let values: Tensor
        public init(name: String, shape: [Int], values: Tensor) {
            precondition(shape.reduce(1, *) == values.count, "\(name): shape \(shape) for \(values.count) values")
            self.name = name
            self.shape = shape
            self.values = values
        }
    }

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
            let bytes = item.values.count * 4
            entries.append("\(quoted(item.name)):{\"dtype\":\"F32\",\"shape\":[\(item.shape.map(String.init).joined(separator: ","))],"
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
