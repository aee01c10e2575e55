// What one batch shape of a `LayerGraph` needs (issue #16): every tensor's shape, the kernels'
// scratch, and the layer table of `segtrain info`. Used by GraphModel's plan and by the memory
// estimate before a model exists.

import SegEngine

struct GraphPlan {
    let shapes: [Shape]
    let scratchFloatsPerThread: Int
    let sharedScratchFloats: Int
    /// Floats of all activations but the images (BatchNorm's saved statistics included).
    let activationFloats: Int
    let rows: [LayerInfo]
    /// Per layer: the Winograd tile its forward and input gradient take on phase planes (a dilated
    /// 3x3, `ConvPolicy.phaseWinogradTile`), 0 for every other layer. Decided here, once per plan,
    /// not in every step.
    let phaseTiles: [Int]

    /// `threads` and `policy`: what the model's convolutions run with (they size the Winograd scratch).
    init(_ graph: LayerGraph, batch: Int, height: Int, width: Int, threads: Int, policy: ConvPolicy = .standard) {
        let shapes = graph.shapes(batch: batch, height: height, width: width)
        var perThread = 0, shared = 0, activations = 0
        var rows: [LayerInfo] = []
        var phaseTiles = [Int](repeating: 0, count: graph.layers.count)
        for (index, layer) in graph.layers.enumerated() {
            let x = shapes[layer.inputs[0]], y = shapes[layer.output]
            activations += y.count
            var kind: String, parameters = 0, flops = 0.0
            switch layer.op {
            case .conv(_, let bias, let g):
                if policy.runsWinograd(g, x, y) {
                    perThread = max(perThread, conv2dPlannedScratchFloats(batch: batch, inChannels: x.c, outChannels: y.c,
                                                                          height: x.h, width: x.w, kernel: 3, policy: policy,
                                                                          threads: threads))
                    shared = max(shared, conv2dPlannedSharedScratchFloats(inChannels: x.c, outChannels: y.c, height: x.h,
                                                                          width: x.w, kernel: 3, policy: policy))
                } else {
                    let phaseTile = policy.phaseWinogradTile(g, x, y)
                    if phaseTile > 0 {
                        phaseTiles[index] = phaseTile
                        let phase = phaseWinogradScratchFloats(inChannels: x.c, outChannels: y.c, height: x.h, width: x.w,
                                                               dilation: g.dilation, tile: phaseTile, policy: policy)
                        perThread = max(perThread, phase.perThread)
                        shared = max(shared, phase.shared)
                    }
                    perThread = max(perThread, stridedConvScratchFloats(batch: batch, inChannels: x.c, outChannels: y.c,
                                                                        height: x.h, width: x.w, geometry: g,
                                                                        perImageWork: policy.perImageWork))
                    shared = max(shared, stridedConvSharedScratchFloats(batch: batch, inChannels: x.c, outChannels: y.c,
                                                                        height: x.h, width: x.w, geometry: g,
                                                                        perImageWork: policy.perImageWork))
                }
                parameters = y.c * x.c * g.kernel * g.kernel + (bias == nil ? 0 : y.c)
                flops = 2.0 * Double(x.c * g.kernel * g.kernel) * Double(y.c * y.h * y.w)
                kind = "conv\(g.kernel)x\(g.kernel)" + (g.stride == 1 ? "" : "/\(g.stride)")
                    + (g.dilation == 1 || g.kernel == 1 ? "" : " d\(g.dilation)")
            case .depthwise(_, let stride, let dilation):
                perThread = max(perThread, depthwise3x3ScratchFloats(width: x.w, stride: stride, padding: dilation,
                                                                     dilation: dilation))
                parameters = 9 * x.c
                flops = 2.0 * 9 * Double(y.c * y.h * y.w)
                kind = "depthwise3x3" + (stride == 1 ? "" : "/\(stride)") + (dilation == 1 ? "" : " d\(dilation)")
            case .batchNorm(_, _, let relu):
                activations += 2 * y.c  // saved mean and 1/std
                parameters = 2 * y.c
                kind = relu ? "bn+relu" : "bn"
            case .relu6: kind = "relu6"
            case .maxPool: kind = "maxpool3x3/2"
            case .add(let relu): kind = relu ? "add+relu" : "add"
            case .upsampleNearest: kind = "nearest x2"
            case .concat: kind = "concat"
            case .resize(let alignCorners, _): kind = "bilinear" + (alignCorners ? " ac" : "")
            case .globalAveragePool: kind = "avgpool"
            case .dropout(let p, _): kind = "dropout \(p)"
            }
            // Training: forward, input gradient and weight gradient, except for the first layer's input.
            let passes = layer.inputs[0] == 0 ? 2.0 : 3.0
            // `flops` is per image already (the shapes' planes and channels, not the batch).
            rows.append(LayerInfo(name: layer.name, kind: kind, outputShape: y.single, parameters: parameters,
                                  forwardFLOPs: flops, trainingFLOPs: passes * flops))
        }
        self.shapes = shapes
        scratchFloatsPerThread = perThread
        sharedScratchFloats = shared
        activationFloats = activations
        self.rows = rows
        self.phaseTiles = phaseTiles
    }
}

extension ConvPolicy {
    /// Whether an encoder model's convolution of this geometry from `x` to `y` (shapes) runs
    /// conv2d's Winograd kernels: a 3x3 stride-1 convolution the policy gives a tile. The others
    /// take the strided kernel.
    func runsWinograd(_ g: ConvGeometry, _ x: Shape, _ y: Shape) -> Bool {
        g.isSame3x3 && winogradTile(kernel: 3, dilation: 1, inChannels: x.c, outChannels: y.c, height: x.h, width: x.w) > 0
    }

    func runsWinograd(_ g: ConvGeometry, _ x: Tensor, _ y: Tensor) -> Bool { runsWinograd(g, x.shape, y.shape) }

    /// The Winograd tile a dilated 3x3 convolution (stride 1, padding = dilation, sides multiples of
    /// the dilation) takes on its phase planes for its forward and input gradient (PhaseWinograd.swift),
    /// the one the policy gives a 3x3 on planes of that size, while its per-thread scratch stays within
    /// `phaseWinogradMaximumThreadFloats`; 0: the strided kernel runs it.
    func phaseWinogradTile(_ g: ConvGeometry, _ x: Shape, _ y: Shape) -> Int {
        guard g.kernel == 3 && g.stride == 1 && g.dilation >= 2 && g.padding == g.dilation,
              x.h % g.dilation == 0 && x.w % g.dilation == 0 else { return 0 }
        let tile = winogradTile(kernel: 3, dilation: 1, inChannels: x.c, outChannels: y.c, height: x.h / g.dilation,
                                width: x.w / g.dilation)
        guard tile > 0 else { return 0 }
        let needs = phaseWinogradScratchFloats(inChannels: x.c, outChannels: y.c, height: x.h, width: x.w,
                                               dilation: g.dilation, tile: tile, policy: self)
        return needs.perThread <= phaseWinogradMaximumThreadFloats ? tile : 0
    }
}
