// Per-thread scratch memory for kernels (im2col columns, partial weight gradients, transforms).
// Sized while a model plans its batch (`reserve`), never grown inside a training step: kernels
// check that what they need was reserved.

public final class Scratch {
    public let threadCount: Int
    public private(set) var floatsPerThread = 0
    /// A region all threads share (e.g. transformed weights written once per call).
    public private(set) var sharedFloats = 0
    private var storage = FloatBuffer(count: 0)
    private var sharedStorage = FloatBuffer(count: 0)

    public init(threads: Int) {
        precondition(threads >= 1)
        threadCount = threads
    }

    /// Makes sure each thread has at least `floats` floats. Allocates only when it must grow;
    /// call it while planning, not in the step.
    public func reserve(floatsPerThread floats: Int) {
        guard floats > floatsPerThread else { return }
        // Round up to a cache line so threads never share one.
        let rounded = (floats + 15) / 16 * 16
        storage = FloatBuffer(count: rounded * threadCount)
        floatsPerThread = rounded
    }

    /// Makes sure the shared region holds at least `floats` floats (planning only).
    public func reserve(sharedFloats floats: Int) {
        guard floats > sharedFloats else { return }
        sharedStorage = FloatBuffer(count: floats)
        sharedFloats = floats
    }

    /// The shared region: `sharedFloats` floats.
    @inline(__always) public var shared: UnsafeMutablePointer<Float> { sharedStorage.pointer }

    /// Thread t's scratch: `floatsPerThread` floats, contents undefined between kernels.
    @inline(__always) public func buffer(_ thread: Int) -> UnsafeMutablePointer<Float> {
        storage.pointer + thread * floatsPerThread
    }

    /// Checks that a kernel's need was reserved; a failure is a planning bug.
    @inline(__always) public func require(_ floats: Int, _ who: StaticString) {
        precondition(floats <= floatsPerThread, "\(who): scratch of \(floats) floats per thread not reserved")
    }

    @inline(__always) public func requireShared(_ floats: Int, _ who: StaticString) {
        precondition(floats <= sharedFloats, "\(who): shared scratch of \(floats) floats not reserved")
    }
}
