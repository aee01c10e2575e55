// How much memory a UNet takes before it is built: parameters, and for one planned batch the
// activations, their gradients and the convolutions' scratch. Computed from the configuration
// alone (no allocation, Double arithmetic so absurd flags cannot overflow), mirroring UNet.init
// and UNet.plan. A plan for training places values and gradients in one buffer by their lifetimes
// (gradients take the memory of values backward has finished with), so the gradients add little
// to the values: they are counted as 20 % of the activations that have one. With bilinear
// upsampling a decoder's concatenation is filled again in backward, so only the largest one is
// counted as a value. That keeps the figure an upper bound of what `plan` allocates, 1.04-1.30x
// of it on MemoryEstimateTests' 11 configurations (exact arithmetic: the same on every machine).

import SegEngine

extension UNetConfig {
    /// Trainable parameters and non-trainable buffers (BN running statistics), as UNet.init lays them
    /// out: with a norm the convolutions lose their bias and the norm has a weight and a bias per channel.
    public var estimatedParameterCounts: (parameters: Double, buffers: Double) {
        var parameters = 0.0, buffers = 0.0
        func unit(_ cin: Int, _ cout: Int) {
            parameters += Double(cin) * Double(cout) * 9 + (norm == .none ? 1 : 2) * Double(cout)
            if norm == .batch { buffers += 2 * Double(cout) }
        }
        var cin = inChannels
        for i in 0..<depth {
            let c = Double(baseChannels) * Double(1 << i)
            unit(cin, Int(c)); unit(Int(c), Int(c))
            cin = Int(c)
        }
        var below = Double(baseChannels) * Double(1 << (depth - 1))
        for j in 0..<depth {
            let c = Double(baseChannels) * Double(1 << (depth - 1 - j))
            if upsampling == .transpose { parameters += below * below * 4 + below }
            unit(Int(c + below), Int(c)); unit(Int(c), Int(c))
            below = c
        }
        parameters += Double(baseChannels) * Double(classes) * Double(headKernel * headKernel) + Double(classes)
        return (parameters, buffers)
    }

    /// Bytes of activations, activation gradients and convolution scratch for a batch of `batch`
    /// images of `imageSize` px on `threads` threads: an upper bound of what `UNet.plan` allocates
    /// for a model built with `convPolicy`.
    public func estimatedActivationBytes(batch: Int, imageSize: Int, threads: Int,
                                         convPolicy: ConvPolicy = .standard) -> Double {
        let b = Double(batch)
        var values = 0.0, withGradient = 0.0
        func add(_ c: Double, _ side: Double, gradient: Bool = true) {
            let floats = b * c * side * side + 16
            values += floats
            if gradient { withGradient += floats }
        }
        // A normalised unit keeps the convolution's output before the norm (with a gradient) and the
        // norm's saved mean and 1 / std: C values each for BN, N * G for GN (G <= 32 counted as min(32, C)).
        func addNorm(_ c: Double, _ side: Double) {
            guard norm != .none else { return }
            add(c, side)
            let statistics = norm == .group ? b * min(32, c) : c
            values += 2 * (statistics + 16)
        }
        var side = Double(imageSize)
        var sides: [Double] = []
        for i in 0..<depth {
            let c = Double(baseChannels) * Double(1 << i)
            for _ in 0..<2 { addNorm(c, side); add(c, side) }
            sides.append(side)
            side = (side / 2).rounded(.down)
            add(c, side)
        }
        var below = Double(baseChannels) * Double(1 << (depth - 1)), belowSide = side
        var largestConcatenation = 0.0
        for j in 0..<depth {
            let c = Double(baseChannels) * Double(1 << (depth - 1 - j))
            let s = sides[depth - 1 - j]
            if upsampling == .bilinear && s == 2 * belowSide {
                // Upsampled into the concatenation, which backward fills again when it needs it:
                // one concatenation's value is live at a time.
                let floats = b * (c + below) * s * s + 16
                withGradient += floats
                largestConcatenation = max(largestConcatenation, floats)
            } else {
                add(below, 2 * belowSide)              // upsampled
                if s != 2 * belowSide { add(below, s) }  // padded to the skip's size (odd sides)
                add(c + below, s)                       // concatenation
            }
            belowSide = s
            for _ in 0..<2 { addNorm(c, s); add(c, s) }
            below = c
        }
        add(Double(classes), Double(imageSize))
        values += largestConcatenation
        var bytes = (values + 0.2 * withGradient) * 4
        // Scratch: asked of the kernels themselves while the sizes are sane (their Int arithmetic).
        if bytes < 1e12 {
            var perThread = 0, shared = 0
            var cin = inChannels, s = imageSize
            for i in 0..<depth {
                let c = baseChannels << i
                for (a, o) in [(cin, c), (c, c)] {
                    perThread = max(perThread, conv2dPlannedScratchFloats(batch: batch, inChannels: a, outChannels: o, height: s,
                                                                    width: s, kernel: 3, policy: convPolicy,
                                                                    threads: threads))
                    shared = max(shared, conv2dPlannedSharedScratchFloats(inChannels: a, outChannels: o, height: s, width: s,
                                                                          kernel: 3, policy: convPolicy))
                }
                cin = c
                s /= 2
            }
            var belowChannels = baseChannels << (depth - 1)
            for j in 0..<depth {
                let c = baseChannels << (depth - 1 - j), side = imageSize >> (depth - 1 - j)
                if upsampling == .transpose {
                    perThread = max(perThread, convTranspose2x2ScratchFloats(batch: batch, inChannels: belowChannels,
                                                                             outChannels: belowChannels, height: side / 2,
                                                                             width: side / 2, threads: threads))
                }
                for (a, o) in [(c + belowChannels, c), (c, c)] {
                    perThread = max(perThread, conv2dPlannedScratchFloats(batch: batch, inChannels: a, outChannels: o, height: side,
                                                                    width: side, kernel: 3, policy: convPolicy,
                                                                    threads: threads))
                    shared = max(shared, conv2dPlannedSharedScratchFloats(inChannels: a, outChannels: o, height: side,
                                                                          width: side, kernel: 3, policy: convPolicy))
                }
                belowChannels = c
            }
            perThread = max(perThread, conv2dPlannedScratchFloats(batch: batch, inChannels: baseChannels, outChannels: classes,
                                                            height: imageSize, width: imageSize, kernel: headKernel,
                                                            policy: convPolicy, threads: threads))
            bytes += Double(perThread * threads + shared) * 4
        }
        return bytes
    }
}
