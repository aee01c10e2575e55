// Tests of DeepLabV3+'s ops (smp 0.6): bilinear resize to any size in both align_corners conventions
// (BilinearResize.swift), global average pooling (GlobalPool.swift), counter-based dropout
// (Dropout.swift) and n-ary channel concatenation as slices (ShapeOps.swift). Each: PyTorch's values
// on small inputs (literals from torch 2.13 CPU, so the tests need no torch), fast against the naive
// twin, finite differences on both, backward accumulation, and bitwise equality for 1, 2 and 3 threads.

import XCTest
@testable import SegEngine
import SegEngineTestSupport

final class DeepLabOpsTests: XCTestCase {
    private typealias S = OpsTestSupport

    // MARK: - Bilinear resize

    private func resized(_ s: Shape, _ h: Int, _ w: Int) -> Shape { Shape(s.n, s.c, h, w) }

    /// Forward and backward (from zero) of the fast kernel on 1 thread.
    private func resize(_ x: OwnedTensor, to h: Int, _ w: Int, alignCorners: Bool,
                        dy: [Float]? = nil) -> (y: OwnedTensor, dx: OwnedTensor) {
        let pool = WorkerPool(threads: 1)
        let y = OwnedTensor(resized(x.shape, h, w)), dx = OwnedTensor(x.shape)
        y.tensor.fill(.nan)
        resizeBilinearForward(y.tensor, x.tensor, alignCorners: alignCorners, pool: pool)
        if let dy {
            let gradient = OwnedTensor(y.shape, dy)  // kept alive while its view is in use
            resizeBilinearBackward(dx: dx.tensor, dy: gradient.tensor, alignCorners: alignCorners, pool: pool)
            withExtendedLifetime(gradient) {}
        }
        return (y, dx)
    }

    func testResizeAlignCornersTrueMatchesPyTorch() {
        // torch.nn.functional.interpolate(x, size=(4, 4), mode='bilinear', align_corners=True):
        // src = dst * (2 - 1) / (4 - 1), steps of 1/3.
        let x = OwnedTensor(Shape(1, 1, 2, 2), [1, 2, 3, 4])
        let (y, dx) = resize(x, to: 4, 4, alignCorners: true, dy: (0..<16).map(Float.init))
        S.assertClose(y.tensor, [1.0, 1.3333332538604736, 1.6666667461395264, 2.0,
                                 1.6666666269302368, 2.0, 2.3333334922790527, 2.6666665077209473,
                                 2.3333334922790527, 2.6666665077209473, 3.0, 3.3333334922790527,
                                 3.0, 3.3333332538604736, 3.6666667461395264, 4.0], tolerance: 1e-6, "2x2 -> 4x4")
        // x.grad for dy = arange(16).view(1, 1, 4, 4).
        S.assertClose(dx.tensor, [13.333332061767578, 19.999998092651367, 40.000003814697266, 46.66666793823242],
                      tolerance: 1e-5, "2x2 -> 4x4 gradient")

        // x4: 3x3 -> 12x12 (arange(1, 10)), src = dst * 2 / 11; rows 0 and 5 and column 0 from torch.
        let x3 = OwnedTensor(Shape(1, 1, 3, 3), (1...9).map(Float.init))
        let (y3, _) = resize(x3, to: 12, 12, alignCorners: true)
        let row0: [Float] = [1.0, 1.1818182468414307, 1.3636363744735718, 1.545454502105713, 1.7272727489471436,
                             1.9090909957885742, 2.090909004211426, 2.2727272510528564, 2.454545497894287,
                             2.6363637447357178, 2.8181817531585693, 3.0]
        let row5: [Float] = [3.7272727489471436, 3.909090995788574, 4.090909481048584, 4.2727274894714355,
                             4.454545497894287, 4.636363983154297, 4.818182468414307, 5.0, 5.18181848526001,
                             5.363636493682861, 5.545454502105713, 5.727272987365723]
        let col0: [Float] = [1.0, 1.545454502105713, 2.090909004211426, 2.6363637447357178, 3.1818182468414307,
                             3.7272727489471436, 4.2727274894714355, 4.818181991577148, 5.363636493682861,
                             5.909090995788574, 6.454545497894287, 7.0]
        let t = y3.tensor
        S.assertClose(Tensor(t.data, Shape(1, 1, 1, 12)), row0, tolerance: 2e-6, "3x3 -> 12x12 row 0")
        S.assertClose(Tensor(t.data + 5 * 12, Shape(1, 1, 1, 12)), row5, tolerance: 2e-6, "3x3 -> 12x12 row 5")
        XCTAssertEqual(t.data[11 * 12 + 11], 9, "corners are aligned: the last output is the last input")
        for i in 0..<12 { XCTAssertEqual(t[0, 0, i, 0], col0[i], accuracy: 2e-6, "3x3 -> 12x12 column 0 row \(i)") }
    }

