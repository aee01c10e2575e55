// The Lovász losses (Berman, Rannen Triki & Blaschko, "The Lovász-Softmax loss: A tractable
// surrogate for the optimization of the intersection-over-union measure in neural networks",
// CVPR 2018): the Lovász extension of the Jaccard loss applied to a vector of pixel errors.
//
// For errors e over an image's counted pixels, sorted in decreasing order (e_(1) >= e_(2) >= ...)
// with g_(k) the foreground indicator of the k-th, J_k = 1 - (G - sum_{j<=k} g_(j)) /
// (G + sum_{j<=k} (1 - g_(j))) (G: the foreground count) and loss = sum_k e_(k) (J_k - J_{k-1})
// (J_0 = 0). The loss is piecewise linear in e; its gradient in e_(k) is J_k - J_{k-1}.
// - Binary (the Lovász hinge, paper section 3.1): e_i = max(0, 1 - x_i s_i), s_i = +1 foreground
//   (target >= 0.5), -1 background, on the logits x.
// - Multi-class (Lovász-softmax, section 3.2): per class c present in the image's labels,
//   e_i = |[t_i == c] - p_c(i)| on the softmax p; the image's loss is the mean over those classes
//   (the reference code's classes='present'); an image with no counted pixel adds 0.
// Per image (the reference code's per_image=True), averaged over images: smp's LovaszLoss defaults
// to per_image=False, one Lovász extension over the whole batch, which the ranks of a distributed
// batch cannot compute from their own images; per image they can.
//
// Work items are (image, class); each sorts its image's errors in its thread's buffer, by error
// then pixel index (a total order), so the result depends on neither the thread count nor the
// other images. The softmax probabilities are kept in a (N, C, H, W) Double buffer, overwritten by
// each class's dLoss/dp, which a last pass takes through the softmax.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension LossFunction {
    func reserveLovasz(batch: Int, plane: Int, threads: Int) {
        let sizes = Self.lovaszWorkspace(classes: classes, batch: batch, plane: plane, threads: threads)
        workspace.lovaszValues.reserve(sizes.values)
        if sizes.planes > 0 { workspace.planes.reserve(sizes.planes) }
        workspace.errors.reserve(sizes.errors)
        workspace.order.reserve(sizes.order)
    }

    /// The Lovász workspace's element counts for batches of up to `batch` images of `plane` pixels:
    /// per-image values, the softmax planes (multi-class), and each thread's errors and sort order.
    static func lovaszWorkspace(classes: Int, batch: Int, plane: Int, threads: Int)
        -> (values: Int, planes: Int, errors: Int, order: Int) {
        (batch * classes * 2, classes > 1 ? batch * classes * plane : 0, max(threads, 1) * plane, max(threads, 1) * plane)
    }

    /// Bytes of the workspace that grows with the image (Lovász's; the other losses keep a few
    /// partial sums per chunk), for the memory estimate of a run (SegTraining's RunMemoryPlan).
    public static func workspaceBytes(_ config: LossConfig, classes: Int, batch: Int, plane: Int, threads: Int) -> Double {
        guard config.weight(of: .lovasz) != nil else { return 0 }
        let sizes = lovaszWorkspace(classes: classes, batch: batch, plane: plane, threads: threads)
        return Double(sizes.values + sizes.planes + sizes.errors) * Double(MemoryLayout<Double>.size)
            + Double(sizes.order) * Double(MemoryLayout<Int32>.size)
    }

    /// Sum over the images of their Lovász loss, times `scale`; adds `scale` x its gradient into
    /// `dlogits` when given.
    func lovasz(logits: Tensor, target: Tensor, dlogits: Tensor?, scale: Double, pool: WorkerPool) -> Double {
        let n = logits.n, plane = logits.shape.plane, classes = self.classes
        reserveLovasz(batch: n, plane: plane, threads: pool.threadCount)
        let values = workspace.lovaszValues.pointer
        let errors = workspace.errors.pointer, order = workspace.order.pointer
        if classes == 1 {
            pool.parallelFor(n) { range, thread in
                for image in range {
                    values[image] = lovaszHinge(image, logits, target, dlogits, scale,
                                                errors + thread * plane, order + thread * plane)
                }
            }
            var total = 0.0
            for image in 0..<n { total += values[image] }
            return total * scale
        }

        let planes = workspace.planes.pointer
        let chunks = (plane + LossFunction.chunkPixels - 1) / LossFunction.chunkPixels
        // The softmax probabilities, (N, C, H, W).
        pool.parallelFor(n * chunks) { range, _ in
            for item in range {
                let image = item / chunks, start = (item % chunks) * LossFunction.chunkPixels
                let x = logits.sample(image), p = planes + image * classes * plane
                for i in start..<min(start + LossFunction.chunkPixels, plane) {
                    let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
                    for c in 0..<classes { p[c * plane + i] = exp(Double(x[c * plane + i]) - m) / expSum }
                }
            }
        }
        // Each (image, class): its loss and whether the class is present (values[2 item ...]).
        pool.parallelFor(n * classes) { range, thread in
            for item in range {
                let (value, present) = lovaszSoftmaxClass(item / classes, item % classes, target, planes + item * plane,
                                                          keepGradient: dlogits != nil,
                                                          errors + thread * plane, order + thread * plane)
                values[2 * item] = value
                values[2 * item + 1] = present ? 1 : 0
            }
        }
        var total = 0.0
        for image in 0..<n {
            var sum = 0.0, present = 0.0
            for c in 0..<classes { sum += values[2 * (image * classes + c)]; present += values[2 * (image * classes + c) + 1] }
            if present > 0 { total += sum / present }
            values[2 * image * classes] = present    // reused below: the image's class count
        }
        if let dlogits {
            pool.parallelFor(n * chunks) { range, _ in
                for item in range {
                    let image = item / chunks, start = (item % chunks) * LossFunction.chunkPixels
                    let present = values[2 * image * classes]
                    guard present > 0 else { continue }
                    lovaszSoftmaxBackward(image, start, min(start + LossFunction.chunkPixels, plane), logits, target, dlogits,
                                          planes + image * classes * plane, scale / present)
                }
            }
        }
        return total * scale
    }

    /// One image's Lovász hinge; adds scale x its gradient into dlogits.
    private func lovaszHinge(_ image: Int, _ logits: Tensor, _ target: Tensor, _ dlogits: Tensor?, _ scale: Double,
                             _ errors: UnsafeMutablePointer<Double>, _ order: UnsafeMutablePointer<Int32>) -> Double {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let x = logits.plane(image, 0), t = target.plane(image, 0), dx = dlogits.map { $0.plane(image, 0) }
        var count = 0, foreground = 0
        for i in 0..<logits.shape.plane {
            if hasIgnore && t[i] == ignore { continue }
            let isForeground = t[i] >= 0.5
            errors[i] = 1 - Double(x[i]) * (isForeground ? 1 : -1)
            order[count] = Int32(i)
            count += 1
            if isForeground { foreground += 1 }
        }
        sortByDecreasingError(order, count, errors)
        var value = 0.0
        walkJaccardSlopes(order, count, foreground: foreground, isForeground: { t[$0] >= 0.5 }) { i, slope, isForeground in
            let e = errors[i]
            guard e > 0 else { return }
            value += e * slope
            // de/dx = -s.
            if let dx { dx[i] += Float(scale * (isForeground ? -slope : slope)) }
        }
        return value
    }

    /// Class c of one image under Lovász-softmax: its loss and whether c is present. Reads the
    /// class's probabilities from `plane` and, with `keepGradient`, overwrites them with dLoss/dp
    /// (0 at ignored pixels and everywhere when the class is absent).
    private func lovaszSoftmaxClass(_ image: Int, _ c: Int, _ target: Tensor, _ plane: UnsafeMutablePointer<Double>,
                                    keepGradient: Bool, _ errors: UnsafeMutablePointer<Double>,
                                    _ order: UnsafeMutablePointer<Int32>) -> (value: Double, present: Bool) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let t = target.plane(image, 0), pixels = target.shape.plane, classes = self.classes
        var count = 0, foreground = 0
        for i in 0..<pixels {
            if hasIgnore && t[i] == ignore { continue }
            let isForeground = classIndex(t[i], classes) == c
            errors[i] = abs((isForeground ? 1 : 0) - plane[i])
            order[count] = Int32(i)
            count += 1
            if isForeground { foreground += 1 }
        }
        if keepGradient { plane.update(repeating: 0, count: pixels) }
        guard foreground > 0 else { return (0, false) }
        sortByDecreasingError(order, count, errors)
        var value = 0.0
        walkJaccardSlopes(order, count, foreground: foreground, isForeground: { Int(t[$0]) == c }) { i, slope, isForeground in
            value += errors[i] * slope
            // d|[fg] - p|/dp = -1 on the class's pixels, +1 elsewhere.
            if keepGradient { plane[i] = isForeground ? -slope : slope }
        }
        return (value, true)
    }

    /// dlogits += scale x softmax backward of the gradients in `gradients` (the image's (C, H, W)).
    private func lovaszSoftmaxBackward(_ image: Int, _ start: Int, _ end: Int, _ logits: Tensor, _ target: Tensor,
                                       _ dlogits: Tensor, _ gradients: UnsafeMutablePointer<Double>, _ scale: Double) {
        let hasIgnore = config.ignoreIndex != nil, ignore = ignoreValue ?? 0
        let plane = logits.shape.plane, classes = self.classes
        let t = target.plane(image, 0), x = logits.sample(image), dx = dlogits.sample(image)
        for i in start..<end {
            if hasIgnore && t[i] == ignore { continue }
            let (m, expSum) = softmaxNormalizer(x, pixel: i, plane: plane, classes: classes)
            var dot = 0.0
            for c in 0..<classes { dot += exp(Double(x[c * plane + i]) - m) / expSum * gradients[c * plane + i] }
            for c in 0..<classes {
                let p = exp(Double(x[c * plane + i]) - m) / expSum
                dx[c * plane + i] += Float(scale * p * (gradients[c * plane + i] - dot))
            }
        }
    }
}

