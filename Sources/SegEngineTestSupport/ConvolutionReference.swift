// Exact (float64) convolutions and the magnitudes their float32 rounding scales with (RoundingModel.swift),
// for the three passes of conv2d (direct / im2col + GEMM), Winograd F(2x2) and F(4x4), and the 2x2
// transposed convolution. Shapes as in SegEngine: x (N, Cin, H, W), weight (Cout, Cin, k, k) OIHW,
// stride 1, "same" padding = dilation (k - 1) / 2; transposed weight (Cin, Cout, 2, 2) IOHW.
//
// Roundings per element (n of the model), counted generously — n enters under a square root:
//   direct forward         Cin k^2 products summed, + bias                      Cin k^2 + 2
//   direct input gradient  Cout products per column (GEMM), k^2 columns added   Cout + k^2 + 2
//   direct weight gradient N H W products, per-thread partials (<= 8) added      N H W + 10
//   bias gradient          N H W values                                          N H W + 10
//   Winograd               1-D transforms cost at most k roundings for a row with k nonzero entries
//                          (k - 1 additions and one scaling), applied down and across a tile;
//                          then the channel sum (forward: Cin, input gradient: Cout) or the tile
//                          sum (weight gradient: N x tiles), one product, bias and accumulation.
//   "+ 1" wherever the pass adds into a gradient that already held values (whose magnitude joins).

import SegEngine

public enum ConvolutionReference {
    // MARK: - Direct convolution (the naive and GEMM paths)

