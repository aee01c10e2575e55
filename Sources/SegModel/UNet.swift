// The UNet: encoder levels of two 3x3 conv (+ BN or GN) + ReLU and a 2x2 max-pool; decoder levels
// that upsample x2 (bilinear or transposed conv), zero-pad to the skip's size when the sizes are odd,
// concatenate [skip, upsampled], then two 3x3 conv (+ BN or GN) + ReLU; a head conv to the classes.
//
// Tensor names (the checkpoint format; conv weights OIHW, transposed-conv weights IOHW, as PyTorch):
//   down.{i}.conv{1,2}.{weight,bias}                 encoder level i, 0 = full resolution
//   down.{i}.bn{1,2}.{weight,bias,running_mean,running_var}   with --norm batch (the convs then have no bias)
//   down.{i}.gn{1,2}.{weight,bias}                   with --norm group (GroupNorm: no running stats; no conv bias)
//   up.{j}.conv{1,2}.*, up.{j}.bn{1,2}.*, up.{j}.gn{1,2}.*   decoder level j, 0 = deepest
//   up.{j}.upconv.{weight,bias}                      with --upsample transpose
//   head.{weight,bias}
// The flat parameter buffer holds them in this order (network order).

import SegEngine

/// A convolution's parameters, as indices into the parameter store.
struct ConvParameters {
    let weight: Int
    let bias: Int?
    let inChannels: Int
    let outChannels: Int
    let kernel: Int
}

struct BatchNormParameters {
    let gamma: Int, beta: Int, runningMean: Int, runningVar: Int
}

/// GroupNorm's affine parameters and its group count (`groupNormGroups(channels:)`).
struct GroupNormParameters {
    let gamma: Int, beta: Int, groups: Int
}

/// conv -> (batch or group norm) -> ReLU, with the activations it keeps for backward.
struct ConvUnit {
    let conv: ConvParameters
    let bn: BatchNormParameters?
    var gn: GroupNormParameters? = nil
    /// Arena slots: conv output before the norm (BN/GN only), output after ReLU, the norm's saved
    /// statistics (BN: C values; GN: N * G).
    var preNorm = -1, output = -1, saveMean = -1, saveInvStd = -1
    /// The norm's weight and bias (BN or GN), nil without a norm.
    var affine: (gamma: Int, beta: Int)? { bn.map { ($0.gamma, $0.beta) } ?? gn.map { ($0.gamma, $0.beta) } }
    var normalized: Bool { affine != nil }
}

struct EncoderLevel {
    var conv1: ConvUnit, conv2: ConvUnit
    var pooled = -1
}

struct DecoderLevel {
    var upconv: ConvParameters?
    var conv1: ConvUnit, conv2: ConvUnit
    /// Arena slots: upsampled, padded to the skip's size (only when sizes differ), concatenation.
    /// With bilinear upsampling to the skip's size, the upsampling writes straight into the
    /// concatenation (no `upsampled` slot), and backward fills the concatenation again
    /// (`concatenatedAgain`, from the skip and the level below, which backward keeps anyway) for
    /// the first convolution's weight gradient: between forward and that op it takes no memory.
    var upsampled: Int? = nil, padded: Int? = nil, concatenated = -1, concatenatedAgain: Int? = nil
}

/// One row of `segtrain info`.
public struct LayerInfo: Sendable {
    public let name: String
    public let kind: String
    public let outputShape: Shape
    public let parameters: Int
    /// Forward multiply-adds x 2 for one image (convolutions only, as the usual GFLOP figures).
    public let forwardFLOPs: Double
    /// Forward + input-gradient + weight-gradient FLOPs for one image in a training step.
    public let trainingFLOPs: Double
}

public final class UNet {
    public let config: UNetConfig
    /// How every convolution of this model runs (algorithm per layer, Winograd chunk sizes): fixed
    /// when the model is built, used by `plan` for the scratch and by forward and backward.
    public let convPolicy: ConvPolicy
    public let store: ParameterStore
    public let pool: WorkerPool
    public let profile = Profile()
    public var batchStatistics: BatchStatisticsSum?

    private var encoder: [EncoderLevel] = []
    private var decoder: [DecoderLevel] = []
    private var head: ConvParameters

    // Planned for one batch shape.
    public private(set) var batchShape: Shape? = nil
    private var arena = ActivationArena()
    private var scratch: Scratch
    private var logitsSlot = -1
    /// Backward as a list of ops, built once per plan; activation gradients share memory where
    /// their lifetimes on this tape do not overlap.
    private var tape: [TapeOp] = []
    /// Per op, the gradient slots it writes first: zeroed just before it runs (unless the op
    /// overwrites them itself, `overwritesFirst`).
    private var zeroFirst: [[Int]] = []
    /// Per op: which of its `overwritable` slots it writes first, so writes instead of adding into.
    private var overwritesFirst: [FreshWrites] = []
    /// After backward op k, the parameter gradients at flat offsets >= gradientFrontiers[k] are
    /// final (no later op writes them): what may be summed over ranks while backward goes on.
    /// Ends at 0. The same on every rank (it depends on the model only).
    public private(set) var gradientFrontiers: [Int] = []
    private var input: Tensor? = nil
    public private(set) var layers: [LayerInfo] = []
    /// A plan for training lets values and gradients share memory by their lifetimes
    /// (`ActivationArena.allocateForTraining`) and upsamples into the decoder's concatenations,
    /// which backward fills again (`DecoderLevel.concatenatedAgain`); false (for tests) keeps
    /// every value, each concatenation filled once from an upsampled tensor of its own.
    var sharesTrainingMemory = true

