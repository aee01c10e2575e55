// The model families built as a `LayerGraph` (issues #16 and #17): smp.Unet on a ResNet or
// MobileNetV2 encoder (EncoderUNetConfig) and smp.DeepLabV3Plus (DeepLabV3PlusConfig), with the
// tensor names, parameter counts and numerics of segmentation_models_pytorch 0.6. The layers are a
// `LayerGraph` (ResNetEncoder.swift, MobileNetV2Encoder.swift, UNetDecoder.swift,
// DeepLabV3Plus.swift); this class runs it: plan allocates every activation once, forward runs the
// layers in order, backward runs a tape of the layers in reverse whose activation gradients share
// memory where their lifetimes do not overlap (as UNet.swift).
//
// BatchNorm follows PyTorch: training mode normalises with the batch statistics, updates the
// running ones (momentum 0.1, unbiased variance) and counts num_batches_tracked; evaluation mode
// normalises with the running statistics. Backward follows the mode of the last forward. Dropout
// masks follow from `dropoutDraw` (see Dropout.swift), so a run is reproducible and N ranks draw
// what one rank draws.
//
// Fine-tuning (--freeze-encoder, `frozenEncoder`): as PyTorch's encoder.eval() with
// encoder.requires_grad_(False), the encoder's BatchNorm layers normalise with their running
// statistics in every forward (and leave them and their counters alone), the decoder's train as
// usual, and backward stops at the decoder: the encoder's ops are skipped, and no gradient is
// written into a tensor the encoder produced, so the encoder's parameter gradients stay as zeroed.

import SegEngine

/// A model family built as a layer graph: what `GraphModel` needs of its configuration.
protocol LayerGraphFamily: Sendable {
    var inChannels: Int { get }
    var classes: Int { get }
    var seed: UInt64 { get }
    /// Image sides must be multiples of this (and at least this).
    var sizeMultiple: Int { get }
    func validate(imageSize: Int?) -> String?
    func graph() -> LayerGraph
}

extension LayerGraphFamily {
    /// Trainable parameters and buffers (running statistics and counters), before the model exists.
    var estimatedParameterCounts: (parameters: Double, buffers: Double) {
        let layout = graph().layout
        return (Double(layout.parameterCount), Double(layout.bufferCount))
    }

    /// Bytes of activations, their gradients (unshared: an upper bound) and kernel scratch for one
    /// batch of square images.
    func estimatedActivationBytes(batch: Int, imageSize: Int, threads: Int, convPolicy: ConvPolicy = .standard) -> Double {
        let plan = GraphPlan(graph(), batch: batch, height: imageSize, width: imageSize, threads: threads, policy: convPolicy)
        let floats = 2 * plan.activationFloats + plan.scratchFloatsPerThread * threads + plan.sharedScratchFloats
        return Double(floats) * 4
    }
}

public final class GraphModel {
    let family: any LayerGraphFamily
    public let store: ParameterStore
    public let pool: WorkerPool
    public let profile = Profile()
    public var batchStatistics: BatchStatisticsSum?
    let graph: LayerGraph

    // Planned for one batch shape.
    public private(set) var batchShape: Shape? = nil
    public private(set) var layers: [LayerInfo] = []
    /// Per layer, the plan's phase-plane Winograd tile (GraphPlan.phaseTiles).
    private var phaseTiles: [Int] = []
    public private(set) var gradientFrontiers: [Int] = []
    private var arena = ActivationArena()
    private var scratch: Scratch
    /// Arena slot of every tensor (nil for the images, tensor 0).
    private var slots: [Int?] = []
    /// Per layer: the slots of BatchNorm's saved mean and 1/std (BatchNorm layers only).
    private var statSlots: [(mean: Int, invStd: Int)?] = []
    /// Per tensor: the slot backward reads its value from when a plan for training recomputes it
    /// (`recomputedTensors`), nil when backward reads the forward's value. A tensor refilled more
    /// than once in backward has a slot per refill, and each refill sets this to its own.
    private var again: [Int?] = []
    private var tape: [TapeOp] = []
    /// How many times backward makes each recomputed tensor again (by tensor index; for tests).
    private(set) var refillsOf: [Int: Int] = [:]
    /// Per op, the gradient slots it writes first: zeroed just before it runs.
    private var zeroFirst: [[Int]] = []
    /// Per op: which of its `overwritable` slots it writes first, so writes instead of adding into.
    private var overwritesFirst: [FreshWrites] = []
    private var input: Tensor? = nil
    /// A plan for training lets values and gradients share memory by their lifetimes
    /// (`ActivationArena.allocateForTraining`) and recomputes cheap layers' outputs in backward
    /// (`recomputedTensors`); false (for tests) keeps every value.
    var sharesTrainingMemory = true
    private var lastForwardTraining = true
    private var lastForwardFrozen = false
    /// The draw of the last forward's dropout masks (backward recomputes them).
    private var lastDropoutDraw = DropoutDraw()

