// --ema: an exponential moving average of a model's weights and BatchNorm running statistics
// (as timm's ModelEmaV2 averages the whole state dict; BatchNorm batch counters are copied),
// updated after every optimizer step: average = decay x average + (1 - decay) x weights. Every rank holds the same weights after a
// step, so every rank's average is the same without communication. Validation, the best-model
// choice, the sample grids and the exported model use the average; checkpoints keep it beside
// the weights (ema.safetensors) so that a resume continues it bitwise.

import SegEngine

public final class WeightAverage {
    public let decay: Double
    /// Same layouts as the store's `values` and `buffers`.
    public let values: FloatBuffer
    public let buffers: FloatBuffer

    /// An average that starts at the store's current weights and buffers.
    /// Offsets of the BatchNorm batch counters in `buffers` (copied, not averaged).
    private let counters: [Int]

    public init(of store: ParameterStore, decay: Double) {
        precondition(decay > 0 && decay < 1, "--ema must be in (0, 1)")
        self.decay = decay
        counters = store.entries.filter(Safetensors.isBatchCounter).map(\.offset)
        values = FloatBuffer(count: store.values.count)
        buffers = FloatBuffer(count: store.buffers.count)
        values.pointer.update(from: store.values.pointer, count: values.count)
        buffers.pointer.update(from: store.buffers.pointer, count: buffers.count)
    }

    /// One step: average = decay x average + (1 - decay) x store, element by element in Float
    /// (so the same on every rank and any thread split), split over the pool's threads.
    public func update(from store: ParameterStore, pool: WorkerPool) {
        let d = Float(decay), e = 1 - Float(decay)
        Self.forEach(values, store.values, pool) { a, w in a = d * a + e * w }
        Self.forEach(buffers, store.buffers, pool) { a, w in a = d * a + e * w }
        for i in counters { buffers.pointer[i] = store.buffers.pointer[i] }
    }

    /// Exchanges the store's weights and buffers with the average (twice restores both).
    public func swap(with store: ParameterStore, pool: WorkerPool) {
        Self.forEach(values, store.values, pool) { a, w in Swift.swap(&a, &w) }
        Self.forEach(buffers, store.buffers, pool) { a, w in Swift.swap(&a, &w) }
    }

    /// `body` on every element pair of two buffers of one layout, split over the pool.
    @inline(__always)
    private static func forEach(_ average: FloatBuffer, _ current: FloatBuffer, _ pool: WorkerPool,
                                _ body: (inout Float, inout Float) -> Void) {
        let a = average.pointer, w = current.pointer
        pool.parallelFor(average.count) { range, _ in
            for i in range { body(&a[i], &w[i]) }
        }
    }

    /// Runs `body` with the average in the store, then puts the weights back (also on a throw).
    public func withAverage<T>(in store: ParameterStore, pool: WorkerPool, _ body: () throws -> T) rethrows -> T {
        swap(with: store, pool: pool)
        defer { swap(with: store, pool: pool) }
        return try body()
    }

    /// The average as safetensors items under the store's tensor names.
    public func items(for store: ParameterStore) -> [Safetensors.Item] {
        Safetensors.items(of: store, values: values, buffers: buffers)
    }
}