    func testResizeAlignCornersFalseMatchesPyTorch() {
        // interpolate(size=(4, 4), align_corners=False): weights 0.25 / 0.75, edges clamped.
        let x = OwnedTensor(Shape(1, 1, 2, 2), [1, 2, 3, 4])
        let (y, dx) = resize(x, to: 4, 4, alignCorners: false, dy: (0..<16).map(Float.init))
        S.assertClose(y.tensor, [1, 1.25, 1.75, 2,
                                 1.5, 1.75, 2.25, 2.5,
                                 2.5, 2.75, 3.25, 3.5,
                                 3, 3.25, 3.75, 4], tolerance: 0, "2x2 -> 4x4")
        S.assertClose(dx.tensor, [12.5, 19.5, 40.5, 47.5], tolerance: 0, "2x2 -> 4x4 gradient")

        // 3x3 -> 12x12 (scale 1/4): rows 0 and 5 from torch.
        let x3 = OwnedTensor(Shape(1, 1, 3, 3), (1...9).map(Float.init))
        let (y3, _) = resize(x3, to: 12, 12, alignCorners: false)
        S.assertClose(Tensor(y3.tensor.data, Shape(1, 1, 1, 12)),
                      [1.0, 1.0, 1.125, 1.375, 1.625, 1.875, 2.125, 2.375, 2.625, 2.875, 3.0, 3.0],
                      tolerance: 0, "3x3 -> 12x12 row 0")
        S.assertClose(Tensor(y3.tensor.data + 5 * 12, Shape(1, 1, 1, 12)),
                      [3.625, 3.625, 3.75, 4.0, 4.25, 4.5, 4.75, 5.0, 5.25, 5.5, 5.625, 5.625],
                      tolerance: 0, "3x3 -> 12x12 row 5")

        // A non-integer ratio: 2x3 -> 5x7.
        let x23 = OwnedTensor(Shape(1, 1, 2, 3), [0.5, -1.25, 2, 3, 0, -4])
        let (y23, _) = resize(x23, to: 5, 7, alignCorners: false)
        S.assertClose(y23.tensor, [
            0.5, 0.25, -0.5, -1.25, 0.14285725355148315, 1.5357145071029663, 2.0,
            0.75, 0.4821428656578064, -0.3214286267757416, -1.125, -0.04285712540149689, 1.0392857789993286,
            1.3999998569488525,
            1.75, 1.4107142686843872, 0.3928571045398712, -0.625, -0.7857142686843872, -0.9464285969734192, -1.0,
            2.75, 2.3392858505249023, 1.1071429252624512, -0.12499995529651642, -1.528571605682373,
            -2.932143211364746, -3.4000003337860107,
            3.0, 2.5714287757873535, 1.2857141494750977, 0.0, -1.7142858505249023, -3.4285717010498047, -4.0,
        ], tolerance: 2e-6, "2x3 -> 5x7")
    }

    func testResizeDownsizeMatchesPyTorch() {
        // 9x7 -> 4x3, x = ((7i + j)^2 mod 11) - 5: rows and columns skip inputs; torch's values.
        let x = OwnedTensor(Shape(1, 1, 9, 7), (0..<63).map { Float(($0 * $0) % 11 - 5) })
        let (yTrue, _) = resize(x, to: 4, 3, alignCorners: true)
        S.assertClose(yTrue.tensor, [-5.0, 4.0, -2.0, -1.333333969116211, -1.3333332538604736, -1.6666667461395264,
                                     -1.0, -2.6666669845581055, 2.666666030883789, -4.0, 0.0, 0.0],
                      tolerance: 2e-6, "9x7 -> 4x3 align_corners=True")
        let (yFalse, dx) = resize(x, to: 4, 3, alignCorners: false, dy: (1...12).map(Float.init))
        S.assertClose(yFalse.tensor, [0.041666507720947266, -1.0, -2.625000476837158, -3.9166665077209473, -1.125,
                                      -0.2916659116744995, 1.6666665077209473, -2.25, 1.4999990463256836, -2.0, 2.5,
                                      -3.2083332538604736], tolerance: 4e-6, "9x7 -> 4x3 align_corners=False")
        // x.grad for dy = arange(1, 13): rows 4 and 3 of the input are never read.
        S.assertClose(dx.tensor, [
            0.1250000149011612, 0.2499999850988388, 0.0, 0.75, 0.0, 0.7500003576278687, 0.37499964237213135,
            0.208333358168602, 0.4166666269302368, 0.0, 1.25, 0.0, 1.2500005960464478, 0.6249994039535522,
            0.1666666865348816, 0.3333333134651184, 0.0, 0.625, 0.0, 0.5000002384185791, 0.2499997615814209,
            1.1666667461395264, 2.3333332538604736, 0.0, 4.375, 0.0, 3.5000016689300537, 1.7499983310699463,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            2.0416667461395264, 4.0833330154418945, 0.0, 7.0, 0.0, 5.250002384185791, 2.624997615814209,
            0.2916666865348816, 0.5833333134651184, 0.0, 1.0, 0.0, 0.7500003576278687, 0.37499964237213135,
            2.0833334922790527, 4.166666030883789, 0.0, 6.875, 0.0, 5.000002384185791, 2.499997615814209,
            1.2500001192092896, 2.499999761581421, 0.0, 4.125, 0.0, 3.0000014305114746, 1.4999985694885254,
        ], tolerance: 1e-5, "9x7 -> 4x3 gradient")
    }