    /// The encoder is frozen (fine-tuning): see the file comment. Takes effect at the next forward;
    /// backward follows the last forward.
    public var frozenEncoder = false
    /// Per layer: an encoder layer ("encoder." names).
    private let inEncoder: [Bool]
    /// Per tensor: the images or an encoder layer's output (no gradient needed while frozen).
    private let frozenTensor: [Bool]
    /// Per backward op: its layer is an encoder layer.
    private var tapeInEncoder: [Bool] = []
    /// `zeroFirst` without the gradients of frozen tensors (not written while frozen).
    private var zeroFirstFrozen: [[Int]] = []
    /// Set for the duration of a backward that stops at the decoder.
    private var skippingEncoder = false
    /// Tests: false runs the encoder's backward even when frozen (evaluation-mode BatchNorm, gradients
    /// into the encoder's parameters), the ordinary way the frozen backward must agree with.
    var stopsBackwardAtDecoder = true

    /// Which 3x3 stride-1 convolutions run Winograd (those the policy gives a tile; conv2d's
    /// kernels). Every other convolution, and all of them under `--conv gemm`, takes the strided
    /// kernel, whose bits do not depend on the thread count (Winograd's weight gradient sums
    /// per-thread partials: bitwise reproducible for a given thread count only, as the plain UNet).
    public let convPolicy: ConvPolicy

    /// What dropout's masks follow from in training forwards (the trainer sets it per step).
    public var dropoutDraw = DropoutDraw()

    /// smp.Unet on an encoder (issue #16).
    public convenience init(_ config: EncoderUNetConfig, convPolicy: ConvPolicy = .standard, pool: WorkerPool) {
        self.init(family: config, convPolicy: convPolicy, pool: pool)
    }

    /// smp.DeepLabV3Plus (issue #17).
    public convenience init(_ config: DeepLabV3PlusConfig, convPolicy: ConvPolicy = .standard, pool: WorkerPool) {
        self.init(family: config, convPolicy: convPolicy, pool: pool)
    }

    init(family: any LayerGraphFamily, convPolicy: ConvPolicy, pool: WorkerPool) {
        precondition(family.validate(imageSize: nil) == nil, family.validate(imageSize: nil) ?? "")
        self.family = family
        self.convPolicy = convPolicy
        self.pool = pool
        graph = family.graph()
        store = ParameterStore(graph.layout)
        let encoderLayers = graph.layers.map { $0.name.hasPrefix("encoder.") }
        var frozen = [true] + Array(repeating: false, count: graph.layers.count)
        for (layer, encoder) in zip(graph.layers, encoderLayers) where encoder {
            precondition(layer.inputs.allSatisfy { frozen[$0] }, "\(layer.name): an encoder layer reads a decoder tensor")
            frozen[layer.output] = true
        }
        inEncoder = encoderLayers
        frozenTensor = frozen
        scratch = Scratch(threads: pool.threadCount)
        initializeParameters()
    }

    public var inChannels: Int { family.inChannels }
    public var classes: Int { family.classes }
    public var parameterCount: Int { store.parameterCount }

    /// torchvision's initialisation for the encoder (He normal, fan_out), smp's for the decoder (He
    /// uniform, fan_in) and head (Glorot uniform); zero biases; BN weight 1, bias 0, running mean 0,
    /// running var 1, counter 0.
    public func initializeParameters() { graph.initialize(store, seed: family.seed) }

    // MARK: - Planning