/// Walks the sorted pixels, calling body(pixel, J_k - J_{k-1}, foreground) for each: the slope of
/// the Lovász extension of the Jaccard loss at sorted position k.
@inline(__always)
private func walkJaccardSlopes(_ order: UnsafeMutablePointer<Int32>, _ count: Int, foreground: Int,
                               isForeground: (Int) -> Bool, _ body: (Int, Double, Bool) -> Void) {
    var foregroundSoFar = 0, backgroundSoFar = 0, previous = 0.0
    for k in 0..<count {
        let i = Int(order[k]), fg = isForeground(i)
        if fg { foregroundSoFar += 1 } else { backgroundSoFar += 1 }
        // The union is >= 1: either foreground > 0 or this pixel is background.
        let jaccard = 1 - Double(foreground - foregroundSoFar) / Double(foreground + backgroundSoFar)
        body(i, jaccard - previous, fg)
        previous = jaccard
    }
}

/// Sorts order[0..<count] (pixel indices) by decreasing errors[pixel], ties by increasing index:
/// a total order, so every sort gives the same result. Heapsort: in place, no allocation.
func sortByDecreasingError(_ order: UnsafeMutablePointer<Int32>, _ count: Int, _ errors: UnsafeMutablePointer<Double>) {
    // "a before b": the heap keeps the element that comes last at its root.
    @inline(__always) func before(_ a: Int32, _ b: Int32) -> Bool {
        let ea = errors[Int(a)], eb = errors[Int(b)]
        return ea > eb || (ea == eb && a < b)
    }
    @inline(__always) func siftDown(_ start: Int, _ end: Int) {
        var root = start
        while true {
            var child = 2 * root + 1
            if child >= end { return }
            if child + 1 < end && before(order[child], order[child + 1]) { child += 1 }
            guard before(order[root], order[child]) else { return }
            order.swapAt(root, child)
            root = child
        }
    }
    if count < 2 { return }
    for start in stride(from: count / 2 - 1, through: 0, by: -1) { siftDown(start, count) }
    for end in stride(from: count - 1, to: 0, by: -1) {
        order.swapAt(0, end)
        siftDown(0, end)
    }
}

private extension UnsafeMutablePointer where Pointee == Int32 {
    @inline(__always) func swapAt(_ a: Int, _ b: Int) {
        let t = self[a]; self[a] = self[b]; self[b] = t
    }
}