    func testResizeOnePixelBroadcastsAndSameSizeCopies() {
        // smp's ASPP pooling branch: a 1x1 map interpolated back to the feature size. Weights
        // (1 - l) and l may round to a sum one ulp off 1 (torch gives 2.4999998 at some pixels too).
        let x = OwnedTensor(Shape(2, 3, 1, 1), [2.5, -1, 0.125, 7, 3, -0.75])
        for alignCorners in [true, false] {
            let (y, dx) = resize(x, to: 5, 7, alignCorners: alignCorners, dy: [Float](repeating: 1, count: 2 * 3 * 35))
            for q in 0..<6 {
                for i in 0..<35 {
                    XCTAssertEqual(y.tensor[q * 35 + i], x.tensor[q], accuracy: 2 * x.tensor[q].ulp,
                                   "broadcast plane \(q) pixel \(i) align \(alignCorners)")
                }
                // The backward sums the 35 gradients of ones.
                XCTAssertEqual(dx.tensor[q], 35, accuracy: 1e-4, "plane \(q) align \(alignCorners)")
            }
        }
        // Same size: scale 1, every lambda 0, an exact copy in both conventions.
        let z = S.random(Shape(2, 2, 5, 3), seed: 301)
        for alignCorners in [true, false] {
            let (y, _) = resize(z, to: 5, 3, alignCorners: alignCorners)
            S.assertBitwiseEqual(y.tensor, z.tensor, "same size align \(alignCorners)")
        }
    }

    /// (input, output height, output width): up, down, mixed, 1-pixel rows and columns, out == 1, and
    /// rows wider than the forward's 64-column blocks (x4 as DeepLabV3+, and 131 = 2 x 64 + 3).
    private let resizeCases: [(Shape, Int, Int)] = [
        (Shape(2, 3, 3, 5), 7, 4), (Shape(1, 2, 1, 1), 5, 7), (Shape(1, 1, 9, 7), 4, 3), (Shape(1, 2, 1, 4), 3, 1),
        (Shape(1, 1, 4, 1), 1, 6), (Shape(2, 2, 2, 2), 17, 13), (Shape(1, 3, 6, 6), 24, 24), (Shape(3, 1, 5, 4), 1, 1),
        (Shape(2, 2, 16, 33), 64, 131), (Shape(1, 2, 20, 20), 80, 80),
    ]

    func testResizeFastEqualsNaiveBitwiseForAnyThreadCount() {
        for (shape, h, w) in resizeCases {
            for alignCorners in [true, false] {
                let out = resized(shape, h, w)
                let x = S.random(shape, seed: 311), dy = S.random(out, seed: 312), start = S.random(shape, seed: 313)
                let naiveY = OwnedTensor(out), naiveDx = OwnedTensor(shape)
                naiveDx.tensor.copy(from: start.tensor)
                resizeBilinearForwardNaive(naiveY.tensor, x.tensor, alignCorners: alignCorners)
                resizeBilinearBackwardNaive(dx: naiveDx.tensor, dy: dy.tensor, alignCorners: alignCorners)
                for threads in 1...3 {
                    let pool = WorkerPool(threads: threads)
                    let y = OwnedTensor(out), dx = OwnedTensor(shape)
                    y.tensor.fill(.nan)
                    dx.tensor.copy(from: start.tensor)
                    resizeBilinearForward(y.tensor, x.tensor, alignCorners: alignCorners, pool: pool)
                    resizeBilinearBackward(dx: dx.tensor, dy: dy.tensor, alignCorners: alignCorners, pool: pool)
                    // The same operations in the same order as the naive twin, planes split statically:
                    // the same bits for every thread count.
                    let label = "\(shape) -> \(h)x\(w) align \(alignCorners) threads \(threads)"
                    S.assertBitwiseEqual(y.tensor, naiveY.tensor, "forward " + label)
                    S.assertBitwiseEqual(dx.tensor, naiveDx.tensor, "backward " + label)
                }
            }
        }
    }

