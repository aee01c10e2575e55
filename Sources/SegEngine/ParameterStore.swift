// All trainable parameters live in one flat float buffer, their gradients in a second buffer with
// the same layout; non-trainable state (BatchNorm running statistics) in a third. Layers keep an
// index into the table and ask for views. The optimizer and the allreduce are then loops over
// contiguous memory.

public struct ParameterEntry: Sendable {
    public enum Kind: Sendable { case parameter, buffer }
    /// Checkpoint name, e.g. "down.0.conv1.weight".
    public let name: String
    public let shape: Shape
    public let kind: Kind
    /// Offset in `values`/`gradients` (parameters) or `buffers` (buffers), in floats.
    public let offset: Int
}

/// Collects names and shapes before any memory exists.
public struct ParameterLayout {
    public private(set) var entries: [ParameterEntry] = []
    public private(set) var parameterCount = 0
    public private(set) var bufferCount = 0

    public init() {}

    /// Registers a tensor and returns its index in the table.
    @discardableResult
    public mutating func add(_ name: String, _ shape: Shape, kind: ParameterEntry.Kind = .parameter) -> Int {
        precondition(!entries.contains { $0.name == name }, "duplicate parameter name \(name)")
        let offset: Int
        switch kind {
        case .parameter: offset = parameterCount; parameterCount += shape.count
        case .buffer: offset = bufferCount; bufferCount += shape.count
        }
        entries.append(ParameterEntry(name: name, shape: shape, kind: kind, offset: offset))
        return entries.count - 1
    }
}

public final class ParameterStore {
    public let entries: [ParameterEntry]
    /// Trainable values, one flat buffer.
    public let values: FloatBuffer
    /// Gradients, same layout as `values`.
    public let gradients: FloatBuffer
    /// Non-trainable state (running statistics), not touched by optimizers or gradient allreduce.
    public let buffers: FloatBuffer
    private let indexByName: [String: Int]

    public init(_ layout: ParameterLayout) {
        entries = layout.entries
        values = FloatBuffer(count: layout.parameterCount)
        gradients = FloatBuffer(count: layout.parameterCount)
        buffers = FloatBuffer(count: layout.bufferCount)
        var map: [String: Int] = [:]
        for (i, e) in entries.enumerated() { map[e.name] = i }
        indexByName = map
    }

    public var parameterCount: Int { values.count }

    public func index(of name: String) -> Int? { indexByName[name] }

    /// The value view of entry `i` (a parameter or a buffer).
    public func value(_ i: Int) -> Tensor {
        let e = entries[i]
        switch e.kind {
        case .parameter: return values.view(e.shape, offset: e.offset)
        case .buffer: return buffers.view(e.shape, offset: e.offset)
        }
    }

    /// The gradient view of parameter `i`.
    public func gradient(_ i: Int) -> Tensor {
        let e = entries[i]
        precondition(e.kind == .parameter, "\(e.name) is a buffer and has no gradient")
        return gradients.view(e.shape, offset: e.offset)
    }

    public func value(named name: String) -> Tensor? { index(of: name).map { value($0) } }

    /// The flat range of the parameters whose names start with `prefix` ("encoder."), when they
    /// are contiguous and there is one; else nil.
    public func parameterRange(prefix: String) -> Range<Int>? {
        let matching = entries.filter { $0.kind == .parameter && $0.name.hasPrefix(prefix) }
        guard let low = matching.map(\.offset).min(), let high = matching.map({ $0.offset + $0.shape.count }).max() else { return nil }
        let inside = entries.filter { $0.kind == .parameter && $0.offset >= low && $0.offset < high }
        return inside.count == matching.count ? low..<high : nil
    }

    public func zeroGradients() { gradients.tensor.zero() }
}