    public init(_ config: UNetConfig, convPolicy: ConvPolicy = .standard, pool: WorkerPool) {
        precondition(config.validate() == nil, config.validate() ?? "")
        self.config = config
        self.convPolicy = convPolicy
        self.pool = pool
        scratch = Scratch(threads: pool.threadCount)

        var layout = ParameterLayout()
        func conv(_ name: String, _ cin: Int, _ cout: Int, kernel: Int, bias: Bool) -> ConvParameters {
            let w = layout.add("\(name).weight", Shape(cout, cin, kernel, kernel))
            let b = bias ? layout.add("\(name).bias", .vector(cout)) : nil
            return ConvParameters(weight: w, bias: b, inChannels: cin, outChannels: cout, kernel: kernel)
        }
        func unit(_ prefix: String, _ index: Int, _ cin: Int, _ cout: Int) -> ConvUnit {
            let c = conv("\(prefix).conv\(index)", cin, cout, kernel: 3, bias: config.norm == .none)
            var bn: BatchNormParameters? = nil
            if config.norm == .group {
                let name = "\(prefix).gn\(index)"
                let gn = GroupNormParameters(gamma: layout.add("\(name).weight", .vector(cout)),
                                             beta: layout.add("\(name).bias", .vector(cout)),
                                             groups: groupNormGroups(channels: cout))
                return ConvUnit(conv: c, bn: nil, gn: gn)
            }
            if config.norm == .batch {
                let name = "\(prefix).bn\(index)"
                bn = BatchNormParameters(
                    gamma: layout.add("\(name).weight", .vector(cout)),
                    beta: layout.add("\(name).bias", .vector(cout)),
                    runningMean: layout.add("\(name).running_mean", .vector(cout), kind: .buffer),
                    runningVar: layout.add("\(name).running_var", .vector(cout), kind: .buffer))
            }
            return ConvUnit(conv: c, bn: bn)
        }

        var cin = config.inChannels
        for i in 0..<config.depth {
            let c = config.channels(level: i)
            encoder.append(EncoderLevel(conv1: unit("down.\(i)", 1, cin, c), conv2: unit("down.\(i)", 2, c, c)))
            cin = c
        }
        var below = config.channels(level: config.depth - 1)
        for j in 0..<config.depth {
            let level = config.depth - 1 - j
            let c = config.channels(level: level)
            let prefix = "up.\(j)"
            var up: ConvParameters? = nil
            if config.upsampling == .transpose {
                // IOHW: (Cin, Cout, 2, 2); channels kept, so the concatenation is as with bilinear.
                let w = layout.add("\(prefix).upconv.weight", Shape(below, below, 2, 2))
                let b = layout.add("\(prefix).upconv.bias", .vector(below))
                up = ConvParameters(weight: w, bias: b, inChannels: below, outChannels: below, kernel: 2)
            }
            decoder.append(DecoderLevel(upconv: up, conv1: unit(prefix, 1, c + below, c), conv2: unit(prefix, 2, c, c)))
            below = c
        }
        head = conv("head", config.channels(level: 0), config.classes, kernel: config.headKernel, bias: true)

        store = ParameterStore(layout)
        initializeParameters()
    }

    public var parameterCount: Int { store.parameterCount }

    // MARK: - Initialisation

    /// He normal (std sqrt(2 / fan_in)) or Glorot uniform (limit sqrt(6 / (fan_in + fan_out)))
    /// weights, zero biases, BN and GN weight 1 / bias 0, running mean 0 / running var 1. Each tensor draws
    /// from its own stream of (seed, tensor index), so the result does not depend on anything else.
    /// fan_in = Cin*k*k for convolutions; for the 2x2 stride-2 transposed conv every output pixel
    /// sees exactly Cin inputs, so fan_in = Cin and fan_out = Cout.
    public func initializeParameters() {
        for (index, entry) in store.entries.enumerated() {
            let t = store.value(index)
            let name = entry.name
            if name.hasSuffix("running_var") || ((name.contains(".bn") || name.contains(".gn")) && name.hasSuffix(".weight")) {
                t.fill(1); continue
            }
            if entry.shape.h == 1 && entry.shape.w == 1 && entry.shape.c == 1 { t.zero(); continue }  // biases
            var rng = SplitMix64(seed: config.seed, stream: UInt64(index) + 1)
            let isTranspose = name.hasSuffix("upconv.weight")
            let k = entry.shape.h * entry.shape.w
            let fanIn = isTranspose ? entry.shape.n : entry.shape.c * k
            let fanOut = isTranspose ? entry.shape.c : entry.shape.n * k
            switch config.initialization {
            case .heNormal:
                let std = (2.0 / Double(fanIn)).squareRoot()
                for i in 0..<t.count { t[i] = Float(rng.nextGaussian() * std) }
            case .glorotUniform:
                let limit = Float((6.0 / Double(fanIn + fanOut)).squareRoot())
                for i in 0..<t.count { t[i] = rng.nextFloat(in: -limit...limit) }
            }
        }
    }

