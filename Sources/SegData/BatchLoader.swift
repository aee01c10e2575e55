// Loader threads that decode and augment the next batches while the engine computes.
//
// The trainer announces the batches it will ask for, in order (`schedule`: an epoch's batches and
// the first of the next epoch); each loader thread takes the next announced batch, loads all its
// samples into a free slot, and marks it ready; `next` copies the ready slot into the caller's
// tensors. Batches start in announcement order and at most `slots` are in flight, so the batch the
// trainer waits for is always being worked on. A new schedule that begins with the batches still
// pending keeps the work already done on them (so the next epoch's first batches, announced early,
// are ready when it starts). A request that was not announced is loaded on the calling thread.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SegEngine

public final class BatchLoader: @unchecked Sendable {
    /// An announced batch: the samples, and the training epoch (nil: validation, no augmentation).
    public struct Batch: Equatable, Sendable {
        public var indices: [Int]
        public var epoch: Int?
        public init(_ indices: [Int], epoch: Int?) { self.indices = indices; self.epoch = epoch }
    }

    public let dataset: FileDataset
    public let threadCount: Int
    /// Largest batch a slot holds.
    public let capacity: Int
    private let imageFloats: Int
    private let maskFloats: Int

    private struct Slot {
        var generation = -1
        var number: Int? = nil
        var busy = false
        var ready = false
        var error: Error? = nil
        let images: UnsafeMutablePointer<Float>
        let masks: UnsafeMutablePointer<Float>
    }

    private var slots: [Slot]
    private var mutex = pthread_mutex_t()
    private var changed = pthread_cond_t()
    /// Announced batches: sample indices and the epoch that seeds their augmentation.
    private var queue: [Batch] = []
    private var generation = 0
    private var nextToStart = 0
    private var nextToConsume = 0
    private var stopping = false
    private var loaderThreads: [pthread_t] = []

    // Statistics, written under the lock by the loader threads: read them with `statistics()`.
    /// Seconds `next` spent waiting for a batch that was not ready yet.
    public private(set) var waitSeconds = 0.0
    /// Seconds the loader threads spent loading (summed over threads), and samples they loaded.
    public private(set) var loadSeconds = 0.0
    public private(set) var samplesLoaded = 0
    /// Batches `next` had to load itself (not announced).
    public private(set) var unannouncedBatches = 0