    public func plan(batch: Int, height: Int, width: Int, gradients: Bool) {
        let shape = Shape(batch, family.inChannels, height, width)
        // A plan with gradients serves inference too.
        if batchShape == shape && (arena.hasGradientMemory || !gradients) { return }
        let m = family.sizeMultiple
        precondition(height >= m && width >= m && height % m == 0 && width % m == 0,
                     "image \(height)x\(width): sides must be multiples of \(m)")
        let p = GraphPlan(graph, batch: batch, height: height, width: width, threads: pool.threadCount, policy: convPolicy)
        var a = ActivationArena()
        slots = p.shapes.indices.map { $0 == 0 ? nil : a.add(p.shapes[$0]) }
        statSlots = graph.layers.map { layer in
            guard case .batchNorm = layer.op else { return nil }
            let c = p.shapes[layer.output].c
            return (a.add(.vector(c), gradient: false), a.add(.vector(c), gradient: false))
        }
        again = p.shapes.map { _ in nil }
        if gradients && sharesTrainingMemory {
            for t in recomputedTensors() { again[t] = a.add(p.shapes[t], gradient: false) }
        }
        arena = a
        refillsOf = [:]
        let (ops, layerOfOp) = buildBackwardTape()
        tape = ops
        (zeroFirst, overwritesFirst) = TapeOp.firstWrites(of: tape)
        // A BatchNorm that writes its input's gradient first writes it over its output's: nothing
        // reads the output's gradient after it (a plan for training that shares memory).
        var aliases: [Int: Int] = [:]
        if gradients && sharesTrainingMemory {
            for (op, step) in tape.enumerated() where overwritesFirst[op][0] {
                if case .batchNorm = graph.layers[layerOfOp[op]].op { aliases[step.overwritable[0]] = step.reads[0] }
            }
        }
        arena.allocate(forward: forwardAccesses(), tape: tape, logits: logitsSlot, gradients: gradients,
                       sharing: sharesTrainingMemory, gradientAliases: aliases)
        let frozenSlots = Set(slots.indices.filter { frozenTensor[$0] }.compactMap { slots[$0] })
        zeroFirstFrozen = zeroFirst.map { $0.filter { !frozenSlots.contains($0) } }
        tapeInEncoder = layerOfOp.map { inEncoder[$0] }
        gradientFrontiers = UNet.frontiers(of: tape.map(\.finalizes), store: store)
        scratch.reserve(floatsPerThread: p.scratchFloatsPerThread)
        scratch.reserve(sharedFloats: p.sharedScratchFloats)
        layers = p.rows
        phaseTiles = p.phaseTiles
        batchShape = shape
    }

    private var logitsSlot: Int { slots[slots.count - 1]! }

    /// The arena slots each layer's forward reads or writes, in order (the values' lifetimes on
    /// the forward pass, by which they share memory).
    private func forwardAccesses() -> [[Int]] {
        graph.layers.enumerated().map { index, layer in
            (layer.inputs + [layer.output]).compactMap { slots[$0] } + (statSlots[index].map { [$0.mean, $0.invStd] } ?? [])
        }
    }

    /// Bytes of activations, activation gradients and scratch planned for the batch.
    public var plannedActivationMemory: PlannedActivationMemory { arena.plannedParts(with: scratch) }

    public var activationGradientFloats: (shared: Int, unshared: Int) { (arena.gradientCount, arena.unsharedGradientCount) }

    // MARK: - Forward

    public var logits: Tensor { arena.value(logitsSlot) }
    public var logitsGradient: Tensor { arena.gradient(logitsSlot) }

    public func zeroActivationGradients() {
        profile.measure(.other) { zeroInParallel(logitsGradient, pool: pool) }
    }

    /// The value of tensor t (the images for t = 0).
    private func value(_ t: Int) -> Tensor { slots[t].map { arena.value($0) } ?? input! }

    /// The value of tensor t as backward reads it: recomputed, or the forward's.
    private func backwardValue(_ t: Int) -> Tensor { again[t].map { arena.value($0) } ?? value(t) }

    /// The slot backward reads tensor t's value from (nil for the images).
    private func backwardSlot(_ t: Int) -> Int? { again[t] ?? slots[t] }

    @discardableResult
    public func forward(_ images: Tensor, training: Bool) -> Tensor {
        precondition(images.shape == batchShape, "forward on \(images.shape) but planned for \(batchShape.map(\.description) ?? "nothing")")
        input = images
        lastForwardTraining = training
        lastForwardFrozen = frozenEncoder
        for (index, layer) in graph.layers.enumerated() {
            run(index, into: value(layer.output), reading: value, training: training)
        }
        lastDropoutDraw = dropoutDraw
        return logits
    }