    // MARK: - Planning

    /// Allocates activations, their gradients and kernel scratch for batches of this shape.
    /// Nothing is allocated by forward or backward afterwards.
    public func plan(batch: Int, height: Int, width: Int, gradients: Bool) {
        let shape = Shape(batch, config.inChannels, height, width)
        // A plan with gradients serves inference too.
        if batchShape == shape && (arena.hasGradientMemory || !gradients) { return }
        precondition(height >= config.minimumImageSize && width >= config.minimumImageSize,
                     "image \(height)x\(width) is smaller than \(config.minimumImageSize) px")
        var plan = ActivationArena()
        var rows: [LayerInfo] = []
        var scratchFloats = 0, sharedFloats = 0
        let threads = pool.threadCount

        func addUnit(_ unit: inout ConvUnit, _ name: String, h: Int, w: Int, firstLayer: Bool = false) {
            let c = unit.conv
            let out = Shape(batch, c.outChannels, h, w)
            if unit.normalized {
                unit.preNorm = plan.add(out)  // its gradient slot holds the norm's input gradient
                let statistics = unit.gn.map { batch * $0.groups } ?? c.outChannels
                unit.saveMean = plan.add(.vector(statistics), gradient: false)
                unit.saveInvStd = plan.add(.vector(statistics), gradient: false)
            }
            unit.output = plan.add(out)
            scratchFloats = max(scratchFloats, conv2dPlannedScratchFloats(
                batch: batch, inChannels: c.inChannels, outChannels: c.outChannels,
                height: h, width: w, kernel: c.kernel, policy: convPolicy, threads: threads))
            sharedFloats = max(sharedFloats, conv2dPlannedSharedScratchFloats(
                inChannels: c.inChannels, outChannels: c.outChannels, height: h, width: w, kernel: c.kernel, policy: convPolicy))
            let kind = unit.gn.map { "conv3x3+gn\($0.groups)+relu" } ?? (unit.bn == nil ? "conv3x3+relu" : "conv3x3+bn+relu")
            rows.append(convRow(name, c, h: h, w: w, firstLayer: firstLayer, kind: kind,
                                extraParameters: unit.normalized ? 2 * c.outChannels : 0))
        }

        var h = height, w = width
        for i in encoder.indices {
            addUnit(&encoder[i].conv1, "down.\(i).conv1", h: h, w: w, firstLayer: i == 0)
            addUnit(&encoder[i].conv2, "down.\(i).conv2", h: h, w: w)
            let pooled = Shape(batch, encoder[i].conv2.conv.outChannels, h / 2, w / 2)
            encoder[i].pooled = plan.add(pooled)
            rows.append(LayerInfo(name: "down.\(i).pool", kind: "maxpool2x2", outputShape: pooled.single,
                                  parameters: 0, forwardFLOPs: 0, trainingFLOPs: 0))
            h /= 2; w /= 2
        }
        var below = encoder[encoder.count - 1].pooled
        for j in decoder.indices {
            let skip = encoder[encoder.count - 1 - j].conv2.output
            let skipShape = plan.shapes[skip]
            let belowShape = plan.shapes[below]
            let upShape = Shape(batch, belowShape.c, belowShape.h * 2, belowShape.w * 2)
            let paddedShape = Shape(batch, belowShape.c, skipShape.h, skipShape.w)
            let intoConcatenation = sharesTrainingMemory && decoder[j].upconv == nil && upShape == paddedShape
            decoder[j].upsampled = intoConcatenation ? nil : plan.add(upShape)
            decoder[j].padded = intoConcatenation || upShape == paddedShape ? nil : plan.add(paddedShape)
            if let up = decoder[j].upconv {
                scratchFloats = max(scratchFloats, convTranspose2x2ScratchFloats(
                    batch: batch, inChannels: up.inChannels, outChannels: up.outChannels,
                    height: belowShape.h, width: belowShape.w, threads: threads))
                let flops = 2.0 * Double(up.inChannels * up.outChannels * 4 * belowShape.h * belowShape.w)
                rows.append(LayerInfo(name: "up.\(j).upconv", kind: "convT2x2", outputShape: upShape.single,
                                      parameters: up.inChannels * up.outChannels * 4 + up.outChannels,
                                      forwardFLOPs: flops, trainingFLOPs: 3 * flops))
            } else {
                rows.append(LayerInfo(name: "up.\(j).upsample", kind: "bilinear x2", outputShape: upShape.single,
                                      parameters: 0, forwardFLOPs: 0, trainingFLOPs: 0))
            }
            let catShape = Shape(batch, skipShape.c + belowShape.c, skipShape.h, skipShape.w)
            decoder[j].concatenated = plan.add(catShape)
            decoder[j].concatenatedAgain = intoConcatenation && gradients ? plan.add(catShape, gradient: false) : nil
            rows.append(LayerInfo(name: "up.\(j).concat", kind: decoder[j].padded == nil ? "concat" : "pad+concat",
                                  outputShape: catShape.single, parameters: 0, forwardFLOPs: 0, trainingFLOPs: 0))
            addUnit(&decoder[j].conv1, "up.\(j).conv1", h: skipShape.h, w: skipShape.w)
            addUnit(&decoder[j].conv2, "up.\(j).conv2", h: skipShape.h, w: skipShape.w)
            below = decoder[j].conv2.output
        }
        let logitsShape = Shape(batch, config.classes, height, width)
        logitsSlot = plan.add(logitsShape)
        scratchFloats = max(scratchFloats, conv2dPlannedScratchFloats(
            batch: batch, inChannels: head.inChannels, outChannels: head.outChannels,
            height: height, width: width, kernel: head.kernel, policy: convPolicy, threads: threads))
        sharedFloats = max(sharedFloats, conv2dPlannedSharedScratchFloats(
            inChannels: head.inChannels, outChannels: head.outChannels, height: height, width: width,
            kernel: head.kernel, policy: convPolicy))
        rows.append(convRow("head", head, h: height, w: width, firstLayer: false,
                            kind: "conv\(head.kernel)x\(head.kernel)", extraParameters: 0))

        arena = plan
        tape = buildBackwardTape()
        arena.allocate(forward: forwardAccesses(), tape: tape, logits: logitsSlot, gradients: gradients,
                       sharing: sharesTrainingMemory)
        gradientFrontiers = UNet.frontiers(of: tape.map(\.finalizes), store: store)
        (zeroFirst, overwritesFirst) = TapeOp.firstWrites(of: tape)
        scratch.reserve(floatsPerThread: scratchFloats)
        scratch.reserve(sharedFloats: sharedFloats)
        layers = rows
        batchShape = shape
    }

