// Tensors: float32, NCHW. A `Tensor` is a non-owning view (pointer + shape) into memory owned
// by a `FloatBuffer` (parameters, gradients, activations, workspaces). Views are cheap values:
// layers hold them, kernels take them, nothing is reference counted in the hot path.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A 4-D shape (batch, channels, height, width). Vectors use (1, c, 1, 1) or (n, 1, 1, 1).
public struct Shape: Equatable, Hashable, CustomStringConvertible, Sendable {
    public var n: Int, c: Int, h: Int, w: Int

    public init(_ n: Int, _ c: Int, _ h: Int, _ w: Int) {
        precondition(n >= 0 && c >= 0 && h >= 0 && w >= 0, "negative dimension in shape")
        self.n = n; self.c = c; self.h = h; self.w = w
    }

    /// A flat vector of `count` elements, stored as (count, 1, 1, 1).
    public static func vector(_ count: Int) -> Shape { Shape(count, 1, 1, 1) }

    public var count: Int { n * c * h * w }
    /// Elements in one (h, w) plane.
    public var plane: Int { h * w }
    public var description: String { "(\(n), \(c), \(h), \(w))" }
}

/// Memory for `count` floats, 64-byte aligned, zero-filled. Owns its allocation.
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        precondition(count >= 0)
        self.count = count
        var raw: UnsafeMutableRawPointer? = nil
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        let status = posix_memalign(&raw, 64, bytes)
        if status != 0 || raw == nil { FloatBuffer.outOfMemory(bytes) }
        pointer = raw!.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { free(pointer) }

    /// Memory that cannot be had is no bug but a request too large for the machine (flags such as
    /// --image-size, --batch-size, --base-channels): one line and exit 1, not a trap and a backtrace.
    /// Under mpirun the other ranks are ended by mpirun when this one exits.
    static func outOfMemory(_ bytes: Int) -> Never {
        fputs("segtrain: error: out of memory: cannot allocate \(bytes) bytes; use a smaller --batch-size, --image-size or --base-channels\n", stderr)
        exit(1)
    }

    /// A view of `shape.count` elements starting at `offset`.
    public func view(_ shape: Shape, offset: Int = 0) -> Tensor {
        precondition(offset >= 0 && offset + shape.count <= count,
                     "view \(shape) at \(offset) exceeds buffer of \(count)")
        return Tensor(pointer + offset, shape)
    }

    public var tensor: Tensor { Tensor(pointer, .vector(count)) }
}

/// A non-owning view of float32 NCHW data.
public struct Tensor {
    public let data: UnsafeMutablePointer<Float>
    public let shape: Shape

    public init(_ data: UnsafeMutablePointer<Float>, _ shape: Shape) {
        self.data = data
        self.shape = shape
    }

    @inline(__always) public var n: Int { shape.n }
    @inline(__always) public var c: Int { shape.c }
    @inline(__always) public var h: Int { shape.h }
    @inline(__always) public var w: Int { shape.w }
    @inline(__always) public var count: Int { shape.count }

    @inline(__always) public subscript(i: Int) -> Float {
        get { data[i] }
        nonmutating set { data[i] = newValue }
    }

    /// Element (n, c, y, x).
    @inline(__always) public subscript(n: Int, c: Int, y: Int, x: Int) -> Float {
        get { data[((n * shape.c + c) * shape.h + y) * shape.w + x] }
        nonmutating set { data[((n * shape.c + c) * shape.h + y) * shape.w + x] = newValue }
    }

    /// Pointer to plane (n, c).
    @inline(__always) public func plane(_ n: Int, _ c: Int) -> UnsafeMutablePointer<Float> {
        data + (n * shape.c + c) * shape.plane
    }

    /// Pointer to the start of sample n.
    @inline(__always) public func sample(_ n: Int) -> UnsafeMutablePointer<Float> {
        data + n * shape.c * shape.plane
    }

    /// The same memory seen with another shape of equal count.
    public func reshaped(_ newShape: Shape) -> Tensor {
        precondition(newShape.count == shape.count, "reshape \(shape) -> \(newShape) changes count")
        return Tensor(data, newShape)
    }

    /// Samples [start, start + count) of the batch.
    public func batchSlice(_ start: Int, _ count: Int) -> Tensor {
        precondition(start >= 0 && start + count <= shape.n)
        return Tensor(sample(start), Shape(count, shape.c, shape.h, shape.w))
    }

    public func fill(_ value: Float) { data.update(repeating: value, count: count) }
    public func zero() { fill(0) }

    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy \(other.shape) -> \(shape)")
        data.update(from: other.data, count: count)
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public func toArray() -> [Float] { Array(buffer) }
}

/// A tensor that owns its memory: for tests, tools and one-off work, never the training step.
public final class OwnedTensor {
    public let storage: FloatBuffer
    public let tensor: Tensor

    public init(_ shape: Shape) {
        storage = FloatBuffer(count: shape.count)
        tensor = storage.view(shape)
    }

    public convenience init(_ shape: Shape, _ values: [Float]) {
        precondition(values.count == shape.count, "\(values.count) values for shape \(shape)")
        self.init(shape)
        for (i, v) in values.enumerated() { tensor[i] = v }
    }

    public var shape: Shape { tensor.shape }
}