    /// Layer `index`'s forward into `y`, its inputs' values from `read` (the forward's, or in a
    /// recompute what backward reads).
    private func run(_ index: Int, into y: Tensor, reading read: (Int) -> Tensor, training: Bool) {
        let layer = graph.layers[index]
        let x = read(layer.inputs[0])
        switch layer.op {
        case .conv(let weight, let bias, let geometry):
            profile.measure(.convForward) {
                if convPolicy.runsWinograd(geometry, x, y) {
                    conv2dForward(y, x, weight: store.value(weight), bias: bias.map { store.value($0) },
                                  policy: convPolicy, pool: pool, scratch: scratch)
                } else if case let tile = phaseTiles[index], tile > 0 {
                    phaseWinogradForward(y, x, weight: store.value(weight), bias: bias.map { store.value($0) },
                                         dilation: geometry.dilation, tile: tile, policy: convPolicy, pool: pool,
                                         scratch: scratch)
                } else {
                    stridedConvForward(y, x, weight: store.value(weight), bias: bias.map { store.value($0) },
                                       geometry: geometry, perImageWork: convPolicy.perImageWork, pool: pool,
                                       scratch: scratch)
                }
            }
        case .depthwise(let weight, let stride, let dilation):
            profile.measure(.convForward) {
                depthwise3x3Forward(y, x, weight: store.value(weight), stride: stride, padding: dilation,
                                    dilation: dilation, pool: pool)
            }
        case .batchNorm(let bn, let counter, let relu):
            let stats = statSlots[index]!
            let trains = batchNormTrains(index)
            profile.measure(.batchNorm) {
                batchNormForward(y, x, gamma: store.value(bn.gamma), beta: store.value(bn.beta),
                                 runningMean: store.value(bn.runningMean), runningVar: store.value(bn.runningVar),
                                 saveMean: arena.value(stats.mean), saveInvStd: arena.value(stats.invStd),
                                 training: trains, synchronized: batchStatistics, relu: relu, pool: pool)
            }
            if trains { store.value(counter)[0] += 1 }
        case .relu6:
            profile.measure(.elementwise) { relu6Forward(y, x, pool: pool) }
        case .maxPool:
            profile.measure(.pool) { maxPoolForward(y, x, pool: pool) }
        case .add(let relu):
            profile.measure(.elementwise) { residualAddForward(y, x, read(layer.inputs[1]), relu: relu, pool: pool) }
        case .upsampleNearest:
            profile.measure(.upsample) { upsampleNearest2xForward(y, x, pool: pool) }
        case .concat:
            profile.measure(.elementwise) {
                var offset = 0
                for t in layer.inputs {
                    let part = read(t)
                    concatChannelsForward(y, part, at: offset, pool: pool)
                    offset += part.c
                }
            }
        case .resize(let alignCorners, _):
            profile.measure(.upsample) { resizeBilinearForward(y, x, alignCorners: alignCorners, pool: pool) }
        case .globalAveragePool:
            profile.measure(.pool) { globalAveragePoolForward(y, x, pool: pool) }
        case .dropout(let probability, let stream):
            profile.measure(.elementwise) {
                if training {
                    dropoutForward(y, x, probability: probability, draw: dropoutDraw, stream: stream, pool: pool)
                } else {
                    y.copy(from: x)
                }
            }
        }
    }

    /// Layer `index` (a BatchNorm) normalises with the batch's statistics in the last forward:
    /// a training forward, except in a frozen encoder.
    private func batchNormTrains(_ index: Int) -> Bool {
        lastForwardTraining && !(lastForwardFrozen && inEncoder[index])
    }

    // MARK: - Backward

    /// Backward through the last forward (BatchNorm in that forward's mode) from `logitsGradient`,
    /// adding into the store's gradients; `afterOp(k)` runs after op k (see `gradientFrontiers`).
    /// A forward with a frozen encoder stops at the decoder: the encoder's ops only call `afterOp`.
    public func backward(afterOp: ((Int) throws -> Void)? = nil) rethrows {
        precondition(input != nil, "backward before forward")
        skippingEncoder = lastForwardFrozen && stopsBackwardAtDecoder
        defer { skippingEncoder = false }
        for (op, step) in tape.enumerated() {
            if skippingEncoder && tapeInEncoder[op] {
                try afterOp?(op)
                continue
            }
            let zero = skippingEncoder ? zeroFirstFrozen[op] : zeroFirst[op]
            if !zero.isEmpty { profile.measure(.other) { for slot in zero { zeroInParallel(arena.gradient(slot), pool: pool) } } }
            step.run(overwritesFirst[op])
            try afterOp?(op)
        }
    }