    /// The arena slots each op of `forward` reads or writes, in its order (the values' lifetimes
    /// on the forward pass, by which they share memory).
    private func forwardAccesses() -> [[Int]] {
        var ops: [[Int]] = []
        var x: Int? = nil  // the images
        func unit(_ u: ConvUnit) {
            ops.append([x, u.output].compactMap { $0 } + (u.normalized ? [u.preNorm, u.saveMean, u.saveInvStd] : []))
            x = u.output
        }
        for level in encoder {
            unit(level.conv1)
            unit(level.conv2)
            ops.append([level.conv2.output, level.pooled])
            x = level.pooled
        }
        for (j, level) in decoder.enumerated() {
            let skip = encoder[encoder.count - 1 - j].conv2.output
            if let up = level.upsampled {
                ops.append([x!, up])
                if let padded = level.padded { ops.append([up, padded]) }
                ops.append([skip, level.padded ?? up, level.concatenated])
            } else {
                ops.append([skip, x!, level.concatenated])
            }
            x = level.concatenated
            unit(level.conv1)
            unit(level.conv2)
        }
        ops.append([x!, logitsSlot])
        return ops
    }

    private func convRow(_ name: String, _ c: ConvParameters, h: Int, w: Int, firstLayer: Bool,
                         kind: String, extraParameters: Int) -> LayerInfo {
        let flops = 2.0 * Double(c.inChannels * c.outChannels * c.kernel * c.kernel * h * w)
        let params = c.inChannels * c.outChannels * c.kernel * c.kernel + (c.bias == nil ? 0 : c.outChannels)
        return LayerInfo(name: name, kind: kind, outputShape: Shape(1, c.outChannels, h, w),
                         parameters: params + extraParameters, forwardFLOPs: flops,
                         trainingFLOPs: firstLayer ? 2 * flops : 3 * flops)
    }

    /// Bytes of activations, activation gradients and scratch planned for the batch.
    public var plannedActivationMemory: PlannedActivationMemory { arena.plannedParts(with: scratch) }

    /// Floats of activation gradients: with sharing, and what one buffer per activation would take.
    public var activationGradientFloats: (shared: Int, unshared: Int) { (arena.gradientCount, arena.unsharedGradientCount) }

    // MARK: - Forward and backward