    func testResizeGradientFastAndNaive() {
        let pool = WorkerPool(threads: 2)
        for (shape, h, w) in [(Shape(2, 2, 3, 4), 7, 5), (Shape(1, 2, 7, 6), 3, 4), (Shape(1, 1, 1, 1), 3, 2)] {
            for alignCorners in [true, false] {
                let x = S.random(shape, seed: 321), dx = OwnedTensor(shape), y = OwnedTensor(resized(shape, h, w))
                let label = "\(shape) -> \(h)x\(w) align \(alignCorners)"
                S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                                 forward: { resizeBilinearForward(y.tensor, x.tensor, alignCorners: alignCorners, pool: pool) },
                                 backward: { dy in
                                     resizeBilinearBackward(dx: dx.tensor, dy: dy, alignCorners: alignCorners, pool: pool)
                                 }, "resize fast " + label)
                S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                                 forward: { resizeBilinearForwardNaive(y.tensor, x.tensor, alignCorners: alignCorners) },
                                 backward: { dy in resizeBilinearBackwardNaive(dx: dx.tensor, dy: dy, alignCorners: alignCorners) },
                                 "resize naive " + label)
            }
        }
    }

    func testResizeAgreesWithUpsample2x() {
        let pool = WorkerPool(threads: 2)
        for shape in [Shape(2, 3, 3, 5), Shape(1, 2, 1, 1), Shape(1, 1, 1, 4), Shape(1, 2, 4, 1), Shape(2, 1, 6, 3)] {
            let out = resized(shape, 2 * shape.h, 2 * shape.w)
            let x = S.random(shape, seed: 331), dy = S.random(out, seed: 332)
            let y = OwnedTensor(out), y2 = OwnedTensor(out), dx = OwnedTensor(shape), dx2 = OwnedTensor(shape)
            resizeBilinearForward(y.tensor, x.tensor, alignCorners: false, pool: pool)
            upsampleBilinear2xForward(y2.tensor, x.tensor, pool: pool)
            resizeBilinearBackward(dx: dx.tensor, dy: dy.tensor, alignCorners: false, pool: pool)
            upsampleBilinear2xBackward(dx: dx2.tensor, dy: dy.tensor, pool: pool)
            // As in ResizeTests: y within 2 gamma(6) (|x| <= 1), dx within 2 gamma(20) * 5 (up to 16
            // terms of |dy| <= 1 with weights summing to 4).
            XCTAssertLessThanOrEqual(Double(S.maxAbsDifference(y.tensor, y2.tensor)), 2 * RoundingModel.gamma(6), "\(shape)")
            XCTAssertLessThanOrEqual(Double(S.maxAbsDifference(dx.tensor, dx2.tensor)), 2 * RoundingModel.gamma(20) * 5,
                                     "\(shape)")
        }
    }

    func testResizeBackwardAccumulates() {
        let pool = WorkerPool(threads: 2)
        let dx = OwnedTensor(Shape(2, 3, 4, 5)), dy = S.random(Shape(2, 3, 9, 7), seed: 341)
        // Several additions per element and call: doubling is exact only up to rounding.
        for alignCorners in [true, false] {
            S.assertAccumulates([dx.tensor], tolerance: 1e-6, "resize align \(alignCorners)") {
                resizeBilinearBackward(dx: dx.tensor, dy: dy.tensor, alignCorners: alignCorners, pool: pool)
            }
            S.assertAccumulates([dx.tensor], tolerance: 1e-6, "resize naive align \(alignCorners)") {
                resizeBilinearBackwardNaive(dx: dx.tensor, dy: dy.tensor, alignCorners: alignCorners)
            }
        }
    }

    // MARK: - Global average pooling

    func testGlobalAveragePoolHandValues() {
        let pool = WorkerPool(threads: 2)
        // torch.nn.functional.adaptive_avg_pool2d(x, 1) on (1, 2, 2, 3): [3.5, 0.125].
        let x = OwnedTensor(Shape(1, 2, 2, 3), [1, 2, 3, 4, 5, 6, -1, -2, 0.5, 0.25, 0, 3])
        let y = OwnedTensor(Shape(1, 2, 1, 1)), yNaive = OwnedTensor(y.shape)
        y.tensor.fill(.nan)
        globalAveragePoolForward(y.tensor, x.tensor, pool: pool)
        globalAveragePoolForwardNaive(yNaive.tensor, x.tensor)
        S.assertClose(y.tensor, [3.5, 0.125], tolerance: 0)
        S.assertClose(yNaive.tensor, [3.5, 0.125], tolerance: 0, "naive")
        // dx = dy / 6 spread over each plane, added to what dx held.
        let dy = OwnedTensor(y.shape, [6, -12])
        let dx = OwnedTensor(x.shape, [Float](repeating: 1, count: 12)), dxNaive = OwnedTensor(x.shape, dx.tensor.toArray())
        globalAveragePoolBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
        globalAveragePoolBackwardNaive(dx: dxNaive.tensor, dy: dy.tensor)
        let expected: [Float] = [2, 2, 2, 2, 2, 2, -1, -1, -1, -1, -1, -1]
        S.assertClose(dx.tensor, expected, tolerance: 0)
        S.assertClose(dxNaive.tensor, expected, tolerance: 0, "naive")
    }

    func testGlobalAveragePoolFastEqualsNaiveAndThreadCounts() {
        for shape in [Shape(3, 5, 7, 9), Shape(2, 4, 1, 1), Shape(1, 3, 1, 6)] {
            let x = S.random(shape, seed: 351), pooled = Shape(shape.n, shape.c, 1, 1)
            let dy = S.random(pooled, seed: 352), start = S.random(shape, seed: 353)
            let yNaive = OwnedTensor(pooled), dxNaive = OwnedTensor(shape)
            dxNaive.tensor.copy(from: start.tensor)
            globalAveragePoolForwardNaive(yNaive.tensor, x.tensor)
            globalAveragePoolBackwardNaive(dx: dxNaive.tensor, dy: dy.tensor)
            // The mean in Double rounded once: within half an ulp of the exact mean.
            for q in 0..<(shape.n * shape.c) {
                var exact = 0.0
                for i in 0..<shape.plane { exact += Double(x.tensor[q * shape.plane + i]) }
                exact /= Double(shape.plane)
                XCTAssertLessThanOrEqual(abs(Double(yNaive.tensor[q]) - exact), Double(Float(exact).ulp), "\(shape) plane \(q)")
            }
            for threads in 1...3 {
                let pool = WorkerPool(threads: threads)
                let y = OwnedTensor(pooled), dx = OwnedTensor(shape)
                y.tensor.fill(.nan)
                dx.tensor.copy(from: start.tensor)
                globalAveragePoolForward(y.tensor, x.tensor, pool: pool)
                globalAveragePoolBackward(dx: dx.tensor, dy: dy.tensor, pool: pool)
                S.assertBitwiseEqual(y.tensor, yNaive.tensor, "forward \(shape) threads \(threads)")
                S.assertBitwiseEqual(dx.tensor, dxNaive.tensor, "backward \(shape) threads \(threads)")
            }
        }
    }

    func testGlobalAveragePoolGradientAndAccumulation() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 4, 5)
        let x = S.random(shape, seed: 361), dx = OwnedTensor(shape), y = OwnedTensor(Shape(2, 3, 1, 1))
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { globalAveragePoolForward(y.tensor, x.tensor, pool: pool) },
                         backward: { dy in globalAveragePoolBackward(dx: dx.tensor, dy: dy, pool: pool) }, "pool fast")
        S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                         forward: { globalAveragePoolForwardNaive(y.tensor, x.tensor) },
                         backward: { dy in globalAveragePoolBackwardNaive(dx: dx.tensor, dy: dy) }, "pool naive")
        let dy = S.random(y.shape, seed: 362)
        S.assertAccumulates([dx.tensor], "pool") { globalAveragePoolBackward(dx: dx.tensor, dy: dy.tensor, pool: pool) }
        S.assertAccumulates([dx.tensor], "pool naive") { globalAveragePoolBackwardNaive(dx: dx.tensor, dy: dy.tensor) }
    }

    // MARK: - Dropout

    private let draw = DropoutDraw(seed: 42, step: 7)

    /// The kept mask of a forward (true where y != 0 for x without zeros).
    private func mask(_ shape: Shape, probability: Float, draw: DropoutDraw, stream: UInt64 = 0) -> [Bool] {
        let x = OwnedTensor(shape, [Float](repeating: 1, count: shape.count)), y = OwnedTensor(shape)
        dropoutForward(y.tensor, x.tensor, probability: probability, draw: draw, stream: stream, pool: WorkerPool(threads: 2))
        return y.tensor.toArray().map { $0 != 0 }
    }

    func testDropoutKeptFractionWithinBinomialBound() {
        let shape = Shape(4, 8, 64, 64)
        for p: Float in [0.5, 0.1] {
            let keeps = mask(shape, probability: p, draw: draw)
            let kept = keeps.filter { $0 }.count
            let n = Double(shape.count), q = 1 - Double(p)
            let sd = (n * q * (1 - q)).squareRoot()
            XCTAssertLessThanOrEqual(abs(Double(kept) - n * q), 6 * sd, "p \(p): kept \(kept) of \(shape.count)")
            // A mask repeated per plane or per image would pass the total: every plane has its own.
            let plane = shape.plane
            let planes = (0..<(shape.n * shape.c)).map { Array(keeps[($0 * plane)..<(($0 + 1) * plane)]) }
            XCTAssertEqual(Set(planes).count, planes.count, "p \(p): every plane has its own mask")
        }
    }

    func testDropoutKeptValuesScaledAsPyTorchAndDroppedAreZero() {
        let pool = WorkerPool(threads: 2)
        // PyTorch multiplies by its noise 1 / (1 - p): for x = 0.3, p = 0.1 a kept value is
        // 0.3333333730697632, while 0.3 / 0.9 would be 0.3333333432674408 (torch 2.13, F.dropout).
        let one = OwnedTensor(.vector(256), [Float](repeating: 0.3, count: 256)), oneY = OwnedTensor(.vector(256))
        dropoutForward(oneY.tensor, one.tensor, probability: 0.1, draw: draw, stream: 0, pool: pool)
        let keptValues = Set(oneY.tensor.toArray().filter { $0 != 0 })
        XCTAssertEqual(keptValues, [Float(0.3333333730697632)])

        let shape = Shape(2, 3, 5, 7)
        for p: Float in [0.5, 0.1, 0.7] {
            let x = S.random(shape, seed: 371, in: 0.5...2)
            let y = OwnedTensor(shape), dy = S.random(shape, seed: 372), dx = OwnedTensor(shape)
            dropoutForward(y.tensor, x.tensor, probability: p, draw: draw, stream: 3, pool: pool)
            dropoutBackward(dx: dx.tensor, dy: dy.tensor, probability: p, draw: draw, stream: 3, pool: pool)
            let scale = 1 / (1 - p)
            var kept = 0
            for i in 0..<shape.count {
                let n = i / (shape.c * shape.plane), element = i % (shape.c * shape.plane)
                let keep = dropoutKeeps(draw, stream: 3, probability: p, image: n, element: element)
                kept += keep ? 1 : 0
                XCTAssertEqual(y.tensor[i].bitPattern, (keep ? x.tensor[i] * scale : 0).bitPattern, "p \(p) y[\(i)]")
                XCTAssertEqual(dx.tensor[i].bitPattern, (keep ? dy.tensor[i] * scale : 0).bitPattern, "p \(p) dx[\(i)]")
                if keep { XCTAssertEqual(y.tensor[i], x.tensor[i] / (1 - p), accuracy: y.tensor[i].ulp, "within an ulp of x / (1 - p)") }
            }
            XCTAssertTrue(kept > 0 && kept < shape.count, "p \(p): some kept, some dropped")
        }
    }

    func testDropoutRanksDrawTheMasksOfOneRank() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(4, 3, 6, 5), imageCount = 3 * 6 * 5
        let x = S.random(shape, seed: 381), dy = S.random(shape, seed: 382)
        let whole = OwnedTensor(shape), wholeDx = OwnedTensor(shape)
        dropoutForward(whole.tensor, x.tensor, probability: 0.5, draw: draw, stream: 1, pool: pool)
        dropoutBackward(dx: wholeDx.tensor, dy: dy.tensor, probability: 0.5, draw: draw, stream: 1, pool: pool)
        for rank in 0..<2 {
            // Rank r holds global images r and r + 2: firstPosition r, stride 2.
            let part = Shape(2, 3, 6, 5)
            let px = OwnedTensor(part), pdy = OwnedTensor(part), py = OwnedTensor(part), pdx = OwnedTensor(part)
            for k in 0..<2 {
                (px.tensor.sample(k)).update(from: x.tensor.sample(rank + 2 * k), count: imageCount)
                (pdy.tensor.sample(k)).update(from: dy.tensor.sample(rank + 2 * k), count: imageCount)
            }
            let rankDraw = DropoutDraw(seed: draw.seed, step: draw.step, firstPosition: rank, positionStride: 2)
            dropoutForward(py.tensor, px.tensor, probability: 0.5, draw: rankDraw, stream: 1, pool: pool)
            dropoutBackward(dx: pdx.tensor, dy: pdy.tensor, probability: 0.5, draw: rankDraw, stream: 1, pool: pool)
            for k in 0..<2 {
                let g = rank + 2 * k
                S.assertBitwiseEqual(Tensor(py.tensor.sample(k), Shape(1, 3, 6, 5)), Tensor(whole.tensor.sample(g), Shape(1, 3, 6, 5)),
                                     "rank \(rank) image \(k) = global \(g)")
                S.assertBitwiseEqual(Tensor(pdx.tensor.sample(k), Shape(1, 3, 6, 5)), Tensor(wholeDx.tensor.sample(g), Shape(1, 3, 6, 5)),
                                     "gradient rank \(rank) image \(k) = global \(g)")
            }
        }
    }

    func testDropoutMaskDependsOnSeedStepStreamAndPosition() {
        let shape = Shape(2, 2, 8, 8)
        let base = mask(shape, probability: 0.5, draw: draw)
        XCTAssertEqual(mask(shape, probability: 0.5, draw: draw), base, "a pure function of the draw")
        XCTAssertNotEqual(mask(shape, probability: 0.5, draw: DropoutDraw(seed: 43, step: 7)), base, "seed")
        XCTAssertNotEqual(mask(shape, probability: 0.5, draw: DropoutDraw(seed: 42, step: 8)), base, "step")
        XCTAssertNotEqual(mask(shape, probability: 0.5, draw: draw, stream: 1), base, "stream")
        // Shifting the positions by one: image 0 now draws what image 1 drew.
        let shifted = mask(shape, probability: 0.5, draw: DropoutDraw(seed: 42, step: 7, firstPosition: 1))
        XCTAssertEqual(Array(shifted[0..<128]), Array(base[128..<256]), "position")
        XCTAssertNotEqual(Array(base[0..<128]), Array(base[128..<256]), "images differ")
        XCTAssertNotEqual(Array(base[0..<64]), Array(base[64..<128]), "channels differ")
    }

    func testDropoutFastEqualsNaiveThreadCountsAndInPlace() {
        let shape = Shape(3, 5, 7, 9)
        let x = S.random(shape, seed: 391), dy = S.random(shape, seed: 392), start = S.random(shape, seed: 393)
        for p: Float in [0, 0.1, 0.5, 1] {
            let draw = DropoutDraw(seed: 5, step: 11, firstPosition: 2, positionStride: 3)
            let yNaive = OwnedTensor(shape), dxNaive = OwnedTensor(shape)
            dxNaive.tensor.copy(from: start.tensor)
            dropoutForwardNaive(yNaive.tensor, x.tensor, probability: p, draw: draw, stream: 4)
            dropoutBackwardNaive(dx: dxNaive.tensor, dy: dy.tensor, probability: p, draw: draw, stream: 4)
            for threads in 1...3 {
                let pool = WorkerPool(threads: threads)
                let y = OwnedTensor(shape), dx = OwnedTensor(shape), inPlace = OwnedTensor(shape)
                y.tensor.fill(.nan)
                dx.tensor.copy(from: start.tensor)
                inPlace.tensor.copy(from: x.tensor)
                dropoutForward(y.tensor, x.tensor, probability: p, draw: draw, stream: 4, pool: pool)
                dropoutBackward(dx: dx.tensor, dy: dy.tensor, probability: p, draw: draw, stream: 4, pool: pool)
                dropoutForward(inPlace.tensor, inPlace.tensor, probability: p, draw: draw, stream: 4, pool: pool)
                let label = "p \(p) threads \(threads)"
                S.assertBitwiseEqual(y.tensor, yNaive.tensor, "forward " + label)
                S.assertBitwiseEqual(dx.tensor, dxNaive.tensor, "backward " + label)
                S.assertBitwiseEqual(inPlace.tensor, yNaive.tensor, "in place " + label)
            }
        }
    }

    func testDropoutProbabilityZeroIsIdentityAndOneGivesZeros() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 4, 5)
        let x = S.random(shape, seed: 401), dy = S.random(shape, seed: 402), start = S.random(shape, seed: 403)
        let y = OwnedTensor(shape), dx = OwnedTensor(shape)
        dx.tensor.copy(from: start.tensor)
        dropoutForward(y.tensor, x.tensor, probability: 0, draw: draw, stream: 0, pool: pool)
        dropoutBackward(dx: dx.tensor, dy: dy.tensor, probability: 0, draw: draw, stream: 0, pool: pool)
        S.assertBitwiseEqual(y.tensor, x.tensor, "p = 0 forward")
        S.assertClose(dx.tensor, zip(start.tensor.toArray(), dy.tensor.toArray()).map { $0 + $1 }, tolerance: 0, "p = 0 backward")

        y.tensor.fill(.nan)
        dx.tensor.copy(from: start.tensor)
        dropoutForward(y.tensor, x.tensor, probability: 1, draw: draw, stream: 0, pool: pool)
        dropoutBackward(dx: dx.tensor, dy: dy.tensor, probability: 1, draw: draw, stream: 0, pool: pool)
        S.assertClose(y.tensor, [Float](repeating: 0, count: shape.count), tolerance: 0, "p = 1 forward")
        S.assertBitwiseEqual(dx.tensor, start.tensor, "p = 1 backward adds nothing")
    }

    func testDropoutGradientAndAccumulation() {
        let pool = WorkerPool(threads: 2)
        let shape = Shape(2, 3, 4, 5)
        // For a fixed draw the mask is fixed: the op is linear in x.
        let x = S.random(shape, seed: 411), dx = OwnedTensor(shape), y = OwnedTensor(shape)
        for p: Float in [0.5, 0.2] {
            S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                             forward: { dropoutForward(y.tensor, x.tensor, probability: p, draw: self.draw, stream: 2, pool: pool) },
                             backward: { dy in
                                 dropoutBackward(dx: dx.tensor, dy: dy, probability: p, draw: self.draw, stream: 2, pool: pool)
                             }, "dropout fast p \(p)")
            S.checkGradients(inputs: [x.tensor], gradients: [dx.tensor], output: y.tensor,
                             forward: { dropoutForwardNaive(y.tensor, x.tensor, probability: p, draw: self.draw, stream: 2) },
                             backward: { dy in
                                 dropoutBackwardNaive(dx: dx.tensor, dy: dy, probability: p, draw: self.draw, stream: 2)
                             }, "dropout naive p \(p)")
        }
        let dy = S.random(shape, seed: 412)
        S.assertAccumulates([dx.tensor], "dropout") {
            dropoutBackward(dx: dx.tensor, dy: dy.tensor, probability: 0.5, draw: draw, stream: 2, pool: pool)
        }
        S.assertAccumulates([dx.tensor], "dropout naive") {
            dropoutBackwardNaive(dx: dx.tensor, dy: dy.tensor, probability: 0.5, draw: draw, stream: 2)
        }
    }

    // MARK: - Concatenation as channel slices

    func testConcatSlicesThreeParts() {
        let pool = WorkerPool(threads: 3)
        let a = OwnedTensor(Shape(2, 1, 1, 2), [1, 2, 3, 4])
        let b = OwnedTensor(Shape(2, 2, 1, 2), [10, 11, 12, 13, 20, 21, 22, 23])
        let c = OwnedTensor(Shape(2, 1, 1, 2), [100, 101, 200, 201])
        let y = OwnedTensor(Shape(2, 4, 1, 2))
        y.tensor.fill(.nan)
        concatChannelsForward(y.tensor, a.tensor, at: 0, pool: pool)
        concatChannelsForward(y.tensor, c.tensor, at: 3, pool: pool)
        concatChannelsForward(y.tensor, b.tensor, at: 1, pool: pool)
        S.assertClose(y.tensor, [1, 2, 10, 11, 12, 13, 100, 101,
                                 3, 4, 20, 21, 22, 23, 200, 201], tolerance: 0)

        // Backward adds each part's slice of dy to what its gradient held.
        let dy = OwnedTensor(y.shape, (0..<16).map(Float.init))
        let da = OwnedTensor(a.shape, [1, 1, 1, 1]), db = OwnedTensor(b.shape), dc = OwnedTensor(c.shape)
        concatChannelsBackward(dx: da.tensor, dy: dy.tensor, at: 0, pool: pool)
        concatChannelsBackward(dx: db.tensor, dy: dy.tensor, at: 1, pool: pool)
        concatChannelsBackward(dx: dc.tensor, dy: dy.tensor, at: 3, pool: pool)
        S.assertClose(da.tensor, [1, 2, 9, 10], tolerance: 0, "da")
        S.assertClose(db.tensor, [2, 3, 4, 5, 10, 11, 12, 13], tolerance: 0, "db")
        S.assertClose(dc.tensor, [6, 7, 14, 15], tolerance: 0, "dc")
    }

    func testConcatSlicesGradientAndThreadCounts() {
        let parts = [S.random(Shape(2, 2, 3, 5), seed: 421), S.random(Shape(2, 3, 3, 5), seed: 422),
                     S.random(Shape(2, 1, 3, 5), seed: 423)]
        let offsets = [0, 2, 5]
        let grads = parts.map { OwnedTensor($0.shape) }
        let y = OwnedTensor(Shape(2, 6, 3, 5))
        let pool = WorkerPool(threads: 2)
        S.checkGradients(inputs: parts.map(\.tensor), gradients: grads.map(\.tensor), output: y.tensor,
                         forward: { for (p, o) in zip(parts, offsets) { concatChannelsForward(y.tensor, p.tensor, at: o, pool: pool) } },
                         backward: { dy in
                             for (g, o) in zip(grads, offsets) { concatChannelsBackward(dx: g.tensor, dy: dy, at: o, pool: pool) }
                         }, "concat slices")
        // The same as the two-input concatenation of (part 0) and (parts 1, 2), for 1, 2 and 3 threads.
        let tail = OwnedTensor(Shape(2, 4, 3, 5)), reference = OwnedTensor(y.shape)
        concatChannelsForward(tail.tensor, parts[1].tensor, parts[2].tensor, pool: pool)
        concatChannelsForward(reference.tensor, parts[0].tensor, tail.tensor, pool: pool)
        for threads in 1...3 {
            let pool = WorkerPool(threads: threads)
            y.tensor.fill(.nan)
            for (p, o) in zip(parts, offsets) { concatChannelsForward(y.tensor, p.tensor, at: o, pool: pool) }
            S.assertBitwiseEqual(y.tensor, reference.tensor, "threads \(threads)")
        }
        let dy = S.random(y.shape, seed: 424)
        S.assertAccumulates(grads.map(\.tensor), "concat slices") {
            for (g, o) in zip(grads, offsets) { concatChannelsBackward(dx: g.tensor, dy: dy.tensor, at: o, pool: pool) }
        }
    }
}
