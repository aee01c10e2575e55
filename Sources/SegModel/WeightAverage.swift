// --ema: an exponential moving average of a model's weights and BatchNorm running statistics
// (as timm's ModelEmaV2 averages the whole state dict), updated after every optimizer step:
// average = decay x average + (1 - decay) x weights. Every rank holds the same weights after a
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
    public init(of store: ParameterStore, decay: Double) {
        precondition(decay > 0 && decay < 1, "--ema must be in (0, 1)")
        self.decay = decay
        values = FloatBuffer(count: store.values.count)
        buffers = FloatBuffer(count: store.buffers.count)
        values.pointer.update(from: store.values.pointer, count: values.count)
        buffers.pointer.update(from: store.buffers.pointer, count: buffers.count)
    }

    /// One step: average = decay x average + (1 - decay) x store (in Float, element by element,
    /// so the same on every rank and thread count).
    public func update(from store: ParameterStore) {
        let d = Float(decay), e = 1 - Float(decay)
        for (average, current) in [(values, store.values), (buffers, store.buffers)] {
            for i in 0..<average.count { average.pointer[i] = d * average.pointer[i] + e * current.pointer[i] }
        }
    }

    /// Exchanges the store's weights and buffers with the average (twice restores both).
    public func swap(with store: ParameterStore) {
        for (average, current) in [(values, store.values), (buffers, store.buffers)] {
            for i in 0..<average.count { Swift.swap(&average.pointer[i], &current.pointer[i]) }
        }
    }

    /// Runs `body` with the average in the store, then puts the weights back (also on a throw).
    public func withAverage<T>(in store: ParameterStore, _ body: () throws -> T) rethrows -> T {
        swap(with: store)
        defer { swap(with: store) }
        return try body()
    }

    /// The average as safetensors items under the store's tensor names.
    public func items(for store: ParameterStore) -> [Safetensors.Item] {
        store.entries.map { e in
            Safetensors.Item(name: e.name, shape: Safetensors.torchShape(e.shape),
                             values: (e.kind == .parameter ? values : buffers).view(e.shape, offset: e.offset))
        }
    }
}
