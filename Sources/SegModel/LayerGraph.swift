// A model as a list of layers over numbered tensors (issue #16): what the encoder UNets are built
// from. Tensor 0 is the input images; every layer reads earlier tensors and produces one new tensor.
// The builder registers each layer's parameters in a `ParameterLayout` under PyTorch's names (conv
// weights OIHW; BatchNorm weight, bias, running_mean, running_var, num_batches_tracked), in the
// order the layers are added, which is the order of PyTorch's state dict. Shapes follow from the
// input's size (`shapes`), so one graph serves every batch shape; `GraphExecutor` runs it.

import SegEngine

/// How a parameter tensor is initialised (`LayerGraph.initialize`).
enum InitRule: Equatable {
    /// He normal with fan_out = Cout k^2 (torchvision's ResNet and MobileNetV2).
    case heNormalFanOut
    /// He uniform with fan_in = Cin k^2: bound sqrt(6 / fan_in) (smp's decoder).
    case heUniformFanIn
    /// Glorot uniform: bound sqrt(6 / (fan_in + fan_out)) (smp's segmentation head).
    case glorotUniform
    case zeros, ones
}

/// What a layer does. Parameter fields are indices into the parameter store.
enum LayerOp {
    /// PyTorch Conv2d (no groups): OIHW weight, optional bias.
    case conv(weight: Int, bias: Int?, geometry: ConvGeometry)
    /// Depthwise 3x3 Conv2d (groups = channels, padding = dilation, no bias).
    case depthwise(weight: Int, stride: Int, dilation: Int)
    /// BatchNorm2d, optionally followed by a ReLU applied in place on its output.
    case batchNorm(BatchNormParameters, counter: Int, relu: Bool)
    case relu6
    /// MaxPool2d(3, stride 2, padding 1).
    case maxPool
    /// a + b, optionally followed by a ReLU.
    case add(relu: Bool)
    /// Nearest-neighbour x2.
    case upsampleNearest
    /// The inputs side by side along channels, in order (any number of them).
    case concat
    /// Bilinear resize (F.interpolate(mode='bilinear', align_corners)) to `size`.
    case resize(alignCorners: Bool, size: ResizeTarget)
    /// AdaptiveAvgPool2d(1): each plane's mean, (N, C, 1, 1).
    case globalAveragePool
    /// nn.Dropout(p) in training forwards (an identity in evaluation); the mask follows from the
    /// model's `DropoutDraw` and the layer's `stream`.
    case dropout(probability: Float, stream: UInt64)
}

/// The output size of a resize layer.
enum ResizeTarget: Equatable {
    /// The input's sides times this factor (nn.Upsample(scale_factor=)).
    case scale(Int)
    /// The sides of this (earlier) tensor (F.interpolate(size=other.shape[-2:])).
    case like(Int)
}

struct Layer {
    /// The PyTorch module's name (the parameters' prefix), for the layer table.
    let name: String
    let op: LayerOp
    let inputs: [Int]
    let output: Int
}

struct LayerGraph {
    private(set) var layout = ParameterLayout()
    private(set) var initRules: [InitRule] = []
    private(set) var layers: [Layer] = []
    /// Channels of every tensor (tensor 0: the images).
    private(set) var channels: [Int]
    /// The rule new convolution weights get.
    var convInit = InitRule.heNormalFanOut

    init(inChannels: Int) { channels = [inChannels] }

    private mutating func parameter(_ name: String, _ shape: Shape, _ rule: InitRule,
                                    kind: ParameterEntry.Kind = .parameter) -> Int {
        initRules.append(rule)
        return layout.add(name, shape, kind: kind)
    }

    /// The layer that makes tensor t, nil for the images: each layer makes one tensor, so layer i
    /// makes tensor i + 1.
    func producer(of t: Int) -> Int? { t == 0 ? nil : t - 1 }

    /// How many times layers read tensor t (a layer that reads it twice counts twice).
    func consumers(of t: Int) -> Int { layers.reduce(0) { $0 + $1.inputs.filter { $0 == t }.count } }

    private mutating func append(_ name: String, _ op: LayerOp, _ inputs: [Int], channels c: Int) -> Int {
        channels.append(c)
        layers.append(Layer(name: name, op: op, inputs: inputs, output: channels.count - 1))
        return channels.count - 1
    }

    /// Conv2d(Cin, `out`, kernel, stride, padding, dilation, bias) named `name` ("name.weight", "name.bias").
    mutating func conv(_ name: String, _ x: Int, out: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                       dilation: Int = 1, bias: Bool = false, initRule: InitRule? = nil) -> Int {
        let weight = parameter("\(name).weight", Shape(out, channels[x], kernel, kernel), initRule ?? convInit)
        let b = bias ? parameter("\(name).bias", .vector(out), .zeros) : nil
        let geometry = ConvGeometry(kernel: kernel, stride: stride, padding: padding, dilation: dilation)
        return append(name, .conv(weight: weight, bias: b, geometry: geometry), [x], channels: out)
    }

    /// Depthwise Conv2d(C, C, 3, stride, padding = dilation, dilation, groups C, bias False).
    mutating func depthwise(_ name: String, _ x: Int, stride: Int, dilation: Int = 1) -> Int {
        let c = channels[x]
        let weight = parameter("\(name).weight", Shape(c, 1, 3, 3), convInit)
        return append(name, .depthwise(weight: weight, stride: stride, dilation: dilation), [x], channels: c)
    }