    /// The statistics, read under the lock.
    public func statistics() -> (waitSeconds: Double, loadSeconds: Double, samplesLoaded: Int) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return (waitSeconds, loadSeconds, samplesLoaded)
    }

    /// `threads` loader threads (0: every batch is loaded by `next` on the caller's thread).
    public init(dataset: FileDataset, threads: Int, capacity: Int) {
        precondition(threads >= 0 && capacity >= 1)
        self.dataset = dataset
        threadCount = threads
        self.capacity = capacity
        let s = dataset.spec.imageSize
        imageFloats = dataset.spec.inChannels * s * s
        maskFloats = s * s
        let slotCount = threads == 0 ? 0 : threads + 1
        slots = (0..<slotCount).map { _ in
            Slot(images: .allocate(capacity: capacity * s * s * dataset.spec.inChannels),
                 masks: .allocate(capacity: capacity * s * s))
        }
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&changed, nil)
        for _ in 0..<threads {
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { raw in
                Unmanaged<BatchLoader>.fromOpaque(raw!).takeUnretainedValue().work()
                return nil
            }, Unmanaged.passUnretained(self).toOpaque())
            precondition(rc == 0, "pthread_create failed: \(rc)")
            loaderThreads.append(thread)
        }
    }

    deinit {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_broadcast(&changed)
        pthread_mutex_unlock(&mutex)
        for t in loaderThreads { pthread_join(t, nil) }
        for slot in slots { slot.images.deallocate(); slot.masks.deallocate() }
        pthread_mutex_destroy(&mutex)
        pthread_cond_destroy(&changed)
    }

    /// Announces the batches `next` will be asked for, in order; drops what was announced before,
    /// except the pending batches this list starts with (their loading goes on).
    public func schedule(_ batches: [Batch]) {
        precondition(batches.allSatisfy { $0.indices.count <= capacity }, "a batch larger than the loader's capacity")
        pthread_mutex_lock(&mutex)
        // Pending batches (announced, not consumed) that the new list starts with are kept.
        var kept = 0
        while nextToConsume + kept < queue.count && kept < batches.count && queue[nextToConsume + kept] == batches[kept] { kept += 1 }
        let oldGeneration = generation
        generation += 1
        for s in slots.indices {
            if slots[s].generation == oldGeneration, let number = slots[s].number,
               (nextToConsume..<(nextToConsume + kept)).contains(number) {
                slots[s].generation = generation
                slots[s].number = number - nextToConsume
            } else if !slots[s].busy {
                slots[s].number = nil
                slots[s].ready = false
            }
        }
        nextToStart = max(0, min(nextToStart - nextToConsume, kept))
        nextToConsume = 0
        queue = batches
        pthread_cond_broadcast(&changed)
        pthread_mutex_unlock(&mutex)
    }

    /// `schedule` for batches of one epoch.
    public func schedule(_ batches: [[Int]], epoch: Int?) { schedule(batches.map { Batch($0, epoch: epoch) }) }

    /// Writes samples `indices` (for a training `epoch`, or nil) into `images` (N, Cin, S, S) and
    /// `masks` (N, 1, S, S), N = indices.count: the announced batch when it is the next one.
    public func next(_ indices: [Int], epoch: Int?, images: Tensor, masks: Tensor) throws {
        precondition(images.shape.n == indices.count && masks.shape.n == indices.count)
        pthread_mutex_lock(&mutex)
        guard !slots.isEmpty, nextToConsume < queue.count, queue[nextToConsume] == Batch(indices, epoch: epoch) else {
            pthread_mutex_unlock(&mutex)
            unannouncedBatches += slots.isEmpty ? 0 : 1
            try load(indices, epoch: epoch, images: images.data, masks: masks.data)
            return
        }
        let number = nextToConsume
        let start = monotonicSeconds()
        var found: Int? = nil
        while true {
            found = slots.indices.first { slots[$0].generation == generation && slots[$0].number == number && slots[$0].ready }
            if found != nil { break }
            pthread_cond_wait(&changed, &mutex)
        }
        waitSeconds += monotonicSeconds() - start
        let s = found!
        let error = slots[s].error
        if error == nil {
            images.data.update(from: slots[s].images, count: indices.count * imageFloats)
            masks.data.update(from: slots[s].masks, count: indices.count * maskFloats)
        }
        slots[s].number = nil
        slots[s].ready = false
        slots[s].error = nil
        nextToConsume += 1
        pthread_cond_broadcast(&changed)
        pthread_mutex_unlock(&mutex)
        if let error { throw error }
    }

    private func load(_ indices: [Int], epoch: Int?, images: UnsafeMutablePointer<Float>,
                      masks: UnsafeMutablePointer<Float>) throws {
        for (n, index) in indices.enumerated() {
            try dataset.load(index, epoch: epoch, image: images + n * imageFloats, mask: masks + n * maskFloats)
        }
    }

    private func work() {
        pthread_mutex_lock(&mutex)
        while true {
            var free: Int? = nil
            while !stopping {
                free = nextToStart < queue.count ? slots.indices.first { slots[$0].number == nil && !slots[$0].busy } : nil
                if free != nil { break }
                pthread_cond_wait(&changed, &mutex)
            }
            if stopping { break }
            let s = free!, number = nextToStart, batchGeneration = generation
            let indices = queue[number].indices, epoch = queue[number].epoch
            nextToStart += 1
            slots[s].generation = batchGeneration
            slots[s].number = number
            slots[s].busy = true
            slots[s].ready = false
            let images = slots[s].images, masks = slots[s].masks
            pthread_mutex_unlock(&mutex)

            let start = monotonicSeconds()
            var failure: Error? = nil
            do { try load(indices, epoch: epoch, images: images, masks: masks) } catch { failure = error }
            let seconds = monotonicSeconds() - start

            pthread_mutex_lock(&mutex)
            loadSeconds += seconds
            samplesLoaded += indices.count
            slots[s].busy = false
            if slots[s].generation == generation {
                slots[s].ready = true
                slots[s].error = failure
            } else {
                slots[s].number = nil  // announced before a new schedule: dropped
            }
            pthread_cond_broadcast(&changed)
        }
        pthread_mutex_unlock(&mutex)
    }
}