    /// y = conv(x, weight) + bias.
    public static func forward(x: Tensor, weight: Tensor, bias: Tensor?, dilation: Int = 1) -> RoundingReference {
        let (n, cin, h, w) = (x.n, x.c, x.h, x.w), cout = weight.n, k = weight.h, pad = dilation * (k - 1) / 2
        var exact = [Double](repeating: 0, count: n * cout * h * w), magnitude = exact
        for b in 0..<n { for o in 0..<cout { for i in 0..<h { for j in 0..<w {
            var sum = bias.map { Double($0[o]) } ?? 0, size = abs(sum)
            for c in 0..<cin { for u in 0..<k { for v in 0..<k {
                let yi = i + u * dilation - pad, xj = j + v * dilation - pad
                guard yi >= 0, yi < h, xj >= 0, xj < w else { continue }
                let term = Double(x[((b * cin + c) * h + yi) * w + xj]) * Double(weight[((o * cin + c) * k + u) * k + v])
                sum += term; size += abs(term)
            } } }
            let index = ((b * cout + o) * h + i) * w + j
            exact[index] = sum; magnitude[index] = size
        } } } }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: cin * k * k + 2)
    }

    /// dx (+)= the input gradient of conv for dy: the convolution of dy with the flipped kernel.
    public static func inputGradient(dy: Tensor, weight: Tensor, dilation: Int = 1, initial: Tensor? = nil)
        -> RoundingReference {
        let (n, cout, h, w) = (dy.n, dy.c, dy.h, dy.w), cin = weight.c, k = weight.h, pad = dilation * (k - 1) / 2
        var exact = [Double](repeating: 0, count: n * cin * h * w), magnitude = exact
        for b in 0..<n { for c in 0..<cin { for yi in 0..<h { for xj in 0..<w {
            let index = ((b * cin + c) * h + yi) * w + xj
            var sum = initial.map { Double($0[index]) } ?? 0, size = abs(sum)
            for o in 0..<cout { for u in 0..<k { for v in 0..<k {
                let i = yi - u * dilation + pad, j = xj - v * dilation + pad
                guard i >= 0, i < h, j >= 0, j < w else { continue }
                let term = Double(dy[((b * cout + o) * h + i) * w + j]) * Double(weight[((o * cin + c) * k + u) * k + v])
                sum += term; size += abs(term)
            } } }
            exact[index] = sum; magnitude[index] = size
        } } } }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: cout + k * k + 2)
    }

    /// dweight (+)= the weight gradient of conv for dy.
    public static func weightGradient(dy: Tensor, x: Tensor, kernel k: Int, dilation: Int = 1, initial: Tensor? = nil)
        -> RoundingReference {
        let (n, cin, h, w) = (x.n, x.c, x.h, x.w), cout = dy.c, pad = dilation * (k - 1) / 2
        var exact = [Double](repeating: 0, count: cout * cin * k * k), magnitude = exact
        for o in 0..<cout { for c in 0..<cin { for u in 0..<k { for v in 0..<k {
            let index = ((o * cin + c) * k + u) * k + v
            var sum = initial.map { Double($0[index]) } ?? 0, size = abs(sum)
            for b in 0..<n { for i in 0..<h { for j in 0..<w {
                let yi = i + u * dilation - pad, xj = j + v * dilation - pad
                guard yi >= 0, yi < h, xj >= 0, xj < w else { continue }
                let term = Double(dy[((b * cout + o) * h + i) * w + j]) * Double(x[((b * cin + c) * h + yi) * w + xj])
                sum += term; size += abs(term)
            } } }
            exact[index] = sum; magnitude[index] = size
        } } } }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: n * h * w + 10)
    }

    /// dbias (+)= the sum of dy over the batch and the plane, per channel.
    public static func biasGradient(dy: Tensor, initial: Tensor? = nil) -> RoundingReference {
        let plane = dy.h * dy.w
        var exact = [Double](repeating: 0, count: dy.c), magnitude = exact
        for o in 0..<dy.c {
            var sum = initial.map { Double($0[o]) } ?? 0, size = abs(sum)
            for b in 0..<dy.n { for p in 0..<plane {
                let v = Double(dy[(b * dy.c + o) * plane + p])
                sum += v; size += abs(v)
            } }
            exact[o] = sum; magnitude[o] = size
        }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: dy.n * plane + 10)
    }

    // MARK: - 2x2 transposed convolution, stride 2

    /// y[co, 2i + a, 2j + b] = sum_ci x[ci, i, j] W[ci, co, a, b] + bias[co].
    public static func transposeForward(x: Tensor, weight: Tensor, bias: Tensor?) -> RoundingReference {
        let (n, cin, h, w) = (x.n, x.c, x.h, x.w), cout = weight.c
        var exact = [Double](repeating: 0, count: n * cout * 4 * h * w), magnitude = exact
        for b in 0..<n { for o in 0..<cout { for i in 0..<(2 * h) { for j in 0..<(2 * w) {
            var sum = bias.map { Double($0[o]) } ?? 0, size = abs(sum)
            for c in 0..<cin {
                let term = Double(x[((b * cin + c) * h + i / 2) * w + j / 2])
                    * Double(weight[((c * cout + o) * 2 + i % 2) * 2 + j % 2])
                sum += term; size += abs(term)
            }
            let index = ((b * cout + o) * 2 * h + i) * 2 * w + j
            exact[index] = sum; magnitude[index] = size
        } } } }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: cin + 2)
    }

    public static func transposeInputGradient(dy: Tensor, weight: Tensor, initial: Tensor? = nil) -> RoundingReference {
        let (n, cout) = (dy.n, dy.c), cin = weight.n, h = dy.h / 2, w = dy.w / 2
        var exact = [Double](repeating: 0, count: n * cin * h * w), magnitude = exact
        for b in 0..<n { for c in 0..<cin { for i in 0..<h { for j in 0..<w {
            let index = ((b * cin + c) * h + i) * w + j
            var sum = initial.map { Double($0[index]) } ?? 0, size = abs(sum)
            for o in 0..<cout { for a in 0..<2 { for e in 0..<2 {
                let term = Double(dy[((b * cout + o) * 2 * h + 2 * i + a) * 2 * w + 2 * j + e])
                    * Double(weight[((c * cout + o) * 2 + a) * 2 + e])
                sum += term; size += abs(term)
            } } }
            exact[index] = sum; magnitude[index] = size
        } } } }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: 4 * cout + 2)
    }

    public static func transposeWeightGradient(dy: Tensor, x: Tensor, initial: Tensor? = nil) -> RoundingReference {
        let (n, cin, h, w) = (x.n, x.c, x.h, x.w), cout = dy.c
        var exact = [Double](repeating: 0, count: cin * cout * 4), magnitude = exact
        for c in 0..<cin { for o in 0..<cout { for a in 0..<2 { for e in 0..<2 {
            let index = ((c * cout + o) * 2 + a) * 2 + e
            var sum = initial.map { Double($0[index]) } ?? 0, size = abs(sum)
            for b in 0..<n { for i in 0..<h { for j in 0..<w {
                let term = Double(x[((b * cin + c) * h + i) * w + j])
                    * Double(dy[((b * cout + o) * 2 * h + 2 * i + a) * 2 * w + 2 * j + e])
                sum += term; size += abs(term)
            } } }
            exact[index] = sum; magnitude[index] = size
        } } } }
        return RoundingReference(exact: exact, magnitude: magnitude, roundings: n * h * w + 10)
    }

    // MARK: - Winograd F(2x2, 3x3) and F(4x4, 3x3)

    /// |B^T|, |G|, |A^T| of Lavin & Gray's F(m x m, 3 x 3) (interpolation points 0, 1, -1 for m = 2;
    /// 0, 1, -1, 2, -2 for m = 4), and the most nonzero entries in a row of B^T, G, A^T, A, G^T.
    public struct WinogradMatrices {
        public let m: Int, a: Int
        public let bt: [[Double]], g: [[Double]], at: [[Double]]
        public let rowEntries: (b: Int, g: Int, at: Int, a: Int, gt: Int)

        public init(tile m: Int) {
            precondition(m == 2 || m == 4, "Winograd tile 2 or 4")
            self.m = m
            a = m + 2
            if m == 2 {
                bt = [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1]]
                g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0, 0, 1]]
                at = [[1, 1, 1, 0], [0, 1, 1, 1]]
                rowEntries = (b: 2, g: 3, at: 3, a: 2, gt: 3)
            } else {
                bt = [[4, 0, 5, 0, 1, 0], [0, 4, 4, 1, 1, 0], [0, 4, 4, 1, 1, 0],
                      [0, 2, 1, 2, 1, 0], [0, 2, 1, 2, 1, 0], [0, 4, 0, 5, 0, 1]]
                g = [[1.0 / 4, 0, 0], [1.0 / 6, 1.0 / 6, 1.0 / 6], [1.0 / 6, 1.0 / 6, 1.0 / 6],
                     [1.0 / 24, 1.0 / 12, 1.0 / 6], [1.0 / 24, 1.0 / 12, 1.0 / 6], [0, 0, 1]]
                at = [[1, 1, 1, 1, 1, 0], [0, 1, 1, 2, 2, 0], [0, 1, 1, 4, 4, 0], [0, 1, 1, 8, 8, 1]]
                rowEntries = (b: 3, g: 3, at: 5, a: 4, gt: 5)
            }
        }

        /// Roundings of the two 1-D transforms of each operand, the product and the output transform.
        var transformRoundings: Int { 2 * rowEntries.b + 2 * rowEntries.g + 1 + 2 * rowEntries.at + 2 }
        var weightGradientTransformRoundings: Int { 2 * rowEntries.a + 2 * rowEntries.b + 1 + 2 * rowEntries.gt + 2 }

        /// |B^T| d |B| of an a x a patch of one plane (zero outside), top-left corner (top, left).
        func inputMagnitude(_ plane: (Int, Int) -> Double, top: Int, left: Int) -> [Double] {
            var column = [Double](repeating: 0, count: a * a)  // |B^T| |d|: rows xi, columns j
            for xi in 0..<a { for j in 0..<a {
                var s = 0.0
                for r in 0..<a where bt[xi][r] != 0 { s += bt[xi][r] * plane(top + r, left + j) }
                column[xi * a + j] = s
            } }
            var out = [Double](repeating: 0, count: a * a)
            for xi in 0..<a { for eta in 0..<a {
                var s = 0.0
                for j in 0..<a where bt[eta][j] != 0 { s += column[xi * a + j] * bt[eta][j] }
                out[xi * a + eta] = s
            } }
            return out
        }

        /// |G| |g| |G^T| of one 3x3 kernel.
        func weightMagnitude(_ kernel: (Int, Int) -> Double) -> [Double] {
            var left = [Double](repeating: 0, count: a * 3)
            for xi in 0..<a { for v in 0..<3 {
                var s = 0.0
                for u in 0..<3 { s += g[xi][u] * kernel(u, v) }
                left[xi * 3 + v] = s
            } }
            var out = [Double](repeating: 0, count: a * a)
            for xi in 0..<a { for eta in 0..<a {
                var s = 0.0
                for v in 0..<3 { s += left[xi * 3 + v] * g[eta][v] }
                out[xi * a + eta] = s
            } }
            return out
        }

        /// |A| |dy| |A^T| of an m x m output-gradient tile: a x a.
        func outputGradientMagnitude(_ tile: (Int, Int) -> Double) -> [Double] {
            var left = [Double](repeating: 0, count: a * m)
            for xi in 0..<a { for q in 0..<m {
                var s = 0.0
                for r in 0..<m { s += at[r][xi] * tile(r, q) }
                left[xi * m + q] = s
            } }
            var out = [Double](repeating: 0, count: a * a)
            for xi in 0..<a { for eta in 0..<a {
                var s = 0.0
                for q in 0..<m { s += left[xi * m + q] * at[q][eta] }
                out[xi * a + eta] = s
            } }
            return out
        }
    }

    /// The Winograd forward y = conv(x, weight) + bias (exact values are the direct convolution's).
    public static func winogradForward(x: Tensor, weight: Tensor, bias: Tensor?, tile: Int) -> RoundingReference {
        var reference = forward(x: x, weight: weight, bias: bias)
        let magnitude = winogradMagnitude(input: x, outChannels: weight.n, tile: tile) { o, c, u, v in
            Double(abs(weight[((o * weight.c + c) * 3 + u) * 3 + v]))
        }
        for i in 0..<magnitude.count { reference.magnitude[i] = magnitude[i] + abs(Double(bias?[(i / (x.h * x.w)) % weight.n] ?? 0)) }
        reference.roundings = x.c + WinogradMatrices(tile: tile).transformRoundings
        return reference
    }

    /// The Winograd input gradient: dy convolved with the kernel flipped 180 degrees, Cin and Cout swapped.
    public static func winogradInputGradient(dy: Tensor, weight: Tensor, tile: Int, initial: Tensor? = nil)
        -> RoundingReference {
        var reference = inputGradient(dy: dy, weight: weight, initial: initial)
        let magnitude = winogradMagnitude(input: dy, outChannels: weight.c, tile: tile) { c, o, u, v in
            Double(abs(weight[((o * weight.c + c) * 3 + 2 - u) * 3 + 2 - v]))
        }
        for i in 0..<magnitude.count { reference.magnitude[i] = magnitude[i] + abs(Double(initial?[i] ?? 0)) }
        reference.roundings = dy.c + WinogradMatrices(tile: tile).transformRoundings
        return reference
    }

    /// The Winograd weight gradient: dg = G^T (sum over images and tiles of (A dy A^T) . (B^T d B)) G.
    public static func winogradWeightGradient(dy: Tensor, x: Tensor, tile m: Int, initial: Tensor? = nil)
        -> RoundingReference {
        var reference = weightGradient(dy: dy, x: x, kernel: 3, initial: initial)
        let t = WinogradMatrices(tile: m), a = t.a
        let (n, cin, h, w) = (x.n, x.c, x.h, x.w), cout = dy.c
        let tilesHigh = (h + m - 1) / m, tilesWide = (w + m - 1) / m
        // Per image and tile: |V| for every input channel, |dM| for every output channel.
        var inputs = [[Double]](), gradients = [[Double]]()
        for b in 0..<n { for ty in 0..<tilesHigh { for tx in 0..<tilesWide {
            for c in 0..<cin {
                inputs.append(t.inputMagnitude({ i, j in
                    i >= 0 && i < h && j >= 0 && j < w ? Double(abs(x[((b * cin + c) * h + i) * w + j])) : 0
                }, top: m * ty - 1, left: m * tx - 1))
            }
            for o in 0..<cout {
                gradients.append(t.outputGradientMagnitude { r, q in
                    let i = m * ty + r, j = m * tx + q
                    return i < h && j < w ? Double(abs(dy[((b * cout + o) * h + i) * w + j])) : 0
                })
            }
        } } }
        let tiles = n * tilesHigh * tilesWide
        for o in 0..<cout { for c in 0..<cin {
            var du = [Double](repeating: 0, count: a * a)
            for k in 0..<tiles {
                let v = inputs[k * cin + c], dm = gradients[k * cout + o]
                for p in 0..<(a * a) { du[p] += dm[p] * v[p] }
            }
            // |G^T| du |G| (3x3).
            for u in 0..<3 { for v in 0..<3 {
                var s = 0.0
                for xi in 0..<a { for eta in 0..<a { s += t.g[xi][u] * du[xi * a + eta] * t.g[eta][v] } }
                let index = ((o * cin + c) * 3 + u) * 3 + v
                reference.magnitude[index] = s + abs(Double(initial?[index] ?? 0))
            } }
        } }
        reference.roundings = tiles + t.weightGradientTransformRoundings + 8
        return reference
    }

    /// sum_c |A^T| (|G| |g_oc| |G^T| . |B^T| |d_c| |B|) |A| for every output element: the magnitude of
    /// Winograd's forward (and, with the flipped kernel, of its input gradient).
    static func winogradMagnitude(input: Tensor, outChannels cout: Int, tile m: Int,
                                  kernel: (Int, Int, Int, Int) -> Double) -> [Double] {
        let t = WinogradMatrices(tile: m), a = t.a
        let (n, cin, h, w) = (input.n, input.c, input.h, input.w)
        let tilesHigh = (h + m - 1) / m, tilesWide = (w + m - 1) / m
        var weights = [[Double]]()  // [o * cin + c]
        for o in 0..<cout { for c in 0..<cin { weights.append(t.weightMagnitude { u, v in kernel(o, c, u, v) }) } }
        var out = [Double](repeating: 0, count: n * cout * h * w)
        for b in 0..<n { for ty in 0..<tilesHigh { for tx in 0..<tilesWide {
            var patches = [[Double]]()
            for c in 0..<cin {
                patches.append(t.inputMagnitude({ i, j in
                    i >= 0 && i < h && j >= 0 && j < w ? Double(abs(input[((b * cin + c) * h + i) * w + j])) : 0
                }, top: m * ty - 1, left: m * tx - 1))
            }
            for o in 0..<cout {
                var product = [Double](repeating: 0, count: a * a)
                for c in 0..<cin {
                    let u = weights[o * cin + c], v = patches[c]
                    for p in 0..<(a * a) { product[p] += u[p] * v[p] }
                }
                for r in 0..<m { for q in 0..<m {
                    let i = m * ty + r, j = m * tx + q
                    guard i < h, j < w else { continue }
                    var s = 0.0
                    for xi in 0..<a where t.at[r][xi] != 0 {
                        for eta in 0..<a where t.at[q][eta] != 0 { s += t.at[r][xi] * product[xi * a + eta] * t.at[q][eta] }
                    }
                    out[((b * cout + o) * h + i) * w + j] = s
                } }
            }
        } } }
        return out
    }
}