    /// BatchNorm2d(C) named `name`, with a ReLU after it when `relu`.
    mutating func batchNorm(_ name: String, _ x: Int, relu: Bool) -> Int {
        let c = channels[x]
        let bn = BatchNormParameters(
            gamma: parameter("\(name).weight", .vector(c), .ones),
            beta: parameter("\(name).bias", .vector(c), .zeros),
            runningMean: parameter("\(name).running_mean", .vector(c), .zeros, kind: .buffer),
            runningVar: parameter("\(name).running_var", .vector(c), .ones, kind: .buffer))
        // PyTorch's int64 scalar; kept as one float (exact up to 2^24 steps), written as I64.
        let counter = parameter("\(name).\(Safetensors.batchCounterSuffix)", .vector(1), .zeros, kind: .buffer)
        return append(name, .batchNorm(bn, counter: counter, relu: relu), [x], channels: c)
    }

    mutating func relu6(_ name: String, _ x: Int) -> Int { append(name, .relu6, [x], channels: channels[x]) }

    mutating func maxPool(_ name: String, _ x: Int) -> Int { append(name, .maxPool, [x], channels: channels[x]) }

    mutating func add(_ name: String, _ a: Int, _ b: Int, relu: Bool) -> Int {
        precondition(channels[a] == channels[b], "\(name): adding \(channels[a]) to \(channels[b]) channels")
        return append(name, .add(relu: relu), [a, b], channels: channels[a])
    }

    mutating func upsampleNearest(_ name: String, _ x: Int) -> Int {
        append(name, .upsampleNearest, [x], channels: channels[x])
    }

    mutating func concat(_ name: String, _ parts: [Int]) -> Int {
        append(name, .concat, parts, channels: parts.reduce(0) { $0 + channels[$1] })
    }

    mutating func resize(_ name: String, _ x: Int, to size: ResizeTarget, alignCorners: Bool) -> Int {
        append(name, .resize(alignCorners: alignCorners, size: size), [x], channels: channels[x])
    }

    mutating func globalAveragePool(_ name: String, _ x: Int) -> Int {
        append(name, .globalAveragePool, [x], channels: channels[x])
    }

    /// Dropout with its own stream of masks (the number of dropout layers before it).
    mutating func dropout(_ name: String, _ x: Int, probability: Float) -> Int {
        let stream = UInt64(layers.filter { if case .dropout = $0.op { return true } else { return false } }.count)
        return append(name, .dropout(probability: probability, stream: stream), [x], channels: channels[x])
    }

    /// The shape of every tensor for a batch of `batch` images of height x width.
    func shapes(batch: Int, height: Int, width: Int) -> [Shape] {
        var shapes = [Shape(batch, channels[0], height, width)]
        for layer in layers {
            let x = shapes[layer.inputs[0]]
            let c = channels[layer.output]
            switch layer.op {
            case .conv(_, _, let g):
                shapes.append(Shape(batch, c, g.output(x.h), g.output(x.w)))
            case .depthwise(_, let stride, let dilation):
                let g = ConvGeometry(kernel: 3, stride: stride, padding: dilation, dilation: dilation)
                shapes.append(Shape(batch, c, g.output(x.h), g.output(x.w)))
            case .maxPool:
                let g = ConvGeometry(kernel: 3, stride: 2, padding: 1)
                shapes.append(Shape(batch, c, g.output(x.h), g.output(x.w)))
            case .upsampleNearest:
                shapes.append(Shape(batch, c, 2 * x.h, 2 * x.w))
            case .concat, .add:
                for b in layer.inputs.dropFirst().map({ shapes[$0] }) {
                    precondition(b.h == x.h && b.w == x.w, "\(layer.name): inputs of \(x.h)x\(x.w) and \(b.h)x\(b.w) px")
                }
                shapes.append(Shape(batch, c, x.h, x.w))
            case .resize(_, .scale(let factor)):
                shapes.append(Shape(batch, c, factor * x.h, factor * x.w))
            case .resize(_, .like(let other)):
                shapes.append(Shape(batch, c, shapes[other].h, shapes[other].w))
            case .globalAveragePool:
                shapes.append(Shape(batch, c, 1, 1))
            case .batchNorm, .relu6, .dropout:
                shapes.append(x)
            }
        }
        return shapes
    }

    /// Sets every tensor of `store` (built from this layout) by its rule; each random tensor draws
    /// from its own stream of (seed, tensor index).
    func initialize(_ store: ParameterStore, seed: UInt64) {
        for (index, entry) in store.entries.enumerated() {
            let t = store.value(index), s = entry.shape
            let k = s.h * s.w
            let fanIn = s.c * k, fanOut = s.n * k
            var rng = SplitMix64(seed: seed, stream: UInt64(index) + 1)
            switch initRules[index] {
            case .zeros: t.zero()
            case .ones: t.fill(1)
            case .heNormalFanOut:
                let std = (2.0 / Double(fanOut)).squareRoot()
                for i in 0..<t.count { t[i] = Float(rng.nextGaussian() * std) }
            case .heUniformFanIn, .glorotUniform:
                let denominator = initRules[index] == .glorotUniform ? fanIn + fanOut : fanIn
                let limit = Float((6.0 / Double(denominator)).squareRoot())
                for i in 0..<t.count { t[i] = rng.nextFloat(in: -limit...limit) }
            }
        }
    }
}