    /// The layers in reverse, each reading its output's gradient and adding into its inputs'
    /// (none for the images); and the layer of each op. A convolution is two ops, its weight
    /// gradient and then its input gradient, which does not read the input's value: a plan for
    /// training lets the input gradient take the input's memory when nothing later reads it.
    private func buildBackwardTape() -> (ops: [TapeOp], layers: [Int]) {
        var ops: [TapeOp] = [], layerOfOp: [Int] = []
        for index in graph.layers.indices.reversed() {
            let layer = graph.layers[index]
            let out = slots[layer.output]!
            let inputSlots = layer.inputs.map { slots[$0] }
            var finalizes: [Int] = []
            var writes = inputSlots.compactMap { $0 }
            var split = false
            switch layer.op {
            case .conv(let weight, let bias, _):
                finalizes = [weight] + (bias.map { [$0] } ?? [])
                split = true
            case .depthwise(let weight, _, _): finalizes = [weight]
            case .batchNorm(let bn, _, let relu):
                finalizes = [bn.gamma, bn.beta]
                if relu { writes.append(out) }  // the ReLU's mask is applied to the gradient in place
            default: break
            }
            // The inputs' gradients (nil for the images, and for the encoder's tensors while
            // backward stops at the decoder), looked up when the op runs: the arena exists only
            // after the tape is planned. No array per op and step.
            let frozen = layer.inputs.map { frozenTensor[$0] }
            let dx: (Int) -> Tensor? = { [unowned self] k in
                skippingEncoder && frozen[k] ? nil : inputSlots[k].map { arena.gradient($0) }
            }
            if split {
                ops.append(TapeOp(reads: [out], writes: [], values: backwardValueSlots(index),
                                  finalizes: finalizes) { [unowned self] in
                    layerBackward(index, dy: arena.gradient(out), part: .weights, dx: dx)
                })
                layerOfOp.append(index)
                if !writes.isEmpty {
                    // The input gradient is written (not added) where this op writes it first.
                    ops.append(TapeOp(reads: [out], writes: writes, overwritable: writes) { [unowned self] fresh in
                        layerBackward(index, dy: arena.gradient(out), part: .input, dx: dx, fresh: fresh)
                    })
                    layerOfOp.append(index)
                }
            } else {
                // BatchNorm writes its input's gradient alone when nothing else reads the input; a
                // residual add writes (not adds) the gradients of both its inputs where it writes them
                // first.
                var overwritable: [Int] = []
                switch layer.op {
                case .batchNorm:
                    if let x = inputSlots[0], graph.consumers(of: layer.inputs[0]) == 1 { overwritable = [x] }
                case .add:
                    if let a = inputSlots[0], let b = inputSlots[1], a != b { overwritable = [a, b] }
                default: break
                }
                ops.append(TapeOp(reads: [out], writes: writes, values: backwardValueSlots(index),
                                  finalizes: finalizes, overwritable: overwritable) { [unowned self] fresh in
                    layerBackward(index, dy: arena.gradient(out), dx: dx, fresh: fresh)
                })
                layerOfOp.append(index)
            }
        }
        // Each recomputed tensor is filled right before the first op that reads it (another
        // one's refill included): dependents first, so an input's refill lands before theirs. Readers
        // more than `refillGap` ops after the last get a refill of their own, into a slot of their
        // own: the value does not hold memory in between (the stem's output, read by the decoder's
        // last concatenation and again by the encoder's max-pool at the end of backward). A residual
        // block's output read only by refills (the next block's output is made from it) is kept for
        // its next reader however far: split there, every block's backward would make its stage's
        // whole chain again (quadratic); kept, each block output is made once in backward and lives
        // from its stage's first refill to its own block's backward.
        for t in again.indices.reversed() {
            guard let slot = again[t] else { continue }
            let index = graph.producer(of: t)!
            let layer = graph.layers[index]
            let stats = statSlots[index].map { [$0.mean, $0.invStd] } ?? []
            var groups: [[Int]] = []
            let isRefill = { (r: Int) in ops[r].reads.isEmpty && ops[r].writes.isEmpty }
            var residual = false
            if case .add = layer.op { residual = true }
            for r in ops.indices where ops[r].values.contains(slot) {
                if let group = groups.last, let last = group.last,
                   r - last <= GraphModel.refillGap || (residual && group.allSatisfy(isRefill)) {
                    groups[groups.count - 1].append(r)
                } else {
                    groups.append([r])
                }
            }
            refillsOf[t] = groups.count
            // The later groups first: inserting an op leaves the earlier indices alone.
            for (g, group) in groups.enumerated().reversed() {
                let into = g == 0 ? slot : arena.add(arena.shapes[slot], gradient: false)
                for r in group where into != slot { ops[r] = ops[r].readingValue(into, insteadOf: slot) }
                let reads = layer.inputs.compactMap(backwardSlot) + stats + [into]
                let refill = TapeOp(reads: [], writes: [], values: reads) { [unowned self] in
                    again[t] = into
                    recompute(index)
                }
                ops.insert(refill, at: group[0])
                // It runs when its first reader runs (a frozen encoder's ops are skipped).
                layerOfOp.insert(layerOfOp[group[0]], at: group[0])
            }
        }
        return (ops, layerOfOp)
    }