    /// The logits of the last forward pass: (N, classes, H, W).
    public var logits: Tensor { arena.value(logitsSlot) }
    /// Where the loss writes dL/dlogits before `backward()`; zeroed by `zeroActivationGradients`.
    public var logitsGradient: Tensor { arena.gradient(logitsSlot) }

    /// Zeroes the logits gradient, which the loss adds into before `backward()`. (Every other
    /// activation gradient is zeroed by backward right before its first write.)
    public func zeroActivationGradients() {
        profile.measure(.other) { zeroInParallel(logitsGradient, pool: pool) }
    }

    /// Runs the network on `images` (N, inChannels, H, W), planned with `plan`. Training mode uses
    /// batch statistics in BatchNorm and updates the running ones (GroupNorm is the same in both modes).
    @discardableResult
    public func forward(_ images: Tensor, training: Bool) -> Tensor {
        precondition(images.shape == batchShape, "forward on \(images.shape) but planned for \(batchShape.map(\.description) ?? "nothing")")
        input = images
        var x = images
        for i in encoder.indices {
            x = unitForward(encoder[i].conv1, x, training: training)
            x = unitForward(encoder[i].conv2, x, training: training)
            let pooled = arena.value(encoder[i].pooled)
            profile.measure(.pool) { maxPool2x2Forward(pooled, x, pool: pool) }
            x = pooled
        }
        for j in decoder.indices {
            let level = decoder[j]
            let skip = arena.value(encoder[encoder.count - 1 - j].conv2.output)
            let cat = arena.value(level.concatenated)
            if let upSlot = level.upsampled {
                fillConcatenation(cat, skip: skip, upsampled: arena.value(upSlot), below: x, level: level)
            } else {
                concatenate(cat, skip: skip, upsampling: x)
            }
            x = unitForward(level.conv1, cat, training: training)
            x = unitForward(level.conv2, x, training: training)
        }
        let out = logits
        profile.measure(.convForward) {
            conv2dForward(out, x, weight: store.value(head.weight), bias: head.bias.map { store.value($0) },
                          policy: convPolicy, pool: pool, scratch: scratch)
        }
        return out
    }

    /// cat = [skip, upsampled below] through an upsampled tensor of its own (transposed
    /// convolution, padding to the skip's size, or a plan that keeps every value).
    private func fillConcatenation(_ cat: Tensor, skip: Tensor, upsampled up: Tensor, below x: Tensor,
                                   level: DecoderLevel) {
        if let upconv = level.upconv {
            profile.measure(.convForward) {
                convTranspose2x2Forward(up, x, weight: store.value(upconv.weight),
                                        bias: upconv.bias.map { store.value($0) }, pool: pool, scratch: scratch)
            }
        } else {
            profile.measure(.upsample) { upsampleBilinear2xForward(up, x, pool: pool) }
        }
        profile.measure(.elementwise) {
            var upper = up
            if let padded = level.padded {
                upper = arena.value(padded)
                padToForward(upper, up, pool: pool)
            }
            concatChannelsForward(cat, skip, upper, pool: pool)
        }
    }

    /// Backward from `logitsGradient` (filled by the loss after `zeroActivationGradients`) through
    /// the whole network, adding into the parameter gradients `store.gradients`. `afterOp(k)` is
    /// called after op k (see `gradientFrontiers`).
    public func backward(afterOp: ((Int) throws -> Void)? = nil) rethrows {
        precondition(input != nil, "backward before forward")
        for (op, step) in tape.enumerated() {
            if !zeroFirst[op].isEmpty { profile.measure(.other) { for slot in zeroFirst[op] { zeroInParallel(arena.gradient(slot), pool: pool) } } }
            step.run(overwritesFirst[op])
            try afterOp?(op)
        }
    }

    /// For each op (given the parameter entries it finalizes), the lowest offset from which every
    /// parameter gradient to the end of the buffer is final.
    static func frontiers(of finalized: [[Int]], store: ParameterStore) -> [Int] {
        let parameters = store.entries.indices.filter { store.entries[$0].kind == .parameter }
            .sorted { store.entries[$0].offset > store.entries[$1].offset }
        var done = Set<Int>(), frontier = store.parameterCount, next = 0
        var result: [Int] = []
        for ops in finalized {
            done.formUnion(ops)
            while next < parameters.count, done.contains(parameters[next]) {
                frontier = store.entries[parameters[next]].offset
                next += 1
            }
            result.append(frontier)
        }
        precondition(frontier == 0, "the backward tape leaves some parameter gradient unfinished")
        return result
    }
    /// cat = [skip, bilinear x2 of below] along channels, the upsampling written in place.
    private func concatenate(_ cat: Tensor, skip: Tensor, upsampling below: Tensor) {
        profile.measure(.elementwise) { concatChannelsForward(cat, skip, at: 0, pool: pool) }
        profile.measure(.upsample) { upsampleBilinear2xForward(cat, below, at: skip.c, pool: pool) }
    }