    /// Readers of a recomputed value at most this many ops apart share one refill.
    static let refillGap = 4

    /// The tensors (by index) whose values backward reads, or another recomputed tensor is made
    /// from, and which a plan for training recomputes in backward instead of keeping from
    /// forward: outputs of cheap layers (BatchNorm from its input and saved statistics, ReLU6,
    /// x2 upsampling, resizing, concatenation, residual add (+ReLU)) whose inputs backward keeps
    /// anyway or recomputes too. The logits are kept (callers read them after backward).
    private func recomputedTensors() -> [Int] {
        let layers = graph.layers
        var readInBackward = [Bool](repeating: false, count: slots.count)
        for index in layers.indices {
            for t in backwardValueReads(index) { readInBackward[t] = true }
        }
        var recomputable = [Bool?](repeating: nil, count: slots.count)
        func canRecompute(_ t: Int) -> Bool {
            if let known = recomputable[t] { return known }
            var result = false
            if t != slots.count - 1, let index = graph.producer(of: t) {
                switch layers[index].op {
                case .add:
                    // A residual output the decoder reads (a skip, the deepest features) is kept:
                    // made again, it would be needed at the decoder's backward, and its stage's
                    // chain with it, long before that stage's own backward.
                    result = layers.indices.allSatisfy { !layers[$0].inputs.contains(t) || inEncoder[$0] }
                        && layers[index].inputs.allSatisfy { $0 == 0 || readInBackward[$0] || canRecompute($0) }
                case .batchNorm, .relu6, .upsampleNearest, .resize, .concat:
                    result = layers[index].inputs.allSatisfy { $0 == 0 || readInBackward[$0] || canRecompute($0) }
                default: break
                }
            }
            recomputable[t] = result
            return result
        }
        var needed = readInBackward, chosen: [Int] = []
        for t in slots.indices.reversed() where needed[t] && canRecompute(t) {
            chosen.append(t)
            for i in layers[graph.producer(of: t)!].inputs { needed[i] = true }
        }
        return chosen
    }

    /// Layer `index`'s output again into its recompute slot, as the last forward made it.
    private func recompute(_ index: Int) {
        let layer = graph.layers[index]
        let x = backwardValue(layer.inputs[0]), y = arena.value(again[layer.output]!)
        switch layer.op {
        case .batchNorm(let bn, _, let relu) where batchNormTrains(index):
            // From the saved statistics: the forward's running ones have moved since.
            let stats = statSlots[index]!
            profile.measure(.batchNorm) {
                batchNormRecompute(y, x, gamma: store.value(bn.gamma), beta: store.value(bn.beta),
                                   saveMean: arena.value(stats.mean), saveInvStd: arena.value(stats.invStd),
                                   relu: relu, pool: pool)
            }
        case .batchNorm, .relu6, .upsampleNearest, .resize, .concat, .add:
            // Evaluation-mode BatchNorm reads the running statistics and changes nothing.
            run(index, into: y, reading: backwardValue, training: lastForwardTraining)
        default:
            preconditionFailure("\(layer.name): not a layer backward recomputes")
        }
    }