    private func unitForward(_ unit: ConvUnit, _ x: Tensor, training: Bool) -> Tensor {
        let out = arena.value(unit.output)
        let c = unit.conv
        if unit.normalized {
            let z = arena.value(unit.preNorm)
            profile.measure(.convForward) {
                conv2dForward(z, x, weight: store.value(c.weight), bias: nil, policy: convPolicy, pool: pool,
                              scratch: scratch)
            }
            profile.measure(.batchNorm) {
                if let bn = unit.bn {
                    batchNormForward(out, z, gamma: store.value(bn.gamma), beta: store.value(bn.beta),
                                     runningMean: store.value(bn.runningMean), runningVar: store.value(bn.runningVar),
                                     saveMean: arena.value(unit.saveMean), saveInvStd: arena.value(unit.saveInvStd),
                                     training: training, synchronized: batchStatistics, relu: true, pool: pool)
                } else if let gn = unit.gn {
                    groupNormForward(out, z, groups: gn.groups, gamma: store.value(gn.gamma), beta: store.value(gn.beta),
                                     saveMean: arena.value(unit.saveMean), saveInvStd: arena.value(unit.saveInvStd),
                                     pool: pool)
                }
            }
            if unit.bn == nil { profile.measure(.elementwise) { reluForward(out, out, pool: pool) } }
        } else {
            // Bias and ReLU fused into the convolution's output pass.
            profile.measure(.convForward) {
                conv2dForward(out, x, weight: store.value(c.weight), bias: c.bias.map { store.value($0) },
                              relu: true, policy: convPolicy, pool: pool, scratch: scratch)
            }
        }
        return out
    }

    // MARK: - The backward tape

    /// The backward pass in execution order. Each op names the activation-gradient slots it reads
    /// and writes, so lifetimes (and memory sharing) follow from this one description.
    private func buildBackwardTape() -> [TapeOp] {
        var ops: [TapeOp] = []
        let last = decoder[decoder.count - 1].conv2.output
        ops += convOps(head, dy: logitsSlot, x: last, dx: last)
        for j in decoder.indices.reversed() {
            let level = decoder[j]
            ops += unitOps(level.conv2, x: level.conv1.output)
            let skip = encoder[encoder.count - 1 - j].conv2.output
            let below = j == 0 ? encoder[encoder.count - 1].pooled : decoder[j - 1].conv2.output
            if level.upsampled == nil {
                if let again = level.concatenatedAgain {
                    let refill = TapeOp(reads: [], writes: [], values: [skip, below, again]) { [unowned self] in
                        concatenate(arena.value(again), skip: arena.value(skip), upsampling: arena.value(below))
                    }
                    ops += unitOps(level.conv1, x: again, dx: level.concatenated, first: refill)
                } else {  // a plan for inference: its tape lays out gradients but never runs
                    ops += unitOps(level.conv1, x: level.concatenated)
                }
                ops.append(TapeOp(reads: [level.concatenated], writes: [skip, below]) { [unowned self] in
                    let dy = arena.gradient(level.concatenated), dskip = arena.gradient(skip)
                    profile.measure(.elementwise) { concatChannelsBackward(dx: dskip, dy: dy, at: 0, pool: pool) }
                    profile.measure(.upsample) {
                        upsampleBilinear2xBackward(dx: arena.gradient(below), dy: dy, at: dskip.c, pool: pool)
                    }
                })
                continue
            }
            ops += unitOps(level.conv1, x: level.concatenated)
            let upsampled = level.upsampled!, upper = level.padded ?? upsampled
            ops.append(TapeOp(reads: [level.concatenated], writes: [skip, upper]) { [unowned self] in
                profile.measure(.elementwise) {
                    concatChannelsBackward(da: arena.gradient(skip), db: arena.gradient(upper),
                                           dy: arena.gradient(level.concatenated), pool: pool)
                }
            })
            if let padded = level.padded {
                ops.append(TapeOp(reads: [padded], writes: [upsampled]) { [unowned self] in
                    profile.measure(.elementwise) {
                        padToBackward(dx: arena.gradient(upsampled), dy: arena.gradient(padded), pool: pool)
                    }
                })
            }
            if let upconv = level.upconv {
                // One pass gathers dy once for both gradients; charged to the weight gradient.
                ops.append(TapeOp(reads: [upsampled], writes: [below], values: [below],
                                  finalizes: [upconv.weight] + (upconv.bias.map { [$0] } ?? [])) { [unowned self] in
                    profile.measure(.convWeightGradient) {
                        convTranspose2x2Backward(dx: arena.gradient(below), dweight: store.gradient(upconv.weight),
                                                 dbias: upconv.bias.map { store.gradient($0) },
                                                 dy: arena.gradient(upsampled), x: arena.value(below),
                                                 weight: store.value(upconv.weight), pool: pool, scratch: scratch)
                    }
                })
            } else {
                ops.append(TapeOp(reads: [upsampled], writes: [below]) { [unowned self] in
                    profile.measure(.upsample) {
                        upsampleBilinear2xBackward(dx: arena.gradient(below), dy: arena.gradient(upsampled),
                                                   pool: pool)
                    }
                })
            }
        }
        for i in encoder.indices.reversed() {
            let level = encoder[i]
            let skip = level.conv2.output
            ops.append(TapeOp(reads: [level.pooled], writes: [skip], values: [skip]) { [unowned self] in
                profile.measure(.pool) {
                    maxPool2x2Backward(dx: arena.gradient(skip), dy: arena.gradient(level.pooled),
                                       x: arena.value(skip), pool: pool)
                }
            })
            ops += unitOps(level.conv2, x: level.conv1.output)
            ops += unitOps(level.conv1, x: i == 0 ? nil : encoder[i - 1].pooled)
        }
        return ops
    }