    /// The arena slots whose values `layerBackward(index, ...)` reads.
    private func backwardValueSlots(_ index: Int) -> [Int] {
        backwardValueReads(index).compactMap(backwardSlot) + (statSlots[index].map { [$0.mean, $0.invStd] } ?? [])
    }

    /// The tensors whose values `layerBackward(index, ...)` reads (the images have no slot).
    private func backwardValueReads(_ index: Int) -> [Int] {
        let layer = graph.layers[index]
        let x = layer.inputs[0], y = layer.output
        switch layer.op {
        case .conv, .depthwise, .maxPool: return x == 0 ? [] : [x]
        // A plan for training masks the ReLU's gradient from the input (batchNormBackward's
        // reluBeta, or batchNormReluBackwardInPlace in evaluation mode).
        case .batchNorm(_, _, let relu): return (x == 0 ? [] : [x]) + (relu && !sharesTrainingMemory ? [y] : [])
        case .relu6: return [y]
        case .add(let relu): return relu ? [y] : []
        case .upsampleNearest, .concat, .resize, .globalAveragePool, .dropout: return []
        }
    }

    /// What a backward op of a convolution computes.
    private enum BackwardPart { case all, weights, input }

    /// Backward of layer `index`; `dx(k)`: the gradient of its input k, nil where none is wanted;
    /// `part`: a convolution's weight (and bias) gradient or its input gradient alone.
    /// `fresh`: which of the op's `overwritable` input gradients it writes instead of adding into (the
    /// same bits): a convolution's input gradient, BatchNorm's (it may be dy's memory), a residual
    /// add's two.
    private func layerBackward(_ index: Int, dy: Tensor, part: BackwardPart = .all, dx: (Int) -> Tensor?,
                               fresh: FreshWrites = .none) {
        let layer = graph.layers[index]
        let x = backwardValue(layer.inputs[0]), y = backwardValue(layer.output)
        let dx0 = part == .weights ? nil : dx(0)
        switch layer.op {
        case .conv(let weight, let bias, let geometry):
            // With `.input` only x's shape is used: its memory may hold the input gradient by now.
            let dweight = part == .input ? nil : store.gradient(weight)
            let dbias = part == .input ? nil : bias.map { store.gradient($0) }
            profile.measure(part == .input ? .convInputGradient : .convWeightGradient) {
                if convPolicy.runsWinograd(geometry, x, dy) {
                    conv2dBackward(dx: dx0, dweight: dweight, dbias: dbias, dy: dy, x: x, weight: store.value(weight),
                                   overwriteInputGradient: fresh[0], policy: convPolicy, pool: pool, scratch: scratch)
                } else if case let tile = phaseTiles[index], tile > 0 {
                    // Winograd on the phase planes for the input gradient, the strided kernel for the weights'.
                    if dweight != nil || dbias != nil {
                        stridedConvBackward(dx: nil, dweight: dweight, dbias: dbias, dy: dy, x: x, weight: store.value(weight),
                                            geometry: geometry, perImageWork: convPolicy.perImageWork, pool: pool,
                                            scratch: scratch)
                    }
                    if let dx0 {
                        phaseWinogradInputGradient(dx: dx0, dy: dy, weight: store.value(weight), dilation: geometry.dilation,
                                                   tile: tile, overwrite: fresh[0], policy: convPolicy, pool: pool,
                                                   scratch: scratch)
                    }
                } else {
                    stridedConvBackward(dx: dx0, dweight: dweight, dbias: dbias, dy: dy, x: x, weight: store.value(weight),
                                        geometry: geometry, perImageWork: convPolicy.perImageWork,
                                        overwriteInputGradient: fresh[0], pool: pool, scratch: scratch)
                }
            }
        case .depthwise(let weight, let stride, let dilation):
            profile.measure(.convWeightGradient) {
                depthwise3x3Backward(dx: dx0, dweight: store.gradient(weight), dy: dy, x: x,
                                     weight: store.value(weight), stride: stride, padding: dilation,
                                     dilation: dilation, pool: pool, scratch: scratch)
            }
        case .batchNorm(let bn, _, let relu):
            let stats = statSlots[index]!
            let trains = batchNormTrains(index)
            // A plan for training masks the ReLU's gradient from x (no output kept): in training
            // mode inside batchNormBackward's own passes.
            let fusesReLU = relu && trains && sharesTrainingMemory
            if relu && !fusesReLU {
                profile.measure(.elementwise) {
                    if sharesTrainingMemory {
                        batchNormReluBackwardInPlace(dy, x: x, gamma: store.value(bn.gamma), beta: store.value(bn.beta),
                                                     runningMean: store.value(bn.runningMean),
                                                     runningVar: store.value(bn.runningVar),
                                                     saveMean: arena.value(stats.mean), saveInvStd: arena.value(stats.invStd),
                                                     training: false, pool: pool)
                    } else {
                        reluBackwardInPlace(dy, y: y, pool: pool)
                    }
                }
            }
            profile.measure(.batchNorm) {
                if trains {
                    batchNormBackward(dx: dx0, dgamma: store.gradient(bn.gamma), dbeta: store.gradient(bn.beta),
                                      dy: dy, x: x, gamma: store.value(bn.gamma), saveMean: arena.value(stats.mean),
                                      saveInvStd: arena.value(stats.invStd), synchronized: batchStatistics,
                                      overwrite: fresh[0], reluBeta: fusesReLU ? store.value(bn.beta) : nil, pool: pool)
                } else {
                    batchNormEvalBackward(dx: dx0, dgamma: store.gradient(bn.gamma), dbeta: store.gradient(bn.beta),
                                          dy: dy, x: x, gamma: store.value(bn.gamma),
                                          runningMean: store.value(bn.runningMean),
                                          runningVar: store.value(bn.runningVar), overwrite: fresh[0], pool: pool)
                }
            }
        case .relu6:
            if let dx0 { profile.measure(.elementwise) { relu6Backward(dx: dx0, dy: dy, y: y, pool: pool) } }
        case .maxPool:
            if let dx0 { profile.measure(.pool) { maxPoolBackward(dx: dx0, dy: dy, x: x, pool: pool) } }
        case .add(let relu):
            profile.measure(.elementwise) {
                residualAddBackward(da: dx0, db: dx(1), dy: dy, y: y, relu: relu, overwriteA: fresh[0],
                                    overwriteB: fresh[1], pool: pool)
            }
        case .upsampleNearest:
            if let dx0 { profile.measure(.upsample) { upsampleNearest2xBackward(dx: dx0, dy: dy, pool: pool) } }
        case .concat:
            profile.measure(.elementwise) {
                var offset = 0
                for k in layer.inputs.indices {
                    if let d = dx(k) { concatChannelsBackward(dx: d, dy: dy, at: offset, pool: pool) }
                    offset += value(layer.inputs[k]).c
                }
            }
        case .resize(let alignCorners, _):
            if let dx0 { profile.measure(.upsample) { resizeBilinearBackward(dx: dx0, dy: dy, alignCorners: alignCorners, pool: pool) } }
        case .globalAveragePool:
            if let dx0 { profile.measure(.pool) { globalAveragePoolBackward(dx: dx0, dy: dy, pool: pool) } }
        case .dropout(let probability, let stream):
            guard let dx0 else { break }
            profile.measure(.elementwise) {
                if lastForwardTraining {
                    dropoutBackward(dx: dx0, dy: dy, probability: probability, draw: lastDropoutDraw, stream: stream, pool: pool)
                } else {  // an identity: dx += dy
                    dropoutBackward(dx: dx0, dy: dy, probability: 0, draw: lastDropoutDraw, stream: stream, pool: pool)
                }
            }
        }
    }
}

extension GraphModel: SegmentationModel {
    /// 2 when some BatchNorm layer's map is 1 x 1 at this size (an encoder's deepest stage at 32 x
    /// 32, DeepLabV3+'s image pooling at every size), else 1.
    public func minimumTrainingBatch(height: Int, width: Int) -> Int {
        let shapes = graph.shapes(batch: 1, height: height, width: width)
        let single = graph.layers.contains { layer in
            guard case .batchNorm = layer.op else { return false }
            return shapes[layer.output].plane == 1
        }
        return single ? 2 : 1
    }
}

extension TapeOp {
    /// The same op, its value reads of slot `old` moved to slot `new` (a refill of its own).
    func readingValue(_ new: Int, insteadOf old: Int) -> TapeOp {
        TapeOp(reads: reads, writes: writes, values: values.map { $0 == old ? new : $0 }, finalizes: finalizes,
               overwritable: overwritable, run: run)
    }
}