    /// Backward of conv -> (BN or GN) -> ReLU from the gradient of its output. `x` nil: the images (no
    /// input gradient is needed for them). `dx`: the slot of the input's gradient when the value
    /// the convolution reads is another slot (`x`), filled by `first` right before it is read.
    private func unitOps(_ unit: ConvUnit, x: Int?, dx: Int? = nil, first: TapeOp? = nil) -> [TapeOp] {
        var ops: [TapeOp] = [TapeOp(reads: [unit.output], writes: [unit.output], values: [unit.output]) { [unowned self] in
            profile.measure(.elementwise) {
                reluBackwardInPlace(arena.gradient(unit.output), y: arena.value(unit.output), pool: pool)
            }
        }]
        var dConv = unit.output
        if let affine = unit.affine {
            ops.append(TapeOp(reads: [unit.output], writes: [unit.preNorm], values: [unit.preNorm, unit.saveMean, unit.saveInvStd],
                              finalizes: [affine.gamma, affine.beta]) { [unowned self] in
                let dx = arena.gradient(unit.preNorm), dy = arena.gradient(unit.output), z = arena.value(unit.preNorm)
                let saveMean = arena.value(unit.saveMean), saveInvStd = arena.value(unit.saveInvStd)
                let gamma = store.value(affine.gamma), dgamma = store.gradient(affine.gamma), dbeta = store.gradient(affine.beta)
                profile.measure(.batchNorm) {
                    if let gn = unit.gn {
                        groupNormBackward(dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: z, groups: gn.groups, gamma: gamma,
                                          saveMean: saveMean, saveInvStd: saveInvStd, pool: pool)
                    } else {
                        batchNormBackward(dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: z, gamma: gamma, saveMean: saveMean,
                                          saveInvStd: saveInvStd, synchronized: batchStatistics, pool: pool)
                    }
                }
            })
            dConv = unit.preNorm
        }
        if let first { ops.append(first) }
        ops += convOps(unit.conv, dy: dConv, x: x, dx: dx ?? x)
        return ops
    }

    /// Weight (and bias) gradient, then the input gradient into `dx` when given, as two ops: the
    /// second does not read the input's value, so a plan for training lets the input gradient take
    /// the memory of the input when nothing later reads it (the decoder's concatenations).
    private func convOps(_ c: ConvParameters, dy: Int, x: Int?, dx: Int?) -> [TapeOp] {
        var ops = [TapeOp(reads: [dy], writes: [], values: x.map { [$0] } ?? [],
                          finalizes: [c.weight] + (c.bias.map { [$0] } ?? [])) { [unowned self] in
            let input = x.map { arena.value($0) } ?? self.input!
            profile.measure(.convWeightGradient) {
                conv2dBackward(dx: nil, dweight: store.gradient(c.weight), dbias: c.bias.map { store.gradient($0) },
                               dy: arena.gradient(dy), x: input, weight: store.value(c.weight), policy: convPolicy,
                               pool: pool, scratch: scratch)
            }
        }]
        if let dx {
            ops.append(TapeOp(reads: [dy], writes: [dx], overwritable: [dx]) { [unowned self] fresh in
                // The input's shape only: its memory may hold the input gradient by now.
                let input = x.map { arena.value($0) } ?? self.input!
                profile.measure(.convInputGradient) {
                    conv2dBackward(dx: arena.gradient(dx), dweight: nil, dbias: nil, dy: arena.gradient(dy), x: input,
                                   weight: store.value(c.weight), overwriteInputGradient: fresh[0], policy: convPolicy,
                                   pool: pool, scratch: scratch)
                }
            })
        }
        return ops
    }
}

/// Which of an op's `overwritable` slots it writes first (bit k for `overwritable[k]`): those it
/// writes instead of adding into, and that are not zeroed before it runs.
struct FreshWrites {
    let bits: UInt8
    static let none = FreshWrites(bits: 0)
    subscript(_ k: Int) -> Bool { bits >> UInt8(k) & 1 == 1 }
}

/// One step of the backward tape.
struct TapeOp {
    /// Activation-gradient slots it reads and writes.
    let reads: [Int]
    let writes: [Int]
    /// Activation slots whose values it reads (what a plan for training keeps until this op).
    let values: [Int]
    /// Parameter entries whose gradient this op writes, and no later op touches.
    let finalizes: [Int]
    /// Slots of `writes` (distinct, at most 8) the op can overwrite instead of adding into; `run`
    /// learns which of them it writes first (`FreshWrites`).
    let overwritable: [Int]
    let run: (_ fresh: FreshWrites) -> Void
    init(reads: [Int], writes: [Int], values: [Int] = [], finalizes: [Int] = [], overwritable: [Int],
         run: @escaping (_ fresh: FreshWrites) -> Void) {
        precondition(overwritable.count <= 8 && Set(overwritable).count == overwritable.count,
                     "TapeOp: overwritable slots \(overwritable)")
        self.reads = reads
        self.writes = writes
        self.values = values
        self.finalizes = finalizes
        self.overwritable = overwritable
        self.run = run
    }

    init(reads: [Int], writes: [Int], values: [Int] = [], finalizes: [Int] = [], run: @escaping () -> Void) {
        self.init(reads: reads, writes: writes, values: values, finalizes: finalizes, overwritable: []) { _ in run() }
    }

    /// Per op of `tape`: the gradient slots it writes before any earlier op touches them, split into
    /// those it overwrites itself (`fresh`) and those to zero just before it runs (`zero`).
    static func firstWrites(of tape: [TapeOp]) -> (zero: [[Int]], fresh: [FreshWrites]) {
        var touched = Set<Int>(), zero: [[Int]] = [], fresh: [FreshWrites] = []
        for op in tape {
            let first = op.writes.filter { !touched.contains($0) }
            var bits: UInt8 = 0
            for (k, slot) in op.overwritable.enumerated() where first.contains(slot) { bits |= 1 << UInt8(k) }
            fresh.append(FreshWrites(bits: bits))
            zero.append(first.filter { slot in !(op.overwritable.firstIndex(of: slot).map { bits >> UInt8($0) & 1 == 1 } ?? false) })
            touched.formUnion(op.reads)
            touched.formUnion(op.writes)
        }
        return (zero, fresh)
    }
}

extension Shape {
    /// The same shape for one sample.
    var single: Shape { Shape(1, c, h, w) }
}

extension UNet {
    /// The forward of `forward(_:training: false)` as inference nodes (SegModel/InferenceGraph.swift):
    /// the same levels, in the same order, as evaluation mode runs them.
    public var inferenceGraph: InferenceGraph {
        var g = InferenceGraph(inChannels: config.inChannels, classes: config.classes,
                               minimumSide: config.minimumImageSize, sideMultiple: 1)
        func conv(_ name: String, _ c: ConvParameters, _ x: Int) -> Int {
            g.add(name, .conv(weight: c.weight, bias: c.bias,
                              geometry: ConvGeometry(kernel: c.kernel, padding: (c.kernel - 1) / 2), groups: 1), [x])
        }
        func unit(_ prefix: String, _ index: Int, _ u: ConvUnit, _ x: Int) -> Int {
            var y = conv("\(prefix).conv\(index)", u.conv, x)
            if let bn = u.bn {
                y = g.add("\(prefix).bn\(index)", .batchNorm(gamma: bn.gamma, beta: bn.beta, runningMean: bn.runningMean,
                                                             runningVar: bn.runningVar, epsilon: batchNormEpsilon), [y])
            } else if let gn = u.gn {
                y = g.add("\(prefix).gn\(index)", .groupNorm(gamma: gn.gamma, beta: gn.beta, groups: gn.groups,
                                                             epsilon: groupNormEpsilon), [y])
            }
            return g.add("\(prefix).relu\(index)", .relu, [y])
        }
        var x = 0
        var skips: [Int] = []
        for (i, level) in encoder.enumerated() {
            x = unit("down.\(i)", 1, level.conv1, x)
            x = unit("down.\(i)", 2, level.conv2, x)
            skips.append(x)
            x = g.add("down.\(i).pool", .maxPool(kernel: 2, stride: 2, padding: 0), [x])
        }
        for (j, level) in decoder.enumerated() {
            let skip = skips[skips.count - 1 - j]
            let up: Int
            if let upconv = level.upconv {
                up = g.add("up.\(j).upconv", .convTranspose2x2(weight: upconv.weight, bias: upconv.bias), [x])
            } else {
                up = g.add("up.\(j).upsample", .upsampleBilinear2x, [x])
            }
            // Odd sides: the upsampled map is a row or column short of the skip (the plan pads only
            // then; the graph is for any size, so it always pads, by zero rows where they agree).
            let padded = g.add("up.\(j).pad", .padTo, [up, skip])
            x = g.add("up.\(j).concat", .concat, [skip, padded])
            x = unit("up.\(j)", 1, level.conv1, x)
            x = unit("up.\(j)", 2, level.conv2, x)
        }
        _ = conv("head", head, x)
        return g
    }
}
